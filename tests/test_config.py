"""Settings: file, then FOGMESH_* variables, then flags; bad keys are named."""

from __future__ import annotations

import pytest

from agents.settings import AgentSettings
from broker.coordinator.settings import CoordinatorSettings
from broker.ops.config import load
from broker.runtime.errors import ConfigError
from tests.services import cli


def test_file_then_environment_then_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "fogmesh.toml"
    cfg.write_text('[site]\nbroker = "mqtt://gw:1883"\nsite = "plant"\n[agent]\nslots = 2\nheartbeat_s = 2.5\n')
    monkeypatch.setenv("FOGMESH_AGENT_SLOTS", "3")
    s = load(AgentSettings, "agent", cfg, agent_id="a9")
    assert (s.broker, s.site, s.slots, s.heartbeat_s, s.agent_id) == ("mqtt://gw:1883", "plant", 3, 2.5, "a9")
    assert load(AgentSettings, "agent", cfg, slots=4).slots == 4


def test_an_unknown_key_is_named(tmp_path):
    cfg = tmp_path / "fogmesh.toml"
    cfg.write_text("[coordinator]\npolicyy = 'deadline'\n")
    with pytest.raises(ConfigError, match=r"coordinator\.policyy"):
        load(CoordinatorSettings, "coordinator", cfg)


def test_a_wrong_type_is_named(tmp_path):
    cfg = tmp_path / "fogmesh.toml"
    cfg.write_text("[coordinator]\nmax_queue = 'lots'\n")
    with pytest.raises(ConfigError, match="max_queue"):
        load(CoordinatorSettings, "coordinator", cfg)


def test_the_example_in_deploy_is_valid_for_every_daemon():
    from pathlib import Path

    from cloud_bridge.settings import BridgeSettings, WorkerSettings

    example = Path(__file__).resolve().parent.parent / "deploy" / "fogmesh.toml"
    agent = load(AgentSettings, "agent", example)
    assert agent.agent_id == "edge-01" and agent.models == []
    assert load(CoordinatorSettings, "coordinator", example).policy == "deadline"
    assert load(BridgeSettings, "bridge", example).queue_prefix == "fogmesh"
    assert load(WorkerSettings, "cloud-worker", example).backend == "local"
    from broker.ops.security import BrokerSettings

    broker = load(BrokerSettings, "broker", example)
    assert broker.users["edge-01"] == "agent" and broker.tls_port == 8883


def test_a_user_with_an_unknown_role_is_named(tmp_path):
    from broker.ops.security import BrokerSettings

    cfg = tmp_path / "fogmesh.toml"
    cfg.write_text('[broker.users]\nsensor-1 = "admin"\n')
    with pytest.raises(ConfigError, match=r"broker\.users\.sensor-1: role 'admin'"):
        load(BrokerSettings, "broker", cfg)


def test_tls_files_with_a_plaintext_broker_url_is_an_error(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    s = CoordinatorSettings(broker="mqtt://gw:1883", ca_file=str(ca))
    with pytest.raises(ConfigError, match="mqtts://"):
        s.address()


def test_config_check_reports_every_problem_with_its_key_and_line(tmp_path):

    cfg = tmp_path / "fogmesh.toml"
    cfg.write_text('[site]\nbroker = "mqtt://gw:1883"\n\n[coordinator]\npolicy = "fastest"\n'
                   'max_queue = "lots"\n\n[agent]\nheartbeat = 5\n\n[agnet]\nslots = 1\n')
    out = cli("config", "check", str(cfg))
    assert out.returncode == 1
    assert f"{cfg}:line 5: coordinator.policy: unknown policy 'fastest'" in out.stderr
    assert f"{cfg}:line 6: coordinator.max_queue: Expected `int`, got `str`" in out.stderr
    assert f"{cfg}:line 9: agent.heartbeat: unknown key" in out.stderr
    assert f"{cfg}:line 11: agnet: unknown table" in out.stderr
    cfg.write_text("[coordinator]\npolicy = 'deadline'\nmax_queue = = 3\n")
    out = cli("config", "check", str(cfg))
    assert out.returncode == 1 and ":line 3: syntax:" in out.stderr


def test_the_example_in_deploy_passes_config_check():
    from pathlib import Path

    from broker.ops.config import check

    assert check(Path(__file__).resolve().parent.parent / "deploy" / "fogmesh.toml") == []


def test_a_table_that_is_not_a_table_is_reported_not_a_crash(tmp_path):
    from broker.ops.config import check

    cfg = tmp_path / "fogmesh.toml"
    cfg.write_text('site = "plant"\nagent = 5\n[coordinator]\nmax_queue = "lots"\n')
    assert [(p.key, p.message) for p in check(cfg)] == [
        ("site", "[site] must be a table"), ("agent", "[agent] must be a table"),
        ("coordinator.max_queue", "Expected `int`, got `str`")]
    with pytest.raises(ConfigError, match=r"\[site\] must be a table"):
        load(CoordinatorSettings, "coordinator", cfg)


def test_config_check_catches_values_out_of_range_unknown_choices_bad_urls_typos_and_non_gguf_models(tmp_path):
    bad_model = tmp_path / "notes.gguf"
    bad_model.write_text("not a model")
    cfg = tmp_path / "fogmesh.toml"
    cfg.write_text(f'[site]\nbroker = "mqtt//localhost:1883"\n\n[coordinator]\nmax_queue = -5\n'
                   f'ledger_sync = "sometimes"\nmax_tokens_limit = 0\n\n[agent]\nagentid = "x"\n'
                   f'temperature = -3\nmodels = ["{bad_model}"]\n')
    out = cli("config", "check", "--config", str(cfg))  # both spellings: --config FILE and FILE
    assert out.returncode == 1
    for expected in ("line 2: site.broker: broker URL 'mqtt//localhost:1883' is not a URL",
                     "line 5: coordinator.max_queue: Expected `int` >= 1",
                     "line 6: coordinator.ledger_sync: unknown ledger sync 'sometimes'; one of normal, full",
                     "line 7: coordinator.max_tokens_limit: Expected `int` >= 1",
                     "line 10: agent.agentid: unknown key; did you mean agent_id?",
                     "line 11: agent.temperature: Expected `float` >= 0.0",
                     "line 12: agent.models:", "is not a GGUF model file"):
        assert expected in out.stderr, (expected, out.stderr)

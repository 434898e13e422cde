"""The operator's first day: the usual mistakes are caught early, with an error that names the
cause and the fix, and nothing on the system changes that the operator did not ask for."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

from tests.services import FOGMESH, ROOT, cli


def test_install_units_into_a_folder_changes_nothing_else(tmp_path):
    user = "fogmesh-firstday-test"
    out = cli("install-units", "--dest", str(tmp_path / "units"), "--user", user, "--no-reload")
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "units").glob("*.service"))) == 5
    assert subprocess.run(["id", "-u", user], capture_output=True).returncode != 0, "a system user was created"


def test_the_daemons_broker_help_says_what_they_really_default_to():
    for command in ("coordinator", "agent", "bridge"):
        help_text = " ".join(cli(command, "--help").stdout.split())
        assert "mqtt://127.0.0.1:1883" in help_text and "fogmesh up` started" not in help_text
    assert "fogmesh up` started" in " ".join(cli("ask", "--help").stdout.split())


def up(tmp_path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "FOGMESH_STATE_DIR": str(tmp_path / "state")}
    return subprocess.Popen([*FOGMESH, "up", "--agents", "0", *extra], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_an_explicit_port_that_is_taken_is_an_error(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = up(tmp_path, "--port", str(port), "--site", "porttest").communicate(timeout=60)[0]
    assert f"port {port} is taken" in out and "--port" in out


def test_a_second_fogmesh_up_of_the_same_site_is_refused(tmp_path):
    first = up(tmp_path, "--site", "locked")
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if "is up" in line:
                break
        second = up(tmp_path, "--site", "locked")
        out = second.communicate(timeout=60)[0]
        assert second.returncode != 0
        assert "site 'locked' is already up" in out and f"pid {first.pid}" in out
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)

"""The command line's grammar: every subcommand, its flags and their help texts."""

from __future__ import annotations

import argparse
from types import ModuleType
from typing import Any

from broker.cli import admin, watch
from broker.coordinator.scheduler import POLICIES
from broker.runtime import __version__

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, with each option's default after its help text where the default says something:
    not for flags that are off, options with no value, or help that already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default == [] or default is argparse.SUPPRESS
                or "default" in text or action.required):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: subparsers are made of the parser's own class, so all share the formatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def positive(text: str) -> float:
    """An option's value that must be a number above 0 (seconds between redraws)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds above 0")
    return value


def whole(text: str) -> int:
    """An option's value that must be a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def describe(p: argparse.ArgumentParser) -> None:
    """Give each subcommand its one-line summary (the ``help`` in its parent's list) as the
    description that ``fogmesh <command> --help`` opens with."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                sub = action.choices[choice.dest]
                sub.description = sub.description or choice.help
                describe(sub)


def parser(commands: ModuleType) -> argparse.ArgumentParser:
    """Every command, flag and help text; ``commands`` holds the ``cmd_*`` functions they run."""
    p = Parser(prog="fogmesh", description="An MQTT inference mesh for small language models.")
    p.add_argument("--version", action="version", version=f"fogmesh {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def logging_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS,
                        help="how much to log (default: log_level in the config file, else info)")
        sp.add_argument("--log-format", choices=("kv", "json"),
                        help="log lines as key=value pairs or as JSON objects (default: log_format in the "
                             "config file, else kv)")

    def config_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="a fogmesh.toml (default: $FOGMESH_CONFIG, else /etc/fogmesh/fogmesh.toml)")

    def metrics_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: off)")

    def common(sp: argparse.ArgumentParser, daemon: bool = False) -> None:
        where = ("[site] broker in the config file, else mqtt://127.0.0.1:1883" if daemon else
                 "[site] broker in the config file, else the site `fogmesh up` started")
        sp.add_argument("--broker", help=f"broker URL, mqtt://host:port or mqtts://host:port (default: {where})")
        sp.add_argument("--site", help="site id (default: [site] site in the config file, else site)")
        logging_flags(sp)
        config_flag(sp)
        sp.add_argument("--username", help="MQTT user name (the role's, see docs/security.md)")
        sp.add_argument("--password-file", help="a file holding the MQTT password")
        sp.add_argument("--ca-file", help="the site CA for mqtts:// brokers")

    def site_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--port", type=int, help="broker port (default: 1883, or a free one)")
        sp.add_argument("--agents", type=int, default=2, help="agents to start, each its own process")
        sp.add_argument("--slots", type=int, default=1, help="jobs each agent runs at once")
        sp.add_argument("--model", help="a GGUF file (default: the bundled Gemma 3 270M)")
        sp.add_argument("--policy", default="deadline", choices=POLICIES,
                        help="how the coordinator picks an agent (docs/scheduling.md)")
        sp.add_argument("--local-cloud", action="store_true",
                        help="also run a local SQS-compatible server, a bridge and a cloud worker")

    def ask_flags(sp: argparse.ArgumentParser, standalone: bool = True) -> None:
        sp.add_argument("prompt", nargs=None if standalone else "?", default="MQTT is a protocol that",
                        help="the prompt text")
        sp.add_argument("--device", help="the device id to ask as (default: your --username when you log in "
                                         "with one, since a device may publish only as itself; else cli)")
        sp.add_argument("--max-tokens", type=int, default=64, help="the most tokens the answer may have")
        sp.add_argument("--deadline-ms", type=int,
                        help="milliseconds to answer in, else the job ends expired (default: none)")
        sp.add_argument("--priority", type=int, help="0 (lowest) to 9 (highest) (default: 5)")
        if standalone:  # `demo` has --model for the agents' GGUF file instead
            sp.add_argument("--model", help="the model name to ask for (default: the site's)")
        sp.add_argument("--privacy", choices=("edge-only", "cloud-ok"),
                        help="edge-only keeps the job off the cloud (default: cloud-ok)")
        sp.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the final message")
        sp.add_argument("--json", action="store_true", help="print the final message as JSON")
        sp.add_argument("--chat", action="store_true", help="send the prompt as a chat message (messages)")
        sp.add_argument("--system", help="a system message before the prompt (implies --chat)")
        sp.add_argument("--temperature", type=float, help="sampling temperature, 0-2 (default: the agent's, 0.7)")
        sp.add_argument("--seed", type=int, help="sampling seed: the same seed and prompt give the same answer "
                                                 "(default: a random one)")
        sp.add_argument("--stop", action="append", help="a stop string; repeatable, up to 4")
        sp.add_argument("--schema", metavar="FILE", help="answer with JSON following this JSON Schema file")
        sp.add_argument("--json-object", action="store_true", help="answer with a JSON object")

    sp = sub.add_parser("agent", help="run an edge agent")
    metrics_flag(sp)
    common(sp, daemon=True)
    sp.add_argument("--agent-id", help="this agent's id, one topic level (default: [agent] agent_id, else the "
                                       "host name)")
    sp.add_argument("--model", action="append", help="a GGUF file, or name=path; repeat for several models "
                                                     "(default: the bundled Gemma 3 270M)")
    sp.add_argument("--threads", type=int, help="CPU threads for inference (default: all cores)")
    sp.add_argument("--slots", type=int, help="jobs it runs at once (default: 1)")
    sp.add_argument("--no-batching", dest="batching", action="store_false", default=None,
                    help="give each slot its own llama.cpp context instead of decoding all slots' jobs in one "
                         "batch (agent.batching)")
    sp.add_argument("--n-ctx", type=int, help="context size per slot, in tokens (default: 2048)")
    sp.add_argument("--chat-format", action="append", metavar="MODEL=FORMAT",
                    help="how MODEL renders chat messages: auto, gemma, chatml, none or a Jinja file; repeatable")
    sp.add_argument("--gpu-layers", action="append", metavar="[MODEL=]N",
                    help="layers to offload to the GPU, for MODEL or every model; -1 all (default: all when "
                         "llama-cpp-python was built with a GPU backend, else none); repeatable")
    sp.add_argument("--budget-tokens", type=int, help="sliding-window token budget (see budget_window_s; "
                                                      "default: 0, unlimited)")
    sp.set_defaults(fn=commands.cmd_agent)

    sp = sub.add_parser("coordinator", help="run the site coordinator")
    metrics_flag(sp)
    common(sp, daemon=True)
    sp.add_argument("--policy", choices=POLICIES,
                    help="how to pick an agent (docs/scheduling.md; default: [coordinator] policy, else deadline)")
    sp.add_argument("--ledger", help="SQLite ledger path (default: <state dir>/<site>/ledger.db)")
    sp.set_defaults(fn=commands.cmd_coordinator)

    sp = sub.add_parser("bridge", help="run the MQTT <-> SQS bridge for a site")
    metrics_flag(sp)
    common(sp, daemon=True)
    sp.add_argument("--endpoint-url", help="an SQS-compatible endpoint (default: AWS via boto3's chain)")
    sp.add_argument("--outbox", help="SQLite outbox path (default: <state dir>/<site>/outbox.db)")
    sp.set_defaults(fn=commands.cmd_bridge)

    sp = sub.add_parser("gateway", help="serve the site behind OpenAI's HTTP API (/v1/chat/completions, ...)")
    metrics_flag(sp)
    common(sp, daemon=True)
    sp.add_argument("--port", type=int, help="HTTP port (default: 8000)")
    sp.add_argument("--bind", help="HTTP address (default: 127.0.0.1; another needs api_keys_file)")
    sp.add_argument("--device-id", help="the device id its jobs run as (default: gateway)")
    sp.add_argument("--api-keys-file", help="a file with one API key per line; clients send one as a bearer token")
    sp.set_defaults(fn=commands.cmd_gateway)

    sp = sub.add_parser("cloud-worker", help="answer the cloud request queue with a larger model")
    metrics_flag(sp)
    config_flag(sp)
    sp.add_argument("--endpoint-url", help="an SQS-compatible endpoint (default: AWS via boto3's chain)")
    sp.add_argument("--backend", choices=("local", "openai", "synthetic"),
                    help="local: a GGUF through llama.cpp; openai: an OpenAI-compatible server; synthetic: a "
                         "stand-in with a set speed, for experiments (default: local)")
    sp.add_argument("--model", help="local: a GGUF path; openai: the model name")
    sp.add_argument("--worker-id", help="this worker's name in served_by (default: cloud-<host name>)")
    sp.add_argument("--visibility-s", type=int, help="seconds a request it received stays hidden from other "
                                                     "workers before it is delivered again (default: 60)")
    sp.add_argument("--threads", type=int, help="CPU threads for the local backend (default: all cores)")
    logging_flags(sp)
    sp.set_defaults(fn=commands.cmd_cloud_worker)

    sp = sub.add_parser("up", help="start a whole site: broker, coordinator, agents, the OpenAI-compatible gateway")
    common(sp)
    site_flags(sp)
    sp.add_argument("--http-port", type=int,
                    help="the OpenAI-compatible gateway's port (default: 8000, or a free one; 0: no gateway)")
    sp.set_defaults(fn=commands.cmd_up)

    sp = sub.add_parser("demo", help="start a site, ask it one prompt, stop it")
    common(sp)
    site_flags(sp)
    ask_flags(sp, standalone=False)
    sp.set_defaults(fn=commands.cmd_demo)

    admin.add_commands(sub)

    sp = sub.add_parser("ask", help="publish a prompt as a device and print the answer")
    common(sp)
    ask_flags(sp)
    sp.set_defaults(fn=commands.cmd_ask)

    sp = sub.add_parser("status", help="the site (or every site on the broker) from its retained status topics")
    common(sp)
    sp.add_argument("--all-sites", action="store_true",
                    help="one line per site on the broker, with its health at a glance")
    once = sp.add_mutually_exclusive_group()
    once.add_argument("--json", action="store_true", help="print it as one JSON document")
    once.add_argument("--watch", action="store_true", help="redraw live until Ctrl-C")
    sp.add_argument("--interval", type=positive, default=1.0, help="seconds between redraws (--watch)")
    sp.add_argument("--count", type=whole, default=0, help="stop after this many redraws (--watch; 0: never)")
    sp.set_defaults(fn=watch.cmd_status)

    sp = sub.add_parser("forget", help="clear a retired agent's retained status and Home Assistant discovery")
    common(sp)
    sp.add_argument("agent", help="the agent id, as `fogmesh status` lists it")
    sp.add_argument("--force", action="store_true",
                    help="forget it even if its status says it is online (a running agent announces itself "
                         "again at its next heartbeat), or if it has no status left")
    sp.add_argument("--ha-prefix", default="homeassistant", help="the agent's Home Assistant discovery prefix")
    sp.set_defaults(fn=watch.cmd_forget)

    sp = sub.add_parser("dashboard", help="serve the web dashboard: a site's jobs, counters, charts, agents; all sites")
    common(sp)
    sp.add_argument("--port", type=int, default=8080, help="HTTP port of the page")
    sp.add_argument("--bind", default="127.0.0.1", help="HTTP address to listen on")
    sp.add_argument("--ws", help="the broker's MQTT-over-WebSockets URL, ws:// or wss:// "
                                 "(default: the one `fogmesh up` started, else ws://127.0.0.1:9001)")
    sp.add_argument("--forget-offline-after", type=float, metavar="S",
                    help="the page hides agents offline for longer than S seconds (default: 600)")
    sp.set_defaults(fn=watch.cmd_dashboard)

    sp = sub.add_parser("explain", help="why a job went where it went")
    common(sp)
    sp.add_argument("--ledger", help="the coordinator's ledger (default: this host's for the site)")
    sp.add_argument("--json", action="store_true", help="print the job's history as JSON")
    sp.add_argument("job", help="the job id (or device/job key)")
    sp.set_defaults(fn=watch.cmd_explain)
    describe(p)
    return p

"""The command line's grammar: every subcommand, its flags and their help texts."""

from __future__ import annotations

import argparse
from types import ModuleType

from broker.cli import admin
from broker.runtime import __version__


def parser(commands: ModuleType) -> argparse.ArgumentParser:
    """Every command, flag and help text; ``commands`` holds the ``cmd_*`` functions they run."""
    p = argparse.ArgumentParser(prog="fogmesh", description="An MQTT inference mesh for small language models.")
    p.add_argument("--version", action="version", version=f"fogmesh {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, daemon: bool = False) -> None:
        where = ("[site] broker in the config file, else mqtt://127.0.0.1:1883" if daemon else
                 "[site] broker in the config file, else the site `fogmesh up` started")
        sp.add_argument("--broker", help=f"broker URL, mqtt://host:port or mqtts://host:port (default: {where})")
        sp.add_argument("--site", help="site id (default: site)")
        sp.add_argument("--log-level", default=None)
        sp.add_argument("--log-format", choices=("kv", "json"), default=None)
        sp.add_argument("--config", help="a fogmesh.toml (default: $FOGMESH_CONFIG, else /etc/fogmesh/fogmesh.toml)")
        sp.add_argument("--username", help="MQTT user name (the role's, see docs/security.md)")
        sp.add_argument("--password-file", help="a file holding the MQTT password")
        sp.add_argument("--ca-file", help="the site CA for mqtts:// brokers")

    def site_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--port", type=int, help="broker port (default: 1883, or a free one)")
        sp.add_argument("--agents", type=int, default=2)
        sp.add_argument("--slots", type=int, default=1, help="slots per agent")
        sp.add_argument("--model", help="a GGUF file (default: the bundled Gemma 3 270M)")
        sp.add_argument("--policy", default="deadline")
        sp.add_argument("--local-cloud", action="store_true",
                        help="also run a local SQS-compatible server, a bridge and a cloud worker")

    def ask_flags(sp: argparse.ArgumentParser, standalone: bool = True) -> None:
        sp.add_argument("prompt", nargs=None if standalone else "?", default="MQTT is a protocol that")
        sp.add_argument("--device", help="the device id to ask as (default: your --username when you log in "
                                         "with one, since a device may publish only as itself; else cli)")
        sp.add_argument("--max-tokens", type=int, default=64)
        sp.add_argument("--deadline-ms", type=int)
        sp.add_argument("--priority", type=int)
        if standalone:  # `demo` has --model for the agents' GGUF file instead
            sp.add_argument("--model", help="the model name to ask for (default: the site's)")
        sp.add_argument("--privacy", choices=("edge-only", "cloud-ok"))
        sp.add_argument("--timeout", type=float, default=60.0)
        sp.add_argument("--json", action="store_true", help="print the final message as JSON")
        sp.add_argument("--chat", action="store_true", help="send the prompt as a chat message (messages)")
        sp.add_argument("--system", help="a system message before the prompt (implies --chat)")
        sp.add_argument("--temperature", type=float)
        sp.add_argument("--seed", type=int)
        sp.add_argument("--stop", action="append", help="a stop string; repeatable, up to 4")
        sp.add_argument("--schema", metavar="FILE", help="answer with JSON following this JSON Schema file")
        sp.add_argument("--json-object", action="store_true", help="answer with a JSON object")

    sp = sub.add_parser("agent", help="run an edge agent")
    sp.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: off)")
    common(sp, daemon=True)
    sp.add_argument("--agent-id")
    sp.add_argument("--model", action="append", help="a GGUF file, or name=path; repeat for several models")
    sp.add_argument("--threads", type=int)
    sp.add_argument("--slots", type=int)
    sp.add_argument("--n-ctx", type=int, help="context size per slot")
    sp.add_argument("--chat-format", action="append", metavar="MODEL=FORMAT",
                    help="how MODEL renders chat messages: auto, gemma, chatml, none or a Jinja file; repeatable")
    sp.add_argument("--budget-tokens", type=int, help="sliding-window token budget (see budget_window_s)")
    sp.set_defaults(fn=commands.cmd_agent)

    sp = sub.add_parser("coordinator", help="run the site coordinator")
    sp.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: off)")
    common(sp, daemon=True)
    sp.add_argument("--policy")
    sp.add_argument("--ledger", help="SQLite ledger path")
    sp.set_defaults(fn=commands.cmd_coordinator)

    sp = sub.add_parser("bridge", help="run the MQTT <-> SQS bridge for a site")
    sp.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: off)")
    common(sp, daemon=True)
    sp.add_argument("--endpoint-url", help="an SQS-compatible endpoint (default: AWS via boto3's chain)")
    sp.add_argument("--outbox", help="SQLite outbox path")
    sp.set_defaults(fn=commands.cmd_bridge)

    sp = sub.add_parser("gateway", help="serve the site behind OpenAI's HTTP API (/v1/chat/completions, ...)")
    sp.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: off)")
    common(sp, daemon=True)
    sp.add_argument("--port", type=int, help="HTTP port (default: 8000)")
    sp.add_argument("--bind", help="HTTP address (default: 127.0.0.1; another needs api_keys_file)")
    sp.add_argument("--device-id", help="the device id its jobs run as (default: gateway)")
    sp.add_argument("--api-keys-file", help="a file with one API key per line; clients send one as a bearer token")
    sp.set_defaults(fn=commands.cmd_gateway)

    sp = sub.add_parser("cloud-worker", help="answer the cloud request queue with a larger model")
    sp.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: off)")
    sp.add_argument("--config")
    sp.add_argument("--endpoint-url", help="an SQS-compatible endpoint (default: AWS via boto3's chain)")
    sp.add_argument("--backend", choices=("local", "openai", "synthetic"))
    sp.add_argument("--model", help="local: a GGUF path; openai: the model name")
    sp.add_argument("--worker-id")
    sp.add_argument("--visibility-s", type=int)
    sp.add_argument("--threads", type=int)
    sp.add_argument("--log-level", default=None)
    sp.add_argument("--log-format", choices=("kv", "json"), default=None)
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

    sp = sub.add_parser("status", help="the fleet from its retained status topics")
    common(sp)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--watch", action="store_true", help="redraw live until Ctrl-C")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between redraws (--watch)")
    sp.add_argument("--count", type=int, default=0, help="stop after this many redraws (--watch; 0: never)")
    sp.set_defaults(fn=commands.cmd_status)

    sp = sub.add_parser("dashboard", help="serve the web dashboard: a site's jobs, counters, charts, agents; all sites")
    common(sp)
    sp.add_argument("--port", type=int, default=8080)
    sp.add_argument("--bind", default="127.0.0.1")
    sp.add_argument("--ws", help="the broker's MQTT-over-WebSockets URL, ws:// or wss:// "
                                 "(default: the one `fogmesh up` started, else ws://127.0.0.1:9001)")
    sp.add_argument("--forget-offline-after", type=float, metavar="S",
                    help="the page hides agents offline for longer than S seconds (default: 600)")
    sp.set_defaults(fn=commands.cmd_dashboard)

    sp = sub.add_parser("explain", help="why a job went where it went")
    common(sp)
    sp.add_argument("--ledger", help="the coordinator's ledger (default: this host's for the site)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("job", help="the job id (or device/job key)")
    sp.set_defaults(fn=commands.cmd_explain)
    return p

"""The ``fogmesh`` command: run the daemons, start a site, ask, watch."""

from __future__ import annotations

import argparse
import logging
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from agents.errors import AgentError
from broker.cli.args import parser
from broker.cli.connect import client_settings as _client
from broker.cli.connect import flags as _conn
from broker.runtime import logs
from broker.runtime.errors import FogmeshError
from broker.runtime.logs import kv
from schemas.errors import SchemaError

log = logging.getLogger("fogmesh")


def _on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info(kv("signal", name=signal.Signals(signum).name))
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# ---------------------------------------------------------------------- daemons


def _serve(settings: Any, name: str, build: Callable[[Any], Any]) -> int:
    """Every daemon the same way: its logs, the daemon, SIGTERM / SIGINT to drain, run until stopped."""
    logs.setup(settings.log_level, settings.log_format, name)
    daemon = build(settings)
    _on_signals(daemon.request_stop)
    return int(daemon.run())


def cmd_agent(args: argparse.Namespace) -> int:
    from agents.backends.gpu import load_llama_cpp

    load_llama_cpp()  # first: before numpy
    from agents.agent import build
    from agents.settings import AgentSettings
    from broker.ops.config import load

    formats = None
    if args.chat_format:
        bad = [entry for entry in args.chat_format if "=" not in entry]
        if bad:
            raise FogmeshError(f"--chat-format {bad[0]!r}: write MODEL=FORMAT, e.g. --chat-format mymodel=chatml")
        formats = dict(entry.split("=", 1) for entry in args.chat_format)
    layers = None
    if args.gpu_layers:
        layers = {}
        for entry in args.gpu_layers:
            model, _, count = entry.rpartition("=")
            try:
                layers[model or "*"] = int(count)
            except ValueError:
                raise FogmeshError(f"--gpu-layers {entry!r}: write N or MODEL=N (-1: all layers)") from None
    settings = load(AgentSettings, "agent", args.config, **_conn(args),
                    agent_id=args.agent_id, models=args.model, threads=args.threads, slots=args.slots,
                    batching=args.batching, gpu_layers=layers,
                    n_ctx=args.n_ctx, budget_tokens=args.budget_tokens, chat_formats=formats)
    return _serve(settings, f"agent/{settings.agent_id}", build)


def cmd_coordinator(args: argparse.Namespace) -> int:
    from broker.coordinator.loop import Coordinator
    from broker.coordinator.scheduler import POLICIES
    from broker.coordinator.settings import CoordinatorSettings
    from broker.ops.config import load

    settings = load(CoordinatorSettings, "coordinator", args.config, **_conn(args),
                    policy=args.policy, ledger=args.ledger)
    if settings.policy not in POLICIES:
        raise FogmeshError(f"unknown policy {settings.policy!r}; choose one of {', '.join(POLICIES)}")
    return _serve(settings, "coordinator", Coordinator)


def cmd_bridge(args: argparse.Namespace) -> int:
    from broker.ops.config import load
    from cloud_bridge.bridge import Bridge
    from cloud_bridge.settings import BridgeSettings

    settings = load(BridgeSettings, "bridge", args.config, **_conn(args),
                    endpoint_url=args.endpoint_url, outbox=args.outbox)
    return _serve(settings, "bridge", Bridge)


def cmd_gateway(args: argparse.Namespace) -> int:
    from broker.gateway.gateway import Gateway
    from broker.gateway.settings import GatewaySettings
    from broker.ops.config import load

    settings = load(GatewaySettings, "gateway", args.config, **_conn(args), bind=args.bind, port=args.port,
                    device_id=args.device_id, api_keys_file=args.api_keys_file)
    return _serve(settings, "gateway", Gateway)


def cmd_cloud_worker(args: argparse.Namespace) -> int:
    from agents.backends.gpu import load_llama_cpp

    load_llama_cpp()  # first: before numpy
    from broker.ops.config import load
    from cloud_bridge.settings import WorkerSettings
    from cloud_bridge.worker import Worker, make_backend

    settings = load(WorkerSettings, "cloud-worker", args.config, endpoint_url=args.endpoint_url,
                    metrics_port=args.metrics_port,
                    backend=args.backend, model=args.model, worker_id=args.worker_id,
                    visibility_s=args.visibility_s, threads=args.threads,
                    log_level=args.log_level, log_format=args.log_format)
    return _serve(settings, f"cloud-worker/{settings.worker_id}", lambda s: Worker(s, make_backend(s)))


# ---------------------------------------------------------------------- the site


def _site_spec(args: argparse.Namespace) -> Any:
    from broker.ops.site import SiteSpec

    return SiteSpec(site=args.site or "site", agents=args.agents, port=args.port, broker=args.broker,
                    model=args.model or "", slots=args.slots, policy=args.policy, log_format=args.log_format,
                    local_cloud=args.local_cloud, config=args.config)


def cmd_up(args: argparse.Namespace) -> int:
    from broker.ops.site import Site

    logs.setup(args.log_level, args.log_format, "up")
    spec = _site_spec(args)
    spec.http_port = args.http_port  # None: 8000 or a free port; 0: no gateway
    site = Site(spec)
    stop = threading.Event()
    _on_signals(stop.set)
    try:
        site.start()
        print(site.describe(), flush=True)
        return site.wait(stop)
    finally:
        site.stop()


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a site, ask it one question, stop it."""
    from broker.ops.site import Site

    logs.setup("warning", args.log_format, "demo")
    spec = _site_spec(args)
    spec.log_to_files = True
    site = Site(spec)
    try:
        site.start()
        print(site.describe(), flush=True)
        args.broker, args.site = site.url, site.spec.site
        return cmd_ask(args)
    finally:
        site.stop()


# ---------------------------------------------------------------------- clients


def request_shape(args: argparse.Namespace) -> dict[str, Any]:
    """The prompt or chat messages, and the response format, that ``ask``'s flags ask for."""
    shape: dict[str, Any] = {"prompt": args.prompt}
    if args.chat or args.system:
        system = [{"role": "system", "content": args.system}] if args.system else []
        shape = {"messages": [*system, {"role": "user", "content": args.prompt}]}
    if args.schema:
        try:
            schema = orjson.loads(Path(args.schema).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise FogmeshError(f"--schema {args.schema}: {exc}; give a file holding a JSON Schema") from exc
        shape["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    elif args.json_object:
        shape["response_format"] = {"type": "json_object"}
    return shape


def cmd_ask(args: argparse.Namespace) -> int:
    from broker.runtime.client import ask, site_check

    conn = _client(args)
    prompt: dict[str, Any] = {"max_tokens": args.max_tokens, **request_shape(args)}
    asks_model = args.command == "ask"
    for key in ("deadline_ms", "priority", "model", "privacy", "temperature", "seed", "stop"):
        if key == "model" and not asks_model:
            continue
        if getattr(args, key, None) is not None:
            prompt[key] = getattr(args, key)

    def show(chunk: dict[str, Any]) -> None:
        if not args.json:
            sys.stdout.write(chunk.get("text", ""))
            sys.stdout.flush()

    prompt.setdefault("id", f"ask-{secrets.token_hex(4)}")
    device = args.device or conn.username or "cli"
    snap = site_check(conn.address(), conn.site)
    if snap["coordinator"] is None:
        pass  # this user may not read the site's statuses (a device): nothing to say
    elif snap["coordinator"].get("state") != "online":
        print(f"note: the coordinator of site {conn.site!r} is offline; the prompt waits in the broker until it is "
              "back", file=sys.stderr)
    elif not (snap["mesh"] or {}).get("agents_online") and not (snap["bridge"] or {}).get("reachable"):
        print(f"note: no agent is online on site {conn.site!r} (and no cloud): the job waits for one, up to the "
              "coordinator's max_wait_no_agent_s", file=sys.stderr)
    print(f"job {prompt['id']} as device {device}  (why it went where it went: fogmesh explain {prompt['id']})",
          file=sys.stderr, flush=True)
    try:
        answer = ask(conn.address(), conn.site, prompt, device, args.timeout, show)
    except KeyboardInterrupt:
        print(f"\ncancelled job {prompt['id']}", file=sys.stderr)
        raise
    final = answer.final
    if args.json:
        print(orjson.dumps(final).decode() if final else "null")
    if final is None:
        print(f"\nno answer within {args.timeout:.0f} s (is the site up? try: fogmesh status)", file=sys.stderr)
        return 3
    if not args.json:
        if not answer.chunks:
            print(final.get("text", ""), end="")
        served = final.get("served_by") or {}
        timings = final.get("timings") or {}
        usage = final.get("usage") or {}
        print()
        print(f"-- {final['status']}", end="")
        if served:
            print(f" · served by {served.get('tier')} {served.get('node')}", end="")
        if usage:
            print(f" · {usage.get('completion_tokens')} tokens", end="")
        if "ttft_ms" in timings:
            print(f" · TTFT {timings['ttft_ms']:.0f} ms · {timings.get('decode_tps', 0):.1f} tok/s", end="")
        if "total_ms" in timings:
            print(f" · total {timings['total_ms']:.0f} ms", end="")
        print()
        if final.get("error"):
            err = final["error"]
            print(f"-- {err.get('code')}: {err.get('message')}", file=sys.stderr)
    return 0 if final.get("status") == "done" else 2


def main(argv: list[str] | None = None) -> int:
    args = parser(sys.modules[__name__]).parse_args(argv)
    for key, default in (("log_level", "info"), ("log_format", "kv")):
        if getattr(args, key, None) is None and args.command in ("up", "demo", "ask", "status", "explain", "forget"):
            setattr(args, key, default)
    if args.command in ("ask", "status", "explain", "forget"):
        logs.setup("warning", args.log_format or "kv", args.command)
    try:
        return int(args.fn(args))
    except (FogmeshError, AgentError, SchemaError) as exc:
        print(f"fogmesh {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``fogmesh`` command: run the daemons, start a site, ask, watch."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from agents.errors import AgentError
from broker.cli.args import parser
from broker.runtime import logs
from broker.runtime.errors import FogmeshError
from broker.runtime.logs import kv
from schemas.errors import SchemaError
from schemas.topics import ROOT

log = logging.getLogger("fogmesh")


def _on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info(kv("signal", name=signal.Signals(signum).name))
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _conn(args: argparse.Namespace) -> dict[str, Any]:
    """The connection flags every command shares, as settings overrides."""
    return {"broker": args.broker, "site": args.site, "username": args.username,
            "password_file": args.password_file, "ca_file": args.ca_file,
            "log_level": args.log_level, "log_format": args.log_format,
            "metrics_port": getattr(args, "metrics_port", None)}


def _client(args: argparse.Namespace) -> Any:
    """A client command's connection: flags, then FOGMESH_*, then ``[client]`` of the config file,
    then the site `fogmesh up` started."""
    from broker.ops.config import config_path, load
    from broker.ops.site import current
    from broker.runtime.settings import Connection

    overrides = _conn(args)
    if not (args.broker or os.environ.get("FOGMESH_BROKER") or config_path(args.config)):
        cur = current()
        overrides["broker"] = cur.get("broker")
        overrides["site"] = args.site or os.environ.get("FOGMESH_SITE") or cur.get("site")
    return load(Connection, "client", args.config, **overrides)


# ---------------------------------------------------------------------- daemons


def _serve(settings: Any, name: str, build: Callable[[Any], Any]) -> int:
    """Every daemon the same way: its logs, the daemon, SIGTERM / SIGINT to drain, run until stopped."""
    logs.setup(settings.log_level, settings.log_format, name)
    daemon = build(settings)
    _on_signals(daemon.request_stop)
    return int(daemon.run())


def cmd_agent(args: argparse.Namespace) -> int:
    from agents.agent import build
    from agents.settings import AgentSettings
    from broker.ops.config import load

    formats = None
    if args.chat_format:
        bad = [entry for entry in args.chat_format if "=" not in entry]
        if bad:
            raise FogmeshError(f"--chat-format {bad[0]!r}: write MODEL=FORMAT, e.g. --chat-format mymodel=chatml")
        formats = dict(entry.split("=", 1) for entry in args.chat_format)
    settings = load(AgentSettings, "agent", args.config, **_conn(args),
                    agent_id=args.agent_id, models=args.model, threads=args.threads, slots=args.slots,
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


def cmd_status(args: argparse.Namespace) -> int:
    from broker.cli.console import print_once, watch
    from broker.runtime.client import Fleet, site_check

    conn = _client(args)
    if args.all_sites:
        return _all_sites(conn, args)
    if args.watch:
        fleet = Fleet(conn.address(), conn.site)
        try:
            time.sleep(0.3)  # the retained statuses arrive first
            watch(fleet, args.interval, args.count)
        except KeyboardInterrupt:
            pass
        finally:
            fleet.close()
        return 0
    snap = site_check(conn.address(), conn.site)
    if args.json:
        print(orjson.dumps(snap, option=orjson.OPT_INDENT_2).decode())
    else:
        print_once(snap)
    return 0 if snap["coordinator"] else 3


def _all_sites(conn: Any, args: argparse.Namespace) -> int:
    """``status --all-sites``: one line (or one JSON object) per site on the broker."""
    from broker.cli.console import site_health, sites_table, wide_console
    from broker.runtime.client import snapshots

    if args.watch:
        raise FogmeshError("--all-sites reads every site once; --watch follows one site (--site NAME)")
    address = conn.address()
    rows = [site_health(snap) for snap in snapshots(address)]
    if not rows:
        who = f" that user {address.username!r} may read" if address.username else ""
        print(f"no fogmesh site on {address.url}: no status{who} under {ROOT}/+/ (coordinator, mesh, bridge or "
              "agents); check --broker, and that the ACL lets this user read the sites' status topics "
              "(docs/security.md)", file=sys.stderr)
        return 3
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        wide_console().print(sites_table(rows, address.url))
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Clear a retired agent's retained status and Home Assistant discovery topics."""
    from agents.homeassistant import LEGACY_SENSORS
    from broker.cli.console import liveness
    from broker.runtime.client import clear_retained, snapshot
    from schemas.topics import Topics, check_id

    conn = _client(args)
    agent, address, topics = check_id(args.agent, "agent id"), conn.address(), Topics(conn.site)
    where = f"site {conn.site!r} on {address.url}"
    agents = snapshot(address, conn.site, settle_s=0.3)["agents"]
    status = agents.get(agent) or {}
    if not status and not args.force:
        others = sorted(agents)
        print(f"fogmesh forget: no agent {agent!r} on {where}: nothing is retained on {topics.agent_status(agent)}"
              f"{' (or this user may not read it)' if address.username else ''}; the agents there: "
              f"{', '.join(others) or 'none'} (--force clears its topics anyway)", file=sys.stderr)
        return 1
    state = liveness(status, time.time())
    if state in ("online", "draining") and not args.force:
        print(f"fogmesh forget: agent {agent!r} on {where} is {state} (host {status.get('host', '?')}, pid "
              f"{status.get('pid', '?')}, heard from {max(0.0, time.time() - (status.get('ts') or 0)):.0f} s ago): "
              "stop it first, or --force (a running agent announces itself again at its next heartbeat)",
              file=sys.stderr)
        return 2
    # Home Assistant's first, the status last: an interrupted forget leaves the agent listed, to run again.
    ha = [*(topics.ha_discovery(agent, key, args.ha_prefix) for key in LEGACY_SENSORS),
          topics.ha_device_discovery(agent, args.ha_prefix)]
    refused = clear_retained(address, [*ha, topics.agent_status(agent)])
    for topic, why in refused.items():
        print(f"fogmesh forget: the broker refused to clear {topic} ({why}); the operator role may "
              "(docs/security.md)", file=sys.stderr)
    if refused:
        return 1
    print(f"forgot agent {agent!r} ({state}) of {where}: cleared {topics.agent_status(agent)} and its "
          f"{len(ha)} Home Assistant discovery topics")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the web dashboard and print its addresses: the site's page, and every site's."""
    from broker.cli.webui import page_url, serve
    from broker.ops.site import current
    from broker.runtime.errors import ConfigError

    if args.forget_offline_after is not None and not args.forget_offline_after >= 0:
        raise ConfigError(f"--forget-offline-after must be 0 or more seconds, not {args.forget_offline_after:g}")
    conn = _client(args)
    ws = args.ws or current().get("ws") or "ws://127.0.0.1:9001"
    server = serve(args.bind, args.port)
    url = functools.partial(page_url, args.bind, server.server_address[1], ws, conn.site, conn.username,
                            args.forget_offline_after)
    print(f"fogmesh dashboard for site {conn.site!r}: open\n  {url()}\nevery site on the broker:\n  "
          f"{url(view='fleet')}", flush=True)
    if conn.username:
        where = f" (it is in {conn.password_file})" if conn.password_file else ""
        print(f"  the page asks for the password of {conn.username!r}{where}; it never goes in a URL", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Ask the coordinator (over MQTT) or read a ledger file (--ledger) for a job's history."""
    from broker.coordinator.ledger import Ledger
    from broker.runtime.client import request
    from schemas.topics import Topics

    conn = _client(args)
    broker, site = conn.broker, conn.site
    if args.ledger:
        ledger = Ledger(args.ledger)
        jobs = [{**row, "history": ledger.history(row["key"])} for row in ledger.find(args.job)]
        reply: dict[str, Any] | None = {"job": args.job, "jobs": jobs}
    else:
        reply = request(conn.address(), Topics(site).explain, {"job": args.job})
    if reply is None:
        print(f"no answer from the coordinator of site {site!r} on {broker}", file=sys.stderr)
        return 3
    if not reply["jobs"]:
        print(f"no job {args.job!r} on site {site!r}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode())
        return 0
    for job in reply["jobs"]:
        print(f"job {job['key']}: {job['state']}" + (f" on {job['agent']}" if job.get("agent") else "")
              + f" after {job['attempt']} attempt(s)")
        t0 = job["history"][0]["ts"] if job["history"] else 0.0
        for h in job["history"]:
            d = h.get("detail") or {}
            line = f"  +{(h['ts'] - t0) * 1000:8.1f} ms  {h['state']:<10}"
            if "policy" in d:
                line += f" policy={d['policy']} -> {d.get('agent') or d.get('target')} ({d.get('reason')}),"
                line += f" predicted {d.get('predicted_ms')} ms"
                print(line)
                for c in d.get("candidates", []):
                    mark = "*" if c["agent"] == d.get("agent") else " "
                    print(f"      {mark} {c['agent']:<14} {'eligible' if c['eligible'] else c['reason']:<14}"
                          f" wait {c['wait_ms']:>7.1f} ms  completion {c['completion_ms']:>8.1f} ms"
                          f"  cost {c['cost']:.2e}  {'meets deadline' if c['meets_deadline'] else 'misses deadline'}")
                if d.get("other_candidates"):
                    print("        and " + ", ".join(f"{n} more {why}" for why, n in d["other_candidates"].items()))
                continue
            if d:
                line += " " + " ".join(f"{k}={v}" for k, v in d.items())
            print(line)
    return 0


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

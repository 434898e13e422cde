"""The operator's commands: ``fogmesh status`` (one site, or every site), ``forget``, ``dashboard``
and ``explain``."""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Any

import orjson

from broker.cli.connect import client_settings as _client
from broker.runtime.errors import FogmeshError
from schemas.topics import ROOT


def cmd_status(args: argparse.Namespace) -> int:
    from broker.cli.console import print_once, watch
    from broker.runtime.client import Fleet, site_check

    conn = _client(args)
    if args.all_sites:
        return _all_sites(conn, args)
    if args.watch:
        site_check(conn.address(), conn.site)  # a site that is not there says so, as plain status does
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
    from broker.cli.console import liveness, num, text
    from broker.runtime.client import clear_retained, retained, snapshot
    from schemas.topics import Topics

    conn = _client(args)
    agent, address, topics = _one_level(args.agent), conn.address(), Topics(conn.site)
    where = f"site {conn.site!r} on {address.url}"
    agents = snapshot(address, conn.site, settle_s=0.3)["agents"]
    status = agents.get(agent) or {}
    # a status that is not a JSON object is no agent's, and just what an operator wants gone
    if not status and not args.force and not retained(address, topics.agent_status(agent)):
        others = [text(a) for a in sorted(agents)]
        listed = ", ".join(others[:20]) + (f" and {len(others) - 20} more" if len(others) > 20 else "")
        print(f"fogmesh forget: no agent {agent!r} on {where}: nothing is retained on {topics.agent_status(agent)}"
              f"{' (or this user may not read it)' if address.username else ''}; the agents there: "
              f"{listed or 'none'} (--force clears its topics anyway)", file=sys.stderr)
        return 1
    state = liveness(status, time.time())
    if state in ("online", "draining") and not args.force:
        print(f"fogmesh forget: agent {agent!r} on {where} is {state} (host {text(status.get('host')) or '?'}, "
              f"pid {text(status.get('pid')) or '?'}, heard from {max(0.0, time.time() - num(status.get('ts'))):.0f} "
              "s ago): "
              "stop it first, or --force (a running agent announces itself again at its next heartbeat)",
              file=sys.stderr)
        return 2
    # Home Assistant's first, the status last: an interrupted forget leaves the agent listed, to run again.
    ha = [*(topics.ha_discovery(agent, key, args.ha_prefix) for key in LEGACY_SENSORS),
          topics.ha_device_discovery(agent, args.ha_prefix)]
    status_topic = topics.agent_status(agent)
    failed = clear_retained(address, [*ha, status_topic])
    if any(not why.startswith("refused") for why in failed.values()):
        print(f"fogmesh forget: {address.url} stopped answering ({next(iter(failed.values()))}), so agent "
              f"{agent!r} is not forgotten, or only in part: run forget again once the broker answers",
              file=sys.stderr)
        return 1
    if status_topic in failed:
        print(f"fogmesh forget: the broker refused to clear {status_topic} ({failed[status_topic]}); an "
              "operator user may (docs/security.md)", file=sys.stderr)
        return 1
    print(f"forgot agent {agent!r} ({state}) of {where}: cleared {status_topic}"
          + ("" if failed else f" and its {len(ha)} Home Assistant discovery topics"))
    if failed:
        print(f"fogmesh forget: the broker refused to clear Home Assistant's {', '.join(failed)} "
              f"({next(iter(failed.values()))}): an operator may clear the discovery of the agents its ACL was "
              f"generated with; regenerate it (fogmesh broker config) with {agent!r} among the agent users, or "
              "remove these topics as the broker's administrator", file=sys.stderr)
        return 1
    return 0


def _one_level(agent: str) -> str:
    """The agent id ``forget`` was given, if it names one status topic: any id a status was left
    under, odd ones too (a fogmesh agent's own is 1-128 letters, digits and _ . : @ -)."""
    if not agent or any(c in agent for c in "/+#\0") or len(agent.encode()) > 1024:
        raise FogmeshError(f"agent id {agent!r} must be one topic level: not empty, no / + # (as `fogmesh status` "
                           "lists it)")
    return agent


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the web dashboard and print its addresses: the site's page, and every site's."""
    from broker.cli.webui import page_url, serve
    from broker.ops.site import current
    from broker.runtime.errors import ConfigError

    if args.forget_offline_after is not None and not args.forget_offline_after >= 0:
        raise ConfigError(f"--forget-offline-after must be 0 or more seconds, not {args.forget_offline_after:g}")
    conn = _client(args)
    ws = args.ws or current().get("ws") or "ws://127.0.0.1:9001"
    if not ws.startswith(("ws://", "wss://")):
        raise ConfigError(f"--ws {ws}: the page reaches the broker over WebSockets: give a ws:// or wss:// URL "
                          "(the broker's listener with protocol websockets)")
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
    from broker.coordinator.predict import EDGE_MARGIN
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
                line += f" predicted {d.get('predicted_ms')} ms" + (f", {d['error']}" if d.get("error") else "")
                print(line)
                for tier, p in (("chosen", d.get("parts")), ("cloud", d.get("cloud"))):
                    if p:
                        print(f"      {tier}: wait {p['wait_ms']:.0f} ms + first token {p['first_token_ms']:.0f} ms"
                              f" + decode {p['decode_ms']:.0f} ms ({p['tokens']} tokens assumed)")
                # an edge agent meets a deadline only if its prediction, EDGE_MARGIN more, fits
                missed = f"misses deadline (+{EDGE_MARGIN:.0%} margin)"
                for c in d.get("candidates", []):
                    mark = "*" if c["agent"] == d.get("agent") else " "
                    print(f"      {mark} {c['agent']:<14} {'eligible' if c['eligible'] else c['reason']:<14}"
                          f" wait {c['wait_ms']:>7.1f} ms  completion {c['completion_ms']:>8.1f} ms"
                          f"  cost {c['cost']:.2e}  {'meets deadline' if c['meets_deadline'] else missed}"
                          + (f"  [first token {c['first_token_ms']:.0f} ms, decode {c['decode_ms']:.0f} ms"
                             f" for {c['tokens']} tokens]" if "tokens" in c else ""))
                if d.get("other_candidates"):
                    print("        and " + ", ".join(f"{n} more {why}" for why, n in d["other_candidates"].items()))
                continue
            if d:
                line += " " + " ".join(f"{k}={v}" for k, v in d.items())
            print(line)
    return 0

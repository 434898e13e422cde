"""The operator's commands: ``config check``, ``install-units``, ``broker certs|config``, ``probe``, ``plan``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from broker.runtime.errors import FogmeshError


def cmd_config_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from broker.ops.config import check, config_path

    path = config_path(args.file or args.config_file)
    if path is None:
        print("no config file: give one, set FOGMESH_CONFIG, or create /etc/fogmesh/fogmesh.toml "
              "(deploy/fogmesh.toml is a commented example)", file=sys.stderr)
        return 2
    problems = check(Path(path))
    for problem in problems:
        print(f"{path}:{problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {path}", file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


def cmd_install_units(args: argparse.Namespace) -> int:
    from pathlib import Path

    from broker.ops.systemd import default_user, install_units

    user = args.user or default_user()
    written = install_units(Path(args.dest), args.config, user, args.mosquitto_conf, reload=not args.no_reload)
    for path in written:
        print(f"wrote {path}")
    print(f"next: fogmesh config check {args.config}; then enable what this host runs, e.g.\n"
          f"  systemctl enable --now fogmesh-broker fogmesh-coordinator fogmesh-agent\n"
          f"  journalctl -u fogmesh-coordinator -f")
    return 0


# ---------------------------------------------------------------------- the broker


def cmd_broker_certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from broker.ops.security import default_hosts, make_certs

    hosts = args.host or default_hosts()
    paths = make_certs(Path(args.out), hosts, args.days, args.client or [])
    print(f"site CA      {paths['ca']}   (give this file to every client: ca_file)")
    print(f"server cert  {paths['cert']}  for {', '.join(hosts)}")
    for client in args.client or []:
        print(f"client cert  {Path(args.out) / f'client-{client}.crt'}")
    return 0


def cmd_broker_config(args: argparse.Namespace) -> int:
    from broker.ops.config import load
    from broker.ops.security import BrokerSettings, write_config

    users = None
    if args.user:
        users = dict(u.split("=", 1) if "=" in u else (u, "device") for u in args.user)
    settings = load(BrokerSettings, "broker", args.config, site=args.site, out_dir=args.out,
                    data_dir=args.data_dir, tls_port=args.tls_port, ws_port=args.ws_port, bind=args.bind,
                    users=users)
    paths = write_config(settings)
    print(f"mosquitto config  {paths['config']}   run: mosquitto -c {paths['config']}")
    print(f"ACL               {paths['acl']}  ({len(settings.users)} users)")
    print(f"passwords         {paths['passwd']}; each user's own in {paths['credentials']}/<user>.password")
    print(f"clients connect   mqtts://<this host>:{settings.tls_port} with ca_file = {paths['ca']}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from agents.backends.gpu import load_llama_cpp

    load_llama_cpp()  # first: before numpy
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from agents.model import default_model_path, parse_models
    from agents.probe import cpu_busy, probe
    from agents.settings import AgentSettings
    from broker.cli.console import probe_table, wide_console
    from broker.ops.config import load

    settings = load(AgentSettings, "agent", args.config, models=args.model, threads=args.threads, slots=args.slots)
    models = parse_models(settings.models) if settings.models else [(default_model_path().stem,
                                                                     default_model_path())]
    sizes = tuple(int(x) for x in args.prompt_sizes.split(","))
    err = Console(stderr=True)
    busy = cpu_busy()
    if busy > 0.5:  # agents (or anything else) running here take the cores the figures need
        err.print(f"[bold yellow]warning:[/] this machine is busy ({busy:.0%} of its CPU time): the figures will "
                  "be lower than the device can do; probe while agents here are idle or stopped")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("probing", total=None)
        report = probe(models, settings.threads if args.threads else 0, sizes, args.decode_tokens,
                       step=lambda text: progress.update(task, description=text), slots=settings.slots,
                       batching=settings.batching)
    if args.json:
        print(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        wide_console().print(probe_table(report.to_dict()))
    for m in report.models:
        if m.error:  # in full: the table has room for its start only
            print(f"fogmesh probe: model {m.name}: {m.error}", file=sys.stderr)
    return 0 if all(m.fits and not m.error for m in report.models) else 1


def cmd_plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from broker.cli.console import plan_table, wide_console
    from broker.coordinator.scheduler import CloudTier
    from broker.planning.capacity import Quality, Workload, agents_from_probe, evaluate, recommend

    agents = []
    for spec in args.device:
        path, _, count = spec.partition(":")
        if count and not (count.isdigit() and int(count) > 0):
            raise FogmeshError(f"--device {spec}: the count after ':' must be a whole number of devices, "
                               f"e.g. {path}:3")
        try:
            report = orjson.loads(Path(path).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise FogmeshError(f"--device {path}: not a `fogmesh probe --json` report ({exc})") from exc
        agents += agents_from_probe(report, int(count or 1), args.slots, args.power_w, args.price_per_kwh,
                                    args.model)
    workload = Workload(args.rate, args.tokens, args.prompt_tokens, args.deadline_ms, args.edge_only, args.jobs)
    cloud = CloudTier(enabled=True, latency_s=args.cloud_latency_s, decode_tps=args.cloud_tps,
                      price_in_per_1k=args.price_in_per_1k, price_out_per_1k=args.price_out_per_1k)
    rows = evaluate(workload, agents, cloud, Quality(args.quality_edge, args.quality_cloud, args.alpha))
    choice, why = recommend(rows)
    if args.json:
        print(orjson.dumps({"workload": workload.__dict__, "devices": len(agents), "options": rows,
                            "recommendation": choice, "why": why}, option=orjson.OPT_INDENT_2).decode())
    else:
        wide_console().print(plan_table(rows, choice, why, workload, len(agents)))
    return 0


# ---------------------------------------------------------------------- parser


def add_commands(sub: Any) -> None:
    sp = sub.add_parser("install-units", help="install the systemd units (deploy/systemd) for this host's paths")
    sp.add_argument("--dest", default="/etc/systemd/system", help="the folder to write the unit files to")
    sp.add_argument("--config", default="/etc/fogmesh/fogmesh.toml", help="the config file the units pass")
    sp.add_argument("--user", help="the service user (default: fogmesh when run as root, created if missing)")
    sp.add_argument("--mosquitto-conf", default="/etc/fogmesh/broker/mosquitto.conf",
                    help="the mosquitto configuration the broker unit runs")
    sp.add_argument("--no-reload", action="store_true", help="do not run systemctl daemon-reload")
    sp.set_defaults(fn=cmd_install_units)

    config = sub.add_parser("config", help="the configuration file: check it before a restart")
    csub = config.add_subparsers(dest="config_command", required=True)
    sp = csub.add_parser("check", help="validate a config file: every problem with its key and line")
    sp.add_argument("file", nargs="?", help="default: $FOGMESH_CONFIG, else /etc/fogmesh/fogmesh.toml")
    sp.add_argument("--config", dest="config_file", help="the same, as every other command spells it")
    sp.set_defaults(fn=cmd_config_check)

    broker = sub.add_parser("broker", help="a production broker for the site: certificates, config, ACL")
    bsub = broker.add_subparsers(dest="broker_command", required=True)
    sp = bsub.add_parser("certs", help="make a site CA and a server certificate (and client ones)")
    sp.add_argument("--out", default="/etc/fogmesh/broker/certs", help="the folder for the CA, certificates and keys")
    sp.add_argument("--host", action="append", help="a name or IP clients use for the broker; repeat "
                                                    "(default: this host name, localhost, 127.0.0.1)")
    sp.add_argument("--client", action="append", help="also a client certificate for this name; repeat")
    sp.add_argument("--days", type=int, default=825, help="how long the certificates are valid, in days")
    sp.set_defaults(fn=cmd_broker_certs)
    sp = bsub.add_parser("config", help="write mosquitto.conf, the ACL and the password file from [broker]")
    sp.add_argument("--config", help="a fogmesh.toml with a [broker] table (users by role)")
    sp.add_argument("--site", help="the site the ACL describes (default: [broker] site, else site)")
    sp.add_argument("--out", help="output folder (default: /etc/fogmesh/broker)")
    sp.add_argument("--data-dir", help="mosquitto's persistence folder (default: /var/lib/fogmesh/mosquitto)")
    sp.add_argument("--bind", help="the address the listeners bind (default: 0.0.0.0)")
    sp.add_argument("--tls-port", type=int, help="the MQTT over TLS port (default: 8883)")
    sp.add_argument("--ws-port", type=int, help="also MQTT over secure WebSockets on this port (default: none)")
    sp.add_argument("--user", action="append", help="name=role (device, agent, coordinator, bridge, "
                                                    "dashboard, operator); repeat; replaces [broker.users]")
    sp.set_defaults(fn=cmd_broker_config)


    sp = sub.add_parser("probe", help="measure this device and which models fit it (load, memory, speed)")
    sp.add_argument("--config", help="a fogmesh.toml whose [agent] models and threads to probe "
                                     "(default: $FOGMESH_CONFIG, else /etc/fogmesh/fogmesh.toml)")
    sp.add_argument("--model", action="append", help="a GGUF (or name=path); repeat (default: [agent] models, "
                                                     "else the bundled Gemma 3 270M)")
    sp.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    sp.add_argument("--slots", type=int, help="also measure one job's rate with this many generating at once, "
                                              "as an agent of that many slots would (default: [agent] slots)")
    sp.add_argument("--prompt-sizes", default="32,256,1024", help="prompt lengths in tokens, comma-separated")
    sp.add_argument("--decode-tokens", type=int, default=32, help="tokens generated per speed measurement")
    sp.add_argument("--json", action="store_true", help="the report as JSON (input for fogmesh plan)")
    sp.set_defaults(fn=cmd_probe)

    sp = sub.add_parser("plan", help="edge, cloud or a mix for a workload on probed devices")
    sp.add_argument("--device", action="append", required=True,
                    help="a `fogmesh probe --json` report, optionally :COUNT devices like it; repeat")
    sp.add_argument("--rate", type=float, default=1.0, help="arrivals per second (Poisson)")
    sp.add_argument("--tokens", type=int, default=64, help="completion tokens per job")
    sp.add_argument("--prompt-tokens", type=int, default=50, help="prompt tokens per job")
    sp.add_argument("--deadline-ms", type=float, default=5000, help="each job's deadline, in milliseconds")
    sp.add_argument("--edge-only", type=float, default=0.0, help="share of jobs that must stay on the edge (0-1)")
    sp.add_argument("--jobs", type=int, default=2000, help="jobs to simulate")
    sp.add_argument("--slots", type=int, default=1, help="slots per device")
    sp.add_argument("--model", help="the probed model to plan with (default: the report's first)")
    sp.add_argument("--power-w", type=float, default=10.0, help="a device's power draw while generating, in watts")
    sp.add_argument("--price-per-kwh", type=float, default=0.30, help="the price of electricity per kWh")
    sp.add_argument("--cloud-latency-s", type=float, default=1.0,
                    help="seconds of WAN and queueing before the cloud's first token")
    sp.add_argument("--cloud-tps", type=float, default=60.0, help="the cloud model's decode rate, tokens/s")
    sp.add_argument("--price-in-per-1k", type=float, default=0.00015, help="the cloud's price per 1,000 prompt tokens")
    sp.add_argument("--price-out-per-1k", type=float, default=0.0006,
                    help="the cloud's price per 1,000 completion tokens")
    sp.add_argument("--quality-edge", type=float, default=0.6, help="quality score of the edge model (0-1)")
    sp.add_argument("--quality-cloud", type=float, default=0.85, help="quality score of the cloud model (0-1)")
    sp.add_argument("--alpha", type=float, default=0.5, help="U = alpha*quality + (1-alpha)*responsiveness")
    sp.add_argument("--json", action="store_true", help="the options and the recommendation as JSON")
    sp.set_defaults(fn=cmd_plan)


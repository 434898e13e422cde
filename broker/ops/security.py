"""A production broker for a site: TLS, passwords and an ACL by role (``fogmesh broker config|certs``).

The ACL lists every user's topics explicitly (mosquitto's ``user`` blocks)
rather than ``pattern`` lines, because a pattern applies to every user: with
``pattern write fogmesh/<site>/prompts/%u`` an agent or a dashboard could
publish prompts too. Regenerate the files when the roster changes and send
mosquitto SIGHUP (systemctl reload) to pick them up without dropping clients.
"""

from __future__ import annotations

import base64
import datetime
import getpass
import hashlib
import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from broker.ops.mosquitto import MAX_PACKET_BYTES, WS_BIND_FIX, delivery_settings
from broker.runtime.errors import ConfigError
from broker.runtime.logs import kv
from schemas.topics import HA_PREFIX, Topics, check_id

log = logging.getLogger("fogmesh.security")
ROLES = ("device", "agent", "coordinator", "bridge", "dashboard", "operator", "homeassistant", "gateway")
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for its $7$ (PBKDF2-SHA512) hashes


@dataclass
class BrokerSettings:
    """``[broker]`` in the config file: what ``fogmesh broker config`` generates."""

    site: str = "site"
    out_dir: str = "/etc/fogmesh/broker"  # mosquitto.conf, acl, passwd, certs/, credentials/
    data_dir: str = "/var/lib/fogmesh/mosquitto"  # persistence
    bind: str = "0.0.0.0"
    tls_port: int = 8883
    ws_port: int = 0  # MQTT over secure WebSockets for the web dashboard (0 = none)
    ws_bind: str = ""  # the WebSockets listener's IPv4 address (default: bind)
    ca_file: str = ""  # given certificates; empty: those `fogmesh broker certs` made in out_dir/certs
    cert_file: str = ""
    key_file: str = ""
    require_certificate: bool = False  # also demand a client certificate signed by the site CA
    max_packet_bytes: int = MAX_PACKET_BYTES
    run_as: str = ""  # the user mosquitto runs as (default: the one who runs it)
    users: dict[str, str] = field(default_factory=dict)  # name -> role

    def __post_init__(self) -> None:
        check_id(self.site, "site id")
        for name, role in self.users.items():
            check_id(name, "user name")
            if role not in ROLES:
                raise ConfigError(f"broker.users.{name}: role {role!r} is not one of {', '.join(ROLES)}")


# ---------------------------------------------------------------------- ACL


def acl_rules(topics: Topics, name: str, role: str, agents: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(access, topic filter) pairs a user of ``role`` called ``name`` is allowed, and nothing else;
    ``agents``: the site's agent users, whose Home Assistant discovery an operator may clear."""
    p = topics.prefix
    status = [("read", topics.agent_status()), ("read", topics.coordinator_status),
              ("read", topics.bridge_status), ("read", topics.mesh_status), ("read", topics.mesh_history)]
    # Every live job's device and job ids: for the site's operators, not for every reader of its health
    jobs = ("read", topics.mesh_jobs)
    if role == "device":
        return [("write", topics.prompts(name)), ("write", topics.cancel(name)), ("read", topics.results(name))]
    if role == "agent":
        return [("read", topics.assign(name)), ("read", topics.control(name)),
                ("write", topics.agent_status(name)), ("write", topics.events(name)),
                ("write", f"{p}/results/#"),  # agents stream chunks straight to the devices
                # ha_discovery: its device config, and the per-sensor configs of an older fogmesh,
                # which it reads to migrate them and then clears
                ("write", topics.ha_device_discovery(name)), ("read", topics.ha_discovery(name)),
                ("write", topics.ha_discovery(name))]
    if role == "coordinator":
        return [("read", topics.prompts()), ("read", topics.cancel()), ("read", topics.agent_status()),
                ("read", topics.events()), ("read", topics.bridge_status), ("read", topics.cloud_events),
                ("read", topics.explain),
                ("write", topics.assign("+")), ("write", topics.control("+")), ("write", f"{p}/results/#"),
                ("write", f"{p}/deadletter/#"), ("write", topics.coordinator_status),
                ("write", topics.mesh_status), ("write", topics.mesh_jobs), ("write", topics.mesh_history),
                ("write", topics.cloud_requests),
                ("write", f"{topics.explain}/reply/#"),
                ("write", topics.ha_site_discovery())]  # ha_discovery: the site device
    if role == "bridge":
        return [("read", topics.cloud_requests), ("write", topics.cloud_events), ("write", topics.bridge_status)]
    if role == "dashboard":
        return [*status, jobs]
    if role == "homeassistant":  # its MQTT integration: the discovery configs, the states they point at
        return [*status, ("read", f"{HA_PREFIX}/#"), ("write", f"{HA_PREFIX}/status")]
    if role == "gateway":  # `fogmesh gateway`: asks as a device of its own name; /v1/models reads the statuses
        return [*status, ("write", topics.prompts(name)), ("write", topics.cancel(name)),
                ("read", topics.results(name))]
    if role == "operator":  # may also ask, as a device of its own name (`fogmesh ask`)
        # `fogmesh forget` clears a retired agent's status and discovery: the site's agents' nodes only,
        # not the whole discovery prefix, which other Home Assistant devices share
        discovery = [("write", t) for agent in agents for t in (topics.ha_discovery(agent),
                                                                 topics.ha_device_discovery(agent))]
        return [*status, jobs, ("read", f"{p}/deadletter/#"), ("write", topics.explain),
                ("read", f"{topics.explain}/reply/#"), ("write", topics.prompts(name)),
                ("write", topics.cancel(name)), ("read", topics.results(name)),
                ("write", topics.agent_status()), *discovery]
    raise ConfigError(f"unknown role {role!r}; one of {', '.join(ROLES)}")


def render_acl(site: str, users: dict[str, str]) -> str:
    topics = Topics(site)
    agents = sorted(name for name, role in users.items() if role == "agent")
    lines = [f"# fogmesh ACL for site {site!r}: generated by `fogmesh broker config`; regenerate, don't edit.",
             "# Anything not listed is denied."]
    for name, role in sorted(users.items()):
        lines += ["", f"# {role}", f"user {name}"]
        lines += [f"topic {access} {topic}" for access, topic in acl_rules(topics, name, role, agents)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- passwords


def password_hash(password: str, salt: bytes | None = None) -> str:
    """A mosquitto 2.x password file hash (``$7$``: PBKDF2-SHA512), as mosquitto_passwd writes it."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _write_private(path: Path, data: str | bytes) -> None:
    """Create ``path`` readable by its owner only, before anything is written to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, 0o600)


def credentials(out: Path, users: dict[str, str]) -> dict[str, str]:
    """Each user's password: kept from ``out/credentials/<user>.password``, else a new random one."""
    passwords = {}
    for name in sorted(users):
        path = out / "credentials" / f"{name}.password"
        if path.exists():
            passwords[name] = path.read_text().strip()
        else:
            passwords[name] = secrets.token_urlsafe(24)
            _write_private(path, passwords[name] + "\n")
    return passwords


# ---------------------------------------------------------------------- certificates


def make_certs(out: Path, hosts: list[str], days: int = 825, clients: Sequence[str] = ()) -> dict[str, Path]:
    """A site CA and a server certificate for ``hosts`` (names or IPs), plus optional client certificates.

    An existing CA in ``out`` is reused, so server and client certificates can be
    added later without re-deploying the CA to every device.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    pem = serialization.Encoding.PEM

    def save_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        _write_private(path, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca_key_path, ca_path = out / "ca.key", out / "ca.crt"
    if ca_key_path.exists() and ca_path.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fogmesh site CA")])
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False,
                                           encipher_only=False, decipher_only=False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        save_key(ca_key, ca_key_path)  # type: ignore[arg-type]
        ca_path.write_bytes(ca.public_bytes(pem))

    def issue(common_name: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier, stem: str) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        save_key(key, out / f"{stem}.key")
        (out / f"{stem}.crt").write_bytes(cert.public_bytes(pem))

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    issue(hosts[0], sans, ExtendedKeyUsageOID.SERVER_AUTH, "server")
    for client in clients:
        issue(check_id(client, "client name"), [], ExtendedKeyUsageOID.CLIENT_AUTH, f"client-{client}")
    log.info(kv("certs_written", dir=out, hosts=",".join(hosts), clients=",".join(clients)))
    return {"ca": ca_path, "cert": out / "server.crt", "key": out / "server.key"}


def default_hosts() -> list[str]:
    return [socket.gethostname(), "localhost", "127.0.0.1"]


# ---------------------------------------------------------------------- mosquitto.conf


# A client id is its user name, so nobody can take over another user's client id (kick a daemon
# off, fire its Last Will, resume or destroy its session and the messages queued in it). Each
# connection needs a user of its own. mosquitto reads this option per listener, whatever
# per_listener_settings says, so every listener block carries it.
CLIENT_ID_IS_USER = "use_username_as_clientid true\n"


def render_config(s: BrokerSettings, out: Path, ca: str, cert: str, key: str) -> str:
    tls = f"{CLIENT_ID_IS_USER}cafile {ca}\ncertfile {cert}\nkeyfile {key}\ntls_version tlsv1.2\n"
    if s.require_certificate:
        tls += "require_certificate true\nuse_identity_as_username false\n"
    ws = (f"\n# MQTT over secure WebSockets, for the web dashboard (same users, passwords and ACL)\n"
          f"listener {s.ws_port} {s.ws_bind or s.bind}\nprotocol websockets\n{WS_BIND_FIX}{tls}") if s.ws_port else ""
    return f"""# fogmesh site {s.site!r}: generated by `fogmesh broker config`; regenerate, don't edit.
# TLS only, no anonymous access, a password per user, an ACL by role.
per_listener_settings false
allow_anonymous false
password_file {out / 'passwd'}
acl_file {out / 'acl'}
user {s.run_as or getpass.getuser()}

listener {s.tls_port} {s.bind}
{tls}{ws}
{delivery_settings(s.data_dir, s.max_packet_bytes, connection_messages=True)}"""


def write_config(s: BrokerSettings) -> dict[str, Path]:
    """Write mosquitto.conf, acl, passwd and credentials/ under ``s.out_dir``; return their paths."""
    out = Path(s.out_dir)
    if not s.users:
        raise ConfigError("broker.users is empty: list who may connect, e.g. "
                          "[broker.users] coordinator = \"coordinator\"  sensor-1 = \"device\"")
    if bool(s.cert_file) != bool(s.key_file):
        raise ConfigError("broker.cert_file and broker.key_file go together")
    if s.cert_file:
        ca, cert, key = s.ca_file, s.cert_file, s.key_file
    else:
        certs = out / "certs"
        if not (certs / "server.crt").exists():
            raise ConfigError(f"no certificates in {certs}: run `fogmesh broker certs --out {certs}` "
                              "or set broker.cert_file / key_file / ca_file")
        ca, cert, key = str(certs / "ca.crt"), str(certs / "server.crt"), str(certs / "server.key")
    for label, path in (("ca_file", ca), ("cert_file", cert), ("key_file", key)):
        if not Path(path).is_file():
            raise ConfigError(f"broker.{label} {path} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    passwords = credentials(out, s.users)
    _write_private(out / "passwd", "".join(f"{n}:{password_hash(pw)}\n" for n, pw in sorted(passwords.items())))
    (out / "acl").write_text(render_acl(s.site, s.users))
    (out / "mosquitto.conf").write_text(render_config(s, out, ca, cert, key))
    log.info(kv("broker_config_written", dir=out, users=len(s.users), tls_port=s.tls_port, ws_port=s.ws_port))
    return {"config": out / "mosquitto.conf", "acl": out / "acl", "passwd": out / "passwd",
            "credentials": out / "credentials", "ca": Path(ca)}

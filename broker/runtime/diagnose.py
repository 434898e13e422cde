"""Why a connection to the broker failed, in words that name the cause and the fix.

A wrong password, a CA the client does not trust, ``mqtt://`` sent to a TLS port and a port
where nothing listens all used to end in the same "no connection within 10 s"; each is told
apart here, at once.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

CREDENTIALS_HINT = ("check username and password_file (`fogmesh broker config` writes each user's password "
                    "to credentials/<user>.password)")


def unreachable(host: str, port: int, tls: ssl.SSLContext | None, timeout_s: float = 3.0) -> str | None:
    """What stops a connection to ``host:port`` before MQTT starts, or None if nothing does."""
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        return (f"nothing listens on {where}: is the broker running there, on that port? "
                "(`fogmesh up` starts one and prints its URL)")
    except OSError as exc:
        return f"cannot reach {where}: {exc.strerror or exc}"
    with sock:
        if tls is None:
            return None
        try:
            tls.wrap_socket(sock, server_hostname=host).close()
        except ssl.SSLCertVerificationError as exc:
            return (f"the broker's TLS certificate at {where} is not trusted ({exc.verify_message}): set ca_file to "
                    "the site CA that signed it (`fogmesh broker certs` writes certs/ca.crt), and reach the broker "
                    "by a name or address the certificate lists")
        except (ssl.SSLError, OSError) as exc:
            return (f"no TLS on {where} ({getattr(exc, 'reason', None) or exc}): is it a TLS listener? "
                    f"a plaintext broker takes mqtt://{where}")
    return None


def speaks_tls(host: str, port: int, timeout_s: float = 3.0) -> bool:
    """True if ``host:port`` completes a TLS handshake (asked when a plaintext MQTT client gets nowhere)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            ctx.wrap_socket(sock, server_hostname=host).close()
        return True
    except (ssl.SSLError, OSError):
        return False


def refusal(url: str, username: str | None, reason: Any) -> str:
    """The broker answered CONNECT with a failure: say what it means for this client."""
    code, text = int(getattr(reason, "value", 0) or 0), str(reason)
    who = f"user {username!r}" if username else "an anonymous client"
    if code in (0x86, 0x87) and not username:  # bad user name or password / not authorized
        return (f"the broker at {url} refused {who} ({text}): it wants a user name and password; set username "
                f"and password_file (--username, --password-file)")
    if code in (0x86, 0x87):
        return f"the broker at {url} refused {who} ({text}): wrong user name or password? {CREDENTIALS_HINT}"
    if code == 0x85:
        return f"the broker at {url} refused {who}'s client id ({text})"
    return f"the broker at {url} refused {who}: {text}"

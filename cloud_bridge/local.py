"""A local SQS-compatible server (moto's server mode) for demos and tests on one machine."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from broker.runtime.errors import SiteError
from broker.runtime.logs import kv
from broker.runtime.proc import own_session, terminate

log = logging.getLogger("fogmesh.local-cloud")
# moto accepts any credentials; boto3 still insists on having some.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "fogmesh-local", "AWS_SECRET_ACCESS_KEY": "fogmesh-local",
                     "AWS_DEFAULT_REGION": "us-east-1"}


def local_env() -> dict[str, str]:
    """The environment for a process that talks to the local server (real credentials are left alone)."""
    env = dict(os.environ)
    for key, value in LOCAL_CREDENTIALS.items():
        env.setdefault(key, value)
    return env


class LocalSqs:
    def __init__(self, port: int, log_dir: Path, host: str = "127.0.0.1") -> None:
        self.host, self.port, self.log_dir = host, port, log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / "moto.log").open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                                         stdout=out, stderr=out, env=local_env(), preexec_fn=own_session)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SiteError(f"the local SQS server exited; see {self.log_dir / 'moto.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=0.5):
                    log.info(kv("local_sqs_started", url=self.url, pid=self.proc.pid))
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise SiteError(f"the local SQS server did not answer on {self.url} within {timeout_s:.0f} s")

    def stop(self) -> None:
        terminate(self.proc)

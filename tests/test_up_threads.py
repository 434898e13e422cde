"""`fogmesh up` shares the machine's cores among every process that runs a model."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from broker.ops.site import model_threads
from tests.test_first_day import up


def test_the_local_cloud_worker_gets_its_share_of_the_cores_beside_the_agents():
    assert model_threads(2, 1, local_cloud=False) == 2
    assert model_threads(2, 1, local_cloud=True) == 1  # was 2 each: 4 threads on 2 cores
    assert model_threads(8, 3, local_cloud=True) == 2
    assert model_threads(2, 2, local_cloud=True) == 1  # never fewer than one


def descendants(pid: int) -> list[list[str]]:
    """The command lines of every process under ``pid``."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:  # a thread or a process may end between the listing and the read
                children = (task / "children").read_text().split()
            except FileNotFoundError:
                continue
            for child in children:
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
                except FileNotFoundError:
                    continue
                todo.append(int(child))
                out.append(cmdline)
    return out


@pytest.mark.slow
def test_fogmesh_up_local_cloud_gives_no_more_model_threads_than_cores(tmp_path):
    site = up(tmp_path, "--agents", "1", "--site", "sharedcores", "--local-cloud", "--http-port", "0")
    try:
        assert site.stdout is not None
        for line in site.stdout:
            if "is up" in line:
                break
        runners = [cmd for cmd in descendants(site.pid) if "agent" in cmd or "cloud-worker" in cmd]
        threads = [int(cmd[cmd.index("--threads") + 1]) for cmd in runners]
        assert len(runners) == 2 and sum(threads) <= max(os.cpu_count() or 1, 2), runners
    finally:
        site.send_signal(signal.SIGINT)
        site.communicate(timeout=90)

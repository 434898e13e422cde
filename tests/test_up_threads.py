"""`fogmesh up` shares the machine's cores among every process that runs a model."""

from __future__ import annotations

from broker.ops.site import model_threads


def test_the_local_cloud_worker_gets_its_share_of_the_cores_beside_the_agents():
    assert model_threads(2, 1, local_cloud=False) == 2
    assert model_threads(2, 1, local_cloud=True) == 1  # was 2 each: 4 threads on 2 cores
    assert model_threads(8, 3, local_cloud=True) == 2
    assert model_threads(2, 2, local_cloud=True) == 1  # never fewer than one

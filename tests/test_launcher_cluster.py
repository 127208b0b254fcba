"""Scheduling across nodes and GPUs: a two-node `ray.cluster_utils.Cluster` on this machine, each node
declaring two (logical) GPUs, and a sweep of eight one-GPU trials joining it with `hydra.launcher.address`.

Ray hands each trial its GPU by setting CUDA_VISIBLE_DEVICES; without a real GPU torch still reports no
CUDA, so `trainer.device=auto` trains on the CPU and the test checks the scheduling alone.
"""

from __future__ import annotations

import pytest

from tests.conftest import runs_of
from tests.test_launcher import TINY, sweep

pytestmark = pytest.mark.slow  # every test here trains in subprocesses or on Ray (tens of seconds)


@pytest.fixture(scope="module")
def two_gpu_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=4, num_gpus=2)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_eight_one_gpu_trials_use_both_nodes_and_one_gpu_each(two_gpu_nodes, store, cache_dir, tmp_path):
    res = sweep(*TINY, "seed=range(8)", "hydra.launcher.num_gpus=1", "hydra.launcher.num_cpus=0.5",
                f"tracking.uri={store}", f"cache_dir={cache_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                address=two_gpu_nodes.address)
    assert res.returncode == 0, res.stderr
    runs = runs_of(store)
    assert len(runs) == 8 and set(runs["status"]) == {"FINISHED"}

    node_ids = {n.node_id for n in two_gpu_nodes.list_all_nodes()}
    assert set(runs["tags.ray_node_id"]) == node_ids  # both nodes ran trials
    # Each trial saw exactly one GPU id, one of its node's two.
    assert set(runs["tags.cuda_visible_devices"]) <= {"0", "1"}
    assert (runs["tags.device"] == "cpu").all()  # no real CUDA here: auto falls back to the CPU

    # Never more than four at once, and never two at once on the same GPU of the same node.
    spans = list(zip(runs["start_time"], runs["end_time"], runs["tags.ray_node_id"], runs["tags.cuda_visible_devices"]))
    most = 0
    for start, _, _, _ in spans:
        live = [(node, gpu) for s, e, node, gpu in spans if s <= start < e]
        assert len(set(live)) == len(live), live
        most = max(most, len(live))
    assert 2 <= most <= 4

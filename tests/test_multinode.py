"""Pool and sonify on a Ray cluster of three nodes started on this machine: the output equals that
of a single-node run, and the work really ran on more than one node.

The cluster (ray.cluster_utils.Cluster: a head and two worker nodes, one CPU each) lives in a
process of its own with a Ray temp folder of its own. Cluster records its address as this
machine's default Ray, which every `ray.init()` without an address would then join; kept in its
own folder, that record reaches no other Ray user of the machine, and the pytest process, which
may hold a Ray of its own, is left alone. The runs join it as a user would, with
`ray.address=HOST:PORT` on the command line. Where each task and actor ran is read from the
cluster's logs: each worker's core log names its node, and its output file carries Ray's marker
line for every task and actor it ran."""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import traceback
from collections import defaultdict
from pathlib import Path

import pytest

NODES = 3
OBJECT_STORE_BYTES = 100 * 1024 * 1024
POOL_STAGES = ("standardize", "embed_audio")
SONIFY_STAGES = (
    "decode_images",
    "vlm_transformers",
    "parse_concepts",
    "retrieve_chunks",
    "plan_chunks",
    "write_shards",
)


def serve_cluster(conn, temp_dir: str) -> None:
    """Starts the cluster, sends its address, node ids and logs folder, and shuts it down when
    told to, when the test process goes away, or on SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    os.environ["RAY_TMPDIR"] = temp_dir
    from ray.cluster_utils import Cluster

    cluster = Cluster()
    try:
        for _ in range(NODES):
            # One CPU per node: two model actors of one CPU each cannot share a node.
            cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
        cluster.wait_for_nodes()
        conn.send(
            {
                "address": cluster.address,
                "nodes": [node.node_id for node in cluster.list_all_nodes()],
                "logs": cluster.head_node.get_logs_dir_path(),
            }
        )
        conn.recv()
    except EOFError:
        pass
    except Exception:
        conn.send({"error": traceback.format_exc()})
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def cluster():
    # Short on purpose: Ray's socket paths under it must stay within 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="smn", dir="/tmp")
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=serve_cluster, args=(theirs, temp_dir), name="ray-test-cluster")
    server.start()
    try:
        assert ours.poll(240), "the test cluster did not start in 240 s"
        info = ours.recv()
        assert "error" not in info, info.get("error")
        yield info
    finally:
        try:
            ours.send("stop")
        except OSError:
            pass
        server.join(120)
        if server.is_alive():
            server.terminate()
            server.join(60)
        if server.is_alive():
            server.kill()
            server.join()
        shutil.rmtree(temp_dir, ignore_errors=True)


def work_by_node(logs: Path) -> dict[str, set[str]]:
    """Task or actor name (as Ray Data names its operators) -> ids of the nodes that ran it."""
    from ray._private.ray_constants import LOG_PREFIX_ACTOR_NAME, LOG_PREFIX_TASK_NAME

    node_of = {}
    for path in logs.glob("python-core-worker-*.log"):
        match = re.search(r"worker_id=(\w+) node_id=(\w+)", path.read_text(errors="replace"))
        if match:
            node_of[match.group(1)] = match.group(2)
    work: dict[str, set[str]] = defaultdict(set)
    for path in logs.glob("worker-*.out"):
        worker_id = path.name.split("-")[1]
        for line in path.read_text(errors="replace").splitlines():
            for prefix in (LOG_PREFIX_TASK_NAME, LOG_PREFIX_ACTOR_NAME):
                if line.startswith(prefix):
                    work[line.removeprefix(prefix)].add(node_of[worker_id])
    return dict(work)


def nodes_running(work: dict[str, set[str]], stages: tuple[str, ...]) -> dict[str, set[str]]:
    """Stage -> nodes where a task or actor of that stage ran; fused operators count for each stage."""
    return {
        stage: set().union(*[nodes for name, nodes in work.items() if f"MapBatches({stage})" in name])
        for stage in stages
    }


def test_pool_and_sonify_across_three_nodes_equal_a_single_node_run(single_node_run, cluster, pipeline_runs):
    config = pipeline_runs.config("three-nodes", clap_concurrency=2, vlm_concurrency=2)
    address = f"ray.address={cluster['address']}"
    pipeline_runs.run("pool", config, address)
    pipeline_runs.run("sonify", config, address)

    work = work_by_node(Path(cluster["logs"]))
    assert set().union(*work.values()) <= set(cluster["nodes"]), work
    pool_nodes = nodes_running(work, POOL_STAGES)
    sonify_nodes = nodes_running(work, SONIFY_STAGES)
    assert all(pool_nodes.values()) and all(sonify_nodes.values()), f"a stage ran nowhere: {pool_nodes} {sonify_nodes}"
    # Two CLAP actors and two VLM actors of one CPU each, on nodes of one CPU each.
    assert len(pool_nodes["embed_audio"]) == 2 and len(sonify_nodes["vlm_transformers"]) == 2, work
    assert len(set().union(*pool_nodes.values())) >= 2 and len(set().union(*sonify_nodes.values())) >= 2, work

    reference = single_node_run.folder()
    assert pipeline_runs.pool_outputs(config.parent / "pool") == pipeline_runs.pool_outputs(reference / "pool")
    rows, shards = pipeline_runs.sonify_outputs(config.parent / "out")
    reference_rows, reference_shards = pipeline_runs.sonify_outputs(reference / "out")
    assert rows == reference_rows
    assert shards.keys() == reference_shards.keys()
    for name, members in shards.items():
        assert members == reference_shards[name], f"shard {name} differs"

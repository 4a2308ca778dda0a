"""A Ray worker killed with SIGKILL in the middle of a stage: its batch is run again (a new task, or
the same actor restarted) and the run ends with the output of an uninterrupted run.

Pool and sonify run as separate processes. A watcher finds, among the run's own processes, a Ray
worker whose process title says it is executing a batch of a given stage (`ray::MapBatches(<stage>)`
for a task, `ray::MapWorker(...<stage>...).submit` for an actor), and kills it once. Ray's driver
log then has to show that it resubmitted that very stage's task, with the retry limit from the
config, so a kill that hit nothing, or hit an idle process, fails the test."""

from __future__ import annotations

import re
import signal
import threading
import time
from dataclasses import dataclass

import psutil

RETRIES = ("ray.task_retries=2", "ray.actor_restarts=2")


@dataclass
class Kill:
    pid: int
    title: str
    seconds: float
    died: bool


class WorkerKiller(threading.Thread):
    """Kills, once per target, the first process under `driver` whose title matches the target."""

    def __init__(self, driver: int, targets: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(driver)
        self.targets = {name: re.compile(pattern) for name, pattern in targets.items()}
        self.killed: dict[str, Kill] = {}
        self.started = time.monotonic()

    def driver_running(self) -> bool:
        try:
            return self.root.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def run(self) -> None:
        while len(self.killed) < len(self.targets) and self.driver_running():
            try:
                workers = self.root.children(recursive=True)
            except psutil.Error:
                return
            for worker in workers:
                try:
                    title = " ".join(worker.cmdline()).strip()
                except psutil.Error:
                    continue
                for name, pattern in self.targets.items():
                    if name not in self.killed and pattern.fullmatch(title):
                        seconds = time.monotonic() - self.started
                        worker.send_signal(signal.SIGKILL)
                        gone, _ = psutil.wait_procs([worker], timeout=10)
                        self.killed[name] = Kill(worker.pid, title, seconds, died=bool(gone))
            time.sleep(0.02)


def run_with_kills(pipeline_runs, command: str, config, targets: dict[str, str]):
    running = pipeline_runs.start(command, config, *RETRIES)
    killer = WorkerKiller(running.pid, targets)
    killer.start()
    running.finish()
    killer.join(10)
    missed = sorted(set(targets) - set(killer.killed))
    assert not missed, f"no worker was caught executing {missed}; killed {killer.killed}; see {running.log}"
    assert all(kill.died for kill in killer.killed.values()), killer.killed
    return running, killer.killed


def resubmitted_task(log: str, task_name: str) -> str | None:
    """Ray's line for the resubmission of a task whose name (Ray Data's operator name, and for an
    actor its method) matches `task_name`."""
    match = re.search(rf"Will resubmit task[^\n]*task_name={task_name},[^\n]*", log)
    return match.group(0) if match else None


def test_pool_survives_a_killed_standardize_task_and_embedding_actor(pipeline_runs, single_node_run):
    config = pipeline_runs.config("pool-with-kills")
    running, killed = run_with_kills(
        pipeline_runs,
        "pool",
        config,
        {
            "standardize task": r"ray::MapBatches\(standardize\)",
            "embedding actor": r"ray::MapWorker\(MapBatches\(embed_audio\)\)\.submit",
        },
    )
    log = running.driver_core_log()
    task_retry = resubmitted_task(log, r"MapBatches\(standardize\)")
    assert task_retry is not None, f"Ray resubmitted no standardize task after {killed['standardize task']}"
    actor_retry = resubmitted_task(log, r"MapWorker\(MapBatches\(embed_audio\)\)\.submit")
    assert actor_retry is not None, f"Ray resubmitted no embedding batch after {killed['embedding actor']}"
    # The limit set by ray.task_retries reached both kinds of work.
    assert "max_retries=2," in task_retry and "max_retries=2," in actor_retry
    assert re.search(r"state: RESTARTING[^\n]*num_restarts: 1", log), "the embedding actor was not restarted"

    assert pipeline_runs.pool_outputs(config.parent / "pool") == pipeline_runs.pool_outputs(single_node_run.pool_dir())


def test_sonify_survives_a_killed_vlm_actor_and_shard_writer(pipeline_runs, single_node_run):
    config = pipeline_runs.config("sonify-with-kills", pool_dir=single_node_run.pool_dir())
    running, killed = run_with_kills(
        pipeline_runs,
        "sonify",
        config,
        {
            "vlm actor": r"ray::MapWorker\(.*MapBatches\(vlm_transformers\)\)\.submit",
            "shard writer task": r"ray::MapBatches\(write_shards\)",
        },
    )
    log = running.driver_core_log()
    vlm_retry = resubmitted_task(log, r"MapWorker\([^\n]*MapBatches\(vlm_transformers\)\)\.submit")
    assert vlm_retry is not None, f"Ray resubmitted no VLM batch after {killed['vlm actor']}"
    writer_retry = resubmitted_task(log, r"MapBatches\(write_shards\)")
    assert writer_retry is not None, f"Ray resubmitted no shard writer after {killed['shard writer task']}"
    assert "max_retries=2," in vlm_retry and "max_retries=2," in writer_retry
    assert re.search(r"state: RESTARTING[^\n]*num_restarts: 1", log), "the VLM actor was not restarted"

    rows, shards = pipeline_runs.sonify_outputs(config.parent / "out")
    reference_rows, reference_shards = pipeline_runs.sonify_outputs(single_node_run.folder() / "out")
    assert rows == reference_rows
    assert shards.keys() == reference_shards.keys()
    for name, members in shards.items():
        assert members == reference_shards[name], f"shard {name} differs"

"""The one place that knows Ray: starting or joining a cluster, and turning stages into operators."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable

import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy

from pipelines.config import RayConfig
from stages.base import Stage

log = logging.getLogger(__name__)

# The `ray` section of the run that called init_ray last; apply_stage takes its retry settings.
_active = RayConfig()


def init_ray(config: RayConfig) -> None:
    """Join `ray.address` (or RAY_ADDRESS), or start a local Ray in-process. Reuses a running one."""
    global _active
    _active = config
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    kwargs = {"runtime_env": config.runtime_env or None, "log_to_driver": True}
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        # "local": with no address, ray.init would join whatever cluster `ray start` (or a test
        # cluster) last recorded in /tmp/ray/ray_current_cluster on this machine.
        ray.init(address="local", num_cpus=config.num_cpus, include_dashboard=False, **kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = True


class _StageActor:
    """Holds one stage per actor, so its model is loaded once and reused for every batch."""

    def __init__(self, factory: Callable[[], Stage]) -> None:
        self.stage = factory()
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage.process_batch(batch)


def apply_stage(dataset: ray.data.Dataset, factory: Callable[[], Stage]) -> ray.data.Dataset:
    """Add a stage as a map_batches operator: a fixed actor pool when the stage holds a model, tasks
    otherwise. `factory` builds the stage on the worker, so only its config travels.

    A batch whose worker process dies is run again, on a new task or on the restarted actor, up to
    `ray.task_retries` times; an actor is restarted up to `ray.actor_restarts` times. Ray Data's own
    defaults retry and restart without limit, so a file that crashes its decoder every time would
    keep a run busy forever. Retrying is safe because every stage's side effect is an atomic
    rewrite of the same file with the same bytes (a part's audio, a shard and its manifest part)."""
    stage = factory()
    resources = stage.resources()
    common = {
        "batch_format": "pyarrow",
        "batch_size": resources.batch_size,
        "num_cpus": resources.num_cpus,
        "num_gpus": resources.num_gpus or None,
        "memory": resources.memory_bytes,
        "zero_copy_batch": True,
    }
    with warnings.catch_warnings():
        # Ray 2.60's map_batches has no named parameter for retries and restarts; they go through
        # ray_remote_args, which warns that 2.64 removes it. pyproject pins ray 2.60.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        if resources.actors:
            # A subclass named after the stage, so Ray's progress bars and stats say which stage runs.
            actor_class = type(stage.name, (_StageActor,), {})
            return dataset.map_batches(
                actor_class,
                fn_constructor_kwargs={"factory": factory},
                compute=ActorPoolStrategy(size=resources.actors),
                max_restarts=_active.actor_restarts,
                max_task_retries=_active.task_retries,
                **common,
            )

        def run_task(batch: pa.Table) -> pa.Table:
            return stage.process_batch(batch)

        run_task.__name__ = stage.name
        return dataset.map_batches(run_task, max_retries=_active.task_retries, **common)

"""The one place that knows Ray: starting or joining a cluster, and running stages on it."""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from collections.abc import Iterator

import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy

from schemas.config import RayConfig
from schemas.errors import PipelineError
from stages.base import EngineStage, Stage, check_chain, unrunnable_reservation

log = logging.getLogger(__name__)


def start_ray(config: RayConfig) -> None:
    """Join `ray.address` (or RAY_ADDRESS), or start a local Ray in-process. Reuses a running one."""
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


# Per worker process: task stages already set up, by the token of the run that applied them.
_worker_stages: dict[str, Stage] = {}


def _set_up_once(token: str, stage: Stage) -> Stage:
    ready = _worker_stages.get(token)
    if ready is None:
        stage.setup()
        ready = _worker_stages[token] = stage
    return ready


class _StageTask:
    """A task stage: Ray reuses worker processes between tasks, and each process sets the stage up once."""

    def __init__(self, stage: Stage, token: str) -> None:
        self.stage = stage
        self.token = token

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _set_up_once(self.token, self.stage).process_batch(batch)


class _StageActor:
    """Holds one stage per actor, set up once, so its model is loaded once and reused for every batch."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage.process_batch(batch)


def build_llm_processor(stage: EngineStage, task_retries: int, actor_restarts: int):
    """A Ray Data LLM vLLM processor for an engine stage. Its stages are actor pools that Ray Data
    LLM builds; each gets the run's restarts and retries, and so do the preprocess and postprocess
    tasks. (Ray Data LLM has no setting for per-request retries inside the engine: a request the
    engine fails is that row's error.)"""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    processor = build_processor(
        vLLMEngineProcessorConfig(**stage.engine_config()),
        preprocess=stage.request,
        postprocess=stage.answer,
        preprocess_map_kwargs={"max_retries": task_retries},
        postprocess_map_kwargs={"max_retries": task_retries},
    )
    for name in processor.list_stage_names():
        llm_stage = processor.get_stage_by_name(name)
        llm_stage.map_batches_kwargs = {
            **llm_stage.map_batches_kwargs,
            "max_restarts": actor_restarts,
            "max_task_retries": task_retries,
        }
    return processor


def _pipeline_error_in(exc: BaseException) -> PipelineError | None:
    """The PipelineError that a stage raised in a worker (a full disk, say), found inside the errors
    Ray Data wraps it in, so that the run stops with its one-line message; None if there is none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # A RayTaskError keeps the worker's own exception as `cause`; it also poses as an instance of
        # that exception's class, with Ray's traceback as its text.
        cause = getattr(exc, "cause", None)
        if isinstance(cause, PipelineError) and not isinstance(cause, ray.exceptions.RayError):
            return cause
        if isinstance(exc, PipelineError) and not isinstance(exc, ray.exceptions.RayError):
            return exc
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


class Runner:
    """Runs stages on Ray with one run's `ray` settings.

    A batch whose worker process dies is run again, on a new task or on the restarted actor, up to
    `ray.task_retries` times; an actor is restarted up to `ray.actor_restarts` times. Ray Data's
    own defaults retry and restart without limit, so a file that crashes its decoder every time
    would keep a run busy forever. Retrying is safe because every stage's side effect is an atomic
    rewrite of the same file with the same bytes (a part's audio, a shard and its manifest part)."""

    def __init__(self, config: RayConfig) -> None:
        self.config = config
        start_ray(config)

    def run(
        self,
        source: pa.Table | list[pa.Table],
        stages: list[Stage],
        blocks: int | None = None,
        preserve_order: bool = False,
    ) -> Iterator[pa.Table]:
        """The output batches of `stages` applied in order to `source`: one table cut into `blocks`
        blocks, or a list of tables, one block each. With `preserve_order`, batches are fixed
        slices of the blocks in order, whichever blocks a run has to do.

        The column chain is checked here, when the call is made and before anything runs: a stage
        that needs a column its predecessor does not give is refused (ChainError) whichever
        pipeline built the list."""
        tables = source if isinstance(source, list) else [source]
        if not tables:
            raise ValueError("Runner.run got an empty list of tables: nothing to run")
        check_chain(tables[0].schema, stages)
        self._check_fit(stages)
        return self._batches(source, stages, blocks, preserve_order)

    def _check_fit(self, stages: list[Stage]) -> None:
        """Refuses stages that would wait forever on the Ray this process started. A cluster joined
        by address may add nodes as work waits, so there it is only logged."""
        resources = ray.cluster_resources()
        reason = unrunnable_reservation(stages, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
        if reason is None:
            return
        if self.config.address or os.environ.get("RAY_ADDRESS"):
            log.warning("these stages may wait for resources the cluster does not have yet: %s", reason)
            return
        raise PipelineError(f"the stages {[s.name for s in stages]} cannot run together here: {reason}")

    def _batches(
        self, source: pa.Table | list[pa.Table], stages: list[Stage], blocks: int | None, preserve_order: bool
    ) -> Iterator[pa.Table]:
        dataset = ray.data.from_arrow(source)
        if blocks:
            dataset = dataset.repartition(blocks)
        if preserve_order:
            dataset.context.execution_options.preserve_order = True
        # A stage's own exception reaches the driver as the cause of Ray's error, not as the cause of
        # a wrapper that loses it on the way, so a PipelineError raised in a worker stops the run with
        # its own message.
        dataset.context.raise_original_map_exception = True
        for stage in stages:
            dataset = self._apply(dataset, stage)
        try:
            yield from dataset.iter_batches(batch_format="pyarrow", batch_size=None)
        except Exception as exc:
            stopping = _pipeline_error_in(exc)
            if stopping is None:
                raise
            raise stopping from None

    def _apply(self, dataset: ray.data.Dataset, stage: Stage) -> ray.data.Dataset:
        if isinstance(stage, EngineStage):
            processor = build_llm_processor(stage, self.config.task_retries, self.config.actor_restarts)
            return self._map(processor(dataset), stage, actors=0)
        return self._map(dataset, stage, actors=stage.resources().actors)

    def _map(self, dataset: ray.data.Dataset, stage: Stage, actors: int) -> ray.data.Dataset:
        resources = stage.resources()
        common = {
            "batch_format": "pyarrow",
            "batch_size": resources.batch_size,
            "num_cpus": resources.num_cpus,
            "num_gpus": resources.num_gpus or None,
            "memory": resources.memory_bytes,
            "zero_copy_batch": True,
        }
        # Subclasses named after the stage, so Ray's progress bars and stats say which stage runs.
        with warnings.catch_warnings():
            # Ray 2.60's map_batches has no named parameter for retries and restarts; they go through
            # ray_remote_args, which warns that 2.64 removes it. pyproject pins ray 2.60.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
            if actors:
                return dataset.map_batches(
                    type(stage.name, (_StageActor,), {}),
                    fn_constructor_kwargs={"stage": stage},
                    compute=ActorPoolStrategy(size=actors),
                    max_restarts=self.config.actor_restarts,
                    max_task_retries=self.config.task_retries,
                    **common,
                )
            task = type(stage.name, (_StageTask,), {})(stage, uuid.uuid4().hex)
            return dataset.map_batches(task, max_retries=self.config.task_retries, **common)

"""What every stage is: a small class that declares its resources and maps an Arrow batch.

Stage modules never import Ray. `pipelines.ray_runner` turns these declarations into Ray Data
operators and calls `setup()` once per worker before any batch; tests call `setup()` and then
`process_batch()` directly on a small table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs. `actors` > 0 runs the stage in a fixed pool of that many
    actors, each calling `setup()` once (for stages that hold a model); 0 runs it as tasks."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int | None = None
    actors: int = 0
    batch_size: int | None = None


class Stage:
    name: ClassVar[str]
    # Columns the stage reads; the pipeline checks that the previous stage provides them.
    required_columns: ClassVar[tuple[str, ...]]

    def resources(self) -> Resources:
        return Resources()

    def output_schema(self) -> pa.Schema:
        raise NotImplementedError

    def setup(self) -> None:
        """Load models and other per-worker state; called once per worker before any batch."""

    def process_batch(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError


class EngineStage(Stage):
    """A stage whose model is an inference engine that Ray Data LLM drives (vLLM) instead of a
    `map_batches` callable. It declares the engine's settings and what happens to each row before
    and after the engine; the runner builds the processor, and `process_batch` maps the
    processor's output rows to the stage's output schema."""

    def engine_config(self) -> dict[str, Any]:
        """Keyword arguments of Ray Data LLM's vLLMEngineProcessorConfig."""
        raise NotImplementedError

    def request(self, row: dict[str, Any]) -> dict[str, Any]:
        """The processor's preprocess: one input row -> the engine's request columns."""
        raise NotImplementedError

    def answer(self, row: dict[str, Any]) -> dict[str, Any]:
        """The processor's postprocess of a row the engine answered."""
        raise NotImplementedError


class ChainError(ValueError):
    """A stage needs a column that nothing before it provides."""


def check_chain(source: pa.Schema, stages: list[Stage]) -> None:
    available = set(source.names)
    for stage in stages:
        missing = [c for c in stage.required_columns if c not in available]
        if missing:
            raise ChainError(
                f"stage {stage.name} needs columns {missing}; the stage before it gives {sorted(available)}"
            )
        available = set(stage.output_schema().names)


def unrunnable_reservation(stages: list[Stage], cpus: float, gpus: float) -> str | None:
    """Why `stages` cannot all run at once on `cpus` CPUs and `gpus` GPUs, or None if they can.

    Actor stages hold their CPUs and GPUs for as long as the pipeline runs, and tasks get what they
    leave: when the actor pools take so much that a task stage never fits, Ray Data waits for it
    forever instead of failing. (Engine stages are left out: Ray Data LLM sizes their actors.)"""
    plain = [s for s in stages if not isinstance(s, EngineStage)]
    actors = [(s, s.resources()) for s in plain if s.resources().actors]
    tasks = [(s, s.resources()) for s in plain if not s.resources().actors]
    held_cpus = sum(r.actors * r.num_cpus for _, r in actors)
    held_gpus = sum(r.actors * r.num_gpus for _, r in actors)
    if held_gpus > gpus:
        return f"the actors of {', '.join(s.name for s, _ in actors)} need {held_gpus:g} GPUs, and Ray has {gpus:g}"
    needed = max((r.num_cpus for _, r in tasks), default=0.0)
    if held_cpus + needed > cpus:
        largest = max(tasks, key=lambda t: t[1].num_cpus)[0].name if tasks else None
        then = f", and the {largest} tasks need {needed:g} more" if largest else ""
        return (
            f"the actors of {', '.join(s.name for s, _ in actors)} hold {held_cpus:g} CPUs{then}, "
            f"and Ray has {cpus:g}: lower those models' concurrency or num_cpus, or give Ray more CPUs"
        )
    return None

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

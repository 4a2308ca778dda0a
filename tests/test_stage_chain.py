"""The column chain: a stage that needs a column its predecessor does not give is refused, and the
runner refuses it for every pipeline before any work reaches Ray."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import pytest

from pipelines import ray_runner
from schemas.config import RayConfig
from schemas.errors import PipelineError
from stages.base import ChainError, Resources, Stage, check_chain, unrunnable_reservation

SOURCE = pa.schema([pa.field("uri", pa.string())])


class Decode(Stage):
    name: ClassVar[str] = "decode"
    required_columns: ClassVar[tuple[str, ...]] = ("uri",)

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field("uri", pa.string()), pa.field("pixels", pa.binary())])


class Caption(Stage):
    name: ClassVar[str] = "caption"
    required_columns: ClassVar[tuple[str, ...]] = ("pixels",)

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field("caption", pa.string())])


def test_check_chain_accepts_a_chain_whose_columns_are_given():
    check_chain(SOURCE, [Decode(), Caption()])


def test_check_chain_names_the_stage_and_the_missing_columns():
    with pytest.raises(ChainError, match=r"stage caption needs columns \['pixels'\]"):
        check_chain(SOURCE, [Caption()])
    # Columns come from the stage just before, not from any stage earlier in the chain.
    with pytest.raises(ChainError, match=r"stage decode needs columns \['uri'\].*\['caption'\]"):
        check_chain(SOURCE, [Decode(), Caption(), Decode()])


class WorkStarted(Exception):
    """Raised where the runner would hand the source to Ray."""


@pytest.fixture
def runner(monkeypatch) -> ray_runner.Runner:
    """A runner whose Ray is never started, and which stops where it would hand the source to Ray."""
    monkeypatch.setattr(ray_runner, "start_ray", lambda config: None)

    def from_arrow(source):
        raise WorkStarted

    monkeypatch.setattr(ray_runner.ray.data, "from_arrow", from_arrow)
    monkeypatch.setattr(ray_runner.ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return ray_runner.Runner(RayConfig(num_cpus=2))


def test_runner_refuses_a_broken_chain_before_any_work(runner):
    source = pa.table({"uri": ["a.png"]})
    with pytest.raises(ChainError, match="stage caption"):
        runner.run(source, [Caption()])
    # A list of blocks is checked by its first block's schema.
    with pytest.raises(ChainError, match="stage caption"):
        runner.run([source, source], [Decode(), Decode(), Caption(), Caption()])


def test_runner_runs_a_sound_chain(runner):
    with pytest.raises(WorkStarted):
        list(runner.run(pa.table({"uri": ["a.png"]}), [Decode(), Caption()]))


class Model(Stage):
    name: ClassVar[str] = "model"
    required_columns: ClassVar[tuple[str, ...]] = ("uri",)

    def __init__(self, actors: int, num_cpus: float, num_gpus: float = 0.0) -> None:
        self.held = Resources(num_cpus=num_cpus, num_gpus=num_gpus, actors=actors)

    def resources(self) -> Resources:
        return self.held

    def output_schema(self) -> pa.Schema:
        return SOURCE


def test_actor_pools_that_leave_no_room_for_the_tasks_are_named():
    # Two 1-CPU actors and a 1-CPU task stage: three CPUs, and Ray has two.
    reason = unrunnable_reservation([Decode(), Model(1, 1.0), Model(1, 1.0)], cpus=2, gpus=0)
    assert reason is not None and "hold 2 CPUs, and the decode tasks need 1 more, and Ray has 2" in reason
    assert unrunnable_reservation([Decode(), Model(1, 0.5), Model(1, 0.5)], cpus=2, gpus=0) is None
    assert unrunnable_reservation([Model(2, 1.0)], cpus=2, gpus=0) is None
    assert "need 1 GPUs, and Ray has 0" in unrunnable_reservation([Decode(), Model(1, 0.5, 1.0)], cpus=8, gpus=0)


def test_runner_refuses_stages_that_would_wait_forever_before_any_work(runner):
    with pytest.raises(PipelineError, match=r"cannot run together here: the actors of model, model hold 2 CPUs"):
        runner.run(pa.table({"uri": ["a"]}), [Decode(), Model(1, 1.0), Model(1, 1.0)])

"""A run killed with SIGKILL, then run again with the same command, finishes with the output of an
uninterrupted run: the same manifest rows, the same shard bytes, no key twice and none missing.

Each run is a separate `run_pipeline.py` process. A watcher polls the output folder and kills the
driver the moment a given point of the run is reached (the listing saved, some chunks answered by
the VLM, some shards written, some pool parts written), then ends whatever the dead driver's local
Ray left behind. Every kill is checked to have landed before the run's end (no summary.json yet) and
after its point (the files that mark it exist), so a kill that came too early or too late fails the
test instead of passing it unseen. The reference is `single_node_run` from conftest, the same config
never interrupted."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from schemas.layout import SonifyLayout

POLL_SECONDS = 0.01


def parquet_names(folder: Path) -> list[str]:
    """Final files only: a write in progress has a temporary name starting with a dot."""
    return sorted(p.name for p in folder.glob("*.parquet") if not p.name.startswith("."))


def kill_when(pipeline_runs, command: str, config: Path, reached: Callable[[], bool], timeout: float = 300) -> None:
    """Starts a run, SIGKILLs its driver as soon as `reached()` holds, then ends the driver's local
    Ray. Fails if the run ended before the point was reached."""
    running = pipeline_runs.start(command, config)
    deadline = time.monotonic() + timeout
    while not reached():
        assert running.process.poll() is None, (
            f"the run ended before the kill point; {running.log}:\n{running.log.read_text()[-3000:]}"
        )
        assert time.monotonic() < deadline, f"kill point not reached in {timeout} s; see {running.log}"
        time.sleep(POLL_SECONDS)
    os.kill(running.pid, signal.SIGKILL)
    running.process.wait()
    # The driver started Ray in its own process group: what a dead driver leaves holds CPUs.
    time.sleep(1)
    try:
        os.killpg(running.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def recording_vlm(vlm, config):
    """A VLM stage, with a model actor's batching, whose caption lists the images of its batch."""
    from schemas import ANSWERS
    from stages.base import Resources, Stage
    from stages.vlm.concepts import answers_table

    class RecordingVlm(Stage):
        name = "vlm_recording"
        required_columns = ("image_id",)

        def resources(self):
            return Resources(num_cpus=0.5, actors=1, batch_size=vlm.batch_size)

        def output_schema(self):
            return ANSWERS

        def process_batch(self, batch):
            rows = batch.to_pylist()
            answer = json.dumps(
                {"caption": " ".join(r["image_id"] for r in rows), "sounds": [{"label": "x", "text": "x"}]}
            )
            return answers_table(rows, [answer] * len(rows))

    return RecordingVlm()


def test_a_resumed_run_batches_every_image_with_the_same_neighbours(ray_session, tmp_path, monkeypatch):
    """Three images per batch and per block, six per chunk, 20 images: chunks of 6, 6, 6 and 2.
    Every batch the VLM sees is one aligned run of three images of one chunk (the last, two), and
    redoing chunks 1 and 3 alone gives them exactly the batches of the first run."""
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from pipelines.config import validate_config
    from pipelines.sonify import listing as listing_phase
    from pipelines.sonify import scenes as scenes_phase

    for i in range(20):
        Image.fromarray(np.full((40, 40, 3), i * 12, np.uint8)).save(tmp_path / f"img-{i:02d}.png")
    out = tmp_path / "out"
    config = validate_config(
        {
            "pool": {"dir": str(tmp_path / "pool")},
            "models": {
                "clap": {"model": "unused"},
                "vlm": [{"name": "rec", "backend": "transformers", "model": "unused", "batch_size": 3}],
            },
            "sonify": {"images": [str(tmp_path / "*.png")], "out": str(out), "min_side": 16, "images_per_chunk": 6},
        }
    )
    monkeypatch.setattr(scenes_phase, "vlm_stage", recording_vlm)
    monkeypatch.setattr(scenes_phase, "IMAGES_PER_BLOCK", 3)
    layout = SonifyLayout(str(out))
    listing, _ = listing_phase.image_listing(config, layout)
    chunks = listing_phase.chunk_listing(listing.num_rows, config.sonify.images_per_chunk)
    assert [c.rows for c in chunks] == [6, 6, 6, 2]

    def batches() -> dict[str, str]:
        scenes = pa.concat_tables([scenes_phase.read_chunk_scenes(config, layout, c) for c in chunks])
        return dict(zip(scenes.column("image_id").to_pylist(), scenes.column("caption").to_pylist()))

    scenes_phase.run_scenes(config, listing, chunks, config.models.vlm[0], layout)
    first = batches()
    ids = listing.column("image_id").to_pylist()
    expected = {i: " ".join(ids[start : start + 3]) for start in range(0, 20, 3) for i in ids[start : start + 3]}
    expected.update({i: " ".join(ids[18:]) for i in ids[18:]})
    assert first == expected

    for chunk in (chunks[1], chunks[3]):
        (out / "scenes" / "rec" / f"{chunk.name}.parquet").unlink()
    scenes_phase.run_scenes(config, listing, chunks, config.models.vlm[0], layout)
    assert batches() == first


def test_sonify_killed_twice_then_rerun_equals_an_uninterrupted_run(pipeline_runs, single_node_run):
    config = pipeline_runs.config("sonify-resumed", pool_dir=single_node_run.pool_dir())
    out = config.parent / "out"
    scenes, manifest, summary = out / "scenes" / "qwen", out / "manifest", out / "summary.json"
    chunks = pipeline_runs.IMAGES // 4

    kill_when(pipeline_runs, "sonify", config, lambda: 1 <= len(parquet_names(scenes)))
    answered = parquet_names(scenes)
    assert not summary.exists() and 1 <= len(answered) < chunks, answered

    # The hubness correction is on by default: a kill once its bank and biases are made.
    bank = out / "hubness" / "hubness.json"
    kill_when(pipeline_runs, "sonify", config, bank.exists)
    assert not summary.exists()

    kill_when(
        pipeline_runs, "sonify", config, lambda: any(not n.startswith("rejected") for n in parquet_names(manifest))
    )
    written = [n for n in parquet_names(manifest) if not n.startswith("rejected")]
    assert not summary.exists() and written, written
    # Chunks answered before a kill were not asked again.
    assert parquet_names(scenes) == [f"{i:06d}.parquet" for i in range(chunks)]

    finished = pipeline_runs.run("sonify", config)
    log = finished.log.read_text()
    assert f"scenes qwen: 0 of {chunks} chunks to do" in log
    assert "already written" in log

    rows, shards = pipeline_runs.sonify_outputs(out)
    reference_rows, reference_shards = pipeline_runs.sonify_outputs(single_node_run.folder() / "out")
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a key was written twice"
    assert rows == reference_rows
    assert shards == reference_shards
    reference_out = single_node_run.folder() / "out"
    for name in ("bank.parquet", "biases.parquet", "hubness.json"):
        assert (out / "hubness" / name).read_bytes() == (reference_out / "hubness" / name).read_bytes(), name
    assert any(c["corrected_cosine"] is not None for r in rows for c in r["concepts"])
    assert not [p for p in out.rglob(".tmp-*")], "temporary files of killed writes were left"
    resumed, reference = (
        json.loads(summary.read_text()),
        json.loads((single_node_run.folder() / "out" / "summary.json").read_text()),
    )
    timings = ("seconds", "wall_seconds", "out")
    assert {k: v for k, v in resumed.items() if k not in timings} == {
        k: v for k, v in reference.items() if k not in timings
    }


def test_pool_killed_twice_then_rerun_equals_an_uninterrupted_run(pipeline_runs, single_node_run):
    config = pipeline_runs.config("pool-resumed")
    pool = config.parent / "pool"
    parts = pipeline_runs.AUDIO_FILES

    kill_when(pipeline_runs, "pool", config, lambda: len(parquet_names(pool / "clips")) >= 2)
    assert not (pool / "summary.json").exists() and len(parquet_names(pool / "clips")) < parts

    kill_when(pipeline_runs, "pool", config, lambda: len(parquet_names(pool / "clips")) >= 5)
    assert not (pool / "summary.json").exists() and len(parquet_names(pool / "clips")) < parts

    finished = pipeline_runs.run("pool", config)
    summary = json.loads((pool / "summary.json").read_text())
    assert summary["files_unchanged"] >= 5 and summary["files_processed"] == parts - summary["files_unchanged"]
    assert "0 unchanged" not in finished.log.read_text()

    assert pipeline_runs.pool_outputs(pool) == pipeline_runs.pool_outputs(single_node_run.pool_dir())
    assert not [p for p in pool.rglob(".tmp-*")]


def kill_job_when(pipeline_runs, command: str, config: Path, reached: Callable[[], bool], timeout: float = 300) -> None:
    """Starts a run in its own process group and SIGKILLs the whole group (the command and the
    local Ray it started: raylet, GCS, workers) at once, as soon as `reached()` holds."""
    running = pipeline_runs.start(command, config)
    deadline = time.monotonic() + timeout
    while not reached():
        assert running.process.poll() is None, (
            f"the run ended before the kill point; {running.log}:\n{running.log.read_text()[-3000:]}"
        )
        assert time.monotonic() < deadline, f"kill point not reached in {timeout} s; see {running.log}"
        time.sleep(POLL_SECONDS)
    os.killpg(running.pid, signal.SIGKILL)
    running.process.wait()


def test_pool_job_killed_whole_while_parts_are_in_flight_then_rerun_equals_an_uninterrupted_run(
    pipeline_runs, single_node_run
):
    """Kill points: a part's audio being written (its temporary file exists) before any part is
    finished; then, in the rerun, the first part's completion marker written. Tables, packs and
    index are compared by content."""
    config = pipeline_runs.config("pool-job-killed")
    pool = config.parent / "pool"

    def writing_a_part() -> bool:
        return any((pool / "audio").glob(".tmp-*")) and not parquet_names(pool / "clips")

    kill_job_when(pipeline_runs, "pool", config, writing_a_part)
    assert not (pool / "summary.json").exists()

    kill_job_when(pipeline_runs, "pool", config, lambda: len(parquet_names(pool / "clips")) >= 1)
    assert not (pool / "summary.json").exists() and len(parquet_names(pool / "clips")) < pipeline_runs.AUDIO_FILES

    pipeline_runs.run("pool", config)
    assert pipeline_runs.pool_outputs(pool) == pipeline_runs.pool_outputs(single_node_run.pool_dir())
    assert not [p for p in pool.rglob(".tmp-*")]

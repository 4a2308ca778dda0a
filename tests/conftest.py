"""Shared fixtures: tiny models built once per session, one local Ray, and pipeline runs as
separate processes (the reference run that fault-tolerance and multi-node runs must equal)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# Fixtures that start Ray, in this process or in pipeline runs of their own: a test that uses one,
# directly or through another fixture, is marked slow, and `make test-fast` leaves it out.
RAY_FIXTURES = {"ray_session", "pipeline_runs", "single_node_run"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    from demo.tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from pipelines.ray_runner import start_ray
    from schemas.config import RayConfig

    start_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


class PipelineProcess:
    """One `run_pipeline.py` process, its combined output, and the Ray temp folder it used."""

    def __init__(self, process: subprocess.Popen, log: Path, ray_temp: Path) -> None:
        self.process = process
        self.log = log
        self.ray_temp = ray_temp

    @property
    def pid(self) -> int:
        return self.process.pid

    def finish(self, timeout: float = 400) -> None:
        """Waits for the run, which must exit 0."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # The run's own local Ray lives in the run's process group.
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(
                f"run did not finish in {timeout} s; {self.log}:\n{self.log.read_text()[-4000:]}"
            ) from None
        assert code == 0, f"run exited {code}; {self.log}:\n{self.log.read_text()[-6000:]}"

    def driver_core_log(self) -> str:
        """The driver's Ray core log, where Ray notes every task it resubmits and every actor restart."""
        paths = sorted(self.ray_temp.glob("ray/session_*/logs/python-core-driver-*.log"))
        assert paths, f"no Ray driver log under {self.ray_temp}"
        return "\n".join(p.read_text(errors="replace") for p in paths)


class PipelineRuns:
    """Runs of `run_pipeline.py` as separate processes, as a user runs them, over one generated
    input set; and readers of what the runs leave. Each run gets a Ray temp folder of its own, so a
    local Ray never meets another Ray of this machine and its logs can be read afterwards."""

    AUDIO_FILES = 8
    IMAGES = 16

    def __init__(self, root: Path, models: dict[str, str]) -> None:
        self.root = root
        self.models = models
        self.ray_temps: list[str] = []

    def write_inputs(self) -> None:
        import numpy as np
        from PIL import Image

        from tests.helpers import noise, tone, write_audio

        for i in range(self.AUDIO_FILES):
            audio = noise(20.0, 44100, 0.03 + 0.01 * i, i) + tone(20.0, 44100, 150.0 + 60 * i, 0.1)
            write_audio(self.root / "inputs" / "audio" / f"source {i:02d}.wav", audio, 44100)
        images = self.root / "inputs" / "images"
        images.mkdir(parents=True)
        for i in range(self.IMAGES):
            pixels = (np.random.default_rng(100 + i).random((64, 96, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(images / f"image {i:02d}.png")

    def config(
        self, name: str, clap_concurrency: int = 1, vlm_concurrency: int = 1, pool_dir: Path | None = None
    ) -> Path:
        """Writes `<name>/config.yaml`, with the pool and the output under `<name>/` unless `pool_dir`
        names another run's pool. One file per part, two items per batch and four images per chunk
        make many small batches and files, so that each stage runs long enough to be caught at work."""
        import yaml

        folder = self.root / name
        folder.mkdir()
        clap = {
            "backend": "transformers",
            "model": self.models["clap_transformers"],
            "batch_size": 2,
            "concurrency": clap_concurrency,
        }
        vlm = {
            "name": "qwen",
            "backend": "transformers",
            "model": self.models["vlm_qwen2_5_vl"],
            "batch_size": 2,
            "concurrency": vlm_concurrency,
        }
        tree = {
            "seed": 5,
            "pool": {
                "dir": str(pool_dir or folder / "pool"),
                "sources": [str(self.root / "inputs" / "audio" / "*")],
                "files_per_part": 1,
            },
            "models": {"clap": clap, "vlm": [vlm]},
            "sonify": {
                "images": [str(self.root / "inputs" / "images" / "*")],
                "out": str(folder / "out"),
                "min_side": 32,
                "shard_size_mb": 0.25,
                "images_per_chunk": 4,
            },
            "prompt": {"max_new_tokens": 64, "max_concepts": 3, "max_text_chars": 20},
            "retrieval": {"search_k": 8, "k": 4, "min_cosine": -1.0},
        }
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(tree))
        return path

    def start(self, command: str, config: Path, *overrides: str) -> PipelineProcess:
        # Short on purpose: Ray's socket paths under it must stay within 107 bytes.
        ray_temp = tempfile.mkdtemp(prefix="srt", dir="/tmp")
        self.ray_temps.append(ray_temp)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = ray_temp
        log = config.parent / f"{command}.log"
        with open(log, "wb") as sink:
            process = subprocess.Popen(
                [sys.executable, str(REPO / "run_pipeline.py"), command, "--config", str(config), *overrides],
                cwd=REPO,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return PipelineProcess(process, log, Path(ray_temp))

    def run(self, command: str, config: Path, *overrides: str) -> PipelineProcess:
        running = self.start(command, config, *overrides)
        running.finish()
        return running

    def cleanup(self) -> None:
        for folder in self.ray_temps:
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def pool_outputs(pool_dir: Path) -> dict:
        """Every pool table by file, every pack's members by name, the index ids and the index
        bytes; run records aside."""
        import pyarrow.parquet as pq

        tables = {
            str(p.relative_to(pool_dir)): pq.read_table(p).to_pylist()
            for table in ("clips", "audio", "embeddings", "index")
            for p in sorted((pool_dir / table).glob("*.parquet"))
        }
        assert "index/ids.parquet" in tables, f"{pool_dir} holds no index"
        packs = {}
        for path in sorted((pool_dir / "audio").glob("*/*.tar")):
            with tarfile.open(path) as tar:
                packs[str(path.relative_to(pool_dir))] = {m.name: tar.extractfile(m).read() for m in tar}
        return {
            **tables,
            **packs,
            "index/index.faiss": (pool_dir / "index" / "index.faiss").read_bytes(),
            "pool.json": (pool_dir / "pool.json").read_text(),
        }

    @staticmethod
    def sonify_outputs(out_dir: Path) -> tuple[list[dict], dict[str, dict[str, bytes]]]:
        """Manifest rows sorted by key, and each shard's members by name: what a user receives,
        whatever files the run keeps on the way."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        manifest = pa.concat_tables([pq.read_table(p) for p in sorted((out_dir / "manifest").glob("*.parquet"))])
        rows = sorted(manifest.to_pylist(), key=lambda r: r["key"])
        shards = {}
        for path in sorted((out_dir / "shards").glob("*.tar")):
            with tarfile.open(path) as tar:
                shards[path.name] = {member.name: tar.extractfile(member).read() for member in tar}
        assert rows and shards, f"{out_dir} holds no manifest or no shards"
        return rows, shards


@pytest.fixture(scope="session")
def pipeline_runs(tiny_models, tmp_path_factory):
    runs = PipelineRuns(tmp_path_factory.mktemp("pipeline-runs"), tiny_models)
    runs.write_inputs()
    yield runs
    runs.cleanup()


class BackgroundRun(threading.Thread):
    """Pool, then sonify, of one config in a thread, so that the tests' own runs overlap it."""

    def __init__(self, runs: PipelineRuns, config: Path) -> None:
        super().__init__(daemon=True)
        self.runs = runs
        self.config = config
        self.pool_finished = threading.Event()
        self.running: PipelineProcess | None = None
        self.errors: dict[str, BaseException] = {}
        self.stopping = False

    def run(self) -> None:
        command = "pool"
        try:
            for command in ("pool", "sonify"):
                if self.stopping:
                    return
                self.running = self.runs.start(command, self.config)
                self.running.finish()
                if command == "pool":
                    self.pool_finished.set()
        except BaseException as exc:
            self.errors[command] = exc
        finally:
            self.pool_finished.set()

    def pool_dir(self) -> Path:
        """The pool, once its run has finished."""
        self.pool_finished.wait()
        if "pool" in self.errors:
            raise self.errors["pool"]
        return self.config.parent / "pool"

    def folder(self) -> Path:
        """The run's folder (pool/, out/), once both runs have finished."""
        self.join()
        for error in self.errors.values():
            raise error
        return self.config.parent

    def stop(self) -> None:
        """Ends a run still going when the session ends (a test failed before waiting for it)."""
        self.stopping = True
        while self.is_alive():
            if self.running is not None and self.running.process.poll() is None:
                try:
                    os.killpg(self.running.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.join(1)


@pytest.fixture(scope="session")
def single_node_run(pipeline_runs):
    """An uninterrupted pool and sonify run on a local Ray, started at once in the background: the
    reference that other runs must equal."""
    reference = BackgroundRun(pipeline_runs, pipeline_runs.config("single-node"))
    reference.start()
    yield reference
    reference.stop()

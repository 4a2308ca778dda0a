"""A write that finds its device full stops the run with one line naming the folder (exit code 2
from the command line), and once space is freed the same command finishes with the output of a run
that never met a full disk. The device is a small tmpfs mounted for each test; where mounting is not
permitted, the tests are skipped with the reason."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from tests.helpers import noise, tone, write_audio


@contextmanager
def small_device(folder: Path, size_bytes: int) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def resize(device: Path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(device)], check=True)


def test_a_write_to_a_full_device_names_its_folder_and_leaves_no_temporary(tmp_path):
    from schemas.errors import PipelineError
    from stages.io import storage

    with small_device(tmp_path / "device", 256 * 1024) as device:
        kept = device / "parts" / "kept.bin"
        storage.write_bytes(str(kept), b"k" * 100_000)

        with pytest.raises(storage.DiskFull) as full:
            storage.write_bytes(str(device / "parts" / "big.bin"), b"x" * 400_000)
        assert isinstance(full.value, PipelineError)
        assert str(device / "parts") in str(full.value) and "\n" not in str(full.value)

        rng = np.random.default_rng(0)
        table = pa.table({"data": [rng.bytes(100_000) for _ in range(4)]})
        with pytest.raises(storage.DiskFull):
            storage.write_parquet(str(device / "parts" / "big.parquet"), table)
        with pytest.raises(storage.DiskFull):
            with storage.open_for_writing(str(device / "parts" / "streamed.bin")) as handle:
                for _ in range(40):
                    handle.write(b"z" * 10_000)

        assert sorted(p.name for p in (device / "parts").iterdir()) == ["kept.bin"]
        assert kept.read_bytes() == b"k" * 100_000
        # The failed writes gave their space back.
        storage.write_bytes(str(device / "parts" / "after.bin"), b"a" * 100_000)


def pool_config(folder: Path, pool_dir: Path, sources: Path, models: dict) -> Path:
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    tree = {
        "pool": {"dir": str(pool_dir), "sources": [f"{sources}/*"], "files_per_part": 1},
        "models": {"clap": {"backend": "transformers", "model": models["clap_transformers"], "batch_size": 4}},
    }
    path.write_text(yaml.safe_dump(tree))
    return path


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_pool_on_a_full_disk_stops_with_one_line_and_a_rerun_after_freeing_space_finishes(
    tmp_path, tiny_models, ray_session, capsys
):
    from pipelines.cli import main
    from tests.conftest import PipelineRuns

    sources = tmp_path / "sources"
    for i in range(3):
        stereo = np.stack([noise(8.0, 44100, 0.1, i), tone(8.0, 44100, 200.0 + 50 * i)], axis=1)
        write_audio(sources / f"take {i}.wav", stereo, 44100)
    reference = tmp_path / "reference" / "pool"
    assert main(["pool", "--config", str(pool_config(tmp_path / "reference", reference, sources, tiny_models))]) == 0
    needed = tree_bytes(reference)

    with small_device(tmp_path / "device", needed // 2) as device:
        config = pool_config(tmp_path / "run", device / "pool", sources, tiny_models)
        capsys.readouterr()
        assert main(["pool", "--config", str(config)]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith("error: no space left on the device holding "), errors
        assert str(device / "pool") in errors[0]

        resize(device, needed * 3)
        assert main(["pool", "--config", str(config)]) == 0
        assert PipelineRuns.pool_outputs(device / "pool") == PipelineRuns.pool_outputs(reference)
        assert not list((device / "pool").rglob(".tmp-*"))

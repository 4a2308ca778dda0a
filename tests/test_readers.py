"""A dataset made by the real pipeline from mixed input (files and tar members; png, jpg and webp)
in several shards, read whole by the loaders trainers use: Hugging Face `datasets` (streaming and
not, audio decoded by its Audio feature), the `webdataset` library and `ray.data.read_webdataset`.
Every row must carry its image, its audio and its metadata. What the rows should hold comes from
the Parquet manifest and from the tar members read with tarfile and soundfile."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
import webdataset as wds
from PIL import Image

from pipelines.config import validate_config
from pipelines.pool.run import run_pool
from pipelines.sonify import run_sonify
from tests.conftest import REPO
from tests.helpers import noise, tone, write_audio

pytestmark = pytest.mark.slow

FORMATS = ("PNG", "JPEG", "WEBP")
SPLITS = {"train": 0.5, "validation": 0.25, "test": 0.25}
# The FFmpeg libraries torchcodec links against, by the major version FFmpeg 8 gives them.
FFMPEG_LIBRARIES = ("avutil", "avcodec", "avformat", "avdevice", "avfilter", "swscale", "swresample")


def encoded(seed: int, fmt: str, size=(96, 64)) -> bytes:
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dataset(tiny_models, ray_session, tmp_path_factory):
    """Sonified by the real pipeline. File images sort before tar members, so the first shard holds
    only images without a tar member: the case where a loader typing the first rows' metadata saw
    `image_member` as always null."""
    root = tmp_path_factory.mktemp("readers")
    for i in range(3):
        write_audio(
            root / "audio" / f"a{i}.wav",
            noise(6.0, 44100, 0.05 + 0.05 * i, i) + tone(6.0, 44100, 200.0 * (i + 1), 0.1),
            44100,
        )
    images = root / "images"
    images.mkdir()
    ids = []
    for i, fmt in enumerate(FORMATS * 2):
        name = f"a{i}-{fmt.lower()}"
        (images / f"{name}.{fmt.lower()}").write_bytes(encoded(i, fmt))
        ids.append(name)
    with tarfile.open(root / "members.tar", "w") as tar:
        for i, fmt in enumerate(FORMATS):
            payload = encoded(10 + i, fmt, (80, 120))
            info = tarfile.TarInfo(f"z{i}.{fmt.lower()}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
            ids.append(f"z{i}")
    concepts = root / "concepts.jsonl"
    concepts.write_text(
        "".join(
            json.dumps({"image_id": i, "caption": "a street", "concepts": [{"label": "car", "text": "a car passing"}]})
            + "\n"
            for i in ids
        )
    )
    config = validate_config(
        {
            "seed": 1,
            "pool": {"dir": str(root / "pool"), "sources": [str(root / "audio" / "*")]},
            "models": {
                "clap": {"backend": "transformers", "model": tiny_models["clap_transformers"], "batch_size": 8},
                "vlm": [{"name": "given", "backend": "provided", "path": str(concepts)}],
            },
            "sonify": {
                "images": [str(images / "*"), str(root / "members.tar")],
                "out": str(root / "out"),
                "shard_size_mb": 0.25,
                "splits": SPLITS,
            },
            "retrieval": {"search_k": 4, "k": 2, "min_cosine": -1.0},
        }
    )
    run_pool(config)
    summary = run_sonify(config)
    assert summary["samples"] == len(ids) and summary["rejected"] == 0, summary
    out = root / "out"
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    manifest = {
        r["key"]: r
        for p in sorted((out / "manifest").glob("*.parquet"))
        if not p.name.startswith("rejected")
        for r in pq.read_table(p).to_pylist()
    }
    members = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                key, extension = member.name.split(".", 1)
                members.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return shards, manifest, members


def expected_audio(members: dict, key: str) -> tuple[np.ndarray, int]:
    return soundfile.read(io.BytesIO(members[key]["flac"]), dtype="float32")


def test_the_dataset_mixes_inputs_over_at_least_three_shards(dataset):
    shards, manifest, members = dataset
    assert len(shards) >= 3
    # Each shard holds one split, and is named after it.
    for shard in shards:
        held = {r["split"] for r in manifest.values() if r["shard"] == Path(shard).name}
        assert held == {Path(shard).name.split("-")[0]}
    assert {r["image_format"] for r in manifest.values()} == {"png", "jpeg", "webp"}
    assert {r["image_member"] is None for r in manifest.values()} == {True, False}
    first = [r for r in manifest.values() if r["shard"] == Path(shards[0]).name]
    assert all(r["image_member"] is None for r in first)
    assert all(set(m) == {"jpg", "flac", "json"} for m in members.values())


def ffmpeg_library_path(folder: Path) -> str:
    """FFmpeg's libraries from PyAV's wheel, under the names torchcodec links against (PyAV's
    copies carry a hash in their names), and PyAV's folder for what they load in turn."""
    bundled = Path(importlib.util.find_spec("av").origin).parent.parent / "av.libs"
    folder.mkdir(exist_ok=True)
    for library in FFMPEG_LIBRARIES:
        (found,) = bundled.glob(f"lib{library}-*.so.*")
        major = found.name.split(".so.", 1)[1].split(".", 1)[0]
        link = folder / f"lib{library}.so.{major}"
        if not link.exists():
            link.symlink_to(found)
    return f"{folder}:{bundled}"


def rows_read_with_datasets(folder: Path, scratch: Path, streaming: bool = False) -> list[dict]:
    """What tests.read_with_datasets prints of a sonify run folder, offline, in a process of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        LD_LIBRARY_PATH=ffmpeg_library_path(scratch / "ffmpeg"),
        HF_HOME=str(scratch / "hf"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH=str(REPO),
    )
    command = [sys.executable, "-m", "tests.read_with_datasets", *(["--streaming"] if streaming else []), str(folder)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
def test_hugging_face_datasets_reads_every_row_whole(dataset, tmp_path, streaming):
    shards, manifest, members = dataset
    rows = rows_read_with_datasets(Path(shards[0]).parent.parent, tmp_path, streaming)
    assert sorted(r["key"] for r in rows) == sorted(manifest)
    # Every split, from the dataset card alone, each sample in its own.
    assert {r["split"] for r in rows} == set(SPLITS)
    for row in rows:
        expected = manifest[row["key"]]
        assert row["split"] == expected["split"] == row["metadata"]["split"]
        assert row["image_size"] == [expected["shard_image_width"], expected["shard_image_height"]]
        assert row["image_mode"] == "RGB"
        audio, rate = expected_audio(members, row["key"])
        assert row["audio_rate"] == rate == 16000 and row["audio_shape"] == [1, audio.size]
        assert row["audio_rms"] == pytest.approx(float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))), rel=1e-4)
        metadata = row["metadata"]
        assert metadata["key"] == row["key"] and metadata["image_uri"] == expected["image_uri"]
        assert metadata["image_member"] == (expected["image_member"] or "")
        assert [c["clip_id"] for c in metadata["concepts"]] == [c["clip_id"] for c in expected["concepts"]]


def test_webdataset_reads_every_row_whole(dataset):
    shards, manifest, members = dataset
    rows = list(wds.WebDataset(shards, shardshuffle=False).decode("pil"))
    assert sorted(r["__key__"] for r in rows) == sorted(manifest)
    for row in rows:
        expected = manifest[row["__key__"]]
        assert row["jpg"].size == (expected["shard_image_width"], expected["shard_image_height"])
        audio, rate = soundfile.read(io.BytesIO(row["flac"]), dtype="float32")
        assert rate == 16000 and np.array_equal(audio, expected_audio(members, row["__key__"])[0])
        assert row["json"]["key"] == row["__key__"] and row["json"]["mix_lufs"] == pytest.approx(expected["mix_lufs"])


def test_ray_data_reads_every_row_whole(dataset):
    import ray.data

    shards, manifest, members = dataset
    rows = ray.data.read_webdataset(shards).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(manifest)
    for row in rows:
        expected = manifest[row["__key__"]]
        assert np.asarray(row["jpg"]).shape == (expected["shard_image_height"], expected["shard_image_width"], 3)
        audio, rate = soundfile.read(io.BytesIO(row["flac"]), dtype="float32")
        assert rate == 16000 and np.array_equal(audio, expected_audio(members, row["__key__"])[0])
        assert row["json"]["key"] == row["__key__"] and row["json"]["image_uri"] == expected["image_uri"]

"""Bad input never kills a pool run: one folder holding every awkward audio case goes through the
pool pipeline (Ray, tiny CLAP), and every file is accounted for in the pool table, read with
DuckDB, and in summary.json. A pool the run cannot use is refused before any work starts."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pytest
import soundfile

from pipelines.config import validate_config
from pipelines.pool.run import run_pool
from pipelines.pool.store import PoolMismatch
from pipelines.pool.summary import format_summary
from pipelines.sonify.checks import SonifyError, check_pool
from tests.helpers import noise, pyav_media, tone, wav_with_rate, write_audio

# name -> (seconds of audio the file holds, whether its clips are all silent)
USABLE = {
    "café – rüzgâr sesi 1.wav": (7.0, False),
    "engine.mp3": (6.0, False),
    "birds.ogg": (3.0, False),
    "bell.aiff": (2.0, False),
    "rain.flac": (11.0, False),
    "click under a block.wav": (0.1, False),
    "silence.flac": (4.0, True),
    "nan and inf.wav": (6.0, False),
    "all nan.wav": (1.0, True),
    "twelve channels.wav": (2.0, False),
    "eight bit.wav": (2.0, False),
    "hi res 192k.flac": (2.0, False),
    "cut short.wav": (3.0, False),
    # libsndfile refuses a FLAC stream cut midway; FFmpeg decodes it up to the cut.
    "cut.flac": (2.0, False),
}
# name -> (kind, start of the reason after "<uri>: ")
BROKEN = {
    "zero bytes.wav": ("empty", "empty file (0 bytes)"),
    "no samples.wav": ("empty", "audio has no samples"),
    "text.mp3": ("undecodable", "not decodable (libsndfile: "),
    "rate one.wav": ("bad_sample_rate", "sample rate 1 Hz is below 1000 Hz"),
    "silent video.mp4": (
        "no_audio_stream",
        "no audio stream (a mov,mp4,m4a,3gp,3g2,mj2 file holding only video streams)",
    ),
    "missing.wav": ("unreadable", "cannot read "),
    "a folder": ("not_a_file", "{uri} is a folder"),
}


def encoded(audio: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("bad sources")
    write_audio(
        src / "café – rüzgâr sesi 1.wav",
        np.stack([noise(7.0, 44100, 0.1, 1), noise(7.0, 44100, 0.1, 2)], axis=1),
        44100,
    )
    write_audio(src / "engine.mp3", tone(6.0, 16000, 90.0, 0.4), 16000, "MP3", "MPEG_LAYER_III")
    write_audio(src / "birds.ogg", tone(3.0, 32000, 2500.0, 0.2), 32000, "OGG", "VORBIS")
    write_audio(src / "bell.aiff", tone(2.0, 22050, 880.0), 22050, "AIFF", "PCM_16")
    write_audio(src / "rain.flac", noise(11.0, 48000, 0.05, 3), 48000, "FLAC", "PCM_16")
    write_audio(src / "click under a block.wav", tone(0.1, 16000, 1000.0), 16000)
    write_audio(src / "silence.flac", np.zeros(4 * 16000, np.float32), 16000, "FLAC")
    broken = tone(6.0, 16000)
    broken[100:900] = np.nan
    broken[20000] = np.inf
    broken[40000] = -np.inf
    write_audio(src / "nan and inf.wav", broken, 16000, subtype="FLOAT")
    write_audio(src / "all nan.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    write_audio(src / "twelve channels.wav", tone(2.0, 16000, channels=12), 16000)
    write_audio(src / "eight bit.wav", tone(2.0, 8000), 8000, subtype="PCM_U8")
    write_audio(src / "hi res 192k.flac", tone(2.0, 192000), 192000, "FLAC", "PCM_24")
    (src / "cut short.wav").write_bytes(encoded(tone(6.0, 16000), 16000, "WAV", "PCM_16")[: 44 + 2 * 16000 * 3])

    (src / "zero bytes.wav").write_bytes(b"")
    (src / "no samples.wav").write_bytes(encoded(np.zeros(0, np.float32), 16000, "WAV"))
    (src / "text.mp3").write_text("ID3? no, a note about engines\n" * 20)
    flac = encoded(noise(4.0, 16000), 16000, "FLAC")
    (src / "cut.flac").write_bytes(flac[: len(flac) // 2])
    (src / "rate one.wav").write_bytes(wav_with_rate(noise(1.0, 16000), 1))
    (src / "silent video.mp4").write_bytes(pyav_media(None, 16000, "mp4", None, video=True))
    (src / "a folder").mkdir()
    return src


def make_config(pool_dir: Path, patterns: list[str], models: dict, clap: dict | None = None) -> object:
    return validate_config(
        {
            "pool": {"dir": str(pool_dir), "sources": patterns, "files_per_part": 4},
            "models": {
                "clap": clap or {"backend": "transformers", "model": models["clap_transformers"], "batch_size": 8}
            },
        }
    )


@pytest.fixture(scope="module")
def run(sources, tmp_path_factory, tiny_models, ray_session):
    pool_dir = tmp_path_factory.mktemp("bad pool") / "pool"
    patterns = [f"{sources}/*", str(sources / "missing.wav"), str(sources / "a folder")]
    config = make_config(pool_dir, patterns, tiny_models)
    return pool_dir, config, run_pool(config)


def expected_clips() -> dict[str, int]:
    return {name: max(1, math.ceil(round(seconds / 5.0, 3))) for name, (seconds, _) in USABLE.items()}


def test_every_file_is_clips_or_one_error_row(run, sources):
    pool_dir = run[0]
    db = duckdb.connect()
    db.execute(f"CREATE VIEW clips AS SELECT * FROM read_parquet('{pool_dir}/clips/*.parquet')")
    rows = db.execute(
        "SELECT source_uri, chunk_index, error, silent, duration_s FROM clips ORDER BY source_uri, chunk_index"
    ).fetchall()
    by_file: dict[str, list[tuple]] = {}
    for uri, *rest in rows:
        by_file.setdefault(Path(uri).name, []).append((uri, *rest))
    assert set(by_file) == set(USABLE) | set(BROKEN)

    for name, count in expected_clips().items():
        clips = by_file[name]
        assert [c[1] for c in clips] == list(range(count)), name
        assert all(c[2] is None for c in clips), name
        assert all(c[3] is USABLE[name][1] for c in clips), name
    assert by_file["click under a block.wav"][0][4] == pytest.approx(0.1)
    assert by_file["cut short.wav"][0][4] == pytest.approx(3.0, abs=1e-3)

    for name, (_, reason) in BROKEN.items():
        ((uri, chunk_index, error, _, _),) = by_file[name]
        assert uri == str(sources / name) and chunk_index == -1
        assert error.startswith(f"{uri}: {reason.format(uri=uri)}"), error

    embedded = db.execute(f"SELECT count(*) FROM read_parquet('{pool_dir}/embeddings/*.parquet')").fetchone()[0]
    assert embedded == sum(n for name, n in expected_clips().items() if not USABLE[name][1])


def test_summary_counts_every_file_and_error_kind(run):
    pool_dir, _, summary = run
    clips = expected_clips()
    silent = sum(n for name, n in clips.items() if USABLE[name][1])
    kinds: dict[str, int] = {}
    for kind, _ in BROKEN.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    assert summary["files_listed"] == summary["files_processed"] == len(USABLE) + len(BROKEN)
    assert summary["clips_added"] == sum(clips.values())
    assert summary["silent_clips_added"] == silent
    assert summary["clips_embedded"] == sum(clips.values()) - silent
    assert summary["errors"] == len(BROKEN) == len(summary["error_reasons"])
    assert summary["errors_by_kind"] == kinds
    assert summary["pool"] == {
        "files": len(USABLE) + len(BROKEN),
        "clips": sum(clips.values()),
        "silent_clips": silent,
        "error_rows": len(BROKEN),
        "errors_by_kind": kinds,
        "variant_clips": {},
        # No pool.metadata: no clip has a licence.
        "clips_by_license": {},
        "clips_without_license": sum(clips.values()),
        "generated_clips": 0,
        # Every usable file here has its energy below 8 kHz.
        "inaudible_at_mix_rates": {"16000": 0},
    }
    assert json.loads((pool_dir / "summary.json").read_text()) == summary
    text = format_summary(summary)
    assert "7 errors (1 bad_sample_rate, 2 empty, 1 no_audio_stream, 1 not_a_file, 1 undecodable, 1 unreadable)" in text
    assert (
        "7 error rows (1 bad_sample_rate, 2 empty, 1 no_audio_stream, 1 not_a_file, 1 undecodable, 1 unreadable)"
        in text
    )
    assert f"  error:    {summary['error_reasons'][0]}" in text


def test_rerun_counts_every_file_as_unchanged(run):
    _, config, _ = run
    again = run_pool(config)
    assert again["files_processed"] == 0 and again["files_unchanged"] == len(USABLE) + len(BROKEN)
    assert again["errors"] == 0 and again["errors_by_kind"] == {}
    assert again["pool"]["errors_by_kind"] == run[2]["errors_by_kind"]


def test_a_pool_built_with_another_clap_is_refused_before_any_work(run, tiny_models):
    pool_dir, config, _ = run
    before = {p: p.read_bytes() for p in pool_dir.rglob("*") if p.is_file()}
    laion = {
        "backend": "laion_clap",
        "model": tiny_models["clap_laion_checkpoint"],
        "text_backbones_dir": tiny_models["clap_laion_text_backbones"],
    }
    other = make_config(pool_dir, list(config.pool.sources), tiny_models, clap=laion)
    with pytest.raises(PoolMismatch, match=f"pool {pool_dir} was built with other settings \\(clap: pool has"):
        run_pool(other)
    with pytest.raises(PoolMismatch, match="clap: pool has"):
        check_pool(other)
    assert {p: p.read_bytes() for p in pool_dir.rglob("*") if p.is_file()} == before


def test_a_pool_folder_that_does_not_exist_is_refused(tmp_path, tiny_models):
    config = make_config(tmp_path / "no such pool", [], tiny_models)
    with pytest.raises(SonifyError, match=f"pool.dir {tmp_path / 'no such pool'} holds no pool"):
        check_pool(config)
    assert not (tmp_path / "no such pool").exists()


def test_every_awkward_image_through_sonify_is_a_sample_or_a_counted_error_row(run, tmp_path, tiny_models):
    """The image cases of test_images.py, plus an id found in two inputs, through a whole sonify run
    against the pool above: each image is one manifest row, a sample or a rejected row with its
    reason, and each kind of failure is counted in summary.json."""
    import webdataset as wds
    from PIL import Image

    from pipelines.sonify import run_sonify
    from stages.pairing.planning import sample_key
    from tests.test_images import encode, gradient, write_image_inputs

    pool_dir, pool_config, _ = run
    images, more = tmp_path / "images", tmp_path / "more"
    images.mkdir()
    more.mkdir()
    expected = write_image_inputs(images)
    for folder in (images, more):
        (folder / "same name.png").write_bytes(encode(gradient(), "PNG"))
    stems = [Path(n).stem for n in expected] + ["same name"]
    concepts = tmp_path / "concepts.jsonl"
    concepts.write_text(
        "".join(
            json.dumps({"image_id": s, "caption": "a street", "concepts": [{"label": "car", "text": "a car"}]}) + "\n"
            for s in stems
        )
    )
    tree = pool_config.model_dump(mode="json")
    tree["models"]["vlm"] = [{"name": "given", "backend": "provided", "path": str(concepts)}]
    tree["sonify"] = {
        "images": [f"{images}/*", f"{more}/*"],
        "out": str(tmp_path / "out"),
        "min_side": 32,
        "max_image_pixels": 1_000_000,
    }
    tree["retrieval"] = {"search_k": 4, "k": 2, "min_cosine": -1.0}
    summary = run_sonify(validate_config(tree))

    decoded = [n for n, (error, dropped) in expected.items() if error is None and dropped is None]
    assert summary["images"] == {
        "listed": len(expected) + 2,
        # cut.jpg, cut.png and cut.webp share the id "cut"; "same name" is in both folders.
        "renamed_duplicate_ids": 5,
        "errors": 6,
        "errors_by_kind": {"empty": 1, "too_large": 1, "undecodable": 4},
        "too_small": 1,
    }
    # The two images sharing an id are kept under hashes of their URIs; a concepts file keyed by
    # the shared id cannot say which is which, so both are rejected with that reason.
    assert summary["scenes"]["given"] == {"images_error": 6, "too_small": 1, "ok": len(decoded), "vlm_error": 2}

    manifest = (
        duckdb.connect()
        .sql(f"SELECT * FROM read_parquet('{tmp_path}/out/manifest/*.parquet')")
        .arrow()
        .read_all()
        .to_pylist()
    )
    assert len(manifest) == len(expected) + 2, "every listed image is one manifest row"
    by_name = {Path(r["image_uri"]).name: r for r in manifest if Path(r["image_uri"]).parent == images}
    for name, (error, _) in expected.items():
        row = by_name[name]
        if error:
            assert row["error"].startswith(f"{images / name}: ") and error in row["error"], row["error"]
    duplicates = [r for r in manifest if Path(r["image_uri"]).name == "same name.png"]
    assert len({r["image_id"] for r in duplicates}) == 2
    assert all("no concepts provided for image_id" in r["error"] for r in duplicates)
    samples = {r["key"]: r for r in manifest if r["error"] is None}
    assert sorted(Path(r["image_uri"]).name for r in samples.values()) == sorted(decoded)
    rotated = by_name["rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (48, 64)
    assert sample_key("café au lait ü", "given") in samples

    shards = sorted(str(p) for p in (tmp_path / "out" / "shards").glob("*.tar"))
    read = {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False)}
    assert read.keys() == samples.keys()
    for key, sample in read.items():
        assert set(sample) - {"__key__", "__url__", "__local_path__"} == {"jpg", "flac", "json"}, key
        # Every image, whatever its mode or orientation, is the upright RGB image the VLM saw, as JPEG.
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            assert (image.format, image.mode, image.size) == (
                "JPEG",
                "RGB",
                (samples[key]["width"], samples[key]["height"]),
            ), key


@pytest.mark.slow
def test_names_that_are_not_utf8_go_through_pool_and_sonify_and_keep_their_bytes(tiny_models, tmp_path):
    """A Latin-1 audio file and a Latin-1 image (byte 0xE9, which Linux allows in a name) through
    `run_pipeline.py pool` and `sonify`: both are stored under percent-encoded file:// URLs, and the
    image becomes a sample whose shard holds its bytes."""
    import os

    import pyarrow.parquet as pq
    import yaml
    from PIL import Image

    from stages.io import storage
    from tests.conftest import PipelineRuns
    from tests.test_images import encode, gradient

    runs = PipelineRuns(tmp_path, tiny_models)
    audio, images = tmp_path / "inputs" / "audio", tmp_path / "inputs" / "images"
    write_audio(audio / "plain.wav", noise(7.0, 44100, 0.05, 1) + tone(7.0, 44100, 300.0, 0.1), 44100)
    write_audio(tmp_path / "staged.wav", noise(6.0, 44100, 0.05, 2) + tone(6.0, 44100, 500.0, 0.1), 44100)
    os.rename(tmp_path / "staged.wav", os.fsencode(audio) + b"/caf\xe9.wav")
    images.mkdir(parents=True)
    (images / "plain.png").write_bytes(encode(gradient(), "PNG"))
    latin1_png = encode(gradient(80, 60), "PNG")
    with open(os.fsencode(images) + b"/caf\xe9.png", "wb") as handle:
        handle.write(latin1_png)
    concepts = tmp_path / "concepts.jsonl"
    concepts.write_text(
        "".join(
            json.dumps({"image_id": i, "caption": "a cafe", "concepts": [{"label": "cup", "text": "a cup"}]}) + "\n"
            for i in ("plain", "caf%E9")
        )
    )
    config = runs.config("latin1")
    tree = yaml.safe_load(config.read_text())
    tree["models"]["vlm"] = [{"name": "given", "backend": "provided", "path": str(concepts), "batch_size": 2}]
    tree["sonify"]["image_format"] = "original"
    config.write_text(yaml.safe_dump(tree))
    try:
        runs.run("pool", config)
        runs.run("sonify", config)
    finally:
        runs.cleanup()

    clips = pq.read_table(tmp_path / "latin1" / "pool" / "clips").to_pylist()
    assert {r["error"] for r in clips} == {None}
    uris = {r["source_uri"] for r in clips}
    assert uris == {str(audio / "plain.wav"), f"file://{audio}/caf%E9.wav"}
    assert os.fsencode(storage.filesystem(f"file://{audio}/caf%E9.wav")[1]) == os.fsencode(audio) + b"/caf\xe9.wav"
    manifest = pq.read_table(tmp_path / "latin1" / "out" / "manifest").to_pylist()
    latin1 = [r for r in manifest if r["image_id"] == "caf%E9"]
    assert [(r["image_uri"], r["error"]) for r in latin1] == [(f"file://{images}/caf%E9.png", None)]
    with tarfile.open(tmp_path / "latin1" / "out" / "shards" / latin1[0]["shard"]) as tar:
        assert tar.extractfile(f"{latin1[0]['key']}.png").read() == latin1_png
    with Image.open(io.BytesIO(latin1_png)) as image:
        assert (latin1[0]["width"], latin1[0]["height"]) == image.size

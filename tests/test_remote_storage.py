"""Pool and sonify with every input and output on an S3-compatible server (moto's server mode on
loopback, reached through s3fs), the endpoint and credentials given only by the standard AWS
environment variables. The pipelines run as subprocesses so that Ray's workers inherit that
environment; their results are read back from the bucket by a separately configured s3fs client,
with pyarrow for the Parquet tables and webdataset and tarfile for the shards."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml
from PIL import Image

from stages.audio.packs import decode_flac
from stages.io import storage
from stages.io.model_files import DIGESTS_FOLDER
from tests.helpers import noise, tone, write_audio

REPO = Path(__file__).resolve().parents[1]
BUCKET = "sonify-remote"
KEY_ID, SECRET = "test-key-id", "test-secret"
EXPECTED_IMAGE_IDS = {"photo0", "photo1", "photo2", "tiny", "broken", "t1", "t2", "from-list"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    yield f"http://127.0.0.1:{port}"
    moto.stop()


@pytest.fixture(scope="module")
def aws_env(server, tmp_path_factory) -> dict[str, str]:
    """The only place the endpoint and credentials are given: standard AWS variables. Config files
    are pointed at nothing so that a developer's ~/.aws cannot supply them instead."""
    nowhere = tmp_path_factory.mktemp("no-aws-config") / "absent"
    return {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL_S3": server,
        "AWS_CONFIG_FILE": str(nowhere),
        "AWS_SHARED_CREDENTIALS_FILE": str(nowhere),
    }


@pytest.fixture(scope="module")
def reader(server):
    """An s3fs client configured by arguments, independent of the pipeline's environment."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=KEY_ID, secret=SECRET, endpoint_url=server, skip_instance_cache=True, use_listings_cache=False
    )
    fs.mkdir(BUCKET)
    return fs


def picture(seed: int, size=(96, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def upload_inputs(reader, tiny_models: dict, scratch: Path) -> None:
    audio = scratch / "audio"
    write_audio(audio / "a.wav", noise(12.0, 44100, 0.1, 1), 44100)
    write_audio(audio / "b.flac", tone(9.0, 48000, 500.0, 0.2), 48000, "FLAC")
    write_audio(audio / "c.ogg", noise(7.0, 22050, 0.3, 2) * tone(7.0, 22050, 3.0, 1.0), 22050, "OGG", "VORBIS")
    (audio / "corrupt.wav").write_bytes(b"RIFF not really a wave file")
    reader.put(f"{audio}/", f"{BUCKET}/audio/", recursive=True)
    for i, fmt in enumerate(["JPEG", "PNG", "WEBP"]):
        reader.pipe(f"{BUCKET}/images/photo{i}.{fmt.lower().replace('jpeg', 'jpg')}", encoded(picture(i), fmt))
    reader.pipe(f"{BUCKET}/images/tiny.png", encoded(picture(9, (10, 10)), "PNG"))
    reader.pipe(f"{BUCKET}/images/broken.jpg", b"\xff\xd8\xff\xe0 truncated")
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w") as tar:
        for seed, key in enumerate(("t1", "t2")):
            payload = encoded(picture(30 + seed), "JPEG")
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    reader.pipe(f"{BUCKET}/tars/shard-a.tar", tar_buffer.getvalue())
    reader.pipe(f"{BUCKET}/listed/listed.png", encoded(picture(20), "PNG"))
    listing = io.BytesIO()
    pq.write_table(pa.table({"uri": [f"s3://{BUCKET}/listed/listed.png"], "image_id": ["from-list"]}), listing)
    reader.pipe(f"{BUCKET}/lists/list.parquet", listing.getvalue())
    lines = [
        {"image_id": f"photo{i}", "caption": "a field", "concepts": [{"label": "wind", "text": "wind blowing"}]}
        for i in range(3)
    ]
    lines += [
        {"image_id": "t1", "caption": "a street", "concepts": [{"label": "car", "text": "a car passing"}]},
        {"image_id": "from-list", "concepts": [{"label": "rain", "text": "rain falling"}]},
    ]
    reader.pipe(f"{BUCKET}/concepts.jsonl", ("\n".join(json.dumps(line) for line in lines) + "\n").encode())
    reader.put(f"{tiny_models['clap_transformers']}/", f"{BUCKET}/models/clap-transformers/", recursive=True)
    reader.put(f"{tiny_models['vlm_qwen2_5_vl']}/", f"{BUCKET}/models/vlm-qwen/", recursive=True)


def run_cli(command: str, config: Path, env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "run_pipeline.py", command, "--config", str(config), *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stderr[-6000:]}"
    return done


def snapshot(reader, prefix: str) -> dict[str, tuple[str, object]]:
    return {
        path: (info["ETag"], info["LastModified"])
        for path, info in reader.find(f"{BUCKET}/{prefix}", detail=True).items()
    }


@pytest.fixture(scope="module")
def runs(reader, aws_env, tiny_models, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("remote")
    upload_inputs(reader, tiny_models, scratch)
    cache = scratch / "model-cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_", "RAY_ADDRESS", "SONIFY_"))}
    env.update(aws_env, SONIFY_MODEL_CACHE=str(cache), HF_HUB_OFFLINE="1")
    config = scratch / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "seed": 5,
                "ray": {"num_cpus": 2},
                "pool": {"dir": f"s3://{BUCKET}/pool", "sources": [f"s3://{BUCKET}/audio/*"], "files_per_part": 2},
                "models": {
                    "clap": {
                        "backend": "transformers",
                        "model": f"s3://{BUCKET}/models/clap-transformers",
                        "batch_size": 8,
                    },
                    "vlm": [
                        {
                            "name": "qwen",
                            "backend": "transformers",
                            "model": f"s3://{BUCKET}/models/vlm-qwen",
                            "batch_size": 4,
                        },
                        {"name": "given", "backend": "provided", "path": f"s3://{BUCKET}/concepts.jsonl"},
                    ],
                },
                "sonify": {
                    "images": [
                        f"s3://{BUCKET}/images/*",
                        f"s3://{BUCKET}/tars/shard-a.tar",
                        f"s3://{BUCKET}/lists/list.parquet",
                    ],
                    "out": f"s3://{BUCKET}/out",
                    "min_side": 32,
                    "shard_size_mb": 0.25,
                },
                "prompt": {"max_new_tokens": 48, "max_concepts": 2, "max_text_chars": 16},
                "retrieval": {"search_k": 8, "k": 4, "min_cosine": -1.0},
            }
        )
    )
    run_cli("pool", config, env)
    pool_snapshot = snapshot(reader, "pool")
    sonify = run_cli("sonify", config, env)
    first = snapshot(reader, "out")
    summary = json.loads(reader.cat(f"{BUCKET}/out/summary.json"))
    again = run_cli("sonify", config, env)
    return {
        "config": config,
        "env": env,
        "cache": cache,
        "pool_snapshot": pool_snapshot,
        "first": first,
        "summary": summary,
        "second": snapshot(reader, "out"),
        "second_summary": json.loads(reader.cat(f"{BUCKET}/out/summary.json")),
        "logs": sonify.stderr + again.stderr,
    }


def read_manifest(reader) -> pa.Table:
    files = sorted(reader.glob(f"{BUCKET}/out/manifest/*.parquet"))
    return pa.concat_tables([pq.read_table(f, filesystem=reader) for f in files])


@pytest.mark.slow
def test_pool_built_on_s3(runs, reader):
    summary = json.loads(reader.cat(f"{BUCKET}/pool/summary.json"))
    assert summary["files_listed"] == 4 and summary["errors"] == 1
    # 12 s -> 3 clips, 9 s -> 2, 7 s -> 2
    assert summary["clips_added"] == 7 and summary["index"]["size"] == 7
    clips = pa.concat_tables(
        [pq.read_table(f, filesystem=reader) for f in reader.glob(f"{BUCKET}/pool/clips/*.parquet")]
    )
    assert {u for u in clips.column("source_uri").to_pylist()} == {
        f"s3://{BUCKET}/audio/{n}" for n in ("a.wav", "b.flac", "c.ogg", "corrupt.wav")
    }
    assert all(f.startswith("etag:") for f in clips.column("source_fingerprint").to_pylist())
    assert reader.exists(f"{BUCKET}/pool/index/index.faiss")


@pytest.mark.slow
def test_every_listed_image_is_accounted_for(runs, reader):
    manifest = read_manifest(reader)
    summary = runs["summary"]
    images = summary["images"]
    assert (images["listed"], images["errors"], images["too_small"]) == (8, 1, 1)
    for vlm in ("qwen", "given"):
        rows = manifest.filter(pc.equal(manifest.column("vlm"), vlm))
        assert sorted(rows.column("image_id").to_pylist()) == sorted(EXPECTED_IMAGE_IDS), vlm
    given = summary["scenes"]["given"]
    assert given == {"ok": 5, "vlm_error": 1, "images_error": 1, "too_small": 1}
    assert manifest.num_rows == 16
    assert summary["samples"] == manifest.filter(pc.is_null(manifest.column("error"))).num_rows >= 4


@pytest.mark.slow
def test_shards_read_back_and_match_the_manifest(runs, reader, tmp_path):
    manifest = read_manifest(reader)
    written = manifest.filter(pc.is_null(manifest.column("error"))).to_pylist()
    tars = sorted(reader.glob(f"{BUCKET}/out/shards/*.tar"))
    assert len(tars) == runs["summary"]["shards"] >= 2
    local = []
    tar_keys: dict[str, str] = {}
    for remote in tars:
        path = tmp_path / remote.rsplit("/", 1)[-1]
        path.write_bytes(reader.cat(remote))
        local.append(str(path))
        with tarfile.open(path) as tar:
            for member in tar:
                tar_keys[member.name.split(".", 1)[0]] = path.name
    assert tar_keys == {row["key"]: row["shard"] for row in written}
    samples = list(wds.WebDataset(local, shardshuffle=False))
    assert len(samples) == len(written)
    for sample in samples:
        meta = json.loads(sample["json"])
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            assert image.size == (meta["shard_image_width"], meta["shard_image_height"])
        if not meta["image_member"]:
            with Image.open(io.BytesIO(reader.cat(meta["image_uri"]))) as source:
                assert source.size == image.size
            assert meta["image_uri"].startswith(f"s3://{BUCKET}/")
        audio, rate = decode_flac(sample["flac"])
        assert rate == 16000 and audio.shape == (80000,)


@pytest.mark.slow
def test_second_sonify_run_changes_nothing(runs):
    first, second = runs["first"], runs["second"]
    assert first.keys() == second.keys()
    timings = f"{BUCKET}/out/summary.json"
    assert {k: v[0] for k, v in first.items() if k != timings} == {k: v[0] for k, v in second.items() if k != timings}
    # summary.json holds the run's timings; config.yaml, the dataset card and the credits are made
    # from the whole run at its end, and rewritten with the same bytes on every run.
    rewritten_each_run = {"config.yaml", "summary.json", "README.md", "ATTRIBUTION.csv", "ATTRIBUTION.md"}
    kept = {k for k in first if k.removeprefix(f"{BUCKET}/out/") not in rewritten_each_run}
    assert any("/shards/" in k for k in kept) and any("/scenes/" in k for k in kept)
    assert {k: first[k][1] for k in kept} == {k: second[k][1] for k in kept}
    assert "already written" in runs["logs"]
    strip = ("seconds", "wall_seconds")
    assert {k: v for k, v in runs["second_summary"].items() if k not in strip} == {
        k: v for k, v in runs["summary"].items() if k not in strip
    }


@pytest.mark.slow
def test_render_from_and_to_s3_is_bit_identical(runs, reader):
    run_cli(
        "render",
        runs["config"],
        runs["env"],
        f"render.manifest=s3://{BUCKET}/out/manifest",
        f"render.out=s3://{BUCKET}/rendered",
    )
    original = sorted(reader.glob(f"{BUCKET}/out/shards/*.tar"))
    rendered = sorted(reader.glob(f"{BUCKET}/rendered/shards/*.tar"))
    assert [p.rsplit("/", 1)[-1] for p in rendered] == [p.rsplit("/", 1)[-1] for p in original]
    for a, b in zip(original, rendered):
        assert reader.cat(a) == reader.cat(b)


@pytest.mark.slow
def test_no_temporary_file_is_left(runs, reader):
    keys = reader.find(BUCKET)
    assert keys
    assert [k for k in keys if k.rsplit("/", 1)[-1].startswith((".", "tmp"))] == []
    # Each model was staged once per node, however many runs and actors loaded it; beside them the
    # cache keeps only the content digests of the checkpoints' files.
    staged = sorted(p.name for p in runs["cache"].iterdir() if p.name != DIGESTS_FOLDER)
    assert len(staged) == 2 and not any(name.startswith(".") for name in staged)
    assert {p.name for p in runs["cache"].iterdir()} - set(staged) <= {DIGESTS_FOLDER}
    assert {(runs["cache"] / name / "config.json").is_file() for name in staged} == {True}


def test_listing_sees_files_another_client_wrote(reader, aws_env, monkeypatch):
    """Workers write files that the driver lists next: a cached listing would hide them."""
    for name, value in aws_env.items():
        monkeypatch.setenv(name, value)
    folder = f"s3://{BUCKET}/listing"
    storage.write_bytes(f"{folder}/a.parquet", b"1")
    assert storage.list_files(folder, ".parquet") == [f"{folder}/a.parquet"]
    reader.pipe(f"{BUCKET}/listing/b.parquet", b"2")
    assert storage.list_files(folder, ".parquet") == [f"{folder}/a.parquet", f"{folder}/b.parquet"]
    assert storage.exists(f"{folder}/b.parquet")


def test_concurrent_stagings_from_s3_share_one_copy(reader, aws_env, tiny_models, tmp_path):
    reader.put(f"{tiny_models['clap_laion_text_backbones']}/", f"{BUCKET}/staging/backbones/", recursive=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(aws_env)
    # The endpoint variable for all AWS services, which botocore also reads (the pipeline runs
    # above use the S3-specific one).
    env["AWS_ENDPOINT_URL"] = env.pop("AWS_ENDPOINT_URL_S3")
    code = "import sys; from stages.io.model_files import stage_model; print(stage_model(sys.argv[1], sys.argv[2]))"
    loaders = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"s3://{BUCKET}/staging/backbones", str(tmp_path)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [loader.communicate(timeout=120) for loader in loaders]
    assert [loader.returncode for loader in loaders] == [0, 0], [err[-2000:] for _, err in results]
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    source = Path(tiny_models["clap_laion_text_backbones"])
    staged = Path(paths.pop())
    expected = {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    assert {str(p.relative_to(staged)): p.read_bytes() for p in staged.rglob("*") if p.is_file()} == expected
    assert [p.name for p in tmp_path.iterdir()] == [staged.name]

"""Alignment scores end to end through Ray: a first sonify run with a provided concepts file, a
mapper trained on its shards (train-mapper's function), a second run with that mapper beside the
concepts file, read back with DuckDB: every written sample has its scores (text_audio null only
for the mapper's scenes), the JSON members carry them, and sonify.min_alignment rejects and counts."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import duckdb
import pytest

from pipelines.config import validate_config
from pipelines.mapper import train_mapper
from pipelines.report import sonify_report
from pipelines.sonify import run_sonify
from pipelines.sonify.run import format_summary
from stages.embed.mapper import validation_mask
from tests.test_mapper_sonify import world  # noqa: F401 (the fixture: a pool of three sounds)
from tests.test_sonify_pipeline import encoded, picture

# Three sonify runs, a mapper's training and their models: about 100 s on 2 cores.
pytestmark = pytest.mark.slow

IMAGES = 8


@pytest.fixture(scope="module")
def images(world, tmp_path_factory):  # noqa: F811
    """Eight images, each with one or two provided concepts."""
    root = tmp_path_factory.mktemp("alignment")
    (root / "images").mkdir()
    lines = []
    for i in range(IMAGES):
        (root / "images" / f"img{i}.png").write_bytes(encoded(picture(60 + i), "PNG"))
        concepts = [{"label": "wind", "text": "wind in trees"}]
        if i % 2:
            concepts.append({"label": "bird", "text": "a bird singing"})
        lines.append({"image_id": f"img{i}", "caption": "a yard", "concepts": concepts})
    (root / "concepts.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return root


def tree(world, images, tiny_models, out, mapper=None, **min_alignment) -> dict:  # noqa: F811
    vlm = [{"name": "given", "backend": "provided", "path": str(images / "concepts.jsonl"), "batch_size": 2}]
    if mapper:
        vlm.append(
            {"name": "mapped", "backend": "mapper", "checkpoint": str(mapper), "batch_size": 2, "num_cpus": 0.25}
        )
    return {
        "seed": 2,
        "ray": {"num_cpus": 2},
        "pool": {"dir": str(world / "pool"), "sources": [str(world / "audio" / "*")]},
        "models": {
            # CLAP, CLIP and the mapper each hold actors while shards are written, beside the mixing
            # tasks; a quarter CPU each leaves one of the two for those.
            "clap": {"model": tiny_models["clap_transformers"], "batch_size": 8, "num_cpus": 0.25},
            "clip": {"model": tiny_models["clip"], "batch_size": 4, "num_cpus": 0.25},
            "vlm": vlm,
        },
        "sonify": {
            "images": [str(images / "images" / "*")],
            "out": str(out),
            "min_side": 32,
            "images_per_chunk": 4,
            "min_alignment": min_alignment,
        },
        "retrieval": {"search_k": 8, "k": 4, "min_cosine": -1.0},
        "mapper": {
            "pairs": [str(images / "first" / "shards" / "*.tar")],
            "checkpoint": str(images / "mapper.safetensors"),
            "hidden_dim": 32,
            "blocks": 1,
            "epochs": 2,
            "batch_size": 4,
            "validation_fraction": 0.2,
            "pairs_per_block": 4,
        },
    }


def manifest(out) -> duckdb.DuckDBPyConnection:
    db = duckdb.connect()
    db.execute(f"CREATE VIEW m AS SELECT * FROM read_parquet('{out}/manifest/[0-9]*.parquet')")
    return db


def shard_json(out) -> dict[str, dict]:
    members = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    members[member.name.removesuffix(".json")] = json.loads(tar.extractfile(member).read())
    return members


def test_a_mapper_trained_on_a_first_run_scores_every_sample_of_a_second_and_a_floor_rejects(
    world,  # noqa: F811
    images,
    tiny_models,
):
    first = images / "first"
    summary = run_sonify(validate_config(tree(world, images, tiny_models, first)))
    assert summary["samples"] == IMAGES
    # Without a mapper: a text score for every sample, no image score.
    assert summary["alignment"]["text_audio"]["samples"] == IMAGES
    assert summary["alignment"]["image_audio"] == {"samples": 0, "mean": None, "min": None, "max": None}
    assert manifest(first).execute("SELECT count(*) FROM m WHERE image_audio IS NOT NULL").fetchone()[0] == 0

    keys = [f"img{i}__given" for i in range(IMAGES)]
    assert 2 <= (~validation_mask(keys, 0.2)).sum() and validation_mask(keys, 0.2).any()
    trained = train_mapper(validate_config(tree(world, images, tiny_models, images / "unused")))
    assert trained["meta"]["pairs"]["embedded"] == IMAGES

    second = images / "second"
    config = validate_config(tree(world, images, tiny_models, second, images / "mapper.safetensors"))
    summary = run_sonify(config)
    assert summary["samples"] == 2 * IMAGES
    db = manifest(second)
    rows = db.execute("SELECT key, vlm, text_audio, image_audio FROM m WHERE error IS NULL ORDER BY key").fetchall()
    assert len(rows) == 2 * IMAGES
    assert all(image_audio is not None and -1 <= image_audio <= 1 for _, _, _, image_audio in rows)
    # text_audio is null exactly for the mapper's scenes, and is the mean cosine of the text concepts.
    assert {vlm for _, vlm, text_audio, _ in rows if text_audio is None} == {"mapped"}
    assert all(text_audio is not None for _, vlm, text_audio, _ in rows if vlm == "given")
    mismatched = db.execute(
        "SELECT count(*) FROM m WHERE vlm = 'given' AND abs(text_audio - "
        "list_avg(list_transform(list_filter(concepts, lambda c: c.source = 'text'), lambda c: c.cosine))) > 1e-12"
    ).fetchone()[0]
    assert mismatched == 0
    # The JSON member of each sample holds its final manifest row's scores.
    members = shard_json(second)
    assert {key: (m["text_audio"], m["image_audio"]) for key, m in members.items()} == {
        key: (text_audio, image_audio) for key, _, text_audio, image_audio in rows
    }
    scores = sorted(image_audio for *_, image_audio in rows)
    assert summary["alignment"]["image_audio"]["samples"] == 2 * IMAGES
    assert summary["alignment"]["image_audio"]["min"] == scores[0]
    assert summary["alignment"]["image_audio"]["max"] == scores[-1]
    assert summary["alignment"]["text_audio"]["samples"] == IMAGES
    assert "aligned:  text_audio mean" in format_summary(summary)
    # The report plots both scores and shows the samples at each end of each first.
    page = Path(sonify_report(config).removeprefix("file://")).read_text()
    assert "lowest image_audio" in page and "highest text_audio" in page
    assert (second / "report" / "plots" / "image-audio.png").exists()

    # A floor between the fourth and fifth lowest image scores rejects the four lowest samples.
    floor = (scores[3] + scores[4]) / 2
    floored = images / "floored"
    config = validate_config(
        tree(world, images, tiny_models, floored, images / "mapper.safetensors", image_audio=floor)
    )
    summary = run_sonify(config)
    low = {key for key, *_, image_audio in rows if image_audio < floor}
    assert len(low) == 4
    assert summary["samples"] == 2 * IMAGES - 4
    assert summary["write_errors_by_kind"] == {"low_alignment": 4}
    assert "4 samples under sonify.min_alignment" in format_summary(summary)
    rejected = manifest(floored).execute("SELECT key, error FROM m WHERE error_kind = 'low_alignment'").fetchall()
    assert {key for key, _ in rejected} == low
    assert all(f"is below sonify.min_alignment.image_audio {floor}" in error for _, error in rejected)
    assert not low & set(shard_json(floored))

"""Sonify through Ray with a mapper beside a text scene source (a provided concepts file), in both
modes, read back with DuckDB: the mapped concepts are searched, chosen and mixed like text ones and
marked `source = 'mapper'` in the manifest; a checkpoint made for another CLAP stops the run before
any work."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from pipelines.config import validate_config
from pipelines.pool.run import run_pool
from pipelines.report import sonify_report
from pipelines.sonify import SonifyError, run_sonify
from pipelines.sonify.run import format_summary
from stages.embed.clap import clap_identity
from stages.embed.clip_image import clip_identity
from tests.helpers import noise, tone, write_audio
from tests.test_mapper_source import write_mapper
from tests.test_sonify_pipeline import encoded, picture

# A pool, two sonify runs and their models: about 85 s on 2 cores.
pytestmark = pytest.mark.slow

IMAGES = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models, ray_session):
    """A pool of three sounds, four images with provided concepts (the third's none), and a mapper
    checkpoint for the tiny CLIP and CLAP."""
    root = tmp_path_factory.mktemp("mapper-sonify")
    write_audio(root / "audio" / "a.wav", noise(11.0, 48000, 0.1, 1), 48000)
    write_audio(root / "audio" / "b.wav", tone(6.0, 48000, 440.0, 0.2), 48000)
    write_audio(root / "audio" / "c.wav", noise(6.0, 48000, 0.2, 2) * tone(6.0, 48000, 3.0, 1.0), 48000)
    (root / "images").mkdir()
    for i in range(IMAGES):
        (root / "images" / f"img{i}.png").write_bytes(encoded(picture(40 + i), "PNG"))
    lines = [
        {"image_id": f"img{i}", "caption": "a yard", "concepts": [{"label": "wind", "text": "wind in trees"}]}
        for i in (0, 1, 3)
    ]
    lines.append({"image_id": "img2", "caption": "a yard", "concepts": []})
    (root / "concepts.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    tree = tree_of(root, tiny_models, "scene", root / "unused")
    config = validate_config(tree)
    run_pool(config)
    checkpoint = root / "mapper.safetensors"
    write_mapper(str(checkpoint), clip_identity(config.models.clip), clap_identity(config.models.clap), seed=3)
    return root


def tree_of(root, tiny_models, mode: str, out, checkpoint=None) -> dict:
    return {
        "seed": 2,
        "ray": {"num_cpus": 2},
        "pool": {"dir": str(root / "pool"), "sources": [str(root / "audio" / "*")]},
        "models": {
            # With a mapper, CLAP, CLIP and the mapper also run on actors of their own while shards are
            # written (the image_audio score), beside the mixing tasks.
            "clap": {"model": tiny_models["clap_transformers"], "batch_size": 8, "num_cpus": 0.25},
            "clip": {"model": tiny_models["clip"], "batch_size": 4, "num_cpus": 0.25},
            "vlm": [
                {"name": "given", "backend": "provided", "path": str(root / "concepts.jsonl"), "batch_size": 2},
                {
                    "name": "mapped",
                    "backend": "mapper",
                    "checkpoint": str(checkpoint or root / "mapper.safetensors"),
                    "mode": mode,
                    "batch_size": 2,
                    "num_cpus": 0.25,
                },
            ],
        },
        "sonify": {"images": [str(root / "images" / "*")], "out": str(out), "min_side": 32, "images_per_chunk": 2},
        "retrieval": {"search_k": 8, "k": 4, "min_cosine": -1.0},
    }


def manifest(out) -> duckdb.DuckDBPyConnection:
    db = duckdb.connect()
    db.execute(f"CREATE VIEW m AS SELECT * FROM read_parquet('{out}/manifest/[0-9]*.parquet')")
    db.execute("CREATE VIEW c AS SELECT key, vlm, unnest(concepts) AS c FROM m")
    return db


def test_scene_mode_gives_every_image_a_mapped_sample(world, tiny_models, tmp_path):
    out = tmp_path / "scene"
    config = validate_config(tree_of(world, tiny_models, "scene", out))
    summary = run_sonify(config)
    assert summary["scenes"]["mapped"] == {"ok": IMAGES}
    assert summary["mapped_concepts_searched"] == IMAGES
    assert summary["concept_texts_searched"] == 2  # "wind in trees" once in each of the two chunks
    assert summary["samples"] == IMAGES + 3
    assert f"; {IMAGES} mapped)" in format_summary(summary)
    db = manifest(out)
    mapped = db.execute(
        "SELECT key, c.label, c.text, c.clip_id IS NOT NULL, c.n_candidates FROM c WHERE c.source = 'mapper' ORDER BY 1"
    ).fetchall()
    assert [row[:4] for row in mapped] == [(f"img{i}__mapped", "mapped", None, True) for i in range(IMAGES)]
    assert all(1 <= row[4] <= 4 for row in mapped)
    assert db.execute("SELECT DISTINCT vlm, c.source FROM c ORDER BY 1").fetchall() == [
        ("given", "text"),
        ("mapped", "mapper"),
    ]
    # The shards carry the mapped samples; their json says where each concept came from.
    assert db.execute("SELECT count(*) FROM m WHERE vlm = 'mapped' AND shard IS NOT NULL").fetchone()[0] == IMAGES
    # The report's gallery says what a mapped concept is, and prints no null.
    page = Path(sonify_report(config).removeprefix("file://")).read_text()
    assert "mapped into CLAP's audio space (no text)" in page and ">None<" not in page
    # The dataset card names the mapper's checkpoint and mode among the scene sources.
    checkpoint = config.models.vlm[1].checkpoint
    assert f"- `mapped`: mapper, `{checkpoint}` (a CLIP -> CLAP mapper, mode scene)" in (out / "README.md").read_text()
    # Nothing is missing (retrieval.min_cosine is -1), and the list is written all the same.
    assert db.execute(f"SELECT count(*) FROM read_parquet('{out}/missing_sounds.parquet')").fetchone()[0] == 0


def test_ambience_mode_adds_the_mapped_concept_to_each_text_scene(world, tiny_models, tmp_path):
    out = tmp_path / "ambience"
    summary = run_sonify(validate_config(tree_of(world, tiny_models, "ambience", out)))
    assert summary["samples"] == 3 and summary["mapped_concepts_searched"] == IMAGES
    db = manifest(out)
    assert db.execute("SELECT DISTINCT vlm FROM m").fetchall() == [("given",)]
    sources = db.execute(
        "SELECT key, list(c.source ORDER BY c.source DESC), list(c.text ORDER BY c.source DESC) FROM c "
        "GROUP BY key ORDER BY key"
    ).fetchall()
    assert sources == [(f"img{i}__given", ["text", "mapper"], ["wind in trees", None]) for i in (0, 1, 3)]
    # The two clips of a sample differ: a mapped concept is chosen with the sample's others.
    distinct = "len(list_distinct(list_transform(concepts, lambda x: x.clip_id)))"
    assert db.execute(f"SELECT count(*) FROM m WHERE {distinct} != 2").fetchone()[0] == 0
    # img2 has no text concept: its scene is dropped, and the ambience does not rescue it.
    assert db.execute(
        f"SELECT error_kind FROM read_parquet('{out}/manifest/rejected-*.parquet') WHERE image_id = 'img2'"
    ).fetchall() == [("no_concepts",)]


def test_a_mapper_for_another_clap_is_refused_before_any_work(world, tiny_models, tmp_path):
    config = validate_config(tree_of(world, tiny_models, "scene", tmp_path / "unused"))
    other = tmp_path / "other.safetensors"
    write_mapper(
        str(other), clip_identity(config.models.clip), {**clap_identity(config.models.clap), "content": "other"}
    )
    out = tmp_path / "refused"
    with pytest.raises(SonifyError, match="maps into the space of CLAP"):
        run_sonify(validate_config(tree_of(world, tiny_models, "scene", out, other)))
    assert not out.exists()

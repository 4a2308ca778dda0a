"""Sonify against an approximate (HNSW) index, through Ray: every chunk is searched at the one
setting chosen on the run's own concept texts, each chunk measures the recall of its search on a
sample of its texts, the summary reports both, and a chunk searched again finds the same matches."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.config import validate_config
from pipelines.pool.run import run_pool
from pipelines.sonify import run_sonify
from tests.helpers import noise, tone, write_audio

IMAGES = 12
PER_CHUNK = 4


@pytest.fixture(scope="module")
def run(tiny_models, ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("approximate")
    for i in range(6):
        write_audio(
            root / "audio" / f"tone-{i}.wav",
            tone(12.0, 16000, 150.0 + 170 * i, 0.3) + noise(12.0, 16000, 0.02, i),
            16000,
        )
    (root / "images").mkdir()
    lines = []
    for i in range(IMAGES):
        Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(root / "images" / f"img-{i:02d}.png")
        concepts = [{"label": "x", "text": f"sound {j} of image {i}"} for j in range(3)]
        lines.append(json.dumps({"image_id": f"img-{i:02d}", "concepts": concepts}))
    (root / "concepts.jsonl").write_text("\n".join(lines) + "\n")
    config = validate_config(
        {
            "seed": 3,
            "pool": {
                "dir": str(root / "pool"),
                "sources": [str(root / "audio" / "*.wav")],
                "sample_rate": 16000,
                "index": {"kind": "hnsw"},
            },
            "models": {
                "clap": {"backend": "transformers", "model": tiny_models["clap_transformers"], "batch_size": 4},
                "vlm": [
                    {"name": "given", "backend": "provided", "path": str(root / "concepts.jsonl"), "batch_size": 4}
                ],
            },
            "sonify": {
                "images": [str(root / "images" / "*.png")],
                "out": str(root / "out"),
                "min_side": 16,
                "images_per_chunk": PER_CHUNK,
            },
            "retrieval": {
                "search_k": 8,
                "k": 4,
                "min_cosine": -1.0,
                "calibration_queries": 10,
                "recall_sample": 5,
                "recall_every": 2,
            },
        }
    )
    run_pool(config)
    return config, root, run_sonify(config)


def test_every_chunk_is_searched_at_the_calibrated_setting_and_the_recall_is_summed_up(run):
    config, root, summary = run
    chunks = IMAGES // PER_CHUNK
    stats = [json.loads((root / "out" / "matches" / f"{c:06d}.json").read_text()) for c in range(chunks)]
    assert [{s["setting"] for s in stats}] == [set(summary["search"]["settings"])] and len(
        summary["search"]["settings"]
    ) == 1
    assert all(s["texts"] == 3 * PER_CHUNK for s in stats)
    # Chunks 0 and 2 (numbers that are multiples of retrieval.recall_every) measure their recall.
    assert [s["recall_queries"] for s in stats] == [5, 0, 5] and stats[1]["recall"] is None
    assert all(0.0 <= s["recall"] <= 1.0 for s in stats[::2])
    # The calibration texts are the first ten texts of the first chunks, whatever chunk an actor holds.
    assert {s["calibration_queries"] for s in stats} == {10}
    search = summary["search"]
    assert search["exact"] is False and search["index_kind"] == "hnsw" and search["recall_queries"] == 10
    assert search["recall"] == pytest.approx((stats[0]["recall"] + stats[2]["recall"]) / 2)
    # recall@10 is measured on the 8 neighbours a text gets (retrieval.search_k).
    assert search["recall_k"] == 8 and search["calibration_recall"] >= config.retrieval.target_recall
    assert summary["concept_texts_searched"] == 3 * IMAGES and summary["samples"] == IMAGES


def test_a_chunk_searched_again_finds_the_same_matches(run):
    config, root, summary = run
    matches = root / "out" / "matches" / "000001.parquet"
    before = pq.read_table(matches).to_pylist()
    for stale in (matches, matches.with_suffix(".json"), root / "out" / "plans" / "chunk-000001.json"):
        stale.unlink()
    again = run_sonify(config)
    assert pq.read_table(matches).to_pylist() == before
    assert {k: v for k, v in again.items() if k not in ("seconds", "wall_seconds")} == {
        k: v for k, v in summary.items() if k not in ("seconds", "wall_seconds")
    }

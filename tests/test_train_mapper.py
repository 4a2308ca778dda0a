"""`run_pipeline.py train-mapper` end to end on tiny models and a tiny WebDataset shard, and the
checks that refuse a run before any pair is embedded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.config import ConfigError, validate_config
from pipelines.mapper import check_pool_clap, train_mapper
from schemas.layout import PoolLayout
from stages.embed.clap import clap_identity
from stages.embed.clip_image import clip_identity
from stages.embed.mapper import MapperError, load_mapper, validation_mask
from stages.io.tars import tar_bytes
from tests.conftest import REPO
from tests.test_clip_pairs import flac, jpeg


def config_tree(tmp_path, tiny_models, **mapper) -> dict:
    return {
        "seed": 7,
        "pool": {"dir": str(tmp_path / "pool")},
        "ray": {"num_cpus": 2},
        "models": {
            # Half a CPU per model actor leaves one of the two for the pair readers.
            "clap": {"model": tiny_models["clap_transformers"], "batch_size": 4, "num_cpus": 0.5},
            "clip": {"model": tiny_models["clip"], "batch_size": 4, "num_cpus": 0.5},
        },
        "mapper": {
            "pairs": [str(tmp_path / "shards" / "*.tar")],
            "checkpoint": str(tmp_path / "mapper" / "clip-to-clap.safetensors"),
            "hidden_dim": 32,
            "blocks": 1,
            "epochs": 2,
            "batch_size": 8,
            "validation_fraction": 0.3,
            "pairs_per_block": 4,
            **mapper,
        },
    }


def test_a_pool_built_with_another_clap_is_refused_before_any_pair_is_read(tmp_path, tiny_models):
    config = validate_config(config_tree(tmp_path, tiny_models))
    clap = clap_identity(config.models.clap)
    (tmp_path / "pool").mkdir()
    pool_json = PoolLayout(str(tmp_path / "pool")).pool_meta()
    with open(pool_json, "w") as handle:
        json.dump({"format": PoolLayout.FORMAT, "clap": {**clap, "content": "another checkpoint"}}, handle)
    with pytest.raises(MapperError, match="was built with CLAP .*set models.clap to the pool's CLAP"):
        check_pool_clap(config, clap)
    # mapper.pairs matches no file: were the pool checked after listing pairs, this would be the error.
    with pytest.raises(MapperError, match="was built with CLAP"):
        train_mapper(config)
    with open(pool_json, "w") as handle:
        json.dump({"format": PoolLayout.FORMAT, "clap": {**clap, "model": "renamed"}}, handle)
    check_pool_clap(config, clap)
    with pytest.raises(MapperError, match=r"mapper.pairs: .*\*.tar matched no file"):
        train_mapper(config)


def test_train_mapper_needs_pairs_a_checkpoint_and_both_models(tmp_path, tiny_models):
    with pytest.raises(ConfigError, match="mapper.pairs: required by `train-mapper`"):
        train_mapper(validate_config(config_tree(tmp_path, tiny_models, pairs=[])))
    from pipelines.config import check_command_needs

    tree = config_tree(tmp_path, tiny_models)
    del tree["models"]["clip"]
    with pytest.raises(ConfigError, match="models.clip: required by `train-mapper`"):
        check_command_needs(validate_config(tree), "train-mapper")


def train_mapper_process(config_path, *overrides: str) -> str:
    """Runs `run_pipeline.py train-mapper` as a user does, with a Ray of its own; its output."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="smt", dir="/tmp")  # short: Ray's socket paths live under it
    command = [sys.executable, str(REPO / "run_pipeline.py"), "train-mapper", "--config", str(config_path)]
    run = subprocess.run([*command, *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stdout


@pytest.mark.slow
def test_train_mapper_end_to_end(tmp_path, tiny_models):
    shards = tmp_path / "shards"
    shards.mkdir()
    keys = []
    for shard in range(2):
        samples = [
            (f"{shard}{i:05d}", {"jpg": jpeg(10 * shard + i), "flac": flac(i), "json": b"{}"}) for i in range(10)
        ]
        keys += [key for key, _ in samples]
        if shard == 1:
            samples.append(("100099", {"jpg": jpeg(99), "json": b"{}"}))
        (shards / f"{shard:06d}.tar").write_bytes(tar_bytes(samples))
    tree = config_tree(tmp_path, tiny_models)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(tree))
    first = train_mapper_process(config_path)
    assert "least_squares" in first and "pairs: 20 embedded, 1 failed" in first
    # The same pairs, block and batch sizes and seed train the same weights, whatever order Ray
    # finishes the blocks in. (CLIP and CLAP vectors change in their last bits with the batch a pair
    # is embedded in, so other block or batch sizes give other weights.)
    again = tmp_path / "again" / "mapper.safetensors"
    train_mapper_process(config_path, f"mapper.checkpoint={again}")
    assert again.read_bytes() == (tmp_path / "mapper" / "clip-to-clap.safetensors").read_bytes()
    config = validate_config(tree)
    model, meta = load_mapper(tree["mapper"]["checkpoint"], clap_identity(config.models.clap))
    assert meta["clip"] == clip_identity(config.models.clip)
    assert meta["architecture"] == {"kind": "residual_mlp", "in_dim": 64, "out_dim": 512, "hidden_dim": 32, "blocks": 1}
    assert meta["training"]["seed"] == 7 and meta["training"]["epochs"] == 2
    held_out = int(validation_mask(keys, 0.3).sum())
    assert meta["metrics"]["validation_pairs"] == held_out and meta["metrics"]["train_pairs"] == 20 - held_out
    for method in ("mapper", "least_squares", "chance"):
        assert set(meta["metrics"][method]) == {"r1", "r10"}
    failed = pq.read_table(tmp_path / "mapper" / "clip-to-clap.failed.parquet").to_pylist()
    assert failed == [
        {
            "key": "100099",
            "source": str(shards / "000001.tar"),
            "error": f"{shards / '000001.tar'}#100099: no audio member (flac/wav/mp3/ogg)",
        }
    ]

"""The CLIP -> CLAP mapper on planted pairs (no model): image and audio vectors related by a fixed
random map plus noise, so the right audio vector of every held-out image is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.embed.clap import normalize_rows
from stages.embed.mapper import (
    MapperError,
    TrainingSettings,
    format_metrics,
    load_mapper,
    map_vectors,
    mapper_meta,
    new_mapper,
    recall_at,
    save_mapper,
    split_and_train,
    train,
    validation_mask,
)

SETTINGS = TrainingSettings(
    hidden_dim=128,
    blocks=1,
    epochs=30,
    batch_size=128,
    learning_rate=2e-3,
    weight_decay=1e-4,
    contrastive_weight=1.0,
    temperature=0.05,
    seed=3,
)
CLAP = {"backend": "transformers", "model": "clap-a", "amodel": None, "dim": 24, "content": "aaa"}
CLIP = {"backend": "transformers", "model": "clip-a", "dim": 32, "content": "ccc"}


def planted_pairs(n: int = 1500, clip_dim: int = 32, clap_dim: int = 24, noise: float = 1.5, seed: int = 0):
    """Keys, image vectors, and audio vectors = normalize(tanh(image @ M) + noise): a fixed unknown map."""
    rng = np.random.default_rng(seed)
    images = normalize_rows(rng.normal(size=(n, clip_dim)))
    mixing = rng.normal(size=(clip_dim, clap_dim)) / np.sqrt(clip_dim) * 2.0
    audio = normalize_rows(np.tanh(images @ mixing) + noise * rng.normal(size=(n, clap_dim)) / np.sqrt(clap_dim))
    return [f"pair-{i:05d}" for i in range(n)], images, audio


def test_the_split_is_a_function_of_the_key_alone():
    keys = [f"shard-{i // 100}/{i}" for i in range(5000)]
    held = validation_mask(keys, 0.1)
    assert 0.08 < held.mean() < 0.12
    order = np.random.default_rng(1).permutation(len(keys))
    assert np.array_equal(validation_mask([keys[i] for i in order], 0.1), held[order])


def test_the_mapper_finds_planted_pairs_where_a_random_map_is_at_chance():
    keys, images, audio = planted_pairs()
    model, metrics = split_and_train(keys, images, audio, SETTINGS, validation_fraction=0.15)
    n = metrics["validation_pairs"]
    assert n == int(validation_mask(keys, 0.15).sum()) and n > 150
    assert metrics["mapper"]["r10"] >= 0.9
    assert metrics["chance"]["r10"] == pytest.approx(10 / n)
    # An untrained mapper of the same form is a random map: chance level, far below the trained one.
    held = validation_mask(keys, 0.15)
    torch.manual_seed(11)
    random_map = new_mapper(images.shape[1], audio.shape[1], SETTINGS.hidden_dim, SETTINGS.blocks).eval()
    at_random = recall_at(map_vectors(random_map, images[held]), audio[held])
    assert at_random["r10"] < 3 * 10 / n
    assert metrics["raw_cosine"] is None  # 32-d images, 24-d audio
    table = format_metrics(metrics)
    assert "mapper" in table and "least_squares" in table and f"{n} validation pairs" in table


def test_training_is_deterministic_for_a_seed():
    _, images, audio = planted_pairs(n=300)
    settings = TrainingSettings(**{**SETTINGS.__dict__, "epochs": 3})
    before = torch.random.get_rng_state()
    first, second = train(images, audio, settings), train(images, audio, settings)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    other = train(images, audio, TrainingSettings(**{**settings.__dict__, "seed": settings.seed + 1}))
    assert not torch.equal(other.input.weight, first.input.weight)


def test_recall_counts_ties_against_the_right_answer():
    targets = np.eye(4, dtype=np.float32)
    queries = targets.copy()
    queries[2] = targets[2] + targets[3]  # ties between its own target and target 3
    assert recall_at(queries, targets, ks=(1, 2)) == {"r1": 0.75, "r2": 1.0}


def test_a_checkpoint_keeps_its_weights_and_meta_and_refuses_another_clap(tmp_path):
    _, images, audio = planted_pairs(n=200)
    model = train(images, audio, TrainingSettings(**{**SETTINGS.__dict__, "epochs": 1}))
    metrics = {"validation_pairs": 1, "train_pairs": 2}
    meta = mapper_meta(SETTINGS, model, CLIP, CLAP, {"read": 200, "failed": 0}, metrics)
    url = str(tmp_path / "mapper.safetensors")
    save_mapper(url, model, meta)
    loaded, found = load_mapper(url, CLAP, CLIP)
    assert found == meta and found["format"] == 1 and found["architecture"]["in_dim"] == 32
    assert np.array_equal(map_vectors(loaded, images), map_vectors(model, images))
    # The same checkpoint content under another folder name is the same CLAP.
    load_mapper(url, {**CLAP, "model": "renamed"})
    with pytest.raises(MapperError, match=f"{url} maps into the space of CLAP.*train a mapper with the pool's CLAP"):
        load_mapper(url, {**CLAP, "content": "bbb"})
    with pytest.raises(MapperError, match="was trained on CLIP"):
        load_mapper(url, CLAP, {**CLIP, "content": "ddd"})
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(MapperError, match="junk.safetensors: not a safetensors file"):
        load_mapper(str(tmp_path / "junk.safetensors"), CLAP)


def test_too_few_pairs_is_a_clear_error():
    keys, images, audio = planted_pairs(n=3)
    with pytest.raises(MapperError, match="3 pairs give"):
        split_and_train(keys, images, audio, SETTINGS, validation_fraction=0.01)

"""Both CLAP backends, loaded through their real loading code from tiny local checkpoints."""

import numpy as np
import pytest

from schemas.config import ClapConfig
from stages.embed.clap import clap_identity, load_clap
from tests.helpers import noise, tone


def configs(models):
    return {
        "transformers": ClapConfig(backend="transformers", model=models["clap_transformers"]),
        "laion_clap": ClapConfig(
            backend="laion_clap",
            model=models["clap_laion_checkpoint"],
            text_backbones_dir=models["clap_laion_text_backbones"],
        ),
    }


@pytest.fixture(scope="module", params=["transformers", "laion_clap"])
def clap(request, tiny_models):
    config = configs(tiny_models)[request.param]
    return config, load_clap(config)


def test_audio_embeddings_are_unit_512d_deterministic_and_input_dependent(clap):
    config, model = clap
    clips = [noise(5.0, 48000, 0.1, seed=1), tone(5.0, 48000, 440.0), tone(5.0, 48000, 3000.0, 0.05)]
    embedded = model.embed_audio(clips)
    assert embedded.shape == (3, 512) and embedded.dtype == np.float32
    assert np.allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)
    again = model.embed_audio(clips[::-1])[::-1]
    assert np.allclose(embedded, again, atol=1e-4), "embedding must not depend on batch order"
    assert not np.allclose(embedded[0], embedded[1], atol=1e-3)


def test_text_embeddings(clap):
    _, model = clap
    texts = ["the sound of a dog barking", "rain falling on a tin roof", "the sound of a dog barking"]
    embedded = model.embed_text(texts)
    assert embedded.shape == (3, 512)
    assert np.allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)
    assert np.allclose(embedded[0], embedded[2], atol=1e-5)
    assert not np.allclose(embedded[0], embedded[1], atol=1e-3)


def test_identity_is_read_without_loading_weights(tiny_models):
    for backend, config in configs(tiny_models).items():
        identity = clap_identity(config)
        assert identity["backend"] == backend
        assert identity["dim"] == 512


def test_missing_laion_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clap(ClapConfig(backend="laion_clap", model=str(tmp_path / "nope.pt")))


@pytest.mark.parametrize("fusion", [False, True])
def test_a_clip_embeds_the_same_in_any_batch_and_random_state(tmp_path, fusion):
    from demo.tiny_models import build_transformers_clap

    folder = build_transformers_clap(tmp_path / "out", tmp_path / "scratch", fusion=fusion)
    model = load_clap(ClapConfig(backend="transformers", model=str(folder)))
    clip = noise(5.0, 48000, 0.1, seed=4)
    others = [tone(5.0, 48000, 220.0 * (i + 1), 0.2) for i in range(5)]
    alone = model.embed_audio([clip])[0]
    for seed in range(6):
        np.random.seed(seed)
        batch = others[:seed] + [clip] + others[seed:]
        assert np.allclose(model.embed_audio(batch)[seed], alone, atol=1e-5), (fusion, seed)
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    model.embed_audio(others)
    assert np.random.random() == expected, "embedding must leave numpy's global random state as it found it"


def test_identity_tells_checkpoints_apart_by_content_not_folder_name(tiny_models, tmp_path, monkeypatch):
    import json
    import shutil

    from pipelines.config import validate_config
    from pipelines.pool.store import PoolMismatch, PoolStore
    from schemas.layout import PoolLayout
    from stages.io import storage

    monkeypatch.setenv("SONIFY_MODEL_CACHE", str(tmp_path / "cache"))
    original = tiny_models["clap_transformers"]
    first, second, renamed = tmp_path / "a" / "clap", tmp_path / "b" / "clap", tmp_path / "c" / "other-name"
    for folder in (first, second, renamed):
        shutil.copytree(original, folder)
    # Another checkpoint of the same architecture and width: one weight byte differs.
    weights = second / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))

    def identity(folder) -> dict:
        return clap_identity(ClapConfig(backend="transformers", model=str(folder)))

    assert identity(first)["model"] == identity(second)["model"] == "clap"
    assert identity(first)["content"] != identity(second)["content"]
    assert identity(first)["content"] == identity(renamed)["content"]

    pool = tmp_path / "pool"
    pool.mkdir()
    config = validate_config({"pool": {"dir": str(pool)}, "models": {"clap": {"model": str(first)}}})
    recorded = PoolStore(PoolLayout(str(pool))).check_compatible(identity(first), config.pool)
    (pool / "pool.json").write_text(json.dumps(recorded))
    PoolStore(PoolLayout(str(pool))).check_compatible(identity(renamed), config.pool)
    with pytest.raises(PoolMismatch, match="built with other settings \\(clap: "):
        PoolStore(PoolLayout(str(pool))).check_compatible(identity(second), config.pool)
    # A pool recorded before identities held the content is compared as it was then.
    legacy = {k: v for k, v in recorded["clap"].items() if k != "content"}
    (pool / "pool.json").write_text(json.dumps({**recorded, "clap": legacy}))
    PoolStore(PoolLayout(str(pool))).check_compatible(identity(second), config.pool)

    # Each file is hashed once, and again only when its size or mtime changes.
    hashed = []
    monkeypatch.setattr(storage, "sha256_of", lambda url: hashed.append(url) or "0" * 64)
    identity(first)
    assert hashed == []
    (first / "config.json").write_text((first / "config.json").read_text() + "\n")
    identity(first)
    assert [u.rsplit("/", 1)[-1] for u in hashed] == ["config.json"]

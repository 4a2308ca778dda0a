"""The image side of the mapper: the tiny CLIP loads through the code real checkpoints use, pairs
are read from WebDataset tars and Parquet files a block at a time with every bad pair kept as an
error naming its file, and the CLIP and CLAP pair stages embed them (called directly, no Ray)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from schemas.config import ClapConfig
from schemas.mapper import PAIRS
from schemas.mapper_config import ClipConfig, MapperConfig
from stages.audio.packs import encode_flac, quantize_pcm16
from stages.audio.standardize import resample
from stages.embed.clap import load_clap
from stages.embed.clip_image import clip_identity, load_clip
from stages.embed.embed_pairs_stage import EmbedPairAudio, EmbedPairImages, rows_of
from stages.io.pairs import PairSourceError, block_count, read_block
from stages.io.read_pairs_stage import ReadPairs
from stages.io.tars import tar_bytes
from tests.helpers import noise, tone


def jpeg(seed: int, size=(48, 40)) -> bytes:
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def flac(seed: int, seconds: float = 2.0, rate: int = 16000) -> bytes:
    audio = noise(seconds, rate, 0.05, seed) + tone(seconds, rate, 200.0 + 50 * seed, 0.2)
    return encode_flac(quantize_pcm16(audio), rate)


@pytest.fixture(scope="module")
def clip_model(tiny_models):
    return ClipConfig(model=tiny_models["clip"], batch_size=2)


def test_the_tiny_clip_loads_like_a_real_checkpoint_and_embeds(clip_model):
    model = load_clip(clip_model)
    assert type(model.processor).__name__ == "CLIPProcessor"
    vectors = model.embed_images([Image.open(io.BytesIO(jpeg(i))).convert("RGB") for i in range(3)])
    assert vectors.shape == (3, 64) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    identity = clip_identity(clip_model)
    assert identity["dim"] == 64 and identity["model"] == "clip" and len(identity["content"]) == 64


def test_tar_pairs_are_read_in_blocks_and_a_sample_without_audio_is_an_error(tmp_path):
    shard = tmp_path / "000000.tar"
    samples = [(f"{i:06d}", {"jpg": jpeg(i), "flac": flac(i)}) for i in range(4)]
    samples.append(("000004", {"jpg": jpeg(4), "json": b"{}"}))
    shard.write_bytes(tar_bytes(samples))
    assert block_count(str(shard), 2, "image", "audio", None) == 3
    pairs = [p for block in range(3) for p in read_block(str(shard), block, 2, "image", "audio", None)]
    assert [p.key for p in pairs] == [f"{i:06d}" for i in range(5)]
    assert pairs[1].image == jpeg(1) and pairs[1].audio == flac(1) and pairs[1].error is None
    assert pairs[4].audio is None and pairs[4].error == f"{shard}#000004: no audio member (flac/wav/mp3/ogg)"


def test_parquet_pairs_read_struct_columns_by_row_group_and_keep_null_bytes_as_errors(tmp_path):
    path = tmp_path / "pairs.parquet"
    rows = 5
    images = [{"bytes": jpeg(i), "path": f"{i}.jpg"} for i in range(rows)]
    audio = [flac(i) for i in range(rows)]
    audio[3] = None
    table = pa.table({"name": [f"n{i}" for i in range(rows)], "picture": images, "sound": audio})
    pq.write_table(table, path, row_group_size=2)
    assert block_count(str(path), 3, "picture", "sound", "name") == 2
    pairs = read_block(str(path), 1, 3, "picture", "sound", "name")
    assert [p.key for p in pairs] == ["n3", "n4"]
    assert pairs[0].error == f"{path}#3: empty sound" and pairs[1].image == jpeg(4) and pairs[1].audio == flac(4)
    unnamed = read_block(str(path), 0, 3, "picture", "sound", None)
    assert [p.key for p in unnamed] == [f"{path}#{i}" for i in range(3)]
    with pytest.raises(PairSourceError, match=r"no column \['image'\]"):
        block_count(str(path), 3, "image", "sound", None)
    with pytest.raises(PairSourceError, match="'name' holds string, not file bytes"):
        block_count(str(path), 3, "name", "sound", None)
    with pytest.raises(PairSourceError, match=r"no column \['image'\]"):
        read_block(str(path), 0, 3, "image", "sound", None)
    with pytest.raises(PairSourceError, match="pairs.csv: pairs are read from .tar"):
        block_count(str(tmp_path / "pairs.csv"), 3, "image", "audio", None)


def test_the_pair_stages_embed_images_and_audio_and_keep_failures(tmp_path, tiny_models, clip_model):
    shard = tmp_path / "000000.tar"
    samples = [(f"{i:06d}", {"jpg": jpeg(i), "flac": flac(i)}) for i in range(3)]
    samples.append(("000003", {"jpg": b"not an image", "flac": flac(3)}))
    samples.append(("000004", {"jpg": jpeg(4), "flac": b"not audio"}))
    shard.write_bytes(tar_bytes(samples))
    mapper = MapperConfig(pairs=[str(shard)], pairs_per_block=8)
    read = ReadPairs(mapper).process_batch(pa.table({"url": [str(shard)], "block": [0]}))
    assert read.schema == PAIRS and read.num_rows == 5
    clap = ClapConfig(model=tiny_models["clap_transformers"], batch_size=2)
    images = EmbedPairImages(clip_model, 64)
    audio = EmbedPairAudio(clap, 64, 512)
    images.setup()
    audio.setup()
    out = audio.process_batch(images.process_batch(read))
    errors = out.column("error").to_pylist()
    assert errors[:3] == [None, None, None]
    assert errors[3].startswith("000003: image: not a decodable image")
    assert errors[4].startswith("000004: audio:")
    assert out.column("image_embedding").null_count == 2 and out.column("audio_embedding").null_count == 2
    # The vectors are the models' own embeddings of the decoded pair, whatever the stage's batching.
    decoded = [Image.open(io.BytesIO(jpeg(i))).convert("RGB") for i in range(3)]
    expected_images = load_clip(clip_model).embed_images(decoded)
    assert np.allclose(rows_of(out.column("image_embedding"), [0, 1, 2], 64), expected_images, atol=1e-5)
    pcm = [quantize_pcm16(noise(2.0, 16000, 0.05, i) + tone(2.0, 16000, 200.0 + 50 * i, 0.2)) for i in range(3)]
    clips = [resample(samples / 32768, 16000, 48000) for samples in pcm]
    expected_audio = load_clap(clap).embed_audio(clips)
    assert np.allclose(rows_of(out.column("audio_embedding"), [0, 1, 2], 512), expected_audio, atol=1e-4)

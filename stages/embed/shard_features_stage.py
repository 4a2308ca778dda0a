"""Feature stages of the shard writer (sonify.features): each embeds every sample of a mixed shard
with one model, loaded once per actor, and adds the vectors as the bytes of their KEY.<feature>.npy
members. A shard travels as one row, so its samples stay together whichever actor embeds them."""

from __future__ import annotations

import io
from typing import ClassVar

import numpy as np
import pyarrow as pa

from schemas import MIXED_SHARDS, make_table
from schemas.config import AstConfig, ClapConfig, MapperVlmConfig
from schemas.mapper_config import ClipConfig
from schemas.sonify import mixed_shards_schema
from stages.audio.decode import decode
from stages.audio.standardize import resample, to_mono
from stages.base import Resources, Stage
from stages.embed.ast_audio import load_ast
from stages.embed.clap import load_clap
from stages.embed.clip_image import load_clip
from stages.embed.mapper import load_mapper, map_vectors
from stages.images.decoding import decode_image


def npy_member(vector: np.ndarray) -> bytes:
    """A vector as a .npy file (float32, no pickle): what numpy.load, webdataset and datasets read."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vector, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def mix_at(flac: bytes, sample_rate: int) -> np.ndarray:
    """A sample's stored mix (its FLAC member), mono at `sample_rate`."""
    decoded = decode(flac)
    return resample(to_mono(decoded.audio), decoded.sample_rate, sample_rate)


class ShardFeature(Stage):
    """The shared part of the feature stages: which member a model reads, how many at a time, and the
    column it adds. Subclasses name the feature and load the model."""

    feature: ClassVar[str]
    member: ClassVar[str]  # "image" or "flac"
    required_columns: ClassVar[tuple[str, ...]] = tuple(MIXED_SHARDS.names)

    def __init__(self, model_config: ClapConfig | AstConfig | ClipConfig, dim: int, before: tuple[str, ...]) -> None:
        self.model_config = model_config
        self.dim = dim
        self.before = before
        self.model = None

    def resources(self) -> Resources:
        c = self.model_config
        return Resources(num_cpus=c.num_cpus, num_gpus=c.num_gpus, actors=c.concurrency, batch_size=1)

    def output_schema(self) -> pa.Schema:
        return mixed_shards_schema((*self.before, self.feature))

    def setup(self) -> None:
        self.model = self.load()
        if self.model.dim != self.dim:
            raise ValueError(
                f"{self.feature}: {self.model_config.model} gives {self.model.dim}-d embeddings, expected {self.dim}"
            )

    def load(self):
        raise NotImplementedError

    def model_input(self, payload: bytes):
        raise NotImplementedError

    def embed(self, inputs: list) -> np.ndarray:
        raise NotImplementedError

    def process_batch(self, batch: pa.Table) -> pa.Table:
        column = []
        for samples in batch.column("samples").to_pylist():
            payloads = [s[self.member] for s in samples]
            vectors = []
            step = self.model_config.batch_size
            for start in range(0, len(payloads), step):
                vectors.extend(self.embed([self.model_input(p) for p in payloads[start : start + step]]))
            column.append([npy_member(v) for v in vectors])
        columns = {name: batch.column(name) for name in self.output_schema().names if name != self.feature}
        return make_table(self.output_schema(), columns | {self.feature: column})


class ClapAudioFeature(ShardFeature):
    """The mix embedded by the pool's CLAP, unit length: comparable with the pool's clip embeddings."""

    name: ClassVar[str] = "feature_clap_audio"
    feature: ClassVar[str] = "clap_audio"
    member: ClassVar[str] = "flac"

    def load(self):
        return load_clap(self.model_config)

    def model_input(self, payload: bytes) -> np.ndarray:
        return mix_at(payload, self.model.sample_rate)

    def embed(self, inputs: list) -> np.ndarray:
        return self.model.embed_audio(inputs)


class AstFeature(ShardFeature):
    """The mix embedded by an Audio Spectrogram Transformer: its pooled output, unnormalized."""

    name: ClassVar[str] = "feature_ast"
    feature: ClassVar[str] = "ast"
    member: ClassVar[str] = "flac"

    def load(self):
        return load_ast(self.model_config)

    def model_input(self, payload: bytes) -> np.ndarray:
        return mix_at(payload, self.model.sample_rate)

    def embed(self, inputs: list) -> np.ndarray:
        return self.model.embed_audio(inputs)


class ClipImageFeature(ShardFeature):
    """The shard's image (as stored, after any downscaling) embedded by CLIP, unit length."""

    name: ClassVar[str] = "feature_clip_image"
    feature: ClassVar[str] = "clip_image"
    member: ClassVar[str] = "image"

    def load(self):
        return load_clip(self.model_config)

    def model_input(self, payload: bytes):
        return decode_image(payload).image

    def embed(self, inputs: list) -> np.ndarray:
        return self.model.embed_images(inputs)


FEATURE_STAGES: dict[str, type[ShardFeature]] = {
    stage.feature: stage for stage in (ClapAudioFeature, AstFeature, ClipImageFeature)
}


def image_audio_scores(mapped: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """Row-wise cosine of mapped image vectors and audio vectors ([n, d] each), float64."""
    mapped = np.asarray(mapped, dtype=np.float64)
    audio = np.asarray(audio, dtype=np.float64)
    norms = np.linalg.norm(mapped, axis=1) * np.linalg.norm(audio, axis=1)
    return np.einsum("ij,ij->i", mapped, audio) / np.maximum(norms, 1e-12)


class AlignImageAudio(Stage):
    """Each sample's image_audio score: its clip_image vector mapped into CLAP's audio space by a
    mapper (a models.vlm entry of backend mapper), against its clap_audio vector, the CLAP embedding
    of the stored mix. Reads the two feature columns and adds IMAGE_AUDIO_COLUMN; the mapper is
    loaded once per actor, and only for the pool's CLAP and models.clip's CLIP."""

    name: ClassVar[str] = "align_image_audio"

    def __init__(self, entry: MapperVlmConfig, features: tuple[str, ...], clap_identity: dict, clip_identity: dict):
        self.entry = entry
        self.features = features
        self.clap_identity = clap_identity
        self.clip_identity = clip_identity
        self.required_columns = (*MIXED_SHARDS.names, "clap_audio", "clip_image")
        self.mapper = None

    def resources(self) -> Resources:
        e = self.entry
        return Resources(num_cpus=e.num_cpus, num_gpus=e.num_gpus, actors=e.concurrency, batch_size=1)

    def output_schema(self) -> pa.Schema:
        return mixed_shards_schema(self.features, aligned=True)

    def setup(self) -> None:
        self.mapper, _ = load_mapper(self.entry.checkpoint, self.clap_identity, self.clip_identity)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        column = []
        for images, mixes in zip(batch.column("clip_image").to_pylist(), batch.column("clap_audio").to_pylist()):
            if not images:
                column.append([])
                continue
            mapped = map_vectors(self.mapper, np.stack([npy_vector(b) for b in images]))
            column.append(image_audio_scores(mapped, np.stack([npy_vector(b) for b in mixes])).tolist())
        columns = {name: batch.column(name) for name in self.output_schema().names if name != "image_audio"}
        return make_table(self.output_schema(), columns | {"image_audio": column})


def npy_vector(member: bytes) -> np.ndarray:
    return np.load(io.BytesIO(member), allow_pickle=False)

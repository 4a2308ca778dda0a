"""Embedding stages of mapper training: CLIP embeds each pair's image, then CLAP its audio.

Each stage loads its model once per actor and runs it `batch_size` items at a time. A pair whose
image or audio cannot be decoded keeps its key and gets an error naming its file; its vectors stay
null, and it is counted, not dropped."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
import pyarrow as pa

from schemas.base import make_table
from schemas.config import ClapConfig
from schemas.mapper import embedded_pairs_schema, image_embedded_pairs_schema
from schemas.mapper_config import ClipConfig
from stages.audio.decode import decode
from stages.audio.standardize import resample, to_mono
from stages.base import Resources, Stage
from stages.embed.clap import ClapBackend, load_clap
from stages.embed.clip_image import TransformersClip, load_clip
from stages.errors import BadInput
from stages.images.decoding import decode_image


def vector_column(vectors: np.ndarray, rows: list[int], total: int, dim: int) -> pa.Array:
    """A fixed-size list column of `total` rows: row rows[i] holds vectors[i], the others are null."""
    full = np.zeros((total, dim), dtype=np.float32)
    full[rows] = vectors
    valid = np.zeros(total, dtype=bool)
    valid[rows] = True
    return pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), dim, mask=pa.array(~valid))


def rows_of(column: pa.ChunkedArray, rows: list[int], dim: int) -> np.ndarray:
    """The vectors of `rows` (none of them null) of a fixed-size list column, as a [len(rows), dim] matrix."""
    if not rows:
        return np.zeros((0, dim), dtype=np.float32)
    taken = column.combine_chunks().take(pa.array(rows, type=pa.int64()))
    return np.asarray(taken.flatten(), dtype=np.float32).reshape(len(rows), dim)


def embed_decodable(
    payloads: list[bytes | None],
    errors: list[str | None],
    keys: list[str],
    what: str,
    decode_one: Callable[[bytes], object],
    embed: Callable[[list], np.ndarray],
    batch_size: int,
    dim: int,
) -> tuple[np.ndarray, list[int], list[str | None]]:
    """Decodes each error-free payload, embeds the decoded ones `batch_size` at a time; returns the
    vectors, the rows they belong to, and the errors with the undecodable ones added."""
    errors = list(errors)
    decoded, rows = [], []
    for i, payload in enumerate(payloads):
        if errors[i] is not None:
            continue
        try:
            decoded.append(decode_one(payload))
            rows.append(i)
        except BadInput as exc:
            errors[i] = f"{keys[i]}: {what}: {exc}"
    vectors = np.zeros((len(rows), dim), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        vectors[start : start + batch_size] = embed(decoded[start : start + batch_size])
    return vectors, rows, errors


class EmbedPairImages(Stage):
    name: ClassVar[str] = "embed_pair_images"
    required_columns: ClassVar[tuple[str, ...]] = ("key", "source", "image", "audio", "error")

    def __init__(self, clip: ClipConfig, clip_dim: int) -> None:
        self.clip_config = clip
        self.dim = clip_dim
        self.model: TransformersClip | None = None

    def resources(self) -> Resources:
        c = self.clip_config
        return Resources(num_cpus=c.num_cpus, num_gpus=c.num_gpus, actors=c.concurrency, batch_size=None)

    def output_schema(self) -> pa.Schema:
        return image_embedded_pairs_schema(self.dim)

    def setup(self) -> None:
        self.model = load_clip(self.clip_config)
        if self.model.dim != self.dim:
            raise ValueError(f"CLIP {self.clip_config.model} gives {self.model.dim}-d embeddings, expected {self.dim}")

    def process_batch(self, batch: pa.Table) -> pa.Table:
        keys = batch.column("key").to_pylist()
        vectors, rows, errors = embed_decodable(
            batch.column("image").to_pylist(),
            batch.column("error").to_pylist(),
            keys,
            "image",
            lambda data: decode_image(data).image,
            self.model.embed_images,
            self.clip_config.batch_size,
            self.dim,
        )
        return make_table(
            self.output_schema(),
            {
                "key": batch.column("key"),
                "source": batch.column("source"),
                "audio": batch.column("audio"),
                "image_embedding": vector_column(vectors, rows, batch.num_rows, self.dim),
                "error": errors,
            },
        )


class EmbedPairAudio(Stage):
    name: ClassVar[str] = "embed_pair_audio"
    required_columns: ClassVar[tuple[str, ...]] = ("key", "source", "audio", "image_embedding", "error")

    def __init__(self, clap: ClapConfig, clip_dim: int, clap_dim: int) -> None:
        self.clap_config = clap
        self.clip_dim = clip_dim
        self.dim = clap_dim
        self.model: ClapBackend | None = None

    def resources(self) -> Resources:
        c = self.clap_config
        return Resources(num_cpus=c.num_cpus, num_gpus=c.num_gpus, actors=c.concurrency, batch_size=None)

    def output_schema(self) -> pa.Schema:
        return embedded_pairs_schema(self.clip_dim, self.dim)

    def setup(self) -> None:
        self.model = load_clap(self.clap_config)
        if self.model.dim != self.dim:
            raise ValueError(f"CLAP {self.clap_config.model} gives {self.model.dim}-d embeddings, expected {self.dim}")

    def _clap_input(self, data: bytes) -> np.ndarray:
        decoded = decode(data)
        return resample(to_mono(decoded.audio), decoded.sample_rate, self.model.sample_rate)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        vectors, rows, errors = embed_decodable(
            batch.column("audio").to_pylist(),
            batch.column("error").to_pylist(),
            batch.column("key").to_pylist(),
            "audio",
            self._clap_input,
            self.model.embed_audio,
            self.clap_config.batch_size,
            self.dim,
        )
        # An audio failure voids the pair: its image vector is left null with its audio vector.
        paired = [i for i, e in enumerate(errors) if e is None]
        image_vectors = rows_of(batch.column("image_embedding"), paired, self.clip_dim)
        return make_table(
            self.output_schema(),
            {
                "key": batch.column("key"),
                "source": batch.column("source"),
                "image_embedding": vector_column(image_vectors, paired, batch.num_rows, self.clip_dim),
                "audio_embedding": vector_column(vectors, rows, batch.num_rows, self.dim),
                "error": errors,
            },
        )

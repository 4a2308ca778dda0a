"""CLAP audio embeddings of standardized clips.

The stage loads its CLAP once per actor, reads each clip's audio from the part file the standardize
stage wrote, and adds an L2-normalized embedding to every non-silent, error-free row. Rows of one
part arrive together and in order, so each row group of a part file is read once per actor that
sees it, and an actor holds one row group (stages.audio.part_writer bounds its size), however long
the part's sources are.

The actor takes a whole block (one part's clips) per call and runs the model `clap.batch_size`
clips at a time into one preallocated matrix. With one call per `batch_size` rows, the actor's
peak grew with the part's length (534 MiB more on a 2-hour source than on a 5-minute one, see
docs/reliability.md); with one call per part it stays flat.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from schemas import STANDARDIZED_CLIPS, embedded_clips_schema, make_table
from schemas.config import ClapConfig
from schemas.layout import PoolLayout
from stages.audio.packs import decode_flac
from stages.audio.standardize import resample
from stages.base import Resources, Stage
from stages.embed.clap import ClapBackend, load_clap
from stages.io import storage


def embeddable(silent: list[bool | None], errors: list[str | None]) -> list[int]:
    """Rows that get an embedding: neither silent nor failed."""
    return [i for i, (s, e) in enumerate(zip(silent, errors)) if e is None and s is False]


class EmbedAudio(Stage):
    name: ClassVar[str] = "embed_audio"
    required_columns: ClassVar[tuple[str, ...]] = ("clip_id", "part", "silent", "error", "sample_rate")

    def __init__(self, pool_dir: str, clap: ClapConfig, dim: int) -> None:
        self.pool_dir = pool_dir
        self.clap_config = clap
        self.dim = dim
        self.model: ClapBackend | None = None
        self._part_name: str | None = None
        self._part_groups: dict[str, tuple[int, int]] = {}  # clip_id -> row group, row in it
        self._group: int | None = None
        self._group_audio: list[bytes] = []

    def resources(self) -> Resources:
        c = self.clap_config
        return Resources(num_cpus=c.num_cpus, num_gpus=c.num_gpus, actors=c.concurrency, batch_size=None)

    def output_schema(self) -> pa.Schema:
        return embedded_clips_schema(self.dim)

    def setup(self) -> None:
        self.model = load_clap(self.clap_config)
        if self.model.dim != self.dim:
            raise ValueError(f"CLAP {self.clap_config.model} gives {self.model.dim}-d embeddings, expected {self.dim}")

    def _clip_audio(self, part: str, clip_id: str) -> bytes:
        url = PoolLayout(self.pool_dir).audio(part)
        if part != self._part_name:
            ids = storage.read_parquet(url, columns=["clip_id"]).column("clip_id").to_pylist()
            places = [(group, row) for group, rows in enumerate(storage.parquet_row_groups(url)) for row in range(rows)]
            self._part_name, self._part_groups, self._group = part, dict(zip(ids, places)), None
        group, row = self._part_groups[clip_id]
        if group != self._group:
            self._group_audio = []  # the previous row group goes before the next is read
            self._group_audio = storage.read_row_group(url, group, ["flac"]).column("flac").to_pylist()
            self._group = group
        return self._group_audio[row]

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = embeddable(batch.column("silent").to_pylist(), batch.column("error").to_pylist())
        clip_ids, parts = batch.column("clip_id").to_pylist(), batch.column("part").to_pylist()
        rates = batch.column("sample_rate").to_pylist()
        vectors = np.zeros((len(rows), self.dim), dtype=np.float32)
        step = self.clap_config.batch_size
        for start in range(0, len(rows), step):
            clips = []
            for i in rows[start : start + step]:
                audio, rate = decode_flac(self._clip_audio(parts[i], clip_ids[i]))
                if rate != rates[i]:
                    raise ValueError(f"clip {clip_ids[i]} is stored at {rate} Hz but its row says {rates[i]} Hz")
                clips.append(resample(audio, rate, self.model.sample_rate))
            vectors[start : start + len(clips)] = self.model.embed_audio(clips)
        return make_table(
            self.output_schema(),
            batch.select(STANDARDIZED_CLIPS.names).append_column(
                "embedding", self._embedding_column(batch, rows, vectors)
            ),
        )

    def _embedding_column(self, batch: pa.Table, rows: list[int], vectors: np.ndarray) -> pa.Array:
        """One fixed-size list column built from the matrix, null where a row got no embedding."""
        full = np.zeros((batch.num_rows, self.dim), dtype=np.float32)
        full[rows] = vectors
        valid = np.zeros(batch.num_rows, dtype=bool)
        valid[rows] = True
        return pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), self.dim, mask=pa.array(~valid))

"""PoolStore: the one way to read a pool folder (pool.dir), used by the pool run itself and by sonify,
render and report.

It lives in the pipelines layer, beside the pipeline that writes the pool, because only drivers read
a pool as a whole and no stage imports it. A stage reads just the pool file its work needs, at the
URL the layout gives (the search stage the index, the mixer its packs by the byte ranges of a plan),
and gets from the driver what the store computed (mix_clips.parquet), so stages stay below the
pipelines layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import GENERATED_SOUNDS, GENERATION, MIX_CLIPS, POOL_CLIPS, make_table
from schemas.config import PoolConfig
from schemas.errors import PipelineError
from schemas.layout import PoolLayout
from stages.audio.loudness import audible_at_rate, loudness_entry_at
from stages.embed.clap import same_clap
from stages.io import storage

# The credit columns of the pool table that a mix carries into the manifest (MIX_CLIPS has them too).
CLIP_CREDITS = ("license", "attribution", "source_url", "title")


class PoolMismatch(PipelineError):
    """The pool folder was built with settings, or by a version of the pipeline, this run cannot use."""


def pool_settings(identity: dict, pool: PoolConfig) -> dict:
    """What pool.json records for a pool built with this CLAP and these settings: what decides every
    clip, loudness and embedding it holds."""
    return {
        "format": PoolLayout.FORMAT,
        "clap": identity,
        "sample_rate": pool.sample_rate,
        "clip_seconds": pool.clip_seconds,
        "mix_sample_rates": sorted(pool.mix_sample_rates),
    }


def mixable(clips: pa.Table, rate: int, silence_lufs: float, max_band_loss_lu: float) -> pa.Table:
    """The MIX_CLIPS table of a pool table (columns clip_id, source_id, source_sha256, part, lufs, loudness_at_rates,
    generation and the credit columns): every clip audible at `rate`
    (stages.audio.loudness.audible_at_rate), with its loudness there, the byte range of its audio at
    that rate, whether it is generated and its credit, sorted by clip_id."""
    rows: dict[str, list] = {name: [] for name in MIX_CLIPS.names}
    names = ("clip_id", "source_id", "source_sha256", "part", "lufs", "loudness_at_rates", "generation", *CLIP_CREDITS)
    columns = [clips.column(c).to_pylist() for c in names]
    for clip_id, source_id, sha256, part, pool_lufs, at_rates, generation, *credit in zip(*columns):
        entry = loudness_entry_at(at_rates, rate)
        if audible_at_rate(pool_lufs, entry and entry["lufs"], silence_lufs, max_band_loss_lu):
            location = (entry["lufs"], part, entry["audio_offset"], entry["audio_bytes"])
            values = (clip_id, sha256 or source_id, *location, generation is not None, *credit)
            for name, value in zip(MIX_CLIPS.names, values):
                rows[name].append(value)
    return make_table(MIX_CLIPS, rows).sort_by([("clip_id", "ascending")])


@dataclass(frozen=True)
class PoolStore:
    """Reads of one pool folder. Nothing is cached: a store is cheap to make, and each read sees the
    files as they are now."""

    layout: PoolLayout

    @classmethod
    def at(cls, root: str) -> PoolStore:
        return cls(PoolLayout(root))

    @property
    def root(self) -> str:
        return self.layout.root

    # What the pool was built with

    def exists(self) -> bool:
        """Whether a pool run has started here (it writes pool.json first)."""
        return storage.exists(self.layout.pool_meta())

    def format_version(self) -> int | None:
        """The pool format pool.json records; None where it records none."""
        return self._recorded_meta().get("format")

    def meta(self) -> dict:
        """pool.json; a PoolMismatch if a version of the pipeline with another pool format wrote it."""
        found = self._recorded_meta()
        if found.get("format") != PoolLayout.FORMAT:
            raise PoolMismatch(
                f"pool {self.root} was written by another version of this pipeline "
                f"(pool format {found.get('format')}, this one writes {PoolLayout.FORMAT}); "
                "rebuild the pool into a new pool.dir"
            )
        return found

    def check_compatible(self, identity: dict, pool: PoolConfig) -> dict:
        """pool.json as a run with this CLAP identity and these settings has it (`pool_settings`); a
        PoolMismatch if the folder holds a pool built with other ones or in another format. A folder
        without a pool is compatible with any."""
        wanted = pool_settings(identity, pool)
        if self.exists():
            found = self.meta()
            differing = [k for k in wanted if not _same_setting(k, found.get(k), wanted[k])]
            if differing:
                detail = "; ".join(f"{k}: pool has {found.get(k)!r}, config has {wanted[k]!r}" for k in differing)
                raise PoolMismatch(f"pool {self.root} was built with other settings ({detail}); use a new pool.dir")
        return wanted

    def _recorded_meta(self) -> dict:
        return json.loads(storage.read_bytes(self.layout.pool_meta()))

    def summary(self) -> dict | None:
        """The last finished pool run's summary.json; None before one has finished."""
        return _json_or_none(self.layout.summary())

    # The clips

    def clip_files(self) -> list[str]:
        """The clips file of every finished part."""
        return storage.list_files(self.layout.clips_folder(), ".parquet")

    def clips(self, columns: list[str]) -> pa.Table:
        """These columns of the pool table, every finished part's rows (failed sources included)."""
        tables = [storage.read_parquet(url, columns=columns) for url in self.clip_files()]
        if not tables:
            return POOL_CLIPS.empty_table().select(columns)
        return pa.concat_tables(tables)

    def mixable_clips(
        self, rate: int, silence_lufs: float, max_band_loss_lu: float, allow_generated: bool = True
    ) -> tuple[pa.Table, int]:
        """The MIX_CLIPS table at `rate`: the indexed (error-free, non-silent) clips a mix at that rate
        may use; and how many indexed clips are not audible there."""
        columns = ["clip_id", "source_id", "source_sha256", "part", "lufs", "loudness_at_rates", "silent", "error"]
        columns.append("generation")
        table = self.clips([*columns, *CLIP_CREDITS])
        indexed = table.filter(pc.is_null(pc.field("error")) & pc.invert(pc.field("silent")))
        clips = mixable(indexed, rate, silence_lufs, max_band_loss_lu)
        inaudible = indexed.num_rows - clips.num_rows
        if not allow_generated:
            clips = clips.filter(pc.invert(pc.field("generated")))
        return clips, inaudible

    # Generated sounds

    def generated_sounds(self) -> pa.Table:
        """GENERATED_SOUNDS: every sound `run_pipeline.py generate` recorded, in file name order."""
        urls = storage.list_files(self.layout.generated_records_folder(), ".parquet")
        if not urls:
            return GENERATED_SOUNDS.empty_table()
        table = pa.concat_tables([storage.read_parquet(url).select(GENERATED_SOUNDS.names) for url in urls])
        return table.sort_by([("file", "ascending")])

    def generations(self) -> dict[str, dict]:
        """The URL of every generated sound -> how it was made (the fields of a GENERATION struct)."""
        names = [field.name for field in GENERATION]
        return {
            self.layout.generated_audio(row["file"]): {name: row[name] for name in names}
            for row in self.generated_sounds().to_pylist()
        }

    # Embeddings and the index

    def embedded_parts(self) -> dict[str, int]:
        """part -> rows of its embeddings file: what an index of the pool must cover."""
        return {
            storage.file_stem(url): storage.parquet_rows(url)
            for url in storage.list_files(self.layout.embeddings_folder(), ".parquet")
        }

    def embeddings(self, parts: list[str] | None = None) -> tuple[list[str], np.ndarray | None]:
        """The clip ids and float32 embeddings of these parts (all where None), in part name order;
        None for the vectors where there are none."""
        urls = storage.list_files(self.layout.embeddings_folder(), ".parquet")
        if parts is not None:
            wanted = set(parts)
            urls = [url for url in urls if storage.file_stem(url) in wanted]
        ids: list[str] = []
        blocks = []
        for url in urls:
            table = storage.read_parquet(url)
            if table.num_rows:
                ids.extend(table.column("clip_id").to_pylist())
                flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                blocks.append(flat.reshape(table.num_rows, -1).astype(np.float32))
        return ids, (np.concatenate(blocks) if blocks else None)

    def has_index(self) -> bool:
        """Whether an index file exists; a pool without a non-silent clip has none."""
        return storage.exists(self.layout.index_file())

    def index_meta(self) -> dict | None:
        """index.json (kind built, settings, size, the parts covered and their rows); None before
        the first index update."""
        return _json_or_none(self.layout.index_meta())

    def index_is_current(self) -> bool:
        """Whether the index covers exactly the embeddings on disk (a pool run stopped between its
        parts and its index update leaves it behind)."""
        meta = self.index_meta() or {}
        return meta.get("parts") == self.embedded_parts()


def _same_setting(name: str, recorded, wanted) -> bool:
    """Whether a pool.json setting matches: the CLAP by its checkpoint's content (same_clap)."""
    return same_clap(recorded or {}, wanted) if name == "clap" else recorded == wanted


def _json_or_none(url: str) -> dict | None:
    return json.loads(storage.read_bytes(url)) if storage.exists(url) else None

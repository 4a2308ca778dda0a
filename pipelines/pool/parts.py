"""The part files on disk: removing what an interrupted run left unfinished, pruning stale sources'
rows from their parts, and writing each part once all its rows are in.

A part's clips file is written last and marks it complete (schemas.layout.PoolLayout); its audio,
packs and embeddings files without one are an interrupted run's."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.pool.credits import SourceCredits
from schemas import POOL_CLIPS, embeddings_schema, make_table
from schemas.layout import PoolLayout
from stages.audio.packs import locate_in_pack, repack
from stages.io import storage


def remove_unfinished_parts(paths: PoolLayout, mix_rates: list[int]) -> list[str]:
    """Audio, pack or embedding files without a clips file are left by an interrupted run: delete them."""
    finished = {storage.file_stem(u) for u in storage.list_files(paths.clips_folder(), ".parquet")}
    files = [
        *storage.list_files(paths.audio_folder(), ".parquet"),
        *storage.list_files(paths.embeddings_folder(), ".parquet"),
    ]
    files += [url for rate in mix_rates for url in storage.list_files(paths.mix_audio_folder(rate), ".tar")]
    removed = []
    for url in files:
        if storage.file_stem(url) not in finished:
            storage.remove(url)
            removed.append(url)
    return removed


def prune_stale(paths: PoolLayout, stale: dict[str, set[str]], mix_rates: list[int]) -> int:
    """Remove stale sources' rows from their old parts. Audio, packs and embeddings are rewritten
    before the clips file, so an interruption leaves rows that the next run finds stale again. A
    pack's kept clips are found by member name: after such an interruption, the offsets in the old
    rows no longer match the rewritten pack."""
    touched = 0
    for part, uris in sorted(stale.items()):
        clips_url = paths.clips(part)
        clips = storage.read_parquet(clips_url)
        keep = pc.invert(pc.is_in(clips.column("source_uri"), value_set=pa.array(sorted(uris), pa.string())))
        kept = clips.filter(keep)
        touched += 1
        if kept.num_rows == 0:
            storage.remove(clips_url)
            storage.remove(paths.audio(part))
            storage.remove(paths.embeddings(part))
            for rate in mix_rates:
                storage.remove(paths.mix_audio(part, rate))
            continue
        ids = kept.column("clip_id")
        for url in (paths.audio(part), paths.embeddings(part)):
            if storage.exists(url):
                old = storage.read_parquet(url)
                storage.write_parquet(url, old.filter(pc.is_in(old.column("clip_id"), value_set=ids)))
        clip_ids = ids.to_pylist()
        packed = kept.filter(pc.is_null(kept.column("error"))).column("clip_id").to_pylist()
        at_rates = kept.column("loudness_at_rates").to_pylist()
        for rate in mix_rates:
            pack, ranges = repack(storage.read_bytes(paths.mix_audio(part, rate)), packed)
            storage.write_bytes(paths.mix_audio(part, rate), pack)
            locate_in_pack(clip_ids, at_rates, rate, ranges)
        located = POOL_CLIPS.field("loudness_at_rates")
        kept = kept.set_column(kept.schema.get_field_index(located.name), located, pa.array(at_rates, located.type))
        storage.write_parquet(clips_url, make_table(POOL_CLIPS, kept))
    return touched


class PartFiles:
    """Writes a part whose rows are all in: embeddings first, then the clips file that marks the
    part complete, with its sources' credits; and counts what the written parts hold."""

    def __init__(self, paths: PoolLayout, dim: int, credits: SourceCredits) -> None:
        self.paths = paths
        self.credits = credits
        self.embeddings_schema = embeddings_schema(dim)
        self.written_parts: list[str] = []
        self.clips = self.silent = self.embedded = self.variants = self.generated = 0
        self.errors: list[str] = []
        self.error_kinds: Counter[str] = Counter()

    def write(self, part: str, rows: pa.Table) -> int:
        embedded = rows.filter(pc.is_valid(rows.column("embedding")))
        storage.write_parquet(
            self.paths.embeddings(part),
            make_table(
                self.embeddings_schema,
                {"clip_id": embedded.column("clip_id"), "embedding": embedded.column("embedding")},
            ),
        )
        clips = self.credits.fill(rows.select(POOL_CLIPS.names))
        storage.write_parquet(self.paths.clips(part), make_table(POOL_CLIPS, clips))
        errors = [e for e in rows.column("error").to_pylist() if e]
        self.errors.extend(errors)
        self.error_kinds.update(k for k in rows.column("error_kind").to_pylist() if k)
        real = rows.filter(pc.is_null(rows.column("error")))
        self.clips += real.num_rows
        self.silent += int(pc.sum(real.column("silent")).as_py() or 0)
        self.variants += real.num_rows - real.column("variant").null_count
        self.generated += real.num_rows - real.column("generation").null_count
        self.embedded += embedded.num_rows
        self.written_parts.append(part)
        return real.num_rows

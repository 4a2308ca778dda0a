"""The pool pipeline: audio files -> standardized clips, loudness, CLAP embeddings, FAISS index.

pool.dir is laid out by schemas.layout.PoolLayout: per part a clips file (the pool table, written
last, so it marks the part complete), an audio file, a pack per mix rate and an embeddings file; the
index; the pool's settings, the last run's config and summary.

A part is a group of source files processed together. Re-running adds parts for new or changed
sources only; rows of a changed source are removed from their old part, and the index grows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import dump_config
from pipelines.grouped_writer import GroupedWriter
from pipelines.ray_runner import Runner
from schemas import POOL_CLIPS, POOL_INDEX_IDS, POOL_PARTS, embeddings_schema, make_table
from schemas.config import RunConfig
from schemas.errors import PipelineError
from schemas.layout import PoolLayout
from stages.audio.loudness import audible_clip_loudness
from stages.audio.packs import locate_in_pack, repack
from stages.audio.standardize_stage import Standardize
from stages.embed.clap import clap_identity
from stages.embed.embed_audio_stage import EmbedAudio
from stages.io import storage
from stages.io.sources import ParquetLayout, SourceFile, expand_audio_sources
from stages.search import faiss_index

log = logging.getLogger(__name__)

# 2: the clips table has error_kind (pool_clips v2). 3: a pack of the clips at each mix rate per part
# (audio/<rate>/<part>.tar), located by loudness_at_rates (pool_clips v3).
POOL_FORMAT = 3
MAX_REPORTED_ERRORS = 50


class PoolMismatch(PipelineError):
    """The pool folder was built with settings this run cannot extend."""


# ---------------------------------------------------------------------------------------------
# Planning: which sources to (re)process and which old rows they make stale


@dataclass
class PoolPlan:
    to_process: list[SourceFile]
    unchanged: int
    # old part -> source URIs whose rows in that part are stale
    stale: dict[str, set[str]] = field(default_factory=dict)


def plan_work(sources: list[SourceFile], existing: pa.Table, retry_errors: bool) -> PoolPlan:
    """Decide what a run does. `existing` has one row per stored clip (source_uri,
    source_fingerprint, error, part). A listed source is processed when it is new, when its
    fingerprint changed, or (with retry_errors) when its last attempt failed. Every stored row of a
    listed source whose fingerprint is not the current one, or that is being processed again, is stale."""
    stored: dict[str, list[tuple[str | None, str | None, str]]] = defaultdict(list)
    for uri, fingerprint, error, part in zip(
        existing.column("source_uri").to_pylist(),
        existing.column("source_fingerprint").to_pylist(),
        existing.column("error").to_pylist(),
        existing.column("part").to_pylist(),
    ):
        stored[uri].append((fingerprint, error, part))
    to_process, unchanged = [], 0
    stale: dict[str, set[str]] = defaultdict(set)
    # Rows stored under a container's own URL (its listing failed once) are stale once it lists rows.
    listed = {source.uri for source in sources}
    for container in {s.member.container for s in sources if s.member is not None} - listed:
        for _, _, part in stored.get(container, []):
            stale[part].add(container)
    for source in sources:
        rows = stored.get(source.uri, [])
        current = [r for r in rows if r[0] == source.fingerprint]
        failed = bool(current) and all(r[1] is not None for r in current)
        redo = not current or (retry_errors and failed)
        if redo:
            to_process.append(source)
        else:
            unchanged += 1
        for fingerprint, _, part in rows:
            if redo or fingerprint != source.fingerprint:
                stale[part].add(source.uri)
    return PoolPlan(to_process, unchanged, dict(stale))


def group_parts(sources: list[SourceFile], files_per_part: int) -> pa.Table:
    """Deterministic parts: sorted sources in groups, each named by a hash of its members. A
    container's rows or members stay in stored order, so a part reads neighbouring bytes."""
    ordered = sorted(sources, key=lambda s: s.order)
    names, uris, fingerprints, errors, error_kinds, members = [], [], [], [], [], []
    for start in range(0, len(ordered), files_per_part):
        group = ordered[start : start + files_per_part]
        digest = hashlib.sha1("\n".join(f"{s.uri}\t{s.fingerprint}" for s in group).encode()).hexdigest()
        names.append(f"part-{digest[:16]}")
        uris.append([s.uri for s in group])
        fingerprints.append([s.fingerprint for s in group])
        errors.append([s.error for s in group])
        error_kinds.append([s.error_kind for s in group])
        members.append([asdict(s.member) if s.member is not None else None for s in group])
    return make_table(
        POOL_PARTS,
        {
            "part": names,
            "uris": uris,
            "fingerprints": fingerprints,
            "errors": errors,
            "error_kinds": error_kinds,
            "members": members,
        },
    )


# ---------------------------------------------------------------------------------------------
# Reading and repairing what is on disk


def read_pool_meta(paths: PoolLayout) -> dict:
    """pool.json of an existing pool; a PoolMismatch if another version of the pipeline wrote it."""
    found = json.loads(storage.read_bytes(paths.pool_meta()))
    if found.get("format") != POOL_FORMAT:
        raise PoolMismatch(
            f"pool {paths.root} was written by another version of this pipeline (pool format {found.get('format')}, "
            f"this one writes {POOL_FORMAT}); rebuild the pool into a new pool.dir"
        )
    return found


def check_compatible(paths: PoolLayout, identity: dict, config: RunConfig) -> dict:
    """pool.json for this run; a PoolMismatch if the folder was built with other settings."""
    wanted = {
        "format": POOL_FORMAT,
        "clap": identity,
        "sample_rate": config.pool.sample_rate,
        "clip_seconds": config.pool.clip_seconds,
        "mix_sample_rates": sorted(config.pool.mix_sample_rates),
    }
    meta_url = paths.pool_meta()
    if storage.exists(meta_url):
        found = read_pool_meta(paths)
        differing = [k for k in wanted if found.get(k) != wanted[k]]
        if differing:
            detail = "; ".join(f"{k}: pool has {found.get(k)!r}, config has {wanted[k]!r}" for k in differing)
            raise PoolMismatch(f"pool {paths.root} was built with other settings ({detail}); use a new pool.dir")
    return wanted


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


PLAN_COLUMNS = ["source_uri", "source_fingerprint", "error", "part"]


def read_clips(paths: PoolLayout, columns: list[str]) -> pa.Table:
    tables = [storage.read_parquet(u, columns=columns) for u in storage.list_files(paths.clips_folder(), ".parquet")]
    if not tables:
        return POOL_CLIPS.empty_table().select(columns)
    return pa.concat_tables(tables)


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


# ---------------------------------------------------------------------------------------------
# Writing parts as they complete


class PartFiles:
    """Writes a part whose rows are all in: embeddings first, then the clips file that marks the
    part complete; and counts what the written parts hold."""

    def __init__(self, paths: PoolLayout, dim: int) -> None:
        self.paths = paths
        self.embeddings_schema = embeddings_schema(dim)
        self.written_parts: list[str] = []
        self.clips = self.silent = self.embedded = 0
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
        storage.write_parquet(self.paths.clips(part), make_table(POOL_CLIPS, rows.select(POOL_CLIPS.names)))
        errors = [e for e in rows.column("error").to_pylist() if e]
        self.errors.extend(errors)
        self.error_kinds.update(k for k in rows.column("error_kind").to_pylist() if k)
        real = rows.filter(pc.is_null(rows.column("error")))
        self.clips += real.num_rows
        self.silent += int(pc.sum(real.column("silent")).as_py() or 0)
        self.embedded += embedded.num_rows
        self.written_parts.append(part)
        return real.num_rows


# ---------------------------------------------------------------------------------------------
# The index


def read_embeddings(paths: PoolLayout, parts: list[str] | None = None) -> tuple[list[str], np.ndarray | None]:
    urls = storage.list_files(paths.embeddings_folder(), ".parquet")
    if parts is not None:
        wanted = set(parts)
        urls = [u for u in urls if storage.file_stem(u) in wanted]
    ids: list[str] = []
    blocks = []
    for url in urls:
        table = storage.read_parquet(url)
        if table.num_rows:
            ids.extend(table.column("clip_id").to_pylist())
            flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            blocks.append(flat.reshape(table.num_rows, -1).astype(np.float32))
    return ids, (np.concatenate(blocks) if blocks else None)


def embedded_parts(paths: PoolLayout) -> dict[str, int]:
    """part -> rows of its embeddings file: what an index of the pool must cover."""
    return {
        storage.file_stem(u): storage.parquet_rows(u) for u in storage.list_files(paths.embeddings_folder(), ".parquet")
    }


def update_index(paths: PoolLayout, config: RunConfig) -> dict:
    """Bring the index up to the embeddings on disk. index.json, written last, records the parts
    (and their rows) the index covers, so a run killed anywhere after writing parts leaves an index
    that the next run sees is behind. New parts are added in name order; a part that shrank or
    went away, other index settings, or an index file out of step with index.json (a write torn
    by a kill) mean a rebuild, and so does a pool that grew past pool.index.exact_below (kind auto).
    Recall is not measured here: it depends on the queries, and retrieval measures it on its own."""
    index_config = config.pool.index
    meta_url = paths.index_meta()
    previous = json.loads(storage.read_bytes(meta_url)) if storage.exists(meta_url) else None
    settings = index_config.model_dump(mode="json")
    covered = embedded_parts(paths)
    indexed = previous.get("parts") if previous is not None and previous.get("settings") == settings else None
    if indexed == covered:
        return {**previous, "action": "unchanged"}

    index = None
    same_kind = previous is not None and previous.get("kind") == faiss_index.index_kind(
        index_config, sum(covered.values())
    )
    if indexed and same_kind and previous["size"] > 0 and all(covered.get(p) == n for p, n in indexed.items()):
        if storage.exists(paths.index_file()):
            index = faiss_index.deserialize(storage.read_bytes(paths.index_file()))
            ids = storage.read_parquet(paths.index_ids()).column("clip_id").to_pylist()
            if not index.ntotal == len(ids) == previous["size"]:
                index = None
    if index is not None:
        new_ids, new_vectors = read_embeddings(paths, sorted(set(covered) - set(indexed)))
        if new_vectors is not None:
            faiss_index.add_to_index(index, new_vectors)
            ids.extend(new_ids)
        action = "grown"
    else:
        ids, vectors = read_embeddings(paths)
        index = faiss_index.build_index(vectors, index_config, config.seed) if vectors is not None else None
        action = "built"

    if index is not None:
        storage.write_bytes(paths.index_file(), faiss_index.serialize(index))
    else:
        storage.remove(paths.index_file())
    storage.write_parquet(paths.index_ids(), make_table(POOL_INDEX_IDS, {"row": list(range(len(ids))), "clip_id": ids}))
    meta = {
        "kind": faiss_index.index_kind(index_config, len(ids)),
        "settings": settings,
        "size": len(ids),
        "parts": covered,
    }
    storage.write_text(meta_url, json.dumps(meta, indent=2) + "\n")
    return {**meta, "action": action}


# ---------------------------------------------------------------------------------------------
# The run


def pool_totals(paths: PoolLayout, config: RunConfig) -> dict:
    table = read_clips(paths, ["clip_id", "source_uri", "lufs", "loudness_at_rates", "silent", "error", "error_kind"])
    ok = table.filter(pc.is_null(table.column("error")))
    indexed = ok.filter(pc.invert(ok.column("silent")))
    silence, max_loss = config.pool.silence_lufs, config.pool.max_band_loss_lu
    kinds = Counter(k for k in table.column("error_kind").to_pylist() if k)
    return {
        "files": len(set(table.column("source_uri").to_pylist())),
        "clips": ok.num_rows,
        "silent_clips": int(pc.sum(ok.column("silent")).as_py() or 0),
        "error_rows": table.num_rows - ok.num_rows,
        "errors_by_kind": dict(sorted(kinds.items())),
        # Indexed clips that no mix at that rate may use (see loudness.audible_at_rate).
        "inaudible_at_mix_rates": {
            str(rate): indexed.num_rows - len(audible_clip_loudness(indexed, rate, silence, max_loss))
            for rate in sorted(config.pool.mix_sample_rates)
        },
    }


def run_pool(config: RunConfig) -> dict:
    started = time.monotonic()
    paths = PoolLayout(config.pool.dir.rstrip("/"))
    identity = clap_identity(config.models.clap)
    meta = check_compatible(paths, identity, config)

    standardize = Standardize(
        paths.root,
        config.pool.sample_rate,
        config.pool.clip_seconds,
        config.pool.silence_lufs,
        config.pool.mix_sample_rates,
    )
    embed = EmbedAudio(paths.root, config.models.clap, identity["dim"])

    storage.makedirs(paths.root)
    storage.write_text(paths.config(), dump_config(config))
    if not storage.exists(paths.pool_meta()):
        storage.write_text(paths.pool_meta(), json.dumps(meta, indent=2) + "\n")
    leftovers = remove_unfinished_parts(paths, config.pool.mix_sample_rates)
    if leftovers:
        log.warning("removed %d files of parts an interrupted run left unfinished", len(leftovers))
    temporaries = storage.remove_temporaries(paths.temporary_folders(config.pool.mix_sample_rates))
    if temporaries:
        log.warning("removed %d temporary files that an interrupted run left", temporaries)

    parquet = ParquetLayout(config.pool.parquet.audio_column, config.pool.parquet.id_column)
    sources, empty_globs = expand_audio_sources(config.pool.sources, parquet)
    for pattern in empty_globs:
        log.warning("source pattern %s matched no files", pattern)
    plan = plan_work(sources, read_clips(paths, PLAN_COLUMNS), config.pool.retry_errors)
    parts = group_parts(plan.to_process, config.pool.files_per_part)
    log.info(
        "%d source files listed: %d to process in %d parts, %d unchanged",
        len(sources),
        len(plan.to_process),
        parts.num_rows,
        plan.unchanged,
    )

    writer = PartFiles(paths, identity["dim"])
    if parts.num_rows:
        grouped = GroupedWriter(
            "part",
            parts.column("part").to_pylist(),
            group_of=lambda batch: batch.column("part").to_numpy(zero_copy_only=False),
            expected_rows=lambda part, rows: rows.column("part_rows")[0].as_py(),
            write=writer.write,
            unit="clips",
        )
        grouped.consume(Runner(config.ray).run(parts, [standardize, embed], blocks=parts.num_rows))
    # A part is named by its sources and their fingerprints, so a retried part can have the name of
    # the failed one it replaces; rewriting it already dropped the stale rows, and pruning it would
    # delete what this run just wrote.
    written = set(parts.column("part").to_pylist())
    pruned_parts = prune_stale(
        paths, {part: uris for part, uris in plan.stale.items() if part not in written}, config.pool.mix_sample_rates
    )
    index = update_index(paths, config)

    summary = {
        "pool_dir": paths.root,
        "files_listed": len(sources),
        "files_processed": len(plan.to_process),
        "files_unchanged": plan.unchanged,
        "parts_written": len(writer.written_parts),
        "parts_pruned": pruned_parts,
        "clips_added": writer.clips,
        "silent_clips_added": writer.silent,
        "clips_embedded": writer.embedded,
        "errors": len(writer.errors),
        # The error_kind column of this run's error rows: empty, undecodable, unreadable, ...
        "errors_by_kind": dict(sorted(writer.error_kinds.items())),
        "error_reasons": writer.errors[:MAX_REPORTED_ERRORS],
        "patterns_without_matches": empty_globs,
        "pool": pool_totals(paths, config),
        "index": {k: v for k, v in index.items() if k != "parts"},
        "wall_seconds": round(time.monotonic() - started, 3),
    }
    storage.write_text(paths.summary(), json.dumps(summary, indent=2) + "\n")
    return summary


def _kinds(counts: dict[str, int]) -> str:
    return " (" + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + ")" if counts else ""


def format_summary(summary: dict) -> str:
    pool, index = summary["pool"], summary["index"]
    requested = index["settings"]["kind"]
    kind = f"{index['kind']} ({requested})" if requested != index["kind"] else index["kind"]
    lines = [
        f"pool {summary['pool_dir']}",
        f"  this run: {summary['files_processed']} files processed ({summary['files_unchanged']} unchanged), "
        f"{summary['clips_added']} clips added ({summary['silent_clips_added']} silent), {summary['errors']} errors"
        f"{_kinds(summary['errors_by_kind'])}, {summary['wall_seconds']:.1f} s",
        f"  pool:     {pool['files']} files, {pool['clips']} clips, {pool['silent_clips']} silent, "
        f"{pool['error_rows']} error rows{_kinds(pool['errors_by_kind'])}, inaudible at mix rates: "
        + ", ".join(f"{n} at {rate} Hz" for rate, n in pool["inaudible_at_mix_rates"].items()),
        f"  index:    {kind}, {index['size']} vectors ({index['action']})",
    ]
    lines += [f"  error:    {reason}" for reason in summary["error_reasons"][:10]]
    if summary["errors"] > 10:
        lines.append(f"  ... {summary['errors'] - 10} more errors in summary.json")
    lines += [f"  warning:  pattern matched no files: {p}" for p in summary["patterns_without_matches"]]
    return "\n".join(lines)

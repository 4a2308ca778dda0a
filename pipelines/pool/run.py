"""A pool run: its phases in order (check, repair, plan, standardize and embed, prune, index) and
its summary."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

from pipelines.config import dump_config
from pipelines.grouped_writer import GroupedWriter
from pipelines.pool.credits import relabel_parts, source_credits
from pipelines.pool.index import update_index
from pipelines.pool.parts import PartFiles, prune_stale, remove_unfinished_parts
from pipelines.pool.plan import PLAN_COLUMNS, group_parts, plan_work
from pipelines.pool.store import PoolStore
from pipelines.pool.summary import pool_totals
from pipelines.ray_runner import Runner
from schemas.config import RunConfig
from schemas.layout import PoolLayout
from stages.audio.standardize_stage import Standardize
from stages.audio.variants import check_chain, load_chain, variants_fingerprint, variants_for
from stages.embed.clap import clap_identity
from stages.embed.embed_audio_stage import EmbedAudio
from stages.io import storage
from stages.io.sources import ParquetLayout, expand_audio_sources, generated_sources

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 50


def run_pool(config: RunConfig) -> dict:
    started = time.monotonic()
    paths = PoolLayout(config.pool.dir)
    identity = clap_identity(config.models.clap)
    store = PoolStore(paths)
    meta = store.check_compatible(identity, config.pool)

    standardize = Standardize(
        paths.root,
        config.pool.sample_rate,
        config.pool.clip_seconds,
        config.pool.silence_lufs,
        config.pool.mix_sample_rates,
        config.pool.variants,
    )
    chains = {v.name: load_chain(v) for v in config.pool.variants}
    for chain in chains.values():
        check_chain(chain, config.pool.sample_rate)
    embed = EmbedAudio(paths.root, config.models.clap, identity["dim"])

    storage.makedirs(paths.root)
    storage.write_text(paths.config(), dump_config(config))
    if not store.exists():
        storage.write_text(paths.pool_meta(), json.dumps(meta, indent=2) + "\n")
    leftovers = remove_unfinished_parts(paths, config.pool.mix_sample_rates)
    if leftovers:
        log.warning("removed %d files of parts an interrupted run left unfinished", len(leftovers))
    temporaries = storage.remove_temporaries(paths.temporary_folders(config.pool.mix_sample_rates))
    if temporaries:
        log.warning("removed %d temporary files that an interrupted run left", temporaries)

    parquet = ParquetLayout(config.pool.parquet.audio_column, config.pool.parquet.id_column)
    listed, empty_globs = expand_audio_sources(config.pool.sources, parquet)
    for pattern in empty_globs:
        log.warning("source pattern %s matched no files", pattern)
    # The sounds generate made are sources of the pool whatever pool.sources lists; a pattern that
    # also matches one of them lists it without its provenance, so the generated listing wins.
    generated = generated_sources(store.generations())
    made = {s.uri for s in generated}
    sources = [s for s in listed if s.uri not in made] + generated
    sources = [
        replace(
            s,
            fingerprint=variants_fingerprint(
                s.fingerprint, [chains[v.name] for v in variants_for(s.uri, config.pool.variants)]
            ),
        )
        for s in sources
    ]
    stored = store.clips(PLAN_COLUMNS)
    credits = source_credits(config.pool, sources, stored.column("source_uri").to_pylist())
    if credits.unmatched_keys:
        log.warning(
            "%d pool.metadata keys match no source (first: %s)",
            len(credits.unmatched_keys),
            ", ".join(credits.unmatched_keys[:3]),
        )
    plan = plan_work(sources, stored, config.pool.retry_errors)
    del stored
    parts = group_parts(plan.to_process, config.pool.files_per_part)
    log.info(
        "%d source files listed: %d to process in %d parts, %d unchanged",
        len(sources),
        len(plan.to_process),
        parts.num_rows,
        plan.unchanged,
    )

    writer = PartFiles(paths, identity["dim"], credits)
    if parts.num_rows:
        grouped = GroupedWriter(
            "pool",
            parts.column("part").to_pylist(),
            group_of=lambda batch: batch.column("part").to_numpy(zero_copy_only=False),
            expected_rows=lambda part, rows: rows.column("part_rows")[0].as_py(),
            write=writer.write,
            unit="clips",
            group_unit="parts",
        )
        grouped.consume(Runner(config.ray).run(parts, [standardize, embed], blocks=parts.num_rows))
    # A part is named by its sources and their fingerprints, so a retried part can have the name of
    # the failed one it replaces; rewriting it already dropped the stale rows, and pruning it would
    # delete what this run just wrote.
    written = set(parts.column("part").to_pylist())
    pruned_parts = prune_stale(
        paths, {part: uris for part, uris in plan.stale.items() if part not in written}, config.pool.mix_sample_rates
    )
    relabelled = relabel_parts(paths, credits, written)
    index = update_index(paths, config)

    summary = {
        "pool_dir": paths.root,
        "files_listed": len(sources),
        "files_processed": len(plan.to_process),
        "files_unchanged": plan.unchanged,
        "parts_written": len(writer.written_parts),
        "parts_pruned": pruned_parts,
        # Earlier parts whose clips files were rewritten because their sources' metadata changed.
        "parts_relabelled": relabelled,
        # pool.metadata keys that matched no listed or stored source (the first MAX_REPORTED_ERRORS).
        "metadata_keys_unmatched": len(credits.unmatched_keys),
        "metadata_keys_unmatched_first": credits.unmatched_keys[:MAX_REPORTED_ERRORS],
        "clips_added": writer.clips,
        "silent_clips_added": writer.silent,
        "variant_clips_added": writer.variants,
        "generated_clips_added": writer.generated,
        "clips_embedded": writer.embedded,
        "errors": len(writer.errors),
        # The error_kind column of this run's error rows: empty, undecodable, unreadable, ...
        "errors_by_kind": dict(sorted(writer.error_kinds.items())),
        "error_reasons": writer.errors[:MAX_REPORTED_ERRORS],
        "patterns_without_matches": empty_globs,
        "pool": pool_totals(store, config),
        "index": {k: v for k, v in index.items() if k != "parts"},
        "wall_seconds": round(time.monotonic() - started, 3),
    }
    storage.write_text(paths.summary(), json.dumps(summary, indent=2) + "\n")
    return summary

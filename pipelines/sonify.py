"""The sonify pipeline: images -> VLM sounding concepts -> CLAP retrieval -> mixes -> shards.

Phases, each materialized in sonify.out (laid out by schemas.layout.SonifyLayout) so a rerun skips
what is done and each can be queried: the listing, made once; each VLM's scenes, written as each
chunk completes; the top-K pool clips of every distinct concept text; each chunk's shard plans and
rejected scenes, then its stats file; each shard's tar, then its manifest part, which marks it done.

Images are sorted by id and cut into chunks of sonify.images_per_chunk. The driver holds the
listing (about 100 bytes per image), the distinct concept texts with their top-K matches (a few KB
per distinct text, and free-form VLM answers make nearly every text distinct), and one chunk of
scenes and plans at a time; everything else streams through Ray and lands in files.

`render` rebuilds the shards from a manifest and the pool alone, with the same write stage.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from pipelines.config import dump_config, validate_config
from schemas.config import RunConfig, VlmConfig
from pipelines.pool import check_compatible, embedded_parts, read_clips
from pipelines.grouped_writer import GroupedWriter
from pipelines.ray_runner import Runner
from schemas import CONCEPT_TEXTS, IMAGE_REFS, MANIFEST, MATCHES, SCENES, SHARD_PLANS, SHARD_TASKS, make_table, schema_version
from schemas.errors import PipelineError
from schemas.layout import PoolLayout, SonifyLayout, chunk_id, shard_id
from stages import storage
from stages.base import Stage, check_chain
from stages.clap import clap_identity
from stages.concepts import ParseConcepts
from stages.images import DecodeImages, ImageEncoding, assign_image_ids, list_images
from stages.mix import draw_targets, gains_db
from stages.loudness import audible_clip_loudness
from stages.retrieval import ConceptChoice, DroppedConcept, choose_clips, concept_rng
from stages.retrieve import RetrieveClips
from stages.shards import WriteShards, plan_shards
from stages.vlm_openai import OpenAIVlm
from stages.vlm_provided import ProvidedConcepts
from stages.vlm_transformers import TransformersVlm
from stages.vlm_vllm import VllmVlm

log = logging.getLogger(__name__)

# FLAC of a 16-bit mono mix is roughly 60% of its PCM size; used only to size shards.
FLAC_BYTES_PER_SAMPLE = 1.2
# Rows of the blocks that carry images through decoding and the VLM (rounded to the VLM's batch).
IMAGES_PER_BLOCK = 64
MAX_REPORTED_REASONS = 50
# Image-id part of a sample key; with "__<vlm>" and the member extension, names stay under 255 bytes.
MAX_KEY_ID_CHARS = 160
# The files a run keeps in sonify.out (see above); a folder of another layout is refused.
# 1: scenes/<vlm>.parquet and manifest/rejected.parquet; 2: per chunk, with images.parquet and plans/;
# 3: one image member name for every sample (sonify.image_format), shards no longer split by format.
LAYOUT_VERSION = 3
# Settings that decide where and how fast work runs, not what it computes: a resumed run may change them.
EXECUTION_SETTINGS = ("concurrency", "num_gpus", "num_cpus", "timeout_s", "retries")


class SonifyError(PipelineError):
    """A sonify run cannot start: a missing pool, a mismatched model, a missing setting."""


def sample_key(image_id: str, vlm: str) -> str:
    """WebDataset keys may not hold dots or slashes; other characters become underscores, and a
    hash of the id keeps keys unique when that folds two ids together. Long ids are cut to
    MAX_KEY_ID_CHARS, so that every member name stays a valid file name (255 bytes) when a shard is
    unpacked; then a 64-bit hash is all that tells apart ids sharing their first characters
    (scraped names often differ only at the end)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", image_id)
    if len(safe) > MAX_KEY_ID_CHARS:
        safe = f"{safe[: MAX_KEY_ID_CHARS - 17]}_{hashlib.sha1(image_id.encode()).hexdigest()[:16]}"
    elif safe != image_id:
        safe = f"{safe}_{hashlib.sha1(image_id.encode()).hexdigest()[:8]}"
    return f"{safe}__{vlm}"


def vlm_stage(vlm: VlmConfig, config: RunConfig) -> Stage:
    """The answer stage of a VLM backend."""
    if vlm.backend == "vllm":
        return VllmVlm(vlm, config.prompt)
    if vlm.backend == "transformers":
        return TransformersVlm(vlm, config.prompt)
    if vlm.backend == "openai":
        return OpenAIVlm(vlm, config.prompt)
    return ProvidedConcepts(vlm)


def check_pool(config: RunConfig) -> tuple[PoolLayout, dict]:
    """The pool's folder and the state of its index (parts and size), refused when sonify cannot use it."""
    paths = PoolLayout(config.pool.dir.rstrip("/"))
    if not storage.exists(paths.pool_meta()):
        raise SonifyError(f"pool.dir {paths.root} holds no pool (no pool.json); build it with `run_pipeline.py pool` first")
    check_compatible(paths, clap_identity(config.models.clap), config)
    if config.mix.sample_rate not in config.pool.mix_sample_rates:
        raise SonifyError(
            f"mix.sample_rate {config.mix.sample_rate} is not among the pool's mix_sample_rates {config.pool.mix_sample_rates}"
        )
    if not storage.exists(paths.index_file()):
        raise SonifyError(f"pool {paths.root} has no index: it holds no non-silent clip")
    meta_url = paths.index_meta()
    index_meta = json.loads(storage.read_bytes(meta_url)) if storage.exists(meta_url) else {}
    if index_meta.get("parts") != embedded_parts(paths):
        raise SonifyError(
            f"pool {paths.root}: its index does not cover its parts (a pool run stopped before its index update?); "
            "run `run_pipeline.py pool` with the same config again"
        )
    return paths, {"index_size": index_meta.get("size"), "index_parts": index_meta["parts"]}


def check_batches(config: RunConfig) -> None:
    """A resumed run must batch each image with the same neighbours as an uninterrupted one: model
    outputs depend on batch composition through padding and kernel choice."""
    for i, vlm in enumerate(config.models.vlm):
        if config.sonify.images_per_chunk % vlm.batch_size:
            raise SonifyError(
                f"sonify.images_per_chunk ({config.sonify.images_per_chunk}) must be a multiple of "
                f"models.vlm.{i}.batch_size ({vlm.batch_size}), so that a resumed run batches images as an uninterrupted one"
            )


def _run_identity(config: RunConfig) -> dict:
    """What decides a run's output; where work runs (ray, the models' execution settings), render
    and report settings do not."""
    identity = config.model_dump(mode="json", exclude={"ray", "render", "report"})
    for model in [identity["models"]["clap"], *identity["models"]["vlm"]]:
        for setting in EXECUTION_SETTINGS:
            model.pop(setting, None)
    return identity


def check_same_run(config: RunConfig, out: str) -> None:
    """Finished phases in sonify.out are reused, so they must come from the same settings and the
    same layout of files."""
    url = SonifyLayout(out).config()
    if not storage.exists(url):
        return
    layout_url = SonifyLayout(out).layout_version()
    layout = json.loads(storage.read_bytes(layout_url)).get("layout") if storage.exists(layout_url) else None
    if layout != LAYOUT_VERSION:
        raise SonifyError(
            f"sonify.out {out} was written by a version of this pipeline with another file layout "
            f"({layout or 'before layout.json'}, this one writes {LAYOUT_VERSION}); use a new sonify.out"
        )
    previous = validate_config(yaml.safe_load(storage.read_bytes(url)), origin=url)
    if _run_identity(previous) != _run_identity(config):
        raise SonifyError(
            f"sonify.out {out} holds a run made with other settings (see its config.yaml); "
            "use a new sonify.out, or delete the old run to start over"
        )


def check_same_pool(out: str, pool_root: str, pool_state: dict) -> None:
    """Matches, plans and shards name pool clips: once retrieval has run, a pool extended or pruned
    since would be mixed with stale choices, or lack the clips they name. Before that nothing in
    sonify.out depends on the pool (scenes do not), so the state is recorded anew."""
    url = SonifyLayout(out).pool_state()
    if not storage.exists(SonifyLayout(out).matches()):
        storage.write_text(url, json.dumps(pool_state, sort_keys=True) + "\n")
        return
    recorded = json.loads(storage.read_bytes(url)) if storage.exists(url) else None
    if recorded != pool_state:
        then = (
            f"its index then held {recorded['index_size']} clips in {len(recorded['index_parts'])} parts"
            if recorded
            else "the version of the pipeline that retrieved did not record its pool"
        )
        raise SonifyError(
            f"pool {pool_root} is not the pool sonify.out {out} retrieved from ({then}; now {pool_state['index_size']} clips "
            f"in {len(pool_state['index_parts'])} parts): delete its matches.parquet, plans/, manifest/ and shards/ to match "
            "its VLM scenes against this pool, or use a new sonify.out"
        )


RESUME_REMEDY = "this version cannot resume that run: run sonify again into a new sonify.out"
RENDER_REMEDY = "render reads manifests of this version only: sonify the images again with this version"


def read_phase(url: str, schema: pa.Schema, remedy: str = RESUME_REMEDY) -> pa.Table:
    """A finished phase's table, refused with `remedy` if another version of the pipeline wrote it."""
    table = storage.read_parquet(url)
    if schema_version(table.schema) != schema_version(schema) or table.schema.names != schema.names:
        raise SonifyError(
            f"{url} was written under schema {schema_version(table.schema)} with columns {table.schema.names}; "
            f"this version writes {schema_version(schema)} with {schema.names}; {remedy}"
        )
    return table


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of the listing sorted by image id."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return chunk_id(self.index)

    @property
    def rows(self) -> int:
        return self.stop - self.start


def chunk_listing(rows: int, per_chunk: int) -> list[Chunk]:
    return [Chunk(i, start, min(start + per_chunk, rows)) for i, start in enumerate(range(0, rows, per_chunk))]


def block_ranges(chunk: Chunk, block_rows: int) -> list[tuple[int, int]]:
    """Fixed row ranges of a chunk: the blocks a VLM receives, whichever chunks a run still has to do."""
    return [(start, min(start + block_rows, chunk.stop)) for start in range(chunk.start, chunk.stop, block_rows)]


def image_listing(config: RunConfig, out: str) -> tuple[pa.Table, dict]:
    """The sorted listing and its counts, made on the first run and read back on every rerun, so
    that chunks hold the same images however the inputs are listed later."""
    url, stats_url = SonifyLayout(out).images(), SonifyLayout(out).images_counts()
    if storage.exists(url):
        return read_phase(url, IMAGE_REFS), json.loads(storage.read_bytes(stats_url))
    refs = list_images(config.sonify.images)
    ids = assign_image_ids(refs)
    table = make_table(
        IMAGE_REFS,
        {
            "image_id": ids,
            "uri": [r.uri for r in refs],
            "member": [r.member for r in refs],
            "error": [r.error for r in refs],
            "error_kind": [r.error_kind for r in refs],
        },
    ).sort_by([("image_id", "ascending")])
    stats = {"listed": len(refs), "renamed_duplicate_ids": sum(i != r.own_id for i, r in zip(ids, refs))}
    storage.write_text(stats_url, json.dumps(stats) + "\n")
    storage.write_parquet(url, table)
    return table, stats


def run_scenes(config: RunConfig, listing: pa.Table, chunks: list[Chunk], vlm: VlmConfig, out: str) -> None:
    """Answers of one VLM for every chunk without a scenes file yet, each file written as its chunk completes."""
    folder = SonifyLayout(out).vlm_scenes_folder(vlm.name)
    done = {storage.file_stem(u) for u in storage.list_files(folder, ".parquet")}
    todo = [c for c in chunks if c.name not in done]
    log.info("scenes %s: %d of %d chunks to do", vlm.name, len(todo), len(chunks))
    if not todo:
        return
    decode = DecodeImages(config.sonify.min_side, config.sonify.max_image_pixels, batch_size=vlm.batch_size)
    answer = vlm_stage(vlm, config)
    # Parsed in the VLM's own batches: a larger batch would hold answers back until it filled, across
    # chunks, so chunk files would be written late, in bursts, and a kill would lose answers already made.
    parse = ParseConcepts(vlm.name, config.prompt.max_answer_chars, config.prompt.max_concepts, batch_size=vlm.batch_size)
    check_chain(IMAGE_REFS, [decode, answer, parse])
    block_rows = vlm.batch_size * max(1, IMAGES_PER_BLOCK // vlm.batch_size)
    blocks = [listing.slice(start, stop - start) for c in todo for start, stop in block_ranges(c, block_rows)]
    first_ids = [listing.column("image_id")[c.start].as_py() for c in chunks]

    def write(index: int, rows: pa.Table) -> int:
        storage.write_parquet(SonifyLayout(out).scenes(vlm.name, chunks[index].name), rows.sort_by([("image_id", "ascending")]))
        return rows.num_rows

    writer = GroupedWriter(
        f"scenes {vlm.name}: chunk",
        [c.index for c in todo],
        group_of=lambda batch: [bisect.bisect_right(first_ids, i) - 1 for i in batch.column("image_id").to_pylist()],
        expected_rows=lambda index, rows: chunks[index].rows,
        write=write,
        unit="images",
    )
    # In order, every batch is a fixed slice of one block, so a resumed run batches as the first did.
    writer.consume(Runner(config.ray).run(blocks, [decode, answer, parse], preserve_order=True))


def read_chunk_scenes(config: RunConfig, out: str, chunk: Chunk, columns: list[str] | None = None) -> pa.Table:
    tables = []
    for vlm in config.models.vlm:
        table = read_phase(SonifyLayout(out).scenes(vlm.name, chunk.name), SCENES)
        tables.append(table.select(columns) if columns else table)
    return pa.concat_tables(tables)


@dataclass
class SceneCounts:
    """What the scenes of every chunk add up to, read one chunk at a time."""

    texts: set[str] = field(default_factory=set)
    concepts: int = 0
    dropped_empty_concepts: int = 0
    image_errors: Counter = field(default_factory=Counter)
    too_small: int = 0
    by_vlm: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))


def count_scenes(config: RunConfig, out: str, chunks: list[Chunk]) -> SceneCounts:
    counts = SceneCounts()
    first_vlm = config.models.vlm[0].name
    columns = ["vlm", "concepts", "dropped_empty_concepts", "dropped", "error_kind", "error_stage"]
    for chunk in chunks:
        for row in read_chunk_scenes(config, out, chunk, columns).to_pylist():
            status = f"{row['error_stage']}_error" if row["error_stage"] else row["dropped"] or "ok"
            counts.by_vlm[row["vlm"]][status] += 1
            counts.dropped_empty_concepts += row["dropped_empty_concepts"] or 0
            if row["vlm"] == first_vlm:
                counts.too_small += row["dropped"] == "too_small"
                if row["error_stage"] == "images":
                    counts.image_errors[row["error_kind"]] += 1
            if status == "ok":
                counts.concepts += len(row["concepts"])
                counts.texts.update(c["text"] for c in row["concepts"])
    return counts


def run_matches(config: RunConfig, paths: PoolLayout, texts: list[str]) -> pa.Table:
    retrieve = RetrieveClips(paths.root, config.models.clap, config.retrieval)
    batches = Runner(config.ray).run(make_table(CONCEPT_TEXTS, {"text": texts}), [retrieve], blocks=max(1, min(len(texts) // 64, 1000)))
    tables = [b for b in batches if b.num_rows]
    return (pa.concat_tables(tables) if tables else MATCHES.empty_table()).sort_by([("text", "ascending")])


def audible_clips(paths: PoolLayout, config: RunConfig) -> tuple[dict[str, float], int]:
    """clip_id -> loudness at the mix rate of every pool clip audible at that rate (the only clips
    a mix may use), and how many indexed (non-silent) clips are not."""
    table = read_clips(paths, ["clip_id", "lufs", "loudness_at_rates", "silent", "error"])
    indexed = table.filter(pc.is_null(pc.field("error")) & pc.invert(pc.field("silent")))
    audible = audible_clip_loudness(indexed, config.mix.sample_rate, config.pool.silence_lufs, config.pool.max_band_loss_lu)
    return audible, indexed.num_rows - len(audible)


def matches_by_text(matches: pa.Table) -> dict[str, tuple[list[str], np.ndarray]]:
    return {
        t: (ids, np.asarray(s, dtype=np.float64))
        for t, ids, s in zip(*[matches.column(c).to_pylist() for c in ("text", "clip_ids", "scores")])
    }


def plan_samples(
    config: RunConfig, scenes: pa.Table, found: dict[str, tuple[list[str], np.ndarray]], clip_lufs: dict[str, float]
) -> tuple[list[dict], list[dict], Counter]:
    """Manifest rows of every sample (audio fields still empty) and of every rejected scene."""
    samples, rejected, counts = [], [], Counter()
    for scene in scenes.to_pylist():
        key = sample_key(scene["image_id"], scene["vlm"])
        row = {
            "key": key,
            "image_id": scene["image_id"],
            "image_uri": scene["uri"],
            "image_member": scene["member"],
            "image_format": scene["format"],
            "width": scene["width"],
            "height": scene["height"],
            "vlm": scene["vlm"],
            "prompt_version": config.prompt.version,
            "caption": scene["caption"],
            "sample_rate": config.mix.sample_rate,
            "duration_s": config.pool.clip_seconds,
            "seed": config.seed,
            "error": scene["error"] or (f"dropped: {scene['dropped']}" if scene["dropped"] else None),
            "error_kind": scene["error_kind"] if scene["error"] else scene["dropped"],
            "concepts": [],
            "dropped_concepts": scene["dropped_empty_concepts"] or 0,
            **dict.fromkeys(WRITE_TIME_COLUMNS),
        }
        if row["error"]:
            rejected.append(row)
            continue
        texts = [c["text"] for c in scene["concepts"]]
        choices = choose_clips(
            texts, found, config.seed, key, config.retrieval.k, config.retrieval.ssr, config.retrieval.min_cosine, clip_lufs
        )
        kept = [(c, choice) for c, choice in zip(scene["concepts"], choices) if isinstance(choice, ConceptChoice)]
        counts.update(f"concepts_{c.reason}" for c in choices if isinstance(c, DroppedConcept))
        row["dropped_concepts"] += len(choices) - len(kept)
        if not kept:
            row["error"] = "dropped: no concept matched a pool clip audible at the mix rate and at or above retrieval.min_cosine"
            row["error_kind"] = "no_usable_clip"
            rejected.append(row)
            continue
        targets = draw_targets(concept_rng(config.seed, key, 0, "loudness"), len(kept), config.mix.lufs_min, config.mix.lufs_max)
        lufs = np.array([clip_lufs[choice.clip_id] for _, choice in kept])
        for (concept, choice), target, clip_level, gain in zip(kept, targets, lufs, gains_db(targets, lufs)):
            row["concepts"].append(
                {
                    "label": concept["label"],
                    "text": concept["text"],
                    "clip_id": choice.clip_id,
                    "cosine": choice.cosine,
                    "ssr": choice.ssr,
                    "threshold": choice.threshold,
                    "n_candidates": choice.n_candidates,
                    "fallback": choice.fallback,
                    "target_lufs": float(target),
                    "clip_lufs": float(clip_level),
                    "gain_db": float(gain),
                }
            )
        samples.append(row)
        counts["fallbacks"] += sum(c.fallback for _, c in kept)
    return sorted(samples, key=lambda r: r["key"]), rejected, counts


def shard_groups(samples: list[dict], scenes_bytes: dict[str, int], config: RunConfig, first: int) -> dict[str, list[dict]]:
    """Samples to shards of about sonify.shard_size_mb, in key order, numbered from `first`. The size
    of an image is estimated by its source's."""
    flac_estimate = int(config.mix.sample_rate * config.pool.clip_seconds * FLAC_BYTES_PER_SAMPLE)
    sizes = [scenes_bytes.get(s["key"], 0) + flac_estimate for s in samples]
    groups: dict[str, list[dict]] = {}
    for sample, index in zip(samples, plan_shards(sizes, int(config.sonify.shard_size_mb * 1e6))):
        groups.setdefault(shard_id(first + index), []).append(sample)
    return groups


def clip_parts(paths: PoolLayout) -> dict[str, str]:
    """clip_id -> the pool part holding its audio; read once on the driver."""
    table = read_clips(paths, ["clip_id", "part"])
    return dict(zip(table.column("clip_id").to_pylist(), table.column("part").to_pylist()))


def manifest_table(rows: list[dict]) -> pa.Table:
    return make_table(MANIFEST, {name: [row[name] for row in rows] for name in MANIFEST.names})


def shard_plan(manifest: pa.Table, part_of: dict[str, str]) -> pa.Table:
    """The plan file of one shard: its manifest rows, each with the pool part of every concept's clip."""
    concepts = manifest.column("concepts").to_pylist()
    missing = sorted({c["clip_id"] for row in concepts for c in row if c["clip_id"] not in part_of})
    if missing:
        raise SonifyError(
            f"{len(missing)} clips of the manifest are not in the pool (first: {', '.join(missing[:3])}): "
            "pool.dir must be the pool the manifest was made from, with none of its sources pruned"
        )
    parts = [[part_of[c["clip_id"]] for c in row] for row in concepts]
    return make_table(SHARD_PLANS, manifest.append_column("clip_parts", pa.array(parts, pa.list_(pa.string()))))


# Manifest columns the shard writer sets; a planned row holds none of them.
WRITE_TIME_COLUMNS = ("shard_image_extension", "shard_image_width", "shard_image_height", "mix_gain_db", "mix_lufs", "mix_peak_dbfs", "shard")

CHUNK_COUNTS = ("samples", "rejected", "concepts_below_min_cosine", "concepts_no_usable_clip", "fallbacks")


def plan_chunks(
    config: RunConfig, paths: PoolLayout, out: str, chunks: list[Chunk], found: dict, clip_lufs: dict[str, float]
) -> tuple[int, Counter, list[str]]:
    """Plans every chunk not planned yet, in order: its shards' plan files, its rejected rows, and
    last its stats file, which marks it planned. Shards are numbered on from the previous chunk's,
    so a rerun numbers them as the first run did. Returns the number of shards, the counts of all
    chunks, and the first rejection reasons."""
    part_of = None
    next_shard, totals, reasons = 0, Counter(), []
    for chunk in chunks:
        stats_url = SonifyLayout(out).chunk_plan(chunk.name)
        if not storage.exists(stats_url):
            if part_of is None:
                part_of = clip_parts(paths)
            scenes = read_chunk_scenes(config, out, chunk)
            samples, rejected, counts = plan_samples(config, scenes, found, clip_lufs)
            image_bytes = {
                sample_key(i, v): n or 0 for i, v, n in zip(*[scenes.column(c).to_pylist() for c in ("image_id", "vlm", "num_bytes")])
            }
            groups = shard_groups(samples, image_bytes, config, next_shard)
            for shard, rows in groups.items():
                plan = shard_plan(manifest_table(rows), part_of)
                storage.write_parquet(SonifyLayout(out).plan(shard), plan)
            storage.write_parquet(
                SonifyLayout(out).rejected(chunk.name), manifest_table(rejected)
            )
            stats = {
                "first_shard": next_shard,
                "shards": len(groups),
                "samples": len(samples),
                "rejected": len(rejected),
                "concepts_below_min_cosine": counts["concepts_below_min_cosine"],
                "concepts_no_usable_clip": counts["concepts_no_usable_clip"],
                "fallbacks": counts["fallbacks"],
                "rejection_reasons": [r["error"] for r in rejected][:MAX_REPORTED_REASONS],
            }
            storage.write_text(stats_url, json.dumps(stats) + "\n")
        else:
            stats = json.loads(storage.read_bytes(stats_url))
        next_shard += stats["shards"]
        totals.update({k: stats[k] for k in CHUNK_COUNTS})
        reasons.extend(stats["rejection_reasons"][: MAX_REPORTED_REASONS - len(reasons)])
    return next_shard, totals, reasons


def write_shards(config: RunConfig, paths: PoolLayout, out: str, shards: list[str]) -> pa.Table | None:
    """Writes the shards not yet marked complete by their manifest part, each from its plan file."""
    done = {storage.file_stem(u) for u in storage.list_files(SonifyLayout(out).manifest_folder(), ".parquet")}
    todo = [s for s in shards if s not in done]
    log.info("%d shards planned, %d already written", len(shards), len(shards) - len(todo))
    if not todo:
        return None
    tasks = make_table(SHARD_TASKS, {"shard": todo, "plan_url": [SonifyLayout(out).plan(s) for s in todo]})
    encoding = ImageEncoding(
        config.sonify.image_format, config.sonify.image_quality, config.sonify.max_image_side, config.sonify.max_image_pixels
    )
    writer = WriteShards(paths.root, out, config.mix.peak_dbfs, encoding)
    results, written, report_at, started = [], 0, 0, time.monotonic()
    for batch in Runner(config.ray).run(tasks, [writer], blocks=tasks.num_rows):
        results.append(batch)
        written += batch.num_rows
        if written >= report_at:
            elapsed = time.monotonic() - started
            log.info("shards: %d/%d written this run, %.1f shards/s", written, len(todo), written / elapsed if elapsed else 0.0)
            report_at = written + max(1, len(todo) // 20)
    return pa.concat_tables(results)


def manifest_counts(out: str) -> tuple[int, Counter, int]:
    """Samples written, rows that failed at write time by kind, and distinct clips used, read part by part."""
    samples = 0
    failed: Counter = Counter()
    used: set[str] = set()
    for url in storage.list_files(SonifyLayout(out).manifest_folder(), ".parquet"):
        if SonifyLayout(out).is_rejected(url):
            continue
        table = storage.read_parquet(url, columns=["concepts", "error", "error_kind"])
        ok = table.filter(pc.is_null(table.column("error")))
        samples += ok.num_rows
        failed.update(table.filter(pc.is_valid(table.column("error"))).column("error_kind").to_pylist())
        used.update(c["clip_id"] for concepts in ok.column("concepts").to_pylist() for c in concepts)
    return samples, failed, len(used)


def run_sonify(config: RunConfig) -> dict:
    started = time.monotonic()
    out = config.sonify.out
    if not out:
        raise SonifyError("sonify.out is not set")
    if not config.models.vlm:
        raise SonifyError("models.vlm is empty: configure at least one VLM (or backend: provided)")
    paths, pool_state = check_pool(config)
    out = out.rstrip("/")
    layout = SonifyLayout(out)
    check_batches(config)
    check_same_run(config, out)
    storage.makedirs(out)
    check_same_pool(out, paths.root, pool_state)
    layout_url = layout.layout_version()
    if not storage.exists(layout_url):
        storage.write_text(layout_url, json.dumps({"layout": LAYOUT_VERSION}) + "\n")
    leftovers = storage.remove_temporaries(layout.temporary_folders(v.name for v in config.models.vlm))
    if leftovers:
        log.warning("removed %d temporary files that an interrupted run left", leftovers)
    storage.write_text(layout.config(), dump_config(config))
    seconds: dict[str, float] = {}

    tick = time.monotonic()
    listing, listed = image_listing(config, out)
    chunks = chunk_listing(listing.num_rows, config.sonify.images_per_chunk)
    seconds["list_images"] = time.monotonic() - tick
    log.info("%d images listed, in %d chunks of up to %d", listing.num_rows, len(chunks), config.sonify.images_per_chunk)

    for vlm in config.models.vlm:
        tick = time.monotonic()
        run_scenes(config, listing, chunks, vlm, out)
        seconds[f"concepts_{vlm.name}"] = time.monotonic() - tick

    tick = time.monotonic()
    scene_counts = count_scenes(config, out, chunks)
    texts = sorted(scene_counts.texts)
    matches_url = layout.matches()
    if storage.exists(matches_url):
        matches = read_phase(matches_url, MATCHES)
    else:
        matches = run_matches(config, paths, texts) if texts else MATCHES.empty_table()
        storage.write_parquet(matches_url, matches)
    seconds["retrieval"] = time.monotonic() - tick

    tick = time.monotonic()
    clip_lufs, inaudible = audible_clips(paths, config)
    shard_count, planned, reasons = plan_chunks(config, paths, out, chunks, matches_by_text(matches), clip_lufs)
    del matches  # not needed while shards are written, and as large as the distinct texts
    seconds["plan"] = time.monotonic() - tick

    tick = time.monotonic()
    write_shards(config, paths, out, [shard_id(i) for i in range(shard_count)])
    seconds["mix_and_write"] = time.monotonic() - tick

    samples, failed_at_write, clips_used = manifest_counts(out)
    summary = {
        "out": out,
        "images": {
            "listed": listed["listed"],
            "renamed_duplicate_ids": listed["renamed_duplicate_ids"],
            "errors": sum(scene_counts.image_errors.values()),
            "errors_by_kind": dict(sorted(scene_counts.image_errors.items())),
            "too_small": scene_counts.too_small,
        },
        "chunks": len(chunks),
        "scenes": {vlm.name: dict(sorted(scene_counts.by_vlm[vlm.name].items())) for vlm in config.models.vlm},
        "concepts": scene_counts.concepts,
        "concepts_with_empty_text": scene_counts.dropped_empty_concepts,
        "distinct_concept_texts": len(texts),
        "concepts_below_min_cosine": planned["concepts_below_min_cosine"],
        # Concepts whose neighbours were all inaudible at the mix rate or already used by the sample.
        "concepts_without_usable_clip": planned["concepts_no_usable_clip"],
        "pool_clips_inaudible_at_mix_rate": inaudible,
        "threshold_fallbacks": planned["fallbacks"],
        "samples": samples,
        "rejected": planned["rejected"] + sum(failed_at_write.values()),
        # Samples planned whose shard could not hold them: an image gone or unencodable, a silent mix.
        "write_errors_by_kind": dict(sorted(failed_at_write.items())),
        "error_reasons": reasons,
        "distinct_clips_used": clips_used,
        "shards": shard_count,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "wall_seconds": round(time.monotonic() - started, 3),
    }
    storage.write_text(layout.summary(), json.dumps(summary, indent=2) + "\n")
    return summary


def run_render(config: RunConfig) -> dict:
    """Rebuild shards and manifest from a manifest folder and the pool: no model is loaded. Each
    manifest part becomes the plan file of its shard, one part in memory at a time."""
    started = time.monotonic()
    source, out = config.render.manifest, config.render.out
    if not source or not out:
        raise SonifyError("render needs render.manifest (a sonify run's manifest folder) and render.out")
    paths = PoolLayout(config.pool.dir.rstrip("/"))
    if not storage.exists(paths.pool_meta()):
        raise SonifyError(f"pool.dir {paths.root} holds no pool (no pool.json)")
    out = out.rstrip("/")
    layout = SonifyLayout(out)
    storage.remove_temporaries(layout.shard_folders())
    part_of = clip_parts(paths)
    shards = []
    for url in storage.list_files(source, ".parquet"):
        shard = storage.file_stem(url)
        if layout.is_rejected(url):
            continue
        rows = read_phase(url, MANIFEST, RENDER_REMEDY).filter(pc.is_null(pc.field("error")))
        if not rows.num_rows:
            log.warning("render: %s holds no sample (every row an error), so shard %s is not rebuilt", url, shard)
            continue
        # What the shard writer measures is measured again, as for a plan sonify makes.
        for column in WRITE_TIME_COLUMNS:
            rows = rows.set_column(rows.schema.get_field_index(column), rows.schema.field(column), pa.nulls(rows.num_rows, rows.schema.field(column).type))
        storage.write_parquet(layout.plan(shard), shard_plan(rows, part_of))
        shards.append(shard)
    results = write_shards(config, paths, out, shards)
    samples = int(pc.sum(results.column("samples")).as_py()) if results is not None else 0
    return {"out": out, "shards": len(shards), "samples": samples, "wall_seconds": round(time.monotonic() - started, 3)}


def format_summary(summary: dict) -> str:
    images = summary["images"]
    layout = SonifyLayout(summary["out"])
    kinds = ", ".join(f"{n} {kind}" for kind, n in images["errors_by_kind"].items())
    lines = [
        f"sonify {summary['out']}",
        f"  manifest: {layout.manifest_folder()}/*.parquet   shards: {layout.shards_folder()}/*.tar ({summary['shards']})",
        f"  images:   {images['listed']} listed in {summary['chunks']} chunks, {images['errors']} errors"
        f"{f' ({kinds})' if kinds else ''}, {images['too_small']} too small, {images['renamed_duplicate_ids']} duplicate ids renamed",
    ]
    lines += [f"  scenes:   {name}: {json.dumps(counts, sort_keys=True)}" for name, counts in summary["scenes"].items()]
    lines += [
        f"  concepts: {summary['concepts']} ({summary['distinct_concept_texts']} distinct texts), "
        f"{summary['concepts_with_empty_text']} with empty text, {summary['concepts_below_min_cosine']} below min_cosine, "
        f"{summary['concepts_without_usable_clip']} without a usable clip "
        f"({summary['pool_clips_inaudible_at_mix_rate']} pool clips inaudible at the mix rate)",
        f"  samples:  {summary['samples']} written, {summary['rejected']} rejected, {summary['distinct_clips_used']} distinct clips used",
        f"  time:     {summary['wall_seconds']:.1f} s  " + ", ".join(f"{k} {v:.1f}s" for k, v in summary["seconds"].items()),
    ]
    lines += [f"  rejected: {reason}" for reason in summary["error_reasons"][:5]]
    return "\n".join(lines)

"""The sonify pipeline: images -> VLM sounding concepts -> CLAP retrieval -> mixes -> shards.

Phases, each materialized in sonify.out so a rerun skips what is done and each can be queried:
    scenes/<vlm>.parquet       one row per image and VLM: caption, concepts, or why it stops
    matches.parquet            top-K pool clips of every distinct concept text
    manifest/NNNNNN.parquet    one row per sample of shard NNNNNN, written after the shard
    manifest/rejected.parquet  scenes that gave no sample, with the reason
    shards/NNNNNN.tar          WebDataset: KEY.<image ext>, KEY.flac, KEY.json
    config.yaml, summary.json

`render` rebuilds the shards from a manifest and the pool alone, with the same write stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from pipelines.config import RunConfig, VlmConfig, dump_config, validate_config
from pipelines.pool import PoolPaths, check_compatible, read_clips
from pipelines.ray_runner import apply_stage, init_ray
from schemas import IMAGE_REFS, MANIFEST, MATCHES, SCENES, SHARD_PLANS, make_table, schema_version
from stages import storage
from stages.base import Stage, check_chain
from stages.clap import clap_identity
from stages.concepts import ParseConcepts
from stages.images import DecodeImages, assign_image_ids, list_images
from stages.mix import draw_targets, gains_db
from stages.retrieval import choose_clips, concept_rng
from stages.retrieve import RetrieveClips
from stages.shards import WriteShards, image_extension, plan_shards, shard_id, table_to_ipc
from stages.vlm_openai import OpenAIVlm
from stages.vlm_provided import ProvidedConcepts
from stages.vlm_transformers import TransformersVlm
from stages.vlm_vllm import answer_with_vllm

log = logging.getLogger(__name__)

# FLAC of a 16-bit mono mix is roughly 60% of its PCM size; used only to size shards.
FLAC_BYTES_PER_SAMPLE = 1.2


class SonifyError(ValueError):
    """A sonify run cannot start: a missing pool, a mismatched model, a missing setting."""


def sample_key(image_id: str, vlm: str) -> str:
    """WebDataset keys may not hold dots or slashes; other characters become underscores, and a
    hash of the id keeps keys unique when that folds two ids together."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", image_id)
    if safe != image_id:
        safe = f"{safe}_{hashlib.sha1(image_id.encode()).hexdigest()[:8]}"
    return f"{safe}__{vlm}"


def vlm_stage(vlm: VlmConfig, config: RunConfig) -> Stage:
    """The answer stage of a Stage-based backend (vllm is a Ray Data LLM processor instead)."""
    if vlm.backend == "transformers":
        return TransformersVlm(vlm, config.prompt)
    if vlm.backend == "openai":
        return OpenAIVlm(vlm, config.prompt)
    return ProvidedConcepts(vlm)


def check_pool(config: RunConfig) -> PoolPaths:
    paths = PoolPaths(config.pool.dir.rstrip("/"))
    if not storage.exists(paths.sub("pool.json")):
        raise SonifyError(f"pool.dir {paths.root} holds no pool (no pool.json); build it with `run_pipeline.py pool` first")
    check_compatible(paths, clap_identity(config.models.clap), config)
    if config.mix.sample_rate not in config.pool.mix_sample_rates:
        raise SonifyError(
            f"mix.sample_rate {config.mix.sample_rate} is not among the pool's mix_sample_rates {config.pool.mix_sample_rates}"
        )
    if not storage.exists(paths.sub("index", "index.faiss")):
        raise SonifyError(f"pool {paths.root} has no index: it holds no non-silent clip")
    return paths


def _run_identity(config: RunConfig) -> dict:
    """What decides a run's output; where work runs (ray) and render settings do not."""
    return config.model_dump(mode="json", exclude={"ray", "render"})


def check_same_run(config: RunConfig, out: str) -> None:
    """Finished phases in sonify.out are reused, so they must come from the same settings."""
    url = storage.join(out, "config.yaml")
    if not storage.exists(url):
        return
    previous = validate_config(yaml.safe_load(storage.read_bytes(url)), origin=url)
    if _run_identity(previous) != _run_identity(config):
        raise SonifyError(
            f"sonify.out {out} holds a run made with other settings (see its config.yaml); "
            "use a new sonify.out, or delete the old run to start over"
        )


def read_phase(url: str, schema: pa.Schema) -> pa.Table:
    """A finished phase's table, refused if another version of the pipeline wrote it."""
    table = storage.read_parquet(url)
    if schema_version(table.schema) != schema_version(schema) or table.schema.names != schema.names:
        raise SonifyError(
            f"{url} was written under schema {schema_version(table.schema)} with columns {table.schema.names}; "
            f"this version writes {schema_version(schema)} with {schema.names}; use a new sonify.out"
        )
    return table


def _collect(dataset) -> pa.Table:
    tables = [b for b in dataset.iter_batches(batch_format="pyarrow", batch_size=None) if b.num_rows]
    return pa.concat_tables(tables) if tables else None


def run_scenes(config: RunConfig, refs: pa.Table, vlm: VlmConfig) -> pa.Table:
    import ray.data

    decode = DecodeImages(config.sonify.min_side, config.sonify.max_image_pixels)
    parse = ParseConcepts(vlm.name, config.prompt.max_answer_chars, config.prompt.max_concepts)
    dataset = ray.data.from_arrow(refs).repartition(max(1, min(refs.num_rows // 16, 1000)))
    dataset = apply_stage(dataset, lambda: decode)
    if vlm.backend == "vllm":
        check_chain(IMAGE_REFS, [decode])
        dataset = answer_with_vllm(dataset, vlm, config.prompt)
    else:
        answer = vlm_stage(vlm, config)
        check_chain(IMAGE_REFS, [decode, answer, parse])
        dataset = apply_stage(dataset, lambda: answer)
    scenes = _collect(apply_stage(dataset, lambda: parse))
    return (scenes if scenes is not None else SCENES.empty_table()).sort_by([("image_id", "ascending")])


def run_matches(config: RunConfig, paths: PoolPaths, texts: list[str]) -> pa.Table:
    import ray.data

    retrieve = RetrieveClips(paths.root, config.models.clap, config.retrieval.search_k)
    dataset = ray.data.from_arrow(pa.table({"text": texts})).repartition(max(1, min(len(texts) // 64, 1000)))
    matches = _collect(apply_stage(dataset, lambda: retrieve))
    return (matches if matches is not None else MATCHES.empty_table()).sort_by([("text", "ascending")])


def clip_loudness_at(paths: PoolPaths, rate: int) -> dict[str, float]:
    table = read_clips(paths, ["clip_id", "loudness_at_rates", "error"]).filter(pc.is_null(pc.field("error")))
    loudness = {}
    for clip_id, at_rates in zip(table.column("clip_id").to_pylist(), table.column("loudness_at_rates").to_pylist()):
        for entry in at_rates or []:
            if entry["sample_rate"] == rate and entry["lufs"] is not None:
                loudness[clip_id] = entry["lufs"]
    return loudness


def plan_samples(config: RunConfig, scenes: pa.Table, matches: pa.Table, clip_lufs: dict[str, float]) -> tuple[list[dict], list[dict], Counter]:
    """Manifest rows of every sample (audio fields still empty) and of every rejected scene."""
    found = {
        t: (ids, np.asarray(s, dtype=np.float64))
        for t, ids, s in zip(*[matches.column(c).to_pylist() for c in ("text", "clip_ids", "scores")])
    }
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
            "concepts": [],
            "dropped_concepts": scene["dropped_empty_concepts"] or 0,
        }
        if row["error"]:
            rejected.append(row)
            continue
        texts = [c["text"] for c in scene["concepts"]]
        choices = choose_clips(
            texts, found, config.seed, key, config.retrieval.k, config.retrieval.ssr, config.retrieval.min_cosine
        )
        kept = [(c, choice) for c, choice in zip(scene["concepts"], choices) if choice is not None]
        counts["concepts_below_min_cosine"] += len(choices) - len(kept)
        row["dropped_concepts"] += len(choices) - len(kept)
        if not kept:
            row["error"] = "dropped: no concept matched a pool clip above retrieval.min_cosine"
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


def shard_plans(samples: list[dict], scenes_bytes: dict[str, int], part_of: dict[str, str], config: RunConfig) -> pa.Table:
    """Samples to shards of about sonify.shard_size_mb, in key order. A shard holds one image
    extension only: Hugging Face datasets requires every sample of a tar to have the same members."""
    flac_estimate = int(config.mix.sample_rate * config.pool.clip_seconds * FLAC_BYTES_PER_SAMPLE)
    by_extension: dict[str, list[dict]] = {}
    for sample in samples:
        extension = image_extension(sample["image_uri"], sample["image_member"], sample["image_format"])
        by_extension.setdefault(extension, []).append(sample)
    groups: dict[str, list[dict]] = {}
    first = 0
    for extension in sorted(by_extension):
        members = by_extension[extension]
        sizes = [scenes_bytes.get(s["key"], 0) + flac_estimate for s in members]
        assignment = plan_shards(sizes, int(config.sonify.shard_size_mb * 1e6))
        for sample, index in zip(members, assignment):
            groups.setdefault(shard_id(first + index), []).append(sample)
        first += assignment[-1] + 1
    return plans_table({shard: pa.Table.from_pylist(rows, schema=MANIFEST) for shard, rows in groups.items()}, part_of)


def clip_parts(paths: PoolPaths) -> dict[str, str]:
    """clip_id -> the pool part holding its audio; read once on the driver."""
    table = read_clips(paths, ["clip_id", "part"])
    return dict(zip(table.column("clip_id").to_pylist(), table.column("part").to_pylist()))


def plans_table(shards: dict[str, pa.Table], part_of: dict[str, str]) -> pa.Table:
    """The write stage's work: each shard's manifest rows and where its pool clips are."""
    names, plans, clip_ids, parts = [], [], [], []
    for shard, rows in shards.items():
        used = sorted({c["clip_id"] for concepts in rows.column("concepts").to_pylist() for c in concepts})
        names.append(shard)
        plans.append(table_to_ipc(rows))
        clip_ids.append(used)
        parts.append([part_of[c] for c in used])
    return make_table(SHARD_PLANS, {"shard": names, "plan": plans, "clip_ids": clip_ids, "parts": parts})


def write_shards(config: RunConfig, paths: PoolPaths, out: str, plans: pa.Table) -> pa.Table | None:
    """Writes the shards not yet marked complete by their manifest part."""
    import ray.data

    done = {u.rsplit("/", 1)[-1].removesuffix(".parquet") for u in storage.list_files(storage.join(out, "manifest"), ".parquet")}
    todo = plans.filter(pc.invert(pc.is_in(plans.column("shard"), value_set=pa.array(sorted(done), pa.string()))))
    log.info("%d shards planned, %d already written", plans.num_rows, plans.num_rows - todo.num_rows)
    if not todo.num_rows:
        return None
    writer = WriteShards(paths.root, out, config.mix.peak_dbfs)
    dataset = ray.data.from_arrow(todo).repartition(todo.num_rows)
    return _collect(apply_stage(dataset, lambda: writer))


def run_sonify(config: RunConfig) -> dict:
    started = time.monotonic()
    out = config.sonify.out
    if not out:
        raise SonifyError("sonify.out is not set")
    if not config.models.vlm:
        raise SonifyError("models.vlm is empty: configure at least one VLM (or backend: provided)")
    paths = check_pool(config)
    out = out.rstrip("/")
    check_same_run(config, out)
    storage.makedirs(out)
    storage.write_text(storage.join(out, "config.yaml"), dump_config(config))
    seconds: dict[str, float] = {}

    tick = time.monotonic()
    refs = list_images(config.sonify.images)
    ids = assign_image_ids(refs)
    refs_table = make_table(
        IMAGE_REFS,
        {"image_id": ids, "uri": [r.uri for r in refs], "member": [r.member for r in refs], "error": [r.error for r in refs]},
    )
    seconds["list_images"] = time.monotonic() - tick
    log.info("%d images listed", len(refs))
    init_ray(config.ray)

    scenes_tables = []
    for vlm in config.models.vlm:
        url = storage.join(out, "scenes", f"{vlm.name}.parquet")
        tick = time.monotonic()
        if storage.exists(url):
            scenes_tables.append(read_phase(url, SCENES))
            continue
        scenes = run_scenes(config, refs_table, vlm)
        storage.write_parquet(url, scenes)
        scenes_tables.append(scenes)
        seconds[f"concepts_{vlm.name}"] = time.monotonic() - tick
    scenes = pa.concat_tables(scenes_tables)

    tick = time.monotonic()
    usable = scenes.filter(pc.and_(pc.is_null(scenes.column("error")), pc.is_null(scenes.column("dropped"))))
    texts = sorted({c["text"] for concepts in usable.column("concepts").to_pylist() for c in concepts})
    matches_url = storage.join(out, "matches.parquet")
    if storage.exists(matches_url):
        matches = read_phase(matches_url, MATCHES)
    else:
        matches = run_matches(config, paths, texts) if texts else MATCHES.empty_table()
        storage.write_parquet(matches_url, matches)
    seconds["retrieval"] = time.monotonic() - tick

    tick = time.monotonic()
    samples, rejected, counts = plan_samples(config, scenes, matches, clip_loudness_at(paths, config.mix.sample_rate))
    image_bytes = {sample_key(i, v): n or 0 for i, v, n in zip(*[scenes.column(c).to_pylist() for c in ("image_id", "vlm", "num_bytes")])}
    plans = shard_plans(samples, image_bytes, clip_parts(paths), config)
    storage.write_parquet(storage.join(out, "manifest", "rejected.parquet"), pa.Table.from_pylist(rejected, schema=MANIFEST))
    seconds["plan"] = time.monotonic() - tick

    tick = time.monotonic()
    write_shards(config, paths, out, plans)
    seconds["mix_and_write"] = time.monotonic() - tick

    manifest = read_manifest(out)
    written = manifest.filter(pc.is_null(manifest.column("error")))
    used = {c["clip_id"] for concepts in written.column("concepts").to_pylist() for c in concepts}
    image_rows = scenes.filter(pc.equal(scenes.column("vlm"), config.models.vlm[0].name))
    summary = {
        "out": out,
        "images": {
            "listed": len(refs),
            "errors": int(pc.sum(pc.equal(image_rows.column("error_stage"), "images")).as_py() or 0),
            "too_small": int(pc.sum(pc.equal(image_rows.column("dropped"), "too_small")).as_py() or 0),
        },
        "scenes": {
            vlm.name: dict(
                Counter(
                    (f"{stage}_error" if stage else d or "ok")
                    for stage, d, v in zip(*[scenes.column(c).to_pylist() for c in ("error_stage", "dropped", "vlm")])
                    if v == vlm.name
                )
            )
            for vlm in config.models.vlm
        },
        "concepts": int(sum(len(c or []) for c in usable.column("concepts").to_pylist())),
        "distinct_concept_texts": len(texts),
        "concepts_below_min_cosine": counts["concepts_below_min_cosine"],
        "threshold_fallbacks": counts["fallbacks"],
        "samples": written.num_rows,
        "rejected": manifest.num_rows - written.num_rows,
        "error_reasons": [r["error"] for r in rejected][:50],
        "distinct_clips_used": len(used),
        "shards": plans.num_rows,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "wall_seconds": round(time.monotonic() - started, 3),
    }
    storage.write_text(storage.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary


def read_manifest(out: str) -> pa.Table:
    urls = storage.list_files(storage.join(out, "manifest"), ".parquet")
    tables = [storage.read_parquet(u) for u in urls]
    return pa.concat_tables(tables) if tables else MANIFEST.empty_table()


def run_render(config: RunConfig) -> dict:
    """Rebuild shards and manifest from a manifest folder and the pool: no model is loaded."""
    started = time.monotonic()
    source, out = config.render.manifest, config.render.out
    if not source or not out:
        raise SonifyError("render needs render.manifest (a sonify run's manifest folder) and render.out")
    paths = PoolPaths(config.pool.dir.rstrip("/"))
    if not storage.exists(paths.sub("pool.json")):
        raise SonifyError(f"pool.dir {paths.root} holds no pool (no pool.json)")
    init_ray(config.ray)
    parts = [u for u in storage.list_files(source, ".parquet") if not u.endswith("rejected.parquet")]
    plans = plans_table(
        {u.rsplit("/", 1)[-1].removesuffix(".parquet"): storage.read_parquet(u).filter(pc.is_null(pc.field("error"))) for u in parts},
        clip_parts(paths),
    )
    results = write_shards(config, paths, out.rstrip("/"), plans)
    samples = int(pc.sum(results.column("samples")).as_py()) if results is not None else 0
    return {"out": out, "shards": plans.num_rows, "samples": samples, "wall_seconds": round(time.monotonic() - started, 3)}


def format_summary(summary: dict) -> str:
    images = summary["images"]
    lines = [
        f"sonify {summary['out']}",
        f"  manifest: {summary['out']}/manifest/*.parquet   shards: {summary['out']}/shards/*.tar ({summary['shards']})",
        f"  images:   {images['listed']} listed, {images['errors']} errors, {images['too_small']} too small",
    ]
    lines += [f"  scenes:   {name}: {json.dumps(counts, sort_keys=True)}" for name, counts in summary["scenes"].items()]
    lines += [
        f"  concepts: {summary['concepts']} ({summary['distinct_concept_texts']} distinct texts), "
        f"{summary['concepts_below_min_cosine']} below min_cosine",
        f"  samples:  {summary['samples']} written, {summary['rejected']} rejected, {summary['distinct_clips_used']} distinct clips used",
        f"  time:     {summary['wall_seconds']:.1f} s  " + ", ".join(f"{k} {v:.1f}s" for k, v in summary["seconds"].items()),
    ]
    return "\n".join(lines)

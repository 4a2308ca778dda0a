"""What a sonify run checks before it starts: the pool it retrieves from, and that a sonify.out it
resumes was made by the same settings, layout and pool."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
import yaml

from pipelines.config import ConfigError, validate_config
from pipelines.pool.store import PoolStore
from schemas import schema_version
from schemas.config import MapperVlmConfig, RunConfig
from schemas.errors import PipelineError
from schemas.layout import PoolLayout, SonifyLayout
from stages.embed.clap import clap_identity
from stages.embed.clip_image import clip_identity
from stages.embed.mapper import MapperError, check_identities, meta_of
from stages.io import storage
from stages.io.model_files import is_path_or_url

# Settings that decide where and how fast work runs, not what it computes: a resumed run may change them.
EXECUTION_SETTINGS = ("concurrency", "num_gpus", "num_cpus", "timeout_s", "retries")
# Retrieval settings that decide only what recall is measured, not which clips are found.
MEASUREMENT_SETTINGS = ("recall_sample", "recall_every")
# Pool settings that decide how the pool is built from its sources, which sonify never reads.
POOL_BUILD_SETTINGS = ("sources", "files_per_part", "retry_errors", "parquet", "metadata")
RESUME_REMEDY = "this version cannot resume that run: run sonify again into a new sonify.out"
RENDER_REMEDY = "render reads manifests of this version only: sonify the images again with this version"


class SonifyError(PipelineError):
    """A sonify run cannot start: a missing pool, a mismatched model, a missing setting."""


def check_pool(config: RunConfig) -> tuple[PoolLayout, dict]:
    """The pool's folder and the state of its index (parts and size), refused when sonify cannot use it."""
    paths = PoolLayout(config.pool.dir)
    store = PoolStore(paths)
    if not store.exists():
        raise SonifyError(
            f"pool.dir {paths.root} holds no pool (no pool.json); build it with `run_pipeline.py pool` first"
        )
    store.check_compatible(clap_identity(config.models.clap), config.pool)
    if config.mix.sample_rate not in config.pool.mix_sample_rates:
        raise SonifyError(
            f"mix.sample_rate {config.mix.sample_rate} is not among "
            f"the pool's mix_sample_rates {config.pool.mix_sample_rates}"
        )
    if not store.has_index():
        raise SonifyError(f"pool {paths.root} has no index: it holds no non-silent clip")
    if not store.index_is_current():
        raise SonifyError(
            f"pool {paths.root}: its index does not cover its parts (a pool run stopped before its index update?); "
            "run `run_pipeline.py pool` with the same config again"
        )
    index_meta = store.index_meta()
    return paths, {"index_size": index_meta["size"], "index_parts": index_meta["parts"]}


def check_mappers(config: RunConfig, pool: PoolLayout) -> dict | None:
    """The identities every mapper scene source (backend: mapper) must have been trained for, the
    pool's CLAP and models.clip's CLIP, checked against each checkpoint's meta before any work; None
    when no source is a mapper."""
    mappers = [v for v in config.models.vlm if isinstance(v, MapperVlmConfig)]
    if not mappers:
        return None
    identities = {"clap": PoolStore(pool).meta().get("clap") or {}, "clip": clip_identity(config.models.clip)}
    for mapper in mappers:
        try:
            if not storage.exists(mapper.checkpoint):
                raise MapperError(f"mapper checkpoint {mapper.checkpoint} does not exist")
            meta = meta_of(storage.read_bytes(mapper.checkpoint), mapper.checkpoint)
            check_identities(meta, mapper.checkpoint, identities["clap"], identities["clip"])
        except MapperError as exc:
            raise SonifyError(f"models.vlm {mapper.name}: {exc}") from None
    return identities


def check_batches(config: RunConfig) -> None:
    """A resumed run must batch each image with the same neighbours as an uninterrupted one: model
    outputs depend on batch composition through padding and kernel choice."""
    for i, vlm in enumerate(config.models.vlm):
        if config.sonify.images_per_chunk % vlm.batch_size:
            raise SonifyError(
                f"sonify.images_per_chunk ({config.sonify.images_per_chunk}) must be a multiple of "
                f"models.vlm.{i}.batch_size ({vlm.batch_size}), "
                "so that a resumed run batches images as an uninterrupted one"
            )


def _run_identity(config: RunConfig) -> dict:
    """What decides a run's output. Where work runs (ray, the models' execution settings), render and
    report settings and the grouping of the missing-sounds list do not, and neither does where the
    run itself is (sonify.out: a moved or copied run resumes), nor how the pool was built from its
    sources (pool.sources, files_per_part, retry_errors, parquet): the pool's content is checked on
    its own (check_pool, check_same_pool). Paths are compared resolved, so `dir/`, `./dir` and
    `/abs/dir` are one folder."""
    identity = config.model_dump(mode="json", exclude={"ray", "render", "report"})
    del identity["sonify"]["out"]
    # How the missing sounds are grouped: a rerun with other settings regroups them.
    del identity["sonify"]["missing_sounds"]
    for setting in POOL_BUILD_SETTINGS:
        del identity["pool"][setting]
    identity["pool"]["dir"] = storage.resolved_url(identity["pool"]["dir"])
    identity["sonify"]["images"] = [storage.resolved_url(pattern) for pattern in identity["sonify"]["images"]]
    models = identity["models"]
    for model in [models["clap"], *(models[name] for name in ("clip", "ast") if models.get(name)), *models["vlm"]]:
        for setting in EXECUTION_SETTINGS:
            model.pop(setting, None)
        for setting in ("model", "path", "text_backbones_dir", "checkpoint"):
            if model.get(setting) and is_path_or_url(model[setting]):
                model[setting] = storage.resolved_url(model[setting])
    for setting in MEASUREMENT_SETTINGS:
        identity["retrieval"].pop(setting)
    return identity


def _differences(before: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two identities."""
    if isinstance(before, dict) and isinstance(now, dict):
        names = sorted(set(before) | set(now))
        return [d for k in names for d in _differences(before.get(k), now.get(k), f"{prefix}{k}.")]
    if isinstance(before, list) and isinstance(now, list) and len(before) == len(now):
        return [d for i, (b, n) in enumerate(zip(before, now)) for d in _differences(b, n, f"{prefix}{i}.")]
    return [] if before == now else [prefix.rstrip(".")]


def check_same_run(config: RunConfig, layout: SonifyLayout) -> None:
    """Finished phases in sonify.out are reused, so they must come from the same settings and the
    same layout of files."""
    out = layout.root
    url = layout.config()
    if not storage.exists(url):
        # Every run writes its dataset card there: a README.md that no run wrote is the user's.
        if storage.exists(layout.card()):
            raise SonifyError(
                f"sonify.out {out} holds a README.md that no sonify run wrote ({layout.card()}), and each run "
                "writes its dataset card there: use another sonify.out, or move that file"
            )
        return
    layout_url = layout.layout_version()
    layout = json.loads(storage.read_bytes(layout_url)).get("layout") if storage.exists(layout_url) else None
    if layout != SonifyLayout.VERSION:
        raise SonifyError(
            f"sonify.out {out} was written by a version of this pipeline with another file layout "
            f"({layout or 'before layout.json'}, this one writes {SonifyLayout.VERSION}); use a new sonify.out"
        )
    try:
        previous = validate_config(yaml.safe_load(storage.read_bytes(url)), origin=url)
    except ConfigError as exc:
        raise SonifyError(f"{exc}; {RESUME_REMEDY}") from None
    differing = _differences(_run_identity(previous), _run_identity(config))
    if differing:
        raise SonifyError(
            f"sonify.out {out} holds a run made with other settings ({', '.join(differing)} differ; see its "
            "config.yaml); use a new sonify.out, or delete the old run to start over"
        )


def render_origin(config: RunConfig, manifest_urls: list[str]) -> dict:
    """What decides the files of a render.out: the manifest's content (its parts, by name and SHA-256)
    and the settings its shards are written with. The pool is named by the manifest: clip ids carry
    a hash of their content."""
    parts = [[url.rsplit("/", 1)[-1], storage.sha256_of(url)] for url in manifest_urls]
    settings = config.sonify.model_dump(include={"image_format", "image_quality", "max_image_side", "max_image_pixels"})
    return {
        "manifest_sha256": hashlib.sha256(json.dumps(parts).encode()).hexdigest(),
        "settings": {**settings, "peak_dbfs": config.mix.peak_dbfs},
    }


def check_render_out(layout: SonifyLayout, origin: dict) -> None:
    """A render.out holds the shards of one manifest rendered with one setting, never a mix. The
    origin is recorded in layout.json before any file is written, so a render stopped midway
    resumes; a folder holding files of another origin, or of none recorded, is refused naming why."""
    out = layout.root
    url = layout.layout_version()
    recorded = json.loads(storage.read_bytes(url)) if storage.exists(url) else {}
    made = recorded.get("render")
    if recorded.get("layout") == SonifyLayout.VERSION and made == origin:
        return
    found = [name for folder in layout.shard_folders() for name in storage.list_files(folder, "")]
    if not found:
        storage.write_text(url, json.dumps({"layout": SonifyLayout.VERSION, "render": origin}, sort_keys=True) + "\n")
        return
    if not recorded:
        why = f"{len(found)} files (first: {found[0]}) of an origin it does not record (no layout.json)"
    elif made is None or recorded.get("layout") != SonifyLayout.VERSION:
        why = "shards made by a sonify run or by another version of this pipeline"
    elif made.get("manifest_sha256") != origin["manifest_sha256"]:
        why = "shards made from another manifest"
    else:
        why = "shards made with other settings (" + ", ".join(_differences(made["settings"], origin["settings"]))
        why += " differ)"
    raise SonifyError(f"render.out {out} holds {why}; use a new render.out, or delete it to render this manifest there")


def has_searched(layout: SonifyLayout) -> bool:
    """Whether retrieval has finished any chunk of the run in sonify.out."""
    return bool(storage.list_files(layout.matches_folder(), ".json"))


def check_same_pool(layout: SonifyLayout, pool_root: str, pool_state: dict) -> None:
    """Matches, plans and shards name pool clips: once retrieval has run, a pool extended or pruned
    since would be mixed with stale choices, or lack the clips they name. Before that nothing in
    sonify.out depends on the pool (scenes do not), so the state is recorded anew."""
    url = layout.pool_state()
    if not has_searched(layout):
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
            f"pool {pool_root} is not the pool sonify.out {layout.root} retrieved from "
            f"({then}; now {pool_state['index_size']} clips "
            f"in {len(pool_state['index_parts'])} parts): delete its matches/, plans/, manifest/ and shards/ to match "
            "its VLM scenes against this pool, or use a new sonify.out"
        )


def read_phase(url: str, schema: pa.Schema, remedy: str = RESUME_REMEDY) -> pa.Table:
    """A finished phase's table, refused with `remedy` if another version of the pipeline wrote it."""
    table = storage.read_parquet(url)
    if schema_version(table.schema) != schema_version(schema) or table.schema.names != schema.names:
        raise SonifyError(
            f"{url} was written under schema {schema_version(table.schema)} with columns {table.schema.names}; "
            f"this version writes {schema_version(schema)} with {schema.names}; {remedy}"
        )
    return table

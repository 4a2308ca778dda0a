"""What a sonify run checks before it starts: the pool it retrieves from, and that a sonify.out it
resumes was made by the same settings, layout and pool."""

from __future__ import annotations

import json

import pyarrow as pa
import yaml

from pipelines.config import validate_config
from pipelines.pool import check_compatible, embedded_parts
from schemas import schema_version
from schemas.config import RunConfig
from schemas.errors import PipelineError
from schemas.layout import PoolLayout, SonifyLayout
from stages.embed.clap import clap_identity
from stages.io import storage

# The files a run keeps in sonify.out; a folder of another layout is refused.
# 1: scenes/<vlm>.parquet and manifest/rejected.parquet; 2: per chunk, with images.parquet and plans/;
# 3: one image member name for every sample (sonify.image_format), shards no longer split by format;
# 4: matches and shard plans per chunk (matches/, plans/CCCCCC-PPPPPP.parquet), mix_clips.parquet;
# 5: hubness/ (the bank and the clips' biases), corrected scores in matches and manifest.
LAYOUT_VERSION = 5
# Settings that decide where and how fast work runs, not what it computes: a resumed run may change them.
EXECUTION_SETTINGS = ("concurrency", "num_gpus", "num_cpus", "timeout_s", "retries")
# Retrieval settings that decide only what recall is measured, not which clips are found.
MEASUREMENT_SETTINGS = ("recall_sample", "recall_every")
RESUME_REMEDY = "this version cannot resume that run: run sonify again into a new sonify.out"
RENDER_REMEDY = "render reads manifests of this version only: sonify the images again with this version"


class SonifyError(PipelineError):
    """A sonify run cannot start: a missing pool, a mismatched model, a missing setting."""


def check_pool(config: RunConfig) -> tuple[PoolLayout, dict]:
    """The pool's folder and the state of its index (parts and size), refused when sonify cannot use it."""
    paths = PoolLayout(config.pool.dir.rstrip("/"))
    if not storage.exists(paths.pool_meta()):
        raise SonifyError(
            f"pool.dir {paths.root} holds no pool (no pool.json); build it with `run_pipeline.py pool` first"
        )
    check_compatible(paths, clap_identity(config.models.clap), config)
    if config.mix.sample_rate not in config.pool.mix_sample_rates:
        raise SonifyError(
            f"mix.sample_rate {config.mix.sample_rate} is not among "
            f"the pool's mix_sample_rates {config.pool.mix_sample_rates}"
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
                f"models.vlm.{i}.batch_size ({vlm.batch_size}), "
                "so that a resumed run batches images as an uninterrupted one"
            )


def _run_identity(config: RunConfig) -> dict:
    """What decides a run's output; where work runs (ray, the models' execution settings), render
    and report settings do not."""
    identity = config.model_dump(mode="json", exclude={"ray", "render", "report"})
    for model in [identity["models"]["clap"], *identity["models"]["vlm"]]:
        for setting in EXECUTION_SETTINGS:
            model.pop(setting, None)
    for setting in MEASUREMENT_SETTINGS:
        identity["retrieval"].pop(setting)
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


def has_searched(out: str) -> bool:
    """Whether retrieval has finished any chunk of the run in sonify.out."""
    return bool(storage.list_files(SonifyLayout(out).matches_folder(), ".json"))


def check_same_pool(out: str, pool_root: str, pool_state: dict) -> None:
    """Matches, plans and shards name pool clips: once retrieval has run, a pool extended or pruned
    since would be mixed with stale choices, or lack the clips they name. Before that nothing in
    sonify.out depends on the pool (scenes do not), so the state is recorded anew."""
    url = SonifyLayout(out).pool_state()
    if not has_searched(out):
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
            f"pool {pool_root} is not the pool sonify.out {out} retrieved from "
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

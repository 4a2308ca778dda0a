"""The writing phase: each planned shard mixed and written by a worker, its manifest part written
last as its completion marker; and render, which rebuilds shards from a released manifest."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.pool.store import PoolStore
from pipelines.progress import Progress, pending
from pipelines.ray_runner import Runner
from pipelines.sonify.checks import RENDER_REMEDY, SonifyError, check_render_out, read_phase, render_origin
from pipelines.sonify.credits import write_attribution
from schemas import MANIFEST, MANIFEST_POOL_READS, SHARD_TASKS, make_table
from schemas.config import FEATURE_MODELS, MapperVlmConfig, RunConfig
from schemas.layout import PoolLayout, SonifyLayout
from stages.base import Stage
from stages.embed.ast_audio import ast_identity
from stages.embed.clap import clap_identity
from stages.embed.clip_image import clip_identity
from stages.embed.shard_features_stage import FEATURE_STAGES, AlignImageAudio
from stages.images.decoding import ImageEncoding
from stages.io import storage
from stages.pairing.planning import WRITE_TIME_COLUMNS, clip_locations, shard_plan
from stages.pairing.shard_stage import MixShards, WriteMixedShards, WriteShards

log = logging.getLogger(__name__)


def write_shards(config: RunConfig, pool: PoolLayout, layout: SonifyLayout, tasks: pa.Table) -> pa.Table | None:
    """Writes the shards of `tasks` (SHARD_TASKS) not yet marked complete by their manifest part."""
    done = {storage.file_stem(u) for u in storage.list_files(layout.manifest_folder(), ".parquet")}
    shards = pending("shards", tasks.column("shard").to_pylist(), done.__contains__, unit="shards")
    if not shards:
        return None
    todo = tasks.filter(pc.is_in(tasks.column("shard"), value_set=pa.array(shards, pa.string())))
    encoding = ImageEncoding(
        config.sonify.image_format,
        config.sonify.image_quality,
        config.sonify.max_image_side,
        config.sonify.max_image_pixels,
    )
    results, progress = [], Progress("shards", todo.num_rows, "shards")
    stages = shard_stages(config, pool, layout, encoding)
    for batch in Runner(config.ray).run(todo, stages, blocks=todo.num_rows):
        results.append(batch)
        progress.advance(batch.num_rows)
    return pa.concat_tables(results)


# The features the image_audio score is computed from, whether or not sonify.features writes them.
ALIGNMENT_FEATURES = ("clap_audio", "clip_image")


def shard_stages(config: RunConfig, pool: PoolLayout, layout: SonifyLayout, encoding: ImageEncoding) -> list[Stage]:
    """One stage that mixes and writes each shard; with sonify.features or a mapper, mixing, a stage
    per feature model, the image_audio score (with a mapper), and writing, each shard passing between
    them as one row. A mapper's score needs clap_audio and clip_image: they are computed even where
    sonify.features does not ask for them, and only those it asks for are written."""
    written = tuple(config.sonify.features)
    floors = config.sonify.min_alignment.model_dump()
    mapper = alignment_mapper(config)
    features = written + (tuple(f for f in ALIGNMENT_FEATURES if f not in written) if mapper else ())
    if not features:
        return [WriteShards(pool, layout, config.mix.peak_dbfs, encoding, floors)]
    identities = feature_identities(config, features)
    stages: list[Stage] = [MixShards(pool, config.mix.peak_dbfs, encoding)]
    for i, feature in enumerate(features):
        model = getattr(config.models, FEATURE_MODELS[feature])
        stages.append(FEATURE_STAGES[feature](model, identities[feature]["dim"], features[:i]))
    if mapper:
        clap = PoolStore(pool).meta().get("clap") or {}
        stages.append(AlignImageAudio(mapper, features, clap, identities["clip_image"]))
    return [*stages, WriteMixedShards(layout, written, mapper is not None, floors)]


def alignment_mapper(config: RunConfig) -> MapperVlmConfig | None:
    """The mapper that scores each written sample's image_audio: the first models.vlm entry of backend
    mapper (several mappers would give several scores, and one column holds one); None without one."""
    return next((v for v in config.models.vlm if isinstance(v, MapperVlmConfig)), None)


def feature_identities(config: RunConfig, features: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Each feature's model (those of sonify.features unless `features` is given): its name, width and
    checkpoint content, read without loading it."""
    identify = {"clap_audio": clap_identity, "ast": ast_identity, "clip_image": clip_identity}
    return {
        feature: identify[feature](getattr(config.models, FEATURE_MODELS[feature]))
        for feature in (config.sonify.features if features is None else features)
    }


@dataclass
class ManifestCounts:
    samples: int
    samples_by_split: Counter  # split -> written samples (None without splits)
    failed_by_kind: Counter
    clip_uses: Counter  # clip_id -> concepts of written samples that chose it
    pool_reads: Counter  # MANIFEST_POOL_READS summed over the shards
    generated_concepts: int  # concepts of written samples whose clip is generated
    alignment: dict  # ALIGNMENT_SCORES -> ScoreTotals over the written samples


# The per-sample alignment scores of the manifest (docs/mapper.md#alignment-scores).
ALIGNMENT_SCORES = ("text_audio", "image_audio")


@dataclass
class ScoreTotals:
    """Count, sum, minimum and maximum of one score, added to part by part."""

    samples: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None

    def add(self, values: pa.ChunkedArray) -> None:
        valid = values.drop_null()
        if not len(valid):
            return
        self.samples += len(valid)
        self.total += pc.sum(valid).as_py()
        bounds = pc.min_max(valid).as_py()
        self.low = bounds["min"] if self.low is None else min(self.low, bounds["min"])
        self.high = bounds["max"] if self.high is None else max(self.high, bounds["max"])

    def summary(self) -> dict:
        """The score's samples (those with it), mean, min and max; the three null when none has it."""
        mean = self.total / self.samples if self.samples else None
        return {"samples": self.samples, "mean": mean, "min": self.low, "max": self.high}


def manifest_counts(layout: SonifyLayout) -> ManifestCounts:
    """What the manifest parts add up to, read part by part."""
    samples = 0
    alignment = {name: ScoreTotals() for name in ALIGNMENT_SCORES}
    by_split: Counter = Counter()
    failed: Counter = Counter()
    reads: Counter = Counter()
    used: Counter = Counter()
    generated = 0
    for url in storage.list_files(layout.manifest_folder(), ".parquet"):
        if layout.is_rejected(url):
            continue
        table = storage.read_parquet(url, columns=["concepts", "split", *ALIGNMENT_SCORES, "error", "error_kind"])
        ok = table.filter(pc.is_null(table.column("error")))
        samples += ok.num_rows
        for name, totals in alignment.items():
            totals.add(ok.column(name))
        by_split.update(ok.column("split").to_pylist())
        metadata = table.schema.metadata or {}
        reads.update({k: int(metadata[k.encode()]) for k in MANIFEST_POOL_READS if k.encode() in metadata})
        failed.update(table.filter(pc.is_valid(table.column("error"))).column("error_kind").to_pylist())
        concepts = [c for row in ok.column("concepts").to_pylist() for c in row]
        used.update(c["clip_id"] for c in concepts)
        generated += sum(bool(c["generated"]) for c in concepts)
    return ManifestCounts(samples, by_split, failed, used, reads, generated, alignment)


def run_render(config: RunConfig) -> dict:
    """Rebuild shards and manifest from a manifest folder and the pool: no model is loaded but those of
    sonify.features, whose vectors go into the shards as in sonify. Each
    manifest part becomes the plan file of its shard, one part in memory at a time."""
    started = time.monotonic()
    source, out = config.render.manifest, config.render.out
    if not source or not out:
        raise SonifyError("render needs render.manifest (a sonify run's manifest folder) and render.out")
    paths = PoolLayout(config.pool.dir)
    store = PoolStore(paths)
    if not store.exists():
        raise SonifyError(f"pool.dir {paths.root} holds no pool (no pool.json)")
    layout = SonifyLayout(out)
    manifest_urls = storage.list_files(source, ".parquet")
    check_render_out(layout, render_origin(config, manifest_urls))
    storage.remove_temporaries(layout.shard_folders())
    # Read at the first manifest part that is rendered, so that a manifest of another version is
    # refused for what it is before the pool is looked at.
    pool_clips, pool_rates = None, None
    shards = []
    for url in manifest_urls:
        shard = storage.file_stem(url)
        if layout.is_rejected(url):
            continue
        rows = read_phase(url, MANIFEST, RENDER_REMEDY).filter(pc.is_null(pc.field("error")))
        if not rows.num_rows:
            log.warning("render: %s holds no sample (every row an error), so shard %s is not rebuilt", url, shard)
            continue
        # What the shard writer measures is measured again, as for a plan sonify makes.
        for column in WRITE_TIME_COLUMNS:
            rows = rows.set_column(
                rows.schema.get_field_index(column),
                rows.schema.field(column),
                pa.nulls(rows.num_rows, rows.schema.field(column).type),
            )
        rates = pc.unique(rows.column("sample_rate")).to_pylist()
        if len(rates) != 1:
            raise SonifyError(f"{url} mixes samples at several rates ({rates}); a shard is mixed at one rate")
        if pool_clips is None:
            pool_rates = store.meta()["mix_sample_rates"]
            pool_clips = store.clips(["clip_id", "part", "loudness_at_rates"])
        # A manifest is mixed again at its own rate, from the pool's copy at that rate.
        if rates[0] not in pool_rates:
            raise SonifyError(
                f"render: {url} was mixed at {rates[0]} Hz, "
                f"and pool {paths.root} holds clips at its mix rates {pool_rates} only"
            )
        used = [c["clip_id"] for concepts in rows.column("concepts").to_pylist() for c in concepts]
        locations = clip_locations(pool_clips, rates[0], used)
        storage.write_parquet(layout.plan(shard), shard_plan(rows, locations))
        shards.append(shard)
    tasks = make_table(SHARD_TASKS, {"shard": shards, "plan_url": [layout.plan(s) for s in shards]})
    results = write_shards(config, paths, layout, tasks)
    samples = int(pc.sum(results.column("samples")).as_py()) if results is not None else 0
    credits = write_attribution(layout)
    return {
        "out": layout.root,
        "shards": len(shards),
        "samples": samples,
        "clips_credited": credits["credited_clips"],
        "images_credited": credits["credited_images"],
        "wall_seconds": round(time.monotonic() - started, 3),
    }

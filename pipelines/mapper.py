"""train-mapper: image-audio pairs -> CLIP and CLAP embeddings -> a trained CLIP -> CLAP mapper.

The pair files are cut into blocks of mapper.pairs_per_block pairs; Ray reads each block, CLIP
embeds its images and the pool's CLAP its audio in actor pools, and the driver keeps only the two
float32 vectors of each pair (and its key). The pairs are put in key order before training, so the
same pairs (embedded in the same blocks and batches) train the same mapper however Ray ordered the
blocks. The checkpoint records the CLIP
and CLAP it was trained with and its metrics (stages.embed.mapper); pairs that failed are counted,
shown, and listed with their reasons beside the checkpoint.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from pipelines.config import ConfigError
from pipelines.pool.store import PoolStore
from pipelines.ray_runner import Runner
from schemas.base import make_table
from schemas.config import RunConfig
from schemas.mapper import PAIR_BLOCKS
from stages.embed.clap import clap_identity, same_clap
from stages.embed.clip_image import clip_identity
from stages.embed.embed_pairs_stage import EmbedPairAudio, EmbedPairImages, rows_of
from stages.embed.mapper import MapperError, TrainingSettings, format_metrics, mapper_meta, save_mapper, split_and_train
from stages.io import storage
from stages.io.pairs import PairSourceError, block_count
from stages.io.read_pairs_stage import ReadPairs
from stages.io.sources import expand_sources

log = logging.getLogger(__name__)

FAILURES_SHOWN = 10


def failed_pairs_url(checkpoint: str) -> str:
    """Where the pairs that could not be used are listed: beside the checkpoint."""
    folder, _, name = checkpoint.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{folder}/{stem}.failed.parquet" if folder else f"{stem}.failed.parquet"


def check_pool_clap(config: RunConfig, clap: dict) -> None:
    """The mapper maps into the pool's CLAP space: a pool built with another CLAP is refused now,
    before any pair is embedded. A pool.dir that holds no pool yet constrains nothing."""
    store = PoolStore.at(config.pool.dir)
    if store.exists():
        recorded = store.meta().get("clap") or {}
        if not same_clap(recorded, clap):
            raise MapperError(
                f"pool {store.root} was built with CLAP {recorded}, but models.clap is {clap}: a mapper must map "
                "into the pool's CLAP space; set models.clap to the pool's CLAP"
            )


def pair_blocks(config: RunConfig) -> pa.Table:
    """One row per block of pairs of every pair file; a pattern that matches nothing or a file that
    cannot be read stops the run here, naming it."""
    files, empty = expand_sources(config.mapper.pairs)
    if empty:
        raise MapperError(f"mapper.pairs: {', '.join(empty)} matched no file")
    bad = [f.error for f in files if f.error]
    if bad:
        raise MapperError(f"mapper.pairs: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    rows = []
    for found in files:
        try:
            m = config.mapper
            blocks = block_count(found.uri, m.pairs_per_block, m.image_column, m.audio_column, m.key_column)
            rows += [{"url": found.uri, "block": b} for b in range(blocks)]
        except PairSourceError as exc:
            raise MapperError(f"mapper.pairs: {exc}") from None
    if not rows:
        raise MapperError(f"mapper.pairs: the files {[f.uri for f in files]} hold no pairs")
    return make_table(PAIR_BLOCKS, {name: [r[name] for r in rows] for name in PAIR_BLOCKS.names})


def train_mapper(config: RunConfig) -> dict:
    mapper = config.mapper
    for key in ("pairs", "checkpoint"):
        if not getattr(mapper, key):
            raise ConfigError(f"mapper.{key}: required by `train-mapper`, and not set")
    clap, clip = clap_identity(config.models.clap), clip_identity(config.models.clip)
    check_pool_clap(config, clap)
    blocks = pair_blocks(config)
    stages = [
        ReadPairs(mapper),
        EmbedPairImages(config.models.clip, clip["dim"]),
        EmbedPairAudio(config.models.clap, clip["dim"], clap["dim"]),
    ]
    keys: list[str] = []
    sources: list[str] = []
    image_parts: list[np.ndarray] = []
    audio_parts: list[np.ndarray] = []
    failed: dict[str, list[str]] = {"key": [], "source": [], "error": []}
    for batch in Runner(config.ray).run(blocks, stages, blocks=blocks.num_rows):
        errors = batch.column("error").to_pylist()
        good = [i for i, e in enumerate(errors) if e is None]
        batch_keys, batch_sources = batch.column("key").to_pylist(), batch.column("source").to_pylist()
        keys += [batch_keys[i] for i in good]
        sources += [batch_sources[i] for i in good]
        image_parts.append(rows_of(batch.column("image_embedding"), good, clip["dim"]))
        audio_parts.append(rows_of(batch.column("audio_embedding"), good, clap["dim"]))
        for i, error in enumerate(errors):
            if error is not None:
                failed["key"].append(batch_keys[i])
                failed["source"].append(batch_sources[i])
                failed["error"].append(error)
    # Blocks arrive in whatever order Ray finishes them; by key (then file, for a key two files
    # share) the same pairs always train in the same order.
    order = sorted(range(len(keys)), key=lambda i: (keys[i], sources[i]))
    images = np.concatenate(image_parts)
    image_parts.clear()
    images = images[order]
    audio = np.concatenate(audio_parts)
    audio_parts.clear()
    audio = audio[order]
    keys = [keys[i] for i in order]
    log.info("embedded %d pairs (%d failed); training the mapper", len(keys), len(failed["key"]))
    settings = TrainingSettings(
        hidden_dim=mapper.hidden_dim,
        blocks=mapper.blocks,
        epochs=mapper.epochs,
        batch_size=mapper.batch_size,
        learning_rate=mapper.learning_rate,
        weight_decay=mapper.weight_decay,
        contrastive_weight=mapper.contrastive_weight,
        temperature=mapper.temperature,
        seed=config.seed,
    )
    model, metrics = split_and_train(keys, images, audio, settings, mapper.validation_fraction)
    pairs = {"embedded": len(keys), "failed": len(failed["key"]), "validation_fraction": mapper.validation_fraction}
    meta = mapper_meta(settings, model, clip, clap, pairs, metrics)
    save_mapper(mapper.checkpoint, model, meta)
    failures_url = failed_pairs_url(mapper.checkpoint)
    if failed["key"]:
        storage.write_parquet(failures_url, pa.table(failed))
    elif storage.exists(failures_url):
        storage.remove(failures_url)  # an earlier run's list; this run used every pair
    return {"checkpoint": mapper.checkpoint, "meta": meta, "failed": failed["error"], "failed_url": failures_url}


def format_summary(result: dict) -> str:
    meta = result["meta"]
    clip, clap = meta["clip"], meta["clap"]
    lines = [
        f"mapper: {result['checkpoint']}",
        f"CLIP {clip['model']} ({clip['dim']}-d) -> CLAP {clap['model']} ({clap['dim']}-d)",
        f"pairs: {meta['pairs']['embedded']} embedded, {meta['pairs']['failed']} failed",
        format_metrics(meta["metrics"]),
    ]
    if result["failed"]:
        lines.append(f"failed pairs (all {len(result['failed'])} in {result['failed_url']}):")
        lines += [f"  {error}" for error in result["failed"][:FAILURES_SHOWN]]
    return "\n".join(lines)

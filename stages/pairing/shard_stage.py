"""The shard stage: each planned shard's samples mixed from the pool and written with their images
(stages.pairing.shards)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from schemas import MANIFEST, MANIFEST_POOL_READS, SHARD_PLANS, SHARD_RESULTS, SHARD_TASKS, make_table
from schemas.layout import PoolLayout, SonifyLayout, shard_file
from stages.audio import loudness
from stages.audio.mixing import ClipLocation, load_pool_clips, mix_sources
from stages.audio.packs import PCM16_SCALE, encode_flac, quantize_pcm16
from stages.base import Resources, Stage
from stages.errors import BadInput, error_text
from stages.images.decoding import ImageEncoding, read_image_bytes, shard_image
from stages.images.listing import ImageRef
from stages.io import storage
from stages.pairing.shards import sample_metadata, write_shard


class WriteShards(Stage):
    """Reads one shard's plan file, mixes its samples and writes `shards/NNNNNN.tar`, then
    `manifest/NNNNNN.parquet`, which marks the shard complete. Rendering a released manifest runs
    this same stage, so its audio is bit-identical to the original run (and its images too, under
    the same image encoding and Pillow)."""

    name: ClassVar[str] = "write_shards"
    required_columns: ClassVar[tuple[str, ...]] = tuple(SHARD_TASKS.names)

    def __init__(self, pool: PoolLayout, layout: SonifyLayout, peak_dbfs: float, image_encoding: ImageEncoding) -> None:
        self.pool = pool
        self.layout = layout
        self.peak_dbfs = peak_dbfs
        self.image_encoding = image_encoding

    def resources(self) -> Resources:
        return Resources(num_cpus=1, batch_size=1)

    def output_schema(self) -> pa.Schema:
        return SHARD_RESULTS

    def process_batch(self, batch: pa.Table) -> pa.Table:
        results = []
        for task in batch.to_pylist():
            plan = make_table(SHARD_PLANS, storage.read_parquet(task["plan_url"]))
            results.append(self.write_shard(task["shard"], plan))
        return make_table(SHARD_RESULTS, {name: [r[name] for r in results] for name in SHARD_RESULTS.names})

    def write_shard(self, shard: str, plan: pa.Table) -> dict:
        """Mixes and writes the samples of a plan (SHARD_PLANS rows)."""
        rows = sorted(plan.to_pylist(), key=lambda r: r["key"])
        located: dict[str, ClipLocation] = {}
        for row in rows:
            for concept, where in zip(row["concepts"], row.pop("clip_locations")):
                located[concept["clip_id"]] = ClipLocation(
                    concept["clip_id"], where["part"], where["offset"], where["size"]
                )
        images = read_image_bytes([ImageRef(r["image_uri"], r["image_member"], r["image_id"]) for r in rows])
        rate = rows[0]["sample_rate"]
        clips, pool_bytes_read = load_pool_clips(self.pool.root, sorted(located.values()), rate)
        samples, errors = [], 0
        for row, image in zip(rows, images):
            row["shard"] = shard_file(shard)
            if isinstance(image, BadInput):
                row["error"], row["error_kind"] = (
                    error_text(row["image_uri"], str(image), row["image_member"]),
                    image.kind,
                )
                errors += 1
                continue
            try:
                stored = shard_image(image, row["image_format"], (row["width"], row["height"]), self.image_encoding)
            except BadInput as exc:
                row["error"], row["error_kind"] = error_text(row["image_uri"], str(exc), row["image_member"]), exc.kind
                errors += 1
                continue
            gains = np.array([c["gain_db"] for c in row["concepts"]])
            mixed = mix_sources([clips[c["clip_id"]] for c in row["concepts"]], gains, self.peak_dbfs)
            pcm = quantize_pcm16(mixed.audio)
            stored_audio = pcm.astype(np.float32) / PCM16_SCALE
            mix_lufs = loudness.integrated_lufs(stored_audio, rate)
            if mix_lufs is None:
                # Sources that cancel out (a recording and its polarity-inverted copy) leave no sound to pair.
                reason = f"the mix of {len(row['concepts'])} sources is digital silence"
                row["error"], row["error_kind"] = (
                    error_text(row["image_uri"], reason, row["image_member"]),
                    "silent_mix",
                )
                errors += 1
                continue
            row["mix_gain_db"] = mixed.mix_gain_db
            row["mix_lufs"] = mix_lufs
            row["mix_peak_dbfs"] = loudness.peak_dbfs(stored_audio)
            row["duration_s"] = pcm.size / rate
            row["shard_image_extension"] = stored.extension
            row["shard_image_width"], row["shard_image_height"] = stored.width, stored.height
            members = {stored.extension: stored.data, "flac": encode_flac(pcm, rate), "json": sample_metadata(row)}
            samples.append((row["key"], members))
        size = write_shard(self.layout.shard(shard), samples)
        reads = dict(zip(MANIFEST_POOL_READS, (pool_bytes_read, sum(clip.size for clip in located.values()))))
        manifest = make_table(MANIFEST, {name: [r[name] for r in rows] for name in MANIFEST.names})
        manifest = manifest.replace_schema_metadata(
            {**manifest.schema.metadata, **{k: str(v) for k, v in reads.items()}}
        )
        storage.write_parquet(self.layout.manifest(shard), manifest)
        return {"shard": shard, "samples": len(samples), "errors": errors, "num_bytes": size, **reads}

"""The shard stages: each planned shard's samples mixed from the pool and written with their images
(stages.pairing.shards), in one stage, or in two with the feature stages between them."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from schemas import MANIFEST, MANIFEST_POOL_READS, MIXED_SHARDS, SHARD_PLANS, SHARD_RESULTS, SHARD_TASKS, make_table
from schemas.layout import PoolLayout, SonifyLayout, shard_file
from stages.audio import loudness
from stages.audio.mixing import ClipLocation, load_pool_clips, mix_sources
from stages.audio.packs import PCM16_SCALE, encode_flac, quantize_pcm16
from stages.base import Resources, Stage
from stages.errors import BadInput, error_text
from stages.images.decoding import ImageEncoding, read_image_bytes, shard_image
from stages.images.listing import ImageRef
from stages.io import storage
from stages.pairing.shards import LOW_ALIGNMENT, below_floor, sample_metadata, text_audio_score, write_shard


class ShardMixer:
    """Mixes the samples of a shard plan from the pool and encodes their members, writing nothing."""

    def __init__(self, pool: PoolLayout, peak_dbfs: float, image_encoding: ImageEncoding) -> None:
        self.pool = pool
        self.peak_dbfs = peak_dbfs
        self.image_encoding = image_encoding

    def mix(self, shard: str, plan: pa.Table) -> dict:
        """A MIXED_SHARDS row of the samples of a plan (SHARD_PLANS rows): each written sample's
        members, and the manifest rows of all, a sample that cannot be written with its error."""
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
        samples = []
        for row, image in zip(rows, images):
            row["shard"] = shard_file(shard)
            row["text_audio"] = text_audio_score(row["concepts"])
            if isinstance(image, BadInput):
                row["error"], row["error_kind"] = (
                    error_text(row["image_uri"], str(image), row["image_member"]),
                    image.kind,
                )
                continue
            try:
                stored = shard_image(image, row["image_format"], (row["width"], row["height"]), self.image_encoding)
            except BadInput as exc:
                row["error"], row["error_kind"] = error_text(row["image_uri"], str(exc), row["image_member"]), exc.kind
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
                continue
            row["mix_gain_db"] = mixed.mix_gain_db
            row["mix_lufs"] = mix_lufs
            row["mix_peak_dbfs"] = loudness.peak_dbfs(stored_audio)
            row["duration_s"] = pcm.size / rate
            row["shard_image_extension"] = stored.extension
            row["shard_image_width"], row["shard_image_height"] = stored.width, stored.height
            samples.append(
                {
                    "key": row["key"],
                    "image_extension": stored.extension,
                    "image": stored.data,
                    "flac": encode_flac(pcm, rate),
                }
            )
        manifest = make_table(MANIFEST, {name: [r[name] for r in rows] for name in MANIFEST.names})
        return {
            "shard": shard,
            "manifest": ipc_bytes(manifest),
            "samples": samples,
            "pool_bytes_read": pool_bytes_read,
            "pool_clip_bytes": sum(clip.size for clip in located.values()),
        }


def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def write_mixed(
    layout: SonifyLayout, mixed: dict, features: tuple[str, ...], floors: dict[str, float | None] | None = None
) -> dict:
    """Writes a mixed shard (a MIXED_SHARDS row with a column per feature, and image_audio once
    aligned): `shards/NNNNNN.tar`, then `manifest/NNNNNN.parquet`, which marks the shard complete.
    Each sample's manifest row gets its image_audio score; a sample under a floor of `floors`
    (sonify.min_alignment) becomes an error row (low_alignment) and is left out of the tar; each
    written sample's JSON member is made from its final row. Returns its SHARD_RESULTS row."""
    shard = mixed["shard"]
    rows = {row["key"]: row for row in pa.ipc.open_stream(mixed["manifest"]).read_all().to_pylist()}
    scores = mixed.get("image_audio") or [None] * len(mixed["samples"])
    tar_samples = []
    for i, (sample, image_audio) in enumerate(zip(mixed["samples"], scores)):
        row = rows[sample["key"]]
        row["image_audio"] = image_audio
        reason = below_floor({"text_audio": row["text_audio"], "image_audio": image_audio}, floors or {})
        if reason:
            row["error"] = error_text(row["image_uri"], reason, row["image_member"])
            row["error_kind"] = LOW_ALIGNMENT
            continue
        members = {sample["image_extension"]: sample["image"], "flac": sample["flac"], "json": sample_metadata(row)}
        members |= {f"{name}.npy": mixed[name][i] for name in features}
        tar_samples.append((sample["key"], members))
    size = write_shard(layout.shard(shard), tar_samples)
    manifest = make_table(MANIFEST, {name: [r[name] for r in rows.values()] for name in MANIFEST.names})
    reads = {name: mixed[name] for name in MANIFEST_POOL_READS}
    manifest = manifest.replace_schema_metadata({**manifest.schema.metadata, **{k: str(v) for k, v in reads.items()}})
    storage.write_parquet(layout.manifest(shard), manifest)
    written = len(tar_samples)
    return {"shard": shard, "samples": written, "errors": manifest.num_rows - written, "num_bytes": size, **reads}


def results_table(results: list[dict]) -> pa.Table:
    return make_table(SHARD_RESULTS, {name: [r[name] for r in results] for name in SHARD_RESULTS.names})


class WriteShards(Stage):
    """Reads one shard's plan file, mixes its samples and writes `shards/NNNNNN.tar`, then
    `manifest/NNNNNN.parquet`, which marks the shard complete. Rendering a released manifest runs
    this same stage, so its audio is bit-identical to the original run (and its images too, under
    the same image encoding and Pillow). With sonify.features, MixShards, the feature stages and
    WriteMixedShards do the same in steps."""

    name: ClassVar[str] = "write_shards"
    required_columns: ClassVar[tuple[str, ...]] = tuple(SHARD_TASKS.names)

    def __init__(
        self,
        pool: PoolLayout,
        layout: SonifyLayout,
        peak_dbfs: float,
        image_encoding: ImageEncoding,
        floors: dict[str, float | None] | None = None,
    ) -> None:
        self.mixer = ShardMixer(pool, peak_dbfs, image_encoding)
        self.layout = layout
        self.floors = floors or {}

    def resources(self) -> Resources:
        return Resources(num_cpus=1, batch_size=1)

    def output_schema(self) -> pa.Schema:
        return SHARD_RESULTS

    def process_batch(self, batch: pa.Table) -> pa.Table:
        return results_table(
            [
                self.write_shard(task["shard"], make_table(SHARD_PLANS, storage.read_parquet(task["plan_url"])))
                for task in batch.to_pylist()
            ]
        )

    def write_shard(self, shard: str, plan: pa.Table) -> dict:
        """Mixes and writes the samples of a plan (SHARD_PLANS rows)."""
        return write_mixed(self.layout, self.mixer.mix(shard, plan), (), self.floors)


class MixShards(Stage):
    """Reads one shard's plan file and mixes its samples into a MIXED_SHARDS row, for the feature stages."""

    name: ClassVar[str] = "mix_shards"
    required_columns: ClassVar[tuple[str, ...]] = tuple(SHARD_TASKS.names)

    def __init__(self, pool: PoolLayout, peak_dbfs: float, image_encoding: ImageEncoding) -> None:
        self.mixer = ShardMixer(pool, peak_dbfs, image_encoding)

    def resources(self) -> Resources:
        return Resources(num_cpus=1, batch_size=1)

    def output_schema(self) -> pa.Schema:
        return MIXED_SHARDS

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = [
            self.mixer.mix(task["shard"], make_table(SHARD_PLANS, storage.read_parquet(task["plan_url"])))
            for task in batch.to_pylist()
        ]
        return make_table(MIXED_SHARDS, {name: [r[name] for r in rows] for name in MIXED_SHARDS.names})


class WriteMixedShards(Stage):
    """Writes each mixed shard with its features (stages.embed.shard_features_stage) as npy members:
    those of `features` only, the others computed for the image_audio score (`aligned`)."""

    name: ClassVar[str] = "write_mixed_shards"
    required_columns: ClassVar[tuple[str, ...]] = tuple(MIXED_SHARDS.names)

    def __init__(
        self,
        layout: SonifyLayout,
        features: tuple[str, ...],
        aligned: bool = False,
        floors: dict[str, float | None] | None = None,
    ) -> None:
        self.layout = layout
        self.features = features
        self.floors = floors or {}
        self.required_columns = (*MIXED_SHARDS.names, *features, *(["image_audio"] if aligned else []))

    def resources(self) -> Resources:
        return Resources(num_cpus=1, batch_size=1)

    def output_schema(self) -> pa.Schema:
        return SHARD_RESULTS

    def process_batch(self, batch: pa.Table) -> pa.Table:
        return results_table([write_mixed(self.layout, row, self.features, self.floors) for row in batch.to_pylist()])

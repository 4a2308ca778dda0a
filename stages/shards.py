"""WebDataset shards: `NNNNNN.tar` files whose samples are the members sharing a key
(`KEY.jpg`, `KEY.flac`, `KEY.json`). Tar headers are fixed (mtime 0, owner 0, mode 0444), so the same
samples always give the same bytes, and a shard is written atomically. Member names longer than a
ustar header holds (100 bytes) get a POSIX (pax) extended header, which GNU tar, Python's tarfile
and the WebDataset readers all understand; shorter names give plain ustar headers."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import pyarrow as pa

from schemas import MANIFEST, SHARD_PLANS, SHARD_RESULTS, SHARD_TASKS, make_table
from stages import loudness, storage
from stages.base import Resources, Stage
from stages.errors import BadInput, error_text
from stages.images import ImageRef, read_image_bytes
from stages.mix import load_pool_clips, mix_sources
from stages.standardize import PCM16_SCALE, encode_flac, quantize_pcm16


def shard_id(index: int) -> str:
    return f"{index:06d}"


def shard_file(shard: str) -> str:
    return f"{shard}.tar"


def tar_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    """A tar of samples in the given order; each sample's members in sorted extension order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in samples:
            if "." in key.rsplit("/", 1)[-1]:
                raise ValueError(f"sample key {key!r} contains a dot; WebDataset would split it")
            for extension in sorted(members):
                payload = members[extension]
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def plan_shards(sizes: list[int], target_bytes: int) -> list[int]:
    """Shard index of each sample, in order: a new shard starts when the next sample would push the
    current one past the target (a sample larger than the target gets a shard of its own)."""
    assignment, shard, used = [], 0, 0
    for size in sizes:
        if used and used + size > target_bytes:
            shard, used = shard + 1, 0
        assignment.append(shard)
        used += size
    return assignment


def write_shard(url: str, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    data = tar_bytes(samples)
    storage.write_bytes(url, data)
    return len(data)


def image_extension(uri: str, member: str | None, fmt: str | None) -> str:
    """The extension of the sample's image member: the source's own (png, webp; jpeg spelled jpg,
    so that readers see one member type per format), else the decoded format's."""
    name = (member or uri).rsplit("/", 1)[-1].lower()
    suffix = name.rsplit(".", 1)[-1] if "." in name else (fmt or "img")
    return "jpg" if suffix in ("jpeg", "jpg") else suffix


class WriteShards(Stage):
    """Reads one shard's plan file, mixes its samples and writes `shards/NNNNNN.tar`, then
    `manifest/NNNNNN.parquet`, which marks the shard complete. Rendering a released manifest runs
    this same stage, so its audio is bit-identical to the original run."""

    name: ClassVar[str] = "write_shards"
    required_columns: ClassVar[tuple[str, ...]] = tuple(SHARD_TASKS.names)

    def __init__(self, pool_dir: str, out_dir: str, peak_dbfs: float) -> None:
        self.pool_dir = pool_dir
        self.out_dir = out_dir
        self.peak_dbfs = peak_dbfs

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
        part_of: dict[str, str] = {}
        for row in rows:
            part_of.update(zip((c["clip_id"] for c in row["concepts"]), row.pop("clip_parts")))
        images = read_image_bytes([ImageRef(r["image_uri"], r["image_member"], r["image_id"]) for r in rows])
        rate = rows[0]["sample_rate"]
        wanted = {(c["clip_id"], part_of[c["clip_id"]]) for r in rows for c in r["concepts"]}
        clips = load_pool_clips(self.pool_dir, sorted(wanted), rate)
        samples, errors = [], 0
        for row, image in zip(rows, images):
            row["shard"] = shard_file(shard)
            if isinstance(image, BadInput):
                row["error"], row["error_kind"] = error_text(row["image_uri"], str(image), row["image_member"]), image.kind
                errors += 1
                continue
            gains = np.array([c["gain_db"] for c in row["concepts"]])
            mixed = mix_sources([clips[c["clip_id"]] for c in row["concepts"]], gains, self.peak_dbfs)
            pcm = quantize_pcm16(mixed.audio)
            stored = pcm.astype(np.float32) / PCM16_SCALE
            row["mix_gain_db"] = mixed.mix_gain_db
            row["mix_lufs"] = loudness.integrated_lufs(stored, rate)
            row["mix_peak_dbfs"] = loudness.peak_dbfs(stored)
            row["duration_s"] = pcm.size / rate
            extension = image_extension(row["image_uri"], row["image_member"], row["image_format"])
            # A written sample has no error, so the JSON member leaves out error_kind (always null
            # there) and holds the manifest row as readers have always found it.
            described = {name: value for name, value in row.items() if name != "error_kind"}
            members = {extension: image, "flac": encode_flac(pcm, rate), "json": json.dumps(described, sort_keys=True).encode()}
            samples.append((row["key"], members))
        size = write_shard(storage.join(self.out_dir, "shards", shard_file(shard)), samples)
        manifest = make_table(MANIFEST, {name: [r[name] for r in rows] for name in MANIFEST.names})
        storage.write_parquet(storage.join(self.out_dir, "manifest", f"{shard}.parquet"), manifest)
        return {"shard": shard, "samples": len(samples), "errors": errors, "num_bytes": size}

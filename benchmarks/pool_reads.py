"""Bytes that mixing reads from the pool, against the stored bytes of the clips it mixes, counted by
the file system rather than by the code under test; printed as one table.

    .venv/bin/python -m benchmarks.pool_reads [--quick] [--seed S] [--clap-model DIR] [--json FILE]
        [--files N --seconds MIN MAX --files-per-part N --shards N --samples N --clips-per-sample N]

A pool is built by the pool pipeline itself (`run_pool`, local Ray, the tiny transformers CLAP)
over generated sources: tones over noise, 30 to 60 s each, 16 sources per part, mixed at 16 kHz.
Shard plans are then made of random pool clips by the sonify pipeline's own `shard_plan`, and each
shard is mixed and written by `WriteShards.write_shard` in this process, with the pool reached
through `counted://`: a local file system that counts every byte fsspec hands back (cat_file,
cat_ranges, open().read). The claim under test: the bytes read are at most twice the stored bytes
of the distinct clips each shard uses (tar headers and gaps between neighbouring clips are the
rest); the run exits 1 when they are not. --json writes the figures for a caller to check.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import fsspec
import numpy as np
import soundfile
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

from pipelines.config import validate_config
from pipelines.pool.run import run_pool
from pipelines.pool.store import PoolStore
from schemas import MANIFEST
from schemas.config import RunConfig
from schemas.layout import PoolLayout, SonifyLayout, shard_id
from stages.images.decoding import ImageEncoding
from stages.pairing.planning import manifest_table, mixable_clips, shard_plan
from stages.pairing.shard_stage import WriteShards

MIX_RATE = 16000
SOURCE_RATE = 22050
# What the claim allows: bytes read per stored byte of the clips used.
MAX_READ_RATIO = 2.0


@dataclass(frozen=True)
class Sizes:
    files: int
    seconds: tuple[float, float]
    files_per_part: int
    shards: int
    samples: int
    clips_per_sample: int


FULL = Sizes(files=200, seconds=(30.0, 60.0), files_per_part=16, shards=50, samples=20, clips_per_sample=4)
QUICK = Sizes(files=40, seconds=(10.0, 20.0), files_per_part=8, shards=10, samples=10, clips_per_sample=4)


class CountedOpener(LocalFileOpener):
    def read(self, *args, **kwargs):
        data = self.f.read(*args, **kwargs)
        CountedFileSystem.bytes_returned += len(data)
        return data

    def readinto(self, buffer):
        count = self.f.readinto(buffer)
        CountedFileSystem.bytes_returned += count
        return count


class CountedFileSystem(LocalFileSystem):
    """Local files whose every read is counted where fsspec returns it. cat_file reads with the
    builtin open, so a byte is counted once whether it came through cat_file, cat_ranges (which
    calls cat_file) or an opened file."""

    protocol = ("counted",)
    bytes_returned = 0
    requests = 0

    def cat_file(self, path, start=None, end=None, **kwargs):
        with open(self._strip_protocol(path), "rb") as handle:
            handle.seek(start or 0)
            data = handle.read() if end is None else handle.read(end - (start or 0))
        CountedFileSystem.bytes_returned += len(data)
        CountedFileSystem.requests += 1
        return data

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        if "r" not in mode:
            return super()._open(path, mode, block_size, **kwargs)
        CountedFileSystem.requests += 1
        return CountedOpener(self._strip_protocol(path), mode, fs=self, **kwargs)

    @classmethod
    def reset(cls) -> None:
        cls.bytes_returned = cls.requests = 0


fsspec.register_implementation("counted", CountedFileSystem, clobber=True)


def write_sources(folder: Path, sizes: Sizes, rng: np.random.Generator) -> None:
    """Mono wavs of a tone over noise, each of its own pitch and length."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(sizes.files):
        t = np.arange(int(rng.uniform(*sizes.seconds) * SOURCE_RATE)) / SOURCE_RATE
        signal = 0.2 * np.sin(2 * np.pi * rng.uniform(80, 4000) * t) + 0.02 * rng.standard_normal(t.size)
        soundfile.write(folder / f"source-{i:04d}.wav", signal.astype(np.float32), SOURCE_RATE, subtype="PCM_16")


def build_pool(root: Path, sizes: Sizes, clap_model: str, rng: np.random.Generator) -> tuple[PoolLayout, RunConfig]:
    write_sources(root / "sources", sizes, rng)
    config = validate_config(
        {
            "ray": {"num_cpus": 2},
            "pool": {
                "dir": str(root / "pool"),
                "sources": [str(root / "sources" / "*.wav")],
                "files_per_part": sizes.files_per_part,
                "mix_sample_rates": [MIX_RATE],
            },
            "models": {"clap": {"backend": "transformers", "model": clap_model, "batch_size": 16}},
        }
    )
    summary = run_pool(config)
    if summary["errors"]:
        raise RuntimeError(
            f"the generated pool has error rows, so its reads mean nothing: {summary['error_reasons'][:3]}"
        )
    return PoolLayout(str(root / "pool")), config


def plan_rows(shard: int, clips: list[str], lufs: dict[str, float], image: Path, sizes: Sizes) -> list[dict]:
    """Manifest rows of one shard, each sample mixing `clips_per_sample` of `clips` to -25 LUFS."""
    rows = []
    for sample in range(sizes.samples):
        chosen = clips[sample * sizes.clips_per_sample : (sample + 1) * sizes.clips_per_sample]
        concepts = [
            {
                "label": "x",
                "text": "x",
                "clip_id": c,
                "cosine": 0.5,
                "corrected_cosine": 0.5,
                "ssr": 0.5,
                "threshold": 0.4,
                "n_candidates": 1,
                "fallback": False,
                "generated": False,
                "target_lufs": -25.0,
                "clip_lufs": lufs[c],
                "gain_db": -25.0 - lufs[c],
            }
            for c in chosen
        ]
        key = f"s{shard:04d}-{sample:04d}"
        rows.append(
            {name: None for name in MANIFEST.names}
            | {
                "key": key,
                "image_id": key,
                "image_uri": str(image),
                "image_format": "png",
                "width": 32,
                "height": 32,
                "vlm": "given",
                "prompt_version": "p",
                "concepts": concepts,
                "dropped_concepts": 0,
                "sample_rate": MIX_RATE,
                "seed": shard,
            }
        )
    return rows


def measure_pool_reads(root: Path, sizes: Sizes = FULL, clap_model: str | None = None, seed: int = 0) -> dict:
    """Builds a pool under `root`, writes `sizes.shards` shards of random clips from it through
    `counted://`, and returns what was read against what the clips used take."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    if clap_model is None:
        from demo.tiny_models import build_transformers_clap

        clap_model = str(build_transformers_clap(root / "models", root / "build"))
    started = time.perf_counter()
    paths, config = build_pool(root, sizes, clap_model, rng)
    pool_seconds = time.perf_counter() - started

    store = PoolStore(paths)
    table = store.clips(["clip_id", "part"]).to_pylist()
    mixable_table, _ = store.mixable_clips(MIX_RATE, config.pool.silence_lufs, config.pool.max_band_loss_lu)
    mixable = mixable_clips(mixable_table, mixable_table.column("clip_id").to_pylist())
    lufs, locations = mixable.lufs, mixable.locations
    usable = sorted(lufs)
    image = root / "image.png"
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)

    counted = PoolLayout(f"counted://{paths.root}")
    writer = WriteShards(counted, SonifyLayout(str(root / "out")), -1.0, ImageEncoding("original"))
    per_shard = sizes.samples * sizes.clips_per_sample
    read = reported = used = whole_packs = 0
    CountedFileSystem.reset()
    started = time.perf_counter()
    for shard in range(sizes.shards):
        clips = [str(c) for c in rng.choice(usable, size=per_shard, replace=per_shard > len(usable))]
        plan = shard_plan(manifest_table(plan_rows(shard, clips, lufs, image, sizes)), locations)
        before = CountedFileSystem.bytes_returned
        result = writer.write_shard(shard_id(shard), plan)
        read += CountedFileSystem.bytes_returned - before
        reported += result["pool_bytes_read"]
        used += result["pool_clip_bytes"]
        parts = {locations[c][0] for c in clips}
        whole_packs += sum(Path(paths.mix_audio(p, MIX_RATE)).stat().st_size for p in parts)
    write_seconds = time.perf_counter() - started

    return {
        "sources": sizes.files,
        "clips": len(table),
        "parts": len({r["part"] for r in table}),
        "pool_rate_audio_bytes": folder_bytes(paths.audio_folder(), ".parquet"),
        "mix_rate_pack_bytes": folder_bytes(paths.mix_audio_folder(MIX_RATE), ".tar"),
        "shards": sizes.shards,
        "samples": sizes.shards * sizes.samples,
        "bytes_read": read,
        "read_requests": CountedFileSystem.requests,
        "bytes_read_reported": reported,
        "used_clip_bytes": used,
        "read_ratio": read / used,
        "whole_pack_bytes": whole_packs,
        "pool_seconds": pool_seconds,
        "write_seconds": write_seconds,
    }


def folder_bytes(folder: str, suffix: str) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob(f"*{suffix}"))


def mib(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 sources of 10-20 s, 10 shards of 10 samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clap-model", help="a transformers CLAP folder (default: a tiny one, built here)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--work", type=Path, help="folder for the pool and shards (default: a temporary one)")
    for field in fields(Sizes):
        nargs = 2 if field.name == "seconds" else None
        kind = float if field.name == "seconds" else int
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, nargs=nargs, help="overrides the size set")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    sizes = replace(
        base, **{f.name: tuple(v) if isinstance(v, list) else v for f in fields(Sizes) if (v := getattr(args, f.name))}
    )
    with tempfile.TemporaryDirectory() as scratch:
        r = measure_pool_reads(args.work or Path(scratch), sizes, clap_model=args.clap_model, seed=args.seed)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    print(
        f"pool: {r['sources']} sources, {r['clips']} clips in {r['parts']} parts, built in {r['pool_seconds']:.0f} s; "
        f"audio at the pool rate {mib(r['pool_rate_audio_bytes'])}, "
        f"packs at {MIX_RATE} Hz {mib(r['mix_rate_pack_bytes'])}"
    )
    print(
        f"mixing: {r['shards']} shards, {r['samples']} samples of {sizes.clips_per_sample} random clips, "
        f"{r['write_seconds']:.0f} s"
    )
    rows = [
        ("read from the pool (counted by the file system)", mib(r["bytes_read"]), f"{r['read_requests']} requests"),
        ("read, as the shard writer reports it", mib(r["bytes_read_reported"]), ""),
        ("stored bytes of the distinct clips each shard uses", mib(r["used_clip_bytes"]), ""),
        ("whole packs of the parts touched", mib(r["whole_pack_bytes"]), ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(
        f"read / used {r['read_ratio']:.3f} (bound {MAX_READ_RATIO}); "
        f"whole packs / read {r['whole_pack_bytes'] / r['bytes_read']:.1f}x"
    )
    if r["read_ratio"] > MAX_READ_RATIO:
        raise SystemExit(
            f"mixing read {r['read_ratio']:.2f} bytes per stored byte of the clips it used, "
            f"over the bound of {MAX_READ_RATIO}"
        )


if __name__ == "__main__":
    main()

"""Mixing throughput on this machine: 3-source mixes the pipeline's way, gains from the loudness the
pool stores once per clip (`gains_db` + `mix_sources`), printed as one table beside the one-time
cost of measuring that loudness.

    .venv/bin/python -m benchmarks.mixing [--quick] [--seed S]

Clips are synthetic tones, noise or both at levels spread over about 40 dB, so gains differ from
clip to clip and some mixes pass the peak ceiling and are scaled down. Absolute timings on a shared
machine are noisy.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import common
from schemas.config import MixConfig
from stages.audio.loudness import integrated_lufs
from stages.audio.mixing import Mix, draw_targets, gains_db, mix_sources

MIX_RATE = 16000
MIX_SECONDS = 5.0
MIX_SOURCES = 3
MIX_BANK_CLIPS = 60
MIXES = {"full": 300, "quick": 50}


def synthetic_clip(rng: np.random.Generator, index: int) -> np.ndarray:
    """Tone, noise or both, at levels spread over about 40 dB, so gains differ from clip to clip."""
    t = np.arange(int(MIX_SECONDS * MIX_RATE)) / MIX_RATE
    level = 10 ** (rng.uniform(-45, -5) / 20)
    tone = np.sin(2 * np.pi * rng.uniform(80, 4000) * t)
    noise = rng.standard_normal(t.size)
    kind = index % 3
    signal = tone if kind == 0 else noise if kind == 1 else 0.7 * tone + 0.3 * noise
    return (level * signal).astype(np.float32)


def bench_mixing(mix_count: int, rng: np.random.Generator) -> list[common.Row]:
    config = MixConfig()
    bank = [synthetic_clip(rng, i) for i in range(MIX_BANK_CLIPS)]
    # The pool measures each clip once when it is built; that is the one-time cost the pipeline pays.
    loudness_s, stored = common.timed(lambda: [integrated_lufs(clip, MIX_RATE) for clip in bank])
    stored_lufs = np.array(stored)
    picks = [rng.choice(MIX_BANK_CLIPS, size=MIX_SOURCES, replace=False) for _ in range(mix_count)]
    targets = [draw_targets(rng, MIX_SOURCES, config.lufs_min, config.lufs_max) for _ in range(mix_count)]

    def mix_all() -> list[Mix]:
        return [
            mix_sources([bank[i] for i in pick], gains_db(target, stored_lufs[pick]), config.peak_dbfs)
            for pick, target in zip(picks, targets)
        ]

    mix_s, mixes = common.timed(mix_all)
    scaled = sum(m.mix_gain_db < 0 for m in mixes)
    return [
        common.Row(
            "loudness once per clip",
            f"{MIX_BANK_CLIPS} clips x {MIX_SECONDS:g} s",
            loudness_s,
            MIX_BANK_CLIPS / loudness_s,
            "clips/s",
            note="pool build cost, not paid per mix",
        ),
        common.Row(
            "mix (stored loudness)",
            f"{mix_count} mixes x {MIX_SOURCES} x {MIX_SECONDS:g} s",
            mix_s,
            mix_count / mix_s,
            "mixes/s",
            note=f"gains_db + mix_sources at {MIX_RATE} Hz; {scaled} mixes scaled under {config.peak_dbfs:g} dBFS",
        ),
    ]


def bench(args: argparse.Namespace, rng: np.random.Generator) -> None:
    common.print_machine(args.quick, f"numpy {np.__version__}")
    rows = bench_mixing(MIXES["quick" if args.quick else "full"], rng)
    print()
    common.print_table(rows)
    print(f"\nmixing made {rows[1].rate * MIX_SECONDS:,.0f} seconds of mix per second (x real time)")


if __name__ == "__main__":
    common.run(__doc__, bench)

"""Mixing sources at target loudness (paper 3.3 and A.9).

Each source i gets a target t_i ~ U[lufs_min, lufs_max] and the gain t_i - L_i, where L_i is the
clip's loudness stored in the pool at the mix rate; nothing is measured again. The gained sources
are summed; a mix whose peak passes the ceiling is scaled down as a whole, and that gain recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.layout import PoolLayout
from stages import storage
from stages.standardize import decode_flac, resample


def draw_targets(rng: np.random.Generator, count: int, lufs_min: float, lufs_max: float) -> np.ndarray:
    return rng.uniform(lufs_min, lufs_max, size=count)


def gains_db(targets_lufs: np.ndarray, clip_lufs: np.ndarray) -> np.ndarray:
    return np.asarray(targets_lufs, dtype=np.float64) - np.asarray(clip_lufs, dtype=np.float64)


def db_to_amplitude(db: float | np.ndarray) -> float | np.ndarray:
    return 10.0 ** (np.asarray(db, dtype=np.float64) / 20.0)


@dataclass(frozen=True)
class Mix:
    audio: np.ndarray  # float32, at the mix rate
    mix_gain_db: float  # <= 0; the whole-mix scaling applied to respect the peak ceiling
    peak_dbfs: float | None  # after that scaling


def mix_sources(sources: list[np.ndarray], source_gains_db: np.ndarray, peak_ceiling_dbfs: float) -> Mix:
    """Sum gained sources of equal length; never clip: scale the mix under the ceiling instead."""
    if not sources:
        raise ValueError("a mix needs at least one source")
    total = np.zeros(sources[0].shape[0], dtype=np.float64)
    for audio, gain in zip(sources, source_gains_db):
        total += db_to_amplitude(gain) * np.asarray(audio, dtype=np.float64)
    peak = float(np.max(np.abs(total)))
    ceiling = float(db_to_amplitude(peak_ceiling_dbfs))
    mix_gain_db = 0.0
    if peak > ceiling:
        mix_gain_db = 20.0 * math.log10(ceiling / peak)
        total *= ceiling / peak
        peak = ceiling
    return Mix(total.astype(np.float32), mix_gain_db, 20.0 * math.log10(peak) if peak > 0 else None)


def load_pool_clips(pool_dir: str, clips: list[tuple[str, str]], sample_rate: int) -> dict[str, np.ndarray]:
    """Decode pool clips (clip_id, part) and resample them to `sample_rate`, exactly as the pool
    did when it stored their loudness at that rate. Each part file is read once, and only the
    rows that are needed."""
    by_part: dict[str, set[str]] = {}
    for clip_id, part in clips:
        by_part.setdefault(part, set()).add(clip_id)
    audio: dict[str, np.ndarray] = {}
    for part, wanted in sorted(by_part.items()):
        table = storage.read_parquet(PoolLayout(pool_dir).audio(part))
        table = table.filter(pc.is_in(table.column("clip_id"), value_set=pa.array(sorted(wanted))))
        for clip_id, flac in zip(table.column("clip_id").to_pylist(), table.column("flac").to_pylist()):
            decoded, rate = decode_flac(flac)
            audio[clip_id] = resample(decoded, rate, sample_rate)
        missing = wanted - audio.keys()
        if missing:
            raise KeyError(f"clips {sorted(missing)[:5]} are not in pool part {part}")
    return audio

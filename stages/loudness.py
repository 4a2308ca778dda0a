"""Loudness and peak of a clip: ITU-R BS.1770 integrated loudness through pyloudnorm.

Measured once per clip when the pool is built; mixing later needs only gains.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyloudnorm

_meters: dict[int, pyloudnorm.Meter] = {}


def _meter(sample_rate: int) -> pyloudnorm.Meter:
    if sample_rate not in _meters:
        _meters[sample_rate] = pyloudnorm.Meter(sample_rate)
    return _meters[sample_rate]


def integrated_lufs(audio: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness in LUFS, or None for digital silence (where BS.1770 gives -inf).

    pyloudnorm refuses input shorter than one 400 ms gating block. Pool clips and mixes are never
    that short (pool.clip_seconds >= 0.5: a short source is zero-padded to a whole clip); shorter
    input is measured as if zero-padded to one block, which is what BS.1770 gating makes of the
    same sound inside a longer silence.
    """
    audio = np.asarray(audio, dtype=np.float64)
    if not np.any(audio):
        return None
    meter = _meter(sample_rate)
    block = math.ceil(meter.block_size * sample_rate)
    if audio.shape[0] < block:
        audio = np.pad(audio, [(0, block - audio.shape[0])] + [(0, 0)] * (audio.ndim - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = meter.integrated_loudness(audio)
    return float(value) if math.isfinite(value) else None


def peak_dbfs(audio: np.ndarray) -> float | None:
    """Sample peak in dBFS, or None for digital silence."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else None


def is_silent(lufs: float | None, threshold_lufs: float) -> bool:
    return lufs is None or lufs < threshold_lufs

"""Loudness and peak of a clip: ITU-R BS.1770 integrated loudness through pyloudnorm.

Measured once per clip when the pool is built; mixing later needs only gains.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyarrow as pa
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


def audible_at_rate(
    pool_lufs: float | None, rate_lufs: float | None, silence_lufs: float, max_band_loss_lu: float
) -> bool:
    """Whether a clip can be a source of a mix at some rate. Resampling removes everything above
    the new Nyquist frequency, so a clip whose energy sits there (a high tone, hiss) is quieter,
    or silent, at a low mix rate; setting its loudness by gain would amplify what little is left
    (resampler residue) by tens of dB. Audible: measured at that rate (not digital silence), at
    or above the silence floor there, and at most `max_band_loss_lu` quieter than at the pool rate."""
    if pool_lufs is None or rate_lufs is None:
        return False
    return rate_lufs >= silence_lufs and pool_lufs - rate_lufs <= max_band_loss_lu


def loudness_entry_at(at_rates: list[dict] | None, rate: int) -> dict | None:
    """A clip's loudness_at_rates entry for `rate`; None where the pool holds none."""
    return next((e for e in at_rates or [] if e["sample_rate"] == rate), None)


def audible_clip_loudness(clips: pa.Table, rate: int, silence_lufs: float, max_band_loss_lu: float) -> dict[str, float]:
    """clip_id -> loudness at `rate` of every clip of a pool table (columns clip_id, lufs,
    loudness_at_rates) that is audible at that rate; the mixer sets gains from these values."""
    audible = {}
    columns = [clips.column(c).to_pylist() for c in ("clip_id", "lufs", "loudness_at_rates")]
    for clip_id, pool_lufs, at_rates in zip(*columns):
        entry = loudness_entry_at(at_rates, rate)
        if audible_at_rate(pool_lufs, entry and entry["lufs"], silence_lufs, max_band_loss_lu):
            audible[clip_id] = entry["lufs"]
    return audible

"""Standardizing source audio, as plain functions on numpy arrays: down-mix, resample, cut into
clips, and the stable ids of sources and clips."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import soxr


def to_mono(audio: np.ndarray) -> np.ndarray:
    """[frames, channels] -> [frames], averaging channels (a sum scaled by 1/channels cannot clip)."""
    if audio.ndim == 1:
        return audio
    return audio.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Deterministic high-quality resampling (soxr HQ)."""
    if rate_in == rate_out:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio.astype(np.float32, copy=False), rate_in, rate_out, quality="HQ").astype(np.float32)


def chunk(audio: np.ndarray, sample_rate: int, clip_seconds: float) -> tuple[np.ndarray, list[int]]:
    """Cut into non-overlapping clips of clip_seconds, zero-padding the last.

    Returns the clips as [n, clip_samples] and the count of real (unpadded) samples in each. Audio
    shorter than one clip gives one padded clip.
    """
    clip_samples = int(round(clip_seconds * sample_rate))
    count = max(1, math.ceil(audio.shape[0] / clip_samples))
    padded = np.zeros(count * clip_samples, dtype=np.float32)
    padded[: audio.shape[0]] = audio
    real = [min(clip_samples, audio.shape[0] - i * clip_samples) for i in range(count)]
    return padded.reshape(count, clip_samples), real


def source_id(uri: str, content_sha256: str) -> str:
    """Stable id of one version of one source: a changed file gets new clip ids."""
    return hashlib.sha1(f"{uri}\0{content_sha256}".encode()).hexdigest()[:16]


def clip_id(source: str, chunk_index: int) -> str:
    return f"{source}-{chunk_index:05d}"


def error_clip_id(uri: str) -> str:
    return f"{hashlib.sha1(f'{uri}{chr(0)}'.encode()).hexdigest()[:16]}-error"

"""Standardizing source audio, as plain functions on numpy arrays: down-mix, resample, cut into
clips, and the stable ids of sources and clips. `ClipCutter` does all three on a source that
arrives in blocks, with the same samples as the whole-array functions: soxr's streaming resampler
gives, block by block, exactly the output of its one-call resampling."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import numpy as np
import soxr

# Resampled samples one piece of a block may give: 4 MiB of float32.
MAX_RESAMPLED_SAMPLES = 1 << 20


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


class ClipCutter:
    """Clips of `clip_seconds` at `rate_out`, cut as blocks of source audio arrive: each block is
    down-mixed, cleaned of non-finite samples, resampled and appended, and every whole clip is
    handed out at once. Resampling runs on pieces that give at most MAX_RESAMPLED_SAMPLES each, so
    a low rate multiplied by resampling holds no more than a high one. `feed` and `finish` yield
    (clip, real samples) pairs; together they equal `chunk(resample(to_mono(audio)))` of the
    whole source, except that a source leaving no samples gives no clip (`samples_out` is 0)."""

    def __init__(self, rate_in: int, rate_out: int, clip_seconds: float) -> None:
        self.clip_samples = int(round(clip_seconds * rate_out))
        self._resampler = (
            None if rate_in == rate_out else soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality="HQ")
        )
        self._piece = max(1, MAX_RESAMPLED_SAMPLES * rate_in // rate_out)
        self._pending: list[np.ndarray] = []
        self._held = 0
        self.frames_in = 0
        self.channels = 0
        self.samples_out = 0

    def feed(self, block: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
        """Clips completed by a [frames, channels] block."""
        self.frames_in += block.shape[0]
        self.channels = block.shape[1] if block.ndim == 2 else 1
        # Non-finite samples (a broken encoder) would poison every measurement: they become silence.
        mono = np.nan_to_num(to_mono(block), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)
        if self._resampler is None:
            yield from self._add(mono)
            return
        for start in range(0, mono.shape[0], self._piece):
            yield from self._add(self._resampler.resample_chunk(mono[start : start + self._piece]))

    def finish(self) -> Iterator[tuple[np.ndarray, int]]:
        """The clips left once the source has ended: the resampler's tail, and the zero-padded last clip."""
        if self._resampler is not None:
            yield from self._add(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        if self._held:
            clip = np.zeros(self.clip_samples, np.float32)
            clip[: self._held] = np.concatenate(self._pending)
            real, self._pending, self._held = self._held, [], 0
            yield clip, real

    def _add(self, samples: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
        self.samples_out += samples.shape[0]
        self._pending.append(samples.astype(np.float32, copy=False))
        self._held += samples.shape[0]
        if self._held < self.clip_samples:
            return
        joined = np.concatenate(self._pending)
        whole = self._held // self.clip_samples * self.clip_samples
        self._pending, self._held = [joined[whole:].copy()], self._held - whole
        for start in range(0, whole, self.clip_samples):
            yield joined[start : start + self.clip_samples].copy(), self.clip_samples


def source_id(uri: str, content_sha256: str) -> str:
    """Stable id of one version of one source: a changed file gets new clip ids."""
    return hashlib.sha1(f"{uri}\0{content_sha256}".encode()).hexdigest()[:16]


def clip_id(source: str, chunk_index: int) -> str:
    return f"{source}-{chunk_index:05d}"


# Between a variant clip's parent id and the variant's name (pool.variants): a family of clips, a cut
# clip and its variants, is read off the ids alone wherever clips are chosen.
VARIANT_SEPARATOR = "--"


def variant_clip_id(parent_clip_id: str, variant: str) -> str:
    return f"{parent_clip_id}{VARIANT_SEPARATOR}{variant}"


def clip_family(clip_id: str) -> str:
    """The id of the clip cut from a source that `clip_id` is, or is a variant of."""
    return clip_id.split(VARIANT_SEPARATOR, 1)[0]


def error_clip_id(uri: str) -> str:
    return f"{hashlib.sha1(f'{uri}{chr(0)}'.encode()).hexdigest()[:16]}-error"

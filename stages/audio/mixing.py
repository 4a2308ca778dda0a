"""Mixing sources at target loudness (paper 3.3 and A.9).

Each source i gets a target t_i ~ U[lufs_min, lufs_max] and the gain t_i - L_i, where L_i is the
clip's loudness stored in the pool at the mix rate, measured on the very 16-bit audio that the
pool's pack at that rate holds and the mixer decodes; nothing is measured again. The gained
sources are summed; a mix whose peak passes the ceiling is scaled down as a whole, and that gain
recorded.
"""

from __future__ import annotations

import math
import tarfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from schemas.layout import PoolLayout
from stages.audio.packs import decode_flac, pack_member
from stages.io import storage
from stages.io.tars import HEADER_BYTES, member_name_before


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


POOL_CHANGED = (
    "the pool changed after these locations were read from its clips table "
    "(run pool again if a run of it was interrupted, then mix again)"
)


class ClipLocation(NamedTuple):
    """Where a clip's FLAC at a mix rate is: its part's pack at that rate, and the byte range of the
    member's data there (the loudness_at_rates entry's audio_offset and audio_bytes)."""

    clip_id: str
    part: str
    offset: int
    size: int


def load_pool_clips(
    pool_dir: str, clips: Iterable[ClipLocation], sample_rate: int
) -> tuple[dict[str, np.ndarray], int]:
    """Decode pool clips as stored at the mix rate: the very audio the pool measured at that rate, so
    no resampling here. Each part's pack is read once, only its clips' byte ranges, each with the tar
    header before it, which names the member: a location that points elsewhere (the pool changed
    after the location was read) fails here instead of mixing another clip. Returns the audio by
    clip_id and the number of pool bytes read."""
    by_part: dict[str, list[ClipLocation]] = defaultdict(list)
    for clip in clips:
        by_part[clip.part].append(clip)
    audio: dict[str, np.ndarray] = {}
    bytes_read = 0
    for part, located in sorted(by_part.items()):
        url = PoolLayout(pool_dir).mix_audio(part, sample_rate)
        ranges = [(clip.offset - HEADER_BYTES, clip.size + HEADER_BYTES) for clip in located]
        bytes_read += sum(size for _, size in storage.coalesce_ranges(ranges))
        try:
            blobs = storage.read_ranges(url, ranges)
        except ValueError as exc:
            raise ValueError(f"pool part {part}: {exc}; {POOL_CHANGED}") from exc
        for clip, data in zip(located, blobs):
            try:
                name = member_name_before(data[:HEADER_BYTES])
            except tarfile.HeaderError:
                name = None
            if name != pack_member(clip.clip_id):
                raise ValueError(
                    f"pool part {part}: {url} holds no clip {clip.clip_id} at byte {clip.offset}; {POOL_CHANGED}"
                )
            decoded, rate = decode_flac(data[HEADER_BYTES:])
            if rate != sample_rate:
                raise ValueError(
                    f"pool part {part}: clip {clip.clip_id} in {url} is stored at {rate} Hz, "
                    f"not at the mix rate {sample_rate} Hz"
                )
            audio[clip.clip_id] = decoded
    return audio, bytes_read

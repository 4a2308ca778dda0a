"""The pool's audio codec: clips stored as 16-bit FLAC, and packs (tars of one part's clips at one
rate) whose members are read back by byte range."""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
import soundfile

from stages.io.tars import TarWriter, member_ranges, tar_bytes

PCM16_SCALE = 32768.0


PACK_EXTENSION = "flac"


def quantize_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float audio to 16-bit PCM, saturating at full scale; what the pool stores."""
    return np.clip(np.round(audio * PCM16_SCALE), -32768, 32767).astype(np.int16)


def encode_flac(pcm16: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm16, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """Stored clip bytes back to float32 mono audio in [-1, 1)."""
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return audio, rate


def pack_member(clip_id: str) -> str:
    """A clip's member name in a pack."""
    return f"{clip_id}.{PACK_EXTENSION}"


def pack_clips(clips: list[tuple[str, bytes]]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A pack of (clip_id, FLAC) clips in the given order, and where each clip's bytes are in it
    (offset, size), read back from the tar as any reader would find them."""
    data = tar_bytes((clip, {PACK_EXTENSION: flac}) for clip, flac in clips)
    ranges = member_ranges(data)
    return data, {clip: ranges[pack_member(clip)] for clip, _ in clips}


class PackWriter:
    """A pack written clip by clip to a binary file: the same bytes and ranges as `pack_clips` of the
    same clips, without holding them all."""

    def __init__(self, handle: BinaryIO) -> None:
        self._tar = TarWriter(handle)
        self.ranges: dict[str, tuple[int, int]] = {}

    def add(self, clip_id: str, flac: bytes) -> None:
        self.ranges[clip_id] = self._tar.add(clip_id, {PACK_EXTENSION: flac})[pack_member(clip_id)]

    def close(self) -> None:
        self._tar.close()


def repack(pack: bytes, clip_ids: list[str]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A pack of only these clips of `pack`, found by member name, and where each is in it now."""
    ranges = member_ranges(pack)
    kept = [(clip, pack[offset : offset + size]) for clip in clip_ids for offset, size in [ranges[pack_member(clip)]]]
    return pack_clips(kept)


def locate_in_pack(
    clip_ids: list[str], loudness_at_rates: list[list[dict] | None], rate: int, ranges: dict[str, tuple[int, int]]
) -> None:
    """Sets, in place, the offset and size of each clip's entry for `rate` from its pack's ranges."""
    for clip, at_rates in zip(clip_ids, loudness_at_rates):
        for at in at_rates or []:
            if at["sample_rate"] == rate:
                at["audio_offset"], at["audio_bytes"] = ranges[clip]

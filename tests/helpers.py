"""Helpers for tests: synthetic signals, audio files in any format, hand-made PNG and WAV bytes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import soundfile

# The plots each report page shows, by name (plots/NAME.png).
SONIFY_PLOTS = frozenset(
    {"labels", "cosine", "ssr", "threshold", "candidates", "clip-usage", "clip-uses"}
    | {"loudness", "mix-peak", "mix-gain", "text-audio", "image-audio"}
)
POOL_PLOTS = frozenset({"formats", "durations", "clip-loudness", "silent"})


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.3, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    mono = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def noise(seconds: float, rate: int, amplitude: float = 0.1, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(round(seconds * rate))) * amplitude).astype(np.float32)


def write_audio(path: Path, audio: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio, rate, format=fmt, subtype=subtype)
    return path


def png(width: int, height: int, bit_depth: int, color_type: int, pixels: np.ndarray | None = None) -> bytes:
    """A PNG written by hand, for what Pillow will not write (16-bit RGB) or must not decode (a header
    claiming a huge size). `pixels` is [height, width, channels] of the bit depth, or None for a
    file whose image data is empty."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b""
    if pixels is not None:
        samples = pixels.astype(">u2" if bit_depth == 16 else np.uint8).reshape(height, -1)
        raw = b"".join(b"\x00" + row.tobytes() for row in samples)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def wav_with_rate(audio: np.ndarray, claimed_rate: int) -> bytes:
    """A 16-bit mono WAV whose header claims `claimed_rate`, as a damaged header would."""
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, 16000, format="WAV", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    data[24:28] = struct.pack("<I", claimed_rate)
    data[28:32] = struct.pack("<I", claimed_rate * 2)
    return bytes(data)


def pyav_media(audio: np.ndarray | None, rate: int, container: str, codec: str | None, video: bool = False) -> bytes:
    """A media file made by FFmpeg through PyAV (no ffmpeg binary): `audio` ([frames] or
    [frames, 2] float32) encoded with `codec` into `container` ("ipod" is m4a, "adts" raw AAC), and
    with `video` a short MPEG-4 video stream beside it. `audio=None` gives a video without sound."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        if video:
            picture = out.add_stream("mpeg4", rate=10)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        if audio is not None:
            layout = "stereo" if audio.ndim == 2 else "mono"
            sound = out.add_stream(codec, rate=rate, layout=layout)
            if codec == "aac":
                sound.bit_rate = 128000
            sample_format = sound.codec_context.codec.audio_formats[0]
            frames = audio.reshape(audio.shape[0], -1)
            for start in range(0, frames.shape[0], 960):
                block = frames[start : start + 960]
                samples = block.T if sample_format.is_planar else block.reshape(1, -1)
                if sample_format.name.startswith("s16"):
                    samples = np.round(samples * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples), format=sample_format.name, layout=layout
                )
                frame.sample_rate, frame.pts = rate, start
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
        if video:
            for index in range(10):
                pixels = np.full((48, 64, 3), index * 20, np.uint8)
                for packet in picture.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    out.mux(packet)
            for packet in picture.encode(None):
                out.mux(packet)
    return buffer.getvalue()

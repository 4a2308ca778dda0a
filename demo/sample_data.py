"""The demo's embedded sample, synthesized deterministically (no recordings or photos, no licence
terms: the generated files are dedicated to the public domain, CC0).

audio/ covers what a real pool meets: wav, flac, mp3, ogg and aiff; 8 to 96 kHz; 8-bit to float;
mono, stereo and 6 channels; a 0.3 s blip up to 34 s; digital silence; and one corrupt file.
images/ holds 44 pictures: jpg, png and webp; RGB, CMYK, paletted, alpha and greyscale; one too
small to use and one corrupt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw


def _time(seconds: float, rate: int) -> np.ndarray:
    return np.arange(int(round(seconds * rate))) / rate


def bell(t, rng):
    return sum(np.sin(2 * np.pi * f * t) * np.exp(-t % 3 * d) for f, d in [(660, 1.5), (1320, 2.5), (1980, 4)]) * 0.25


def rain(t, rng):
    noise = rng.standard_normal(t.size)
    drops = (rng.random(t.size) < 0.002) * rng.standard_normal(t.size) * 4
    return (0.15 * noise + drops) * 0.2


def birds(t, rng):
    carrier = np.sin(2 * np.pi * (2500 * t + 300 * np.sin(2 * np.pi * 7 * t) / (2 * np.pi * 7)))
    return carrier * (np.sin(2 * np.pi * 1.3 * t) > 0.4) * 0.4


def engine(t, rng):
    base = 38 + 4 * np.sin(2 * np.pi * 0.2 * t)
    phase = 2 * np.pi * np.cumsum(base) / (t.size / t[-1] if t.size > 1 else 1)
    return (np.sign(np.sin(phase)) * 0.2 + 0.05 * rng.standard_normal(t.size)) * 0.6


def wind(t, rng):
    noise = np.cumsum(rng.standard_normal(t.size))
    noise -= np.convolve(noise, np.ones(2001) / 2001, mode="same")
    return noise / (np.abs(noise).max() + 1e-9) * 0.3 * (0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t))


def clicks(t, rng):
    out = np.zeros(t.size)
    out[(np.arange(t.size) % max(1, t.size // 30)) == 0] = 0.9
    return out


def chirp(t, rng):
    return np.sin(2 * np.pi * (200 + 400 * (t % 1.5)) * t) * 0.3


def hum(t, rng):
    return (np.sin(2 * np.pi * 60 * t) + 0.5 * np.sin(2 * np.pi * 120 * t)) * 0.2


def waves(t, rng):
    return rng.standard_normal(t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.12 * t)) ** 2 * 0.25


def drums(t, rng):
    beat = np.exp(-(t % 0.5) * 30) * np.sin(2 * np.pi * 80 * t)
    return beat * 0.7


def crowd(t, rng):
    voices = sum(
        np.sin(2 * np.pi * (150 + 40 * k) * t + rng.random() * 6) * (np.sin(2 * np.pi * (0.5 + 0.2 * k) * t) > 0)
        for k in range(6)
    )
    return voices * 0.06 + rng.standard_normal(t.size) * 0.02


def blip(t, rng):
    return np.sin(2 * np.pi * 1000 * t) * 0.5


def silence(t, rng):
    return np.zeros(t.size)


@dataclass(frozen=True)
class SampleFile:
    name: str
    sound: Callable
    rate: int
    channels: int
    seconds: float
    format: str
    subtype: str


SAMPLE: tuple[SampleFile, ...] = (
    SampleFile("bell_44k_stereo.wav", bell, 44100, 2, 12.0, "WAV", "PCM_16"),
    SampleFile("rain_48k_mono.flac", rain, 48000, 1, 34.0, "FLAC", "PCM_24"),
    SampleFile("birds_22k_mono.ogg", birds, 22050, 1, 20.0, "OGG", "VORBIS"),
    SampleFile("engine_16k_mono.mp3", engine, 16000, 1, 26.0, "MP3", "MPEG_LAYER_III"),
    SampleFile("wind_96k_stereo.flac", wind, 96000, 2, 10.0, "FLAC", "PCM_16"),
    SampleFile("clicks_8k_8bit.wav", clicks, 8000, 1, 7.0, "WAV", "PCM_U8"),
    SampleFile("surround_48k_6ch.wav", hum, 48000, 6, 9.0, "WAV", "FLOAT"),
    SampleFile("chirp_32k_stereo.aiff", chirp, 32000, 2, 15.0, "AIFF", "PCM_16"),
    SampleFile("blip_44k_2s.wav", blip, 44100, 1, 2.0, "WAV", "PCM_16"),
    SampleFile("hum_11k_mono.ogg", hum, 11025, 1, 31.0, "OGG", "VORBIS"),
    SampleFile("waves_44k_stereo.mp3", waves, 44100, 2, 30.0, "MP3", "MPEG_LAYER_III"),
    SampleFile("silence_48k.wav", silence, 48000, 1, 6.0, "WAV", "PCM_16"),
    SampleFile("drums_24k_mono.flac", drums, 24000, 1, 22.0, "FLAC", "PCM_16"),
    SampleFile("whistle_48k_short.wav", blip, 48000, 1, 0.3, "WAV", "PCM_16"),
    SampleFile("crowd_44k_stereo.ogg", crowd, 44100, 2, 18.0, "OGG", "VORBIS"),
)

CORRUPT_NAME = "corrupt_header.wav"


def synthesize(spec: SampleFile, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = _time(spec.seconds, spec.rate)
    mono = np.asarray(spec.sound(t, rng), dtype=np.float64)
    # Channels differ slightly in level so a down-mix is not a copy of one channel.
    return np.stack([mono * (1.0 - 0.1 * c) for c in range(spec.channels)], axis=1).astype(np.float32)


IMAGE_COUNT = 42
IMAGE_MODES = (
    ("RGB", "JPEG", "jpg"),
    ("RGB", "PNG", "png"),
    ("RGB", "WEBP", "webp"),
    ("CMYK", "JPEG", "jpg"),
    ("P", "PNG", "png"),
    ("RGBA", "PNG", "png"),
    ("L", "JPEG", "jpeg"),
)


def synthesize_image(index: int) -> Image.Image:
    """Coloured shapes on a gradient, a different size and layout for every index."""
    rng = np.random.default_rng(1000 + index)
    width, height = int(rng.integers(160, 640)), int(rng.integers(120, 480))
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, np.full_like(x, rng.random(), dtype=float)], axis=-1)
    image = Image.fromarray((base * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        box = (x0, y0, x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def write_images(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(IMAGE_COUNT):
        mode, fmt, extension = IMAGE_MODES[index % len(IMAGE_MODES)]
        path = out / f"scene_{index:03d}.{extension}"
        synthesize_image(index).convert(mode).save(path, format=fmt)
        written.append(path)
    tiny = out / "too_small.png"
    synthesize_image(99).resize((24, 16)).save(tiny, format="PNG")
    broken = out / "corrupt.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(40))
    return [*written, tiny, broken]


def write_sample(out: str | Path) -> list[Path]:
    out = Path(out)
    audio = out / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    written = write_images(out / "images")
    for seed, spec in enumerate(SAMPLE):
        path = audio / spec.name
        soundfile.write(path, synthesize(spec, seed), spec.rate, format=spec.format, subtype=spec.subtype)
        written.append(path)
    corrupt = audio / CORRUPT_NAME
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(64)))
    written.append(corrupt)
    return written

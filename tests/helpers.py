"""Audio helpers for tests: synthetic signals and files in any format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile


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

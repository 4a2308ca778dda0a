"""Reads a sonify run with Hugging Face `datasets`, as a trainer would: `load_dataset` on the run
folder alone, which its dataset card (README.md) describes, and prints what every row of every
split holds as JSON lines. Run as its own process by tests/test_readers.py: torchcodec, which
decodes the audio, finds FFmpeg's libraries through LD_LIBRARY_PATH, read only when a process
starts.

    python -m tests.read_with_datasets [--streaming] SONIFY_OUT
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from datasets import load_dataset


def describe(split: str, row: dict) -> dict:
    """The image, audio and metadata of one row, decoded by the library's own features."""
    image = row["jpg"]
    audio = row["flac"].get_all_samples()
    samples = audio.data.numpy()
    return {
        "split": split,
        "key": row["__key__"],
        "image_size": list(image.size) if image is not None else None,
        "image_mode": image.mode if image is not None else None,
        "audio_shape": list(samples.shape),
        "audio_rate": audio.sample_rate,
        "audio_rms": float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))),
        "metadata": row["json"],
        # The embeddings of sonify.features, from their npy members.
        "features": {
            name.removesuffix(".npy"): np.asarray(value, dtype=np.float64).tolist()
            for name, value in row.items()
            if name.endswith(".npy")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streaming", action="store_true")
    parser.add_argument("folder")
    args = parser.parse_args()
    splits = load_dataset(args.folder, streaming=args.streaming)
    for split, dataset in splits.items():
        for row in dataset:
            print(json.dumps(describe(split, row)))


if __name__ == "__main__":
    main()

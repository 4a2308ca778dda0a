"""Reads sonify shards with Hugging Face `datasets`, as a trainer would, and prints what every row
holds as JSON lines. Run as its own process by tests/test_readers.py: torchcodec, which decodes the
audio, finds FFmpeg's libraries through LD_LIBRARY_PATH, read only when a process starts.

    python -m tests.read_with_datasets --streaming SHARD.tar ...
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from datasets import load_dataset


def describe(row: dict) -> dict:
    """The image, audio and metadata of one row, decoded by the library's own features."""
    image = row["jpg"]
    audio = row["flac"].get_all_samples()
    samples = audio.data.numpy()
    return {
        "key": row["__key__"],
        "image_size": list(image.size) if image is not None else None,
        "image_mode": image.mode if image is not None else None,
        "audio_shape": list(samples.shape),
        "audio_rate": audio.sample_rate,
        "audio_rms": float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))),
        "metadata": row["json"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streaming", action="store_true")
    parser.add_argument("shards", nargs="+")
    args = parser.parse_args()
    dataset = load_dataset("webdataset", data_files={"train": args.shards}, split="train", streaming=args.streaming)
    for row in dataset:
        print(json.dumps(describe(row)))


if __name__ == "__main__":
    main()

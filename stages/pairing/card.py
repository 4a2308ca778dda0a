"""The dataset card, sonify.out/README.md: YAML front matter that Hugging Face `datasets` reads
(configs with the shards of each split, the features of a sample), then how the data was made.

`datasets.load_dataset(<sonify.out>)` takes the splits and features from the front matter, so it
loads only the shards (not the run's other Parquet files) and types every sample as declared
instead of guessing from the first ones. The features are derived from the manifest's Arrow schema,
the contract the shards' JSON member follows (stages.pairing.shards.sample_metadata).
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import yaml

from schemas import MANIFEST
from schemas.config import RunConfig

# Manifest columns the JSON member leaves out (stages.pairing.shards.sample_metadata).
JSON_OMITTED = ("error_kind", "dropped")
# What each embedding of sonify.features is of, and how it is scaled.
FEATURE_SOURCES = {
    "clap_audio": "the mix embedded by the pool's CLAP, unit length",
    "ast": "the mix embedded by an Audio Spectrogram Transformer, its pooled output unnormalized",
    "clip_image": "the image embedded by CLIP, unit length",
}
# Where an unnamed run's shards go in the card.
DEFAULT_SPLIT = "train"
ARROW_DTYPES = {
    pa.string(): "string",
    pa.bool_(): "bool",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.float32(): "float32",
    pa.float64(): "float64",
}


def hf_feature(name: str, arrow_type: pa.DataType) -> dict:
    """One feature in the card's YAML form, from its Arrow type."""
    if pa.types.is_struct(arrow_type):
        return {"name": name, "struct": [hf_feature(f.name, f.type) for f in arrow_type]}
    if pa.types.is_list(arrow_type):
        item = arrow_type.value_type
        if pa.types.is_struct(item):
            return {"name": name, "list": [hf_feature(f.name, f.type) for f in item]}
        return {"name": name, "list": {"dtype": ARROW_DTYPES[item]}}
    return {"name": name, "dtype": ARROW_DTYPES[arrow_type]}


def sample_features(image_extension: str | None, embeddings: Mapping[str, Mapping]) -> list[dict]:
    """The features of a sample: key, shard URL, image (None where shards mix image formats, which
    a declared feature cannot name), mix, manifest row, and each embedding of sonify.features (name ->
    its model's identity, with `dim`) as a fixed-length float32 list, from its KEY.<name>.npy member."""
    row = [hf_feature(f.name, f.type) for f in MANIFEST if f.name not in JSON_OMITTED]
    features = [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]
    if image_extension is not None:
        features.append({"name": image_extension, "dtype": "image"})
    features += [{"name": "flac", "dtype": "audio"}, {"name": "json", "struct": row}]
    return features + [
        {"name": f"{name}.npy", "list": "float32", "length": model["dim"]} for name, model in embeddings.items()
    ]


def source_line(vlm) -> str:
    """A scene source in the card: its name, backend, and the model it runs (a mapper's checkpoint and mode)."""
    line = f"  - `{vlm.name}`: {vlm.backend}"
    if getattr(vlm, "checkpoint", None):
        return f"{line}, `{vlm.checkpoint}` (a CLIP -> CLAP mapper, mode {vlm.mode})"
    return f"{line}, `{vlm.model}`" if getattr(vlm, "model", None) else line


def data_files(samples: Mapping[str | None, int]) -> list[dict]:
    """The shards of each split that has samples, as globs relative to the card: a split with no
    shard would be a glob that matches nothing, which loaders refuse."""
    return [
        {
            "split": DEFAULT_SPLIT if name is None else name,
            "path": "shards/*.tar" if name is None else f"shards/{name}-*.tar",
        }
        for name, count in samples.items()
        if count
    ]


def split_samples(config: RunConfig, summary: dict) -> dict[str | None, int]:
    """Written samples per split (None: the one unnamed set of shards of a run without splits)."""
    if not config.sonify.splits:
        return {None: summary["samples"]}
    return dict(summary["splits"]["samples"])


def front_matter(config: RunConfig, summary: dict, licenses: list[str]) -> dict:
    image = None if config.sonify.image_format == "original" else config.sonify.image_format
    matter: dict = {
        "license": licenses or "other",
        "configs": [{"config_name": "default", "data_files": data_files(split_samples(config, summary))}],
        "tags": ["audio", "image", "audio-visual", "webdataset"],
    }
    if image is not None:
        matter["dataset_info"] = {"features": sample_features(image, summary.get("features") or {})}
    return matter


def dataset_card(config: RunConfig, summary: dict, pool: Mapping, licenses: list[str], license_notes: str) -> str:
    """The card of a finished run: its front matter, then how it was made, from the run's config,
    summary and pool (`indexed_clips`, and `clap`, the pool's CLAP identity)."""
    header = yaml.safe_dump(front_matter(config, summary, licenses), sort_keys=False, allow_unicode=True)
    vlms = "\n".join(source_line(v) for v in config.models.vlm)
    retrieval, mix = config.retrieval, config.mix
    splits = summary.get("splits")
    split_rows = (
        "\n".join(
            f"| {name} | {fraction} | {splits['samples'][name]} |" for name, fraction in config.sonify.splits.items()
        )
        if splits
        else f"| {DEFAULT_SPLIT} | 1.0 | {summary['samples']} |"
    )
    assignment = (
        "Images go to a split by a stable hash of their image id, with every model's sample of them. A split with "
        "no sample has no shard and is left out of the front matter."
        if splits
        else f"The run has no splits (`sonify.splits`): every sample is in `{DEFAULT_SPLIT}`."
    )
    apart = (
        "Each pool recording belongs to one split (by a stable hash of its content), and a sample uses only "
        f"clips of its own split: {splits['concepts_other_split']} concepts were dropped and "
        f"{splits['concepts_rechosen_for_split']} got another clip for it."
        if splits and "concepts_other_split" in splits
        else "The splits share the pool: a clip may be heard in more than one split."
        if splits
        else ""
    )
    missing = summary.get("missing_sounds") or {}
    clap = pool.get("clap") or {}
    embeddings = summary.get("features") or {}
    feature_lines = "".join(
        f"\n- `{name}.npy` (float32, {model['dim']}): {FEATURE_SOURCES[name]}, `{model['model']}` (weights SHA-256 "
        f"`{model['content']}`)."
        for name, model in embeddings.items()
    )
    members = "".join(f", `KEY.{name}.npy`" for name in embeddings)
    members = f" with its embeddings ({members[2:]})" if members else ""
    made = summary.get("concepts_with_generated_clip") or 0
    generated = f" ({made} of its sounds generated from text, not recorded)" if made else ""
    return f"""---
{header}---

# Sonified image dataset

Audio-visual pairs: each image with a {config.pool.clip_seconds}-second mix of recordings of the sounds a
vision-language model lists in it{generated}. Each sample of the WebDataset shards (`shards/*.tar`) has the
image, the mix (`KEY.flac`, mono 16-bit FLAC at {mix.sample_rate} Hz, {config.pool.clip_seconds} s)
and its manifest row (`KEY.json`){members}; `manifest/*.parquet` holds the same rows.

```python
from datasets import load_dataset
dataset = load_dataset("path/to/this/folder")  # every split; streaming=True streams them
```

## How it was made

- Vision-language models (one sample per image and model):
{vlms}
- CLAP: `{clap.get("model")}` ({clap.get("backend")}, {clap.get("dim")} dimensions, weights SHA-256
  `{clap.get("content")}`); a pool of {pool.get("indexed_clips")} indexed clips of {config.pool.clip_seconds} s.
- Retrieval: top {retrieval.search_k} neighbours per concept text, hubness correction
  `{retrieval.hubness}`, signed square root `{retrieval.ssr}`, dynamic threshold over the top {retrieval.k},
  cosine floor {retrieval.min_cosine}, seed {config.seed}.
- Mixing: each source at a target loudness drawn in [{mix.lufs_min}, {mix.lufs_max}] LUFS, the mix under a
  {mix.peak_dbfs} dBFS peak ceiling.
- Counts: {summary["images"]["listed"]} images listed, {summary["samples"]} samples written,
  {summary["rejected"]} scenes rejected, {summary["distinct_clips_used"]} distinct clips used;
  {missing.get("requests", 0)} concepts found no usable clip (`missing_sounds.parquet`).{feature_lines}

## Splits

| split | fraction of images | samples |
|---|---|---|
{split_rows}

{assignment} {apart}

## Licences

{license_notes}
"""

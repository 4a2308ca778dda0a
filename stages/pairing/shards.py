"""WebDataset shards: `NNNNNN.tar` files whose samples are the members sharing a key
(`KEY.jpg`, `KEY.flac`, `KEY.json`), byte-stable (stages.io.tars) and written atomically."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import pyarrow as pa

from schemas import MANIFEST
from stages.io import storage
from stages.io.tars import tar_bytes


def plan_shards(sizes: list[int], target_bytes: int) -> list[int]:
    """Shard index of each sample, in order: a new shard starts when the next sample would push the
    current one past the target (a sample larger than the target gets a shard of its own)."""
    assignment, shard, used = [], 0, 0
    for size in sizes:
        if used and used + size > target_bytes:
            shard, used = shard + 1, 0
        assignment.append(shard)
        used += size
    return assignment


def write_shard(url: str, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    data = tar_bytes(samples)
    storage.write_bytes(url, data)
    return len(data)


# Per-sample scores that are null by design (a mapper's scene has no text score, a run without a
# mapper no image score): the JSON member writes them as null, which the dataset card's float64
# declaration of them admits.
NULLABLE_SCORES = ("text_audio", "image_audio")
# error_kind of a written sample rejected by sonify.min_alignment.
LOW_ALIGNMENT = "low_alignment"


def text_audio_score(concepts: list[dict]) -> float | None:
    """The mean raw CLAP cosine of a sample's text concepts (source text) to their chosen clips; None
    when it has none (a mapper's scene: its mapped concept's cosine is not a text's)."""
    cosines = [c["cosine"] for c in concepts if c["source"] == "text"]
    return math.fsum(cosines) / len(cosines) if cosines else None


def below_floor(scores: dict[str, float | None], floors: dict[str, float | None]) -> str | None:
    """Why a sample falls under sonify.min_alignment: the first score (in the order of `floors`) below
    its floor, with its value and the floor; None when every floor is unset, or met, or its score null."""
    for name, floor in floors.items():
        score = scores.get(name)
        if floor is not None and score is not None and score < floor:
            return f"{name} {score:.4f} is below sonify.min_alignment.{name} {floor}"
    return None


def sample_metadata(row: dict) -> bytes:
    """The sample's JSON member: its manifest row, every key present and of one type in every sample.
    Loaders infer column types from the first samples they meet (Hugging Face datasets: five, of the
    first shard), so a key null there would be typed null and a later string would fail to load. A
    missing text is written as "", in the row and in each of its concepts (a clip without a licence
    among clips with one); a written sample has every number, and a null one is a broken contract,
    except the alignment scores (NULLABLE_SCORES), null where the sample has none, which the card
    declares as float64 (a typed null, not an inferred one). A
    written sample has no error, so error_kind (always null there) is left out, and so is the list of
    dropped concepts: empty in most samples, it would be typed from the first ones and refuse the rest
    (the manifest holds it; `dropped_concepts` counts it here)."""
    metadata = {}
    for field in MANIFEST:
        if field.name in ("error_kind", "dropped"):
            continue
        value = _typed(row["key"], field, row.get(field.name))
        if pa.types.is_list(field.type) and pa.types.is_struct(field.type.value_type):
            element = field.type.value_type
            value = [{f.name: _typed(row["key"], f, item.get(f.name)) for f in element} for item in value]
        metadata[field.name] = value
    return json.dumps(metadata, sort_keys=True).encode()


def _typed(key: str, field: pa.Field, value):
    """A value as the JSON member holds it: "" for a null text; a null score as null; any other null
    number refused."""
    if value is not None or field.name in NULLABLE_SCORES:
        return value
    if not pa.types.is_string(field.type):
        raise ValueError(f"sample {key}: {field.name} is null, and a written sample's numbers never are")
    return ""

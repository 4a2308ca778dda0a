"""The mapper as a scene source (models.vlm, backend: mapper): CLIP embeds each image and the
CLIP -> CLAP mapper maps that vector into CLAP's audio space. Each image's scene gets one concept
with no text: its label is the mapper's name and its vector, of unit length, is what retrieval
searches the pool with, where a VLM's concept gives its text.

The actor loads CLIP and the mapper once. The mapper is loaded only for the CLAP and CLIP
identities given (the pool's CLAP and models.clip), so a checkpoint made for other models is
refused on the worker too, not only by sonify's checks before the run."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from schemas import IMAGES, SCENES, make_table
from schemas.config import ClipConfig, MapperVlmConfig
from stages.base import Resources, Stage
from stages.embed.clip_image import TransformersClip, load_clip
from stages.embed.mapper import load_mapper, map_vectors
from stages.errors import BadInput, error_text
from stages.images.decoding import decode_image

# The IMAGES columns a scene keeps (as the parse stage keeps them from a VLM's answers).
KEPT = [name for name in SCENES.names if name in IMAGES.names]


def mapped_scenes(rows: list[dict], name: str, vectors: dict[int, np.ndarray]) -> pa.Table:
    """SCENES of image rows: row i with a vector in `vectors` gets one concept (label `name`, no
    text, that vector); rows with an error or a drop keep it and get no concept."""
    scenes = []
    for i, row in enumerate(rows):
        scene = {key: row.get(key) for key in KEPT}
        scene |= {"vlm": name, "answer": None, "caption": None, "concepts": None, "dropped_empty_concepts": None}
        if i in vectors:
            scene["concepts"] = [{"label": name, "text": None, "vector": vectors[i].astype(np.float32)}]
            scene["dropped_empty_concepts"] = 0
        scenes.append(scene)
    return make_table(SCENES, {f.name: [s[f.name] for s in scenes] for f in SCENES})


class MapImages(Stage):
    """Decoded images -> scenes of one mapped concept each."""

    name: ClassVar[str] = "map_images"
    required_columns: ClassVar[tuple[str, ...]] = tuple(IMAGES.names)

    def __init__(self, entry: MapperVlmConfig, clip: ClipConfig, clap_identity: dict, clip_identity: dict) -> None:
        self.entry = entry
        self.clip_config = clip
        self.clap_identity = clap_identity
        self.clip_identity = clip_identity
        self.clip: TransformersClip | None = None
        self.mapper = None

    def resources(self) -> Resources:
        e = self.entry
        return Resources(num_cpus=e.num_cpus, num_gpus=e.num_gpus, actors=e.concurrency, batch_size=e.batch_size)

    def output_schema(self) -> pa.Schema:
        return SCENES

    def setup(self) -> None:
        self.mapper, _ = load_mapper(self.entry.checkpoint, self.clap_identity, self.clip_identity)
        self.clip = load_clip(self.clip_config)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        images, positions = [], []
        for i, row in enumerate(rows):
            if row["error"] is not None or row["dropped"] is not None:
                continue
            try:
                images.append(decode_image(row["image_bytes"]).image)
                positions.append(i)
            except BadInput as exc:  # decoded once already; a second failure is still one row's
                row["error"] = error_text(row["uri"], str(exc), row["member"], self.entry.name)
                row["error_kind"], row["error_stage"] = exc.kind, "vlm"
        vectors: dict[int, np.ndarray] = {}
        size = self.clip_config.batch_size
        for start in range(0, len(images), size):
            mapped = map_vectors(self.mapper, self.clip.embed_images(images[start : start + size]))
            vectors.update(zip(positions[start : start + size], mapped))
        return mapped_scenes(rows, self.entry.name, vectors)

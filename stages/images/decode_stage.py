"""The image stage: reads, decodes and validates listed images (stages.images.decoding)."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from schemas import IMAGE_REFS, IMAGES, make_table
from stages.base import Resources, Stage
from stages.errors import BadInput, error_text
from stages.images.decoding import decode_image, read_image_bytes
from stages.images.listing import ImageRef


class DecodeImages(Stage):
    """Reads, decodes and validates listed images; keeps the original bytes for the VLM and shards."""

    name: ClassVar[str] = "decode_images"
    required_columns: ClassVar[tuple[str, ...]] = tuple(IMAGE_REFS.names)

    def __init__(self, min_side: int, max_image_pixels: int, batch_size: int = 32) -> None:
        self.min_side = min_side
        self.max_image_pixels = max_image_pixels
        # The sonify pipeline passes the VLM's batch size, so decoded blocks reach the VLM already
        # cut at its batch boundaries.
        self.batch_size = batch_size

    def resources(self) -> Resources:
        return Resources(num_cpus=1, batch_size=self.batch_size)

    def output_schema(self) -> pa.Schema:
        return IMAGES

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        pending = [i for i, r in enumerate(rows) if r["error"] is None]
        payloads = read_image_bytes([ImageRef(rows[i]["uri"], rows[i]["member"], rows[i]["image_id"]) for i in pending])
        for row in rows:
            row["error_stage"] = "images" if row["error"] else None
        for i, payload in zip(pending, payloads):
            row = rows[i]
            error = payload if isinstance(payload, BadInput) else None
            if error is None:
                try:
                    decoded = decode_image(payload, self.max_image_pixels)
                except BadInput as exc:
                    error = exc
                except Exception as exc:  # one image's failure must not lose the rest of its batch
                    error = BadInput(f"decoding failed ({type(exc).__name__}: {exc})", kind="undecodable")
            if error is not None:
                row.update(
                    error=error_text(row["uri"], str(error), row["member"]), error_kind=error.kind, error_stage="images"
                )
                continue
            row.update(
                width=decoded.width,
                height=decoded.height,
                format=decoded.format,
                num_bytes=len(payload),
                image_bytes=payload,
            )
            if min(decoded.width, decoded.height) < self.min_side:
                row["dropped"] = "too_small"
                row["image_bytes"] = None
        return make_table(IMAGES, {f.name: [r.get(f.name) for r in rows] for f in IMAGES})

"""The parse stage: a VLM's raw answers become scenes (stages.vlm.concepts parses each one)."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from schemas import ANSWERS, SCENES, make_table
from stages.base import Resources, Stage
from stages.errors import error_text
from stages.vlm.concepts import is_non_sonic, parse_answer


class ParseConcepts(Stage):
    """A VLM's raw answers -> scenes: caption, concepts, and why a scene goes no further."""

    name: ClassVar[str] = "parse_concepts"
    required_columns: ClassVar[tuple[str, ...]] = tuple(ANSWERS.names)

    def __init__(self, vlm: str, max_answer_chars: int, max_concepts: int, batch_size: int = 256) -> None:
        self.vlm = vlm
        self.max_answer_chars = max_answer_chars
        self.max_concepts = max_concepts
        self.batch_size = batch_size

    def resources(self) -> Resources:
        return Resources(num_cpus=0.25, batch_size=self.batch_size)

    def output_schema(self) -> pa.Schema:
        return SCENES

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = batch.drop_columns(["image_bytes"]).to_pylist()
        for row in rows:
            row["vlm"] = self.vlm
            row.setdefault("concepts", None)
            if row["error"] or row["dropped"]:
                continue
            parsed = parse_answer(row["answer"], self.max_answer_chars, self.max_concepts)
            if parsed.error:
                row["error"] = error_text(row["uri"], parsed.error, row["member"], self.vlm)
                row["error_kind"], row["error_stage"] = parsed.error_kind, "concepts"
                continue
            row["caption"] = parsed.caption
            row["concepts"] = [{"label": c.label, "text": c.text} for c in parsed.concepts]
            row["dropped_empty_concepts"] = parsed.dropped_empty
            if is_non_sonic(parsed.caption):
                row["dropped"] = "non_sonic"
            elif not parsed.concepts:
                row["dropped"] = "no_concepts"
        return make_table(SCENES, {f.name: [r.get(f.name) for r in rows] for f in SCENES})

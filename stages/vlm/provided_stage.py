"""Concepts the user already has: a Parquet or JSONL file mapping image_id to a list of
{label, text} (and optionally a caption). The VLM is skipped; answers go through the same parser."""

from __future__ import annotations

import json
from typing import ClassVar

import pyarrow as pa

from schemas import ANSWERS
from schemas.config import ProvidedVlmConfig
from schemas.errors import PipelineError
from stages.base import Resources, Stage
from stages.errors import error_text
from stages.io import storage
from stages.vlm.concepts import answers_table


class ProvidedConceptsError(PipelineError):
    """The concepts file cannot be used."""


def read_provided(url: str) -> dict[str, str]:
    """image_id -> an answer in the VLM answer format."""
    if url.endswith(".parquet"):
        records = storage.read_parquet(url).to_pylist()
    else:
        records = []
        for number, line in enumerate(storage.read_bytes(url).decode().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ProvidedConceptsError(f"{url} line {number}: not JSON ({exc.msg})") from None
    answers = {}
    for number, record in enumerate(records, 1):
        if "image_id" not in record or "concepts" not in record:
            raise ProvidedConceptsError(f"{url} record {number}: needs image_id and concepts, has {sorted(record)}")
        answers[str(record["image_id"])] = json.dumps(
            {"caption": record.get("caption") or "", "sounds": record["concepts"] or []}
        )
    return answers


class ProvidedConcepts(Stage):
    name: ClassVar[str] = "provided_concepts"
    required_columns: ClassVar[tuple[str, ...]] = ("image_id", "error", "dropped")

    def __init__(self, vlm: ProvidedVlmConfig) -> None:
        self.vlm = vlm
        self.answers: dict[str, str] | None = None

    def resources(self) -> Resources:
        return Resources(num_cpus=0.5, actors=1, batch_size=256)

    def output_schema(self) -> pa.Schema:
        return ANSWERS

    def setup(self) -> None:
        self.answers = read_provided(self.vlm.path)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        answers = []
        for row in rows:
            answer = self.answers.get(row["image_id"])
            if answer is None and row["error"] is None and row["dropped"] is None:
                reason = f"no concepts provided for image_id {row['image_id']!r} in {self.vlm.path}"
                row["error"] = error_text(row["uri"], reason, row.get("member"))
                row["error_kind"], row["error_stage"] = "no_concepts_provided", "vlm"
            answers.append(answer)
        return answers_table(rows, answers)

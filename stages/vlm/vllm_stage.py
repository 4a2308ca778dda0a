"""VLM answers with vLLM through Ray Data LLM (`ray.data.llm.vLLMEngineProcessorConfig` and
`build_processor`, which the runner calls with this stage's settings): a fixed pool of GPU engine
replicas, images as OpenAI-style image parts, pixels capped before they are sent, answers
constrained to the JSON schema by vLLM's structured outputs, and failed rows kept
(should_continue_on_error) instead of failing the job. Rows that need no answer travel through the
same processor, passed over by every stage.

vLLM needs a GPU; on machines without one only the request building and the answer
normalization below run (and are tested)."""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

from schemas import ANSWERS, IMAGES
from schemas.config import PromptConfig, VllmVlmConfig
from schemas.errors import PipelineError
from stages.base import EngineStage, Resources
from stages.errors import error_text
from stages.images.decoding import vlm_jpeg
from stages.io.model_files import is_remote, stage_model
from stages.vlm.concepts import answer_schema, answers_table, openai_user_message

INFERENCE_ERROR = "__inference_error__"
# What rows that need no answer carry in INFERENCE_ERROR, so that the processor passes them through.
NO_ANSWER_NEEDED = "sonify: no answer needed"
# Ray Data LLM downloads models at these URLs itself, on every node that runs an engine.
RAY_LLM_REMOTE_PREFIXES = ("s3://", "gs://", "abfss://", "azure://")


def vllm_model_source(model: str) -> str:
    """The model_source given to Ray Data LLM: a Hugging Face id, a local path (file:// URLs become
    paths), or a cloud URL that Ray Data LLM downloads. Other remote protocols are refused here,
    before any engine starts, because no engine node could load them."""
    if not is_remote(model):
        return stage_model(model)
    if model.startswith(RAY_LLM_REMOTE_PREFIXES):
        return model
    raise PipelineError(
        f"vllm model {model}: Ray Data LLM loads models from {', '.join(RAY_LLM_REMOTE_PREFIXES)} URLs, "
        "Hugging Face ids and local paths only"
    )


def vllm_request(row: dict[str, Any], prompt: PromptConfig, temperature: float) -> dict[str, Any]:
    """preprocess: one image row -> chat messages and sampling parameters (all columns kept).

    Rows that need no answer (an image error, a dropped image) and rows whose image cannot be
    re-encoded for the VLM are marked in Ray Data LLM's error column, which every processor stage
    and the postprocess pass through untouched. So the dataset is one stream: filtering those rows
    out and joining them back would run everything upstream (reading, decoding) twice."""
    if row["error"] is None and row["dropped"] is None:
        try:
            jpeg = vlm_jpeg(row["image_bytes"], prompt.max_pixels)
        except Exception as exc:  # one image that cannot be re-encoded is that row's error
            reason = f"image could not be prepared for the VLM ({type(exc).__name__}: {exc})"
            row = {
                **row,
                "error": error_text(row["uri"], reason, row["member"]),
                "error_kind": "image_not_prepared",
                "error_stage": "vlm",
            }
        else:
            return {
                **row,
                "messages": [openai_user_message(prompt.text, jpeg)],
                "sampling_params": {
                    "temperature": temperature,
                    "max_tokens": prompt.max_new_tokens,
                    "structured_outputs": {"json": answer_schema(prompt.max_concepts, prompt.max_text_chars)},
                },
                INFERENCE_ERROR: "",
            }
    return {**row, INFERENCE_ERROR: NO_ANSWER_NEEDED}


def vllm_answer(row: dict[str, Any]) -> dict[str, Any]:
    """postprocess of a successful row: its image columns and the generated text."""
    return {**{f.name: row.get(f.name) for f in IMAGES}, "answer": row.get("generated_text")}


def normalize_answers(batch: pa.Table, vlm_name: str) -> pa.Table:
    """Rows out of the processor -> the answers schema. Rows that failed inside the engine bypass
    postprocess and carry the engine's message in __inference_error__; it becomes their error.
    Rows that needed no answer keep their own error or drop reason."""
    rows = batch.to_pylist()
    answers = []
    for row in rows:
        failure = row.get(INFERENCE_ERROR) or ""
        answers.append(None if failure else row.get("answer"))
        if failure and failure != NO_ANSWER_NEEDED:
            row["error"] = error_text(row.get("uri"), f"{vlm_name} failed: {failure}", row.get("member"))
            row["error_kind"], row["error_stage"] = "vlm_failed", "vlm"
    return answers_table(rows, answers)


class VllmVlm(EngineStage):
    """VLM answers from vLLM engine replicas that Ray Data LLM runs: a fixed pool of
    `concurrency` replicas, images as OpenAI-style image parts, failed rows kept."""

    name: ClassVar[str] = "vlm_vllm"
    required_columns: ClassVar[tuple[str, ...]] = tuple(IMAGES.names)

    def __init__(self, vlm: VllmVlmConfig, prompt: PromptConfig) -> None:
        self.vlm = vlm
        self.prompt = prompt

    def resources(self) -> Resources:
        return Resources(num_cpus=0.25, batch_size=self.vlm.batch_size)

    def output_schema(self) -> pa.Schema:
        return ANSWERS

    def engine_config(self) -> dict[str, Any]:
        return {
            "model_source": vllm_model_source(self.vlm.model),
            "engine_kwargs": {"limit_mm_per_prompt": {"image": 1}, **self.vlm.engine_kwargs},
            "concurrency": self.vlm.concurrency,
            "batch_size": self.vlm.batch_size,
            "prepare_multimodal_stage": {"enabled": True},
            "should_continue_on_error": True,
        }

    def request(self, row: dict[str, Any]) -> dict[str, Any]:
        return vllm_request(row, self.prompt, self.vlm.temperature)

    def answer(self, row: dict[str, Any]) -> dict[str, Any]:
        return vllm_answer(row)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        return normalize_answers(batch, self.vlm.name)

"""VLM answers with vLLM through Ray Data LLM (`ray.data.llm.vLLMEngineProcessorConfig` and
`build_processor`): a fixed pool of GPU engine replicas, images as OpenAI-style image parts, pixels
capped before they are sent, answers constrained to the JSON schema by vLLM's structured outputs,
and failed rows kept (should_continue_on_error) instead of failing the job.

vLLM needs a GPU; on machines without one only the request building and the answer
normalization below run (and are tested)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipelines.config import PromptConfig, VlmConfig
from schemas import ANSWERS, IMAGES
from stages.concepts import answer_schema, openai_user_message
from stages.images import vlm_jpeg
from stages.model_files import is_remote, stage_model

INFERENCE_ERROR = "__inference_error__"
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
    raise ValueError(
        f"vllm model {model}: Ray Data LLM loads models from {', '.join(RAY_LLM_REMOTE_PREFIXES)} URLs, "
        "Hugging Face ids and local paths only"
    )


def vllm_request(row: dict[str, Any], prompt: PromptConfig, temperature: float) -> dict[str, Any]:
    """preprocess: one image row -> chat messages and sampling parameters (all columns kept)."""
    return {
        **row,
        "messages": [openai_user_message(prompt.text, vlm_jpeg(row["image_bytes"], prompt.max_pixels))],
        "sampling_params": {
            "temperature": temperature,
            "max_tokens": prompt.max_new_tokens,
            "structured_outputs": {"json": answer_schema(prompt.max_concepts, prompt.max_text_chars)},
        },
    }


def vllm_answer(row: dict[str, Any]) -> dict[str, Any]:
    """postprocess of a successful row: its image columns and the generated text."""
    return {**{f.name: row.get(f.name) for f in IMAGES}, "answer": row.get("generated_text")}


def normalize_answers(batch: pa.Table, vlm_name: str) -> pa.Table:
    """Rows out of the engine -> the answers schema. Rows that failed inside the engine bypass
    postprocess and carry the engine's message in __inference_error__; it becomes their error."""
    rows = batch.to_pylist()
    out = []
    for row in rows:
        failure = row.get(INFERENCE_ERROR) or ""
        record = {f.name: row.get(f.name) for f in IMAGES}
        record["answer"] = None if failure else row.get("answer")
        if failure:
            record["error"] = f"{row.get('uri')}: {vlm_name} failed: {failure}"
            record["error_stage"] = "vlm"
        out.append(record)
    return pa.Table.from_pylist(out, schema=ANSWERS)


def answer_with_vllm(dataset, vlm: VlmConfig, prompt: PromptConfig):
    """Images dataset -> answers dataset. Rows that need no answer (errors, dropped images) skip the
    engine and rejoin afterwards."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    config = vLLMEngineProcessorConfig(
        model_source=vllm_model_source(vlm.model),
        engine_kwargs={"limit_mm_per_prompt": {"image": 1}, **vlm.engine_kwargs},
        concurrency=vlm.concurrency,
        batch_size=vlm.batch_size,
        prepare_multimodal_stage={"enabled": True},
        should_continue_on_error=True,
    )
    processor = build_processor(
        config,
        preprocess=lambda row: vllm_request(row, prompt, vlm.temperature),
        postprocess=vllm_answer,
    )
    needs_answer = dataset.filter(lambda row: row["error"] is None and row["dropped"] is None)
    skipped = dataset.filter(lambda row: row["error"] is not None or row["dropped"] is not None).map_batches(
        lambda batch: normalize_answers(batch, vlm.name), batch_format="pyarrow"
    )
    answered = processor(needs_answer).map_batches(lambda batch: normalize_answers(batch, vlm.name), batch_format="pyarrow")
    return answered.union(skipped)

"""VLM answers with vLLM through Ray Data LLM (`ray.data.llm.vLLMEngineProcessorConfig` and
`build_processor`): a fixed pool of GPU engine replicas, images as OpenAI-style image parts, pixels
capped before they are sent, answers constrained to the JSON schema by vLLM's structured outputs,
and failed rows kept (should_continue_on_error) instead of failing the job. Rows that need no
answer travel through the same processor, passed over by every stage.

vLLM needs a GPU; on machines without one only the request building and the answer
normalization below run (and are tested)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipelines.config import PromptConfig, VlmConfig
from schemas import IMAGES
from stages.concepts import answer_schema, answers_table, openai_user_message
from stages.images import vlm_jpeg
from stages.model_files import is_remote, stage_model

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
    raise ValueError(
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
            row = {**row, "error": f"{row['uri']}: image could not be prepared for the VLM ({type(exc).__name__}: {exc})", "error_stage": "vlm"}
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
            row["error"] = f"{row.get('uri')}: {vlm_name} failed: {failure}"
            row["error_stage"] = "vlm"
    return answers_table(rows, answers)


def answer_with_vllm(dataset, vlm: VlmConfig, prompt: PromptConfig, task_retries: int, actor_restarts: int):
    """Images dataset -> answers dataset, through a Ray Data LLM vLLM processor. Its stages are
    actor pools: they get `actor_restarts` restarts and `task_retries` retries of a batch whose
    actor died, and the preprocess and postprocess tasks get `task_retries` retries."""
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
        preprocess_map_kwargs={"max_retries": task_retries},
        postprocess_map_kwargs={"max_retries": task_retries},
    )
    for name in processor.list_stage_names():
        stage = processor.get_stage_by_name(name)
        stage.map_batches_kwargs = {**stage.map_batches_kwargs, "max_restarts": actor_restarts, "max_task_retries": task_retries}
    return answer_through(processor, dataset, vlm.name)


def answer_through(processor, dataset, vlm_name: str):
    """The processor's rows, in the answers schema; one pass over `dataset`."""
    return processor(dataset).map_batches(lambda batch: normalize_answers(batch, vlm_name), batch_format="pyarrow")

"""The VLM settings of the run configuration: the prompt, and one model per VLM backend, told apart
by their `backend` key (the `mapper` backend is a scene source without words: a CLIP -> CLAP
mapper). Each backend takes its own keys only; a key of another backend is refused
with the backend it belongs to, so a setting that would be ignored never passes silently."""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from schemas.config_base import ConfigSection

DEFAULT_PROMPT = (
    "List the sound sources that are visible and present in this image: things that would make a "
    "sound in this scene. Do not add sounds of things outside the picture, and nothing for drawings, "
    "statues or text. For each source give a short label and a one-sentence description of its sound, "
    "as in 'dog: the sound of a dog barking while running in the grass'. Also give a one-line caption "
    'of the image. Answer with JSON only: {"caption": "...", "sounds": [{"label": "...", "text": "..."}]}'
)


class PromptConfig(ConfigSection):
    version: str = Field("sounds-v1", description="Version of the prompt, written to every manifest row.")
    text: str = Field(DEFAULT_PROMPT, description="The instruction sent with each image.")
    max_concepts: int = Field(8, ge=1, description="Sounding concepts kept per image and VLM.")
    max_answer_chars: int = Field(4000, ge=100, description="Longer answers are recorded as errors.")
    max_text_chars: int = Field(
        160, ge=8, description="Longest caption, label or sound text that structured decoding allows."
    )
    max_new_tokens: int = Field(384, ge=16, description="Generation budget of one answer.")
    max_pixels: int = Field(
        448 * 448, ge=28 * 28, description="Images are downscaled to at most this many pixels before the VLM."
    )


class VlmEntry(ConfigSection):
    """What every VLM entry has, whatever its backend."""

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="Short name (up to 64 letters, digits, `_`, `-`; starting with a letter or digit); the manifest's "
        "`vlm` column. No `__`: it separates image id and VLM in sample keys.",
    )
    backend: str = Field(..., description="Which backend answers; it decides which other keys the entry takes.")
    batch_size: int = Field(
        8, ge=1, description="Images per batch, through image decoding, the VLM and the parsing of its answers."
    )

    @field_validator("name")
    @classmethod
    def _name_separates_in_keys(cls, name: str) -> str:
        # Keys are "<image id>__<vlm>": with "__" in a VLM name, image "a" with VLM "b__c" and
        # image "a__b" with VLM "c" would share a key.
        if "__" in name:
            raise ValueError(f"{name!r} contains '__', which separates image id and VLM name in sample keys")
        return name

    @model_validator(mode="before")
    @classmethod
    def _refuse_keys_of_other_backends(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        own = backend_name(cls)
        foreign = {
            key: [b for b, model in VLM_BACKENDS.items() if key in model.model_fields]
            for key in data
            if key not in cls.model_fields
        }
        listed = [f"{key} (a setting of backend {' and '.join(owners)})" for key, owners in foreign.items() if owners]
        if listed:
            raise ValueError(f"backend {own} does not take {', '.join(listed)}")
        return data


class VllmVlmConfig(VlmEntry):
    backend: Literal["vllm"] = Field(..., description="vllm: vLLM engine replicas run by Ray Data LLM, on GPUs.")
    model: str = Field(
        ...,
        description="Hugging Face id, local folder, or an s3://, gs://, abfss:// or azure:// URL, which Ray Data LLM "
        "downloads on every node that runs an engine.",
    )
    concurrency: int = Field(1, ge=1, description="Engine replicas, a fixed pool.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Engine arguments, e.g. {max_model_len: 8192, tensor_parallel_size: 1}."
    )
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 is greedy.")


class TransformersVlmConfig(VlmEntry):
    backend: Literal["transformers"] = Field(
        ..., description="transformers: AutoModelForImageTextToText in model actors, on CPU or GPU."
    )
    model: str = Field(
        ...,
        description="Hugging Face id or folder; any fsspec URL, copied once per node like models.clap.model.",
    )
    concurrency: int = Field(1, ge=1, description="Model actors, each holding one model.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per model actor; 0 runs on CPU.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 is greedy.")


class OpenAIVlmConfig(VlmEntry):
    backend: Literal["openai"] = Field(..., description="openai: an OpenAI-compatible /v1/chat/completions server.")
    model: str = Field(..., description="The model name the server serves.")
    base_url: str = Field(..., description="Server URL up to /v1, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key, if any.")
    timeout_s: float = Field(120.0, gt=0, description="Timeout of one request, in seconds.")
    retries: int = Field(3, ge=0, description="Retries of a failed request, with exponential backoff.")
    concurrency: int = Field(1, ge=1, description="Requests in flight at once.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 is greedy.")


class ProvidedVlmConfig(VlmEntry):
    backend: Literal["provided"] = Field(..., description="provided: concepts read from a file; no model runs.")
    path: str = Field(
        ...,
        description="Parquet or JSONL file (fsspec URL) of {image_id, concepts: [{label, text}]}, each row "
        "optionally with a caption.",
    )


class MapperVlmConfig(VlmEntry):
    backend: Literal["mapper"] = Field(
        ...,
        description="mapper: no words; CLIP (models.clip) embeds each image and a trained CLIP -> CLAP mapper "
        "(`run_pipeline.py train-mapper`) maps it into CLAP's audio space, and that vector is the concept's query "
        "(docs/mapper.md).",
    )
    checkpoint: str = Field(
        ...,
        description="The mapper's .safetensors file (fsspec URL), trained with models.clip and the pool's CLAP; "
        "one made for another CLAP or CLIP is refused before any work.",
    )
    mode: Literal["scene", "ambience"] = Field(
        "scene",
        description="scene: each image gets one more scene (sample), whose one concept is the mapped vector. "
        "ambience: no scene of its own; the mapped vector is added as one more concept to every scene of the "
        "same image that the text VLMs give.",
    )
    concurrency: int = Field(1, ge=1, description="CLIP and mapper actors, each holding both models.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; 0 runs on CPU.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor.")


VlmConfig = Annotated[
    VllmVlmConfig | TransformersVlmConfig | OpenAIVlmConfig | ProvidedVlmConfig | MapperVlmConfig,
    Field(discriminator="backend"),
]


def backend_name(model: type[VlmEntry]) -> str:
    return typing.get_args(model.model_fields["backend"].annotation)[0]


VLM_BACKENDS: dict[str, type[VlmEntry]] = {
    backend_name(m): m
    for m in (VllmVlmConfig, TransformersVlmConfig, OpenAIVlmConfig, ProvidedVlmConfig, MapperVlmConfig)
}

"""Typed run configuration: YAML file plus dotted command-line overrides, validated before any work.

Every field has a description; the README's configuration reference lists the same fields.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(_Section):
    address: str | None = Field(
        None,
        description="Address of an existing Ray cluster to join (`auto`, `ray://host:10001`). "
        "Unset: the RAY_ADDRESS environment variable if set, else a local Ray started in-process.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray; unset means all of them.")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env passed to ray.init, e.g. {working_dir: .} on a cluster whose "
        "nodes do not have this project installed.",
    )
    task_retries: int = Field(
        3,
        ge=-1,
        description="Times a batch is run again after the worker process running it died (killed, out of "
        "memory, node lost), for task stages and model actors alike; -1: without limit. Errors raised by a "
        "stage itself are not retried. A batch that kills its worker every time fails the run after this many retries.",
    )
    actor_restarts: int = Field(
        10,
        ge=-1,
        description="Times each model actor (CLAP, VLM) is started again, loading its model again, after its "
        "process died; -1: without limit, for long runs on preemptible nodes.",
    )


class IndexConfig(_Section):
    kind: Literal["flat", "ivf", "hnsw"] = Field(
        "flat",
        description="flat: exact inner product. ivf: IVF-Flat, trained on the pool. hnsw: HNSW graph. "
        "Vectors are L2-normalized, so inner product is cosine.",
    )
    nlist: int | None = Field(
        None, ge=1, description="IVF cells; unset means 4*sqrt(N), capped so each cell trains on 39 vectors."
    )
    nprobe: int = Field(16, ge=1, description="IVF cells visited per query.")
    hnsw_m: int = Field(32, ge=4, description="HNSW neighbours per node.")
    ef_construction: int = Field(80, ge=8, description="HNSW build-time search depth.")
    ef_search: int = Field(64, ge=8, description="HNSW query-time search depth.")
    recall_queries: int = Field(
        500, ge=1, description="Pool vectors used as queries when measuring an approximate index's recall."
    )
    recall_k: int = Field(10, ge=1, description="k of the recall@k reported for an approximate index.")


class PoolConfig(_Section):
    sources: list[str] = Field(
        default_factory=list,
        description="Audio files: fsspec URLs or globs (local paths, s3://, gs://, memory://). "
        "wav, flac, mp3, ogg and aiff at any rate, bit depth and channel count.",
    )
    dir: str = Field(..., description="Pool folder (fsspec URL): clips, audio, embeddings, index, summary.")
    sample_rate: int = Field(48000, ge=8000, le=192000, description="Rate of the stored clips, in Hz.")
    clip_seconds: float = Field(
        5.0, ge=0.5, le=60.0, description="Length of each non-overlapping clip; the last is zero-padded."
    )
    silence_lufs: float = Field(
        -70.0, description="Clips quieter than this integrated loudness are flagged silent and never indexed."
    )
    mix_sample_rates: list[int] = Field(
        default_factory=lambda: [16000],
        description="Rates at which mixes will be made. Loudness is also stored at each of them, measured "
        "on the clip resampled exactly as the mixer resamples it.",
    )
    files_per_part: int = Field(
        16, ge=1, description="Source files per part, the unit of work and of output files."
    )
    retry_errors: bool = Field(
        False, description="Re-read sources whose last attempt ended in an error row, even if unchanged."
    )
    index: IndexConfig = Field(default_factory=IndexConfig, description="FAISS index over non-silent clips.")


class ClapConfig(_Section):
    backend: Literal["transformers", "laion_clap"] = Field(
        "transformers", description="transformers ClapModel, or laion-clap CLAP_Module."
    )
    model: str = Field(
        ...,
        description="transformers: a Hugging Face id (laion/larger_clap_general) or a folder. "
        "laion_clap: a .pt checkpoint (630k-audioset-best.pt). Folders and files may be fsspec URLs: "
        "remote ones are copied once per node into $SONIFY_MODEL_CACHE (default ~/.cache/sonify/models).",
    )
    amodel: str = Field(
        "HTSAT-tiny", description="laion_clap audio encoder; the music checkpoints need HTSAT-base."
    )
    enable_fusion: bool = Field(False, description="laion_clap: fusion checkpoints need true.")
    text_backbones_dir: str | None = Field(
        None,
        description="laion_clap: folder (fsspec URL) holding roberta-base, bert-base-uncased and facebook/bart-base, "
        "which laion-clap loads by name. Unset: the Hugging Face hub or cache.",
    )
    batch_size: int = Field(32, ge=1, description="Clips or texts per forward pass.")
    concurrency: int = Field(1, ge=1, description="Embedding actors, each holding one model.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per embedding actor; 0 runs on CPU.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per embedding actor.")


DEFAULT_PROMPT = (
    "List the sound sources that are visible and present in this image: things that would make a "
    "sound in this scene. Do not add sounds of things outside the picture, and nothing for drawings, "
    "statues or text. For each source give a short label and a one-sentence description of its sound, "
    "as in 'dog: the sound of a dog barking while running in the grass'. Also give a one-line caption "
    'of the image. Answer with JSON only: {"caption": "...", "sounds": [{"label": "...", "text": "..."}]}'
)


class PromptConfig(_Section):
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


class VlmConfig(_Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]+$", description="Short name; the manifest's `vlm` column.")
    backend: Literal["vllm", "transformers", "openai", "provided"] = Field(
        ...,
        description="vllm: Ray Data LLM engine (GPU). transformers: AutoModelForImageTextToText. "
        "openai: an OpenAI-compatible /v1/chat/completions server. provided: concepts from a file.",
    )
    model: str | None = Field(
        None,
        description="Hugging Face id or folder (vllm, transformers), or the served model name (openai). "
        "transformers: any fsspec URL, copied once per node like models.clap.model. vllm: s3://, gs://, "
        "abfss:// and azure:// URLs, which Ray Data LLM downloads.",
    )
    path: str | None = Field(None, description="provided: Parquet or JSONL (fsspec URL) of {image_id, concepts: [{label, text}]}.")
    batch_size: int = Field(8, ge=1, description="Images per batch.")
    concurrency: int = Field(1, ge=1, description="Engine replicas or model actors (vllm, transformers); parallel requests (openai).")
    num_gpus: float = Field(0.0, ge=0, description="transformers: GPUs per actor.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vllm: engine arguments, e.g. {max_model_len: 8192, tensor_parallel_size: 1}."
    )
    base_url: str | None = Field(None, description="openai: server URL up to /v1, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the API key, if any.")
    timeout_s: float = Field(120.0, gt=0, description="openai: timeout of one request.")
    retries: int = Field(3, ge=0, description="openai: retries of a failed request, with exponential backoff.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 is greedy.")


class ModelsConfig(_Section):
    clap: ClapConfig = Field(..., description="The CLAP model used for audio and text embeddings.")
    vlm: list[VlmConfig] = Field(
        default_factory=list, description="VLMs listing sounding concepts; each gives one scene (sample) per image."
    )


class SonifyConfig(_Section):
    images: list[str] = Field(
        default_factory=list,
        description="Images: fsspec URLs or globs of jpg/png/webp files, WebDataset .tar shards, or "
        ".parquet files with a `uri` column (and optionally `image_id`).",
    )
    out: str | None = Field(None, description="Output folder (fsspec URL): manifest, shards, run files.")
    min_side: int = Field(64, ge=1, description="Images whose shorter side is below this are dropped and counted.")
    max_image_pixels: int = Field(
        200_000_000, ge=1, description="Decompression-bomb guard: larger images are error rows."
    )
    shard_size_mb: float = Field(256.0, gt=0, description="Target size of each WebDataset shard.")
    images_per_chunk: int = Field(
        4096,
        ge=1,
        description="Images per chunk, the unit of resume and of streaming: each VLM's answers are saved per "
        "chunk as it completes, a killed run redoes only unfinished chunks, and shards never span chunks. "
        "Must be a multiple of every VLM's batch_size (checked when sonify starts).",
    )
    image_format: Literal["jpg", "webp", "png", "original"] = Field(
        "jpg",
        description="How shards carry images. jpg, webp or png: every image is decoded (upright, RGB) and "
        "encoded once, so every sample has its image under the one member name KEY.<format>, as loaders "
        "that take their columns from the first shard (Hugging Face datasets) need. original: the source "
        "bytes, EXIF included, under the extension of their decoded format; inputs that mix formats then "
        "give samples of different member names, which such loaders do not read whole.",
    )
    image_quality: int = Field(95, ge=1, le=100, description="Encoder quality of jpg and webp images; png is lossless.")
    max_image_side: int | None = Field(
        None,
        ge=1,
        description="Images whose longer side is above this are downscaled to it, keeping the aspect ratio, "
        "before they are encoded; unset keeps every size. Needs a re-encoding image_format (not original).",
    )


class RetrievalConfig(_Section):
    search_k: int = Field(64, ge=1, description="K: neighbours fetched from the index per concept text.")
    k: int = Field(16, ge=1, description="k: the threshold is the mean of the top-k scores; k <= search_k.")
    ssr: bool = Field(True, description="Signed square root of the scores; false for the ablation.")
    min_cosine: float = Field(
        0.0, ge=-1, le=1, description="Concepts whose best cosine is below this are dropped and counted."
    )


class MixConfig(_Section):
    sample_rate: int = Field(16000, ge=8000, le=192000, description="Rate of the mixes; must be in pool.mix_sample_rates.")
    lufs_min: float = Field(-27.0, le=0, description="Lower end of each source's target loudness.")
    lufs_max: float = Field(-23.0, le=0, description="Upper end of each source's target loudness.")
    peak_dbfs: float = Field(-1.0, le=0, description="Peak ceiling: a mix above it is scaled down and the gain recorded.")


class RenderConfig(_Section):
    manifest: str | None = Field(None, description="render: the manifest folder (fsspec URL) of a sonify run.")
    out: str | None = Field(None, description="render: where to write the rebuilt shards and manifest (fsspec URL).")


class RunConfig(_Section):
    seed: int = Field(0, description="Global seed of every random choice.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Where the work runs.")
    pool: PoolConfig = Field(..., description="The audio pool.")
    models: ModelsConfig = Field(..., description="Model checkpoints and their batching.")
    sonify: SonifyConfig = Field(default_factory=SonifyConfig, description="Images in, pairs out.")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="The VLM instruction.")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig, description="Choosing clips.")
    mix: MixConfig = Field(default_factory=MixConfig, description="Mixing the chosen clips.")
    render: RenderConfig = Field(default_factory=RenderConfig, description="Rebuilding a dataset from a manifest.")

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RunConfig:
        bad = [r for r in self.pool.mix_sample_rates if r < 8000 or r > 192000]
        if bad:
            raise ValueError(f"pool.mix_sample_rates: {bad} outside 8000..192000 Hz")
        if self.retrieval.k > self.retrieval.search_k:
            raise ValueError(f"retrieval.k ({self.retrieval.k}) must not exceed retrieval.search_k ({self.retrieval.search_k})")
        if self.mix.lufs_min > self.mix.lufs_max:
            raise ValueError(f"mix.lufs_min ({self.mix.lufs_min}) is above mix.lufs_max ({self.mix.lufs_max})")
        if self.sonify.max_image_side is not None and self.sonify.image_format == "original":
            raise ValueError("sonify.max_image_side needs sonify.image_format jpg, webp or png: original keeps the source bytes")
        names = [v.name for v in self.models.vlm]
        if len(set(names)) != len(names):
            raise ValueError(f"models.vlm: names must be unique, got {names}")
        for i, vlm in enumerate(self.models.vlm):
            needed = {"provided": "path", "openai": "base_url"}.get(vlm.backend, "model")
            if getattr(vlm, needed) is None:
                raise ValueError(f"models.vlm.{i}.{needed}: required for backend {vlm.backend}")
            if vlm.backend == "openai" and vlm.model is None:
                raise ValueError(f"models.vlm.{i}.model: required for backend openai")
        return self


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE` with VALUE parsed as YAML, so `k=16`, `x=true` and `l=["a","b"]` get their types."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value is not valid YAML ({exc.problem})") from None
    return path, value


def _apply(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a section")
        node = child
    node[path[-1]] = value


def _describe(error: dict[str, Any]) -> str:
    if not error["loc"]:
        return str(error["msg"]).removeprefix("Value error, ")
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {error['msg']}{shown}"


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    for text in overrides:
        key_path, value = parse_override(text)
        _apply(tree, key_path, value)
    return validate_config(tree, origin=str(path))


def validate_config(tree: dict[str, Any], origin: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(f"{origin}: {_describe(first)}{suffix}") from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _type_name(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if type(None) in args:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + ", optional"
    if isinstance(annotation, type) and not args:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def config_reference(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Markdown table rows (key, type, default, description) of every leaf key, in order."""
    rows = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(config_reference(annotation, f"{key}."))
            continue
        item = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
        if isinstance(item, type) and issubclass(item, BaseModel):
            rows.append(f"| `{key}` | list | `[]` | {info.description} Each entry: |")
            rows.extend(config_reference(item, f"{key}[]."))
            continue
        if info.is_required():
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            default = "unset" if value is None else f"`{json.dumps(value)}`"
        rows.append(f"| `{key}` | {_type_name(annotation)} | {default} | {info.description} |")
    return rows

"""The run configuration's contract: typed sections, each field with its description, validated
before any work. Loading files, command-line overrides and the generated reference live in
`pipelines.config`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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
    kind: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto",
        description="auto: flat below exact_below vectors, ivf at or above. flat: exact inner product. ivf: "
        "IVF-Flat, trained on a sample of the pool. hnsw: HNSW graph. Vectors are L2-normalized, so inner product "
        "is cosine. index/index.json records the kind built.",
    )
    exact_below: int = Field(
        200_000,
        ge=1,
        description="auto: pools of fewer vectors get an exact flat index, pools of this many or more an IVF one "
        "(exact search cost grows with the pool; see benchmarks/scale_search.py).",
    )
    nlist: int | None = Field(
        None, ge=1, description="IVF cells; unset means 4*sqrt(N), capped so each cell trains on 39 vectors."
    )
    nprobe: int = Field(
        1,
        ge=1,
        description="IVF cells visited per query at the first try; each retrieval actor doubles it on its "
        "calibration texts until retrieval.target_recall is reached. A low start costs only searches of those texts.",
    )
    hnsw_m: int = Field(32, ge=4, description="HNSW neighbours per node.")
    ef_construction: int = Field(80, ge=8, description="HNSW build-time search depth.")
    ef_search: int = Field(
        64,
        ge=8,
        description="HNSW query-time search depth at the first try; each retrieval actor doubles it on its "
        "calibration texts until retrieval.target_recall is reached.",
    )


class ParquetSourceConfig(_Section):
    audio_column: str = Field(
        "audio",
        description="Column of a Parquet source holding each row's audio file bytes: a struct of `bytes` and "
        "`path` (the Hugging Face Audio layout) or a binary column.",
    )
    id_column: str | None = Field(
        None,
        description="Column of unique values naming each row of a Parquet source (`column.field` reaches "
        "into a struct, e.g. audio.path); the row's source URI is `<file>#<id>`. Unset: the row number.",
    )


class PoolConfig(_Section):
    sources: list[str] = Field(
        default_factory=list,
        description="Audio sources: fsspec URLs or globs (local paths, s3://, gs://, memory://) of audio or "
        "video files (wav, flac, mp3, ogg, aiff through libsndfile; m4a/AAC, raw AAC, Opus, Vorbis, WebM, "
        "MP4, MOV, MKV and anything else FFmpeg decodes; a video's first audio stream), Parquet files "
        "with an audio column (each row one source, see pool.parquet), and plain .tar files (WebDataset "
        "shards; each audio member one source).",
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
        description="Rates at which mixes will be made. The pool also stores every clip at each of them "
        "(16-bit FLAC, audio/<rate>/<part>.tar), with its loudness measured on that stored audio, "
        "which is what the mixer decodes.",
    )
    max_band_loss_lu: float = Field(
        20.0,
        ge=0,
        description="A clip is a candidate for a mix rate only if it is audible there: measured, at or above "
        "silence_lufs, and at most this many LU quieter than at the pool rate (energy above the mix rate's "
        "Nyquist frequency is lost in resampling; a 12 kHz tone mixed at 16 kHz would otherwise get 30+ dB of gain).",
    )
    files_per_part: int = Field(
        16,
        ge=1,
        description="Sources (files, Parquet rows, tar members) per part, the unit of work and of output files.",
    )
    retry_errors: bool = Field(
        False, description="Re-read sources whose last attempt ended in an error row, even if unchanged."
    )
    parquet: ParquetSourceConfig = Field(
        default_factory=ParquetSourceConfig, description="How Parquet sources hold their audio."
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
    amodel: str = Field("HTSAT-tiny", description="laion_clap audio encoder; the music checkpoints need HTSAT-base.")
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
    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="Short name (up to 64 letters, digits, `_`, `-`; starting with a letter or digit); the manifest's "
        "`vlm` column. No `__`: it separates image id and VLM in sample keys.",
    )
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
    path: str | None = Field(
        None, description="provided: Parquet or JSONL (fsspec URL) of {image_id, concepts: [{label, text}]}."
    )
    batch_size: int = Field(8, ge=1, description="Images per batch.")
    concurrency: int = Field(
        1, ge=1, description="Engine replicas or model actors (vllm, transformers); parallel requests (openai)."
    )
    num_gpus: float = Field(0.0, ge=0, description="transformers: GPUs per actor.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vllm: engine arguments, e.g. {max_model_len: 8192, tensor_parallel_size: 1}."
    )
    base_url: str | None = Field(None, description="openai: server URL up to /v1, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the API key, if any.")
    timeout_s: float = Field(120.0, gt=0, description="openai: timeout of one request.")
    retries: int = Field(3, ge=0, description="openai: retries of a failed request, with exponential backoff.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 is greedy.")

    @field_validator("name")
    @classmethod
    def _name_separates_in_keys(cls, name: str) -> str:
        # Keys are "<image id>__<vlm>": with "__" in a VLM name, image "a" with VLM "b__c" and
        # image "a__b" with VLM "c" would share a key.
        if "__" in name:
            raise ValueError(f"{name!r} contains '__', which separates image id and VLM name in sample keys")
        return name


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
    target_recall: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Approximate indexes (ivf, hnsw): each retrieval actor searches with the smallest nprobe "
        "(efSearch) on a doubling ladder whose recall@recall_k, on calibration_queries of the run's own concept "
        "texts against exact search, reaches this. A higher target visits more of the index for every text.",
    )
    calibration_queries: int = Field(
        256,
        ge=1,
        description="Concept texts (evenly spaced in the first chunks' sorted distinct texts, the same for every "
        "actor and every rerun) that choose the approximate index's setting. Each costs one exact search over the "
        "whole pool, once per retrieval actor.",
    )
    recall_k: int = Field(
        10, ge=1, description="k of the recall@k that target_recall applies to; above search_k, search_k is used."
    )
    recall_sample: int = Field(
        8,
        ge=1,
        description="Concept texts per measured chunk whose exact neighbours are computed to measure the recall "
        "of the chunk's approximate search (evenly spaced in its texts); the run summary reports it over all "
        "measured chunks. The exact search reads the whole index once, whatever the number of texts.",
    )
    recall_every: int = Field(
        10,
        ge=1,
        description="Chunks numbered by a multiple of this measure their recall (recall_sample texts each): at 500K "
        "clips one measurement costs about as much as searching a chunk of 4,000 texts approximately.",
    )
    k: int = Field(16, ge=1, description="k: the threshold is the mean of the top-k scores; k <= search_k.")
    ssr: bool = Field(True, description="Signed square root of the scores; false for the ablation.")
    min_cosine: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="Cosine floor: neighbours below it are removed before the threshold, so no chosen clip is "
        "below it; a concept with none left is dropped and counted.",
    )
    hubness: Literal["none", "nnn"] = Field(
        "nnn",
        description="Hub clips (docs/hubness.md). nnn: each clip's bias (mean cosine to its hubness_k nearest texts "
        "of a bank of the run's own concept texts) is measured once per run; a clip whose bias exceeds the pool's "
        "median (plus hubness_outlier_z robust deviations) loses hubness_alpha times the excess from its scores "
        "before SSR and the threshold. none: the paper's choice on raw cosines.",
    )
    hubness_bank: int = Field(
        4096,
        ge=1,
        description="Concept texts in the hubness bank: evenly spaced in the first chunks' sorted distinct texts "
        "(fewer if the run has fewer). The bias pass costs one product of the pool with the bank.",
    )
    hubness_k: int = Field(
        10, ge=1, description="Bank texts whose mean cosine is a clip's bias, and k of the k-occurrence reported."
    )
    hubness_alpha: float = Field(0.4, ge=0, description="Share of a clip's excess bias taken off its scores.")
    hubness_outlier_z: float = Field(
        0.0,
        ge=0,
        description="Robust deviations (1.4826 x MAD of the pool's biases) above their median where the penalty "
        "starts: clips below pay nothing. 0: every clip above the median pays for its excess over it.",
    )
    max_uses_per_clip: int | None = Field(
        None,
        ge=1,
        description="Cap on how many concepts of one chunk of images may choose the same clip (per chunk: chunks "
        "are planned apart). A capped clip's concept draws again among its other candidates. Unset: no cap.",
    )


class MixConfig(_Section):
    sample_rate: int = Field(
        16000, ge=8000, le=192000, description="Rate of the mixes; must be in pool.mix_sample_rates."
    )
    lufs_min: float = Field(-27.0, le=0, description="Lower end of each source's target loudness.")
    lufs_max: float = Field(-23.0, le=0, description="Upper end of each source's target loudness.")
    peak_dbfs: float = Field(
        -1.0, le=0, description="Peak ceiling: a mix above it is scaled down and the gain recorded."
    )


class RenderConfig(_Section):
    manifest: str | None = Field(None, description="render: the manifest folder (fsspec URL) of a sonify run.")
    out: str | None = Field(None, description="render: where to write the rebuilt shards and manifest (fsspec URL).")


class ReportConfig(_Section):
    gallery_size: int = Field(
        48, ge=0, description="report: samples shown in the gallery, a seeded random choice among those written."
    )
    gallery_seed: int = Field(0, description="report: seed of the gallery's choice; another seed shows other samples.")
    thumbnail_px: int = Field(
        320, ge=32, le=2048, description="report: longest side of the gallery's JPEG thumbnails, in pixels."
    )


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
    report: ReportConfig = Field(default_factory=ReportConfig, description="The HTML report of a run or a pool.")

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RunConfig:
        bad = [r for r in self.pool.mix_sample_rates if r < 8000 or r > 192000]
        if bad:
            raise ValueError(f"pool.mix_sample_rates: {bad} outside 8000..192000 Hz")
        if self.retrieval.k > self.retrieval.search_k:
            raise ValueError(
                f"retrieval.k ({self.retrieval.k}) must not exceed retrieval.search_k ({self.retrieval.search_k})"
            )
        if self.mix.lufs_min > self.mix.lufs_max:
            raise ValueError(f"mix.lufs_min ({self.mix.lufs_min}) is above mix.lufs_max ({self.mix.lufs_max})")
        if self.sonify.max_image_side is not None and self.sonify.image_format == "original":
            raise ValueError(
                "sonify.max_image_side needs sonify.image_format jpg, webp or png: original keeps the source bytes"
            )
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

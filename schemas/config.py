"""The run configuration's contract: typed sections, each field with its description, validated
before any work. The pool section is in `schemas.pool_config`, the prompt and the VLM backends in
`schemas.vlm_config`, the CLIP model and the mapper in `schemas.mapper_config`; every section is
importable from here. Loading files, command-line overrides, what each command needs and the
generated reference live in `pipelines.config`."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from schemas.config_base import ConfigSection
from schemas.mapper_config import ClipConfig, MapperConfig
from schemas.pool_config import IndexConfig, ParquetSourceConfig, PoolConfig
from schemas.vlm_config import (
    DEFAULT_PROMPT,
    VLM_BACKENDS,
    MapperVlmConfig,
    OpenAIVlmConfig,
    PromptConfig,
    ProvidedVlmConfig,
    TransformersVlmConfig,
    VllmVlmConfig,
    VlmConfig,
)

__all__ = [
    "DEFAULT_PROMPT",
    "VLM_BACKENDS",
    "AstConfig",
    "ClapConfig",
    "ClipConfig",
    "ConfigSection",
    "GenerateConfig",
    "IndexConfig",
    "LicenseFilterConfig",
    "MapperConfig",
    "MapperVlmConfig",
    "MixConfig",
    "ModelsConfig",
    "OpenAIVlmConfig",
    "ParquetSourceConfig",
    "PoolConfig",
    "PromptConfig",
    "ProvidedVlmConfig",
    "RayConfig",
    "RenderConfig",
    "ReportConfig",
    "RetrievalConfig",
    "RunConfig",
    "SonifyConfig",
    "TransformersVlmConfig",
    "VllmVlmConfig",
    "VlmConfig",
]


class RayConfig(ConfigSection):
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


class ClapConfig(ConfigSection):
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


class AstConfig(ConfigSection):
    model: str = Field(
        ...,
        description="transformers ASTModel checkpoint with its feature extractor: a Hugging Face id "
        "(MIT/ast-finetuned-audioset-10-10-0.4593) or a folder (fsspec URL, copied once per node into "
        "$SONIFY_MODEL_CACHE).",
    )
    batch_size: int = Field(16, ge=1, description="Mixes per forward pass.")
    concurrency: int = Field(1, ge=1, description="AST actors, each holding one model.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per AST actor; 0 runs on CPU.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per AST actor.")


# Per-sample features sonify.features can write into the shards, and the model section each needs.
FEATURE_MODELS = {"clap_audio": "clap", "ast": "ast", "clip_image": "clip"}
Feature = Literal["clap_audio", "ast", "clip_image"]


class ModelsConfig(ConfigSection):
    clap: ClapConfig | None = Field(
        None,
        description="The CLAP model used for audio and text embeddings; pool and sonify need it, render and "
        "report do not.",
    )
    clip: ClipConfig | None = Field(
        None,
        description="The CLIP model whose image embeddings the mapper maps into CLAP's audio space; train-mapper "
        "needs it (docs/mapper.md), and so do a models.vlm entry of backend mapper and the clip_image feature "
        "(sonify.features).",
    )
    ast: AstConfig | None = Field(
        None, description="The Audio Spectrogram Transformer of the ast feature (sonify.features)."
    )
    vlm: list[VlmConfig] = Field(
        default_factory=list,
        description="VLMs listing sounding concepts; each gives one scene (sample) per image (a `mapper` entry in "
        "mode ambience adds its concept to the other entries' scenes instead). The `backend` key "
        "of an entry decides which other keys it takes.",
    )


class LicenseFilterConfig(ConfigSection):
    allow: list[str] = Field(
        default_factory=list,
        description="Licences a chosen clip may have: SPDX-style ids or fnmatch patterns (`CC0-1.0`, `CC-BY-*`), "
        "compared without regard to case; a clip whose source has no licence in the pool is `unknown`. Empty: "
        "every licence. Applied with the audibility filter, to the clips planning may choose "
        "(docs/sonify.md#licences).",
    )
    deny: list[str] = Field(
        default_factory=list,
        description="Licences no chosen clip may have, as for allow (`CC-BY-NC-*`, `*NC*`, `unknown`); a licence "
        "matching both allow and deny is denied. The sonify summary counts the pool clips they remove.",
    )


class MissingSoundsConfig(ConfigSection):
    group_cosine: float = Field(
        0.9,
        ge=-1.0,
        le=1.0,
        description="Missing texts are grouped most requested first: a text joins the group of the most similar "
        "earlier group's first text when their CLAP text cosine is at or above this, else it starts a group. "
        "1.0 groups only identical embeddings. Changing it regroups a finished run's list on the next run.",
    )
    max_groups: int = Field(
        100_000,
        ge=1,
        description="Groups whose first text later texts are compared with (their CLAP embeddings are held: "
        "about 200 MB at 100,000 x 512). Past it, a text that joins none is a group of its own.",
    )


class MinAlignmentConfig(ConfigSection):
    text_audio: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="A written sample whose text_audio score (the mean raw CLAP cosine of its text concepts to their "
        "clips) is below this becomes an error row (low_alignment) and is left out of its shard. A sample with no "
        "text concept (a mapper's scene) has no such score and passes. Unset: no floor.",
    )
    image_audio: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="As text_audio, for the image_audio score: the cosine of the image's CLIP embedding mapped by "
        "the first models.vlm entry of backend mapper to the CLAP embedding of the mix. Needs such an entry. "
        "Unset: no floor.",
    )


# A split's name begins its shards' file names and names a split of the dataset card.
SPLIT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class SonifyConfig(ConfigSection):
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
    licenses: LicenseFilterConfig = Field(
        default_factory=LicenseFilterConfig, description="Which licences of pool clips a sample may use."
    )
    image_metadata: list[str] = Field(
        default_factory=list,
        description="Licence and attribution files of the images (fsspec URLs; .csv with a header, .jsonl or "
        ".parquet): an `image` column and any of `license`, `attribution`, `source_url`, `title`. `image` is "
        "matched against each image's id, then against its URI (a tar's URI credits all of its images). The values "
        "go into each manifest row and ATTRIBUTION.md / ATTRIBUTION.csv.",
    )
    splits: dict[str, float] | None = Field(
        None,
        description="Named fractions of the images, e.g. {train: 0.98, validation: 0.01, test: 0.01}, summing to 1. "
        "Each image goes to a split by a stable hash of its image id (whatever the seed; changing the fractions "
        "moves images between splits), with every VLM's sample of it, and each split gets its own shards "
        "(shards/<split>-NNNNNN.tar). Unset: one unnamed set of shards.",
    )
    split_by_clip: bool = Field(
        False,
        description="Keep the audio of the splits apart too: each pool source recording (with all its clips and "
        "variants) belongs to one split, by a stable hash of its content (SHA-256) with the same fractions, so "
        "copies of one file go together, and a sample "
        "uses only clips of its own split. A concept whose usable neighbours all belong to other splits is dropped "
        "(`other_split`); the summary counts those and the concepts that got another clip than without the rule.",
    )
    missing_sounds: MissingSoundsConfig = Field(
        default_factory=MissingSoundsConfig,
        description="The list of sounds the pool lacks (missing_sounds.parquet): how near-identical texts are grouped.",
    )
    features: list[Feature] = Field(
        default_factory=list,
        description="Embeddings written beside each sample, as KEY.<feature>.npy members of its shard (float32, "
        "one vector): clap_audio (the mix, with models.clap, unit length), ast (the mix, with models.ast: the "
        "pooled output, as trained on), clip_image (the shard's image, with models.clip, unit length). Each model "
        "runs on actors of its own (docs/sonify.md#features).",
    )
    min_alignment: MinAlignmentConfig = Field(
        default_factory=MinAlignmentConfig,
        description="Floors on each written sample's alignment scores (docs/mapper.md#alignment-scores): a sample "
        "below one is rejected at write time, kept in the manifest as an error row and counted in the summary.",
    )

    @field_validator("splits")
    @classmethod
    def _splits(cls, splits: dict[str, float] | None) -> dict[str, float] | None:
        if splits is None:
            return None
        if not splits:
            raise ValueError("give at least one split, or leave splits unset")
        for name, fraction in splits.items():
            if not SPLIT_NAME.match(name) or name.startswith("rejected"):
                raise ValueError(
                    f"split name {name!r}: use up to 32 lower-case letters, digits and underscores, starting with a "
                    "letter (and not with `rejected`, which names the manifest's rejected scenes)"
                )
            if not 0 < fraction <= 1:
                raise ValueError(f"split {name!r}: fraction {fraction} must be above 0 and at most 1")
        if not math.isclose(sum(splits.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must sum to 1, got {sum(splits.values())}")
        return splits

    @field_validator("features")
    @classmethod
    def _features_once(cls, features: list[str]) -> list[str]:
        repeated = sorted({f for f in features if features.count(f) > 1})
        if repeated:
            raise ValueError(f"each feature once: {', '.join(repeated)} repeated")
        return features

    @model_validator(mode="after")
    def _split_by_clip_needs_splits(self) -> SonifyConfig:
        if self.split_by_clip and self.splits is None:
            raise ValueError("split_by_clip needs splits")
        return self


class GenerateConfig(ConfigSection):
    model: str | None = Field(
        None,
        description="generate: a text-to-audio diffusers checkpoint whose pipeline is AudioLDMPipeline or "
        "AudioLDM2Pipeline: a Hugging Face id (cvssp/audioldm2, cvssp/audioldm-s-full-v2) or a folder (fsspec "
        "URLs are copied once per node into the model cache, like models.clap.model).",
    )
    missing_from: str | None = Field(
        None,
        description="generate: a sonify.out folder whose missing_sounds.parquet lists the texts that no pool clip "
        "matched; the `top` most requested become prompts. Set this or `prompts`.",
    )
    top: int = Field(20, ge=1, description="generate: how many of missing_from's most requested texts to generate.")
    prompts: str | None = Field(
        None,
        description="generate: a UTF-8 text file (fsspec URL) of prompts, one per line; blank lines are skipped "
        "and a repeated prompt is generated once. Set this or `missing_from`.",
    )
    steps: int = Field(50, ge=1, description="generate: denoising steps per sound.")
    guidance: float = Field(
        3.5, ge=0, description="generate: classifier-free guidance scale; above 1, the sound follows its prompt more."
    )
    seconds: float | None = Field(
        None, gt=0, description="generate: length of each sound, in seconds; unset: pool.clip_seconds."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="generate: the model's weights and activations; float16 halves GPU memory."
    )
    batch_size: int = Field(4, ge=1, description="generate: prompts per call of the model.")
    concurrency: int = Field(1, ge=1, description="generate: generation actors, each holding one model.")
    num_gpus: float = Field(0.0, ge=0, description="generate: GPUs per generation actor; 0 runs on CPU.")
    num_cpus: float = Field(1.0, gt=0, description="generate: CPUs per generation actor.")

    @model_validator(mode="after")
    def _one_prompt_source(self) -> GenerateConfig:
        if self.missing_from is not None and self.prompts is not None:
            raise ValueError("generate: set missing_from or prompts, not both")
        if self.dtype != "float32" and self.num_gpus == 0:
            raise ValueError(f"generate.dtype {self.dtype} needs a GPU (generate.num_gpus > 0); on a CPU use float32")
        return self


class RetrievalConfig(ConfigSection):
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
    allow_generated: bool = Field(
        True,
        description="Whether sonify may choose generated clips (made by `run_pipeline.py generate`); false keeps "
        "them out of the clips every concept is matched against.",
    )
    max_uses_per_clip: int | None = Field(
        None,
        ge=1,
        description="Cap on how many concepts of one chunk of images may choose the same clip (per chunk: chunks "
        "are planned apart). A capped clip's concept draws again among its other candidates. Unset: no cap.",
    )


class MixConfig(ConfigSection):
    sample_rate: int = Field(
        16000, ge=8000, le=192000, description="Rate of the mixes; must be in pool.mix_sample_rates."
    )
    lufs_min: float = Field(-27.0, le=0, description="Lower end of each source's target loudness.")
    lufs_max: float = Field(-23.0, le=0, description="Upper end of each source's target loudness.")
    peak_dbfs: float = Field(
        -1.0, le=0, description="Peak ceiling: a mix above it is scaled down and the gain recorded."
    )


class RenderConfig(ConfigSection):
    manifest: str | None = Field(None, description="render: the manifest folder (fsspec URL) of a sonify run.")
    out: str | None = Field(None, description="render: where to write the rebuilt shards and manifest (fsspec URL).")


class ReportConfig(ConfigSection):
    gallery_size: int = Field(
        48, ge=0, description="report: samples shown in the gallery, a seeded random choice among those written."
    )
    gallery_seed: int = Field(0, description="report: seed of the gallery's choice; another seed shows other samples.")
    thumbnail_px: int = Field(
        320, ge=32, le=2048, description="report: longest side of the gallery's JPEG thumbnails, in pixels."
    )


class RunConfig(ConfigSection):
    seed: int = Field(0, description="Global seed of every random choice.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Where the work runs.")
    pool: PoolConfig = Field(..., description="The audio pool.")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Model checkpoints and their batching.")
    sonify: SonifyConfig = Field(default_factory=SonifyConfig, description="Images in, pairs out.")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="The VLM instruction.")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig, description="Choosing clips.")
    mix: MixConfig = Field(default_factory=MixConfig, description="Mixing the chosen clips.")
    render: RenderConfig = Field(default_factory=RenderConfig, description="Rebuilding a dataset from a manifest.")
    report: ReportConfig = Field(default_factory=ReportConfig, description="The HTML report of a run or a pool.")
    generate: GenerateConfig = Field(
        default_factory=GenerateConfig, description="Sounds generated from text and added to the pool."
    )
    mapper: MapperConfig = Field(
        default_factory=MapperConfig, description="Training the CLIP -> CLAP mapper (train-mapper, docs/mapper.md)."
    )

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
        for feature in self.sonify.features:
            if getattr(self.models, FEATURE_MODELS[feature]) is None:
                raise ValueError(f"sonify.features: {feature} needs models.{FEATURE_MODELS[feature]}")
        names = [v.name for v in self.models.vlm]
        if len(set(names)) != len(names):
            raise ValueError(f"models.vlm: names must be unique, got {names}")
        mappers = [i for i, v in enumerate(self.models.vlm) if isinstance(v, MapperVlmConfig)]
        if mappers and self.models.clip is None:
            raise ValueError(f"models.vlm.{mappers[0]}: backend mapper needs models.clip, the CLIP it was trained with")
        if self.sonify.min_alignment.image_audio is not None and not mappers:
            raise ValueError(
                "sonify.min_alignment.image_audio needs a models.vlm entry of backend mapper: its score maps the image "
                "with the first such entry"
            )
        if any(self.models.vlm[i].mode == "ambience" for i in mappers) and len(mappers) == len(self.models.vlm):
            raise ValueError(
                "models.vlm: a mapper in mode ambience adds its concept to the scenes of other entries, and there is "
                "no other entry; use mode scene, or add a VLM"
            )
        return self

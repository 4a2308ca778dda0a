"""The `pool` section of the run configuration: where the audio comes from, how it is cut and
stored, and the index over it."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from schemas.config_base import ConfigSection

# A variant's name ends its clips' ids (`<clip_id>--<name>`), so it keeps to characters that are
# safe in ids, file names and URLs, and cannot hold the separator itself.
VARIANT_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9_]*[a-z0-9])?$")
TIMBRE_METHODS = ("forward", "encode_decode")


class IndexConfig(ConfigSection):
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
        "(exact search cost grows with the pool; `python -m benchmarks.search` measures both).",
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


class ParquetSourceConfig(ConfigSection):
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
    license_column: str | None = Field(
        None,
        description="Column of a Parquet source holding each row's licence (any spelling; normalized to an "
        "SPDX-style id, see docs/pool.md#licences-and-attribution). A pool.metadata row for the same source wins "
        "over the columns. Unset: none.",
    )
    attribution_column: str | None = Field(
        None, description="Column of a Parquet source holding each row's author or credit line. Unset: none."
    )
    source_url_column: str | None = Field(
        None, description="Column of a Parquet source holding where each row's recording is published. Unset: none."
    )
    title_column: str | None = Field(
        None, description="Column of a Parquet source holding each row's title. Unset: none."
    )

    def metadata_columns(self) -> dict[str, str]:
        """Metadata field (license, attribution, source_url, title) -> the Parquet column set for it."""
        named = {
            "license": self.license_column,
            "attribution": self.attribution_column,
            "source_url": self.source_url_column,
            "title": self.title_column,
        }
        return {field: column for field, column in named.items() if column}


class VariantConfig(ConfigSection):
    name: str = Field(
        ...,
        description="Name of the variant: lower-case letters, digits and single underscores inside. A variant "
        "clip's id is its parent's id, `--`, and this name.",
    )
    sources: list[str] = Field(
        default_factory=lambda: ["*"],
        description="fnmatch patterns on source URIs (as the pool table stores them); the variant is made of "
        "every clip of a source that one of them matches.",
    )
    chain: list[dict[str, Any]] = Field(
        ...,
        min_length=1,
        description="Steps applied in order to each clip (pool.clip_seconds) at the pool rate. A step is either a "
        "pedalboard "
        "effect, `{effect: <class name>, <parameter>: <value>, ...}` (e.g. `{effect: LowpassFilter, "
        "cutoff_frequency_hz: 800}`, `{effect: PitchShift, semitones: -5}`, Reverb, Distortion, Chorus, ...), or a "
        "TorchScript timbre-transfer model with RAVE's exported interface, `{torchscript: <path or URL>, method: "
        "forward | encode_decode}` (mono audio at the model's `sr` attribute, shaped [batch, 1, samples]).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not VARIANT_NAME.match(name) or "__" in name:
            raise ValueError(
                f"variant name {name!r}: use lower-case letters, digits and single underscores, "
                "starting and ending with a letter or digit"
            )
        return name

    @field_validator("chain")
    @classmethod
    def _steps(cls, chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for position, step in enumerate(chain, start=1):
            kinds = [k for k in ("effect", "torchscript") if k in step]
            if len(kinds) != 1:
                raise ValueError(f"chain step {position} must have exactly one of `effect` or `torchscript`: {step}")
            if "torchscript" in step:
                extra = set(step) - {"torchscript", "method"}
                if extra or step.get("method", "forward") not in TIMBRE_METHODS:
                    raise ValueError(
                        f"chain step {position}: a torchscript step takes `torchscript` and `method` "
                        f"({' or '.join(TIMBRE_METHODS)}) only: {step}"
                    )
            elif not isinstance(step["effect"], str):
                raise ValueError(f"chain step {position}: `effect` must be a pedalboard class name: {step}")
        return chain


class PoolConfig(ConfigSection):
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
        default_factory=ParquetSourceConfig,
        description="How Parquet sources hold their audio, and the columns holding each row's licence and credit.",
    )
    metadata: list[str] = Field(
        default_factory=list,
        description="Licence and attribution files (fsspec URLs; .csv with a header, .jsonl or .parquet): a "
        "`source` column and any of `license`, `attribution`, `source_url`, `title`. `source` is matched against "
        "each source's full URI as the clips table stores it, then against its base name (file name, or a tar "
        "member's or Parquet row id's); a base name shared by two sources is an error. The values land in the clips "
        "table; changing them rewrites only the clips files, never audio or embeddings. See "
        "docs/pool.md#licences-and-attribution.",
    )
    index: IndexConfig = Field(default_factory=IndexConfig, description="FAISS index over non-silent clips.")
    variants: list[VariantConfig] = Field(
        default_factory=list,
        description="Named effect chains that grow the pool with transformed copies of the clips of the sources "
        "they select. Each variant clip records its parent clip and its chain, is embedded and indexed like any "
        "clip, and is never mixed with its parent (or another variant of it) in one sample. Changing a variant "
        "re-standardizes the sources it selects. See docs/pool.md#variants.",
    )

    @model_validator(mode="after")
    def _distinct_variants(self) -> PoolConfig:
        names = [v.name for v in self.variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"pool.variants: names must be distinct, repeated: {', '.join(repeated)}")
        return self

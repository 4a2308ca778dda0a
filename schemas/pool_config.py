"""The `pool` section of the run configuration: where the audio comes from, how it is cut and
stored, and the index over it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.config_base import ConfigSection


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
        default_factory=ParquetSourceConfig, description="How Parquet sources hold their audio."
    )
    index: IndexConfig = Field(default_factory=IndexConfig, description="FAISS index over non-silent clips.")

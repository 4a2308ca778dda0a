"""The configuration of the image side and of the CLIP -> CLAP mapper: the CLIP model
(`models.clip`) and the `mapper` section that `run_pipeline.py train-mapper` reads."""

from __future__ import annotations

from pydantic import Field, model_validator

from schemas.config_base import ConfigSection


class ClipConfig(ConfigSection):
    model: str = Field(
        ...,
        description="transformers CLIPModel checkpoint: a Hugging Face id (openai/clip-vit-large-patch14) or a folder "
        "with its processor; folders may be fsspec URLs, copied once per node into $SONIFY_MODEL_CACHE.",
    )
    batch_size: int = Field(32, ge=1, description="Images per forward pass.")
    concurrency: int = Field(1, ge=1, description="Image embedding actors, each holding one model.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per image embedding actor; 0 runs on CPU.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per image embedding actor.")


class MapperConfig(ConfigSection):
    pairs: list[str] = Field(
        default_factory=list,
        description="train-mapper: image-audio pairs, fsspec URLs or globs of WebDataset .tar shards (KEY.jpg/png/webp "
        "with KEY.flac/wav, as sonify writes them) or .parquet files with image_column and audio_column.",
    )
    image_column: str = Field(
        "image",
        description="Parquet pairs: column of the image file's bytes (binary, or a struct with `bytes`, the Hugging "
        "Face Image layout).",
    )
    audio_column: str = Field(
        "audio",
        description="Parquet pairs: column of the audio file's bytes (binary, or a struct with `bytes`, the Hugging "
        "Face Audio layout).",
    )
    key_column: str | None = Field(
        None,
        description="Parquet pairs: column of unique string keys naming each pair (they decide its split). Unset: "
        "`<file>#<row>`.",
    )
    checkpoint: str | None = Field(
        None, description="train-mapper: where the trained mapper is written (fsspec URL of a .safetensors file)."
    )
    validation_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Share of the pairs held out for the metrics, chosen by a hash of each pair's key (the same "
        "pairs whatever the order, seed or number of workers).",
    )
    hidden_dim: int = Field(1024, ge=1, description="Width of the mapper's residual blocks.")
    blocks: int = Field(2, ge=0, description="Residual MLP blocks between the input and output projections.")
    epochs: int = Field(40, ge=1, description="Passes over the training pairs.")
    batch_size: int = Field(
        256,
        ge=2,
        description="Pairs per training step; the contrastive term takes the step's other audio vectors as negatives.",
    )
    learning_rate: float = Field(1e-3, gt=0, description="AdamW learning rate (cosine-decayed to zero over the run).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    contrastive_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the symmetric InfoNCE term beside the cosine regression term; 0 trains a pure "
        "regression mapper.",
    )
    temperature: float = Field(0.05, gt=0, description="Temperature of the InfoNCE term's cosine logits.")
    pairs_per_block: int = Field(
        256,
        ge=1,
        description="Pairs read and embedded together: Parquet row groups and tar shards are cut into blocks of "
        "this many, so memory is bounded by it and not by a file's size.",
    )

    @model_validator(mode="after")
    def _named_columns_differ(self) -> MapperConfig:
        if self.image_column == self.audio_column:
            raise ValueError(f"mapper.image_column and mapper.audio_column are both {self.image_column!r}")
        return self

"""Generating sounds from text with AudioLDM or AudioLDM 2 (diffusers), one FLAC file per prompt.

The stage loads the checkpoint once per actor through diffusers' `DiffusionPipeline.from_pretrained`,
the one loader for real checkpoints and for the tiny model of the tests and the demo, and accepts
only the two text-to-audio pipelines it knows how to call. Each prompt's noise comes from a CPU
generator seeded from the prompt (stages.audio.generation.prompt_seed), so its sound does not depend
on the other prompts of its batch: the same batch on the same hardware writes the same bytes, and
the same prompt in another batch differs by float rounding only (about 1e-7 on the tiny model, as
batched kernels round differently). The sound is written as 16-bit FLAC at the vocoder's rate into
pool.dir/generated/audio/ (atomically), and the stage returns one row per file saying how it was
made; the pool run then standardizes, measures and embeds it like any recording.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from schemas import GENERATED_SOUNDS, GENERATION_REQUESTS, make_table
from schemas.config import GenerateConfig
from schemas.errors import PipelineError
from schemas.layout import PoolLayout
from stages.audio.packs import encode_flac, quantize_pcm16
from stages.base import Resources, Stage
from stages.io import storage
from stages.io.model_files import stage_model

# The diffusers pipelines this stage calls; both take the same generation arguments.
TEXT_TO_AUDIO_PIPELINES = ("AudioLDMPipeline", "AudioLDM2Pipeline")


class NotATextToAudioModel(PipelineError):
    """generate.model is a checkpoint of another kind of pipeline."""


def load_text_to_audio(model: str, dtype: str, use_gpu: bool):
    """The diffusers pipeline of a checkpoint (remote URLs staged to this node's cache first), on the
    GPU where one is asked for; a NotATextToAudioModel for a checkpoint of any other pipeline."""
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    # Per-step progress bars of every actor would drown the run's own progress in the log.
    diffusers_logging.disable_progress_bar()
    pipeline = DiffusionPipeline.from_pretrained(stage_model(model), dtype=getattr(torch, dtype))
    kind = type(pipeline).__name__
    if kind not in TEXT_TO_AUDIO_PIPELINES:
        raise NotATextToAudioModel(
            f"generate.model {model} is a {kind} checkpoint; generate takes {' or '.join(TEXT_TO_AUDIO_PIPELINES)}"
        )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to("cuda") if use_gpu else pipeline


class GenerateSounds(Stage):
    name: ClassVar[str] = "generate_sounds"
    required_columns: ClassVar[tuple[str, ...]] = tuple(GENERATION_REQUESTS.names)

    def __init__(self, pool_dir: str, config: GenerateConfig, seconds: float) -> None:
        self.pool_dir = pool_dir
        self.config = config
        self.seconds = seconds
        self.pipeline = None

    def resources(self) -> Resources:
        c = self.config
        return Resources(num_cpus=c.num_cpus, num_gpus=c.num_gpus, actors=c.concurrency, batch_size=c.batch_size)

    def output_schema(self) -> pa.Schema:
        return GENERATED_SOUNDS

    def setup(self) -> None:
        self.pipeline = load_text_to_audio(self.config.model, self.config.dtype, self.config.num_gpus > 0)

    @property
    def sample_rate(self) -> int:
        return int(self.pipeline.vocoder.config.sampling_rate)

    def generate(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        """Float waveforms, one row per prompt, each from its own seeded CPU generator."""
        import torch

        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        with torch.inference_mode():
            result = self.pipeline(
                prompt=prompts,
                audio_length_in_s=self.seconds,
                num_inference_steps=self.config.steps,
                guidance_scale=self.config.guidance,
                generator=generators,
                num_waveforms_per_prompt=1,
                output_type="np",
            )
        return np.asarray(result.audios, dtype=np.float32).reshape(len(prompts), -1)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        if not rows:
            return GENERATED_SOUNDS.empty_table()
        audios = self.generate([r["prompt"] for r in rows], [r["seed"] for r in rows])
        layout = PoolLayout(self.pool_dir)
        for row, audio in zip(rows, audios):
            flac = encode_flac(quantize_pcm16(audio), self.sample_rate)
            storage.write_bytes(layout.generated_audio(row["file"]), flac)
        out = {name: [r[name] for r in rows] for name in GENERATION_REQUESTS.names}
        out["sample_rate"] = [self.sample_rate] * len(rows)
        out["seconds"] = [audios.shape[1] / self.sample_rate] * len(rows)
        return make_table(GENERATED_SOUNDS, out)

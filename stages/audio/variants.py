"""Pool variants: new clips made from the pool's own by an effect chain (pool.variants).

A chain runs on one clip at a time, mono float32 at the pool rate, and gives a clip of the same
length: pedalboard effects (consecutive ones run as one Pedalboard, reset for every clip), or a
TorchScript timbre-transfer model with RAVE's exported interface (mono audio at the model's `sr`,
shaped [batch, 1, samples], through `forward` or `decode(encode(x))`). Working clip by clip keeps a
worker's memory independent of a source's length and makes every variant clip a function of its
parent alone; the price is that a reverb's or delay's tail past the clip's end is cut, as the parent
clip's own sound is.

A variant clip's id is its parent's id, a separator and the variant's name
(standardize.variant_clip_id), so the family a clip belongs to is read off its id.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.errors import PipelineError
from schemas.pool_config import VariantConfig
from stages.audio.standardize import resample
from stages.io import storage

# Seconds of quiet noise a chain is tried on before any source is read, so a wrong effect name,
# parameter or model interface stops the run at start-up instead of failing every source.
TRIAL_SECONDS = 0.5
# Plugins that load code or files from the machine they run on; a chain names effects only.
EXCLUDED_PLUGINS = frozenset({"ExternalPlugin", "VST3Plugin", "AudioUnitPlugin", "Plugin", "Pedalboard", "Chain"})


class BadVariant(PipelineError):
    """A pool.variants chain that cannot be built or run."""


def variants_for(uri: str, variants: Sequence[VariantConfig]) -> list[VariantConfig]:
    """The variants whose source patterns match a source URI, in configured order."""
    return [v for v in variants if any(fnmatch.fnmatchcase(uri, pattern) for pattern in v.sources)]


def variants_fingerprint(fingerprint: str | None, chains: Sequence[Chain]) -> str | None:
    """A source's fingerprint with the chains that apply to it: the pool re-standardizes a source
    when its variants change, as it does when its bytes change."""
    if not chains:
        return fingerprint
    digest = hashlib.sha1("\n".join(f"{c.name}\t{c.description}" for c in chains).encode()).hexdigest()[:16]
    return f"{fingerprint or ''}|variants:{digest}"


@dataclass
class _Effects:
    board: Any  # pedalboard.Pedalboard

    def __call__(self, clip: np.ndarray, rate: int) -> np.ndarray:
        return self.board(clip[np.newaxis, :], rate, reset=True)[0]


@dataclass
class _TimbreModel:
    module: Any  # torch.jit.ScriptModule
    sample_rate: int
    method: str

    def __call__(self, clip: np.ndarray, rate: int) -> np.ndarray:
        import torch

        audio = torch.from_numpy(np.ascontiguousarray(resample(clip, rate, self.sample_rate)))[None, None, :]
        with torch.inference_mode():
            out = self.module(audio) if self.method == "forward" else self.module.decode(self.module.encode(audio))
        if out.dim() != 3 or out.shape[0] != 1:
            raise ValueError(f"the model returned shape {tuple(out.shape)}, expected [1, channels, samples]")
        return resample(out[0].float().mean(dim=0).numpy(), self.sample_rate, rate)


@dataclass
class Chain:
    """One variant's steps, built once per worker."""

    name: str
    description: str  # JSON of the steps, TorchScript models named with their content digest
    steps: list

    def __call__(self, clip: np.ndarray, rate: int) -> np.ndarray:
        out = np.asarray(clip, dtype=np.float32)
        for step in self.steps:
            out = np.asarray(step(out, rate), dtype=np.float32)
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        # A model's resampling round trip or a pitch shift's block can leave a few samples more or
        # less; the variant keeps its parent's length and timing.
        if out.size >= clip.size:
            return out[: clip.size]
        return np.pad(out, (0, clip.size - out.size))


def _effect(variant: str, position: int, step: dict[str, Any]):
    import pedalboard

    name = step["effect"]
    plugin = getattr(pedalboard, name, None)
    if name in EXCLUDED_PLUGINS or not (isinstance(plugin, type) and issubclass(plugin, pedalboard.Plugin)):
        raise BadVariant(f"pool.variants {variant}: step {position}: {name!r} is not a pedalboard effect")
    params = {k: v for k, v in step.items() if k != "effect"}
    try:
        return plugin(**params)
    except (TypeError, ValueError) as exc:
        raise BadVariant(f"pool.variants {variant}: step {position}: {name}({params}): {exc}") from None


def _timbre_model(variant: str, position: int, step: dict[str, Any]) -> tuple[_TimbreModel, str]:
    import torch

    url, method = step["torchscript"], step.get("method", "forward")
    try:
        data = storage.read_bytes(url)
    except (OSError, ValueError) as exc:
        raise BadVariant(f"pool.variants {variant}: step {position}: cannot read {url}: {exc}") from None
    try:
        with warnings.catch_warnings():
            # RAVE's exports are TorchScript; torch's deprecation of jit.load has no replacement for them.
            warnings.filterwarnings("ignore", message=".*torch.jit.load. is deprecated", category=FutureWarning)
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadVariant(
            f"pool.variants {variant}: step {position}: {url} is not a TorchScript model: {first}"
        ) from None
    module.eval()
    rate = getattr(module, "sr", None)
    if not isinstance(rate, int) or rate <= 0:
        raise BadVariant(
            f"pool.variants {variant}: step {position}: {url} has no integer `sr` attribute (its sample rate), "
            "as RAVE's exported models have"
        )
    needed = ("forward",) if method == "forward" else ("encode", "decode")
    absent = [m for m in needed if not hasattr(module, m)]
    if absent:
        raise BadVariant(f"pool.variants {variant}: step {position}: {url} has no method {', '.join(absent)}")
    return _TimbreModel(module, rate, method), hashlib.sha256(data).hexdigest()


def load_chain(variant: VariantConfig) -> Chain:
    """The variant's steps: consecutive effects as one Pedalboard, each TorchScript model loaded."""
    import pedalboard

    steps: list = []
    described: list[dict[str, Any]] = []
    effects: list = []
    for position, step in enumerate(variant.chain, start=1):
        if "effect" in step:
            effects.append(_effect(variant.name, position, step))
            described.append(dict(step))
            continue
        if effects:
            steps.append(_Effects(pedalboard.Pedalboard(effects)))
            effects = []
        model, digest = _timbre_model(variant.name, position, step)
        steps.append(model)
        described.append({"torchscript": step["torchscript"], "method": model.method, "sha256": digest})
    if effects:
        steps.append(_Effects(pedalboard.Pedalboard(effects)))
    return Chain(variant.name, json.dumps(described, sort_keys=True, separators=(",", ":")), steps)


def check_chain(chain: Chain, sample_rate: int) -> None:
    """Runs the chain on a short quiet noise, so a step that cannot run stops the run before any
    source is read, with the variant named."""
    trial = np.random.default_rng(0).normal(0.0, 0.01, int(sample_rate * TRIAL_SECONDS)).astype(np.float32)
    try:
        out = chain(trial, sample_rate)
    except Exception as exc:  # any failure of a user's chain is reported as that chain's
        raise BadVariant(f"pool.variants {chain.name}: the chain fails on audio: {type(exc).__name__}: {exc}") from None
    if out.shape != trial.shape:
        raise BadVariant(f"pool.variants {chain.name}: the chain gave {out.shape} samples for {trial.shape}")

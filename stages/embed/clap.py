"""CLAP models behind one interface: L2-normalized audio and text embeddings.

Two backends load real checkpoints through their libraries' own loading code:
- `transformers`: ClapModel and ClapProcessor from a Hugging Face id or a local folder;
- `laion_clap`: CLAP_Module with a .pt checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from schemas.config import ClapConfig
from stages.io import storage
from stages.io.model_files import checkpoint_digest, is_remote, model_name, stage_model

CLAP_SAMPLE_RATE = 48000
TEXT_MAX_TOKENS = 77


class ClapBackend(Protocol):
    dim: int
    sample_rate: int

    def embed_audio(self, clips: list[np.ndarray]) -> np.ndarray:
        """Mono float32 clips at `sample_rate` -> [n, dim] float32, rows of unit length."""

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> [n, dim] float32, rows of unit length."""


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def _torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _features(output):
    """transformers v5 returns a model output whose pooler_output holds the projected features;
    v4 returned the tensor itself."""
    return output if hasattr(output, "detach") else output.pooler_output


def audio_inputs(extractor, clips: list[np.ndarray], sample_rate: int) -> dict:
    """ClapFeatureExtractor inputs whose every row depends on its own clip alone.

    The extractor draws from numpy's global generator: crop positions of clips longer than its
    window, and, with fusion checkpoints, one random clip of the batch marked `is_longer` when no
    clip is longer, which sends that clip through the fusion branch. Each clip is therefore
    featurized on its own under a fixed seed (the global state is restored afterwards), and
    `is_longer` is true only for clips really longer than the window, as in laion-clap's own
    inference."""
    import torch

    state = np.random.get_state()
    rows = []
    try:
        for clip in clips:
            np.random.seed(0)
            rows.append(extractor([np.asarray(clip, dtype=np.float32)], sampling_rate=sample_rate, return_tensors="pt"))
    finally:
        np.random.set_state(state)
    inputs = {"input_features": torch.cat([r["input_features"] for r in rows])}
    if "is_longer" in rows[0]:
        longer = [
            bool(r["is_longer"][0][0]) and np.asarray(c).shape[0] > extractor.nb_max_samples
            for r, c in zip(rows, clips)
        ]
        inputs["is_longer"] = torch.tensor([[flag] for flag in longer])
    return inputs


class TransformersClap:
    sample_rate = CLAP_SAMPLE_RATE

    def __init__(self, model: str) -> None:
        from transformers import ClapModel, ClapProcessor

        self.device = _torch_device()
        self.processor = ClapProcessor.from_pretrained(model)
        self.model = ClapModel.from_pretrained(model).to(self.device).eval()
        self.dim = int(self.model.config.projection_dim)

    def embed_audio(self, clips: list[np.ndarray]) -> np.ndarray:
        import torch

        inputs = audio_inputs(self.processor.feature_extractor, clips, self.sample_rate)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            features = _features(self.model.get_audio_features(**inputs))
        return normalize_rows(features.float().cpu().numpy())

    def embed_text(self, texts: list[str]) -> np.ndarray:
        import torch

        inputs = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, max_length=TEXT_MAX_TOKENS, return_tensors="pt"
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            features = _features(self.model.get_text_features(**inputs))
        return normalize_rows(features.float().cpu().numpy())


# laion-clap resolves its text backbones by relative name from the working directory, so loading
# with text_backbones_dir changes the process's directory for a moment; one load at a time.
_chdir_lock = threading.Lock()


@contextlib.contextmanager
def _working_directory(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with _chdir_lock:
        previous = os.getcwd()
        os.chdir(path)
        try:
            yield
        finally:
            os.chdir(previous)


class LaionClap:
    sample_rate = CLAP_SAMPLE_RATE

    def __init__(self, checkpoint: str, amodel: str, enable_fusion: bool, text_backbones_dir: str | None) -> None:
        checkpoint = str(Path(checkpoint).resolve())
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"laion_clap checkpoint {checkpoint} does not exist")
        backbones = str(Path(text_backbones_dir).resolve()) if text_backbones_dir else None
        device = str(_torch_device())
        with _working_directory(backbones):
            import laion_clap

            self.model = laion_clap.CLAP_Module(enable_fusion=enable_fusion, amodel=amodel, device=device)
            self.model.load_ckpt(checkpoint, verbose=False)
        self.model.eval()
        self.dim = int(self.model.model.joint_embed_shape)

    def embed_audio(self, clips: list[np.ndarray]) -> np.ndarray:
        import torch

        batch = np.stack([np.asarray(c, dtype=np.float32) for c in clips])
        with torch.inference_mode():
            embedded = self.model.get_audio_embedding_from_data(x=batch, use_tensor=False)
        return normalize_rows(np.asarray(embedded).reshape(len(clips), -1))

    def embed_text(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            embedded = self.model.get_text_embedding(list(texts), use_tensor=False)
        return normalize_rows(np.asarray(embedded).reshape(len(texts), -1))


def load_clap(config: ClapConfig) -> ClapBackend:
    """The configured CLAP; checkpoints at remote URLs are first staged to this node's cache."""
    if config.backend == "transformers":
        return TransformersClap(stage_model(config.model))
    backbones = stage_model(config.text_backbones_dir) if config.text_backbones_dir else None
    return LaionClap(stage_model(config.model), config.amodel, config.enable_fusion, backbones)


def clap_identity(config: ClapConfig) -> dict:
    """What makes two pools' embeddings comparable, read without loading any weights: the backend,
    the width, and the checkpoint's content (`content`, see checkpoint_digest); `model` is its name,
    for people to read."""
    if config.backend == "transformers":
        from transformers import ClapConfig as HfClapConfig

        if is_remote(config.model):
            # Only config.json is read: the driver needs the width, not a copy of the weights.
            settings = json.loads(storage.read_bytes(storage.join(config.model, "config.json")))
            dim = HfClapConfig.from_dict(settings).projection_dim
        else:
            dim = HfClapConfig.from_pretrained(stage_model(config.model)).projection_dim
        model = model_name(config.model)
    else:
        spec = importlib.util.find_spec("laion_clap")
        configs = Path(next(iter(spec.submodule_search_locations))) / "clap_module" / "model_configs"
        # The joint (projected) width: laion-clap's CLAP class defaults it to 512 when a model
        # config does not name it; embed_dim there is the audio encoder's own width.
        dim = json.loads((configs / f"{config.amodel}.json").read_text()).get("joint_embed_shape", 512)
        model = Path(config.model).name
    return {
        "backend": config.backend,
        "model": model,
        "amodel": config.amodel if config.backend == "laion_clap" else None,
        "dim": int(dim),
        "content": checkpoint_digest(config.model),
    }


def same_clap(recorded: dict, wanted: dict) -> bool:
    """Whether embeddings made with the `recorded` CLAP identity are comparable with `wanted`'s. The
    checkpoint's content decides, not its folder's name; an identity recorded before content was
    (no `content`) is compared by backend, name, audio encoder and width, as it was then."""
    if "content" not in recorded:
        return {k: v for k, v in wanted.items() if k != "content"} == recorded
    return {k: v for k, v in recorded.items() if k != "model"} == {k: v for k, v in wanted.items() if k != "model"}

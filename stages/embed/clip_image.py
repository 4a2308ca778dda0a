"""CLIP image embeddings: transformers CLIPModel with its processor, from a Hugging Face id or a
folder, so real checkpoints (openai/clip-vit-large-patch14) and the tiny test model load alike."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from schemas.mapper_config import ClipConfig
from stages.embed.clap import _features, _torch_device, normalize_rows
from stages.io import storage
from stages.io.model_files import checkpoint_digest, is_remote, model_name, stage_model


class TransformersClip:
    def __init__(self, model: str) -> None:
        from transformers import AutoProcessor, CLIPModel

        self.device = _torch_device()
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = CLIPModel.from_pretrained(model).to(self.device).eval()
        self.dim = int(self.model.config.projection_dim)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """RGB images -> [n, dim] float32, rows of unit length."""
        import torch

        inputs = self.processor(images=list(images), return_tensors="pt")
        with torch.inference_mode():
            features = _features(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device)))
        return normalize_rows(features.float().cpu().numpy())


def load_clip(config: ClipConfig) -> TransformersClip:
    """The configured CLIP; a checkpoint at a remote URL is first staged to this node's cache."""
    return TransformersClip(stage_model(config.model))


def clip_identity(config: ClipConfig) -> dict:
    """What makes two runs' image embeddings comparable, read without loading any weights: the width and
    the checkpoint's content (see checkpoint_digest); `model` is its name, for people to read."""
    from transformers import CLIPConfig as HfClipConfig

    if is_remote(config.model):
        settings = json.loads(storage.read_bytes(storage.join(config.model, "config.json")))
        dim = HfClipConfig.from_dict(settings).projection_dim
    else:
        dim = HfClipConfig.from_pretrained(stage_model(config.model)).projection_dim
    return {
        "backend": "transformers",
        "model": model_name(config.model),
        "dim": int(dim),
        "content": checkpoint_digest(config.model),
    }

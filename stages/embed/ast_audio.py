"""Audio Spectrogram Transformer embeddings: transformers ASTModel with its feature extractor, from a
Hugging Face id or a folder, so real checkpoints (MIT/ast-finetuned-audioset-10-10-0.4593) and the
tiny test model load alike."""

from __future__ import annotations

import json

import numpy as np

from schemas.config import AstConfig
from stages.embed.clap import _torch_device
from stages.io import storage
from stages.io.model_files import checkpoint_digest, is_remote, model_name, stage_model


class TransformersAst:
    def __init__(self, model: str) -> None:
        from transformers import ASTModel, AutoFeatureExtractor

        self.device = _torch_device()
        self.extractor = AutoFeatureExtractor.from_pretrained(model)
        self.model = ASTModel.from_pretrained(model).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.sample_rate = int(self.extractor.sampling_rate)

    def embed_audio(self, clips: list[np.ndarray]) -> np.ndarray:
        """Mono float32 clips at `sample_rate` -> [n, dim] float32: the pooled output (the mean of the
        CLS and distillation tokens), unnormalized, as a model trained on AST embeddings takes it."""
        import torch

        inputs = self.extractor(
            [np.asarray(c, dtype=np.float32) for c in clips], sampling_rate=self.sample_rate, return_tensors="pt"
        )
        with torch.inference_mode():
            output = self.model(input_values=inputs["input_values"].to(self.device))
        return output.pooler_output.float().cpu().numpy()


def load_ast(config: AstConfig) -> TransformersAst:
    """The configured AST; a checkpoint at a remote URL is first staged to this node's cache."""
    return TransformersAst(stage_model(config.model))


def ast_identity(config: AstConfig) -> dict:
    """The AST's name, width and checkpoint content (see checkpoint_digest), read without loading weights."""
    from transformers import ASTConfig

    if is_remote(config.model):
        settings = json.loads(storage.read_bytes(storage.join(config.model, "config.json")))
        dim = ASTConfig.from_dict(settings).hidden_size
    else:
        dim = ASTConfig.from_pretrained(stage_model(config.model)).hidden_size
    return {
        "backend": "transformers",
        "model": model_name(config.model),
        "dim": int(dim),
        "content": checkpoint_digest(config.model),
    }

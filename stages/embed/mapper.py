"""The CLIP -> CLAP mapper: a residual MLP that maps an image's CLIP embedding to a vector in
CLAP's audio space, its training on (image vector, audio vector) pairs, its retrieval metrics, and
its checkpoint file. Pure numpy and torch; docs/mapper.md says why this form and this loss.

Training is deterministic for a seed: it runs on CPU with torch's deterministic algorithms, its
initial weights and batch order come from that seed, and the global torch generator is left as it
was. The held-out validation pairs are chosen by a hash of each pair's key, so the same pairs are
held out whatever their order, the seed or the number of workers that embedded them.

The checkpoint is one safetensors file whose header metadata holds the mapper's meta as JSON:
format version, architecture, the CLIP and CLAP identities it was trained with, the training
settings, the pair counts and the metrics. A mapper is loaded only for the CLAP (and CLIP) it was
trained with; another is refused before any weight is read into a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import asdict, dataclass

import numpy as np

from schemas.errors import PipelineError
from stages.embed.clap import normalize_rows, same_clap
from stages.io import storage

MAPPER_FORMAT = 1
META_KEY = "sonify_mapper"
RECALL_KS = (1, 10)


class MapperError(PipelineError):
    """A mapper cannot be trained or used: too few pairs, an unreadable checkpoint, or another model's."""


@dataclass(frozen=True)
class TrainingSettings:
    hidden_dim: int
    blocks: int
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    contrastive_weight: float
    temperature: float
    seed: int


def validation_mask(keys: list[str], fraction: float) -> np.ndarray:
    """True for the pairs held out: those whose key's SHA-256 (its first 8 bytes as a fraction of 2^64)
    is below `fraction`."""
    position = [int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big") / 2**64 for k in keys]
    return np.asarray(position, dtype=np.float64) < fraction


def _mapper_class():
    import torch
    from torch import nn

    class ResidualMapper(nn.Module):
        """Input projection, `blocks` pre-norm residual MLP blocks, output projection, L2 normalization."""

        def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, blocks: int) -> None:
            super().__init__()
            self.input = nn.Linear(in_dim, hidden_dim)
            self.blocks = nn.ModuleList(
                nn.Sequential(
                    nn.LayerNorm(hidden_dim),
                    nn.Linear(hidden_dim, hidden_dim),
                    nn.GELU(),
                    nn.Linear(hidden_dim, hidden_dim),
                )
                for _ in range(blocks)
            )
            self.output = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, out_dim))

        def forward(self, vectors: torch.Tensor) -> torch.Tensor:
            hidden = self.input(vectors)
            for block in self.blocks:
                hidden = hidden + block(hidden)
            return nn.functional.normalize(self.output(hidden), dim=-1)

    return ResidualMapper


def new_mapper(in_dim: int, out_dim: int, hidden_dim: int, blocks: int):
    return _mapper_class()(in_dim, out_dim, hidden_dim, blocks)


def mapper_loss(mapped, target, contrastive_weight: float, temperature: float):
    """Cosine regression (1 - cos, the pair's own audio vector) plus `contrastive_weight` times the
    symmetric InfoNCE over the batch: each mapped vector must pick its own audio vector among the
    batch's, and each audio vector its own mapped vector."""
    import torch
    from torch.nn import functional

    regression = (1.0 - (mapped * target).sum(dim=-1)).mean()
    if contrastive_weight == 0:
        return regression
    logits = mapped @ target.T / temperature
    labels = torch.arange(len(mapped))
    contrastive = (functional.cross_entropy(logits, labels) + functional.cross_entropy(logits.T, labels)) / 2
    return regression + contrastive_weight * contrastive


def train(image_vectors: np.ndarray, audio_vectors: np.ndarray, settings: TrainingSettings):
    """A mapper trained on row-aligned pairs; the same inputs and settings give the same weights."""
    import torch

    if len(image_vectors) != len(audio_vectors):
        raise ValueError(f"{len(image_vectors)} image vectors but {len(audio_vectors)} audio vectors")
    inputs = torch.from_numpy(normalize_rows(image_vectors))
    targets = torch.from_numpy(normalize_rows(audio_vectors))
    step_batch = min(settings.batch_size, len(inputs))
    steps_per_epoch = math.ceil(len(inputs) / step_batch)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.use_deterministic_algorithms(True)
        try:
            torch.manual_seed(settings.seed)
            model = new_mapper(inputs.shape[1], targets.shape[1], settings.hidden_dim, settings.blocks)
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
            )
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs * steps_per_epoch)
            order = torch.Generator().manual_seed(settings.seed)
            model.train()
            for _ in range(settings.epochs):
                permutation = torch.randperm(len(inputs), generator=order)
                for start in range(0, len(inputs), step_batch):
                    rows = permutation[start : start + step_batch]
                    if len(rows) < 2:  # InfoNCE needs a negative; a lone last pair waits for the next epoch
                        continue
                    loss = mapper_loss(
                        model(inputs[rows]), targets[rows], settings.contrastive_weight, settings.temperature
                    )
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    schedule.step()
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
    return model.eval()


def map_vectors(model, image_vectors: np.ndarray, batch: int = 4096) -> np.ndarray:
    """CLIP image vectors -> mapped vectors in CLAP's audio space, [n, out_dim] float32 of unit length."""
    import torch

    inputs = normalize_rows(image_vectors)
    out = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            out.append(model(torch.from_numpy(inputs[start : start + batch])).numpy())
    width = model.output[-1].out_features
    return np.concatenate(out) if out else np.zeros((0, width), dtype=np.float32)


def recall_at(queries: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = RECALL_KS, chunk: int = 1024) -> dict:
    """Recall@k of row-aligned retrieval: query i's right answer is target i among all targets, by
    cosine. A target scoring the same as the right one counts against it (no credit for ties)."""
    queries, targets = normalize_rows(queries), normalize_rows(targets)
    ranks = []
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ targets.T
        own = scores[np.arange(len(scores)), np.arange(start, start + len(scores))]
        ranks.append((scores >= own[:, None]).sum(axis=1) - 1)
    rank = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    return {f"r{k}": float(np.mean(rank < k)) if len(rank) else 0.0 for k in ks}


def least_squares_map(image_vectors: np.ndarray, audio_vectors: np.ndarray) -> np.ndarray:
    """The linear map (with a bias row) of least squared error from image to audio vectors: the baseline."""
    with_bias = np.hstack([normalize_rows(image_vectors), np.ones((len(image_vectors), 1), dtype=np.float32)])
    solution, *_ = np.linalg.lstsq(with_bias.astype(np.float64), normalize_rows(audio_vectors).astype(np.float64))
    return solution.astype(np.float32)


def apply_linear(solution: np.ndarray, image_vectors: np.ndarray) -> np.ndarray:
    ones = np.ones((len(image_vectors), 1), dtype=np.float32)
    return normalize_rows(np.hstack([normalize_rows(image_vectors), ones]) @ solution)


def split_and_train(
    keys: list[str],
    image_vectors: np.ndarray,
    audio_vectors: np.ndarray,
    settings: TrainingSettings,
    validation_fraction: float,
):
    """Holds out the validation pairs, trains on the rest, and measures image -> audio retrieval on the
    held-out pairs: the mapper, the least-squares baseline, raw CLIP-vs-CLAP cosine where the widths
    match, and chance. Returns (mapper, metrics)."""
    held_out = validation_mask(keys, validation_fraction)
    train_rows, validation_rows = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    if len(train_rows) < 2 or len(validation_rows) < 1:
        raise MapperError(
            f"{len(keys)} pairs give {len(train_rows)} training and {len(validation_rows)} validation pairs; "
            "training needs at least 2 and 1 (more pairs, or another mapper.validation_fraction)"
        )
    model = train(image_vectors[train_rows], audio_vectors[train_rows], settings)
    val_images, val_audio = image_vectors[validation_rows], audio_vectors[validation_rows]
    solution = least_squares_map(image_vectors[train_rows], audio_vectors[train_rows])
    n = len(validation_rows)
    metrics = {
        "train_pairs": int(len(train_rows)),
        "validation_pairs": int(n),
        "mapper": recall_at(map_vectors(model, val_images), val_audio),
        "least_squares": recall_at(apply_linear(solution, val_images), val_audio),
        "raw_cosine": recall_at(val_images, val_audio) if val_images.shape[1] == val_audio.shape[1] else None,
        "chance": {f"r{k}": min(k, n) / n for k in RECALL_KS},
    }
    return model, metrics


def format_metrics(metrics: dict) -> str:
    """The metrics as a table: one row per method, one column per recall."""
    header = f"{'image -> audio, validation':<28}" + "".join(f"{'R@' + str(k):>8}" for k in RECALL_KS)
    lines = [header]
    for method in ("mapper", "least_squares", "raw_cosine", "chance"):
        found = metrics.get(method)
        shown = "".join(f"{found[f'r{k}']:>8.3f}" for k in RECALL_KS) if found else f"{'n/a (widths differ)':>16}"
        lines.append(f"{method:<28}{shown}")
    lines.append(f"({metrics['validation_pairs']} validation pairs, {metrics['train_pairs']} training pairs)")
    return "\n".join(lines)


def checkpoint_bytes(model, meta: dict) -> bytes:
    from safetensors.torch import save

    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    return save(state, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def mapper_meta(settings: TrainingSettings, model, clip: dict, clap: dict, pairs: dict, metrics: dict) -> dict:
    return {
        "format": MAPPER_FORMAT,
        "architecture": {
            "kind": "residual_mlp",
            "in_dim": int(model.input.in_features),
            "out_dim": int(model.output[-1].out_features),
            "hidden_dim": settings.hidden_dim,
            "blocks": settings.blocks,
        },
        "clip": clip,
        "clap": clap,
        "training": asdict(settings),
        "pairs": pairs,
        "metrics": metrics,
    }


def save_mapper(url: str, model, meta: dict) -> None:
    """Writes the checkpoint atomically (a temporary name, then renamed)."""
    storage.write_bytes(url, checkpoint_bytes(model, meta))


def meta_of(data: bytes, url: str) -> dict:
    """The mapper meta in a safetensors file's header (8-byte little-endian length, then JSON)."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        meta = json.loads(header["__metadata__"][META_KEY])
    except (struct.error, ValueError, KeyError, TypeError):
        raise MapperError(f"mapper checkpoint {url}: not a safetensors file with mapper meta") from None
    if meta.get("format") != MAPPER_FORMAT:
        raise MapperError(
            f"mapper checkpoint {url} has format {meta.get('format')}, this version reads {MAPPER_FORMAT}: "
            "train it again"
        )
    return meta


def check_identities(meta: dict, url: str, clap: dict, clip: dict | None = None) -> None:
    """Refuses a mapper trained for another CLAP than `clap` (or another CLIP than `clip`, when given)."""
    if not same_clap(meta["clap"], clap):
        raise MapperError(
            f"mapper checkpoint {url} maps into the space of CLAP {meta['clap']}, but the pool's CLAP is {clap}; "
            "train a mapper with the pool's CLAP (models.clap)"
        )
    if clip is not None and not same_clap(meta["clip"], clip):
        raise MapperError(
            f"mapper checkpoint {url} was trained on CLIP {meta['clip']}, but models.clip is {clip}; "
            "use the CLIP it was trained with"
        )


def load_mapper(url: str, clap: dict, clip: dict | None = None):
    """(model, meta) of the checkpoint at `url`, refused (MapperError) unless it was trained for `clap` (and `clip`)."""
    from safetensors.torch import load

    data = storage.read_bytes(url)
    meta = meta_of(data, url)
    check_identities(meta, url, clap, clip)
    shape = meta["architecture"]
    model = new_mapper(shape["in_dim"], shape["out_dim"], shape["hidden_dim"], shape["blocks"])
    model.load_state_dict(load(data))
    return model.eval(), meta

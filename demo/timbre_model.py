"""A tiny timbre-transfer model with the interface of RAVE's TorchScript exports.

RAVE exports a scripted module with an integer `sr` attribute (its sample rate) and three methods
on mono audio shaped [batch, 1, samples]: `encode` to a latent sequence, `decode` back to audio, and
`forward`, which is `decode(encode(x))`. This one keeps that interface with one strided convolution
each way and random weights, so pool variants load it exactly as they load a real export.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

TIMBRE_RATE = 16000
# Samples per latent frame; RAVE's real models use 2,048.
TIMBRE_RATIO = 8
TIMBRE_LATENTS = 4


class TinyTimbre(torch.nn.Module):
    def __init__(self, sr: int = TIMBRE_RATE, ratio: int = TIMBRE_RATIO, latents: int = TIMBRE_LATENTS) -> None:
        super().__init__()
        self.sr = sr
        self.encoder = torch.nn.Conv1d(1, latents, kernel_size=ratio, stride=ratio)
        self.decoder = torch.nn.ConvTranspose1d(latents, 1, kernel_size=ratio, stride=ratio)

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.encoder(x))

    @torch.jit.export
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.tanh(self.decoder(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def build_timbre_model(out: Path, seed: int = 0) -> Path:
    """Saves the scripted model as `out/timbre/tiny-timbre.ts`."""
    torch.manual_seed(seed)
    path = Path(out) / "timbre" / "tiny-timbre.ts"
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # RAVE exports with torch.jit.script, so this model does too.
        warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated", category=FutureWarning)
        torch.jit.script(TinyTimbre().eval()).save(str(path))
    return path

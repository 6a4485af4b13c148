"""G: a secret key's bits -> a small periodic watermark tile, tiled over a photo of any size.

The mark is universal per subject (GenWatermark adds the same w to every image of a
subject), so G runs once per key and embedding is a resize-and-add: fast on a CPU at any
resolution. The tile lives at a canonical scale: on a photo whose short side is larger than
`canonical_size`, the tile is rendered larger so that the mark sits at the canonical scale
once the photo is resized to it, as personalization pipelines and the detector do. The
photo's own pixels are never resampled.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GeneratorConfig:
    n_bits: int = 64
    tile: int = 32  # period of the mark, in canonical pixels
    channels: int = 64
    max_rms: float = 0.008  # RMS of the mark in [0, 1] pixel units: 0.008 -> PSNR 41.9 dB before clipping
    canonical_size: int = 512

    def to_dict(self):
        return asdict(self)


def pattern_scale(height: int, width: int, canonical_size: int) -> float:
    """How many photo pixels one canonical pixel covers (never below 1)."""
    return max(1.0, min(height, width) / canonical_size)


class WatermarkGenerator(nn.Module):
    def __init__(self, config: GeneratorConfig | None = None):
        super().__init__()
        self.config = config = config or GeneratorConfig()
        c, self.base = config.channels, 4
        n_up = int(math.log2(config.tile // self.base))
        if self.base * 2**n_up != config.tile:
            raise ValueError(f"tile must be 4 * 2**n, got {config.tile}")
        self.fc = nn.Linear(config.n_bits, c * self.base * self.base)
        # Circular padding keeps the tile seamless when it repeats over the photo.
        self.ups = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c, c, 3, padding=1, padding_mode="circular"),
                nn.GELU(),
                nn.Conv2d(c, c, 3, padding=1, padding_mode="circular"),
                nn.GELU(),
            )
            for _ in range(n_up)
        )
        self.to_rgb = nn.Conv2d(c, 3, 3, padding=1, padding_mode="circular")

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        """bits [B, n_bits] in {-1, +1} -> zero-mean tiles [B, 3, T, T] with RMS = max_rms.

        The energy is fixed (it sets the PSNR); G learns where to put it. A cap that let the
        energy shrink would let G fade the mark before D has learned to see any of it."""
        h = self.fc(bits).view(bits.shape[0], -1, self.base, self.base)
        for up in self.ups:
            h = up(h)
        tile = self.to_rgb(h)
        tile = tile - tile.mean(dim=(2, 3), keepdim=True)  # no brightness shift
        rms = tile.pow(2).mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12).sqrt()
        return tile * (self.config.max_rms / rms)

    @staticmethod
    def render(tiles: torch.Tensor, height: int, width: int, scale: float = 1.0, offset=(0, 0)) -> torch.Tensor:
        """Repeat tiles [B, 3, T, T] over a canonical grid and resample it to height x width."""
        t = tiles.shape[-1]
        hc, wc = math.ceil(height / scale), math.ceil(width / scale)
        oy, ox = offset[0] % t, offset[1] % t
        reps = (math.ceil((hc + oy) / t), math.ceil((wc + ox) / t))
        grid = tiles.repeat(1, 1, *reps)[..., oy : oy + hc, ox : ox + wc]
        if (hc, wc) != (height, width):
            grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        return grid

    def embed(self, images: torch.Tensor, bits: torch.Tensor, offset=(0, 0), strength: float = 1.0) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] at canonical scale -> watermarked images."""
        pattern = self.render(self(bits), images.shape[-2], images.shape[-1], 1.0, offset)
        return (images + strength * pattern).clamp(0, 1)

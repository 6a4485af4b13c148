"""G: a secret key -> a small periodic watermark tile, tiled over a photo of any size.

The key's bits are one +-1 value per tile pixel: white noise that only the key determines.
G shapes that noise with a learned spectral filter (a circular convolution over the whole
tile) and draws it on luminance only. Two design choices, each measured
(docs/BENCHMARKS.md, "What the mark is made of"):
- Different keys' tiles are independent noise seen through the same filter, so they are
  nearly orthogonal by construction; a G that maps 64 bits through a network drew tiles that
  already correlated at initialisation (mean |corr| 0.14), and one key's mark then passed for
  another's. Training can only choose *which frequencies* carry the mark, not make keys alike.
- JPEG keeps chroma at half resolution and quantises it two to three times more coarsely than
  luminance; the publishing channel's JPEG passes gradients straight through, so G cannot
  learn this from D, and a mark in colour was largely lost at quality 75.

The mark is universal per subject (GenWatermark adds the same w to every image of a subject),
so G runs once per key and embedding is a resize-and-add: fast on a CPU at any resolution.
The tile lives at a canonical scale: on a photo whose short side is larger than
`canonical_size`, the tile is rendered larger so that the mark sits at the canonical scale once
the photo is resized to it, as personalization pipelines and the detector do. The photo's own
pixels are never resampled.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GeneratorConfig:
    tile: int = 32  # period of the mark, in canonical pixels
    max_rms: float = 0.008  # RMS of the mark in [0, 1] pixel units: 0.008 -> PSNR 41.9 dB before clipping
    canonical_size: int = 512
    # Highest spatial frequency the mark may use, in cycles per tile (the larger of |kx| and
    # |ky|); None: all. Energy above it is lost to halving a photo and dilutes what survives.
    band: int | None = None
    # Lowest frequency the mark may use, in cycles per tile; None: 1. Photos' and generated
    # images' own content is strongest at the lowest frequencies (a 1/f spectrum), where the
    # mini world's models keep the least of a profile mark per unit of its energy
    # (docs/BENCHMARKS.md, "A profile mark off its lowest frequencies").
    band_min: int | None = None
    # Tiles symmetric under a horizontal flip. Personalization trains on randomly mirrored
    # copies (random_flip in diffusers' and genwm's scripts); an asymmetric mark mirrored no
    # longer matches its template, so half of what a model learns of it would be lost.
    mirror: bool = False
    # Tiles constant along each row: horizontal stripes, the mark's vertical profile alone. The
    # mini world's personalized models keep a row-constant mark about ten times better than the
    # rest of it (docs/BENCHMARKS.md, the key test); the cost is a key space of a profile's few
    # frequencies instead of a tile's, so different keys' marks correlate more.
    rows: bool = False

    @property
    def n_bits(self) -> int:
        """Key bits: one per tile pixel."""
        return self.tile * self.tile

    def to_dict(self):
        return asdict(self)


def pattern_scale(height: int, width: int, canonical_size: int) -> float:
    """How many photo pixels one canonical pixel covers (never below 1)."""
    return max(1.0, min(height, width) / canonical_size)


def centre_crop_offset(height: int, width: int, canonical_size: int, tile: int) -> tuple[int, int]:
    """The render offset that puts the mark's origin at the corner of the photo's central
    square, at the canonical scale: where a centre crop starts once the short side is resized
    to the canonical size (torchvision's Resize(size) and CenterCrop(size), as DreamBooth and
    LoRA scripts do with --center_crop). A mimic's centre-cropped training images then carry
    the mark at shift 0 whatever the photo's shape, and a random crop of a landscape photo
    slides only along the rows, which a row-constant mark does not see; a place read where
    genwm drew it (genwm.finetune, place "drawn") stays right. A square photo's is (0, 0)."""
    scale = pattern_scale(height, width, canonical_size)
    short = min(height, width)
    # torchvision: the long side becomes int(size * long / short), the crop starts at
    # int(round((long - size) / 2))
    side = short if scale == 1.0 else canonical_size
    start = int(round((int(side * max(height, width) / short) - side) / 2.0))
    top, left = (start, 0) if height > width else (0, start)
    return (-top) % tile, (-left) % tile


def cycles_per_tile(tile: int, onesided: bool = False) -> torch.Tensor:
    """Each frequency of a tile's 2-D FFT in cycles per tile, the larger of |kx| and |ky|:
    [T, T], or [T, T/2+1] (an rfft's) when onesided."""
    k = (torch.fft.fftfreq(tile) * tile).abs()
    kx = torch.fft.rfftfreq(tile) * tile if onesided else k
    return torch.maximum(k[:, None], kx[None])


def band_gain(tile: int, cutoff: int | None, low: int | None = None) -> torch.Tensor:
    """A gain [T, T/2+1] for WatermarkGenerator: 1 from `low` (None: 0) up to `cutoff` (None:
    all) cycles per tile, 0 outside (a low-pass without `low`)."""
    c = cycles_per_tile(tile, onesided=True)
    keep = torch.ones_like(c, dtype=torch.bool)
    if cutoff is not None:
        keep &= c <= cutoff
    if low is not None:
        keep &= c >= low
    return keep.float()


class WatermarkGenerator(nn.Module):
    def __init__(self, config: GeneratorConfig | None = None):
        super().__init__()
        self.config = config = config or GeneratorConfig()
        t = config.tile
        # Gain per spatial frequency of the tile; all ones is white noise.
        self.gain = nn.Parameter(torch.ones(t, t // 2 + 1))
        self.register_buffer("band_mask", band_gain(t, config.band, config.band_min), persistent=False)

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        """bits [B, tile * tile] in {-1, +1} -> zero-mean grey tiles [B, 3, T, T], RMS = max_rms.

        The energy is fixed (it sets the PSNR); G learns where to put it. A cap that let the
        energy shrink would let G fade the mark before D has learned to see any of it."""
        t = self.config.tile
        noise = bits.reshape(-1, 1, t, t)
        tile = torch.fft.irfft2(torch.fft.rfft2(noise) * (self.gain * self.band_mask), s=(t, t))
        if self.config.mirror:
            # about the tile's centre line: on an image a whole number of tiles wide, mirroring
            # the image leaves the mark exactly as it was (otherwise shifts it, which D allows)
            tile = tile + tile.flip(-1)
        if self.config.rows:
            tile = tile.mean(dim=-1, keepdim=True).expand_as(tile)
        tile = tile - tile.mean(dim=(2, 3), keepdim=True)  # no brightness shift
        rms = tile.pow(2).mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12).sqrt()
        return (tile * (self.config.max_rms / rms)).expand(-1, 3, -1, -1)

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

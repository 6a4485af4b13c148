"""The publishing channel: what happens to a photo between the owner and the detector.

Phase 1 puts it between G and D so that the mark survives JPEG, resizing, cropping, blur and
noise. Every step is differentiable or straight-through: JPEG runs the real codec forward
and passes gradients through unchanged (the straight-through estimator), which trains for
the codec people actually use instead of an approximation of it.
"""
import io
import math
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG round trip, straight-through gradient."""
    out = []
    for img in images.detach().clamp(0, 1):
        arr = (img.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255
        out.append(torch.from_numpy(dec).permute(2, 0, 1))
    coded = torch.stack(out).to(images)
    return images + (coded - images).detach()


def resize(images: torch.Tensor, factor: float) -> torch.Tensor:
    h, w = images.shape[-2:]
    size = (max(8, round(h * factor)), max(8, round(w * factor)))
    return F.interpolate(images, size=size, mode="bilinear", antialias=factor < 1, align_corners=False)


def down_up(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Resize down and back: the detail a downscaled copy has lost, at the original scale."""
    h, w = images.shape[-2:]
    return F.interpolate(resize(images, factor), size=(h, w), mode="bilinear", align_corners=False)


def center_crop(images: torch.Tensor, fraction: float) -> torch.Tensor:
    h, w = images.shape[-2:]
    ch, cw = max(8, round(h * fraction)), max(8, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return images[..., top : top + ch, left : left + cw]


def random_crop(images: torch.Tensor, fraction: float) -> torch.Tensor:
    h, w = images.shape[-2:]
    ch, cw = max(8, round(h * fraction)), max(8, round(w * fraction))
    top, left = random.randint(0, h - ch), random.randint(0, w - cw)
    return images[..., top : top + ch, left : left + cw]


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def gaussian_noise(images: torch.Tensor, sigma: float) -> torch.Tensor:
    return (images + sigma * torch.randn_like(images)).clamp(0, 1)


# The fixed attacks the benchmark and the calibration use, by name.
ATTACKS = {
    "clean": lambda x: x,
    "jpeg75": lambda x: jpeg(x, 75),
    "jpeg50": lambda x: jpeg(x, 50),
    "resize0.5": lambda x: resize(x, 0.5),
    "crop0.8": lambda x: center_crop(x, 0.8),
    "blur1": lambda x: gaussian_blur(x, 1.0),
    "noise0.02": lambda x: gaussian_noise(x, 0.02),
}


def load_frozen_vae(path):
    """A diffusers AutoencoderKL from a pipeline folder (its vae/) or a vae folder, frozen."""
    from pathlib import Path

    from diffusers import AutoencoderKL

    path = Path(path)
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no VAE here (expected {path / 'vae' / 'config.json'} or {path / 'config.json'})")
    return AutoencoderKL.from_pretrained(str(folder)).eval().requires_grad_(False)


def vae_round_trip(vae, images: torch.Tensor) -> torch.Tensor:
    """Encode to the latent mean and decode: what a latent diffusion model can see of an image."""
    latents = vae.encode(images * 2 - 1).latent_dist.mean
    return (vae.decode(latents).sample / 2 + 0.5).clamp(0, 1)


@dataclass
class ChannelConfig:
    p_rescale: float = 0.5  # the mark seen at another scale (cropped-then-normalised, small photos resized)
    scale_range: tuple = (0.5, 1.5)
    p_crop: float = 0.3
    p_jpeg: float = 0.4
    jpeg_quality: tuple = (40, 95)
    p_down_up: float = 0.2
    p_blur: float = 0.2
    blur_sigma: tuple = (0.3, 1.5)
    p_noise: float = 0.2
    noise_sigma: tuple = (0.0, 0.03)
    # A stand-in for personalization: the round trip through a latent diffusion model's VAE
    # (a diffusers pipeline folder or its vae/ folder), which every image a personalized
    # model learns from, and every image it generates, goes through.
    vae: str | None = None
    p_vae: float = 0.0
    p_flip: float = 0.0  # mirrored left to right, as personalization's random_flip does

    def to_dict(self):
        return asdict(self)


class PublishingChannel(nn.Module):
    """Random chain of distortions, the same kind for the whole batch (cheap on a CPU)."""

    def __init__(self, config: ChannelConfig | None = None):
        super().__init__()
        self.config = config or ChannelConfig()
        self.vae = load_frozen_vae(self.config.vae) if self.config.vae and self.config.p_vae > 0 else None

    def forward(self, images: torch.Tensor, intensity: float = 1.0) -> torch.Tensor:
        """intensity scales every distortion's probability (a training curriculum)."""
        c, x = self.config, images

        def u():
            return random.random() / max(intensity, 1e-9)

        if self.vae is not None and u() < c.p_vae:
            x = vae_round_trip(self.vae, x)
        if c.p_flip > 0 and u() < c.p_flip:  # no draw otherwise: earlier recipes' runs stay as they were
            x = x.flip(-1)
        if u() < c.p_rescale:
            lo, hi = math.log(c.scale_range[0]), math.log(c.scale_range[1])
            x = resize(x, math.exp(random.uniform(lo, hi)))
        if u() < c.p_crop:
            x = random_crop(x, random.uniform(0.6, 0.95))
        if u() < c.p_down_up:
            x = down_up(x, random.uniform(0.5, 0.9))
        if u() < c.p_blur:
            x = gaussian_blur(x, random.uniform(*c.blur_sigma))
        if u() < c.p_noise:
            x = gaussian_noise(x, random.uniform(*c.noise_sigma))
        if u() < c.p_jpeg:
            x = jpeg(x, random.randint(*c.jpeg_quality))
        return x

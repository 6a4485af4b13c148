"""Watermarker: embed a subject's key into photos with a pretrained G."""
import numpy as np
import torch
from PIL import Image

from genwm import images as imageops
from genwm.checkpoint import load_checkpoint
from genwm.keys import key_bits
from genwm.models import WatermarkGenerator
from genwm.models.generator import centre_crop_offset, pattern_scale


class Watermarker:
    def __init__(self, generator: WatermarkGenerator, key: str | None = None, config: dict | None = None, strength: float = 1.0):
        self.generator = generator.eval()
        self.key = key
        self.config = config or {}
        self.strength = strength  # multiplies the learned mark; 1.0 is what phase 1 trained
        self._tiles: dict[str, torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, path, key: str | None = None, strength: float = 1.0) -> "Watermarker":
        generator, _, config = load_checkpoint(path)
        if generator is None:
            raise ValueError(f"{path}: this checkpoint has no watermark generator (a detector-only checkpoint?)")
        return cls(generator, key=key, config=config, strength=strength)

    def tile(self, key: str | None = None) -> torch.Tensor:
        key = key or self.key
        if key is None:
            raise ValueError("no key: pass key= to from_pretrained() or watermark()")
        if key not in self._tiles:
            with torch.no_grad():
                self._tiles[key] = self.generator(key_bits(key, self.generator.config.n_bits)[None])
        return self._tiles[key]

    def pattern(self, height: int, width: int, key: str | None = None) -> np.ndarray:
        """The additive mark for a height x width photo, H x W x 3 float32, its origin at the
        corner of the photo's central square (generator.centre_crop_offset)."""
        c = self.generator.config
        scale = pattern_scale(height, width, c.canonical_size)
        offset = centre_crop_offset(height, width, c.canonical_size, c.tile)
        with torch.no_grad():
            p = WatermarkGenerator.render(self.tile(key), height, width, scale, offset)
        return p[0].permute(1, 2, 0).numpy() * self.strength

    def watermark_array(self, rgb: np.ndarray, key: str | None = None) -> np.ndarray:
        """H x W x 3 float in [0, 1] -> watermarked, same shape, in [0, 1]."""
        return np.clip(rgb + self.pattern(rgb.shape[0], rgb.shape[1], key), 0.0, 1.0)

    def watermark(self, img: Image.Image, key: str | None = None) -> Image.Image:
        """Watermark a PIL image at full resolution; size, mode and alpha are kept."""
        return imageops.apply_to_pil(img, lambda rgb: self.watermark_array(rgb, key))

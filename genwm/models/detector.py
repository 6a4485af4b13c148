"""D: an image of any size -> the probability that it carries a given key's watermark.

D reads the watermark's bits from an image (a CNN with global pooling, so any size and any
position) and compares them with the key's bits. Its binary output is
sigmoid(sharpness * (agreement - threshold)), where agreement = mean(bits * tanh(logits))
lies in [-1, 1]: near 1 for the key's mark, near 0 for clean images and for other keys'
marks, whose bits are independent of this key's.
"""
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from genwm.models.generator import pattern_scale


@dataclass
class DetectorConfig:
    n_bits: int = 64
    width: int = 64
    canonical_size: int = 512
    max_side: int = 1024  # longer sides are centre-cropped after scale normalisation

    def to_dict(self):
        return asdict(self)


def _block(cin, cout, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(8, cout),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.GELU(),
    )


class Detector(nn.Module):
    def __init__(self, config: DetectorConfig | None = None):
        super().__init__()
        self.config = config = config or DetectorConfig()
        w = config.width
        self.features = nn.Sequential(
            _block(3, w // 2, 1), _block(w // 2, w, 2), _block(w, w, 2), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1)
        )
        self.bit_head = nn.Linear(2 * w, config.n_bits)
        self.sharpness = nn.Parameter(torch.tensor(12.0))
        self.threshold = nn.Parameter(torch.tensor(0.4))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1], at canonical scale -> bit logits [B, n_bits]."""
        h = self.features(images * 2 - 1)
        return self.bit_head(h.mean(dim=(2, 3)))

    @staticmethod
    def agreement(bit_logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        return (bits * torch.tanh(bit_logits)).mean(dim=-1)

    def logit(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """Binary logit that each image carries the mark of bits [B or 1, n_bits]."""
        return self.sharpness * (self.agreement(self(images), bits) - self.threshold)

    def to_canonical(self, image: torch.Tensor) -> torch.Tensor:
        """One image [3, H, W] -> [1, 3, h, w] at the scale the mark was rendered for."""
        h, w = image.shape[-2:]
        s = pattern_scale(h, w, self.config.canonical_size)
        x = image[None]
        if s > 1:
            size = (max(1, round(h / s)), max(1, round(w / s)))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        h, w = x.shape[-2:]
        m = self.config.max_side
        top, left = max(0, (h - m) // 2), max(0, (w - m) // 2)
        return x[..., top : top + m, left : left + m]

    # ---- the user-facing API: load, score, verdict -------------------------------------

    @classmethod
    def from_pretrained(cls, path, device="cpu") -> "Detector":
        from genwm.checkpoint import load_calibration, load_checkpoint

        _, detector, config = load_checkpoint(path, device=device)
        if detector is None:
            raise ValueError(f"{path}: this checkpoint has no detector")
        detector.checkpoint_config = config
        detector.calibration = load_calibration(path)
        return detector

    @torch.no_grad()
    def logits(self, images, key) -> "np.ndarray":
        """Binary logits, one per image (PIL images, or [3, H, W] tensors in [0, 1])."""
        import numpy as np

        from genwm.images import to_float_rgb
        from genwm.keys import key_bits

        bits = key_bits(key, self.config.n_bits)[None] if isinstance(key, str) else key
        device = next(self.parameters()).device
        out = []
        for img in images:
            if not isinstance(img, torch.Tensor):
                img = torch.from_numpy(to_float_rgb(img)).permute(2, 0, 1)
            out.append(self.logit(self.to_canonical(img.to(device)), bits.to(device)).item())
        return np.array(out)

    def score(self, images, key) -> "np.ndarray":
        """Probability, per image, that it carries the key's watermark."""
        import numpy as np

        return 1 / (1 + np.exp(-self.logits(images, key)))

    def verdict(self, images, key, alpha: float = 0.01) -> dict:
        """Set-level test against the calibrated null distribution (see genwm.calibration)."""
        from genwm.calibration import set_verdict

        if not getattr(self, "calibration", None):
            raise ValueError("this detector has no calibration.json; run `genwm calibrate` first")
        return set_verdict(self.logits(images, key), self.calibration, alpha=alpha)

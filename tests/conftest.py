"""Shared test fixtures: small synthetic photos and a tiny randomly initialised checkpoint."""
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

TEST_KEY = "test-subject-key"


def smooth_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like H x W x 3 uint8 image: smooth gradients and blobs, a little noise.

    Smooth, because a JPEG re-encode of pure noise loses more than the mark adds.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for c in range(3):
        fy, fx, phase = rng.uniform(1, 4, 3)
        channels.append(0.5 + 0.3 * np.sin(2 * np.pi * (fy * y + fx * x) + phase) + 0.1 * (x - y) * (c - 1))
    img = np.stack(channels, axis=2) + rng.normal(0, 0.01, (height, width, 3))
    return (np.clip(img, 0.05, 0.95) * 255).round().astype(np.uint8)


def file_hashes(folder) -> dict:
    """Relative path -> sha256 of every file under folder (hidden ones included)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A genwm checkpoint folder with a tiny random G and D, no calibration.

    Its metadata names the random-backbone LPIPS, the one perceptual backend that needs
    no downloaded weights, so --budget runs offline.
    """
    from genwm.checkpoint import save_checkpoint
    from genwm.models import Detector, GeneratorConfig, WatermarkGenerator

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    generator = WatermarkGenerator(GeneratorConfig(tile=8, canonical_size=64))
    save_checkpoint(
        path,
        generator=generator,
        detector=Detector.for_generator(generator, width=8, max_side=128),
        metadata={"perceptual": "lpips-alex-random", "purpose": "tests"},
    )
    return path


def calibrated_copy(checkpoint: Path, dest: Path, null_logits) -> Path:
    """A copy of checkpoint with a calibration made from the given null logits."""
    from genwm.calibration import make_calibration
    from genwm.checkpoint import save_calibration

    shutil.copytree(checkpoint, dest)
    save_calibration(dest, make_calibration(np.asarray(null_logits, dtype=float)))
    return dest


@pytest.fixture
def always_detects(tiny_checkpoint, tmp_path) -> Path:
    """Calibrated so that any score is above the threshold: a set is always 'detected'."""
    return calibrated_copy(tiny_checkpoint, tmp_path / "ckpt-low-null", np.linspace(-1000, -999, 200))


@pytest.fixture
def never_detects(tiny_checkpoint, tmp_path) -> Path:
    """Calibrated so that no score reaches the threshold: a set is never 'detected'."""
    return calibrated_copy(tiny_checkpoint, tmp_path / "ckpt-high-null", np.linspace(999, 1000, 200))

"""Photos for phase 1: image folders -> random crops at the mark's canonical scale."""
import random
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from genwm.images import find_images


def list_images(folders) -> list[Path]:
    """Every photo under the folders, recursively (genwm.images.find_images' rules)."""
    folders = [Path(folders)] if isinstance(folders, (str, Path)) else [Path(f) for f in folders]
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: image folder does not exist")
    return [path for path, _ in find_images(folders)]


def load_canonical(path: Path, short_side: int) -> torch.Tensor:
    """A photo as [3, H, W] in [0, 1], resized so its short side is at most short_side,
    which is how the mark's scale is defined (see generator.pattern_scale)."""
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    s = min(img.size) / short_side
    if s > 1:
        img = img.resize((round(img.width / s), round(img.height / s)), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


class CropDataset(Dataset):
    """Random crops from images held in memory (a few hundred photos fit easily)."""

    def __init__(self, images: list[torch.Tensor], crop: int, length: int, train: bool = True, seed: int = 0):
        self.images = [im for im in images if min(im.shape[-2:]) >= crop]
        if not self.images:
            raise ValueError(f"no image is at least {crop}px on its short side")
        self.crop, self.length, self.train, self.seed = crop, length, train, seed

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        # training crops follow the global RNG (seeded by the run's seed); validation's are fixed
        rng = random if self.train else random.Random(self.seed * 100003 + i)
        img = self.images[rng.randrange(len(self.images))]
        h, w = img.shape[-2:]
        top, left = rng.randint(0, h - self.crop), rng.randint(0, w - self.crop)
        x = img[:, top : top + self.crop, left : left + self.crop]
        if self.train and rng.random() < 0.5:
            x = x.flip(-1)
        return x


class PhotoCropDataModule(pl.LightningDataModule):
    def __init__(self, train_dirs, val_dirs, crop: int = 128, batch_size: int = 16, canonical_size: int = 512,
                 steps_per_epoch: int = 200, val_crops: int = 64, num_workers: int = 0):
        super().__init__()
        self.train_dirs, self.val_dirs = train_dirs, val_dirs
        self.crop, self.batch_size, self.canonical_size = crop, batch_size, canonical_size
        self.steps_per_epoch, self.val_crops, self.num_workers = steps_per_epoch, val_crops, num_workers

    def setup(self, stage=None):
        if hasattr(self, "train_set"):
            return
        load = lambda dirs: [load_canonical(p, self.canonical_size) for p in list_images(dirs)]
        self.train_set = CropDataset(load(self.train_dirs), self.crop, self.steps_per_epoch * self.batch_size)
        self.val_set = CropDataset(load(self.val_dirs), self.crop, self.val_crops, train=False)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)

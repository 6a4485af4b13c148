"""Diagnostic: do the personalized mini models draw *their* subject?

    python scripts/bench_fidelity.py runs/bench-v3

GenWatermark's premise is that a personalized model reproduces its subject's photos closely
enough to carry their watermark. This measures how closely, without labels or a hub model:
each image is described by ImageNet EfficientNet-Lite0 features (the offline backbone of
genwm's perceptual distance; global-average pooled, the last two stages, L2-normalised), each
held-out subject by the mean description of its clean photos, and an image is "recognised" when
its nearest subject (cosine similarity) is the one its model was personalized on. Printed per
kind of image folder, over every subject in the runs folder: recognition rate (chance 1 / the
number of subjects) and the mean margin (similarity to its own subject minus the mean
similarity to the others). The subject photos themselves (each left out of its own subject's
mean) give the ceiling; DreamBooth's class images, which the base model drew for the class noun
before any personalization, the floor.

The runs folder holds one `subjectNN/<variant>/work` per subject, as `bench_pipeline.py` writes.
"""
import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genwm.data import list_images
from genwm.finetune import load_image
from genwm.perceptual import EfficientNetPerceptual


@torch.no_grad()
def describe(net: EfficientNetPerceptual, files, batch: int = 32) -> np.ndarray:
    out = []
    for i in range(0, len(files), batch):
        x = torch.stack([load_image(f) for f in files[i : i + batch]])
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        feats = net.features(x)[-2:]
        out.append(torch.cat([F.normalize(f.mean(dim=(2, 3)), dim=1) for f in feats], dim=1))
    return F.normalize(torch.cat(out), dim=1).numpy()


def centroid(features: np.ndarray) -> np.ndarray:
    """A subject's description: its photos' mean description, unit length."""
    return F.normalize(torch.from_numpy(features.mean(0)), dim=0).numpy()


def recognition(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities [n, subjects] of n images to each subject -> per image, whether
    subject k is the nearest, and the margin: similarity to k minus the mean to the others."""
    others = np.delete(sims, k, axis=1)
    return sims.argmax(1) == k, sims[:, k] - others.mean(1)


def folder_kind(name: str) -> str:
    """'dreambooth-watermarked-seed1000-seen' -> 'dreambooth, watermarked photos, seen prompts'."""
    m = re.match(r"(dreambooth|lora|textual-inversion)-(clean|watermarked)-seed\d+-(\w+)$", name)
    return f"{m[1]}, {m[2]} photos, {m[3]} prompts" if m else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, help="a bench_pipeline.py output folder (subjectNN/<variant>/work inside)")
    ap.add_argument("--variant", default="genwm", help="whose work folders to read (default genwm)")
    args = ap.parse_args()
    works = {int(p.parent.parent.name[len("subject"):]): p for p in sorted(args.runs.glob(f"subject*/{args.variant}/work")) if (p / "subject" / "clean").is_dir()}
    if len(works) < 2:
        raise SystemExit(f"{args.runs}: fewer than two subjects with {args.variant}/work/subject/clean; nothing to tell apart")
    net = EfficientNetPerceptual().eval()
    subjects = sorted(works)
    photos = {s: describe(net, list_images(works[s] / "subject" / "clean")) for s in subjects}
    centroids = np.stack([centroid(photos[s]) for s in subjects])

    def score(own: int, feats: np.ndarray, loo: bool = False) -> tuple[np.ndarray, np.ndarray]:
        sims = feats @ centroids.T  # [n, subjects]
        if loo:  # a photo against its own subject's mean without itself
            k, n = subjects.index(own), len(photos[own])
            rest = (photos[own].sum(0)[None] - feats) / (n - 1)
            sims[:, k] = (feats * rest).sum(1) / np.linalg.norm(rest, axis=1)
        return recognition(sims, subjects.index(own))

    rows = defaultdict(lambda: ([], []))
    for s in subjects:
        hit, margin = score(s, photos[s], loo=True)
        rows["subject photos (ceiling)"][0].extend(hit)
        rows["subject photos (ceiling)"][1].extend(margin)
        for folder in sorted((works[s] / "models").glob("class_images-*")):
            hit, margin = score(s, describe(net, list_images(folder)))
            rows["class images, base model (floor)"][0].extend(hit)
            rows["class images, base model (floor)"][1].extend(margin)
        for folder in sorted((works[s] / "images").iterdir()):
            kind = folder_kind(folder.name)
            if kind and list_images(folder):
                hit, margin = score(s, describe(net, list_images(folder)))
                rows[kind][0].extend(hit)
                rows[kind][1].extend(margin)
    print(f"{len(subjects)} subjects ({', '.join(map(str, subjects))}) from {args.runs}; chance {1 / len(subjects):.2f}")
    print("| images | n | recognised as their subject | margin of similarity |")
    print("|---|---|---|---|")
    for kind, (hits, margins) in rows.items():
        print(f"| {kind} | {len(hits)} | {np.mean(hits):.3f} | {np.mean(margins):.4f} |")


if __name__ == "__main__":
    main()

"""Benchmark: weighing the template's rings of frequencies as phase 2 fits them, pair by pair.

    python scripts/bench_rings.py runs/bench-band/subject03/genwm-profile-band-2test/work --key genwm-demo-key \
        --checkpoint checkpoints/genwm-mini-profile-band

For each demo work folder: the gains are fitted on the pair of generated-image folders of the
lowest model seed (phase 2's own; the test and control seeds are offsets above it), all of its
images, at the place genwm drew the mark (scale 1, shift 0, as `place: drawn` reads), and every
other pair is read with them (out of sample), as the detector reads (Detector.read_located:
the gains applied to the correlation's spectrum, then the z-score over shifts). Per pair: the
per-image AUC and d' of the plain reading and of each fit:
- "clipped": genwm.finetune.fit_rings as phase 2 runs it (shift over pooled variance of each
  ring's part of the z-score reading, none below 0);
- "signed": the same without the floor at 0 (a ring that read the mark lower in phase 2's
  pair counts against it);
- "shrunk": clipped, half-way back to the plain reading (gains averaged with 1 on the rings the
  template has), for a fit on a few dozen images.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from bench_generated_mark import auc, d_prime, load, model_seed
from genwm.finetune import fit_rings, ring_readings
from genwm.keys import key_bits
from genwm.models import Detector


@torch.no_grad()
def parts_of(detector: Detector, images: torch.Tensor, spectrum: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[N, T/2+1]: each ring's part of the key's z-score reading, per image."""
    return torch.stack([ring_readings(detector, detector.residual(x[None]), spectrum, 1.0, weights)[0] for x in images])


@torch.no_grad()
def fits(detector: Detector, marked: torch.Tensor, clean: torch.Tensor, spectrum: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    clipped = fit_rings(detector, {"watermarked": [detector.residual(x[None]) for x in marked], "clean": [detector.residual(x[None]) for x in clean]}, spectrum, [1.0], weights)[0]
    m, c = parts_of(detector, marked, spectrum, weights), parts_of(detector, clean, spectrum, weights)
    signed = (m.mean(0) - c.mean(0)) / ((m.var(0) + c.var(0)) / 2).clamp_min(1e-12)
    energetic = (m.var(0) + c.var(0)) > 1e-6 * (m.var(0) + c.var(0)).sum()
    energetic[0] = False
    signed = signed * energetic / signed[energetic].abs().max()
    plain = energetic.float()
    return {"plain": plain, "clipped": clipped, "signed": signed, "shrunk": (clipped + plain) / 2}  # fit_rings never returns all zeros


@torch.no_grad()
def read(detector: Detector, images: torch.Tensor, spectrum: torch.Tensor, weights: torch.Tensor, gains: torch.Tensor) -> np.ndarray:
    """The detector's located reading at the drawn place with `gains` on the key's rings
    (signed gains are applied as they are: the spectrum's sign flips where a gain is negative)."""
    return detector.read_located(detector.residual(images), spectrum, [1.0], weights, gains[None])[:, 0].numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, nargs="+", help="demo work folders (images/ inside)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-mini-profile-band", help="the phase-1 checkpoint whose mark was used")
    args = ap.parse_args()
    detector = Detector.from_pretrained(args.checkpoint).eval()
    t = detector.config.tile
    bits = key_bits(args.key, detector.config.n_bits)[None]
    with torch.no_grad():
        spectrum = detector.template_spectrum(detector.templates(bits)[None])
    weights = torch.zeros(1, t * t)
    weights[0, 0] = 1.0  # the drawn place: shift 0
    names = ["plain", "clipped", "signed", "shrunk"]
    print("| pair of models | " + " | ".join(f"AUC, {n}" for n in names) + " | " + " | ".join(f"d', {n}" for n in names) + " |")
    print("|---|" + "---|" * (2 * len(names)))
    for work in args.work:
        pairs = []
        for marked_dir in sorted((work / "images").glob("*-watermarked-*")):
            clean_dir = marked_dir.with_name(marked_dir.name.replace("-watermarked-", "-clean-"))
            if clean_dir.is_dir():
                pairs.append((marked_dir.name.replace("-watermarked", ""), marked_dir, clean_dir))
        fit_name, fit_marked, fit_clean = min(pairs, key=lambda p: model_seed(p[0]))
        gains = fits(detector, load(fit_marked), load(fit_clean), spectrum, weights)
        subject = work.parent.parent.name
        print(f"| {subject}: gains fitted on {fit_name}, clipped | " + " ".join(f"{g:.2f}" for g in gains["clipped"].tolist()) + " |" + " |" * (2 * len(names) - 1))
        for name, marked_dir, clean_dir in pairs:
            if name == fit_name:
                continue
            marked, clean = load(marked_dir), load(clean_dir)
            scores = {n: (read(detector, marked, spectrum, weights, g), read(detector, clean, spectrum, weights, g)) for n, g in gains.items()}
            print(f"| {subject} {name} | " + " | ".join(f"{auc(*scores[n]):.3f}" for n in names) + " | " + " | ".join(f"{d_prime(*scores[n]):+.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()

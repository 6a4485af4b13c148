"""Diagnostic: how much of the mark reaches the images that personalized models generate.

    python scripts/bench_generated_mark.py runs/bench-v3/subject00/genwm/work --key genwm-demo-key

The detector searches every shift and scale, and pays for it: the best of many looks at a
clean image is already a few standard deviations. A model that learned the mark should draw
it where the subject's photos had it (genwm draws it from the corner of the photo's central
square, the mini world's square photos' top-left corner, at the canonical scale), so this
looks there alone: the phase-1 detector's residual, every block's
correlation with the key's template summed, read at shift 0 as a z-score. For the subject's
photos (marked vs clean) and for each pair of generated-image folders in a demo work folder
(the model trained on marked photos vs the one trained on clean photos, same seeds and
prompts), it prints that z-score's AUC and means, the searching detector's AUC, and the
fraction of the photos' z-score shift that reaches the generated images.

With --by-frequency, the same read frequency by frequency (rings of equal cycles per tile of
the key's template; for a row-constant mark, each vertical frequency): each ring's share of
the template's energy, the fraction of the photos' shift at that ring that reaches the
generated images, and its per-image signal-to-noise ratio (shift over the images' pooled sd).
Beside the d' of the rings' sum (the correlation at shift 0, before the z-score divides it by
the map's spread) it prints sqrt(sum of the rings' squared SNRs), the d' of the best weighing
of the rings for these very images (an in-sample upper bound for any reweighing of
frequencies, such as a whitening fitted in phase 2). Then, out of sample: each ring weighed by
its shift over its pooled variance (a diagonal discriminant) as fitted on the pair of the
lowest model seed (phase 2's own: test and control seeds are offsets above it), applied to
every other pair; the per-image AUC and d' of that reading beside the rings' plain sum's.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from genwm.data import list_images
from genwm.evaluate import detection_metrics
from genwm.finetune import load_image, rfft_multiplicity
from genwm.keys import key_bits
from genwm.models import Detector
from genwm.models.generator import cycles_per_tile


def load(folder: Path) -> torch.Tensor:
    return torch.stack([load_image(path) for path in list_images(folder)])


@torch.no_grad()
def shift0_z(detector: Detector, images: torch.Tensor, bits: torch.Tensor) -> np.ndarray:
    """z-score of the summed correlation at shift 0, per image."""
    spectrum = detector.template_spectrum(detector.templates(bits)[:, None])
    return detector.shift_z(detector.residual(images), spectrum, 1.0)[:, 0, 0].numpy()


@torch.no_grad()
def phase0_and_logit(detector: Detector, images: torch.Tensor, bits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """shift0_z, and the detector's own logit, per image."""
    return shift0_z(detector, images, bits), detector.logit(images, bits).numpy()


@torch.no_grad()
def ring_readings(detector: Detector, images: torch.Tensor, bits: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What each ring of frequencies adds to the summed correlation at shift 0, per image:
    (readings [N, R], rings' cycles per tile [R], template energy share [R])."""
    t = detector.config.tile
    spectrum = detector.template_spectrum(detector.templates(bits)[:, None])  # [1, 1, 1, 3, T, T/2+1]
    correlation = detector.correlation_spectra(detector.residual(images), spectrum)[:, 0].sum(1)  # [N, T, T/2+1], blocks summed
    multiplicity = rfft_multiplicity(t)
    terms = correlation.real * multiplicity  # sums to T*T times the correlation at shift 0
    ring = cycles_per_tile(t, onesided=True).round().long()
    energy = spectrum[0, 0, 0].sum(0).abs().square() * multiplicity
    rings = [int(r) for r in ring.unique() if energy[ring == r].sum() > 1e-6 * energy.sum()]
    readings = torch.stack([terms[:, ring == r].sum(-1) for r in rings], dim=-1)
    share = torch.stack([energy[ring == r].sum() for r in rings]) / energy.sum()
    return readings.numpy(), np.array(rings), share.numpy()


def d_prime(marked: np.ndarray, clean: np.ndarray) -> np.ndarray:
    pooled = np.sqrt((marked.var(0, ddof=1) + clean.var(0, ddof=1)) / 2)
    return (marked.mean(0) - clean.mean(0)) / np.maximum(pooled, 1e-12)


def by_frequency(detector: Detector, work: Path, bits: torch.Tensor) -> None:
    photos = {}
    for side in ("watermarked", "clean"):
        photos[side], rings, share = ring_readings(detector, load(work / "subject" / side), bits)
    photo_shift = photos["watermarked"].mean(0) - photos["clean"].mean(0)
    pairs = []
    for marked_dir in sorted((work / "images").glob("*-watermarked-*")):
        clean_dir = marked_dir.with_name(marked_dir.name.replace("-watermarked-", "-clean-"))
        if clean_dir.is_dir():
            pairs.append((marked_dir.name.replace("-watermarked", ""), ring_readings(detector, load(marked_dir), bits)[0], ring_readings(detector, load(clean_dir), bits)[0]))
    print("| cycles per tile | template energy | " + " | ".join(f"{name}: kept, SNR" for name, _, _ in pairs) + " |")
    print("|---|---|" + "---|" * len(pairs))
    for j, r in enumerate(rings):
        cells = [f"{(m[:, j].mean() - c[:, j].mean()) / photo_shift[j]:.2f}, {d_prime(m, c)[j]:.2f}" for _, m, c in pairs]
        print(f"| {r} | {share[j]:.3f} | " + " | ".join(cells) + " |")
    print("| d' of the shift-0 correlation / of the best weighing of the rings (in-sample) | | " + " | ".join(
        f"{d_prime(m.sum(1, keepdims=True), c.sum(1, keepdims=True))[0]:.2f} / {np.sqrt(np.sum(d_prime(m, c) ** 2)):.2f}" for _, m, c in pairs) + " |")
    if len(pairs) < 2:
        return  # nothing to read out of sample
    fit_name, fit_m, fit_c = min(pairs, key=lambda p: model_seed(p[0]))
    pooled = (fit_m.var(0, ddof=1) + fit_c.var(0, ddof=1)) / 2
    weights = (fit_m.mean(0) - fit_c.mean(0)) / np.maximum(pooled, 1e-12)
    print(f"\nRings weighed as fitted on {fit_name}, read on the other pairs (per-image AUC and d'):\n")
    print("| pair | AUC, rings' sum | AUC, weighed | d', rings' sum | d', weighed |")
    print("|---|---|---|---|---|")
    for name, m, c in pairs:
        if name != fit_name:
            plain, weighed = (m.sum(1), c.sum(1)), (m @ weights, c @ weights)
            print(f"| {name} | {auc(*plain):.3f} | {auc(*weighed):.3f} | {d_prime(*plain):.2f} | {d_prime(*weighed):.2f} |")


def model_seed(pair_name: str) -> int:
    """The model seed in a pair's folder name (METHOD-seedN-PROMPTS)."""
    return int(pair_name.split("-seed")[1].split("-")[0])


def auc(marked: np.ndarray, clean: np.ndarray) -> float:
    return detection_metrics(clean, marked)["roc_auc"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, help="a demo's work folder (subject/ and images/ inside)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-mini", help="the phase-1 checkpoint whose mark was used")
    ap.add_argument("--whiten", action="store_true", help="read with the detector's per-image whitening on (DetectorConfig.whiten), whatever the checkpoint says")
    ap.add_argument("--by-frequency", action="store_true", help="the shift-0 reading ring by ring of the template's frequencies (see above)")
    args = ap.parse_args()
    detector = Detector.from_pretrained(args.checkpoint).eval()
    detector.config.whiten = detector.config.whiten or args.whiten
    bits = key_bits(args.key, detector.templates.config.n_bits)[None]
    if args.by_frequency:
        return by_frequency(detector, args.work, bits)
    photos_marked, _ = phase0_and_logit(detector, load(args.work / "subject" / "watermarked"), bits)
    photos_clean, _ = phase0_and_logit(detector, load(args.work / "subject" / "clean"), bits)
    photo_shift = photos_marked.mean() - photos_clean.mean()
    print(f"subject photos: z at shift 0, marked {photos_marked.mean():.2f}, clean {photos_clean.mean():.2f}; AUC {auc(photos_marked, photos_clean):.3f}")
    print("| generated images | n | AUC, z at shift 0 | mean z, marked- / clean-trained | fraction of the photos' shift | AUC, searching detector |")
    print("|---|---|---|---|---|---|")
    for marked_dir in sorted((args.work / "images").glob("*-watermarked-*")):
        clean_dir = marked_dir.with_name(marked_dir.name.replace("-watermarked-", "-clean-"))
        if not clean_dir.is_dir():
            continue
        zm, lm = phase0_and_logit(detector, load(marked_dir), bits)
        zc, lc = phase0_and_logit(detector, load(clean_dir), bits)
        print(f"| {marked_dir.name.replace('-watermarked', '')} | {len(zm)} + {len(zc)} | {auc(zm, zc):.3f} | {zm.mean():.2f} / {zc.mean():.2f} | "
              f"{(zm.mean() - zc.mean()) / photo_shift:.3f} | {auc(lm, lc):.3f} |")


if __name__ == "__main__":
    main()

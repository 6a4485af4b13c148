"""Diagnostic: how much of the mark reaches the images that personalized models generate.

    python scripts/bench_generated_mark.py runs/bench-v3/subject00/genwm/work --key genwm-demo-key

The detector searches every shift and scale, and pays for it: the best of many looks at a
clean image is already a few standard deviations. A model that learned the mark should draw
it where the subject's photos had it (genwm draws it from the top-left corner, at the
canonical scale), so this looks there alone: the phase-1 detector's residual, every block's
correlation with the key's template summed, read at shift 0 as a z-score. For the subject's
photos (marked vs clean) and for each pair of generated-image folders in a demo work folder
(the model trained on marked photos vs the one trained on clean photos, same seeds and
prompts), it prints that z-score's AUC and means, the searching detector's AUC, and the
fraction of the photos' z-score shift that reaches the generated images.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from genwm.data import list_images
from genwm.evaluate import detection_metrics
from genwm.finetune import load_image
from genwm.keys import key_bits
from genwm.models import Detector


def load(folder: Path) -> torch.Tensor:
    return torch.stack([load_image(path) for path in list_images(folder)])


@torch.no_grad()
def phase0_and_logit(detector: Detector, images: torch.Tensor, bits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """z-score of the summed correlation at shift 0, and the detector's own logit, per image."""
    spectrum = detector.template_spectrum(detector.templates(bits)[:, None])
    z = detector.shift_z(detector.residual(images), spectrum, 1.0)[:, 0, 0]
    return z.numpy(), detector.logit(images, bits).numpy()


def auc(marked: np.ndarray, clean: np.ndarray) -> float:
    return detection_metrics(clean, marked)["roc_auc"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, help="a demo's work folder (subject/ and images/ inside)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-mini", help="the phase-1 checkpoint whose mark was used")
    ap.add_argument("--whiten", action="store_true", help="read with the detector's per-image whitening on (DetectorConfig.whiten), whatever the checkpoint says")
    args = ap.parse_args()
    detector = Detector.from_pretrained(args.checkpoint).eval()
    detector.config.whiten = detector.config.whiten or args.whiten
    bits = key_bits(args.key, detector.templates.config.n_bits)[None]
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

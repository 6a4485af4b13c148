"""Diagnostic: a checkpoint's detector read with and without per-image whitening
(DetectorConfig.whiten), no retraining: ROC AUC, and the marked photos' logits as z-scores of
the clean photos' (median and 5th percentile), per attack.

    python scripts/bench_whiten.py --checkpoint OLD --photos data/photos/calib --attacks resize0.5 jpeg50

Photos whose shorter side is under --min-side are left out (a 128-px photo halved holds less
than one block). Choose on the validation photos (data/photos/calib), never on data/photos/bench.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_watermark import Genwm, load_photos, marked_and_clean_scores  # noqa: E402

from genwm.evaluate import detection_metrics  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-base")
    ap.add_argument("--photos", default="data/photos/calib")
    ap.add_argument("--attacks", nargs="+", default=["resize0.5", "jpeg50"])
    ap.add_argument("--keys", type=int, default=2, help="keys per photo")
    ap.add_argument("--min-side", type=int, default=256)
    args = ap.parse_args()
    method = Genwm(args.checkpoint)
    photos = [(n, img) for n, img in load_photos(args.photos) if min(img.size) >= args.min_side]
    print(f"{len(photos)} photos from {args.photos}, {args.keys} keys each, {args.checkpoint}")
    print("| whiten | attack | AUC | z median | z 5th percentile |")
    print("|---|---|---|---|---|")
    for whiten in (False, True):
        method.detector.config.whiten = whiten
        for name in args.attacks:
            pos, neg = marked_and_clean_scores(method, photos, name, lambda photo: [f"whiten-{photo}-{i}" for i in range(args.keys)])
            z = (pos - neg.mean()) / neg.std()
            auc = detection_metrics(neg, pos)["roc_auc"]
            print(f"| {whiten} | {name} | {auc:.4f} | {np.median(z):.1f} | {np.quantile(z, 0.05):.1f} |", flush=True)


if __name__ == "__main__":
    main()

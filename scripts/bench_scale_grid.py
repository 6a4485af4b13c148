"""Diagnostic: detection after resize x0.5 under other detector scale grids, and with the
learned front end switched off, for a shipped checkpoint (no retraining, no recalibration:
AUC needs neither).

    python scripts/bench_scale_grid.py --photos data/photos/calib --steps 1.03 1.05 1.08
    python scripts/bench_scale_grid.py --photos data/photos/bench --steps 1.03 1.05 --zero-front-end

Choose settings on the validation photos (data/photos/calib), never on data/photos/bench:
the benchmark's photos must stay held out.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_watermark import Genwm, attack, load_photos  # noqa: E402


def auc(method: Genwm, photos, attack_name: str, n_keys: int) -> float:
    rng = np.random.default_rng(0)
    pos, neg = [], []
    for _, img in photos:
        keys = [f"scale-grid-{i}" for i in range(n_keys)]
        neg.extend(method.scores(attack(img, attack_name, rng), keys))
        pos.extend(method.scores(attack(method.embed(img, k), attack_name, rng), [k])[0] for k in keys)
    return roc_auc_score([1] * len(pos) + [0] * len(neg), np.r_[pos, neg])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-base")
    ap.add_argument("--photos", default="data/photos/calib")
    ap.add_argument("--steps", type=float, nargs="+", default=[1.03, 1.05, 1.08])
    ap.add_argument("--attack", default="resize0.5")
    ap.add_argument("--keys", type=int, default=4)
    ap.add_argument("--zero-front-end", action="store_true", help="also score with the learned residual switched off")
    args = ap.parse_args()
    method = Genwm(args.checkpoint)
    photos = load_photos(args.photos)
    config = method.detector.config
    fronts = ["learned"] + (["zeroed"] if args.zero_front_end else [])
    print(f"{len(photos)} photos from {args.photos}, {args.keys} keys, attack {args.attack}; shipped scale step {config.scale_step}")
    for front in fronts:
        if front == "zeroed":
            with torch.no_grad():
                method.detector.extractor[-1].weight.zero_()
                method.detector.extractor[-1].bias.zero_()
        for step in args.steps:
            config.scale_step = step
            print(f"front end {front}, scale step {step}: AUC {auc(method, photos, args.attack, args.keys):.4f}", flush=True)


if __name__ == "__main__":
    main()

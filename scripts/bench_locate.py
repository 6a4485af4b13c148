"""Diagnostic: phase 2's located reading, the best shift alone against every shift weighed.

    python scripts/bench_locate.py runs/bench-v4/subject00/genwm/work --folds 6

On the fine-tuning images only (one marked- and one clean-trained model's images: `--marked`
and `--clean` inside the work folder's images/), k-fold cross-validation: on each fold's
training part, genwm.finetune.locate's t map at scale 1 (the mini world's mimic trains at the
photos' own size); on its held-out part, the AUC of (a) the z-score at the map's best shift
and (b) the z-scores weighed by the whole map, as DetectorConfig.located reads. Mean AUC
over folds. With no mark in the images, cross-validation reads below 0.5 (each held-out
image was left out of the means it is judged against), so compare the two, not each with 0.5.
Also prints the map's ten best shifts, as (dy, dx, t) over all the images.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from bench_generated_mark import auc, load
from genwm.finetune import welch_t
from genwm.keys import key_bits
from genwm.models import Detector


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--marked", default="dreambooth-watermarked-seed0-seen")
    ap.add_argument("--clean", default="dreambooth-clean-seed0-seen")
    ap.add_argument("--checkpoint", default="checkpoints/genwm-mini")
    ap.add_argument("--key", default="genwm-demo-key")
    ap.add_argument("--folds", type=int, default=6)
    args = ap.parse_args()
    detector = Detector.from_pretrained(args.checkpoint).eval()
    bits = key_bits(args.key, detector.config.n_bits)[None]
    with torch.no_grad():
        spectrum = detector.template_spectrum(detector.templates(bits)[:, None])
        z = {side: detector.shift_z(detector.residual(load(args.work / "images" / name)), spectrum, 1.0)[:, 0] for side, name in (("clean", args.clean), ("marked", args.marked))}
    g = torch.Generator().manual_seed(0)
    order = {side: torch.randperm(len(v), generator=g) for side, v in z.items()}
    aucs = {"best shift": [], "weighed": []}
    for k in range(args.folds):
        held = {side: o[k :: args.folds] for side, o in order.items()}
        train = {side: o[torch.isin(o, held[side], invert=True)] for side, o in order.items()}
        t = welch_t(z["marked"][train["marked"]], z["clean"][train["clean"]])
        for name, weights in (("best shift", torch.nn.functional.one_hot(t.argmax(), len(t)).float()), ("weighed", t)):
            aucs[name].append(auc((z["marked"][held["marked"]] @ weights).numpy(), (z["clean"][held["clean"]] @ weights).numpy()))
    t = welch_t(z["marked"], z["clean"])
    tile = detector.config.tile
    print(f"{args.work}: {len(z['clean'])} + {len(z['marked'])} images, {args.folds} folds")
    print("  ".join(f"{name}: AUC {np.mean(v):.3f}" for name, v in aucs.items()))
    print("best shifts (dy, dx, t):", [(int(i) // tile, int(i) % tile, round(float(t[i]), 2)) for i in t.argsort(descending=True)[:10]])


if __name__ == "__main__":
    main()

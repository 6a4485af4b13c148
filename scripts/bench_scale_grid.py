"""Diagnostic: detection after resize x0.5 under other detector scale grids, with the
learned front end switched off, and with G's learned spectral gain made flat (G and D's
template alike: the fixed design of scripts/bench_mark_design.py, at the same energy), for a
shipped checkpoint (no retraining, no recalibration: AUC needs neither).

    python scripts/bench_scale_grid.py --photos data/photos/calib --steps 1.03 1.05 1.08
    python scripts/bench_scale_grid.py --photos data/photos/bench --steps 1.03 1.05 --zero-front-end
    python scripts/bench_scale_grid.py --photos data/photos/calib --steps 1.03 --zero-front-end --flat-gain
    python scripts/bench_scale_grid.py --photos data/photos/calib --null-by-scale
    python scripts/bench_scale_grid.py --photos data/photos/bench --steps 1.03 --min-side 512

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
from bench_watermark import Genwm, load_photos, marked_and_clean_scores  # noqa: E402

from genwm.checkpoint import read_config  # noqa: E402


def auc(method: Genwm, photos, attack_name: str, n_keys: int) -> float:
    pos, neg = marked_and_clean_scores(method, photos, attack_name, lambda _: [f"scale-grid-{i}" for i in range(n_keys)])
    return roc_auc_score([1] * len(pos) + [0] * len(neg), np.r_[pos, neg])


def null_by_scale(method: Genwm, photos, n_keys: int) -> None:
    """Clean photos' evidence at each scale of the search, one column per photo and key: a
    scale whose null spreads wider would win the search's maximum on clean photos more often."""
    from genwm.images import to_float_rgb
    from genwm.keys import key_bits

    d = method.detector
    scales = d.config.scales()
    bits = torch.stack([key_bits(f"scale-grid-{i}", d.config.n_bits) for i in range(n_keys)])
    columns = []
    with torch.no_grad():
        spectrum = d.template_spectrum(d.templates(bits)[None])
        for _, img in photos:
            residual = d.residual(d.to_canonical(torch.from_numpy(to_float_rgb(img)).permute(2, 0, 1)))
            found = d.evidence_at(residual, spectrum, scales)
            if found is not None and len(found) == len(scales):
                columns.append(found[:, 0, 0].numpy())
    a = np.concatenate(columns, axis=1)
    print(f"clean evidence per scale over {a.shape[1]} photo-key pairs: mean, sd, max")
    for s, row in zip(scales, a):
        print(f"  scale {s:.3f}: {row.mean():6.2f} {row.std():5.2f} {row.max():6.2f}")
    print(f"mean and sd across scales of the per-scale means {a.mean(1).mean():.2f} {a.mean(1).std():.2f}, "
          f"of the per-scale sds {a.std(1).mean():.2f} {a.std(1).std():.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-base")
    ap.add_argument("--photos", default="data/photos/calib")
    ap.add_argument("--steps", type=float, nargs="+", default=[1.03, 1.05, 1.08])
    ap.add_argument("--attack", default="resize0.5")
    ap.add_argument("--keys", type=int, default=4)
    ap.add_argument("--zero-front-end", action="store_true", help="also score with the learned residual switched off")
    ap.add_argument("--flat-gain", action="store_true", help="also score with G's gain (and the template's) flat within G's band")
    ap.add_argument("--min-side", type=int, default=0, help="only photos whose shorter side (as benchmarked) is at least this")
    ap.add_argument("--null-by-scale", action="store_true", help="only print clean photos' evidence at each scale")
    args = ap.parse_args()
    photos = [(n, img) for n, img in load_photos(args.photos) if min(img.size) >= args.min_side]
    if args.null_by_scale:
        null_by_scale(Genwm(args.checkpoint), photos, args.keys)
        return
    shipped_step = read_config(args.checkpoint)["detector"]["scale_step"]
    variants = ["learned"] + (["zeroed front end"] if args.zero_front_end else []) + (["flat gain"] if args.flat_gain else [])
    print(f"{len(photos)} photos from {args.photos}, {args.keys} keys, attack {args.attack}; shipped scale step {shipped_step}")
    for variant in variants:
        method = Genwm(args.checkpoint)  # each variant changes one thing of the checkpoint
        config = method.detector.config
        with torch.no_grad():
            if variant == "zeroed front end":
                method.detector.extractor[-1].weight.zero_()
                method.detector.extractor[-1].bias.zero_()
            if variant == "flat gain":
                for g in (method.watermarker.generator, method.detector.templates):
                    g.gain.fill_(1.0)
        for step in args.steps:
            config.scale_step = step
            print(f"{variant}, scale step {step}: AUC {auc(method, photos, args.attack, args.keys):.4f}", flush=True)


if __name__ == "__main__":
    main()

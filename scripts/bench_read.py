"""Diagnostic: a checkpoint's detector read with different reading options (DetectorConfig
fields such as whiten or drift_steps), no retraining: ROC AUC, TPR at FPR <= 1 %, and the
marked photos' logits as z-scores of the clean photos' (median and 5th percentile), per attack.

    python scripts/bench_read.py --checkpoint CKPT --photos data/photos/calib \
        --read '{"whiten": false}' '{"whiten": true}' --attacks resize0.5 jpeg50

Each --read is a JSON object of options set on the checkpoint's detector for one pass ({}: as
the checkpoint reads). Photos whose shorter side is under --min-side are left out (a 128-px
photo halved holds less than one block); a smaller --max-side makes every photo smaller first,
and its mark weaker after an attack. Choose on the validation photos (data/photos/calib),
never on data/photos/bench.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_watermark import Genwm, load_photos, marked_and_clean_scores  # noqa: E402

from genwm.evaluate import detection_metrics  # noqa: E402
from genwm.models.detector import DetectorConfig  # noqa: E402


def checked_read_options(config, reads: list[dict]) -> dict:
    """The detector's options as the checkpoint sets them, after checking that every --read
    names only detector options (before any long pass starts)."""
    for options in reads:
        try:
            DetectorConfig.check_options(options)
        except ValueError as e:
            sys.exit(f"error: {e}")
    return dict(vars(config))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-base")
    ap.add_argument("--photos", default="data/photos/calib")
    ap.add_argument("--read", nargs="+", type=json.loads, default=[{}], help="JSON objects of detector options, one pass each")
    ap.add_argument("--attacks", nargs="+", default=["resize0.5", "jpeg50"])
    ap.add_argument("--keys", type=int, default=2, help="keys per photo")
    ap.add_argument("--min-side", type=int, default=256)
    ap.add_argument("--max-side", type=int, default=768, help="photos larger than this are first resized to it")
    args = ap.parse_args()
    method = Genwm(args.checkpoint)
    config = method.detector.config
    shipped = checked_read_options(config, args.read)
    photos = [(n, img) for n, img in load_photos(args.photos, args.max_side) if min(img.size) >= args.min_side]
    print(f"{len(photos)} photos from {args.photos}, {args.keys} keys each, {args.checkpoint}")
    print("| read | attack | AUC | TPR at FPR <= 1 % | z median | z 5th percentile |")
    print("|---|---|---|---|---|---|")
    for options in args.read:
        vars(config).update(shipped, **options)
        for name in args.attacks:
            # keys named as bench_whiten.py, this script's first form, named them
            pos, neg = marked_and_clean_scores(method, photos, name, lambda photo: [f"whiten-{photo}-{i}" for i in range(args.keys)])
            z = (pos - neg.mean()) / neg.std()
            m = detection_metrics(neg, pos)
            print(f"| {json.dumps(options)} | {name} | {m['roc_auc']:.4f} | {m['tpr_at_1pct_fpr']:.3f} | {np.median(z):.1f} | {np.quantile(z, 0.05):.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""Diagnostic: the detector's logit photo by photo, to see where a benchmark's misses come from.

    python scripts/bench_per_photo.py --photos data/photos/bench --attack resize0.5

For each photo (one key per photo): the logit of the marked copy, of the marked copy after the
attack, and of the clean photo after the attack; sorted by the second, weakest first.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_read import checked_read_options  # noqa: E402
from bench_watermark import Genwm, attack, load_photos  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-base")
    ap.add_argument("--photos", default="data/photos/calib")
    ap.add_argument("--attack", default="resize0.5")
    ap.add_argument("--top", type=int, default=0, help="print only the weakest this many (0: all)")
    ap.add_argument("--read", type=json.loads, default={}, help="a JSON object of detector options ({}: as the checkpoint reads)")
    args = ap.parse_args()
    method = Genwm(args.checkpoint)
    checked_read_options(method.detector.config, [args.read])
    vars(method.detector.config).update(args.read)
    rng = np.random.default_rng(0)
    rows = []
    for name, img in load_photos(args.photos):
        key = f"per-photo-{name}"
        marked = method.embed(img, key)
        rows.append((name, img.size, *(method.scores(x, [key])[0] for x in (marked, attack(marked, args.attack, rng), attack(img, args.attack, rng)))))
    rows.sort(key=lambda r: r[3])
    print(f"| photo | size | marked | marked, {args.attack} | clean, {args.attack} |")
    print("|---|---|---|---|---|")
    for name, size, m, ma, ca in rows[: args.top or None]:
        print(f"| {name} | {size[0]}x{size[1]} | {m:.2f} | {ma:.2f} | {ca:.2f} |")


if __name__ == "__main__":
    main()

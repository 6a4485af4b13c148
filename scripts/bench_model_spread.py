"""Diagnostic: how much one subject's models differ in what they read of the key, model by model.

    python scripts/bench_model_spread.py runs/bench-v6/subject03/genwm-profile/work --key genwm-demo-key

For every folder of generated images in a `genwm demo` work folder (work/images/*), read with
the subject's phase-2 detector (work/detector; --detector for another, such as
work/evaluation/control_detector) as the key test reads: the mean of the key's evidence over
the folder's images and the folder's key test p, conditioned on the detector's covariates (the
subject's photos, the base model's images) and not. A per-image AUC between two models is
decided by the difference of their means where it is large against the images' spread: this
prints both, so that a control AUC far from 0.5 can be told apart from a mark.

--also adds the image folders of other work folders (bench_retrain_one.py's), read with the
same detector; a folder named as one read already (a model trained again) is left out.
--spread GLOB: the sd, over the folders whose names match, of their mean evidence, under the
key and under each null key, and the key's rank among the null keys' (p: the share of null
keys at least as spread, counting the key). A key that the models' shared inheritance
(photos, base model) reads more or less strongly from model to model spreads them more than a
null key does; one that spreads them as null keys do is, for those models, a key like any other.
"""
import argparse
from pathlib import Path

import numpy as np

from genwm.calibration import key_test, rank_p_value
from genwm.evaluate import folder_key_evidence
from genwm.models import Detector


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--key", required=True)
    ap.add_argument("--detector", type=Path, help="default: WORK/detector")
    ap.add_argument("--also", type=Path, nargs="*", default=[], help="more work folders whose images/* to read")
    ap.add_argument("--spread", metavar="GLOB", help="the key's spread over these folders' means, ranked among the null keys'")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    detector = Detector.from_pretrained(args.detector or args.work / "detector")
    rows, means = [], {}
    print("| images | n | mean of the key's evidence | sd over images | key test p (conditioned) | key test p (unconditioned) |")
    print("|---|---|---|---|---|---|")
    folders = {}
    for work in (args.work, *args.also):
        for d in sorted(d for d in (work / "images").iterdir() if d.is_dir()):
            folders.setdefault(d.name, d)
    for folder in folders.values():
        evidence = folder_key_evidence(detector, folder, args.key, None)
        if not len(evidence):
            continue
        row = {
            "images": folder.name,
            "n": len(evidence),
            "key_mean": float(evidence[:, 0].mean()),
            "key_sd": float(evidence[:, 0].std(ddof=1)),
            "p_conditioned": key_test(evidence, 0.01, detector.key_covariates)["p_value"],
            "p_unconditioned": key_test(evidence, 0.01, None)["p_value"],
        }
        rows.append(row)
        means[folder] = evidence.mean(axis=0)
        print(f"| {row['images']} | {row['n']} | {row['key_mean']:+.2f} | {row['key_sd']:.2f} | {row['p_conditioned']:.3f} | {row['p_unconditioned']:.3f} |", flush=True)
    spread = None
    if args.spread:
        chosen = [f for f in means if f.match(args.spread)]
        if len(chosen) < 2:
            raise SystemExit(f"--spread {args.spread}: matches {len(chosen)} folder(s); need two or more")
        sd = np.stack([means[f] for f in chosen]).std(axis=0, ddof=1)
        spread = {"folders": [f.name for f in chosen], "key_sd": float(sd[0]), "null_sd_median": float(np.median(sd[1:])), "null_sd_q90": float(np.quantile(sd[1:], 0.9)), "rank_p": rank_p_value(sd[0], sd[1:])}
        print(f"sd over {len(chosen)} models' means: key {spread['key_sd']:.3f}, null keys median {spread['null_sd_median']:.3f} (90th percentile {spread['null_sd_q90']:.3f}), rank p {spread['rank_p']:.3f}")
    if args.json:
        from genwm import atomic

        atomic.write_json(args.json, {"work": str(args.work), "also": [str(a) for a in args.also], "detector": str(args.detector or args.work / "detector"), "rows": rows, "spread": spread})


if __name__ == "__main__":
    main()

"""Diagnostic: how much one subject's models differ in what they read of the key, model by model.

    python scripts/bench_model_spread.py runs/bench-v6/subject03/genwm-profile/work --key genwm-demo-key

For every folder of generated images in a `genwm demo` work folder (work/images/*), read with
the subject's phase-2 detector (work/detector; --detector for another, such as
work/evaluation/control_detector) as the key test reads: the mean of the key's evidence over
the folder's images and the folder's key test p, conditioned on the detector's covariates (the
subject's photos, the base model's images) and not. A per-image AUC between two models is
decided by the difference of their means where it is large against the images' spread: this
prints both, so that a control AUC far from 0.5 can be told apart from a mark.
"""
import argparse
from pathlib import Path

from genwm.calibration import key_test
from genwm.evaluate import folder_key_evidence
from genwm.models import Detector


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--key", required=True)
    ap.add_argument("--detector", type=Path, help="default: WORK/detector")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    detector = Detector.from_pretrained(args.detector or args.work / "detector")
    rows = []
    print("| images | n | mean of the key's evidence | sd over images | key test p (conditioned) | key test p (unconditioned) |")
    print("|---|---|---|---|---|---|")
    for folder in sorted(d for d in (args.work / "images").iterdir() if d.is_dir()):
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
        print(f"| {row['images']} | {row['n']} | {row['key_mean']:+.2f} | {row['key_sd']:.2f} | {row['p_conditioned']:.3f} | {row['p_unconditioned']:.3f} |", flush=True)
    if args.json:
        from genwm import atomic

        atomic.write_json(args.json, {"work": str(args.work), "detector": str(args.detector or args.work / "detector"), "rows": rows})


if __name__ == "__main__":
    main()

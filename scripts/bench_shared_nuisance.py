"""Diagnostic: what the images of different subjects' models share, read where genwm drew the mark.

    python scripts/bench_shared_nuisance.py runs/bench-v5/subject0{0,1,2,3,4}/genwm-profile/work \
        --checkpoint checkpoints/genwm-mini-profile --key genwm-demo-key

The demo draws image i of a model with seed s from prompt template i (cycling through the
prompt list) and synthesis seed 10000 * s + i, for every subject alike. So image i of every
subject's seed-s model starts from the same noise with the same scene. Each image is read as
bench_generated_mark.py reads it (the phase-1 detector's residual correlated with the key's
template at shift 0, a z-score), and over every pair of subjects this prints the correlation of
those readings between images that share:
- the template and the noise (the same folder name, the same i),
- the template alone (i against i + the number of templates, in the same folder name),
- nothing (i against i + 1: another template, other noise);
and each folder's mean reading per subject. What images share across subjects is shared by
every model with that seed, whatever its subject: the subjects' results are not independent
replicates where it is large.
"""
import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generated_mark import load, shift0_z  # noqa: E402

from genwm.keys import key_bits  # noqa: E402
from genwm.models import Detector  # noqa: E402


def pair_correlation(a: np.ndarray, b: np.ndarray, lag: int) -> float:
    n = min(len(a), len(b)) - lag
    return float(np.corrcoef(a[:n], b[lag : lag + n])[0, 1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("works", type=Path, nargs="+", help="demo work folders of different subjects (images/ inside)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-mini-profile", help="the phase-1 checkpoint whose mark was used")
    args = ap.parse_args()
    if len(args.works) < 2:
        ap.error("give at least two subjects' work folders")
    detector = Detector.from_pretrained(args.checkpoint).eval()
    bits = key_bits(args.key, detector.templates.config.n_bits)[None]
    folders = sorted(set.intersection(*({d.name for d in (w / "images").iterdir() if d.is_dir()} for w in args.works)))
    print("| images | n | same template and noise | same template | neither | mean reading per subject |")
    print("|---|---|---|---|---|---|")
    for name in folders:
        synthesis = json.loads((args.works[0] / "images" / name / "synthesis.json").read_text())
        n_templates = len(synthesis["templates"])
        r = [shift0_z(detector, load(w / "images" / name), bits) for w in args.works]
        pairs = list(itertools.combinations(range(len(r)), 2))
        both = np.mean([pair_correlation(r[a], r[b], 0) for a, b in pairs])
        template = np.mean([pair_correlation(r[a], r[b], n_templates) for a, b in pairs] + [pair_correlation(r[b], r[a], n_templates) for a, b in pairs])
        neither = np.mean([pair_correlation(r[a], r[b], 1) for a, b in pairs] + [pair_correlation(r[b], r[a], 1) for a, b in pairs])
        means = ", ".join(f"{x.mean():+.2f}" for x in r)
        print(f"| {name} | {len(r[0])} | {both:+.2f} | {template:+.2f} | {neither:+.2f} | {means} |")


if __name__ == "__main__":
    main()

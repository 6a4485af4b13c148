"""Benchmark: which front end reads a row-constant mark best from generated images.

    python scripts/bench_row_front_end.py runs/bench-v7/subject03/genwm-profile/work --key genwm-demo-key

For each pair of generated-image folders in a demo work folder (the model trained on the
marked photos and the one trained on the clean photos, same seed and prompts), every image is
read at the place genwm drew the mark (shift 0, scale 1, as `place: drawn` reads) by:
- "learned": the checkpoint's own front end (a small CNN plus a 3x3 high-pass);
- "rows K": row means of the grey image minus their moving average over K rows
  (DetectorConfig.row_window = K), for each K of --windows.
Per front end: the per-image AUC and d' under the key, and, since two models differ under any
key, the same AUC under the key test's null keys (genwm.keys.null_key_bits): their median, sd,
and the key's rank p among them. The front end is key-independent, so the key test stays exact
with any of them; which one to ship is chosen on the fine-tuning models (seed s, the ones phase
2 sees) and checked on the test models (seed s + 1000).
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from bench_generated_mark import d_prime, load
from genwm.calibration import rank_p_value
from genwm.keys import key_bits, null_key_bits
from genwm.models import Detector, DetectorConfig


def front_ends(checkpoint, windows) -> dict[str, Detector]:
    learned = Detector.from_pretrained(checkpoint).eval()
    out = {"learned": learned}
    for k in windows:
        d = Detector(DetectorConfig(**{**learned.config.to_dict(), "row_window": k, "located": None})).eval()
        d.templates.load_state_dict(learned.templates.state_dict())
        out[f"rows {k}"] = d
    return out


@torch.no_grad()
def shift0_z(detector: Detector, images: torch.Tensor, spectrum: torch.Tensor) -> np.ndarray:
    """[N, K]: each key's summed correlation at shift 0, scale 1, as a z-score over the shifts."""
    return detector.shift_z(detector.residual(images), spectrum, 1.0)[:, :, 0].numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, nargs="+", help="demo work folders (images/ inside)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-mini-profile", help="the phase-1 checkpoint whose mark was used")
    ap.add_argument("--windows", type=int, nargs="+", default=[3, 5, 7, 9, 13, 21])
    ap.add_argument("--null-keys", type=int, default=199)
    args = ap.parse_args()
    readers = front_ends(args.checkpoint, args.windows)
    n_bits = readers["learned"].config.n_bits
    bits = torch.cat([key_bits(args.key, n_bits)[None], null_key_bits(args.null_keys, n_bits)])
    print("| pair of models | front end | AUC | d' | null keys' AUC: median, sd | key's rank p |")
    print("|---|---|---|---|---|---|")
    for work in args.work:
        for marked_dir in sorted((work / "images").glob("*-watermarked-*")):
            clean_dir = marked_dir.with_name(marked_dir.name.replace("-watermarked-", "-clean-"))
            if not clean_dir.is_dir():
                continue
            marked, clean = load(marked_dir), load(clean_dir)
            labels = np.r_[np.ones(len(marked)), np.zeros(len(clean))]
            for name, d in readers.items():
                spectrum = d.template_spectrum(d.templates(bits)[None])
                zm, zc = shift0_z(d, marked, spectrum), shift0_z(d, clean, spectrum)
                aucs = np.array([roc_auc_score(labels, np.r_[zm[:, k], zc[:, k]]) for k in range(len(bits))])
                print(f"| {work.parent.parent.name} {marked_dir.name.replace('-watermarked', '')} | {name} | {aucs[0]:.3f} | {d_prime(zm[:, :1], zc[:, :1])[0]:+.2f} | "
                      f"{np.median(aucs[1:]):.3f}, {aucs[1:].std():.3f} | {rank_p_value(aucs[0], aucs[1:]):.3f} |", flush=True)


if __name__ == "__main__":
    main()

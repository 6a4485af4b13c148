"""Diagnostic: how much of an invisible-watermark baseline's PSNR on the mini world's small photos
is its own mark, and how much the enlarge-and-shrink round trip that lets it mark them at all.

    python scripts/bench_baseline_roundtrip.py runs/bench-v7/subject0{0,1,2,3,4}/dwtDct/subject

For each folder (a bench_pipeline baseline's `subject/`, with `clean/` and `watermarked/`):
the mean PSNR of the marked photos against the clean ones, and of the clean photos sent
through the same round trip with no mark (genwm.baselines.InvisibleWatermark's enlargement by
a whole factor to 256 px, Lanczos both ways). Where the two are close, the round trip is the
cost, not the mark.
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from genwm.baselines import InvisibleWatermark
from genwm.perceptual import psnr


def round_trip(mark: InvisibleWatermark, img: Image.Image) -> Image.Image:
    """What InvisibleWatermark.embed does to an image around the package's encoder."""
    return mark._enlarged(img).resize(img.size, Image.LANCZOS)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subjects", type=Path, nargs="+")
    args = ap.parse_args()
    mark = InvisibleWatermark("dwtDct", enlarge_small=True)  # the round trip is the same for every method
    print("| folder | photos | PSNR dB, marked | PSNR dB, round trip alone |")
    print("|---|---|---|---|")
    for folder in args.subjects:
        marked, trip = [], []
        for f in sorted((folder / "clean").glob("*.png")):
            clean = Image.open(f).convert("RGB")
            x = np.asarray(clean)
            marked.append(psnr(x, np.asarray(Image.open(folder / "watermarked" / f.name).convert("RGB"))))
            trip.append(psnr(x, np.asarray(round_trip(mark, clean))))
        if not marked:
            raise SystemExit(f"{folder}: no clean/*.png")
        print(f"| {folder} | {len(marked)} | {np.mean(marked):.1f} | {np.mean(trip):.1f} |")


if __name__ == "__main__":
    main()

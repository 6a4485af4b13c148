"""Diagnostic: where a mark's PSNR on 8-bit photos comes from.

    python scripts/bench_psnr_rounding.py runs/bench-band/subject03/genwm-profile-band-2test/photos \
        --checkpoints checkpoints/genwm-mini-profile checkpoints/genwm-mini-profile-band

For each checkpoint (the demo key), over the photos of a folder: the PSNR of the mark itself
(its RMS), of the mark after the photo is clipped to [0, 1], and of the saved 8-bit photo
(rounded to whole levels, as genwm writes it). A photo's levels are whole already, so the
8-bit mark is the mark rounded to multiples of 1/255: for a mark of a few levels' RMS, how its
values fall between levels moves the PSNR, and a row-constant mark has only one value per row.
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from genwm.data import list_images
from genwm.watermarker import Watermarker


def psnr(mse: list[float]) -> float:
    return float(10 * np.log10(1 / np.mean(mse)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", type=Path, help="a folder of 8-bit photos")
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--key", default="genwm-demo-key")
    args = ap.parse_args()
    photos = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in list_images(args.photos)]
    print("| checkpoint | photos | PSNR of the mark (its RMS) | after clipping | saved at 8 bits |")
    print("|---|---|---|---|---|")
    for checkpoint in args.checkpoints:
        wm = Watermarker.from_pretrained(checkpoint, key=args.key)
        raw, clipped, rounded = [], [], []
        for x in photos:
            mark = wm.pattern(*x.shape[:2])
            marked = np.clip(x + mark, 0.0, 1.0)
            saved = np.round(marked * 255) / 255
            raw.append(np.mean(mark**2))
            clipped.append(np.mean((marked - x) ** 2))
            rounded.append(np.mean((saved - x) ** 2))
        print(f"| {checkpoint} | {len(photos)} | {psnr(raw):.2f} | {psnr(clipped):.2f} | {psnr(rounded):.2f} |")


if __name__ == "__main__":
    main()

"""Images of the mini world's pretraining stream as PNG folders, for phase 1 in the mini world.

    python scripts/prepare_mini_photos.py --out data/mini/photos --train 3000 --calib 300

Seeds start at 10**9, away from the ones the mini model pretrains on (genwm/mini/train.py)
and from every subject's (genwm.mini.world.SUBJECT_SEED_BASE).
"""
import argparse
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from genwm.mini import world

SEED_BASE = 10**9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/mini/photos")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--calib", type=int, default=300)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    seed = SEED_BASE
    for split, n in (("train", args.train), ("calib", args.calib)):
        folder = Path(args.out) / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(n), desc=split):
            path = folder / f"{i:05d}.png"
            if not path.exists():
                image, _ = world.pretraining_example(seed + i, args.size)
                Image.fromarray(image).save(path)
        seed += n
    print(f"train={args.train} calib={args.calib} images under {args.out}")


if __name__ == "__main__":
    main()

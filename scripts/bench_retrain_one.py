"""Diagnostic: train personalized models of a `genwm demo` work folder again, alone, in a fresh
process, and compare their images with the ones the demo made.

    OMP_NUM_THREADS=1 python scripts/bench_retrain_one.py runs/bench-v6/subject03/genwm-profile/work \
        --method dreambooth --side clean --seed 3030 --out runs/retrain/subject03 --key genwm-demo-key

With several --seed, the models are trained one after another in the new folder; a seed the
demo never trained is trained all the same and only its mean reading is printed: models with
seeds outside the demo's scheme say how its clean models' readings spread by seed alone.

The new work folder gets the subject's photos, the protect record and DreamBooth's class images
(those the demo's first model drew), nothing else; the model is trained and its images drawn
exactly as the demo's evaluation does (genwm.protect.generated_images). Printed: whether the
images are identical to the demo's (same seed, same machine kind and thread count should give
the same ones), their largest pixel difference, and both sets' mean reading of the key by the
demo's phase-2 detector. Where a model trained later in the demo reads differently from its
retraining as the first and only model of a process, something carries over between the
models the demo trains one after another.
"""
import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from genwm import protect as P
from genwm.evaluate import folder_key_evidence
from genwm.models import Detector
from genwm.personalize.common import list_images


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--method", default="dreambooth")
    ap.add_argument("--side", default="clean", choices=P.SIDES)
    ap.add_argument("--seed", type=int, nargs="+", required=True)
    ap.add_argument("--prompt-set", default="seen", choices=("seen", "unseen"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out}: exists; give a new folder")
    record = P.read_protect_record(args.work)
    config = P.config_from_record(record)
    args.out.mkdir(parents=True)
    for name in ("subject", "protect.json"):
        (shutil.copytree if (args.work / name).is_dir() else shutil.copy2)(args.work / name, args.out / name)
    for class_dir in sorted((args.work / "models").glob("class_images-*")):
        shutil.copytree(class_dir, args.out / "models" / class_dir.name)
    prompts = Path(record["prompts"]) if args.prompt_set == "seen" else P.default_prompts("unseen")
    detector = Detector.from_pretrained(args.work / "detector")

    def mean_reading(folder) -> float:
        return float(folder_key_evidence(detector, folder, args.key, None)[:, 0].mean())

    for seed in args.seed:
        again = P.generated_images(args.out, record["base_model"], config, args.method, args.side, seed, prompts, args.prompt_set)
        original = P.images_dir(args.work, args.method, args.side, seed, args.prompt_set)
        if not original.is_dir():
            print(f"{again.name} (not in the demo): mean reading of the key {mean_reading(again):+.3f}")
            continue
        a, b = list_images(original), list_images(again)
        if [f.name for f in a] != [f.name for f in b]:
            raise SystemExit(f"{again}: other files than {original}")
        diffs = [int(np.abs(np.asarray(Image.open(x), dtype=int) - np.asarray(Image.open(y), dtype=int)).max()) for x, y in zip(a, b)]
        print(f"{original.name}: {sum(d == 0 for d in diffs)} of {len(diffs)} images identical, largest pixel difference {max(diffs)}")
        print(f"mean reading of the key: in the demo {mean_reading(original):+.3f}, retrained alone {mean_reading(again):+.3f}")
    drawn_again = sorted({d.name for d in (args.out / "models").glob("class_images-*")} - {d.name for d in (args.work / "models").glob("class_images-*")})
    if drawn_again:
        print(f"class images drawn again, not the demo's: {drawn_again}")


if __name__ == "__main__":
    main()

"""Diagnostic: how hard the mimic trains, against how much of the mark its model draws.

    python scripts/bench_mimic.py --subject 0 --method dreambooth --set max_train_steps=1000 \
        learning_rate=1e-3 with_prior_preservation=false --out runs/mimic/db-1000

A mimic personalizes until the model draws the subject; a model that barely does carries
little of the subject's photos, mark included. For one subject, one personalization method
and one set of its options (the demo config's, then --set), this trains a model on the clean
photos and one on the watermarked photos (seed 0), generates --n images from each with the
demo's seen prompts, and prints one table row:
- fidelity: each image described by EfficientNet-Lite0 features (as scripts/bench_fidelity.py),
  recognised when its nearest subject among the first --subjects subjects' clean photos is its
  own (chance 1 / --subjects), and the margin of similarity to its own subject over the others;
- the mark: the phase-1 detector's correlation read where genwm drew the mark (shift 0, as
  scripts/bench_generated_mark.py), its AUC marked- vs clean-trained, the fraction of the
  photos' z-score shift the generated images keep, and the searching detector's AUC.
Models and images are kept in --out and reused when asked again with the same options; the
row is also --out/mimic.json, beside grid.png (subject photos, then each model's images).
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bench_fidelity import centroid, describe, recognition
from bench_generated_mark import auc, load, phase0_and_logit
from genwm import atomic
from genwm.data import list_images
from genwm.demo import DEFAULT_CONFIG, example_grid, load_demo_config, protect_config_for, write_subject
from genwm.keys import key_bits
from genwm.models import Detector
from genwm.perceptual import EfficientNetPerceptual
from genwm.protect import generated_images, watermark_subject
from genwm.watermarker import Watermarker


def option(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    value = yaml.safe_load(value)
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            pass
    return name, value


@torch.no_grad()
def fidelity(net, images: Path, subject: int, centroids: np.ndarray) -> tuple[float, float]:
    """-> (the fraction of the images recognised as the subject, their mean margin)."""
    hits, margins = recognition(describe(net, list_images(images)) @ centroids.T, subject)
    return float(hits.mean()), float(margins.mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subject", type=int, default=0)
    ap.add_argument("--subjects", type=int, default=5, help="fidelity tells the subject apart from the first this many (default 5)")
    ap.add_argument("--method", default="dreambooth", choices=["dreambooth", "lora", "textual-inversion"])
    ap.add_argument("--set", nargs="*", type=option, default=[], metavar="NAME=VALUE", help="the method's options over the demo config's")
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--n", type=int, default=48, help="images generated per model")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    demo = load_demo_config(args.config)
    size, n_photos = demo.get("resolution", 64), demo.get("n_subject_images", 8)
    overrides = dict(args.set)
    config = protect_config_for(args.config, args.subject, {"progress": False, "prompts": demo["prompts"]})
    config.personalize[args.method] = {**config.personalize.get(args.method, {}), **overrides}
    config.validate()
    work = args.out
    photos = write_subject(args.subject, n_photos, work / "photos", size)
    watermark_subject(photos, work / "subject", Watermarker.from_pretrained(demo["checkpoint"], key=demo["key"]), demo["key"], progress=False)

    start = time.time()
    folders = {side: generated_images(work, demo["model"], config, args.method, side, 0, demo["prompts"], "seen", args.n) for side in ("clean", "watermarked")}
    seconds = time.time() - start

    net = EfficientNetPerceptual().eval()
    centroids = []
    for s in range(args.subjects):
        own = write_subject(s, n_photos, work.parent / "fidelity-photos" / f"subject{s:02d}", size)
        centroids.append(centroid(describe(net, list_images(own))))
    centroids = np.stack(centroids)

    detector = Detector.from_pretrained(demo["checkpoint"]).eval()
    bits = key_bits(demo["key"], detector.templates.config.n_bits)[None]
    pm, _ = phase0_and_logit(detector, load(work / "subject" / "watermarked"), bits)
    pc, _ = phase0_and_logit(detector, load(work / "subject" / "clean"), bits)
    zm, lm = phase0_and_logit(detector, load(folders["watermarked"]), bits)
    zc, lc = phase0_and_logit(detector, load(folders["clean"]), bits)
    recognised_clean, margin_clean = fidelity(net, folders["clean"], args.subject, centroids)
    row = {
        "subject": args.subject,
        "method": args.method,
        "options": overrides,
        "recognised_clean": recognised_clean,
        "margin_clean": margin_clean,
        "recognised_watermarked": fidelity(net, folders["watermarked"], args.subject, centroids)[0],
        "auc_shift0": auc(zm, zc),
        "fraction_of_photo_shift": float((zm.mean() - zc.mean()) / (pm.mean() - pc.mean())),
        "auc_searching": auc(lm, lc),
        "seconds_two_models": seconds,
    }
    atomic.write_json(work / "mimic.json", row)
    rows = [list_images(work / "subject" / "clean"), list_images(folders["clean"]), list_images(folders["watermarked"])]
    example_grid(rows, ["subject", "generated (clean model)", "generated (watermarked model)"], work / "grid.png", n=8)
    options = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "demo's"
    print("| subject | method | options | recognised, clean / marked-trained | margin | AUC at shift 0 | fraction of the photos' shift | AUC, searching | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.subject} | {args.method} | {options} | {row['recognised_clean']:.3f} / {row['recognised_watermarked']:.3f} | {row['margin_clean']:.4f} | "
          f"{row['auc_shift0']:.3f} | {row['fraction_of_photo_shift']:.3f} | {row['auc_searching']:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()

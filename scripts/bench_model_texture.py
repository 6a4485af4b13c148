"""Diagnostic: where, in frequency, models differ from one another, and where the mark they keep lies.

    python scripts/bench_model_texture.py runs/bench-v4/subject0{0,1,2,3,4}/genwm/work \
        --out docs/results/key_test/model_texture.json

Each generated image's residual (the phase-1 front end) is folded into one tile at scale 1, as
the detector reads it; a model's mean tile is what all its images share. For each spatial
frequency of the tile:
- model-to-model: the variance of the clean-trained models' mean tiles (about their average),
  over the image-level variance of a mean of that many images. 1: models differ no more than
  their images' noise makes their means differ; above 1: each model has a texture of its own;
- the mark: the watermarked- minus clean-trained model's mean tile (pairs with the same seed
  and method, so the same prompts and image seeds; every pair, the fine-tuning seed's too),
  projected on the key's template, in units of the model-to-model sd there (which includes
  the image noise of a mean): where the models draw the mark, against that spread;
- the key's template power there.
Printed per frequency class: on the vertical axis (kx = 0: stripes that run across the image,
constant along each row), on the horizontal axis (ky = 0), off the axes; and as 16 x 16 maps
in the JSON.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench_generated_mark import load
from bench_key_test import model_folders
from genwm import atomic
from genwm.keys import key_bits
from genwm.models import Detector
from genwm.models.detector import fold_blocks, unit


def mean_tile_spectrum(detector: Detector, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (the spectrum of the model's mean folded tile [3, T, T], the image-level variance of
    that mean at each frequency [3, T, T])."""
    t = detector.config.tile
    blocks = fold_blocks(detector.residual(load(folder)), t, detector.config.block_periods * t)
    tiles = torch.fft.fft2(unit(blocks, (2, 3, 4)).mean(1))  # [N, 3, T, T]
    return tiles.mean(0), tiles.var(0) / len(tiles)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("works", type=Path, nargs="+")
    ap.add_argument("--checkpoint", default="checkpoints/genwm-mini")
    ap.add_argument("--key", default="genwm-demo-key")
    ap.add_argument("--out", type=Path, default=Path("docs/results/key_test/model_texture.json"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    detector = Detector.from_pretrained(args.checkpoint).eval()
    template = torch.fft.fft2(unit(detector.templates(key_bits(args.key, detector.config.n_bits)[None]), (1, 2, 3)))[0]  # [3, T, T]
    means, noise, marks = [], [], []
    for work in args.works:
        spectra = {folder.name: mean_tile_spectrum(detector, folder) for folder, _ in model_folders(work)}
        for name, (mean, var) in spectra.items():
            if "-clean-" in name:
                means.append(mean)
                noise.append(var)
            partner = name.replace("-watermarked-", "-clean-")
            if "-watermarked-" in name and partner in spectra:
                marks.append(mean - spectra[partner][0])
    means = torch.stack(means)
    model_var = (means - means.mean(0)).abs().square().mean(0).mean(0)  # [T, T], over models and channels
    image_var = torch.stack(noise).mean(0).mean(0)
    ratio = model_var / image_var
    mark = (torch.stack(marks) * template.conj()).real.mean(0).sum(0) / model_var.sqrt()  # [T, T]
    power = template.abs().square().sum(0)
    t = detector.config.tile
    ky, kx = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    classes = {"vertical axis (kx = 0)": (kx == 0) & (ky != 0), "horizontal axis (ky = 0)": (ky == 0) & (kx != 0), "off the axes": (kx != 0) & (ky != 0)}
    rows = {}
    for name, m in classes.items():
        rows[name] = {
            "template_power_share": float(power[m].sum() / power.sum()),
            "model_to_image_variance": float(ratio[m].mean()),
            "mark_per_frequency": float(mark[m].mean()),
        }
        r = rows[name]
        print(f"{name:26s} template power share {r['template_power_share']:.2f}  model/image variance {r['model_to_image_variance']:5.2f}  "
              f"mark per frequency, in model-to-model sd {r['mark_per_frequency']:.2f}")
    record = {
        "command": "python scripts/bench_model_texture.py " + " ".join(map(str, args.works)) + f" --out {args.out}",
        "n_clean_models": len(means),
        "n_pairs": len(marks),
        "classes": rows,
        "maps": {"model_to_image_variance": ratio.numpy().round(3).tolist(), "mark_projection": mark.numpy().round(3).tolist(), "template_power": power.numpy().round(3).tolist()},
    }
    atomic.write_json(args.out, record)


if __name__ == "__main__":
    main()

"""Diagnostic: how much of a phase-1 mark survives a latent diffusion model's VAE round trip
(encode, decode), at the shipped strength and stronger. Every image a personalized model
learns from and generates passes through that VAE, so this bounds what phase 2 can find.

    python scripts/bench_vae_survival.py --checkpoint checkpoints/genwm-mini \
        --model checkpoints/genwm-mini-sd --photos data/mini/photos/calib --n 64
"""
import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from genwm.channel import load_frozen_vae, vae_round_trip
from genwm.checkpoint import load_checkpoint
from genwm.data import list_images, load_canonical
from genwm.keys import key_bits


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-mini")
    ap.add_argument("--model", default="checkpoints/genwm-mini-sd")
    ap.add_argument("--photos", default="data/mini/photos/calib")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--strengths", type=float, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--key", default="vae-survival")
    args = ap.parse_args()
    generator, detector, _ = load_checkpoint(args.checkpoint)
    vae = load_frozen_vae(args.model)
    size = generator.config.canonical_size
    x = torch.stack([load_canonical(p, size) for p in list_images(args.photos)[: args.n]])
    bits = key_bits(args.key, generator.config.n_bits)[None].expand(len(x), -1)
    labels = [1] * len(x) + [0] * len(x)
    print("strength | PSNR dB | AUC, no round trip | AUC, after the VAE round trip")
    with torch.no_grad():
        for s in args.strengths:
            xw = generator.embed(x, bits, strength=s)
            psnr = 10 * torch.log10(1 / (xw - x).pow(2).mean()).item()
            aucs = [roc_auc_score(labels, torch.cat([detector.logit(f(xw), bits), detector.logit(f(x), bits)]).numpy())
                    for f in (lambda t: t, lambda t: vae_round_trip(vae, t))]
            print(f"{s:g} | {psnr:.1f} | {aucs[0]:.3f} | {aucs[1]:.3f}", flush=True)


if __name__ == "__main__":
    main()

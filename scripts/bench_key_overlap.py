"""Diagnostic: how alike different keys' watermark tiles are, for a checkpoint's G and for
freshly initialised G's of the same config, and where the tiles' energy lies. Correlated tiles
let one key's mark pass for another's (see docs/BENCHMARKS.md, key separation); energy above
a few cycles per tile is what halving a photo removes.

    python scripts/bench_key_overlap.py --checkpoint checkpoints/genwm-base --keys 16
"""
import argparse

import torch

from genwm.checkpoint import load_checkpoint
from genwm.keys import random_bits
from genwm.models import WatermarkGenerator
from genwm.models.generator import cycles_per_tile
from genwm.pretrain import key_overlap


def band_energy(tiles: torch.Tensor, cutoffs=(4, 8)) -> dict:
    """Fraction of tiles' [B, C, T, T] energy at up to each cutoff, in cycles per tile (the
    larger of |kx| and |ky|)."""
    energy = torch.fft.fft2(tiles[:, 0]).abs().pow(2).sum(dim=0)
    cycles = cycles_per_tile(tiles.shape[-1])
    return {c: float(energy[cycles <= c].sum() / energy.sum()) for c in cutoffs}


def describe(generator, n_keys: int) -> str:
    torch.manual_seed(0)
    with torch.no_grad():
        tiles = generator(random_bits(n_keys, generator.config.n_bits))
    t = tiles.flatten(1)
    t = t - t.mean(dim=1, keepdim=True)
    t = t / t.norm(dim=1, keepdim=True)
    corr = (t @ t.T).abs()[~torch.eye(n_keys, dtype=torch.bool)]
    bands = "  ".join(f"energy at <= {c} cycles {e:.3f}" for c, e in band_energy(tiles).items())
    return f"key_overlap {key_overlap(tiles).item():.4f}  mean |corr| {corr.mean().item():.3f}  max |corr| {corr.max().item():.3f}  {bands}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-base")
    ap.add_argument("--keys", type=int, default=16)
    args = ap.parse_args()
    generator, _, _ = load_checkpoint(args.checkpoint)
    print(f"{args.checkpoint}: {describe(generator, args.keys)}")
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        print(f"initialised G, seed {seed}: {describe(WatermarkGenerator(generator.config), args.keys)}")


if __name__ == "__main__":
    main()

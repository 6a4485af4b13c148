"""Diagnostic: can a mark be drawn so that the VAE sees more of it than the photo shows?

Every image a latent diffusion model learns from is encoded by its VAE first, and every image it
generates is decoded by it. A mark of a given pixel RMS reaches the latents, and comes back
out of the decoder, with some gain. This script measures that gain, read where genwm draws the
mark (the grey row profile for a row-constant mark), for the plain mark and for a mark
optimised per photo through the VAE (projected gradient ascent at the same RMS):

    gain = <profile(RT(x + d)) - profile(RT(x)), m> / <m, m>

where RT is the encode-decode round trip and m the key's profile. The photos are subjects
never used in the benchmarks (by default 5-9).

    python scripts/bench_latent_mark.py --checkpoint checkpoints/genwm-mini-profile --model checkpoints/genwm-mini-sd
"""
import argparse

import numpy as np
import torch

from genwm.channel import load_frozen_vae, vae_round_trip
from genwm.checkpoint import load_checkpoint
from genwm.keys import key_bits
from genwm.mini.world import subject


def grey_profile(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> the grey row means [B, H], mean removed."""
    p = images.mean(dim=(1, 3))
    return p - p.mean(dim=1, keepdim=True)


def share(profile: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per image: how much of profile m the profile carries (its projection on m, over |m|^2)."""
    return (profile * m).sum(1) / (m * m).sum(1)


def gain(vae, x, xw, m) -> torch.Tensor:
    """Per image: how much of profile m the round trip's difference carries."""
    return share(grey_profile(vae_round_trip(vae, xw)) - grey_profile(vae_round_trip(vae, x)), m)


def optimise(vae, x, mark, m, steps: int, lr: float):
    """A perturbation per photo of the mark's RMS, maximising the round trip's gain: projected
    gradient ascent, each step along the normalised gradient, then back onto the sphere of the
    mark's RMS. The first step
    from zero is the linearised optimum, the direction J^T m of the round trip's Jacobian."""
    rms = mark.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    unit = lambda t: t / t.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
    d = torch.zeros_like(mark)
    for i in range(steps):
        d.requires_grad_(True)
        (grad,) = torch.autograd.grad(gain(vae, x, (x + d).clamp(0, 1), m).sum(), d)
        with torch.no_grad():
            d = rms * unit(d + (lr if i else 1.0) * rms * unit(grad))
    return d.detach()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-mini-profile")
    ap.add_argument("--model", default="checkpoints/genwm-mini-sd")
    ap.add_argument("--subjects", type=int, nargs="+", default=[5, 6, 7, 8, 9])
    ap.add_argument("--key", default="latent-mark")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.3, help="step, relative to the mark's RMS")
    args = ap.parse_args()
    generator, _, _ = load_checkpoint(args.checkpoint)
    vae = load_frozen_vae(args.model)  # frozen: gradients flow to the perturbation only
    bits = key_bits(args.key, generator.config.n_bits)[None]
    print("| subject | PSNR, plain / optimised dB | gain, plain mark | gain, optimised | the photo's own reading, optimised | latent change, optimised / plain |")
    print("|---|---|---|---|---|---|")
    for s in args.subjects:
        x = torch.from_numpy(np.stack(subject(s).images(8))).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            mark = generator.embed(x, bits.expand(len(x), -1)) - x
            m = grey_profile(mark)
            g0 = gain(vae, x, x + mark, m)
        d = optimise(vae, x, mark, m, args.steps, args.lr)
        with torch.no_grad():
            xw = (x + d).clamp(0, 1)
            g1 = gain(vae, x, xw, m)
            direct = share(grey_profile(xw - x), m)
            z = lambda t: vae.encode(t * 2 - 1).latent_dist.mean
            dz1 = (z(xw) - z(x)).pow(2).mean().sqrt()
            dz0 = (z((x + mark).clamp(0, 1)) - z(x)).pow(2).mean().sqrt()
            psnr = [10 * torch.log10(1 / (t - x).pow(2).mean()).item() for t in ((x + mark).clamp(0, 1), xw)]
        print(f"| {s} | {psnr[0]:.2f} / {psnr[1]:.2f} | {g0.mean():.3f} | {g1.mean():.3f} | {direct.mean():.3f} | {dz1 / dz0:.2f} |", flush=True)


if __name__ == "__main__":
    main()

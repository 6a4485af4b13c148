"""Diagnostic: what a mini-model UNet training step costs on this CPU for a given latent size and
UNet shape, before committing hours to one (a VAE with latents at half the image size keeps a
band-limited mark, docs/BENCHMARKS.md; its UNet then works on 4x the latent pixels).

    OMP_NUM_THREADS=1 python scripts/bench_mini_unet.py --vae-blocks 3 --unet-channels 32 64 64
    OMP_NUM_THREADS=1 python scripts/bench_mini_unet.py --vae-blocks 2 --unet-channels 32 64 64
    OMP_NUM_THREADS=1 python scripts/bench_mini_unet.py --vae-blocks 2 --unet-channels 32 32 64 64
    OMP_NUM_THREADS=1 python scripts/bench_mini_unet.py --vae-blocks 2 --unet-channels 32 64 64 --plain-levels 1

One step = the shipped recipe's: noise prediction on a batch of latents with text conditioning,
MSE loss, backward, AdamW update (genwm.mini.train.LatentDiffusionTraining's work, without
Lightning around it). Median over the timed steps, after warm-up steps.
"""
import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

from genwm.mini.model import MiniConfig, build_unet


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae-blocks", type=int, default=len(MiniConfig.vae_channels), help="VAE blocks: latents are resolution / 2**(blocks-1)")
    ap.add_argument("--unet-channels", type=int, nargs="+", default=list(MiniConfig.unet_channels))
    ap.add_argument("--plain-levels", type=int, default=MiniConfig.unet_plain_levels, help="finest UNet levels without cross-attention")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    base = MiniConfig()
    config = dataclasses.replace(base, vae_channels=base.vae_channels[:1] * args.vae_blocks, unet_channels=tuple(args.unet_channels),
                                 unet_plain_levels=args.plain_levels)
    unet = build_unet(config)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    side = config.resolution // 2 ** (args.vae_blocks - 1)
    latents = torch.randn(args.batch_size, config.latent_channels, side, side)
    text = torch.randn(args.batch_size, config.max_length, config.text_hidden)
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        timesteps = torch.randint(0, config.train_timesteps, (args.batch_size,))
        loss = F.mse_loss(unet(latents, timesteps, encoder_hidden_states=text).sample, latents)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    params = sum(p.numel() for p in unet.parameters())
    print(f"latents {side}x{side}x{config.latent_channels}, UNet channels {tuple(args.unet_channels)}, {args.plain_levels} level(s) without attention, "
          f"{params / 1e6:.2f} M parameters, "
          f"batch {args.batch_size}, {torch.get_num_threads()} thread(s): {statistics.median(times):.2f} s per training step "
          f"(median of {args.steps})")


if __name__ == "__main__":
    main()

"""Diagnostic: how well a mini-model VAE of a given shape reconstructs the mini world, trained
alone (stage 2 of genwm.mini.train) and scored on held-out world images. Its folder can then be
handed to scripts/bench_mark_design.py --vae to see what of a mark it keeps.

    python scripts/bench_mini_vae.py --latent-channels 16 --out runs/vae-latent16
    python scripts/bench_mark_design.py --photos data/mini/photos/calib --canonical 64 --tile 16 \\
        --rms 0.011 --block-periods 2 --vae runs/vae-latent16 --attacks clean vae --bands 4 2 --n 64

The reference a VAE has to beat: the same held-out images shrunk 2x and 4x and enlarged back,
bicubic (no training):

    python scripts/bench_mini_vae.py --bicubic
"""
import argparse
import dataclasses
from pathlib import Path

from genwm.mini.model import MiniConfig
from genwm.mini.train import MiniTrainConfig, train_vae, world_dataset


def bicubic_psnr(images, factor: int) -> float:
    """PSNR of uint8 images [N, H, W, 3] shrunk by `factor` and enlarged back, bicubic."""
    import math

    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    small = F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True)
    back = F.interpolate(small, scale_factor=factor, mode="bicubic").clamp(0, 1)
    return 10 * math.log10(1 / F.mse_loss(back, x).item())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae-channels", type=int, nargs="+", default=list(MiniConfig.vae_channels))
    ap.add_argument("--latent-channels", type=int, default=MiniConfig.latent_channels)
    ap.add_argument("--steps", type=int, default=MiniTrainConfig.vae_steps)
    ap.add_argument("--n-images", type=int, default=3000, help="world images to train on (256 more are held out)")
    ap.add_argument("--out", help="folder for the trained VAE (diffusers layout)")
    ap.add_argument("--bicubic", action="store_true", help="only print the bicubic reference on the held-out images")
    args = ap.parse_args()
    if not (args.out or args.bicubic):
        ap.error("--out is required (or --bicubic)")
    model = dataclasses.replace(MiniConfig(), vae_channels=tuple(args.vae_channels), latent_channels=args.latent_channels)
    config = MiniTrainConfig(model=model, vae_steps=args.steps, progress=False)
    images, _ = world_dataset(args.n_images + 256, model.resolution, config.data_seed, progress=False)
    if args.bicubic:
        for factor in (2, 4):
            print(f"bicubic, shrunk {factor}x and enlarged back: PSNR {bicubic_psnr(images[:256], factor):.2f} dB on 256 held-out world images")
        return
    vae, _, psnr = train_vae(config, images[256:], Path(args.out) / "logs", sample_images=images[:256])
    vae.save_pretrained(args.out, safe_serialization=True)
    params = sum(p.numel() for p in vae.parameters())
    print(f"VAE channels {tuple(args.vae_channels)}, latent channels {args.latent_channels}, {params} parameters, "
          f"{args.steps} steps: reconstruction PSNR {psnr:.2f} dB on 256 held-out world images; saved to {args.out}")


if __name__ == "__main__":
    main()

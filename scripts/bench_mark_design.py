"""Diagnostic: what a mark should be made of, and how a detector should pool it, measured
with no training at all: fixed tiles, and a matched filter whose front end is the fixed
high-pass alone (DetectorConfig.highpass, extractor zeroed).

    python scripts/bench_mark_design.py --photos data/photos/bench
    python scripts/bench_mark_design.py --photos data/mini/photos/calib --canonical 64 --tile 16 \\
        --rms 0.011 --block-periods 2 --vae checkpoints/genwm-mini-sd --attacks clean vae

Tiles (one per key, RMS fixed, so every design has the same PSNR): white noise in colour
(each channel its own), white noise in grey (luminance only), and grey noise limited to
spatial frequencies of at most k cycles per tile (max(|kx|, |ky|) <= k). Pooling: per-block
correlation peaks averaged (genwm 0.1's detector), or also the blocks' correlation maps summed
(coherent: the mark has one phase over the whole photo). Scores: marked vs clean photos, and
the key's own mark vs another key's mark, ROC AUC (sklearn).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_watermark import attack, load_photos  # noqa: E402

from genwm.images import to_float_rgb  # noqa: E402
from genwm.models import Detector, GeneratorConfig, WatermarkGenerator  # noqa: E402
from genwm.models.generator import band_gain, pattern_scale  # noqa: E402


def unit_rms(tiles: torch.Tensor, rms: float) -> torch.Tensor:
    tiles = tiles - tiles.mean(dim=(2, 3), keepdim=True)
    return tiles * rms / tiles.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()


def designs(n: int, t: int, rms: float, bands) -> dict[str, torch.Tensor]:
    grey = torch.randn(n, 1, t, t)
    out = {"colour white": unit_rms(torch.randn(n, 3, t, t), rms), "grey white": unit_rms(grey.expand(-1, 3, -1, -1), rms)}
    for kmax in bands:
        low = torch.fft.irfft2(torch.fft.rfft2(grey) * band_gain(t, kmax), s=(t, t))  # what G draws with that gain
        out[f"grey k<={kmax}"] = unit_rms(low.expand(-1, 3, -1, -1), rms)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default="data/photos/bench")
    ap.add_argument("--canonical", type=int, default=512)
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--rms", type=float, default=0.0095)
    ap.add_argument("--block-periods", type=int, default=4)
    ap.add_argument("--bands", type=int, nargs="*", default=[8, 4])
    ap.add_argument("--attacks", nargs="+", default=["clean", "jpeg75", "jpeg50", "resize0.5"])
    ap.add_argument("--vae", help="a diffusers pipeline or VAE folder: adds the attack 'vae' (encode + decode)")
    ap.add_argument("--n", type=int, default=64, help="at most this many photos")
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    photos = [torch.from_numpy(to_float_rgb(img)).permute(2, 0, 1) for _, img in load_photos(args.photos)[: args.n]]
    vae = None
    if args.vae:
        from genwm.channel import load_frozen_vae, vae_round_trip

        vae = load_frozen_vae(args.vae)
    tiles = designs(4, args.tile, args.rms, args.bands)
    config = GeneratorConfig(tile=args.tile, max_rms=args.rms, canonical_size=args.canonical)

    def attacked(x: torch.Tensor, name: str) -> torch.Tensor:
        if name == "vae":
            with torch.no_grad():
                return vae_round_trip(vae, x[None])[0]
        from PIL import Image

        arr = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        return torch.from_numpy(to_float_rgb(attack(Image.fromarray(arr), name, rng))).permute(2, 0, 1)

    print(f"{len(photos)} photos from {args.photos}; tile {args.tile}, RMS {args.rms}")
    print("| design | pooling | PSNR dB | " + " | ".join(f"AUC {a}" for a in args.attacks) + " | AUC own vs other key |")
    print("|---|---|---|" + "---|" * (len(args.attacks) + 1))
    for coherent in (False, True):
        detector = Detector.for_generator(WatermarkGenerator(config), block_periods=args.block_periods, highpass=True,
                                          coherent=coherent).eval()
        with torch.no_grad():
            detector.extractor[-1].weight.zero_()
            detector.extractor[-1].bias.zero_()
        for name, design in tiles.items():
            scores = {a: ([], []) for a in args.attacks + ["other"]}
            psnr = []
            for i, x in enumerate(photos):
                own, other = design[i % 4 : i % 4 + 1], design[(i + 1) % 4 : (i + 1) % 4 + 1]
                s = pattern_scale(*x.shape[-2:], args.canonical)
                xw = (x + WatermarkGenerator.render(own, *x.shape[-2:], s)[0]).clamp(0, 1)
                xo = (x + WatermarkGenerator.render(other, *x.shape[-2:], s)[0]).clamp(0, 1)
                psnr.append(10 * np.log10(1 / (xw - x).pow(2).mean().item()))

                def score(img):
                    with torch.no_grad():
                        return detector.template_logits(detector.to_canonical(img), own[None]).item()

                for a in args.attacks:
                    scores[a][0].append(score(attacked(xw, a)))
                    scores[a][1].append(score(attacked(x, a)))
                scores["other"][0].append(scores["clean"][0][-1] if "clean" in args.attacks else score(xw))
                scores["other"][1].append(score(xo))
            aucs = [roc_auc_score([1] * len(p) + [0] * len(n), p + n) for p, n in scores.values()]
            pooling = "blocks + coherent" if coherent else "blocks"
            print(f"| {name} | {pooling} | {np.mean(psnr):.2f} | " + " | ".join(f"{v:.3f}" for v in aucs) + " |", flush=True)


if __name__ == "__main__":
    main()

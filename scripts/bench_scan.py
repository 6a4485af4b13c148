"""Benchmark: how long the detector takes to scan photos on this machine, per reading option.

    python scripts/bench_scan.py --photos data/photos/bench --read '{"drift_steps": 0}' '{}'

Each photo (longer side capped at 768 px, as in bench_watermark.py) is scored for one key, after
one untimed warm-up; prints seconds per photo and megapixels per second for each --read (a JSON
object of detector options; {}: as the checkpoint reads).
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_read import checked_read_options  # noqa: E402
from bench_watermark import load_photos  # noqa: E402

from genwm.models import Detector  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/genwm-base")
    ap.add_argument("--photos", default="data/photos/bench")
    ap.add_argument("--read", nargs="+", type=json.loads, default=[{}])
    args = ap.parse_args()
    detector = Detector.from_pretrained(args.checkpoint)
    shipped = checked_read_options(detector.config, args.read)
    photos = [img for _, img in load_photos(args.photos)]
    megapixels = sum(img.width * img.height for img in photos) / 1e6
    print(f"{len(photos)} photos from {args.photos} ({megapixels:.1f} MP), {args.checkpoint}")
    print("| read | s per photo | MP/s |")
    print("|---|---|---|")
    for options in args.read:
        vars(detector.config).update(shipped, **options)
        detector.logits(photos[:1], "bench-scan")
        start = time.perf_counter()
        detector.logits(photos, "bench-scan")
        seconds = time.perf_counter() - start
        print(f"| {json.dumps(options)} | {seconds / len(photos):.3f} | {megapixels / seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()

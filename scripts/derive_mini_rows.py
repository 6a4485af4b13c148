"""Derive checkpoints/genwm-mini-rows: the mini world's phase-1 G and D with a row-constant mark.

    python scripts/derive_mini_rows.py [--source checkpoints/genwm-mini] [--out checkpoints/genwm-mini-rows]

The same weights as the source, with GeneratorConfig.rows set for G and for D's templates: each
key's tile averaged along its rows (horizontal stripes, the tile's vertical profile), at the
same RMS. No training: the mini world's personalized models keep a row-constant mark far
better than the rest of it (docs/BENCHMARKS.md, the key test), and this asks what a mark made
only of that part gives. No calibration is written (the source's was measured for its own
mark); phase 2 calibrates the subject's detector as always.
"""
import argparse

from genwm.checkpoint import load_checkpoint, save_checkpoint
from genwm.models import Detector, DetectorConfig, GeneratorConfig, WatermarkGenerator


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="checkpoints/genwm-mini")
    ap.add_argument("--out", default="checkpoints/genwm-mini-rows")
    args = ap.parse_args()
    generator, detector, config = load_checkpoint(args.source)
    rows_generator = WatermarkGenerator(GeneratorConfig(**{**generator.config.to_dict(), "rows": True}))
    rows_generator.load_state_dict(generator.state_dict())
    detector_config = detector.config.to_dict()
    rows_detector = Detector(DetectorConfig(**{**detector_config, "template": {**detector_config["template"], "rows": True}}))
    rows_detector.load_state_dict(detector.state_dict())
    metadata = {**(config.get("metadata") or {}), "derived": {"from": args.source, "rows": True, "script": "scripts/derive_mini_rows.py"}}
    save_checkpoint(args.out, generator=rows_generator, detector=rows_detector, metadata=metadata)
    print(f"{args.out}: {args.source} with row-constant tiles")


if __name__ == "__main__":
    main()

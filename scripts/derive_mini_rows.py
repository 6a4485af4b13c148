"""Derive checkpoints/genwm-mini-rows: the mini world's phase-1 G and D with a row-constant mark.

    python scripts/derive_mini_rows.py [--source checkpoints/genwm-mini] [--out checkpoints/genwm-mini-rows]
    python scripts/derive_mini_rows.py --tile 64 --band 16 --out checkpoints/genwm-mini-profile
    python scripts/derive_mini_rows.py --source checkpoints/genwm-mini-profile --row-window 9 --out checkpoints/genwm-mini-profile-rowmeans
    python scripts/derive_mini_rows.py --tile 64 --band 14 --band-min 5 --out checkpoints/genwm-mini-profile-band

The same weights as the source, with GeneratorConfig.rows set for G and for D's templates: each
key's tile averaged along its rows (horizontal stripes, the tile's vertical profile), at the
same RMS. No training: the mini world's personalized models keep a row-constant mark far
better than the rest of it (docs/BENCHMARKS.md, the key test), and this asks what a mark made
only of that part gives. No calibration is written (the source's was measured for its own
mark); phase 2 calibrates the subject's detector as always.

--row-window K gives D the fixed front end made for a row-constant mark instead of the learned
one (DetectorConfig.row_window: row means high-passed over K rows); G is unchanged, so the
marked photos, and every model trained on them, are the same as the source's.
"""
import argparse

from genwm.checkpoint import load_checkpoint, save_checkpoint
from genwm.models import Detector, DetectorConfig, GeneratorConfig, WatermarkGenerator


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="checkpoints/genwm-mini")
    ap.add_argument("--out", default="checkpoints/genwm-mini-rows")
    ap.add_argument("--tile", type=int, help="a new period (e.g. the image's height, for a profile that never repeats): G's "
                    "learned filter does not fit another tile, so it becomes flat up to --band cycles per tile")
    ap.add_argument("--band", type=int, help="with --tile: the highest frequency, in cycles per tile")
    ap.add_argument("--band-min", type=int, help="with --tile: the lowest frequency, in cycles per tile (default: 1)")
    ap.add_argument("--row-window", type=int, default=0, help="D reads row means high-passed over this many rows (odd), not a learned front end")
    args = ap.parse_args()
    generator, detector, config = load_checkpoint(args.source)
    changes = {"rows": True}
    front_end = {"row_window": args.row_window} if args.row_window else {}
    if args.tile:
        changes.update(tile=args.tile, band=args.band, band_min=args.band_min)
    elif args.band_min:
        ap.error("--band-min needs --tile (a new, flat filter)")
    rows_generator = WatermarkGenerator(GeneratorConfig(**{**generator.config.to_dict(), **changes}))
    detector_config = detector.config.to_dict()
    rows_detector = Detector(DetectorConfig(**{**detector_config, **front_end, "template": {**detector_config["template"], **changes}}))
    # a row-means front end has no weights: the source's extractor is left behind
    detector_weights = {k: v for k, v in detector.state_dict().items() if not (args.row_window and k.startswith("extractor."))}
    if args.tile:
        # the front end is tile-agnostic and keeps its weights; the templates are G's
        rows_detector.extractor.load_state_dict({k.removeprefix("extractor."): v for k, v in detector_weights.items() if k.startswith("extractor.")})
        rows_detector.templates.load_state_dict(rows_generator.state_dict())
    else:
        rows_generator.load_state_dict(generator.state_dict())
        rows_detector.load_state_dict(detector_weights)
    metadata = {**(config.get("metadata") or {}), "derived": {"from": args.source, **changes, **front_end, "script": "scripts/derive_mini_rows.py"}}
    save_checkpoint(args.out, generator=rows_generator, detector=rows_detector, metadata=metadata)
    print(f"{args.out}: {args.source} with row-constant tiles" + (f", read from row means over {args.row_window} rows" if args.row_window else ""))


if __name__ == "__main__":
    main()

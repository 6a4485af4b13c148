"""`genwm watermark` and `genwm scan`: the two user-facing batch commands.

Exit codes. watermark: 0 all photos done (or already done), 1 some failed (the rest were
processed), 2 usage error. scan, like clamscan: 0 watermark not detected, 1 detected,
2 error (bad arguments, no readable photo, no calibration to decide with).
"""
import argparse
import csv
import io
import json
import os
import sys
import warnings
from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "genwm-base"
KEY_ENV, CHECKPOINT_ENV = "GENWM_KEY", "GENWM_CHECKPOINT"
RANDOM_LPIPS = "lpips-alex-random"
DEFAULT_PERCEPTUAL = "effnet-lite0"

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_NOT_DETECTED, EXIT_DETECTED, EXIT_ERROR = 0, 1, 2


class UsageError(Exception):
    """A problem with the command line or its environment: exit code 2."""


def register(subparsers) -> None:
    _register_watermark(subparsers)
    _register_scan(subparsers)


# ---- arguments ------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _probability(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _jpeg_quality(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be 1 to 100, got {value}")
    return value


def _add_key(p) -> None:
    p.add_argument(
        "--key",
        help=f"the subject's secret key; or set {KEY_ENV}, which keeps it out of shell history",
    )


def _register_watermark(subparsers) -> None:
    p = subparsers.add_parser(
        "watermark",
        help="watermark photos (files or folders) into an output folder",
        description="Add the key's invisible watermark to photos. Inputs are never modified; outputs keep "
        "the folder structure, format, EXIF, colour profile and JPEG quality of the inputs. Rerunning "
        "with the same --out skips photos already done.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", type=Path, help="photo files or folders (searched recursively)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (never an input folder)")
    _add_key(p)
    p.add_argument("--checkpoint", type=Path, metavar="CKPT", help=f"checkpoint folder (default: ${CHECKPOINT_ENV} or {DEFAULT_CHECKPOINT})")
    p.add_argument("--budget", type=_positive_float, metavar="P", help="per-photo cap on the perceptual distance; the strength is lowered to meet it")
    p.add_argument("--strength", type=_positive_float, default=1.0, metavar="S", help="multiplier of the learned mark (default 1.0)")
    p.add_argument("--jpeg-quality", type=_jpeg_quality, metavar="Q", help="re-encode JPEGs at this quality instead of the original's tables")
    p.add_argument("--no-metrics", action="store_true", help="skip PSNR/SSIM (faster)")
    p.set_defaults(func=run_watermark)


def _register_scan(subparsers) -> None:
    p = subparsers.add_parser(
        "scan",
        help="test whether photos carry a key's watermark",
        description="Score photos for the key's watermark and test the set against the detector's calibrated "
        "null distribution. Exit code: 0 not detected, 1 detected, 2 error.",
    )
    p.add_argument("inputs", nargs="+", metavar="PATH", type=Path, help="photo files or folders (searched recursively)")
    _add_key(p)
    p.add_argument("--detector", type=Path, metavar="CKPT", help=f"detector checkpoint (default: ${CHECKPOINT_ENV} or {DEFAULT_CHECKPOINT})")
    p.add_argument("--alpha", type=_probability, default=0.01, metavar="A", help="significance level of the set test (default 0.01)")
    p.add_argument(
        "--key-test",
        type=int,
        default=0,
        metavar="N",
        help="test the set by ranking the key among N null keys instead of by the calibrated per-image "
        "threshold: exact for images of one model too, whose scores rise and fall together "
        "(smallest p-value 1/(N+1); a located phase-2 detector always does this, with its own null keys)",
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON ('-' for stdout)")
    p.add_argument("--csv", metavar="FILE", help="write the per-photo scores as CSV ('-' for stdout)")
    p.set_defaults(func=run_scan)


def default_checkpoint() -> Path:
    return Path(os.environ.get(CHECKPOINT_ENV) or DEFAULT_CHECKPOINT)


def _resolve_key(args) -> str:
    key = args.key if args.key is not None else os.environ.get(KEY_ENV)
    if not key:
        raise UsageError(f"no key: pass --key KEY or set {KEY_ENV}")
    return key


def _checkpoint_metadata(path: Path) -> dict:
    from genwm.checkpoint import read_config

    try:
        return read_config(path).get("metadata") or {}
    except FileNotFoundError as e:
        hint = "" if path != DEFAULT_CHECKPOINT else f" (pass --checkpoint/--detector or set {CHECKPOINT_ENV})"
        raise UsageError(f"{e}{hint}") from None
    except ValueError as e:
        raise UsageError(str(e)) from None


def _warn_random_lpips(metadata: dict) -> None:
    if metadata.get("perceptual") == RANDOM_LPIPS:
        print(
            f"warning: this checkpoint was trained with a random-backbone LPIPS ({RANDOM_LPIPS}); "
            "its perceptual budget means little",
            file=sys.stderr,
        )


def _command(name: str, body):
    """Run a command body; usage problems become one line and exit code 2."""

    def run(args) -> int:
        try:
            return body(args)
        except UsageError as e:
            print(f"genwm {name}: error: {e}", file=sys.stderr)
            return EXIT_USAGE

    return run


# ---- watermark ------------------------------------------------------------------------------


def _watermark(args) -> int:
    from genwm.batch import SUMMARY_NAME, watermark_paths
    from genwm.watermarker import Watermarker

    key = _resolve_key(args)
    checkpoint = args.checkpoint or default_checkpoint()
    metadata = _checkpoint_metadata(checkpoint)
    _warn_random_lpips(metadata)
    try:
        watermarker = Watermarker.from_pretrained(checkpoint, key=key, strength=args.strength)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    perceptual = _budget_model(metadata) if args.budget is not None else None
    try:
        summary = watermark_paths(
            args.inputs,
            args.out,
            watermarker,
            key,
            jpeg_quality=args.jpeg_quality,
            metrics=not args.no_metrics,
            budget=args.budget,
            perceptual=perceptual,
            checkpoint=checkpoint,
        )
    except ValueError as e:  # e.g. --out holds another key's outputs
        raise UsageError(str(e)) from None
    counts = summary["counts"]
    print(
        f"watermarked {counts['ok']}, skipped {counts['skipped']} (already done), failed {counts['error']}; "
        f"summary: {Path(args.out) / SUMMARY_NAME}",
        file=sys.stderr,
    )
    return EXIT_FAILED if counts["error"] else EXIT_OK


def _budget_model(metadata: dict):
    from genwm.perceptual import load_perceptual

    backend = metadata.get("perceptual", DEFAULT_PERCEPTUAL)
    try:
        with warnings.catch_warnings():  # torchvision's deprecation chatter from inside lpips
            warnings.simplefilter("ignore", UserWarning)
            return load_perceptual(backend)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise UsageError(f"--budget needs the checkpoint's perceptual model {backend!r}: {e}") from None


run_watermark = _command("watermark", _watermark)


# ---- scan -----------------------------------------------------------------------------------


def _scan(args) -> int:
    from genwm.batch import scan_paths
    from genwm.keys import key_fingerprint
    from genwm.models.detector import Detector

    if args.json == "-" and args.csv == "-":
        raise UsageError("only one of --json and --csv can write to stdout ('-')")
    key = _resolve_key(args)
    checkpoint = args.detector or default_checkpoint()
    metadata = _checkpoint_metadata(checkpoint)
    _warn_random_lpips(metadata)
    try:
        detector = Detector.from_pretrained(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None

    if args.key_test < 0:
        raise UsageError(f"--key-test must be 0 or more null keys, got {args.key_test}")
    try:
        rows, verdict, errors = scan_paths(args.inputs, detector, key, alpha=args.alpha, progress=True, null_keys=args.key_test)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not rows:
        raise UsageError("no readable photos to scan" + (f" ({len(errors)} unreadable)" if errors else ""))

    # With a machine-readable result on stdout, the human report goes to stderr.
    report = sys.stderr if "-" in (args.json, args.csv) else sys.stdout
    print_table(rows, report)
    calibrated = detector.calibration is not None
    if verdict is not None:
        print_verdict(verdict, key_fingerprint(key), report)
    else:
        print(f"no verdict: {checkpoint} has no calibration.json; run `genwm calibrate` on it first, or pass --key-test N", file=sys.stderr)

    result = {
        "detector": str(checkpoint),
        "key_fingerprint": key_fingerprint(key),
        "alpha": args.alpha,
        "calibrated": calibrated,
        "verdict": verdict,
        "images": rows,
        "errors": errors,
    }
    if args.json:
        _write_output(args.json, json.dumps(result, indent=2) + "\n")
    if args.csv:
        _write_output(args.csv, scores_csv(rows))
    if verdict is None:
        return EXIT_ERROR
    return EXIT_DETECTED if verdict["watermark_detected"] else EXIT_NOT_DETECTED


def print_table(rows, out) -> None:
    calibrated = any(r["above_threshold"] is not None for r in rows)
    print(f"{'probability':>11}  {'logit':>9}  {'above' if calibrated else ''}  path", file=out)
    for r in rows:
        mark = ("  yes" if r["above_threshold"] else "   no") if calibrated else ""
        print(f"{r['probability']:11.4f}  {r['logit']:9.3f}  {mark}  {r['path']}", file=out)


def print_verdict(v: dict, fingerprint: str, out) -> None:
    if v["test"] == "key":
        print(
            f"\n{v['n_images']} images: mean evidence {v['evidence']:.3f} under the key, {v['null_mean']:.3f} "
            f"(sd {v['null_std']:.3f}) under {v['n_null_keys']} null keys"
            + (f", each less what {' and '.join(v['conditioned_on'])} explain of it" if v.get("conditioned_on") else ""),
            file=out,
        )
        print(f"key test p-value {v['p_value']:.3g}, alpha {v['alpha']:g}", file=out)
    else:
        print(
            f"\n{v['n_images']} images, {v['n_above_threshold']} above the threshold "
            f"(logit {v['threshold_logit']:.3f}, per-image false-positive rate {v['per_image_fpr']:.4g})",
            file=out,
        )
        print(f"binomial p-value {v['p_value']:.3g}, KS p-value {v['p_value_ks']:.3g}, alpha {v['alpha']:g}", file=out)
    if v["watermark_detected"]:
        print(f"DETECTED: these images carry the watermark of key {fingerprint}", file=out)
    else:
        print(f"not detected: no evidence of the watermark of key {fingerprint}", file=out)


def scores_csv(rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "probability", "logit", "above_threshold"], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "above_threshold": "" if r["above_threshold"] is None else int(r["above_threshold"])})
    return buf.getvalue()


def _write_output(target: str, text: str) -> None:
    from genwm import atomic

    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic.write_bytes(Path(target), text.encode())


run_scan = _command("scan", _scan)

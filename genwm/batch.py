"""Folders of photos in, watermarked photos (or a detection verdict) out.

Both batch commands keep going past a bad file: it gets one `error: <path>: <reason>` line
on stderr and an entry in the summary, and the rest are processed. Inputs are only ever
read; outputs are written atomically, so an output that exists is complete, which is what
makes an interrupted run resumable.
"""
import json
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from genwm import atomic
from genwm.images import ImageError, apply_to_pil, conversion_note, find_images, load_image, save_like, to_float_rgb
from genwm.keys import key_fingerprint

SUMMARY_NAME = "genwm-summary.json"
PERCEPTUAL_SIZE = 512  # short side at which perceptual distances are measured (the mark's canonical scale)
BUDGET_ROUNDS = 4  # re-measurements of the sqrt rule before a budget is declared unreachable
BUDGET_MARGIN = 0.98


def report_error(message: str) -> None:
    """One line on stderr that does not tear an active progress bar."""
    tqdm.write(f"error: {message}", file=sys.stderr)


def failure_reason(path, e: Exception) -> str:
    """'<path>: <reason>' on one line, for any exception."""
    if isinstance(e, ImageError):
        return str(e)
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{path}: {text}"


def _progress(items, progress: bool, unit: str = "img"):
    # disable=None: a bar on a terminal, nothing in logs and pipes.
    return tqdm(items, unit=unit, file=sys.stderr, disable=None if progress else True, dynamic_ncols=True)


# ---- watermark --------------------------------------------------------------------------


def watermark_paths(
    inputs,
    out_dir,
    watermarker,
    key: str,
    jpeg_quality: int | None = None,
    metrics: bool = True,
    progress: bool = True,
    budget: float | None = None,
    perceptual=None,
    checkpoint=None,
) -> dict:
    """Watermark every photo under `inputs` into `out_dir`, keeping the folder structure.

    budget: an upper bound on the perceptual distance (with the `perceptual` module, at
    short side 512) between each photo and its watermarked version; the strength is scaled
    down per photo to meet it. Returns the summary written to out_dir/genwm-summary.json.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    summary_path = out_dir / SUMMARY_NAME
    fingerprint = key_fingerprint(key)
    earlier = _earlier_entries(summary_path, fingerprint)
    files = find_images(inputs, exclude=[out_dir])
    if not files:
        raise ValueError("no photos found (looked for .jpg .jpeg .png .webp .tif .tiff)")
    protected = _InputGuard(path for path, _ in files)
    lpips_model = _lpips_if_available() if metrics else None
    mark = _mark_function(watermarker, key, budget, perceptual)

    entries, used_outputs = {}, {}
    try:
        for src, rel in _progress(files, progress):
            entry = _watermark_one(src, out_dir, rel, mark, protected, used_outputs, earlier, jpeg_quality, metrics, lpips_model)
            entries[entry["output"]] = entry
            if entry["status"] == "error":
                report_error(entry["error"])
    finally:  # an interrupted run still records what it did, for the run that resumes it
        summary = _summary(out_dir, watermarker, fingerprint, checkpoint, budget, jpeg_quality, earlier, entries)
        atomic.write_json(summary_path, _json_safe(summary))
    return summary


def _summary(out_dir, watermarker, fingerprint, checkpoint, budget, jpeg_quality, earlier, entries) -> dict:
    merged = {**earlier, **entries}  # entries of earlier runs that this run did not touch stay
    return {
        "genwm_summary": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "key_fingerprint": fingerprint,
        "out_dir": str(out_dir),
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "perceptual": (watermarker.config.get("metadata") or {}).get("perceptual"),
        "strength": watermarker.strength,
        "budget": budget,
        "jpeg_quality": jpeg_quality,
        "counts": _counts(entries.values()),
        "images": list(merged.values()),
    }


def _watermark_one(src, out_dir, rel, mark, protected, used_outputs, earlier, jpeg_quality, metrics, lpips_model) -> dict:
    # The output is recorded relative to the output folder, where the summary lives, so a
    # resumed run matches it however the folder is spelled on the command line.
    dst = out_dir / rel
    entry = {"input": str(src), "output": rel.as_posix(), "status": "ok", "error": None, "notes": []}
    try:
        # The input guard comes first: with --out set to an input folder every output
        # "exists" (it is the input) and must be refused, not skipped as done.
        if protected.covers(dst):
            raise ImageError(src, f"refusing to write the output onto an input file ({dst}); choose another --out")
        clash = used_outputs.setdefault(rel.as_posix().casefold(), src)
        if clash != src:
            raise ImageError(src, f"its output {dst} is already the output of {clash}; watermark these inputs separately")
        if dst.exists():
            return _skipped(entry, earlier.get(entry["output"]))
        loaded = load_image(src)
        marked = apply_to_pil(loaded.image, mark)
        save_like(marked, loaded.meta, dst, jpeg_quality=jpeg_quality)
        entry.update(
            format=loaded.meta.format,
            width=loaded.image.width,
            height=loaded.image.height,
            mode=loaded.meta.mode,
            output_mode=marked.mode,
            notes=loaded.meta.notes + [n for n in [conversion_note(loaded.image.mode, loaded.image.info)] if n],
        )
        report = mark.last_report()
        entry["notes"] += report.pop("notes", [])
        entry.update(report)
        if metrics:
            entry.update(_quality_metrics(loaded.image, load_image(dst).image, lpips_model))
    except Exception as e:  # one bad photo must not stop the batch
        entry.update(status="error", error=failure_reason(src, e))
    return entry


def _skipped(entry: dict, before: dict | None) -> dict:
    """An output from an earlier run: keep what that run measured about it."""
    kept = dict(before or {})
    kept.update(input=entry["input"], output=entry["output"], status="skipped", error=None)
    kept["notes"] = [n for n in kept.get("notes", []) if not n.startswith("output already existed")]
    kept["notes"].append("output already existed (an earlier run); left as it was")
    return kept


def _counts(entries) -> dict:
    counts = {"ok": 0, "skipped": 0, "error": 0}
    for e in entries:
        counts[e["status"]] += 1
    return counts


def _earlier_entries(summary_path: Path, fingerprint: str) -> dict:
    """Entries of an earlier run into the same folder, by output path.

    A folder of outputs made with another key is refused outright: resuming into it would
    skip its files and leave one folder marked with two keys under one summary.
    """
    if not summary_path.is_file():
        return {}
    try:
        before = json.loads(summary_path.read_text())
        entries = {e["output"]: e for e in before.get("images", [])}
        other = before.get("key_fingerprint")
    except (ValueError, KeyError, TypeError, AttributeError):
        report_error(f"{summary_path}: unreadable summary of an earlier run; starting a new one")
        return {}
    if other and other != fingerprint:
        raise ValueError(
            f"{summary_path.parent}: holds outputs made with another key (fingerprint {other}, "
            f"this key is {fingerprint}); choose another --out"
        )
    return entries


class _InputGuard:
    """Answers 'would writing here replace an input?', by path and by inode (hard links)."""

    def __init__(self, paths):
        self.paths, self.inodes = set(), set()
        for p in paths:
            self.paths.add(os.path.normcase(os.path.realpath(p)))
            try:
                st = os.stat(p)
                self.inodes.add((st.st_dev, st.st_ino))
            except OSError:
                pass  # a missing input is reported when it is loaded

    def covers(self, dst: Path) -> bool:
        if os.path.normcase(os.path.realpath(dst)) in self.paths:
            return True
        try:
            st = os.stat(dst)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self.inodes


# ---- the mark, optionally within a perceptual budget ----------------------------------------


class _Mark:
    """fn for apply_to_pil: the key's mark at the watermarker's strength."""

    def __init__(self, watermarker, key):
        self.watermarker, self.key = watermarker, key

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.watermarker.watermark_array(rgb, self.key)

    def last_report(self) -> dict:
        return {}


class _BudgetedMark(_Mark):
    """The mark scaled down per photo until its perceptual distance is within the budget.

    Perceptual distances of small perturbations grow about quadratically with the
    perturbation, so strength s at distance d > P becomes s * sqrt(P / d). The distance is
    measured again after each step, since the rule is only approximate; later steps aim 2%
    under P, so that a distance creeping down onto P from above still ends within it.
    """

    def __init__(self, watermarker, key, budget: float, perceptual):
        super().__init__(watermarker, key)
        self.budget, self.perceptual = float(budget), perceptual
        self.report = {}

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        pattern = self.watermarker.pattern(rgb.shape[0], rgb.shape[1], self.key)
        reference = _perceptual_tensor(rgb)
        factor, notes = 1.0, []
        for attempt in range(BUDGET_ROUNDS + 1):
            marked = np.clip(rgb + factor * pattern, 0.0, 1.0)
            distance = _distance(self.perceptual, reference, _perceptual_tensor(marked))
            if distance <= self.budget:
                break
            if attempt == BUDGET_ROUNDS:
                notes.append(f"perceptual budget {self.budget:g} not reached (distance {distance:.4g})")
                break
            target = self.budget if attempt == 0 else BUDGET_MARGIN * self.budget
            factor *= math.sqrt(target / distance)
        self.report = {"strength": self.watermarker.strength * factor, "perceptual_distance": distance, "notes": notes}
        return marked

    def last_report(self) -> dict:
        report, self.report = self.report, {}
        return report


def _mark_function(watermarker, key, budget, perceptual):
    if budget is None:
        return _Mark(watermarker, key)
    if perceptual is None:
        raise ValueError("a perceptual budget needs a perceptual model (genwm.perceptual.load_perceptual)")
    return _BudgetedMark(watermarker, key, budget, perceptual)


def _perceptual_tensor(rgb: np.ndarray):
    """H x W x 3 in [0, 1] -> [1, 3, h, w] with the short side at most 512 (never enlarged)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    s = min(h, w) / PERCEPTUAL_SIZE
    if s > 1:
        x = F.interpolate(x, size=(max(1, round(h / s)), max(1, round(w / s))), mode="bilinear", antialias=True, align_corners=False)
    return x


def _distance(model, a, b) -> float:
    import torch

    with torch.no_grad():
        return float(model(a, b).reshape(-1)[0])


# ---- quality metrics ------------------------------------------------------------------------


def _comparable(img):
    """Pixels for PSNR/SSIM: 16-bit gray at 16 bits, everything else as 8-bit RGB."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I"):
        return np.asarray(img).astype(np.float64), 65535.0
    return np.asarray(img.convert("RGB")), 255.0


def _quality_metrics(before, after, lpips_model=None) -> dict:
    from genwm.perceptual import psnr, ssim

    a, data_range = _comparable(before)
    b, _ = _comparable(after)
    if a.shape != b.shape:
        return {"psnr": None, "ssim": None, "metrics_note": f"output shape {b.shape} differs from input {a.shape}"}
    out = {"psnr": psnr(a, b, data_range=data_range)}
    # SSIM's 7x7 window needs at least 7 pixels each way.
    out["ssim"] = ssim(a, b, data_range=data_range) if min(a.shape[:2]) >= 7 else None
    if lpips_model is not None:
        out["lpips"] = _distance(lpips_model, _perceptual_tensor(to_float_rgb(before)), _perceptual_tensor(to_float_rgb(after)))
    return out


def _lpips_if_available():
    """The real LPIPS (AlexNet) when its backbone file is here; None otherwise."""
    from genwm.perceptual import load_perceptual, real_lpips_available

    if not real_lpips_available():
        return None
    try:
        return load_perceptual("lpips-alex")
    except Exception as e:
        report_error(f"LPIPS: {' '.join(str(e).split())}; summary has no lpips values")
        return None


def _json_safe(obj):
    """Infinite or NaN floats (PSNR of identical images) as null: JSON has no Infinity."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


# ---- scan -----------------------------------------------------------------------------------


def scan_paths(inputs, detector, key, alpha: float = 0.01, progress: bool = False, null_keys: int = 0):
    """Score every photo under `inputs` for the key's watermark.

    -> (rows, verdict, errors): rows of path, probability, logit, above_threshold (None
    without calibration); the set-level verdict, or None when there is none to give (no
    calibration and no key test, or no photo could be read); errors as {"path", "error"} for
    files that were reported and skipped. The verdict is genwm.calibration.set_verdict's
    binomial test, or, for a located detector or with null_keys, the key test
    (genwm.calibration.key_test, which holds for images of one model too), the binomial one
    then beside it as "binomial".
    """
    from genwm.calibration import key_test, set_verdict, wants_key_test

    calibration = getattr(detector, "calibration", None) or None
    threshold = calibration["threshold"] if calibration else None
    by_keys = wants_key_test(detector, null_keys)
    read_keys = detector.key_reader(key, null_keys) if by_keys else None
    rows, errors, evidence = [], [], []
    for path, _ in _progress(find_images(inputs), progress):
        try:
            image = load_image(path).image
            if by_keys:
                evidence.append(read_keys(image))
            if by_keys and detector.config.located is not None:
                logit = detector.logit_of_key_evidence(evidence[-1])
            else:
                logit = float(detector.logits([image], key)[0])
        except Exception as e:
            errors.append({"path": str(path), "error": failure_reason(path, e)})
            report_error(errors[-1]["error"])
            continue
        rows.append(
            {
                "path": str(path),
                "probability": _sigmoid(logit),
                "logit": logit,
                "above_threshold": None if threshold is None else bool(logit >= threshold),
            }
        )
    if not rows:
        return rows, None, errors
    binomial = set_verdict(np.array([r["logit"] for r in rows]), calibration, alpha=alpha) if calibration else None
    if not by_keys:
        return rows, binomial and {"test": "binomial", **binomial}, errors
    return rows, {"test": "key", **key_test(np.stack(evidence), alpha, covariates=detector.key_covariates), "binomial": binomial}, errors


def _sigmoid(x: float) -> float:
    from scipy.special import expit

    return float(expit(x))

"""Benchmark: is a *model* found, with a false-positive rate that holds? The key test per model.

    python scripts/bench_key_test.py runs/bench-v4/subject0{0,1,2,3,4}/genwm/work \
        --out docs/results/key_test

Every image folder a demo work folder holds is the output of one personalized model (clean- or
watermarked-trained; DreamBooth and LoRA; seeds 0, 1000, 2000, 3000). Each folder's images
all together are one suspect set, tested by the key test (genwm.calibration.key_test: the
set's mean evidence under the subject's key, ranked among 99 null keys) with three readings:
- "search": the phase-1 detector, searching every shift and scale (as for photos);
- "shift0": the phase-1 front end read where genwm drew the mark (scale 1, shift 0: the mini
  world's mimic trains at the photos' own size), the same place for every key: fixed before
  any generated image was seen;
- "row0": the same, every shift of the tile's first row weighed alike: the models draw the
  mark smeared along that row (seen on subject 0's fine-tuning models, docs/BENCHMARKS.md),
  so this reading was chosen after looking at those, not at any test model;
- "shift0-offaxis": shift0 with the template's on-axis frequencies (no vertical or no
  horizontal variation) left out, where model-to-model texture lives
  (scripts/bench_model_texture.py);
- "located": phase 2's detector of that subject, read where it located the mark (and each null
  key where it was located for that key). The fine-tuning models' own folders are fitted, not
  tested: they are listed apart ("fitted") and left out of this reading's rates, and row0's.
With --condition, each reading is also tested conditioned on what the subject's clean photos
and the base model's own images (DreamBooth's class images) read under each key
("<reading>+cond"): genwm.calibration.key_test's covariates, as phase 2 stores them
(genwm.protect.key_test_covariates).
Under no watermark a test's p-value is uniform over the clean models, so the rates below are
what a user would see: detected watermarked models (TPR) and clean ones (FPR) at alpha.
Writes results.json (every folder's p-values) and pvalues.png (p per model, clean vs marked).
"""
import argparse
import json
import os
import platform
from datetime import date
from pathlib import Path

import numpy as np
import torch

from genwm import atomic
from genwm.calibration import key_statistics, rank_p_value
from genwm.evaluate import folder_key_evidence
from genwm.models import Detector
from genwm.protect import key_test_covariates


class OffAxisDetector(Detector):
    """Reads only the template's frequencies that vary both vertically and horizontally."""

    @staticmethod
    def template_spectrum(templates: torch.Tensor) -> torch.Tensor:
        spectrum = Detector.template_spectrum(templates).clone()
        spectrum[..., 0, :] = 0
        spectrum[..., :, 0] = 0
        return spectrum


READINGS = ("search", "shift0", "row0", "shift0-offaxis", "located")


def fixed_place_reader(checkpoint, n_null: int, shifts: list[int], cls=Detector) -> Detector:
    """The phase-1 front end reading, for every key alike, the given shifts of the tile at scale 1."""
    loaded = Detector.from_pretrained(checkpoint)
    d = cls(loaded.config)
    d.load_state_dict(loaded.state_dict())
    weights = torch.zeros(d.config.tile**2)
    weights[shifts] = 1.0
    d.set_located(1.0, weights.tolist(), [1.0] * n_null, weights.expand(n_null, -1))
    return d.eval()


def model_folders(work: Path) -> list[tuple[Path, str]]:
    """(folder, side) for each personalized model's images (not the seed-reference sets)."""
    out = []
    for folder in sorted((work / "images").iterdir()):
        record = json.loads((folder / "synthesis.json").read_text())
        side = "watermarked" if "-watermarked-" in folder.name else "clean"
        if not folder.name.startswith("reference-") and record.get("images"):
            out.append((folder, side))
    return out


def fitted_folders(work: Path) -> set[str]:
    metadata = json.loads((work / "detector" / "config.json").read_text())["metadata"]
    return {Path(p["dir"]).name for side in ("clean", "watermarked") for p in metadata["provenance"][side]}


FITTED_ON_SEED0 = ("located", "row0")  # readings chosen with the fine-tuning (seed-0) models' images


def tested(rows: list[dict], reading: str) -> list[dict]:
    return [r for r in rows if not (reading.removesuffix("+cond") in FITTED_ON_SEED0 and r["fitted"])]


def rates(rows: list[dict], reading: str, alpha: float) -> dict:
    out = {}
    for side, name in (("watermarked", "tpr"), ("clean", "fpr")):
        ps = [r["p"][reading] for r in tested(rows, reading) if r["side"] == side]
        out[name] = float(np.mean([p <= alpha for p in ps])) if ps else None
        out[f"{name}_at_0.05"] = float(np.mean([p <= 0.05 for p in ps])) if ps else None
        out[f"n_{side}_models"] = len(ps)
        out[f"median_p_{side}"] = float(np.median(ps)) if ps else None
    return out


def every_key_fpr(rows: list[dict], reading: str, alphas) -> dict:
    """Each of the 1 + n keys in turn taken for the subject's, ranked among the others on each
    tested clean model: the share of those models it would flag, per key. Its mean is alpha by
    construction; its spread over keys is what one subject owner, with one key, can meet (the
    clean models of one subject, or of one base model, flag a key together)."""
    stats = np.stack([r["statistics"][reading] for r in tested(rows, reading) if r["side"] == "clean"])  # [models, keys]
    n_keys = stats.shape[1]
    p = (stats[:, None, :] >= stats[:, :, None]).sum(-1) / n_keys  # p[m, j]: key j ranked among all keys on model m
    out = {}
    for alpha in alphas:
        fpr = (p <= alpha).mean(axis=0)
        out[str(alpha)] = {"mean": float(fpr.mean()), "median": float(np.median(fpr)), "q90": float(np.quantile(fpr, 0.9)), "q99": float(np.quantile(fpr, 0.99)), "max": float(fpr.max()), "n_clean_models": len(stats)}
    return out


def plot(rows: list[dict], readings: list[str], path: Path, alpha: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    for i, reading in enumerate(readings):
        for j, (side, colour) in enumerate((("clean", "tab:blue"), ("watermarked", "tab:red"))):
            ps = [r["p"][reading] for r in tested(rows, reading) if r["side"] == side]
            x = i * 3 + j + rng.uniform(-0.25, 0.25, len(ps))
            ax.scatter(x, ps, s=14, color=colour, label=f"{side}-trained models" if i == 0 else None)
    ax.axhline(alpha, color="k", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xticks([i * 3 + 0.5 for i in range(len(readings))], readings)
    ax.set(ylabel="key test p-value (one model's images)", title=f"Each model's images as one set ({alpha:g}: dotted)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic.write_bytes(path, buf.getvalue())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("works", type=Path, nargs="+", help="demo work folders (out/work of `genwm demo`)")
    ap.add_argument("--checkpoint", default="checkpoints/genwm-mini", help="the phase-1 checkpoint")
    ap.add_argument("--key", default="genwm-demo-key")
    ap.add_argument("--null-keys", type=int, default=99)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--out", type=Path, default=Path("docs/results/key_test"))
    ap.add_argument("--readings", nargs="+", choices=READINGS, default=list(READINGS), help="which readings (default: all)")
    ap.add_argument("--condition", action="store_true", help="also test each reading conditioned on the subject's photos and the base model's images")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    tile = Detector.from_pretrained(args.checkpoint).config.tile
    make = {
        "search": lambda: Detector.from_pretrained(args.checkpoint).eval(),
        "shift0": lambda: fixed_place_reader(args.checkpoint, args.null_keys, [0]),
        "row0": lambda: fixed_place_reader(args.checkpoint, args.null_keys, list(range(tile))),
        "shift0-offaxis": lambda: fixed_place_reader(args.checkpoint, args.null_keys, [0], OffAxisDetector),
    }
    readers = {name: make[name]() for name in args.readings if name != "located"}
    rows = []
    for work in args.works:
        if "located" in args.readings:
            readers["located"] = Detector.from_pretrained(work / "detector").eval()
        fitted = fitted_folders(work)
        folders = model_folders(work)
        evidence = {name: [folder_key_evidence(d, folder, args.key, args.null_keys) for folder, _ in folders] for name, d in readers.items()}
        if args.condition:
            sources = key_test_covariates(work, [folder for folder, side in folders if side == "clean" and folder.name in fitted])
            covariates = {name: {c: folder_key_evidence(d, src, args.key, args.null_keys).mean(axis=0) for c, src in sources.items()} for name, d in readers.items()}
            # How the photos and the base model's images themselves rank the key (no model involved)
            print(json.dumps({"work": str(work), "covariates_rank_p": {name: {c: rank_p_value(v[0], v[1:]) for c, v in cov.items()} for name, cov in covariates.items()}}), flush=True)
        for i, (folder, side) in enumerate(folders):
            statistics = {name: key_statistics(es[i]) for name, es in evidence.items()}
            if args.condition:
                statistics.update({f"{name}+cond": key_statistics(es[i], covariates[name]) for name, es in evidence.items()})
            p = {name: rank_p_value(v[0], v[1:]) for name, v in statistics.items()}
            rows.append({"work": str(work), "model": folder.name, "side": side, "fitted": folder.name in fitted, "p": p})
            if args.condition:  # how far the model's images read every key as the photos or the base model's images do
                rows[-1]["correlation_over_keys"] = {name: {c: float(np.corrcoef(evidence[name][i].mean(axis=0), v)[0, 1]) for c, v in cov.items()} for name, cov in covariates.items()}
            print(json.dumps(rows[-1]), flush=True)
            rows[-1]["statistics"] = statistics  # for every_key_fpr; not written
    readings = [name + suffix for suffix in ("", "+cond") for name in READINGS if name in readers and (suffix == "" or args.condition)]
    summary = {reading: {**rates(rows, reading, args.alpha), "every_key": every_key_fpr(rows, reading, (args.alpha, 0.05))} for reading in readings}
    for reading, r in summary.items():
        print(f"{reading:15s} at {args.alpha:g}: TPR {r['tpr']:.2f} of {r['n_watermarked_models']} watermarked models, FPR {r['fpr']:.2f} of {r['n_clean_models']} clean; "
              f"at 0.05: {r['tpr_at_0.05']:.2f}, {r['fpr_at_0.05']:.2f}; median p {r['median_p_watermarked']:.3f} / {r['median_p_clean']:.3f}")
        for alpha, e in r["every_key"].items():
            print(f"{'':15s} any key as the subject's, FPR at {alpha}: mean {e['mean']:.3f}, median {e['median']:.3f}, 90th percentile {e['q90']:.3f}, 99th {e['q99']:.3f}, max {e['max']:.3f}")
    for row in rows:
        row.pop("statistics")
    record = {
        "command": "python scripts/bench_key_test.py " + " ".join(str(w) for w in args.works) + f" --checkpoint {args.checkpoint} --null-keys {args.null_keys} --alpha {args.alpha} --readings {' '.join(args.readings)}{' --condition' if args.condition else ''} --out {args.out}",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "alpha": args.alpha,
        "null_keys": args.null_keys,
        "summary": summary,
        "models": rows,
    }
    atomic.write_json(args.out / "results.json", record)
    plot(rows, readings, args.out / "pvalues.png", args.alpha)


if __name__ == "__main__":
    main()

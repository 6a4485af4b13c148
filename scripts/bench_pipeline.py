"""Benchmark: GenWatermark end to end in the mini world, over several held-out subjects.

    python scripts/bench_pipeline.py --subjects 0 1 2 3 4 --out runs/bench-pipeline \
        --table docs/results/bench_pipeline

For each subject, in one work folder per variant:
- "genwm": `genwm demo` (configs/demo.yaml): phase-1 detector alone and after phase 2, matched
  (known) and unknown method and prompts, the no-watermark control, sets of 8, image quality;
- "genwm-partial": the same with 1/4 of the subject's photos watermarked;
- "genwm-rows": the same with the row-constant mark (configs/demo-rows.yaml);
- "genwm-profile": the same with a row-constant mark one image high (configs/demo-profile.yaml);
- "genwm-profile-strong": the profile at 1.1 times its strength (configs/demo-profile-strong.yaml);
- "genwm-profile-rowmeans": the profile mark read from row means (configs/demo-profile-rowmeans.yaml);
- "genwm-profile-2test", "genwm-profile-rowmeans-2test": those two tested on two models a side
  (configs/demo-profile-2test.yaml, configs/demo-profile-rowmeans-2test.yaml);
- "genwm-profile-band", "genwm-profile-band-2test": the profile mark at 5-14 cycles per image
  height only, tested on one and on two models a side (configs/demo-profile-band.yaml,
  configs/demo-profile-band-2test.yaml);
- "genwm-rows-partial", "genwm-profile-partial": those marks on 1/4 of the subject's photos;
- "dwtDct", "rivaGan": invisible-watermark's marks (a 32-bit message from the key) through the
  same personalization and synthesis; scored by the fraction of the message their decoder
  recovers from each generated image (they have no phase 2), and put to genwm's key test with
  that fraction as the evidence: the model's mean for the key's message ranked among 999 null
  messages' (each a SHA-256 of the key and a number, so as random as the key's own). The
  package refuses images under 256 px: the 64-px photos are marked on a copy enlarged 4x and
  shrunk back, and images are enlarged 4x to decode.
Models trained on the clean photos do not depend on the variant: every variant links the clean
models and images of the first genwm variant it runs ("genwm" where it is one of them) instead
of training them again. A variant that only reads another's mark differently (SAME_MARK) links
all of that variant's models and images where its work folder exists, watermarked ones too:
the same G marks the photos the same, which each personalization's request (the hashes of its
training images) checks before a model is reused.

--seeds shared gives every subject the config's model seeds, and so the same synthesis seeds:
image i of every subject's seed-s model starts from the same noise, and the subjects' readings
of it correlate (scripts/bench_shared_nuisance.py), so their results are not independent
replicates. per-subject (the default) adds 10 * subject to each seed.
"""
import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

from genwm import atomic
from genwm.demo import DEFAULT_CONFIG, load_demo_config, protect_config_for, run_demo, shown_path, write_subject

BASELINES = ("dwtDct", "rivaGan")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VARIANT_CONFIGS = {
    "genwm-rows": CONFIGS / "demo-rows.yaml",
    "genwm-profile": CONFIGS / "demo-profile.yaml",
    "genwm-profile-strong": CONFIGS / "demo-profile-strong.yaml",
    "genwm-profile-rowmeans": CONFIGS / "demo-profile-rowmeans.yaml",
    "genwm-profile-2test": CONFIGS / "demo-profile-2test.yaml",
    "genwm-profile-rowmeans-2test": CONFIGS / "demo-profile-rowmeans-2test.yaml",
    "genwm-profile-band": CONFIGS / "demo-profile-band.yaml",
    "genwm-profile-band-2test": CONFIGS / "demo-profile-band-2test.yaml",
    "genwm-profile-band-rings-2test": CONFIGS / "demo-profile-band-rings-2test.yaml",
}
# variant -> the variant whose G (and so marked photos) it shares, and whose models it links
SAME_MARK = {"genwm-profile-rowmeans": "genwm-profile", "genwm-profile-2test": "genwm-profile", "genwm-profile-rowmeans-2test": "genwm-profile-2test",
             "genwm-profile-band-2test": "genwm-profile-band", "genwm-profile-band-rings-2test": "genwm-profile-band-2test"}
PARTIAL = 0.25
NULL_MESSAGES = 999  # the baselines' key test: its smallest p is 1 / (1 + this)


def variant_setting(variant: str, default_config) -> tuple:
    """(demo config, fraction of the photos watermarked or None) of a genwm variant."""
    mark = variant.removesuffix("-partial")
    return VARIANT_CONFIGS.get(mark, default_config), (PARTIAL if variant.endswith("-partial") else None)


class BaselineWatermarker:
    """invisible-watermark behind genwm.protect's watermarker interface; the key's message is
    its SHA-256's first 32 bits."""

    def __init__(self, method: str):
        from genwm.baselines import InvisibleWatermark

        self.mark = InvisibleWatermark(method, enlarge_small=True)
        self.strength = 1.0
        self.config = {"generator": {"invisible-watermark": method}}
        self.messages = {}  # (key, n_null) -> the key's message and the null ones, made once

    def watermark(self, img, key):
        return self.mark.embed(img, self.mark.message_for(key))

    def score(self, path, key) -> float:
        return float(self.evidence(path, key, 0)[0])

    def evidence(self, path, key, n_null: int = NULL_MESSAGES) -> np.ndarray:
        """[1 + n_null]: the fraction of the key's message and of each null message that the
        decoder recovers from the image at path (one decoding)."""
        from PIL import Image

        if (key, n_null) not in self.messages:
            self.messages[key, n_null] = [self.mark.message_for(key)] + [self.mark.message_for(f"{key}\0null{i}") for i in range(n_null)]
        return self.mark.bit_accuracy(Image.open(path), self.messages[key, n_null])


def same_mark_source(variant: str) -> str | None:
    """The variant whose marked photos `variant`'s are (SAME_MARK, -partial kept), or None."""
    mark, partial = variant.removesuffix("-partial"), variant.endswith("-partial")
    return SAME_MARK[mark] + ("-partial" if partial else "") if mark in SAME_MARK else None


def link_models(source_work: Path, work: Path, sides: tuple = ("clean",)) -> None:
    """Share the models and images of another run of the same subject: those of the clean
    photos, and with sides=("clean", "watermarked") all of them."""
    for kind in ("models", "images"):
        (work / kind).mkdir(parents=True, exist_ok=True)
        shared = [d for side in sides for d in sorted((source_work / kind).glob(f"*-{side}-*"))]
        for d in shared + sorted((source_work / kind).glob("class_images-*")) + sorted((source_work / kind).glob("reference-*")):
            target = work / kind / d.name
            if not target.exists():
                os.symlink(d.resolve(), target)


def baseline_run(method: str, subject: int, demo: dict, config_path, work: Path, key: str, progress: bool, seeds: list[int] | None = None) -> dict:
    """Watermark with the baseline, personalize (known test seeds only), decode from S and S_w."""
    from genwm.calibration import key_test
    from genwm.demo import pair_quality
    from genwm.evaluate import detection_metrics
    from genwm.protect import SIDES, generated_images, watermark_subject

    config = protect_config_for(config_path, subject, {"progress": progress, "prompts": demo["prompts"], "seeds": seeds})
    photos = write_subject(subject, demo.get("n_subject_images", 8), work.parent / "photos", demo.get("resolution", 64))
    wm = BaselineWatermarker(method)
    record = watermark_subject(photos, work / "subject", wm, key, config.fraction, config.watermark_seed, progress)
    marked = [im["file"] for im in record["images"] if im["watermarked"]]
    quality = pair_quality((work / "subject" / "clean" / f, work / "subject" / "watermarked" / f) for f in marked)
    subject_bits = np.mean([wm.score(work / "subject" / "watermarked" / f, key) for f in marked])
    evidence = {side: [] for side in SIDES}  # one [images, 1 + null messages] a model
    for m in config.methods:
        for s in config.seeds:
            for side in SIDES:
                folder = generated_images(work, demo["model"], config, m, side, s + 1000, Path(demo["prompts"]), "seen")
                evidence[side].append(np.stack([wm.evidence(p, key) for p in sorted(folder.glob("*.png"))]))
    scores = {side: np.concatenate(v)[:, 0] for side, v in evidence.items()}
    metrics = detection_metrics(scores["clean"] - 0.5, scores["watermarked"] - 0.5)
    set_size = demo.get("set_size", 8)
    sets = {side: [key_test(e[i : i + set_size])["watermark_detected"] for e in v for i in range(0, len(e) - set_size + 1, set_size)] for side, v in evidence.items()}
    return {"method": method, "subject_psnr": quality["psnr"], "subject_ssim": quality["ssim"], "bit_accuracy_on_subject": float(subject_bits),
            "bit_accuracy_generated": {side: float(np.mean(v)) for side, v in scores.items()},
            "known": {k: metrics[k] for k in ("accuracy", "roc_auc", "tpr_at_1pct_fpr", "n_clean", "n_watermarked")},
            "key_test": {"n_null_messages": NULL_MESSAGES, **{f"model_p_{side}": [key_test(e)["p_value"] for e in v] for side, v in evidence.items()},
                         "sets_tpr": float(np.mean(sets["watermarked"])), "sets_fpr": float(np.mean(sets["clean"]))}}


def summarize(rows: list[dict]) -> dict:
    """Mean and min over subjects of each number."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values and all(isinstance(v, (int, float)) for v in values):
            out[key] = {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)), "n": len(values)}
    return out


def flat(report: dict) -> dict:
    r, q = report["results"], report["quality"]
    row = {}
    for name in ("phase1_only_known", "known", "unknown", "control"):
        for k in ("accuracy", "roc_auc", "tpr_at_1pct_fpr"):
            if name in r:
                row[f"{name}.{k}"] = r[name][k]
    for name in ("known", "unknown"):
        if name in r:
            row[f"{name}.sets8_tpr"] = r[name]["sets"]["tpr"]
            row[f"{name}.sets8_fpr"] = r[name]["sets"]["fpr"]
    # The key test (genwm.calibration.key_test): sets of 8 of one model, and each test model's
    # images all together (p-value of its whole set).
    for name in ("phase1_only_known", "known", "unknown", "control"):
        keys = (r.get(name) or {}).get("key_test") or {}
        if "models" in keys:
            row[f"{name}.auc_null_keys_median"] = keys["per_image_auc_by_key"]["null_median"]
            row[f"{name}.auc_key_rank_p"] = keys["per_image_auc_by_key"]["rank_p"]
            row[f"{name}.keytest_sets_tpr"] = keys["tpr"]
            row[f"{name}.keytest_sets_fpr"] = keys["fpr"]
            for side in ("clean", "watermarked"):
                row[f"{name}.keytest_model_p_{side}"] = [m["p_value"] for m in keys["models"] if m["side"] == side]
    row["control.passed"] = float(r["control"]["passed"]) if "control" in r else None
    row["subject_psnr"] = q["subject_watermarked_vs_clean"]["psnr"]
    row["subject_ssim"] = q["subject_watermarked_vs_clean"]["ssim"]
    row["generated_wm_vs_clean_psnr"] = float(np.mean([x["psnr"] for x in q["generated_watermarked_model_vs_clean_model"]]))
    row["generated_clean_vs_clean_other_seed_psnr"] = q["generated_clean_model_vs_clean_model_other_seed"]["psnr"]
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--variants", nargs="+", default=["genwm", "genwm-partial", *BASELINES])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--out", default="runs/bench-pipeline")
    ap.add_argument("--table", default="docs/results/bench_pipeline")
    ap.add_argument("--seeds", choices=("per-subject", "shared"), default="per-subject", help="model (and so synthesis) seeds: the config's plus 10 * subject, or the config's for every subject (see above)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    demo = load_demo_config(args.config)
    key = demo.get("key", "genwm-demo-key")
    out = Path(args.out)
    results = {v: [] for v in args.variants}
    # The clean-photo models do not depend on the mark: the first genwm variant run trains them
    # and the others link them (every genwm config personalizes alike).
    clean_source = "genwm" if "genwm" in args.variants else next((v for v in args.variants if v.startswith("genwm")), "genwm")
    started = time.time()
    for subject in args.subjects:
        base = out / f"subject{subject:02d}"
        for variant in args.variants:
            t = time.time()
            work = base / variant
            same = same_mark_source(variant)
            if same and (base / same / "work" / "models").is_dir():
                link_models(base / same / "work", work / "work", sides=("clean", "watermarked"))
            elif variant != clean_source:
                link_models(base / clean_source / "work", work / "work" if variant.startswith("genwm") else work)
            config, fraction = variant_setting(variant, args.config) if variant.startswith("genwm") else (args.config, None)
            seeds = [s + 10 * subject for s in protect_config_for(config, subject, {}).seeds] if args.seeds == "per-subject" else None
            if variant.startswith("genwm"):
                report = run_demo(work, config, subject_index=subject, fraction=fraction, key=key, progress=not args.quiet, seeds=seeds)
                row = flat(report)
            else:
                row = baseline_run(variant, subject, demo, args.config, work, key, not args.quiet, seeds)
            row.update(subject=subject, seconds=round(time.time() - t))
            results[variant].append(row)
            print(json.dumps({"variant": variant, **row}), flush=True)
            record = {
                "command": "python scripts/bench_pipeline.py " + " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else shown_path(v) if k == 'config' else v}" for k, v in vars(args).items() if k != "quiet"),
                "date": date.today().isoformat(),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                "seconds": round(time.time() - started),
                "per_subject": results,
                "summary": {v: summarize([_numbers(r) for r in rows]) for v, rows in results.items() if rows},
            }
            atomic.write_json(Path(args.table) / "results.json", record)


def _numbers(row: dict) -> dict:
    flat_row = {}
    for k, v in row.items():
        if isinstance(v, dict):
            flat_row.update({f"{k}.{kk}": vv for kk, vv in v.items() if isinstance(vv, (int, float))})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat_row[k] = v
    return flat_row


if __name__ == "__main__":
    main()

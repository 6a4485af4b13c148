"""`genwm demo`: the whole GenWatermark pipeline on one held-out subject of the mini world.

    subject photos -> watermark (phase-1 checkpoint) -> DreamBooth / LoRA / Textual Inversion
    on the clean and on the watermarked copies -> synthesize -> phase-2 fine-tuning of D ->
    evaluation on images of independently trained models -> report

The work is genwm.protect and genwm.evaluate, unchanged: this module only draws the subject,
runs them, and measures what a reader of the report wants besides (the phase-1 detector
alone, set-level verdicts, image quality), then writes report.json, roc.png and grid.png.
"""
import json
from pathlib import Path

import numpy as np

from genwm import atomic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "demo.yaml"
QUICK_CONFIG = ROOT / "configs" / "demo-quick.yaml"
REPORT = "report.json"


def load_demo_config(path) -> dict:
    """The demo's own section (`demo:`); the rest of the file is a protect config."""
    from genwm.config_file import read_config_file

    data = read_config_file(path)
    demo = dict(data.get("demo") or {})
    demo["evaluate"] = dict(demo.get("evaluate") or {})
    # Paths are relative to the source tree, so the demo runs from any folder.
    for holder, k in ((demo, "model"), (demo, "checkpoint"), (demo["evaluate"], "unseen_prompts")):
        if holder.get(k):
            holder[k] = source_path(holder[k])
    prompts = (data.get("protect") or {}).get("prompts")
    demo["prompts"] = source_path(prompts) if prompts else None
    return demo


def source_path(path) -> str:
    path = Path(path)
    return str(path if path.is_absolute() else ROOT / path)


def shown_path(path) -> str:
    """A path for a report: relative to the source tree when inside it, so reports made on
    different machines compare; absolute otherwise."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_subject(subject_index: int, n: int, out: Path, size: int) -> Path:
    from PIL import Image

    from genwm.mini import world

    out.mkdir(parents=True, exist_ok=True)
    subject = world.subject(subject_index)
    for i, img in enumerate(subject.images(n, size=size)):
        path = out / f"{subject.name}-{i:02d}.png"
        if not path.exists():
            with atomic.atomic_path(path) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
    return out


def protect_config_for(config_path, subject_index: int, overrides: dict):
    """The protect config of the file, with the subject's class noun for DreamBooth and LoRA."""
    from genwm.mini import world
    from genwm.protect import load_protect_config

    noun = world.subject(subject_index).class_noun
    return load_protect_config(config_path, personalize={"common": {"class_noun": noun}}, other_sections=("demo",), **overrides)


def pair_quality(pairs) -> dict:
    """Mean PSNR / SSIM over (image, image) path pairs; identical pairs count as infinite PSNR
    and are left out of the mean."""
    from PIL import Image

    from genwm.perceptual import psnr, ssim

    ps, ss = [], []
    for a, b in pairs:
        x, y = np.asarray(Image.open(a).convert("RGB")), np.asarray(Image.open(b).convert("RGB"))
        ps.append(psnr(x, y))
        ss.append(ssim(x, y))
    finite = [p for p in ps if np.isfinite(p)]
    return {"n": len(ps), "psnr": float(np.mean(finite)) if finite else None, "ssim": float(np.mean(ss)) if ss else None}


def same_names(dir_a, dir_b) -> list[tuple[Path, Path]]:
    return [(a, Path(dir_b) / a.name) for a in sorted(Path(dir_a).glob("*.png")) if (Path(dir_b) / a.name).is_file()]


def _reference_images(work: Path, config, known: dict) -> Path:
    """The first fine-tuning clean model's images at the image seeds of the first test clean
    model: what a different training seed alone changes, the yardstick for the watermark's
    effect on generated images."""
    from genwm.protect import default_prompts, model_dir, synthesis_seed
    from genwm.synthesize import synthesize

    test = known["clean"][0]
    method, seed = config.methods[0], config.seeds[0]
    out = work / "images" / f"reference-{method}-clean-seed{seed}-as-seed{test['model_seed']}"
    prompts = Path(config.prompts) if config.prompts else default_prompts("seen")
    synthesize(model_dir(work, method, "clean", seed), prompts, test["n"], out, seed=synthesis_seed(test["model_seed"]), sampler=config.sampler, prompt_set="reference", progress=config.progress)
    return out


def set_level(clean_logits, marked_logits, calibration: dict, set_size: int, alpha: float = 0.01) -> dict:
    """Verdicts on disjoint sets of `set_size` images: TPR on watermarked-model sets, FPR on
    clean-model sets, each at the calibrated test of level alpha."""
    from genwm.calibration import set_verdict

    def rate(logits):
        logits = np.asarray(logits)
        sets = [logits[i : i + set_size] for i in range(0, len(logits) - set_size + 1, set_size)]
        hits = [set_verdict(s, calibration, alpha)["watermark_detected"] for s in sets]
        return (float(np.mean(hits)) if hits else None), len(hits)

    tpr, n_marked = rate(marked_logits)
    fpr, n_clean = rate(clean_logits)
    return {"set_size": set_size, "alpha": alpha, "tpr": tpr, "fpr": fpr, "n_watermarked_sets": n_marked, "n_clean_sets": n_clean}


def example_grid(rows: list[list[Path]], labels: list[str], path: Path, n: int = 6) -> None:
    """A PNG with one row per image folder (first n images), labelled on the left."""
    from PIL import Image, ImageDraw

    tiles = [[Image.open(p).convert("RGB") for p in row[:n]] for row in rows]
    side = max(im.width for row in tiles for im in row)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 8 + max(int(measure.textlength(label)) for label in labels)
    grid = Image.new("RGB", (label_w + n * (side + 2), len(rows) * (side + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (row, label) in enumerate(zip(tiles, labels)):
        draw.text((4, r * (side + 2) + side // 2 - 6), label, fill="black")
        for c, im in enumerate(row):
            grid.paste(im.resize((side, side)), (label_w + c * (side + 2), r * (side + 2)))
    with atomic.atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")


def run_demo(out, config_path=DEFAULT_CONFIG, subject_index: int | None = None, fraction: float | None = None, key: str | None = None, progress: bool = True, seeds: list[int] | None = None) -> dict:
    """The whole pipeline for one subject into `out`; -> the report (also out/report.json).
    seeds: the fine-tuning models' seeds instead of the config's (evaluation adds its offsets)."""
    from genwm.evaluate import EvaluateConfig, detection_metrics, evaluate_sets, run_evaluation
    from genwm.keys import key_fingerprint
    from genwm.models import Detector
    from genwm.protect import SIDES, protect

    demo = load_demo_config(config_path)
    subject_index = demo.get("subject", 0) if subject_index is None else subject_index
    key = key or demo.get("key", "genwm-demo-key")
    out = Path(out)
    photos = write_subject(subject_index, demo.get("n_subject_images", 8), out / "photos", demo.get("resolution", 64))
    overrides = {"progress": progress, "prompts": demo["prompts"]}
    if fraction is not None:
        overrides["fraction"] = fraction
    if seeds is not None:
        overrides["seeds"] = list(seeds)
    config = protect_config_for(config_path, subject_index, overrides)
    work = out / "work"
    record = protect(photos, key, demo["model"], demo["checkpoint"], work, config)

    ev = demo.get("evaluate") or {}
    set_size = demo.get("set_size", 8)
    offsets = {k: tuple(ev[k]) for k in ("test_seed_offsets", "control_seed_offsets") if ev.get(k)}
    evaluation = run_evaluation(work, key, EvaluateConfig(unknown_method=ev.get("unknown_method"), unseen_prompts=ev.get("unseen_prompts"), control=ev.get("control", True), n_images=ev.get("n_images"), set_size=set_size, **offsets))
    known = evaluation["settings"]["known"]["test_provenance"]
    dirs = {side: [p["dir"] for p in known[side]] for side in SIDES}

    # The phase-1 detector alone, on the same test images as the phase-2 detector.
    phase1 = evaluate_sets(demo["checkpoint"], key, dirs["clean"], dirs["watermarked"], "known", set_size=set_size)
    detector = Detector.from_pretrained(record["detector"])
    settings = evaluation["settings"]
    results = {
        name: {**{k: r["metrics"][k] for k in ("accuracy", "roc_auc", "tpr_at_1pct_fpr", "n_clean", "n_watermarked")},
               "sets": set_level(r["logits"]["clean"], r["logits"]["watermarked"], detector.calibration, set_size),
               "key_test": r["key_test"]}
        for name, r in settings.items() if name != "control"
    }
    if "control" in settings:
        c = settings["control"]
        results["control"] = {**{k: c["metrics"][k] for k in ("accuracy", "roc_auc", "tpr_at_1pct_fpr", "n_clean", "n_watermarked")}, "key_test": c["key_test"]}
        results["control"].update(passed=evaluation["control"]["passed"], band=evaluation["control"]["band"])
    p1 = phase1["metrics"]
    results["phase1_only_known"] = {**{k: p1[k] for k in ("accuracy", "roc_auc", "tpr_at_1pct_fpr", "n_clean", "n_watermarked")}, "key_test": phase1["key_test"]}

    subject_dir = work / "subject"
    marked = [im["file"] for im in json.loads((subject_dir / "watermark.json").read_text())["images"] if im["watermarked"]]
    quality = {
        "subject_watermarked_vs_clean": pair_quality((subject_dir / "clean" / f, subject_dir / "watermarked" / f) for f in marked),
        # Same prompts and image seeds: how much the watermark changed what the model makes,
        # against how much merely another training seed changes it.
        "generated_watermarked_model_vs_clean_model": [pair_quality(same_names(c, w)) for c, w in zip(dirs["clean"], dirs["watermarked"])],
        "generated_clean_model_vs_clean_model_other_seed": pair_quality(same_names(_reference_images(work, config, known), dirs["clean"][0])),
    }
    report = {
        "format": "genwm-demo",
        "version": 1,
        "subject": subject_index,
        "key_fingerprint": key_fingerprint(key),
        "config": shown_path(config_path),
        "model": shown_path(demo["model"]),
        "checkpoint": shown_path(demo["checkpoint"]),
        "watermark": record["watermark"],
        "methods": {"fine_tuning": evaluation["fine_tuning"]["methods"], "unknown": evaluation["test"]["unknown_method"]},
        "results": results,
        # where phase 2 found the mark in the generated images (None: it searched, not located)
        "location": (detector.checkpoint_config.get("metadata") or {}).get("location"),
        "quality": quality,
        "evaluation": str((work / "evaluation" / "evaluation.json").relative_to(out)),  # from this report's folder
        "scores_check": {"known_auc_recomputed": detection_metrics(settings["known"]["logits"]["clean"], settings["known"]["logits"]["watermarked"])["roc_auc"]},
    }
    rows = [sorted((subject_dir / "clean").glob("*.png")), sorted((subject_dir / "watermarked").glob("*.png")),
            sorted(Path(dirs["clean"][0]).glob("*.png")), sorted(Path(dirs["watermarked"][0]).glob("*.png"))]
    example_grid(rows, ["subject", "watermarked", "generated (clean model)", "generated (watermarked model)"], out / "grid.png")
    atomic.write_bytes(out / "roc.png", (work / "evaluation" / "roc.png").read_bytes())
    atomic.write_json(out / REPORT, report)
    return report

"""Phase 2: detector fine-tuning, calibration on held-out images, honest evaluation, partial
watermarking, and the whole protect -> evaluate pipeline on a tiny random SD model."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genwm.channel import ATTACKS
from genwm.checkpoint import save_checkpoint
from genwm.evaluate import detection_metrics, evaluate_sets, honesty_problems, write_report
from genwm.finetune import FinetuneConfig, finetune_detector
from genwm.keys import key_fingerprint
from genwm.models import Detector, DetectorConfig, GeneratorConfig

KEY = "correct horse battery staple"


def write_toy_set(directory, n, pattern=None, seed=0, size=32):
    """Smooth random images; with `pattern`, the same additive mark on each (separable)."""
    directory = Path(directory)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = (rng.uniform(0.2, 0.8, size=(4, 4, 3)) * 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR)) / 255.0
        if pattern is not None:
            img = img + pattern
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(directory / f"{i:03d}.png")
    return directory


def fake_synthesis(directory, method, model_seed, templates=("a photo of {identifier}",)):
    """The synthesis record genwm.synthesize would write, for provenance checks on toy sets."""
    files = sorted(p.name for p in Path(directory).glob("*.png"))
    record = {
        "format": "genwm-synthesis",
        "model": f"/models/{method}-seed{model_seed}",
        "personalization": {"method": method, "seed": model_seed, "base_model": "/base", "train_images": []},
        "prompt_set": "seen",
        "templates": list(templates),
        "identifier": "sks person",
        "images": [{"file": f, "seed": i} for i, f in enumerate(files)],
    }
    (Path(directory) / "synthesis.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(1)
    pattern = np.tile(rng.choice([-1.0, 1.0], size=(4, 4, 3)) * 0.08, (8, 8, 1))
    sets = {
        "clean": write_toy_set(root / "clean", 30, seed=2),
        "watermarked": write_toy_set(root / "watermarked", 30, pattern, seed=3),
        "test_clean": write_toy_set(root / "test_clean", 12, seed=4),
        "test_watermarked": write_toy_set(root / "test_watermarked", 12, pattern, seed=5),
    }
    fake_synthesis(sets["clean"], "lora", 0)
    fake_synthesis(sets["watermarked"], "lora", 0)
    fake_synthesis(sets["test_clean"], "lora", 1000)
    fake_synthesis(sets["test_watermarked"], "lora", 1000)
    torch.manual_seed(0)
    save_checkpoint(root / "base", detector=Detector(DetectorConfig(template=GeneratorConfig(tile=8, canonical_size=32).to_dict(), width=16)), metadata={"phase": 1})
    config = FinetuneConfig(epochs=15, batch_size=16, learning_rate=3e-3, channel=False, progress=False, accelerator="cpu")
    meta = finetune_detector(sets["clean"], sets["watermarked"], root / "base", root / "tuned", KEY, config)
    return root, sets, meta


def test_finetuning_on_separable_toy_data_raises_accuracy(toy):
    root, _, meta = toy
    before, after = meta["holdout_metrics_before"], meta["holdout_metrics_after"]
    # measured on the held-out pairs, never trained on
    assert before["accuracy"] <= 0.6
    assert after["accuracy"] >= 0.9 and after["roc_auc"] >= 0.95
    d = Detector.from_pretrained(root / "tuned")
    assert d.calibration is not None
    assert d.checkpoint_config["metadata"]["key_fingerprint"] == key_fingerprint(KEY)


def test_checkpoint_records_provenance_and_never_the_key(toy):
    root, sets, meta = toy
    text = (root / "tuned" / "config.json").read_text() + (root / "tuned" / "calibration.json").read_text()
    assert KEY not in text
    assert meta["base_detector"] == str((root / "base").resolve())
    assert meta["methods"] == ["lora"] and meta["model_seeds"] == [0]
    assert meta["counts"] == {"train_clean": 24, "holdout_clean": 6, "train_watermarked": 24, "holdout_watermarked": 6}
    assert (root / "tuned" / "model.safetensors").is_file()


def test_calibration_null_comes_only_from_held_out_clean_images(toy):
    root, sets, meta = toy
    cal = json.loads((root / "tuned" / "calibration.json").read_text())
    held = set(meta["holdout"]["clean"])
    assert set(cal["null_images"]) == held
    assert len(cal["null_logits"]) == len(held) * len(ATTACKS)
    # the held-out files are a subset of S, and none of S_w
    assert all(Path(f).parent == sets["clean"] for f in held)
    assert cal["key_fingerprint"] == key_fingerprint(KEY)


def test_detection_metrics():
    m = detection_metrics([-3.0, -2.0, -1.0, -0.5], [0.5, 1.0, 2.0, 3.0])
    assert m["accuracy"] == 1.0 and m["roc_auc"] == 1.0 and m["tpr_at_1pct_fpr"] == 1.0
    m = detection_metrics([-1.0, 1.5, 0.2, 0.1], [0.3, -2.0, 2.0, 1.0])
    assert m["roc_auc"] == pytest.approx(10 / 16)
    assert m["accuracy"] == pytest.approx(4 / 8)  # logit > 0: 1 of 4 clean right, 3 of 4 marked
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.25)  # at FPR 0 only the score 2.0 clears 1.5
    rng = np.random.default_rng(0)
    m = detection_metrics(rng.normal(size=2000), rng.normal(size=2000))
    assert abs(m["roc_auc"] - 0.5) < 3 * m["auc_null_se"]


def test_honesty_problems_flag_shared_models_seeds_methods_and_prompts():
    def prov(d, method, seed, templates=("a photo of {identifier}",)):
        return {"dir": d, "synthesis": True, "model": f"/m/{method}-{seed}", "method": method, "model_seed": seed, "templates": list(templates)}

    meta = {"provenance": {"clean": [prov("/i/c0", "lora", 0)], "watermarked": [prov("/i/w0", "lora", 0)]}}
    assert honesty_problems(meta, [prov("/i/c1", "lora", 1000)], "known") == []
    assert any("seed 0" in p for p in honesty_problems(meta, [prov("/i/c9", "lora", 0)], "known"))
    assert any("very images" in p for p in honesty_problems(meta, [prov("/i/c0", "lora", 1000)], "known"))
    unknown = honesty_problems(meta, [prov("/i/u1", "lora", 1000)], "unknown")
    assert any("method lora" in p for p in unknown) and any("unseen prompts" in p for p in unknown)
    assert honesty_problems(meta, [prov("/i/u1", "textual-inversion", 1000, ["a sketch of {identifier}"])], "unknown") == []
    assert any("no synthesis.json" in p for p in honesty_problems(meta, [{"dir": "/x", "synthesis": False}], "known"))
    assert honesty_problems({}, [prov("/i/c0", "lora", 0)], "known") == []  # a phase-1 detector saw no model


def test_evaluate_sets_checks_provenance_and_writes_report(toy, tmp_path):
    root, sets, _ = toy
    result = evaluate_sets(root / "tuned", KEY, sets["test_clean"], sets["test_watermarked"], "known")
    assert result["honest"] and result["metrics"]["roc_auc"] >= 0.9
    assert result["metrics"]["calibrated"]["verdict_watermarked_set"]["watermark_detected"]
    assert not result["metrics"]["calibrated"]["verdict_clean_set"]["watermark_detected"]
    with pytest.raises(ValueError, match="not an honest test"):  # the fine-tuning images themselves
        evaluate_sets(root / "tuned", KEY, sets["clean"], sets["watermarked"], "known")
    with pytest.raises(ValueError, match="fine-tuned for key"):
        evaluate_sets(root / "tuned", "another key", sets["test_clean"], sets["test_watermarked"])
    # Its front end was trained for the key, so null keys would not be read alike: no key test.
    with_sets = evaluate_sets(root / "tuned", KEY, sets["test_clean"], sets["test_watermarked"], "known", set_size=4)
    assert "phase 2 trained this detector's front end" in with_sets["key_test"]["not_run"]
    write_report({"settings": {"known": result}}, tmp_path / "report", "known")
    assert (tmp_path / "report" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report" / "evaluation.json").read_text())["settings"]["known"]["honest"]


def test_partial_watermarking_marks_only_the_chosen_fraction(tmp_path):
    from tiny_sd import make_subject_images, save_tiny_phase1

    from genwm.protect import watermark_subject
    from genwm.watermarker import Watermarker

    subject = make_subject_images(tmp_path / "photos", n=8, size=24)
    wm = Watermarker.from_pretrained(save_tiny_phase1(tmp_path / "phase1"), key=KEY)
    record = watermark_subject(subject, tmp_path / "subject", wm, KEY, fraction=0.25, seed=0, progress=False)
    assert record["n_watermarked"] == 2
    for im in record["images"]:
        clean = np.asarray(Image.open(tmp_path / "subject" / "clean" / im["file"]), dtype=int)
        marked = np.asarray(Image.open(tmp_path / "subject" / "watermarked" / im["file"]), dtype=int)
        assert (np.abs(clean - marked).max() > 0) == im["watermarked"]
    again = watermark_subject(subject, tmp_path / "subject", wm, KEY, fraction=0.25, seed=0, progress=False)
    assert again == record  # reused, not redone


def test_protect_then_evaluate_end_to_end(tmp_path):
    """The whole pipeline on a tiny random SD: LoRA models make S and S_w, TI is the unknown
    method, plus the no-watermark control. Tiny and random, so only the plumbing and the
    protocol are checked here, not detection quality."""
    from tiny_sd import make_subject_images, save_tiny_phase1, save_tiny_pipeline

    from genwm.evaluate import EvaluateConfig, run_evaluation
    from genwm.protect import load_protect_config, protect

    base = save_tiny_pipeline(tmp_path / "sd")
    subject = make_subject_images(tmp_path / "photos", n=4, size=24)
    phase1 = save_tiny_phase1(tmp_path / "phase1")
    config = load_protect_config(
        methods=["lora"],
        n_images=6,
        fraction=0.5,
        progress=False,
        synthesis={"num_inference_steps": 2, "batch_size": 6, "device": "cpu"},
        finetune={"epochs": 1, "batch_size": 8, "accelerator": "cpu", "progress": False},
        personalize={"common": {"max_train_steps": 2, "accelerator": "cpu", "train_batch_size": 2}, "textual-inversion": {"learning_rate": 1e-2}},
    )
    work = tmp_path / "work"
    record = protect(subject, KEY, base, phase1, work, config)
    assert record["watermark"]["n_watermarked"] == 2
    detector = Detector.from_pretrained(record["detector"])
    meta = detector.checkpoint_config["metadata"]
    assert meta["methods"] == ["lora"] and meta["model_seeds"] == [0]
    assert detector.calibration["key_fingerprint"] == key_fingerprint(KEY)
    assert sorted(p.name for p in (work / "models").iterdir() if not p.name.startswith("class_images")) == ["lora-clean-seed0", "lora-watermarked-seed0"]

    report = run_evaluation(work, KEY, EvaluateConfig(unknown_method="textual-inversion"))
    assert set(report["settings"]) == {"known", "unknown", "control"}
    assert all(r["honest"] for r in report["settings"].values())
    unknown = report["settings"]["unknown"]["test_provenance"]
    assert {p["method"] for p in unknown["clean"] + unknown["watermarked"]} == {"textual-inversion"}
    assert {p["prompt_set"] for p in unknown["clean"]} == {"unseen"}
    assert {p["model_seed"] for p in report["settings"]["known"]["test_provenance"]["clean"]} == {1000}
    assert report["test"]["control_seeds"] == {"fine_tuning": [2000], "test": [3000]}
    # The control never saw a watermark: both of its sides come from clean-trained models.
    control = Detector.from_pretrained(work / "evaluation" / "control_detector").checkpoint_config["metadata"]
    assert all("-clean-" in p["dir"] for side in ("clean", "watermarked") for p in control["provenance"][side])
    assert report["control"]["band"][0] < 0.5 < report["control"]["band"][1]
    assert (work / "evaluation" / "roc.png").is_file() and (work / "evaluation" / "evaluation.json").is_file()

    # Two test models a side: each setting's test sides hold both seeds, and the control's test
    # compares the known clean models with as many more clean ones; the seed-1000 models are reused.
    with pytest.raises(ValueError, match="one per test offset"):
        run_evaluation(work, KEY, EvaluateConfig(unknown_method="", test_seed_offsets=(1000, 4000), control_seed_offsets=(2000, 3000)))
    with pytest.raises(ValueError, match="must not repeat"):
        run_evaluation(work, KEY, EvaluateConfig(unknown_method="", test_seed_offsets=(1000, 3000)))  # the control's default for 1000, 3000, is a test offset
    report = run_evaluation(work, KEY, EvaluateConfig(unknown_method="", test_seed_offsets=(1000, 4000), control_seed_offsets=(2000, 3000, 5000)))
    known = report["settings"]["known"]
    for side in ("clean", "watermarked"):
        assert sorted(p["model_seed"] for p in known["test_provenance"][side]) == [1000, 4000]
    assert known["metrics"]["n_clean"] == known["metrics"]["n_watermarked"] == 12  # 6 images of each of 2 models
    control = report["settings"]["control"]["test_provenance"]
    assert sorted(p["model_seed"] for p in control["clean"]) == [1000, 4000]
    assert sorted(p["model_seed"] for p in control["watermarked"]) == [3000, 5000]
    assert report["test"]["control_seeds"] == {"fine_tuning": [2000], "test": [3000, 5000]}
    assert all("-clean-" in p["dir"] for side in ("clean", "watermarked") for p in control[side])


def test_cli_finetune_detector_and_evaluate(toy, tmp_path):
    import argparse

    from genwm.commands import personalize as commands

    root, sets, _ = toy
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    args = parser.parse_args(["finetune-detector", "--clean", str(sets["clean"]), "--watermarked", str(sets["watermarked"]), "--detector", str(root / "base"), "--out", str(tmp_path / "d"), "--key-file", str(key_file), "--epochs", "1", "--no-channel", "--locate", "--null-keys", "9", "--rings", "--quiet"])
    assert args.func(args) == 0
    saved = json.loads((tmp_path / "d" / "config.json").read_text())
    assert saved["metadata"]["config"]["epochs"] == 1 and saved["metadata"]["config"]["rings"]
    assert len(saved["detector"]["located"]["rings"]) == saved["detector"]["template"]["tile"] // 2 + 1
    assert saved["detector"]["located"]["scale"] == saved["metadata"]["location"]["scale"]
    assert len(saved["detector"]["located"]["weights"]) == saved["detector"]["template"]["tile"] ** 2
    args = parser.parse_args(["evaluate", "--detector", str(tmp_path / "d"), "--clean", str(sets["test_clean"]), "--watermarked", str(sets["test_watermarked"]), "--out", str(tmp_path / "ev"), "--key-file", str(key_file)])
    assert args.func(args) == 0
    evaluation = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert evaluation["summary"]["known"]["n_clean"] == 12
    assert len(saved["detector"]["located"]["null_scales"]) == 9 and evaluation["settings"]["known"]["key_test"]["n_null_keys"] == 9
    assert evaluation["settings"]["known"]["key_test"]["n_clean_sets"] == 12 // 8  # one model: one whole set of 8
    args = parser.parse_args(["evaluate", "--detector", str(tmp_path / "d"), "--clean", str(sets["clean"]), "--watermarked", str(sets["test_watermarked"]), "--out", str(tmp_path / "ev2"), "--key-file", str(key_file)])
    with pytest.raises(ValueError, match="not an honest test"):
        args.func(args)

"""`genwm demo --quick` on the shipped mini model and mini phase-1 checkpoint: every stage runs,
its outputs exist and load, the report's numbers are in range and recomputable from the images
it wrote, and the no-watermark control is not reported as a detection."""
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from genwm.demo import QUICK_CONFIG, run_demo

    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, QUICK_CONFIG, progress=False)


def test_every_stage_writes_outputs_that_load(quick_demo):
    from diffusers import StableDiffusionPipeline

    from genwm.models import Detector
    from genwm.personalize import load_personalized

    out, report = quick_demo
    for name in ("report.json", "roc.png", "grid.png"):
        assert (out / name).is_file()
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    work = out / "work"
    detector = Detector.from_pretrained(work / "detector")
    assert detector.calibration is not None
    # phase 2 located the mark, and the saved detector reads where the report says
    weights = np.array(detector.config.located["weights"])
    assert detector.config.located["scale"] == report["location"]["scale"]
    assert list(divmod(int(weights.argmax()), detector.config.tile)) == report["location"]["peak"]
    # the key test regresses out what the subject's photos and the base model's own images
    # (DreamBooth's class images) read under each key, as recomputed from them
    from genwm.evaluate import folder_key_evidence

    sources = detector.checkpoint_config["metadata"]["key_test_covariates"]
    assert set(detector.key_covariates) == set(sources) == {"photos", "base model"}
    assert Path(sources["photos"]) == (work / "subject" / "clean").resolve() and Path(sources["base model"]).name.startswith("class_images-")
    for name, folder in sources.items():
        assert np.allclose(detector.key_covariates[name], folder_key_evidence(detector, folder, "genwm-demo-key", None).mean(axis=0), atol=1e-5)
    assert Detector.from_pretrained(work / "evaluation" / "control_detector").calibration is not None
    assert isinstance(load_personalized(work / "models" / "dreambooth-watermarked-seed0")[0], StableDiffusionPipeline)
    pipe, manifest = load_personalized(work / "models" / "lora-clean-seed0")
    assert manifest["method"] == "lora"
    for folder in (work / "images").iterdir():
        record = json.loads((folder / "synthesis.json").read_text())
        assert all((folder / im["file"]).is_file() for im in record["images"])
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))


def test_report_numbers_are_in_range_and_come_from_the_images(quick_demo):
    from genwm.calibration import key_test
    from genwm.evaluate import detection_metrics, folder_key_evidence, folder_logits
    from genwm.models import Detector

    out, report = quick_demo
    for name, r in report["results"].items():
        for k in ("accuracy", "roc_auc", "tpr_at_1pct_fpr"):
            assert 0.0 <= r[k] <= 1.0, (name, k)
    evaluation = json.loads((out / report["evaluation"]).read_text())
    known = evaluation["settings"]["known"]
    dirs = {side: [p["dir"] for p in known["test_provenance"][side]] for side in ("clean", "watermarked")}
    detector = Detector.from_pretrained(out / "work" / "detector")
    key = "genwm-demo-key"
    clean, marked = folder_logits(detector, dirs["clean"], key), folder_logits(detector, dirs["watermarked"], key)
    assert np.allclose(clean, known["logits"]["clean"], atol=1e-4) and np.allclose(marked, known["logits"]["watermarked"], atol=1e-4)
    assert detection_metrics(clean, marked)["roc_auc"] == pytest.approx(report["results"]["known"]["roc_auc"])
    assert report["quality"]["subject_watermarked_vs_clean"]["psnr"] > 30
    # The key test's verdict on each test model's images, recomputed from them
    keys = report["results"]["known"]["key_test"]
    assert keys["n_null_keys"] == len(detector.config.located["null_scales"]) and {m["dir"] for m in keys["models"]} == set(dirs["clean"] + dirs["watermarked"])
    for m in keys["models"]:
        assert key_test(folder_key_evidence(detector, m["dir"], key, None), covariates=detector.key_covariates)["p_value"] == pytest.approx(m["p_value"])
        assert 1 / (1 + keys["n_null_keys"]) <= m["p_value"] <= 1
    assert "models" in report["results"]["phase1_only_known"]["key_test"]  # phase 1's searching reading has one too
    by_key = keys["per_image_auc_by_key"]
    assert by_key["key"] == pytest.approx(report["results"]["known"]["roc_auc"], abs=1e-6)  # D's logit is monotone in the evidence
    assert 0 <= by_key["null_q10"] <= by_key["null_median"] <= by_key["null_q90"] <= 1 and 0 < by_key["rank_p"] <= 1


def test_no_watermark_control_is_not_a_detection(quick_demo):
    _, report = quick_demo
    control = report["results"]["control"]
    assert control["passed"] and control["band"][0] <= control["roc_auc"] <= control["band"][1]
    assert not any(m["watermark_detected"] for m in control["key_test"]["models"])  # four clean models


def test_the_demo_command_prints_each_models_key_test(quick_demo, monkeypatch, capsys):
    import argparse

    import genwm.demo
    from genwm.commands.demo import run_demo

    out, report = quick_demo
    monkeypatch.setattr(genwm.demo, "run_demo", lambda *a, **k: report)
    assert run_demo(argparse.Namespace(config=None, quick=True, out=str(out), subject=None, fraction=None, key=None, quiet=True)) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    for name in ("known", "control"):
        models = report["results"][name]["key_test"]["models"]
        line = lines[next(i for i, l in enumerate(lines) if l.strip().startswith(name + " ")) + 1]  # the line under the setting's own
        assert "each model's images as one set" in line and line.count("(") == len(models)
        assert all(f"{m['p_value']:.3g}" in line for m in models)
    assert "(clean, other seeds)" in printed  # the control's second side is clean too

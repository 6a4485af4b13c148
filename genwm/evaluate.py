"""Honest evaluation of a subject's detector.

A detector fine-tuned on images of a few personalized models can learn to tell those models
apart instead of finding the watermark. So the images that test it must come from models
trained with other seeds than the models whose images fine-tuned it (checked here from the
synthesis records, and refused otherwise), and:

- "known": the same personalization method(s) as fine-tuning, new model seeds;
- "unknown": another method, new model seeds, and prompts never used in fine-tuning;
- "control": no watermark anywhere. A control detector is fine-tuned exactly like the real
  one but on images of two sets of models both trained on the clean photos, then tested on
  two more clean-trained sets. Its ROC AUC must come out near 0.5 (within sampling error);
  if it does not, the protocol leaks model identity and the other numbers mean nothing.

Metrics (sklearn): accuracy at D's decision (logit > 0), ROC AUC, TPR at 1% FPR (with the
finest FPR the number of clean images can resolve), the calibrated threshold's TPR/FPR and
set-level verdicts; a ROC curve PNG and a JSON of the numbers, written atomically.

The images of one model share its texture, so its images' scores are not independent: a
per-image AUC or a calibrated per-image threshold says little about whether a *model* was
trained on the photos. The key test (genwm.calibration.key_test) answers that question with a
false-positive rate that holds: it is run on sets of images of one model, and on each test
model's images all together.
"""
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from genwm import atomic

CONTROL_Z = 2.576  # two-sided 1% band for an AUC of 0.5 under the null


# ---- metrics ---------------------------------------------------------------------------------


def auc_null_se(n_clean: int, n_watermarked: int) -> float:
    """Standard error of the ROC AUC when the two sets do not differ (Mann-Whitney, no ties)."""
    return math.sqrt((n_clean + n_watermarked + 1) / (12 * n_clean * n_watermarked))


def detection_metrics(clean_logits, watermarked_logits, calibration: dict | None = None) -> dict:
    from sklearn.metrics import roc_auc_score, roc_curve

    clean = np.asarray(clean_logits, dtype=float)
    marked = np.asarray(watermarked_logits, dtype=float)
    if not len(clean) or not len(marked):
        raise ValueError(f"need clean and watermarked images, got {len(clean)} and {len(marked)}")
    y = np.r_[np.zeros(len(clean)), np.ones(len(marked))]
    scores = np.r_[clean, marked]
    fpr, tpr, _ = roc_curve(y, scores)
    auc = float(roc_auc_score(y, scores))
    se = auc_null_se(len(clean), len(marked))
    metrics = {
        "n_clean": len(clean),
        "n_watermarked": len(marked),
        "accuracy": float(np.mean((scores > 0) == y)),
        "roc_auc": auc,
        "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max()),
        # with fewer than 100 clean images the only FPR <= 1% point is FPR = 0
        "fpr_resolution": 1 / len(clean),
        "auc_null_se": se,
        "auc_z": (auc - 0.5) / se,
    }
    if calibration is not None:
        from genwm.calibration import set_verdict

        t = calibration["threshold"]
        metrics["calibrated"] = {
            "threshold": t,
            "per_image_fpr_promised": calibration["fpr_at_threshold"],
            "tpr": float(np.mean(marked >= t)),
            "fpr": float(np.mean(clean >= t)),
            "verdict_watermarked_set": set_verdict(marked, calibration),
            "verdict_clean_set": set_verdict(clean, calibration),
        }
    return metrics


def plot_roc(curves: dict, path, title: str = "ROC") -> None:
    """curves: name -> (clean logits, watermarked logits). Agg, no global backend change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(4.8, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, (clean, marked) in curves.items():
        y = np.r_[np.zeros(len(clean)), np.ones(len(marked))]
        s = np.r_[clean, marked]
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f}, n={len(clean)}+{len(marked)})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic.write_bytes(path, buf.getvalue())


# ---- provenance ------------------------------------------------------------------------------


def honesty_problems(detector_metadata: dict | None, test: list[dict], setting: str) -> list[str]:
    """Why images with provenance `test` (genwm.synthesize.provenance) cannot honestly test a
    detector fine-tuned as `detector_metadata` records; [] when they can."""
    train = ((detector_metadata or {}).get("provenance") or {})
    train = train.get("clean", []) + train.get("watermarked", [])
    problems = []
    if not train:
        return problems  # never fine-tuned on generated images: no model to recognize
    unverifiable = [p["dir"] for p in train if not p.get("synthesis") or p.get("model_seed") is None]
    if unverifiable:
        problems.append(f"the detector was fine-tuned on images without a genwm synthesis record ({unverifiable[0]}): cannot check they differ from the test models")
    train_dirs = {p["dir"] for p in train}
    train_models = {p.get("model") for p in train}
    train_seeds = {p.get("model_seed") for p in train if p.get("model_seed") is not None}
    train_methods = {p.get("method") for p in train}
    train_templates = {t for p in train for t in p.get("templates", [])}
    for p in test:
        d = p["dir"]
        if not p.get("synthesis"):
            problems.append(f"{d}: no synthesis.json, so its model and seeds are unknown")
            continue
        if d in train_dirs:
            problems.append(f"{d}: these very images fine-tuned the detector")
        if p.get("model") in train_models:
            problems.append(f"{d}: made by {p['model']}, a model whose images fine-tuned the detector")
        if p.get("model_seed") is None:
            problems.append(f"{d}: its model has no recorded training seed")
        elif p["model_seed"] in train_seeds:
            problems.append(f"{d}: its model was trained with seed {p['model_seed']}, as fine-tuning models were ({sorted(train_seeds)})")
        if setting == "unknown":
            if p.get("method") in train_methods:
                problems.append(f"{d}: method {p.get('method')} also made fine-tuning images; the unknown setting needs another method")
            shared = sorted(set(p.get("templates", [])) & train_templates)
            if shared:
                problems.append(f"{d}: prompt {shared[0]!r} also made fine-tuning images; the unknown setting needs unseen prompts")
    return problems


# ---- scoring folders -------------------------------------------------------------------------


@torch.no_grad()
def folder_logits(detector, directories, key: str) -> np.ndarray:
    from genwm.finetune import as_list, load_image
    from genwm.keys import key_bits
    from genwm.personalize.common import list_images

    device = next(detector.parameters()).device
    bits = key_bits(key, detector.config.n_bits)[None].to(device)
    detector.eval()
    out = []
    for d in as_list(directories):
        for f in list_images(d):
            out.append(detector.logit(detector.to_canonical(load_image(f).to(device)), bits).item())
    return np.array(out)


@torch.no_grad()
def folder_key_evidence(detector, directory, key: str, n_null: int) -> np.ndarray:
    """Evidence [images, 1 + null keys] of a folder's images (Detector.key_evidence)."""
    from genwm.finetune import load_image
    from genwm.personalize.common import list_images

    detector.eval()
    return detector.key_evidences([load_image(f) for f in list_images(directory)], key, n_null)


def key_tests(detector, key: str, folders: dict, set_size: int, alpha: float = 0.01, n_null: int = 99, evidences: dict | None = None) -> dict:
    """The key test on disjoint sets of set_size images of one model each (a set never mixes
    two models' images), and on each model's images all together: TPR over the watermarked
    models' sets, FPR over the clean models' sets; and the per-image AUC under the key among
    the null keys' AUCs. folders: "clean" and "watermarked" -> image folders, one model each;
    evidences: the same -> those folders' folder_key_evidence, where already read."""
    from sklearn.metrics import roc_auc_score

    from genwm.calibration import key_test, rank_p_value

    covariates = detector.key_covariates
    detected = {side: [] for side in folders}
    models, by_side = [], {side: [] for side in folders}
    for side, dirs in folders.items():
        for m, d in enumerate(dirs):
            evidence = evidences[side][m] if evidences else folder_key_evidence(detector, d, key, n_null)
            by_side[side].append(evidence)
            detected[side] += [key_test(evidence[i : i + set_size], alpha, covariates)["watermark_detected"] for i in range(0, len(evidence) - set_size + 1, set_size)]
            whole = key_test(evidence, alpha, covariates)
            n_keys = whole["n_null_keys"]
            models.append({"dir": str(d), "side": side, **{k: whole[k] for k in ("n_images", "evidence", "null_mean", "null_std", "p_value", "watermark_detected")}})
    rate = {side: (float(np.mean(v)) if v else None) for side, v in detected.items()}
    # The per-image AUC under every key: where the null keys, located the same way, tell the
    # two sides apart as well as the key does, the watermarked-trained models differ from the
    # clean-trained ones in some way that is not the key's mark.
    clean, marked = (np.concatenate(by_side[side]) for side in ("clean", "watermarked"))
    y = np.r_[np.zeros(len(clean)), np.ones(len(marked))]
    aucs = np.array([roc_auc_score(y, np.r_[clean[:, k], marked[:, k]]) for k in range(clean.shape[1])])
    return {
        "per_image_auc_by_key": {
            "key": float(aucs[0]),
            "null_median": float(np.median(aucs[1:])),
            "null_q10": float(np.quantile(aucs[1:], 0.1)),
            "null_q90": float(np.quantile(aucs[1:], 0.9)),
            "rank_p": rank_p_value(aucs[0], aucs[1:]),
        },
        "set_size": set_size,
        "alpha": alpha,
        "n_null_keys": n_keys,
        "conditioned_on": sorted(covariates or {}),
        "tpr": rate.get("watermarked"),
        "fpr": rate.get("clean"),
        "n_watermarked_sets": len(detected.get("watermarked", [])),
        "n_clean_sets": len(detected.get("clean", [])),
        "models": models,
    }


def evaluate_sets(detector, key: str, clean, watermarked, setting: str = "known", allow_dishonest: bool = False, set_size: int | None = None) -> dict:
    """Score image folders S (clean-trained models) and S_w (watermarked-trained models) with
    `detector` (a checkpoint path or a loaded Detector) for `key`, after checking that their
    models differ from the fine-tuning models. -> metrics, provenance and honesty report; with
    set_size, also the key test on sets of that many images of one model, where it is exact
    (else the reason it was not run)."""
    from genwm.finetune import as_list
    from genwm.keys import key_fingerprint
    from genwm.models import Detector
    from genwm.synthesize import provenance

    if setting not in ("known", "unknown", "control"):
        raise ValueError(f"setting must be known, unknown or control, got {setting!r}")
    if isinstance(detector, (str, Path)):
        from genwm.finetune import scoring_device

        detector = Detector.from_pretrained(detector, device=scoring_device())
    metadata = (getattr(detector, "checkpoint_config", None) or {}).get("metadata") or {}
    fingerprint = metadata.get("key_fingerprint")
    if fingerprint is not None and fingerprint != key_fingerprint(key):
        raise ValueError(f"this detector was fine-tuned for key {fingerprint}, not for the given key ({key_fingerprint(key)})")
    test = {"clean": [provenance(d) for d in as_list(clean)], "watermarked": [provenance(d) for d in as_list(watermarked)]}
    problems = honesty_problems(metadata, test["clean"] + test["watermarked"], setting)
    if problems and not allow_dishonest:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"not an honest test: {problems[0]}{more}")
    folders = {"clean": as_list(clean), "watermarked": as_list(watermarked)}
    keys = evidences = None
    if set_size:
        from genwm.calibration import key_test_problem

        problem = key_test_problem(detector)
        if not problem and detector.config.located is not None:
            # A located detector's logit is a function of the key's column of the evidence,
            # so the images are read once for both.
            evidences = {side: [folder_key_evidence(detector, d, key, None) for d in dirs] for side, dirs in folders.items()}
        keys = {"not_run": problem} if problem else key_tests(detector, key, folders, set_size, evidences=evidences)
    if evidences:
        clean_logits, marked_logits = (np.array([detector.logit_of_key_evidence(row) for e in evidences[side] for row in e]) for side in ("clean", "watermarked"))
    else:
        clean_logits, marked_logits = folder_logits(detector, clean, key), folder_logits(detector, watermarked, key)
    return {
        "setting": setting,
        "metrics": detection_metrics(clean_logits, marked_logits, getattr(detector, "calibration", None)),
        "key_test": keys,
        "honest": not problems,
        "honesty_problems": problems,
        "test_provenance": test,
        "logits": {"clean": clean_logits.round(5).tolist(), "watermarked": marked_logits.round(5).tolist()},
    }


def write_report(report: dict, out, title: str) -> None:
    """out/evaluation.json and out/roc.png; report['settings'] maps a name to evaluate_sets()."""
    out = Path(out)
    curves = {name: (np.array(r["logits"]["clean"]), np.array(r["logits"]["watermarked"])) for name, r in report["settings"].items()}
    plot_roc(curves, out / "roc.png", title=title)
    atomic.write_json(out / "evaluation.json", report)


# ---- the whole experiment after `protect` ------------------------------------------------------


@dataclass
class EvaluateConfig:
    # Test models: protect's seeds + each of these. With one test model a side, the per-image
    # numbers rest on how much of the mark that one model happened to keep, and the control on
    # how two clean models' textures happen to differ; more a side average over models.
    test_seed_offsets: tuple = (1000,)
    unknown_method: str | None = None  # None: the first method protect did not use; "" skips the setting
    unseen_prompts: str | None = None  # None: configs/prompts/unseen.txt
    control: bool = True
    # The control's pseudo-watermarked sides: the first for fine-tuning, the rest for testing
    # (as many as test_seed_offsets, so the control's test compares as many models a side);
    # None: 2000, then each test offset + 2000.
    control_seed_offsets: tuple | None = None
    n_images: int | None = None  # per model; None: as protect
    set_size: int = 8  # the key test's sets: this many images of one model

    def to_dict(self):
        return asdict(self)


def run_evaluation(work, key: str, config: EvaluateConfig | None = None) -> dict:
    """Known, unknown and control settings for the subject protected in `work`; trains the
    extra personalized models it needs (with other seeds), writes work/evaluation/."""
    from genwm import protect as P
    from genwm.finetune import finetune_detector
    from genwm.keys import key_fingerprint
    from genwm.personalize import METHODS
    from genwm.synthesize import read_prompts

    config = config or EvaluateConfig()
    work = Path(work)
    record = P.read_protect_record(work)
    if record["key_fingerprint"] != key_fingerprint(key):
        raise ValueError(f"{work}: protected with key {record['key_fingerprint']}, not with the given key")
    pc = P.config_from_record(record)
    base = record["base_model"]
    seen = Path(record["prompts"])
    unseen = Path(config.unseen_prompts) if config.unseen_prompts else P.default_prompts("unseen")
    overlap = set(read_prompts(seen)) & set(read_prompts(unseen))
    if overlap:
        raise ValueError(f"{unseen}: shares prompts with {seen} ({sorted(overlap)[0]!r}); unseen prompts must be new")
    test_offsets = list(config.test_seed_offsets)
    control_offsets = list(config.control_seed_offsets) if config.control_seed_offsets is not None else [2000, *(o + 2000 for o in test_offsets)]
    if not test_offsets:
        raise ValueError("test_seed_offsets: at least one offset is needed")
    if config.control and len(control_offsets) != 1 + len(test_offsets):
        raise ValueError(f"control_seed_offsets: one for fine-tuning and one per test offset ({1 + len(test_offsets)}), got {control_offsets}")
    def shifted(offsets) -> list[int]:
        return [s + o for o in offsets for s in pc.seeds]

    offsets = [0, *test_offsets, *(control_offsets if config.control else ())]
    seed_sets = [set(shifted([o])) for o in offsets]
    if sum(len(x) for x in seed_sets) != len(set().union(*seed_sets)):
        raise ValueError(f"model seeds must not repeat across roles: protect's {pc.seeds} shifted by test/control offsets {offsets[1:]} collide")
    test_seeds = shifted(test_offsets)
    unknown = config.unknown_method
    if unknown is None:
        unknown = next((m for m in METHODS if m not in pc.methods), "")
    elif unknown and unknown in pc.methods:
        raise ValueError(f"unknown_method {unknown!r} was used to fine-tune the detector; choose another")

    def images(method, side, seed, prompts, prompt_set):
        return P.generated_images(work, base, pc, method, side, seed, prompts, prompt_set, config.n_images)

    out = work / "evaluation"
    settings = {}
    known = {side: [images(m, side, s, seen, "seen") for m in pc.methods for s in test_seeds] for side in P.SIDES}
    settings["known"] = evaluate_sets(record["detector"], key, known["clean"], known["watermarked"], "known", set_size=config.set_size)
    if unknown:
        unk = {side: [images(unknown, side, s, unseen, "unseen") for s in test_seeds] for side in P.SIDES}
        settings["unknown"] = evaluate_sets(record["detector"], key, unk["clean"], unk["watermarked"], "unknown", set_size=config.set_size)

    control = None
    if config.control:
        # Fine-tuning: protect's clean models (label 0) vs more clean models (label 1).
        a = [images(m, "clean", s, seen, "seen") for m in pc.methods for s in pc.seeds]
        b = [images(m, "clean", s, seen, "seen") for m in pc.methods for s in shifted(control_offsets[:1])]
        # Test: the known setting's clean models vs as many more clean models.
        c = known["clean"]
        d = [images(m, "clean", s, seen, "seen") for m in pc.methods for s in shifted(control_offsets[1:])]
        control_detector = out / "control_detector"
        finetune_detector(a, b, record["detector_source"], control_detector, key, P.finetune_config(pc), extra_metadata={"control": True}, covariate_dirs=P.key_test_covariates(work, a))
        settings["control"] = evaluate_sets(control_detector, key, c, d, "control", set_size=config.set_size)
        m = settings["control"]["metrics"]
        control = {"roc_auc": m["roc_auc"], "auc_z": m["auc_z"], "passed": abs(m["auc_z"]) < CONTROL_Z, "band": [0.5 - CONTROL_Z * m["auc_null_se"], 0.5 + CONTROL_Z * m["auc_null_se"]]}

    report = {
        "format": "genwm-evaluation",
        "version": 1,
        "work": str(work.resolve()),
        "key_fingerprint": key_fingerprint(key),
        "config": config.to_dict(),
        "fine_tuning": {"methods": pc.methods, "seeds": pc.seeds, "prompts": str(seen)},
        "test": {"seeds": test_seeds, "unknown_method": unknown or None, "unseen_prompts": str(unseen),
                 "control_seeds": {"fine_tuning": shifted(control_offsets[:1]), "test": shifted(control_offsets[1:])} if config.control else None},
        "control": control,
        "summary": {name: {k: r["metrics"][k] for k in ("accuracy", "roc_auc", "tpr_at_1pct_fpr", "n_clean", "n_watermarked")} for name, r in settings.items()},
        "settings": settings,
    }
    write_report(report, out, title=f"subject {key_fingerprint(key)}")
    return report

"""Diagnostic: the key test of every model's images in demo work folders, with each model's role.

    python scripts/bench_model_readings.py runs/bench-v8/subject00/genwm-profile-2test/work --key genwm-demo-key

Each work folder's image sets (one personalized model each, clean- or watermarked-trained) are
read by that folder's phase-2 detector and put to the key test (genwm.calibration.key_test,
conditioned on the detector's covariates, as evaluation does); the table lists the key's
statistic as a z-score among the null keys' and the p-value, and the role the evaluation gave
the model (phase 2's fine-tuning, a known or unknown test model, the control's fine-tuning or
test side), to ask whether clean-trained models read the key alike whatever their role.
"""
import argparse
import json
from pathlib import Path

from genwm.calibration import key_test
from genwm.evaluate import folder_key_evidence
from genwm.models import Detector


def roles(work: Path) -> dict[str, str]:
    """image folder name -> its roles, from the detectors' and the evaluation's records."""
    out: dict[str, list[str]] = {}

    def add(dirs, role):
        for p in dirs:
            out.setdefault(Path(p["dir"]).name, []).append(role)

    for name, meta_dir in (("phase 2", work / "detector"), ("control fine-tuning", work / "evaluation" / "control_detector")):
        provenance = json.loads((meta_dir / "config.json").read_text())["metadata"]["provenance"]
        add(provenance["clean"] + provenance["watermarked"], name)
    for setting, r in json.loads((work / "evaluation" / "evaluation.json").read_text())["settings"].items():
        add(r["test_provenance"]["clean"], f"{setting} test")
        add(r["test_provenance"]["watermarked"], f"{setting} test" + (", second side" if setting == "control" else ""))
    return {name: "; ".join(dict.fromkeys(r)) for name, r in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, nargs="+")
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    print("| work | images (model) | role | key test z | p |")
    print("|---|---|---|---|---|")
    for work in args.work:
        detector = Detector.from_pretrained(work / "detector").eval()
        role = roles(work)
        for d in sorted(d for d in (work / "images").iterdir() if d.name in role):
            result = key_test(folder_key_evidence(detector, d, args.key, None), covariates=detector.key_covariates)
            z = (result["evidence"] - result["null_mean"]) / result["null_std"]
            print(f"| {work.parent.parent.name} | {d.name} | {role[d.name]} | {z:+.2f} | {result['p_value']:.3f} |", flush=True)


if __name__ == "__main__":
    main()

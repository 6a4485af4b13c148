"""Print bench_pipeline.py's results (results.json, one or more) as docs/BENCHMARKS.md's table.

    python scripts/pipeline_table.py docs/results/bench_pipeline_profile_2test/subjects0-2/results.json ...

One row per variant and subject, in the columns the mini-world sections use; a key test p is
listed per test model (", " between models of one side).
"""
import argparse
import json
from pathlib import Path

HEADER = ("variant", "subject", "AUC, known (null keys' median; rank p)", "accuracy, known", "TPR @ 1 % FPR",
          "AUC, unknown (null keys' median)", "accuracy, unknown", "control AUC (passed)",
          "key test p, whole model: known clean / watermarked", "unknown (LoRA) clean / watermarked",
          "control: clean / clean", "sets of 8, key test TPR (FPR): known, unknown", "subject PSNR dB", "seconds")


def ps(values) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def row(variant: str, r: dict) -> list[str]:
    g = r.get
    return [variant, str(r["subject"]),
            f"{g('known.roc_auc'):.3f} ({g('known.auc_null_keys_median'):.3f}; {g('known.auc_key_rank_p'):.3f})",
            f"{g('known.accuracy'):.3f}", f"{g('known.tpr_at_1pct_fpr'):.3f}",
            f"{g('unknown.roc_auc'):.3f} ({g('unknown.auc_null_keys_median'):.3f})", f"{g('unknown.accuracy'):.3f}",
            f"{g('control.roc_auc'):.3f} ({'yes' if g('control.passed') else 'no'})",
            f"{ps(g('known.keytest_model_p_clean'))} / {ps(g('known.keytest_model_p_watermarked'))}",
            f"{ps(g('unknown.keytest_model_p_clean'))} / {ps(g('unknown.keytest_model_p_watermarked'))}",
            f"{ps(g('control.keytest_model_p_clean'))} / {ps(g('control.keytest_model_p_watermarked'))}",
            f"{g('known.keytest_sets_tpr'):.2f} ({g('known.keytest_sets_fpr'):.2f}), {g('unknown.keytest_sets_tpr'):.2f} ({g('unknown.keytest_sets_fpr'):.2f})",
            f"{g('subject_psnr'):.2f}", str(g("seconds"))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+")
    args = ap.parse_args()
    rows = []
    for path in args.results:
        for variant, subjects in json.loads(path.read_text())["per_subject"].items():
            rows += [(r["subject"], variant, row(variant, r)) for r in subjects]
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for _, _, cells in sorted(rows, key=lambda t: (t[0], t[1])):
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

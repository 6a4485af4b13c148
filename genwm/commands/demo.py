"""`genwm demo`: GenWatermark end to end on a held-out subject of the mini world (genwm.demo)."""
import argparse
import sys


def rate(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def run_demo(args) -> int:
    from genwm.demo import DEFAULT_CONFIG, QUICK_CONFIG, run_demo

    config = args.config or (QUICK_CONFIG if args.quick else DEFAULT_CONFIG)
    report = run_demo(args.out, config, subject_index=args.subject, fraction=args.fraction, key=args.key, progress=not args.quiet)
    r = report["results"]
    lines = [f"subject {report['subject']}: {report['watermark']['n_watermarked']}/{report['watermark']['n_images']} photos watermarked, "
             f"PSNR {report['quality']['subject_watermarked_vs_clean']['psnr']:.1f} dB"]
    for name in ("phase1_only_known", "known", "unknown", "control"):
        if name in r:
            m = r[name]
            sets = m.get("sets")
            extra = f", sets of {sets['set_size']}: TPR {rate(sets['tpr'])}, FPR {rate(sets['fpr'])}" if sets else ""
            keys = m.get("key_test") or {}
            if "models" in keys:
                extra += f"; key test, sets of {keys['set_size']}: TPR {rate(keys['tpr'])}, FPR {rate(keys['fpr'])}"
            lines.append(f"  {name:18s} accuracy {m['accuracy']:.3f}  ROC AUC {m['roc_auc']:.3f}  TPR@1%FPR {m['tpr_at_1pct_fpr']:.3f}{extra}")
            if "models" in keys:
                sides = {"clean": "clean", "watermarked": "clean, other seeds" if name == "control" else "watermarked"}
                lines.append(f"  {'':18s} key test, each model's images as one set: p " + ", ".join(f"{m_['p_value']:.3g} ({sides[m_['side']]})" for m_ in keys["models"]))
    lines.append(f"report: {args.out}/report.json, {args.out}/roc.png, {args.out}/grid.png")
    print("\n".join(lines))
    if "control" in r and not r["control"]["passed"]:
        control_models = (r["control"].get("key_test") or {}).get("models") or []
        if control_models and not any(m["watermark_detected"] for m in control_models):
            print("warning: the no-watermark control's per-image AUC is outside its chance band (two clean models' own textures differ where "
                  "the detector reads): per-image numbers between one model and another are suspect; the key test, which ranks the key "
                  "among null keys on each model's images, passed the control", file=sys.stderr)
        else:
            print("warning: the no-watermark control's AUC is outside its chance band: the other numbers are suspect", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the whole pipeline on a held-out subject of the mini world (CPU, about 26 min on one core; --quick: under a minute)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="out/demo", help="report and work folder (re-runs reuse finished stages)")
    p.add_argument("--quick", action="store_true", help="a smoke run with tiny settings (configs/demo-quick.yaml)")
    p.add_argument("--config", help="demo config (default configs/demo.yaml)")
    p.add_argument("--subject", type=int, help="mini-world subject index (default: the config's)")
    p.add_argument("--fraction", type=float, help="fraction of the subject's photos to watermark (the paper also tests 0.25)")
    p.add_argument("--key", help="the subject's key (default: the config's demo key)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_demo)

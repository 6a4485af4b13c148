"""Commands for personalization and phase 2: personalize, synthesize, finetune-detector,
protect, evaluate. Each is a thin layer over the Python API of the same name."""
import argparse
import json
import os
from pathlib import Path


def add_key_options(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--key", help="the subject's secret key (visible to other users of this machine; prefer --key-file or GENWM_KEY)")
    g.add_argument("--key-file", help="file holding the key on its first line")


def read_key(args) -> str:
    if args.key:
        return args.key
    if args.key_file:
        path = Path(args.key_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such key file")
        lines = path.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0].strip():
            raise ValueError(f"{path}: the key file is empty")
        return lines[0].strip()
    if os.environ.get("GENWM_KEY"):
        return os.environ["GENWM_KEY"]
    raise ValueError("no key: pass --key, --key-file or set GENWM_KEY")


def add_training_options(p):
    """Personalization options; unset ones keep the config file's or the method's default."""
    g = p.add_argument_group("personalization (override the config)")
    g.add_argument("--identifier", help="rare token naming the subject (default sks)")
    g.add_argument("--class-noun", help="what the subject is (default person)")
    g.add_argument("--instance-prompt", help="training caption with {identifier} (default 'a photo of {identifier}')")
    g.add_argument("--steps", type=int, dest="max_train_steps", help="optimizer steps")
    g.add_argument("--lr", type=float, dest="learning_rate")
    g.add_argument("--batch-size", type=int, dest="train_batch_size")
    g.add_argument("--resolution", type=int, help="training side in pixels (default: the pipeline's)")
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    g.add_argument("--gradient-checkpointing", action="store_true", default=None)
    g.add_argument("--grad-accum", type=int, dest="gradient_accumulation_steps")
    g.add_argument("--use-8bit-adam", action="store_true", default=None, help="bitsandbytes' AdamW8bit")
    g.add_argument("--accelerator", help="Lightning accelerator: auto, cpu, gpu, ...")
    g.add_argument("--train-text-encoder", action="store_true", default=None, help="DreamBooth: also fine-tune the text encoder")
    g.add_argument("--no-prior-preservation", action="store_false", default=None, dest="with_prior_preservation", help="DreamBooth: no class-image prior loss")
    g.add_argument("--num-class-images", type=int, help="DreamBooth: class images for the prior")
    g.add_argument("--class-images", dest="class_images_dir", help="DreamBooth: class-image cache folder")
    g.add_argument("--rank", type=int, help="LoRA rank")
    g.add_argument("--placeholder-token", help="Textual Inversion token (default <IDENTIFIER>)")


TRAINING_OPTIONS = (
    "identifier class_noun instance_prompt max_train_steps learning_rate train_batch_size resolution mixed_precision gradient_checkpointing "
    "gradient_accumulation_steps use_8bit_adam accelerator train_text_encoder with_prior_preservation num_class_images "
    "class_images_dir rank placeholder_token"
).split()
METHOD_ONLY = {
    "train_text_encoder": "dreambooth",
    "with_prior_preservation": "dreambooth",
    "num_class_images": "dreambooth",
    "class_images_dir": "dreambooth",
    "rank": "lora",
    "placeholder_token": "textual-inversion",
}


def training_overrides(args, method: str | None = None) -> dict:
    """{option: value} given on the command line; method-only options for other methods are
    an error when a single method is named, and are routed to their method otherwise."""
    given = {k: getattr(args, k) for k in TRAINING_OPTIONS if getattr(args, k, None) is not None}
    if method is not None:
        wrong = [k for k in given if METHOD_ONLY.get(k, method) != method]
        if wrong:
            raise ValueError(f"--{wrong[0].replace('_', '-')} applies to {METHOD_ONLY[wrong[0]]}, not {method}")
    return given


def add_sampler_options(p):
    g = p.add_argument_group("sampling")
    g.add_argument("--sample-steps", type=int, dest="num_inference_steps", help="denoising steps (default 50)")
    g.add_argument("--guidance", type=float, dest="guidance_scale", help="classifier-free guidance scale (default 7.5)")
    g.add_argument("--sample-resolution", type=int, dest="sample_resolution", help="image side (default: the pipeline's)")
    g.add_argument("--sample-batch-size", type=int, dest="sample_batch_size")
    g.add_argument("--negative-prompt")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")


def sampler_overrides(args) -> dict:
    pairs = {
        "num_inference_steps": "num_inference_steps",
        "guidance_scale": "guidance_scale",
        "resolution": "sample_resolution",
        "batch_size": "sample_batch_size",
        "negative_prompt": "negative_prompt",
        "dtype": "dtype",
        "device": "device",
    }
    return {k: getattr(args, a) for k, a in pairs.items() if getattr(args, a, None) is not None}


def add_finetune_options(p):
    g = p.add_argument_group("detector fine-tuning")
    g.add_argument("--epochs", type=int)
    g.add_argument("--ft-batch-size", type=int, dest="ft_batch_size")
    g.add_argument("--ft-lr", type=float, dest="ft_lr")
    g.add_argument("--holdout", type=float, dest="holdout_fraction", help="fraction held out; its clean part is the calibration null (default 0.2)")
    g.add_argument("--no-channel", action="store_false", default=None, dest="channel", help="train without publishing-channel augmentation")
    g.add_argument("--ft-seed", type=int, dest="ft_seed")
    g.add_argument("--locate", action="store_true", default=None, help="find where the personalized models draw the mark and read there alone (a faint mark: see docs/BENCHMARKS.md); "
                   "only the logit's scale is then trained, and the detector's set verdicts use the key test")
    g.add_argument("--place", choices=["found", "drawn"], help="with --locate: read where the mark tells the two sides apart best (found, the default) "
                   "or where genwm drew it, scale 1 and shift 0 (drawn: for a mimic that trains at the photos' own size; keeps the key test's power)")
    g.add_argument("--null-keys", type=int, dest="null_keys", help="with --locate: null keys located too, for the key test (default 99: smallest p-value 0.01)")
    g.add_argument("--rings", action="store_true", default=None, help="with --locate: also weigh the mark's frequencies, ring by ring, by how well each tells the two sides apart "
                   "(the null keys read with the same gains; in the mini world it did not help: docs/BENCHMARKS.md)")


def finetune_overrides(args) -> dict:
    pairs = {"epochs": "epochs", "batch_size": "ft_batch_size", "learning_rate": "ft_lr", "holdout_fraction": "holdout_fraction", "channel": "channel", "seed": "ft_seed", "locate": "locate", "place": "place", "null_keys": "null_keys", "rings": "rings"}
    return {k: getattr(args, a) for k, a in pairs.items() if getattr(args, a, None) is not None}


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


# ---- the commands ----------------------------------------------------------------------------


def run_personalize(args) -> int:
    from genwm.personalize import make_config, personalize

    overrides = training_overrides(args, args.method)
    overrides.update(seed=args.seed, progress=not args.quiet)
    config = make_config(args.method, args.config, **overrides)
    result = personalize(args.method, args.model, args.images, args.out, config, overwrite=args.overwrite)
    m = result.manifest
    print(f"{args.method}: {result.path} (identifier {m['identifier']!r}, seed {m['seed']}, {len(m['train_images'])} images)")
    return 0


def run_synthesize(args) -> int:
    from genwm.synthesize import SamplerConfig, synthesize

    sampler = SamplerConfig(**sampler_overrides(args))
    record = synthesize(args.model, args.prompts, args.n, args.out, seed=args.seed, sampler=sampler, base=args.base, identifier=args.identifier, prompt_set=args.prompt_set, overwrite=args.overwrite, progress=not args.quiet)
    print(f"{len(record['images'])} images in {args.out} (seeds {args.seed}..{args.seed + args.n - 1}; {Path(args.out) / 'synthesis.json'})")
    return 0


def run_finetune(args) -> int:
    from genwm.finetune import FinetuneConfig, finetune_detector

    config = FinetuneConfig().replace(**finetune_overrides(args), progress=not args.quiet)
    covariates = {}
    for item in args.covariate:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--covariate {item!r}: expected NAME=DIR")
        covariates[name] = Path(folder)
    meta = finetune_detector(args.clean, args.watermarked, args.detector, args.out, read_key(args), config, covariate_dirs=covariates)
    b, a = meta["holdout_metrics_before"], meta["holdout_metrics_after"]
    print(f"held-out accuracy {b['accuracy']:.3f} -> {a['accuracy']:.3f}, ROC AUC {b['roc_auc']:.3f} -> {a['roc_auc']:.3f}; detector and calibration in {args.out}")
    return 0


def run_protect(args) -> int:
    from genwm.protect import load_protect_config, protect

    personal = {"common": training_overrides(args)}
    for option, method in METHOD_ONLY.items():
        if option in personal["common"]:
            personal.setdefault(method, {})[option] = personal["common"].pop(option)
    config = load_protect_config(
        args.config,
        synthesis=sampler_overrides(args),
        finetune=finetune_overrides(args),
        personalize=personal,
        methods=args.method,
        fraction=args.fraction,
        seeds=args.seeds,
        n_images=args.n,
        prompts=args.prompts,
        strength=args.strength,
        keep_models=False if args.delete_models else None,
        progress=not args.quiet,
    )
    record = protect(args.subject, read_key(args), args.model, args.checkpoint, args.work, config, detector=args.detector)
    a = record["holdout_metrics_after"]
    print(f"detector: {record['detector']} (held-out accuracy {a['accuracy']:.3f}, ROC AUC {a['roc_auc']:.3f}); next: genwm evaluate --work {args.work}")
    return 0


def run_evaluate(args) -> int:
    from genwm.evaluate import EvaluateConfig, evaluate_sets, run_evaluation, write_report

    key = read_key(args)
    if args.work:
        if args.detector or args.clean or args.watermarked:
            raise ValueError("--work runs the whole evaluation; do not combine it with --detector/--clean/--watermarked")
        config = EvaluateConfig(unknown_method=args.unknown_method, unseen_prompts=args.unseen_prompts, control=not args.no_control, n_images=args.n, test_seed_offsets=tuple(args.test_seed_offset), control_seed_offsets=tuple(args.control_seed_offsets) if args.control_seed_offsets else None, set_size=args.set_size)
        report = run_evaluation(args.work, key, config)
        where = Path(args.work) / "evaluation"
    else:
        if not (args.detector and args.clean and args.watermarked and args.out):
            raise ValueError("pass --work, or all of --detector, --clean, --watermarked and --out")
        result = evaluate_sets(args.detector, key, args.clean, args.watermarked, args.setting, allow_dishonest=args.allow_dishonest, set_size=args.set_size)
        report = {"format": "genwm-evaluation", "version": 1, "detector": str(Path(args.detector).resolve()), "settings": {args.setting: result}}
        report["summary"] = {args.setting: {k: result["metrics"][k] for k in ("accuracy", "roc_auc", "tpr_at_1pct_fpr", "n_clean", "n_watermarked")}}
        write_report(report, args.out, title=args.setting)
        where = Path(args.out)
    print_json(report["summary"])
    if report.get("control"):
        c = report["control"]
        print(f"no-watermark control: ROC AUC {c['roc_auc']:.3f} ({'within' if c['passed'] else 'OUTSIDE'} the chance band {c['band'][0]:.3f}..{c['band'][1]:.3f})")
    print(f"report: {where / 'evaluation.json'}, ROC: {where / 'roc.png'}")
    return 0


def register(subparsers) -> None:
    formatter = argparse.ArgumentDefaultsHelpFormatter

    p = subparsers.add_parser("personalize", help="fine-tune Stable Diffusion on a subject's photos (DreamBooth, Textual Inversion, LoRA)", formatter_class=formatter)
    p.add_argument("--method", required=True, choices=["dreambooth", "textual-inversion", "lora"])
    p.add_argument("--model", required=True, help="StableDiffusionPipeline folder or hub id")
    p.add_argument("--images", required=True, help="folder of the subject's photos")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML options (sections common: and METHOD:), e.g. configs/personalize/gpu.yaml")
    p.add_argument("--seed", type=int)
    p.add_argument("--overwrite", action="store_true", help="replace an existing, different output")
    p.add_argument("--quiet", action="store_true")
    add_training_options(p)
    p.set_defaults(func=run_personalize)

    p = subparsers.add_parser("synthesize", help="generate images of the subject from a personalized model", formatter_class=formatter)
    p.add_argument("--model", required=True, help="personalization output (or pipeline folder)")
    p.add_argument("--prompts", required=True, help="prompt templates with {identifier}, one a line")
    p.add_argument("--n", type=int, required=True, help="number of images (prompts cycled)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0, help="image i uses seed SEED + i")
    p.add_argument("--base", help="base pipeline for a LoRA/TI output, if it has moved")
    p.add_argument("--identifier", help="what {identifier} becomes (default: the model's)")
    p.add_argument("--prompt-set", help="a name recorded with the images, e.g. seen or unseen")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    add_sampler_options(p)
    p.set_defaults(func=run_synthesize)

    p = subparsers.add_parser("finetune-detector", help="phase 2: fine-tune D on clean-model (S) vs watermarked-model (S_w) images", formatter_class=formatter)
    p.add_argument("--clean", nargs="+", required=True, help="folders of S")
    p.add_argument("--watermarked", nargs="+", required=True, help="folders of S_w")
    p.add_argument("--detector", required=True, help="detector checkpoint to start from")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--covariate", action="append", default=[], metavar="NAME=DIR",
                   help="with --locate: a folder of images whose mean reading under each key the key test regresses out, e.g. photos=DIR "
                   "(the subject's clean photos) or base=DIR (the base model's own images); repeatable")
    p.add_argument("--quiet", action="store_true")
    add_key_options(p)
    add_finetune_options(p)
    p.set_defaults(func=run_finetune)

    p = subparsers.add_parser("protect", help="all in one: watermark, personalize, synthesize, fine-tune and calibrate the subject's detector", formatter_class=formatter)
    p.add_argument("--subject", required=True, help="folder of the subject's photos")
    p.add_argument("--model", required=True, help="base StableDiffusionPipeline folder or hub id")
    p.add_argument("--method", nargs="+", help="personalization method(s) to fine-tune for (default dreambooth)")
    p.add_argument("--checkpoint", required=True, help="phase-1 checkpoint (generator and detector)")
    p.add_argument("--detector", help="detector to fine-tune, if not the checkpoint's")
    p.add_argument("--work", required=True, help="work folder (stages are reused on re-runs)")
    p.add_argument("--config", help="YAML with protect:, synthesis:, finetune: and personalization sections")
    p.add_argument("--fraction", type=float, help="fraction of the photos to watermark (default 1; the paper also tests 0.25)")
    p.add_argument("--seeds", type=int, nargs="+", help="model seeds for the fine-tuning pairs (default 0)")
    p.add_argument("--n", type=int, help="images generated per model (default 100)")
    p.add_argument("--prompts", help="prompt templates (default configs/prompts/seen.txt)")
    p.add_argument("--strength", type=float, help="watermark strength multiplier (default 1)")
    p.add_argument("--delete-models", action="store_true", help="delete each personalized model once its images exist")
    p.add_argument("--quiet", action="store_true")
    add_key_options(p)
    add_training_options(p)
    add_sampler_options(p)
    add_finetune_options(p)
    p.set_defaults(func=run_protect)

    p = subparsers.add_parser("evaluate", help="honest evaluation: other model seeds, unknown method and prompts, no-watermark control", formatter_class=formatter)
    p.add_argument("--work", help="a protect work folder: run the known, unknown and control settings")
    p.add_argument("--unknown-method", help="method for the unknown setting (default: one protect did not use)")
    p.add_argument("--unseen-prompts", help="prompts for the unknown setting (default configs/prompts/unseen.txt)")
    p.add_argument("--no-control", action="store_true", help="skip the no-watermark control")
    p.add_argument("--n", type=int, help="images per test model (default: as protect)")
    p.add_argument("--test-seed-offset", type=int, nargs="+", default=[1000], help="test model seeds = protect's seeds + each of these (one model a side per offset)")
    p.add_argument("--control-seed-offsets", type=int, nargs="+", help="the control's second clean models: one offset for fine-tuning, then one per test offset; when unset, 2000 and then each test offset + 2000")
    p.add_argument("--detector", help="score given folders with this detector instead of --work")
    p.add_argument("--clean", nargs="+", help="folders of S to test on")
    p.add_argument("--watermarked", nargs="+", help="folders of S_w to test on")
    p.add_argument("--setting", default="known", choices=["known", "unknown", "control"])
    p.add_argument("--out", help="report folder (with --detector)")
    p.add_argument("--allow-dishonest", action="store_true", help="report even if the test models overlap the fine-tuning ones (flagged in the report)")
    p.add_argument("--set-size", type=int, default=8, help="the key test on sets of this many images of one model, and on each model's images all together (0: skip)")
    add_key_options(p)
    p.set_defaults(func=run_evaluate)


"""All of GenWatermark for one subject: watermark the photos, personalize models on the clean
and the watermarked copies as a mimic would, generate S and S_w from them, fine-tune the
detector on S vs S_w, and calibrate it (phase 2).

Everything lands in a work folder, one stage per subfolder, each with a JSON record written
last; a re-run with the same request reuses finished stages, so an interrupted run resumes:

    work/subject/clean/             the subject's photos as PNG (decoded once, EXIF applied)
    work/subject/watermarked/       the same photos, a chosen fraction of them watermarked
    work/subject/watermark.json     which photos carry the mark, key fingerprint, strength
    work/models/METHOD-SIDE-seedS/  personalized models (SIDE: clean or watermarked)
    work/images/METHOD-SIDE-seedS-PROMPTSET/   generated images + synthesis.json
    work/detector/                  the subject's fine-tuned detector and calibration.json
    work/protect.json               the request and where everything is
"""
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from genwm import atomic
from genwm.config_file import read_config_file
from genwm.finetune import FinetuneConfig, finetune_detector
from genwm.keys import key_fingerprint
from genwm.personalize import make_config, method_module, personalize
from genwm.personalize.common import coerce, describe_model, file_sha256, list_images, read_rgb, save_png
from genwm.synthesize import SamplerConfig, read_prompts, synthesize

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "configs" / "prompts"
SIDES = ("clean", "watermarked")
PERSONALIZE_SECTIONS = ("dreambooth", "lora", "textual-inversion")
WATERMARK_RECORD = "watermark.json"
PROTECT_RECORD = "protect.json"


def default_prompts(name: str) -> Path:
    """configs/prompts/NAME.txt of this source tree ("seen" or "unseen")."""
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: default prompt list not found; pass a prompts file")
    return path


@dataclass
class ProtectConfig:
    methods: list = field(default_factory=lambda: ["dreambooth"])
    fraction: float = 1.0  # of the subject's photos to watermark (the paper also tests 0.25)
    watermark_seed: int = 0  # chooses which photos when fraction < 1
    strength: float = 1.0  # multiplies the learned mark; 1.0 is what phase 1 trained
    seeds: list = field(default_factory=lambda: [0])  # one clean/watermarked model pair per seed and method
    n_images: int = 100  # generated per model
    prompts: str | None = None  # templates for S and S_w; None: configs/prompts/seen.txt
    keep_models: bool = True  # False: delete each personalized model once its images exist
    progress: bool = True
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    personalize: dict = field(default_factory=dict)  # {"common": {...}, "lora": {...}, ...} option overrides

    def to_dict(self):
        return asdict(self)

    def validate(self):
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if not self.methods or not self.seeds:
            raise ValueError("need at least one method and one seed")
        for m in self.methods:
            method_module(m)
        for name in set(self.methods) | (set(self.personalize) - {"common"}):
            method_config(self, name, 0)  # unknown options fail now, not after hours of training
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct: {self.seeds}")


def load_protect_config(yaml_path=None, synthesis: dict | None = None, finetune: dict | None = None, personalize: dict | None = None, other_sections=(), **overrides) -> ProtectConfig:
    """Defaults, then a YAML file's sections (`protect:`, `synthesis:`, `finetune:`, and the
    personalization sections `common:`, `dreambooth:`, `lora:`, `textual-inversion:`), then
    keyword overrides: ProtectConfig fields, and dicts for the sampler, the fine-tuning and
    the personalization sections. None values are ignored. Sections named in other_sections
    belong to another reader of the same file (e.g. `demo:`) and are skipped. The file may
    extend another (read_config_file)."""
    data = {}
    if yaml_path is not None:
        data = read_config_file(yaml_path)
        known = {"protect", "synthesis", "finetune", "common", *PERSONALIZE_SECTIONS, *other_sections}
        if set(data) - known:
            raise ValueError(f"{yaml_path}: expected sections among {', '.join(sorted(known))}")

    def merged(section: str, extra: dict | None) -> dict:
        values = dict(data.get(section) or {})
        values.update({k: v for k, v in (extra or {}).items() if v is not None})
        return values

    personal = {name: merged(name, (personalize or {}).get(name)) for name in ("common", *PERSONALIZE_SECTIONS)}
    sampler_defaults = SamplerConfig().to_dict()
    try:
        config = ProtectConfig(
            **merged("protect", overrides),
            sampler=SamplerConfig(**{k: coerce(k, v, sampler_defaults.get(k)) for k, v in merged("synthesis", synthesis).items()}),
            finetune=FinetuneConfig().replace(**merged("finetune", finetune)),
            personalize={k: v for k, v in personal.items() if v},
        )
    except TypeError as e:
        raise ValueError(f"{yaml_path or 'protect config'}: {e}") from None
    config.validate()
    return config


def method_config(config: ProtectConfig, method: str, seed: int):
    """The personalization config for one model: method defaults, the protect config's
    overrides, then this model's seed."""
    base = make_config(method)
    try:
        base = base.replace(**config.personalize.get("common", {})).replace(**config.personalize.get(method, {}))
    except ValueError as e:
        raise ValueError(f"personalize options for {method}: {e}") from None
    return base.replace(seed=seed, progress=config.progress)


# ---- stage 1: the subject's photos, clean and watermarked ----------------------------------


def watermark_subject(subject, out, watermarker, key: str, fraction: float = 1.0, seed: int = 0, progress: bool = True, source: dict | None = None) -> dict:
    """Write out/clean and out/watermarked (PNG); in the latter, round(fraction * n) photos
    (at least one), chosen with `seed`, carry the key's mark. `source` describes the
    watermarker's checkpoint for the record. -> the record."""
    files = list_images(subject)
    stems = {}
    for f in files:
        if f.stem in stems:
            raise ValueError(f"{f}: same name as {stems[f.stem]} once saved as PNG; rename one of them")
        stems[f.stem] = f
    n_marked = max(1, round(fraction * len(files)))
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    marked = set(order[:n_marked])
    out = Path(out)
    request = {
        "subject": [{"file": f.name, "sha256": file_sha256(f)} for f in files],
        "key_fingerprint": key_fingerprint(key),
        "generator": watermarker.config.get("generator"),
        "source": source,
        "strength": watermarker.strength,
        "fraction": fraction,
        "seed": seed,
    }
    record_file = out / WATERMARK_RECORD
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if record.get("request") == request and all((out / s / im["file"]).is_file() for im in record["images"] for s in SIDES):
            return record
    images = []
    for i, f in enumerate(tqdm(files, desc="watermark subject", disable=not progress)):
        img = read_rgb(f)
        name = f"{f.stem}.png"
        save_png(img, out / "clean" / name)
        save_png(watermarker.watermark(img, key) if i in marked else img, out / "watermarked" / name)
        images.append({"source": f.name, "file": name, "watermarked": i in marked})
    record = {
        "format": "genwm-subject-watermark",
        "version": 1,
        "subject_dir": str(Path(subject).resolve()),
        "key_fingerprint": key_fingerprint(key),
        "strength": watermarker.strength,
        "fraction": fraction,
        "n_watermarked": len(marked),
        "n_images": len(files),
        "seed": seed,
        "images": images,
        "request": request,
    }
    atomic.write_json(record_file, record)
    return record


# ---- stage 2: personalized models and their images -------------------------------------------


def model_dir(work, method: str, side: str, seed: int) -> Path:
    return Path(work) / "models" / f"{method}-{side}-seed{seed}"


def images_dir(work, method: str, side: str, seed: int, prompt_set: str) -> Path:
    return Path(work) / "images" / f"{method}-{side}-seed{seed}-{prompt_set}"


def synthesis_seed(model_seed: int) -> int:
    """Image seeds of a model: synthesis_seed + i. Disjoint across models for n < 10000.

    DreamBooth's class images are not in this scheme: the base model draws them once, from
    seed + i of the first model that needs them, so they can share the seed-0 model's noises.
    Clean and watermarked models train on the same class images, so neither side gains by it."""
    return 10_000 * model_seed


def generated_images(work, base_model, config: ProtectConfig, method: str, side: str, seed: int, prompts, prompt_set: str, n_images: int | None = None) -> Path:
    """Train (or reuse) the model personalized with `method` and `seed` on the subject's
    `side` photos, generate (or reuse) its images for `prompts`; -> the image folder."""
    from genwm.personalize import identifier_phrase
    from genwm.personalize.common import make_request
    from genwm.synthesize import read_synthesis, synthesis_request

    images = images_dir(work, method, side, seed, prompt_set)
    model = model_dir(work, method, side, seed).resolve()
    photos = Path(work) / "subject" / side
    pconfig = method_config(config, method, seed)
    n = n_images or config.n_images
    # The exact request the finished set would carry: equal means done, even when the model
    # itself was deleted since (keep_models=False).
    expected = synthesis_request(
        model, make_request(method, base_model, list_images(photos), pconfig), read_prompts(prompts), identifier_phrase(method, pconfig), n, synthesis_seed(seed), config.sampler
    )
    done = read_synthesis(images)
    if done is not None and done.get("request") == expected and all((images / im["file"]).is_file() for im in done["images"]):
        return images
    result = personalize(method, base_model, photos, model, pconfig)
    synthesize(model, prompts, n, images, seed=synthesis_seed(seed), sampler=config.sampler, prompt_set=prompt_set, pipeline=result.pipeline, progress=config.progress)
    if not config.keep_models:
        import shutil

        shutil.rmtree(model)
    return images


# ---- all in one ------------------------------------------------------------------------------


def protect(subject, key: str, model, checkpoint, work, config: ProtectConfig | None = None, detector=None) -> dict:
    """Watermark `subject` with `checkpoint`'s generator, personalize `model` (a pipeline folder
    or hub id) on both copies, generate S and S_w, fine-tune the detector (`detector`, default
    the checkpoint's) and calibrate it. -> the protect record; the detector is work/detector."""
    from genwm.watermarker import Watermarker

    config = config or ProtectConfig()
    config.validate()
    work = Path(work)
    prompts = Path(config.prompts) if config.prompts else default_prompts("seen")
    read_prompts(prompts)  # a bad prompt file fails now, not after training

    watermarker = Watermarker.from_pretrained(checkpoint, key=key, strength=config.strength)
    source = {"checkpoint": str(Path(checkpoint).resolve()), "sha256": file_sha256(Path(checkpoint) / "model.safetensors")}
    marks = watermark_subject(subject, work / "subject", watermarker, key, config.fraction, config.watermark_seed, config.progress, source)

    dirs = {side: [] for side in SIDES}
    for method in config.methods:
        for seed in config.seeds:
            for side in SIDES:
                dirs[side].append(generated_images(work, model, config, method, side, seed, prompts, "seen"))

    detector_source = detector or checkpoint
    covariates = key_test_covariates(work, dirs["clean"])
    request = {
        "key_fingerprint": key_fingerprint(key),
        "detector": str(Path(detector_source).resolve()),
        "detector_sha256": file_sha256(Path(detector_source) / "model.safetensors"),
        "clean": [str(d.resolve()) for d in dirs["clean"]],
        "watermarked": [str(d.resolve()) for d in dirs["watermarked"]],
        "synthesis": [json.loads((d / "synthesis.json").read_text())["request"] for d in dirs["clean"] + dirs["watermarked"]],
        "finetune": {k: v for k, v in config.finetune.to_dict().items() if k != "progress"},
        "key_test_covariates": {name: str(d.resolve()) for name, d in covariates.items()},
    }
    out = work / "detector"
    previous = _detector_metadata(out)
    if previous is None or previous.get("protect_request") != request:
        finetune_detector(
            dirs["clean"],
            dirs["watermarked"],
            detector_source,
            out,
            key,
            finetune_config(config),
            extra_metadata={"protect_request": request, "subject_watermark": {k: marks[k] for k in ("fraction", "n_watermarked", "n_images", "strength")}},
            covariate_dirs=covariates,
        )
    metadata = _detector_metadata(out)

    record = {
        "format": "genwm-protect",
        "version": 1,
        "subject": str(Path(subject).resolve()),
        "base_model": describe_model(model),
        "checkpoint": str(Path(checkpoint).resolve()),
        "detector_source": str(Path(detector_source).resolve()),
        "key_fingerprint": key_fingerprint(key),
        "config": config.to_dict(),
        "prompts": str(prompts.resolve()),
        "watermark": {k: marks[k] for k in ("fraction", "n_watermarked", "n_images", "strength", "seed")},
        "images": {side: [str(d) for d in dirs[side]] for side in SIDES},
        "detector": str(out.resolve()),
        "holdout_metrics_before": metadata["holdout_metrics_before"],
        "holdout_metrics_after": metadata["holdout_metrics_after"],
    }
    atomic.write_json(work / PROTECT_RECORD, record)
    return record


def key_test_covariates(work, clean_dirs) -> dict[str, Path]:
    """What the key test regresses out (genwm.calibration.key_test): the subject's clean photos,
    and the base model's own images where DreamBooth's prior preservation made some (its class
    images): every model fine-tuned on those photos from that base model inherits their chance
    correlation with each key, mark or no mark."""
    covariates = {"photos": Path(work) / "subject" / "clean"}
    for d in clean_dirs:
        class_images = (json.loads((Path(d) / "synthesis.json").read_text()).get("personalization") or {}).get("class_images") or {}
        if class_images.get("n") and Path(class_images.get("dir") or "").is_dir():
            covariates["base model"] = Path(class_images["dir"])
            break
    return covariates


def finetune_config(config: ProtectConfig) -> FinetuneConfig:
    """The fine-tuning config, quiet when the whole run is."""
    return config.finetune.replace(progress=config.progress and config.finetune.progress)


def _detector_metadata(path) -> dict | None:
    f = Path(path) / "config.json"
    if not (f.is_file() and (Path(path) / "calibration.json").is_file()):
        return None
    return json.loads(f.read_text()).get("metadata")


def read_protect_record(work) -> dict:
    f = Path(work) / PROTECT_RECORD
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no protect record; run `genwm protect` with this work folder first")
    return json.loads(f.read_text())


def config_from_record(record: dict) -> ProtectConfig:
    c = dict(record["config"])
    c["sampler"] = SamplerConfig(**c["sampler"])
    c["finetune"] = FinetuneConfig(**c["finetune"])
    return ProtectConfig(**c)

"""Generate a personalized model's images of the subject: the images a mimic would publish.

Prompts are templates with `{identifier}`, which becomes the model's identifier phrase ("sks
person" for DreamBooth and LoRA, "<sks>" for Textual Inversion). Image i uses template
i mod len(templates) and seed `seed + i`, with its own generator, so a set is reproducible
whatever the batch size. `synthesis.json` beside the images records every prompt and seed,
the sampler and its settings, and where the model came from; it is written last, so its
presence means the set is complete, and a re-run with the same request reuses the set.
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from genwm import atomic

PLACEHOLDER = "{identifier}"
SYNTHESIS_FILE = "synthesis.json"
PARTIAL_MARKER = ".genwm-synthesis-partial"  # present while a set is being written
FORMAT = "genwm-synthesis"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class SamplerConfig:
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    resolution: int | None = None  # None: the pipeline's own, unet sample_size * vae_scale_factor
    negative_prompt: str | None = None
    batch_size: int = 4
    dtype: str = "float32"  # "float16" halves memory on a GPU
    device: str = "auto"

    def to_dict(self):
        return asdict(self)

    def request(self) -> dict:
        """Settings that change the images (batch size and device do not)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("batch_size", "device")}


def read_prompts(path) -> list[str]:
    """Prompt templates, one a line; blank lines and '#' comments skipped. Every template must
    name the subject with {identifier}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompts file")
    templates = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        check_template(line, f"{path}:{number}")
        templates.append(line)
    if not templates:
        raise ValueError(f"{path}: no prompts")
    return templates


def check_template(template: str, where: str) -> None:
    if PLACEHOLDER not in template:
        raise ValueError(f"{where}: prompt has no {PLACEHOLDER} placeholder: {template!r}")
    try:
        template.format(identifier="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{where}: prompt is not a valid template ({e!r}); write literal braces as {{{{ }}}}") from None


def expand(templates: list[str], identifier: str) -> list[str]:
    return [t.format(identifier=identifier) for t in templates]


def read_synthesis(directory) -> dict | None:
    f = Path(directory) / SYNTHESIS_FILE
    if not f.is_file():
        return None
    try:
        record = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
    if record.get("format") != FORMAT:
        raise ValueError(f"{f}: not a genwm synthesis record")
    return record


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synthesis_request(model, personalization_request: dict | None, templates: list[str], identifier: str, n: int, seed: int, sampler: SamplerConfig, base=None) -> dict:
    """What determines an image set; a set made by an equal request is reused."""
    from genwm.personalize.common import describe_model

    return {
        "model": describe_model(model),
        "personalization": personalization_request,
        "base": describe_model(base) if base else None,
        "templates": templates,
        "identifier": identifier,
        "n": n,
        "seed": seed,
        "sampler": sampler.request(),
    }


def synthesize(model, prompts, n: int, out, *, seed: int = 0, sampler: SamplerConfig | None = None, base=None, identifier: str | None = None, prompt_set: str | None = None, pipeline=None, overwrite: bool = False, progress: bool = True) -> dict:
    """Generate n images from `model` (a personalization output or a pipeline folder) into
    `out`; -> the synthesis record. `prompts` is a file or a list of templates; `identifier`
    overrides the model's; `pipeline` is an already loaded pipeline for `model`."""
    from genwm.personalize import load_personalized, pipeline_resolution, read_manifest
    from genwm.personalize.common import describe_model, save_png

    sampler = sampler or SamplerConfig()
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if sampler.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {sampler.dtype!r}")
    prompts_file = None
    if isinstance(prompts, (str, Path)):
        prompts_file = str(Path(prompts).resolve())
        templates = read_prompts(prompts)
    else:
        templates = list(prompts)
        for i, t in enumerate(templates):
            check_template(t, f"prompt {i}")
    manifest = read_manifest(model) if Path(str(model)).is_dir() else None
    identifier = identifier or (manifest or {}).get("identifier")
    if identifier is None:
        raise ValueError(f"{model}: not a genwm personalization output, so its identifier is unknown; pass identifier")

    request = synthesis_request(model, (manifest or {}).get("request"), templates, identifier, n, seed, sampler, base)
    out = Path(out)
    existing = read_synthesis(out)
    if existing is not None and not overwrite:
        if existing.get("request") == request and all((out / im["file"]).is_file() for im in existing["images"]):
            return existing
        raise ValueError(f"{out}: already holds a different image set (see {SYNTHESIS_FILE}); choose another output or pass overwrite")
    ours = existing is not None or (out / PARTIAL_MARKER).exists()
    if out.is_dir() and not ours and not overwrite and any(out.iterdir()):
        raise ValueError(f"{out}: not empty and not a genwm image set; choose another output or pass overwrite")
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTIAL_MARKER).touch()
    if ours or overwrite:
        for stale in out.glob("[0-9][0-9][0-9][0-9][0-9].png"):
            stale.unlink()  # an interrupted or replaced set: no old image may linger under a new record

    device, dtype = _device(sampler.device), DTYPES[sampler.dtype]
    if pipeline is None:
        pipeline, _ = load_personalized(model, base=base, dtype=dtype)
    pipe = pipeline.to(device)
    pipe.set_progress_bar_config(disable=True)
    resolution = sampler.resolution or pipeline_resolution(pipe)
    prompts_expanded = expand(templates, identifier)

    images, bar = [], tqdm(total=n, desc=f"synthesize {out.name}", disable=not progress)
    for start in range(0, n, sampler.batch_size):
        index = list(range(start, min(n, start + sampler.batch_size)))
        batch_prompts = [prompts_expanded[i % len(prompts_expanded)] for i in index]
        result = pipe(
            batch_prompts,
            negative_prompt=[sampler.negative_prompt] * len(index) if sampler.negative_prompt else None,
            height=resolution,
            width=resolution,
            num_inference_steps=sampler.num_inference_steps,
            guidance_scale=sampler.guidance_scale,
            # CPU generators: the same seed gives the same starting noise on any device.
            generator=[torch.Generator(device="cpu").manual_seed(seed + i) for i in index],
        )
        flags = result.nsfw_content_detected or [None] * len(index)
        for i, prompt, img, flag in zip(index, batch_prompts, result.images, flags):
            name = f"{i:05d}.png"
            save_png(img, out / name)
            images.append({"file": name, "prompt": prompt, "template": templates[i % len(templates)], "seed": seed + i, "nsfw_flagged": flag})
        bar.update(len(index))
    bar.close()

    record = {
        "format": FORMAT,
        "version": 1,
        "model": describe_model(model),
        "personalization": {k: v for k, v in (manifest or {}).items() if k != "request"} or None,
        "prompt_set": prompt_set,
        "prompts_file": prompts_file,
        "templates": templates,
        "identifier": identifier,
        "n": n,
        "seed": seed,
        "sampler": {
            "scheduler": type(pipe.scheduler).__name__,
            "scheduler_config": json.loads(json.dumps(dict(pipe.scheduler.config), default=str)),
            "num_inference_steps": sampler.num_inference_steps,
            "guidance_scale": sampler.guidance_scale,
            "height": resolution,
            "width": resolution,
            "negative_prompt": sampler.negative_prompt,
            "dtype": sampler.dtype,
            "device": str(device),
            "safety_checker": pipe.safety_checker is not None,
        },
        "images": images,
        "request": request,
    }
    atomic.write_json(out / SYNTHESIS_FILE, record)
    (out / PARTIAL_MARKER).unlink()
    return record


def provenance(directory) -> dict:
    """Where an image folder came from, as far as its synthesis record tells: the model, its
    personalization method and training seed, the prompts and image seeds."""
    directory = Path(directory)
    record = read_synthesis(directory)
    if record is None:
        return {"dir": str(directory.resolve()), "synthesis": False}
    p = record.get("personalization") or {}
    seeds = [im["seed"] for im in record["images"]]
    return {
        "dir": str(directory.resolve()),
        "synthesis": True,
        "model": record["model"],
        "method": p.get("method"),
        "model_seed": p.get("seed"),
        "base_model": p.get("base_model"),
        "train_images": [im["sha256"] for im in p.get("train_images", [])],
        "prompt_set": record.get("prompt_set"),
        "templates": record["templates"],
        "identifier": record["identifier"],
        "image_seeds": [min(seeds), max(seeds)] if seeds else None,
        "n": len(record["images"]),
    }

"""What DreamBooth, Textual Inversion and LoRA share: loading a pipeline, the subject's images
and prompts, the noise-prediction training step, the Lightning trainer, and writing outputs.

A personalization output is a folder with `genwm_personalization.json` (method, base model,
identifier, seeds, hyperparameters, hashes of the training images) beside the weights:
- DreamBooth: a whole pipeline; `StableDiffusionPipeline.from_pretrained(out)` opens it.
- LoRA: `pytorch_lora_weights.safetensors`; `from_pretrained(base).load_lora_weights(out)`.
- Textual Inversion: `learned_embeds.safetensors`; `from_pretrained(base).load_textual_inversion(out)`.
`genwm.personalize.load_personalized(out)` does the right one from the manifest.
"""
import hashlib
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from genwm import atomic

MANIFEST = "genwm_personalization.json"
MANIFEST_FORMAT = "genwm-personalization"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PRECISION = {"no": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}
# Options that change how a run looks, not what it computes: a re-run differing only in
# these reuses the existing output.
RUNTIME_FIELDS = ("progress", "num_workers")

# Lightning's advice about DataLoader workers and eval-mode submodules does not apply here:
# the subject set is a handful of images held in memory, and frozen parts are eval on purpose.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*in eval mode at the start of training.*")


# ---- configuration -------------------------------------------------------------------------


@dataclass
class PersonalizeConfig:
    """Options every method shares. Defaults are for a GPU and SD 1.x/2.x at full size."""

    identifier: str = "sks"  # rare token that names the subject
    class_noun: str = "person"  # what the subject is; DreamBooth's prior class, TI's initializer
    instance_prompt: str = "a photo of {identifier}"  # {identifier} -> the method's identifier phrase
    resolution: int | None = None  # None: unet.config.sample_size * vae_scale_factor
    center_crop: bool = False
    random_flip: bool = True
    train_batch_size: int = 1
    max_train_steps: int = 400  # optimizer steps (after gradient accumulation)
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"  # any name diffusers.optimization.get_scheduler knows
    lr_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"  # "no", "fp16" or "bf16"
    use_8bit_adam: bool = False  # bitsandbytes' AdamW8bit; an error if it is not installed
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 0
    accelerator: str = "auto"  # Lightning's: "auto", "cpu", "gpu", ...
    num_workers: int = 0
    progress: bool = True

    def to_dict(self):
        return asdict(self)

    def request(self) -> dict:
        """The options that determine the result (see RUNTIME_FIELDS)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    def replace(self, **changes):
        """A copy with changes; unknown names are an error, None means 'keep'."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown option(s) for {type(self).__name__}: {', '.join(unknown)}")
        values = self.to_dict()
        values.update({k: coerce(k, v, values[k]) for k, v in changes.items() if v is not None})
        config = type(self)(**values)
        config.validate()
        return config

    def validate(self):
        if self.mixed_precision not in PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(PRECISION)}, got {self.mixed_precision!r}")
        if self.max_train_steps < 1 or self.train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("max_train_steps, train_batch_size and gradient_accumulation_steps must be >= 1")
        if "{identifier}" not in self.instance_prompt:
            raise ValueError(f"instance_prompt must contain {{identifier}}: {self.instance_prompt!r}")


def coerce(name: str, value, default):
    """YAML reads 1e-4 (no dot) as a string: turn strings into the option's number type."""
    if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return type(default)(float(value)) if isinstance(default, float) else int(value)
        except ValueError:
            raise ValueError(f"option {name} must be a number, got {value!r}") from None
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def load_yaml_options(path, section: str) -> dict:
    """Options for `section` from a YAML file: its `common:` mapping, then its `section:` one.

    A file without sections is read as one flat mapping of options; a file may extend another
    (genwm.config_file)."""
    from genwm.config_file import read_config_file

    data = read_config_file(path)
    if not any(isinstance(v, dict) for v in data.values()):
        return data
    options = dict(data.get("common") or {})
    options.update(data.get(section) or {})
    return options


def config_from(cls, yaml_path=None, section: str | None = None, **overrides):
    """cls() updated from a YAML file's section and then from keyword overrides (None skipped)."""
    config = cls()
    if yaml_path is not None:
        options = load_yaml_options(yaml_path, section or "")
        try:
            config = config.replace(**options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{yaml_path}: {e}") from None
    return config.replace(**overrides)


# ---- files -------------------------------------------------------------------------------


def list_images(directory) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such image directory")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{directory}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def read_rgb(path) -> Image.Image:
    """An image file as upright RGB (EXIF orientation applied); unreadable files name themselves."""
    try:
        with Image.open(path) as img:
            return ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot read image ({e})") from None


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_png(img: Image.Image, path) -> None:
    with atomic.atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


@contextmanager
def atomic_dir(path, overwrite: bool = False):
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a directory")
    if path.is_dir() and not overwrite and any(path.iterdir()):
        raise ValueError(f"{path}: already exists and is not empty (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    try:
        yield tmp
        atomic.usual_permissions(tmp, directory=True)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def read_manifest(path) -> dict | None:
    import json

    f = Path(path) / MANIFEST
    if not f.is_file():
        return None
    try:
        manifest = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{f}: not a genwm personalization manifest")
    return manifest


def reusable_output(out, request: dict, overwrite: bool) -> dict | None:
    """The manifest of an existing output made by the same request, so that re-runs are free;
    an existing different output is an error unless overwrite is set. Checked before training,
    so that a long run does not end in a refusal to write."""
    out = Path(out)
    if overwrite or not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")
    manifest = read_manifest(out)
    if manifest is not None and manifest.get("request") == request:
        return manifest
    if manifest is not None:
        raise ValueError(f"{out}: already holds a different personalization (see {MANIFEST}); choose another output or pass overwrite")
    if any(out.iterdir()):
        raise ValueError(f"{out}: already exists and is not empty; choose another output or pass overwrite")
    return None


# ---- the base pipeline ---------------------------------------------------------------------

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def load_pipeline(model, dtype=torch.float32, **kwargs):
    """A StableDiffusionPipeline from a local directory or a hub id, with an error that says
    what to do when the hub cannot be reached."""
    from diffusers import StableDiffusionPipeline

    path = Path(str(model)).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path}: not a diffusers pipeline directory (no model_index.json)")
        return StableDiffusionPipeline.from_pretrained(str(path), dtype=dtype, **kwargs)
    if path.exists() or not _HUB_ID.match(str(model)) or str(model).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{model}: no such pipeline directory")
    try:
        return StableDiffusionPipeline.from_pretrained(str(model), dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(
            f"{model}: not a local directory, and the Hugging Face hub did not provide it ({first}). "
            f"Offline, download it elsewhere (`hf download {model} --local-dir DIR`) and pass DIR."
        ) from None


def pipeline_resolution(pipe) -> int:
    """The image side the pipeline was built for: latent sample size times the VAE's factor."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def describe_model(model) -> str:
    """How a base model is recorded: absolute path for a directory, else the hub id."""
    path = Path(str(model)).expanduser()
    return str(path.resolve()) if path.is_dir() else str(model)


def default_device(accelerator: str = "auto") -> torch.device:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


# ---- data ------------------------------------------------------------------------------------


def image_transform(resolution: int, center_crop: bool, random_flip: bool):
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
            transforms.CenterCrop(resolution) if center_crop else transforms.RandomCrop(resolution),
            transforms.RandomHorizontalFlip() if random_flip else transforms.Lambda(lambda x: x),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),  # the VAE reads [-1, 1]
        ]
    )


class SubjectDataset(Dataset):
    """The subject's photos with their prompt and, for DreamBooth's prior preservation, class
    images with theirs. Images are decoded up front, so a bad file fails before training."""

    def __init__(self, instance_images, instance_prompt: str, transform, class_images=(), class_prompt: str | None = None, length: int = 0):
        self.instance = [read_rgb(p) for p in instance_images]
        self.classes = [read_rgb(p) for p in class_images]
        self.instance_prompt, self.class_prompt = instance_prompt, class_prompt
        self.transform = transform
        # Long enough for the whole run in one epoch (see run_length): an epoch boundary
        # would cut a gradient-accumulation cycle short on a handful of photos.
        self.length = max(len(self.instance), len(self.classes), length)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        item = {"instance_pixels": self.transform(self.instance[i % len(self.instance)]), "instance_prompt": self.instance_prompt}
        if self.classes:
            item["class_pixels"] = self.transform(self.classes[i % len(self.classes)])
            item["class_prompt"] = self.class_prompt
        return item


def run_length(config: PersonalizeConfig) -> int:
    """Examples the whole run consumes."""
    return config.train_batch_size * config.gradient_accumulation_steps * config.max_train_steps


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


class Collate:
    """Instance examples first, then class examples: the loss splits the batch at n_instance."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, examples):
        pixels = [e["instance_pixels"] for e in examples]
        prompts = [e["instance_prompt"] for e in examples]
        if "class_pixels" in examples[0]:
            pixels += [e["class_pixels"] for e in examples]
            prompts += [e["class_prompt"] for e in examples]
        return {"pixel_values": torch.stack(pixels), "input_ids": tokenize(self.tokenizer, prompts), "n_instance": len(examples)}


class SubjectDataModule(pl.LightningDataModule):
    def __init__(self, dataset: SubjectDataset, tokenizer, batch_size: int, num_workers: int = 0):
        super().__init__()
        self.dataset, self.collate = dataset, Collate(tokenizer)
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, collate_fn=self.collate, num_workers=self.num_workers, drop_last=False)


# ---- training ------------------------------------------------------------------------------


def prediction_target(scheduler, latents, noise, timesteps):
    """What the UNet is trained to predict: the noise (SD 1.x), the velocity (SD 2.x 768-v)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported scheduler prediction_type {kind!r}")


def make_optimizer(params, config: PersonalizeConfig) -> torch.optim.Optimizer:
    params = list(params)
    if not params:
        raise ValueError("nothing to train: no parameter requires a gradient")
    kwargs = dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("use_8bit_adam needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def weight_dtype(config: PersonalizeConfig) -> torch.dtype:
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.mixed_precision]


def cast_modules(modules, dtype: torch.dtype) -> None:
    """Cast frozen modules for mixed-precision training (a no-op, and no diffusers warning,
    when they already have that dtype)."""
    for module in modules:
        if next(module.parameters()).dtype != dtype:
            module.to(dtype)


class DiffusionFineTuner(pl.LightningModule):
    """The latent-diffusion training step on a pipeline's own parts.

    Subclasses choose what trains (set requires_grad) and may override training_step.
    The noise schedule and prediction type come from the pipeline's scheduler config, so SD
    2.x's v-prediction models are trained on velocity, not noise."""

    def __init__(self, pipe, config: PersonalizeConfig):
        from diffusers import DDPMScheduler

        super().__init__()
        self.config = config
        self.unet, self.vae, self.text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False)
        self.losses: list[float] = []

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        """Modules with nothing to train stay in eval mode (no dropout, fixed norms)."""
        super().train(mode)
        for module in (self.unet, self.vae, self.text_encoder):
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self

    def encode_text(self, input_ids):
        # As the pipeline does: SD 1.x/2.x text encoders attend to padding too.
        return self.text_encoder(input_ids, return_dict=False)[0]

    def diffusion_loss(self, pixel_values, input_ids) -> torch.Tensor:
        """Per-example MSE between the UNet's prediction and its target, [B]."""
        with torch.no_grad():
            latents = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist.sample()
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            latents = ((latents - shift) * self.vae.config.scaling_factor).float()
        noise = torch.randn_like(latents)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), device=latents.device).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = prediction_target(self.noise_scheduler, latents, noise, timesteps)
        hidden = self.encode_text(input_ids)
        pred = self.unet(noisy.to(self.unet.dtype), timesteps, hidden.to(self.unet.dtype), return_dict=False)[0]
        return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))

    def training_step(self, batch, batch_idx):
        loss = self.diffusion_loss(batch["pixel_values"], batch["input_ids"]).mean()
        self.record(loss)
        return loss

    def record(self, loss):
        self.losses.append(float(loss.detach()))
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, batch_size=1)

    def configure_optimizers(self):
        from diffusers.optimization import get_scheduler

        c = self.config
        optimizer = make_optimizer(self.trainable_parameters(), c)
        schedule = get_scheduler(c.lr_scheduler, optimizer, num_warmup_steps=c.lr_warmup_steps, num_training_steps=c.max_train_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def fit(module: DiffusionFineTuner, datamodule: pl.LightningDataModule, config: PersonalizeConfig) -> dict:
    """Train for config.max_train_steps optimizer steps; -> a summary of the losses."""
    with tempfile.TemporaryDirectory(prefix="genwm-fit-") as root:
        trainer = pl.Trainer(
            accelerator=config.accelerator,
            devices=1,
            precision=PRECISION[config.mixed_precision],
            max_steps=config.max_train_steps,
            max_epochs=-1,
            accumulate_grad_batches=config.gradient_accumulation_steps,
            gradient_clip_val=config.max_grad_norm or None,
            logger=False,
            enable_checkpointing=False,  # the method saves its own, smaller output
            enable_model_summary=False,
            enable_progress_bar=config.progress,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
            default_root_dir=root,
        )
        trainer.fit(module, datamodule=datamodule)
    module.cpu()
    losses = module.losses
    tail = losses[-max(1, len(losses) // 10) :]
    return {"steps": trainer.global_step, "micro_batches": len(losses), "first_loss": losses[0] if losses else None, "final_loss_mean": sum(tail) / len(tail) if tail else None}


def enable_text_encoder_checkpointing(text_encoder) -> None:
    # transformers 5 renamed gradient_checkpointing_enable; older versions only have that name.
    enable = getattr(text_encoder, "activation_checkpointing_enable", None) or text_encoder.gradient_checkpointing_enable
    enable()


def seed_everything(seed: int) -> None:
    pl.seed_everything(seed, workers=True, verbose=False)


def instance_images_record(files) -> list[dict]:
    return [{"file": Path(p).name, "sha256": file_sha256(p)} for p in files]


def make_request(method: str, model, files, config: PersonalizeConfig) -> dict:
    """What determines a personalization's result; an output made by an equal request is
    reused. Known before the (slow) pipeline load."""
    return {"method": method, "base_model": describe_model(model), "images": instance_images_record(files), "config": config.request()}


def base_manifest(request: dict, config: PersonalizeConfig, identifier_phrase: str, resolution: int) -> dict:
    """The manifest fields every method writes."""
    return {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "method": request["method"],
        "base_model": request["base_model"],
        "identifier": identifier_phrase,  # what `{identifier}` in prompts becomes
        "instance_prompt": config.instance_prompt.format(identifier=identifier_phrase),
        "resolution": resolution,
        "seed": config.seed,
        "config": config.to_dict(),
        "train_images": request["images"],
        "request": request,
        "genwm_version": genwm_version(),
        "torch_version": torch.__version__,
    }


def genwm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genwm")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class Personalized:
    """A personalization output: its folder, its manifest and, right after training, the
    trained pipeline still in memory."""

    path: Path
    manifest: dict
    pipeline: object | None = None

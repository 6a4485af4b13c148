"""DreamBooth (Ruiz et al. 2023): fine-tune the UNet (and optionally the text encoder) on the
subject's photos captioned "a photo of sks person", with a prior-preservation loss on images
of the class ("a photo of person") that the base model generates before training.

The output is a whole pipeline folder that `StableDiffusionPipeline.from_pretrained` opens.
Class images are cached on disk with a manifest of how they were made, and reused by every
run with the same base model, class prompt, resolution and sampler.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from genwm import atomic
from genwm.personalize import common

METHOD = "dreambooth"
CLASS_MANIFEST = "class_images.json"


@dataclass
class DreamBoothConfig(common.PersonalizeConfig):
    learning_rate: float = 5e-6
    max_train_steps: int = 800
    train_text_encoder: bool = False
    with_prior_preservation: bool = True
    prior_loss_weight: float = 1.0
    num_class_images: int = 200
    class_prompt: str = "a photo of {class_noun}"
    class_images_dir: str | None = None  # None: a cache folder beside the output, named by what made it
    class_inference_steps: int = 50
    class_guidance_scale: float = 7.5
    class_batch_size: int = 4


def identifier_phrase(config) -> str:
    return f"{config.identifier} {config.class_noun}".strip()


class DreamBoothModule(common.DiffusionFineTuner):
    def __init__(self, pipe, config: DreamBoothConfig):
        super().__init__(pipe, config)
        self.unet.requires_grad_(True)
        if config.train_text_encoder:
            self.text_encoder.requires_grad_(True)
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                common.enable_text_encoder_checkpointing(self.text_encoder)

    def training_step(self, batch, batch_idx):
        per_example = self.diffusion_loss(batch["pixel_values"], batch["input_ids"])
        n = batch["n_instance"]
        loss = per_example[:n].mean()
        if per_example.shape[0] > n:  # the class half of the batch: keep the prior
            loss = loss + self.config.prior_loss_weight * per_example[n:].mean()
        self.record(loss)
        return loss


def class_images_request(model, class_prompt: str, resolution: int, config: DreamBoothConfig) -> dict:
    return {
        "base_model": common.describe_model(model),
        "class_prompt": class_prompt,
        "resolution": resolution,
        "num_inference_steps": config.class_inference_steps,
        "guidance_scale": config.class_guidance_scale,
    }


def default_class_dir(out, request: dict) -> Path:
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:12]
    return Path(out).parent / f"class_images-{digest}"


@torch.no_grad()
def ensure_class_images(pipe, class_dir, request: dict, n: int, seed: int, batch_size: int, device, progress: bool = True) -> list[Path]:
    """n class images in class_dir, generating only the missing ones; image i uses seed + i."""
    class_dir = Path(class_dir)
    class_dir.mkdir(parents=True, exist_ok=True)
    manifest_file = class_dir / CLASS_MANIFEST
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {"request": request, "images": []}
    if manifest.get("request") != request:
        raise ValueError(f"{manifest_file}: these class images were made differently ({manifest.get('request')}); use another class_images_dir")
    have = [im for im in manifest["images"] if (class_dir / im["file"]).is_file()]
    if len(have) >= n:
        return [class_dir / im["file"] for im in have[:n]]
    pipe.to(device)
    todo = list(range(len(have), n))
    bar = tqdm(total=len(todo), desc="class images", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        seeds = [seed + i for i in chunk]
        images = pipe(
            [request["class_prompt"]] * len(chunk),
            height=request["resolution"],
            width=request["resolution"],
            num_inference_steps=request["num_inference_steps"],
            guidance_scale=request["guidance_scale"],
            generator=[torch.Generator(device="cpu").manual_seed(s) for s in seeds],
        ).images
        for i, s, img in zip(chunk, seeds, images):
            name = f"class_{i:05d}.png"
            common.save_png(img, class_dir / name)
            have.append({"file": name, "seed": s})
        manifest["images"] = have
        atomic.write_json(manifest_file, manifest)  # after each batch: an interrupted run resumes
        bar.update(len(chunk))
    bar.close()
    pipe.to("cpu")
    return [class_dir / im["file"] for im in have[:n]]


def train(model, images, out, config: DreamBoothConfig | None = None, overwrite: bool = False) -> common.Personalized:
    config = config or DreamBoothConfig()
    config.validate()
    files = common.list_images(images)
    phrase = identifier_phrase(config)
    request = common.make_request(METHOD, model, files, config)
    if (existing := common.reusable_output(out, request, overwrite)) is not None:
        return common.Personalized(Path(out), existing)
    pipe = common.load_pipeline(model)
    resolution = config.resolution or common.pipeline_resolution(pipe)
    manifest = common.base_manifest(request, config, phrase, resolution)

    class_files, class_prompt, class_dir = [], None, None
    if config.with_prior_preservation:
        class_prompt = config.class_prompt.format(class_noun=config.class_noun)
        request = class_images_request(model, class_prompt, resolution, config)
        class_dir = Path(config.class_images_dir) if config.class_images_dir else default_class_dir(out, request)
        device = common.default_device(config.accelerator)
        class_files = ensure_class_images(pipe, class_dir, request, config.num_class_images, config.seed, config.class_batch_size, device, config.progress)

    common.seed_everything(config.seed)
    transform = common.image_transform(resolution, config.center_crop, config.random_flip)
    dataset = common.SubjectDataset(files, manifest["instance_prompt"], transform, class_files, class_prompt, common.run_length(config))
    data = common.SubjectDataModule(dataset, pipe.tokenizer, config.train_batch_size, config.num_workers)
    # Everything stays float32: the whole pipeline is saved, and a VAE or text encoder cast to
    # half precision for training would be saved degraded. Autocast still runs in fp16/bf16.
    module = DreamBoothModule(pipe, config)
    summary = common.fit(module, data, config)

    manifest.update(
        training=summary,
        class_images={"dir": str(class_dir.resolve()) if class_dir else None, "prompt": class_prompt, "n": len(class_files)},
    )
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    with common.atomic_dir(out, overwrite=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        atomic.write_json(tmp / common.MANIFEST, manifest)
    return common.Personalized(Path(out), manifest, pipe)


def load(path, manifest: dict, base=None, dtype=torch.float32):
    """DreamBooth outputs are whole pipelines; the base is not needed."""
    return common.load_pipeline(path, dtype=dtype)

"""LoRA (Hu et al. 2022) on the UNet's attention projections, through peft, DreamBooth-style
prompts ("a photo of sks person") without a prior: the base weights never change, a low-rank
update B @ A is learned beside each projection.

The output holds only the adapter, `pytorch_lora_weights.safetensors` in diffusers' format,
which `StableDiffusionPipeline.load_lora_weights` reads onto the base model.
"""
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genwm import atomic
from genwm.personalize import common

METHOD = "lora"
WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass
class LoRAConfig(common.PersonalizeConfig):
    learning_rate: float = 1e-4
    max_train_steps: int = 500
    rank: int = 4
    alpha: float | None = None  # None: = rank (scale 1)
    lora_dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"])


def identifier_phrase(config) -> str:
    return f"{config.identifier} {config.class_noun}".strip()


class LoRAModule(common.DiffusionFineTuner):
    def __init__(self, pipe, config: LoRAConfig):
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig as PeftLoraConfig

        super().__init__(pipe, config)
        # The frozen base may sit in half precision (it is not saved); the adapter trains in fp32.
        common.cast_modules([self.unet, self.vae, self.text_encoder], common.weight_dtype(config))
        self.unet.add_adapter(
            PeftLoraConfig(
                r=config.rank,
                lora_alpha=config.alpha or config.rank,
                lora_dropout=config.lora_dropout,
                init_lora_weights="gaussian",  # A random, B zero: training starts at the base model
                target_modules=list(config.target_modules),
            )
        )
        cast_training_params(self.unet, dtype=torch.float32)
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def adapter_state_dict(self) -> dict:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        return convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))

    def adapter_metadata(self) -> dict:
        return self.unet.peft_config["default"].to_dict()


def train(model, images, out, config: LoRAConfig | None = None, overwrite: bool = False) -> common.Personalized:
    from diffusers import StableDiffusionPipeline

    config = config or LoRAConfig()
    config.validate()
    files = common.list_images(images)
    phrase = identifier_phrase(config)
    request = common.make_request(METHOD, model, files, config)
    if (existing := common.reusable_output(out, request, overwrite)) is not None:
        return common.Personalized(Path(out), existing)
    pipe = common.load_pipeline(model)
    resolution = config.resolution or common.pipeline_resolution(pipe)
    manifest = common.base_manifest(request, config, phrase, resolution)

    common.seed_everything(config.seed)
    transform = common.image_transform(resolution, config.center_crop, config.random_flip)
    dataset = common.SubjectDataset(files, manifest["instance_prompt"], transform, length=common.run_length(config))
    data = common.SubjectDataModule(dataset, pipe.tokenizer, config.train_batch_size, config.num_workers)
    module = LoRAModule(pipe, config)
    summary = common.fit(module, data, config)

    state = {k: v.detach().float().contiguous() for k, v in module.adapter_state_dict().items()}
    manifest.update(training=summary, weights=WEIGHTS, adapter={"rank": config.rank, "alpha": config.alpha or config.rank, "n_tensors": len(state)})
    with common.atomic_dir(out, overwrite=True) as tmp:
        StableDiffusionPipeline.save_lora_weights(
            save_directory=str(tmp),
            unet_lora_layers=state,
            weight_name=WEIGHTS,
            safe_serialization=True,
            unet_lora_adapter_metadata=module.adapter_metadata(),
        )
        atomic.write_json(tmp / common.MANIFEST, manifest)
    # A base cast to half precision for training is not the base any more: hand back the
    # in-memory pipeline only when nothing was cast, else load the output from disk.
    return common.Personalized(Path(out), manifest, pipe if config.mixed_precision == "no" else None)


def load(path, manifest: dict, base=None, dtype=torch.float32):
    pipe = common.load_pipeline(base or manifest["base_model"], dtype=dtype)
    pipe.load_lora_weights(str(path), weight_name=manifest.get("weights", WEIGHTS))
    return pipe

"""Textual Inversion (Gal et al. 2023): learn one new token's embedding, "<sks>", so that "a
photo of <sks>" reproduces the subject. Nothing else changes: the UNet, the VAE and every
other row of the text encoder's embedding table stay as they were.

The output holds `learned_embeds.safetensors` ({token: [1, dim]}), the format diffusers'
`load_textual_inversion` reads, and no copy of the base model.
"""
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from genwm import atomic
from genwm.personalize import common

METHOD = "textual-inversion"
WEIGHTS = "learned_embeds.safetensors"


@dataclass
class TextualInversionConfig(common.PersonalizeConfig):
    learning_rate: float = 5e-4
    max_train_steps: int = 3000
    adam_weight_decay: float = 0.0
    placeholder_token: str | None = None  # None: "<{identifier}>"
    initializer: str | None = None  # words whose mean embedding starts the token; None: class_noun


def placeholder(config) -> str:
    return config.placeholder_token or f"<{config.identifier}>"


def identifier_phrase(config) -> str:
    return placeholder(config)


def add_placeholder_token(tokenizer, text_encoder, token: str, initializer: str) -> int:
    """Add `token`, resize the embedding table, start its row at the initializer's mean
    embedding (a class word converges faster than noise). -> the token's id."""
    if tokenizer.add_tokens(token) != 1:
        raise ValueError(f"the tokenizer already has the token {token!r}; choose another placeholder_token")
    token_id = tokenizer.convert_tokens_to_ids(token)
    init_ids = tokenizer.encode(initializer, add_special_tokens=False)
    if not init_ids:
        raise ValueError(f"the initializer {initializer!r} encodes to no tokens")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the row is set below
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[token_id] = table[init_ids].mean(dim=0)
    return token_id


class TextualInversionModule(common.DiffusionFineTuner):
    def __init__(self, pipe, config: TextualInversionConfig, token_id: int):
        super().__init__(pipe, config)
        self.token_id = token_id
        table = self.text_encoder.get_input_embeddings().weight
        table.requires_grad_(True)
        # The optimizer updates the whole table (a gradient mask does not stop Adam's weight
        # decay or momentum), so every other row is put back after each step.
        self.register_buffer("original_table", table.detach().clone(), persistent=False)
        keep = torch.ones(table.shape[0], dtype=torch.bool)
        keep[token_id] = False
        self.register_buffer("keep_rows", keep, persistent=False)
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            common.enable_text_encoder_checkpointing(self.text_encoder)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():
            table = self.text_encoder.get_input_embeddings().weight
            table[self.keep_rows] = self.original_table[self.keep_rows]

    def learned_embedding(self) -> torch.Tensor:
        return self.text_encoder.get_input_embeddings().weight[self.token_id].detach().clone()


def train(model, images, out, config: TextualInversionConfig | None = None, overwrite: bool = False) -> common.Personalized:
    config = config or TextualInversionConfig()
    config.validate()
    files = common.list_images(images)
    token = placeholder(config)
    request = common.make_request(METHOD, model, files, config)
    if (existing := common.reusable_output(out, request, overwrite)) is not None:
        return common.Personalized(Path(out), existing)
    pipe = common.load_pipeline(model)
    resolution = config.resolution or common.pipeline_resolution(pipe)
    manifest = common.base_manifest(request, config, token, resolution)

    common.seed_everything(config.seed)
    token_id = add_placeholder_token(pipe.tokenizer, pipe.text_encoder, token, config.initializer or config.class_noun)
    # Only the embedding trains; the frozen UNet and VAE may run in half precision to save
    # memory (they are not saved). The text encoder holds the trained row: float32.
    common.cast_modules([pipe.unet, pipe.vae], common.weight_dtype(config))
    transform = common.image_transform(resolution, config.center_crop, config.random_flip)
    dataset = common.SubjectDataset(files, manifest["instance_prompt"], transform, length=common.run_length(config))
    data = common.SubjectDataModule(dataset, pipe.tokenizer, config.train_batch_size, config.num_workers)
    module = TextualInversionModule(pipe, config, token_id)
    summary = common.fit(module, data, config)

    embedding = module.learned_embedding().float()
    pipe.text_encoder.requires_grad_(False)
    manifest.update(training=summary, placeholder_token=token, token_id=token_id, weights=WEIGHTS, initializer=config.initializer or config.class_noun)
    with common.atomic_dir(out, overwrite=True) as tmp:
        save_file({token: embedding[None].contiguous()}, str(tmp / WEIGHTS))
        atomic.write_json(tmp / common.MANIFEST, manifest)
    # A base cast to half precision for training is not the base any more: hand back the
    # in-memory pipeline only when nothing was cast, else load the output from disk.
    return common.Personalized(Path(out), manifest, pipe if config.mixed_precision == "no" else None)


def load(path, manifest: dict, base=None, dtype=torch.float32):
    pipe = common.load_pipeline(base or manifest["base_model"], dtype=dtype)
    pipe.load_textual_inversion(str(path), weight_name=manifest.get("weights", WEIGHTS), token=manifest["placeholder_token"])
    return pipe

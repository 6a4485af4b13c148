"""The mini text-to-image model: a latent diffusion model in Stable Diffusion's own layout.

VAE (AutoencoderKL), CLIP text encoder with CLIP's real BPE tokenizer, a cross-attention
UNet2DConditionModel and a DDIM scheduler, assembled as a diffusers StableDiffusionPipeline
and saved with save_pretrained: genwm's personalization, synthesis and demo code open it
exactly as they open SD 1.x. The shipped sizes (configs/mini-model.yaml: 64 px images,
32 x 32 x 4 latents) keep pretraining on the subject world to CPU scale.
"""
import gzip
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

CLIP_MERGES = 48894  # lines 1..48894 of bpe_simple_vocab_16e6.txt are the merges CLIP uses


@dataclass
class MiniConfig:
    resolution: int = 64
    vae_channels: tuple = (16, 32, 32)  # three blocks: latents are resolution / 4
    latent_channels: int = 4
    unet_channels: tuple = (32, 64, 64)
    unet_layers_per_block: int = 1
    # Levels, from the finest, without cross-attention: attention over every latent position
    # is what makes larger latents expensive (scripts/bench_mini_unet.py).
    unet_plain_levels: int = 0
    attention_head_dim: int = 8
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 77  # CLIP's; the pipeline pads prompts to it
    train_timesteps: int = 1000

    def to_dict(self):
        return asdict(self)


def byte_alphabet() -> list[str]:
    """CLIP's byte-to-unicode map, in CLIP's order: every byte gets a printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer_files(bpe_gz, out_dir) -> Path:
    """vocab.json and merges.txt for transformers' CLIPTokenizer, rebuilt from CLIP's own
    bpe_simple_vocab_16e6.txt.gz (shipped in the clip-anytorch and open-clip-torch wheels)."""
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : CLIP_MERGES + 1]
    chars = byte_alphabet()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return out_dir


def load_tokenizer(directory, max_length: int = 77):
    from transformers import CLIPTokenizer

    directory = Path(directory)
    missing = [f for f in ("vocab.json", "merges.txt") if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: no {' or '.join(missing)}; build them with genwm.mini.model.clip_tokenizer_files "
                                "from CLIP's bpe_simple_vocab_16e6.txt.gz (see scripts/train_mini.sh)")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length)


def build_vae(config: MiniConfig):
    from diffusers import AutoencoderKL

    n = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(config.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        latent_channels=config.latent_channels,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=config.resolution,
    )


def build_text_encoder(config: MiniConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_hidden,
            intermediate_size=4 * config.text_hidden,
            num_attention_heads=config.text_heads,
            num_hidden_layers=config.text_layers,
            max_position_embeddings=config.max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="quick_gelu",
        )
    )


def build_unet(config: MiniConfig):
    from diffusers import UNet2DConditionModel

    n, plain = len(config.unet_channels), config.unet_plain_levels
    attention = [plain <= i < n - 1 for i in range(n)]  # the coarsest level never has it (SD's layout)
    return UNet2DConditionModel(
        sample_size=config.resolution // 2 ** (len(config.vae_channels) - 1),
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=tuple(config.unet_channels),
        layers_per_block=config.unet_layers_per_block,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        cross_attention_dim=config.text_hidden,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=32,
    )


def build_scheduler(config: MiniConfig, kind: str = "ddim"):
    """SD 1.x's noise schedule; DDPM for training, DDIM (what the pipeline samples with) saved."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=config.train_timesteps, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    if kind == "ddpm":
        return DDPMScheduler(**common)
    return DDIMScheduler(**common, set_alpha_to_one=False, steps_offset=1)


def assemble_pipeline(vae, text_encoder, tokenizer, unet, config: MiniConfig):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def latent_scaling_factor(vae, images: torch.Tensor) -> float:
    """1 / std of the latents, as SD's 0.18215 was chosen: unit-variance latents for the UNet."""
    return float(1.0 / vae.encode(images * 2 - 1).latent_dist.mean.std())

"""A tiny, random-weight StableDiffusionPipeline built from configs, for tests without network.

The layout on disk is the real one (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
scheduler/), so the code under test opens it through the same `from_pretrained` path users
take with a real SD 1.x or 2.x checkpoint. `sd2=True` switches on the SD 2.x differences that
matter to training: v-prediction, linear projections in the transformer blocks, and
per-block attention head dims.
"""
from pathlib import Path

import torch

VOCAB_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def tiny_tokenizer(model_max_length: int = 32):
    """A real CLIPTokenizer whose BPE vocab is just the byte alphabet (no merges): every word
    becomes its characters, the last one with CLIP's '</w>' suffix. Added tokens (TI) work."""
    from transformers import CLIPTokenizer

    from genwm.mini.model import byte_alphabet

    chars = byte_alphabet()
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + list(VOCAB_SPECIALS))}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def build_tiny_pipeline(sd2: bool = False, sample_size: int = 8, seed: int = 0):
    """-> StableDiffusionPipeline with random weights; images are sample_size * 2 pixels."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(  # two blocks: vae_scale_factor 2
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=sample_size * 2,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="gelu" if sd2 else "quick_gelu",
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if sd2 else "epsilon",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(path, **kwargs) -> Path:
    path = Path(path)
    build_tiny_pipeline(**kwargs).save_pretrained(path, safe_serialization=True)
    return path


def make_subject_images(path, n: int = 4, size: int = 24, seed: int = 0) -> Path:
    """n smooth random RGB photos (a subject stand-in), as PNG files."""
    import numpy as np
    from PIL import Image

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
        img.save(path / f"photo_{i:02d}.png")
    return path


def save_tiny_phase1(path, canonical_size: int = 16, seed: int = 0) -> Path:
    """A random phase-1 checkpoint (generator and detector) sized for tiny images."""
    from genwm.checkpoint import save_checkpoint
    from genwm.models import Detector, GeneratorConfig, WatermarkGenerator

    torch.manual_seed(seed)
    g = WatermarkGenerator(GeneratorConfig(tile=8, max_rms=0.03, canonical_size=canonical_size))
    d = Detector.for_generator(g, width=8)
    save_checkpoint(path, generator=g, detector=d, metadata={"phase": 1, "note": "random weights for tests"})
    return Path(path)

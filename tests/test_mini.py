"""The mini world and the mini text-to-image model: deterministic subjects, the CLIP tokenizer
files, and a pretraining run (tiny sizes) whose output opens as a StableDiffusionPipeline."""
import gzip
import json

import numpy as np
import pytest
import torch

from genwm.mini import world
from genwm.mini.model import MiniConfig, byte_alphabet, clip_tokenizer_files, load_tokenizer


def test_pretraining_stream_is_deterministic_and_captioned():
    a, caption = world.pretraining_example(7)
    b, again = world.pretraining_example(7)
    assert np.array_equal(a, b) and caption == again
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    captions = [world.pretraining_example(s)[1] for s in range(40)]
    assert all(any(c in cap for c in world.CLASSES) for cap in captions)
    assert any(cap.startswith("a painting") for cap in captions) and any(cap.startswith("a photo") for cap in captions)
    assert len({world.pretraining_example(s)[0].tobytes() for s in range(10)}) == 10


def test_subjects_are_fixed_instances_in_varied_scenes():
    s0, s1, style = world.subject(0), world.subject(1), world.subject(2)
    assert s0.kind == "object" and style.kind == "style" and style.class_noun == "painting"
    assert s0.object != s1.object
    images = s0.images(8)
    assert len(images) == 8 and len({im.tobytes() for im in images}) == 8
    assert all(np.array_equal(x, y) for x, y in zip(images, world.subject(0).images(8)))
    # a subject's seed lies beyond every seed the pretraining stream draws
    assert world.SUBJECT_SEED_BASE > 2**31 - 1


def test_every_class_and_scene_renders():
    rng = np.random.default_rng(0)
    for cls in world.CLASSES:
        img, obj, scene = world.scene_image(rng, 48, obj=world.random_object(rng, cls))
        assert img.shape == (48, 48, 3) and obj.cls == cls
    for scene in world.SCENES:
        assert world.background(scene, rng, 32).shape == (32, 32, 3)


def test_clip_tokenizer_files_follow_clips_layout(tmp_path):
    bpe = tmp_path / "bpe.txt.gz"
    merges = ["p h", "o t", "ph ot", "phot o</w>"]
    with gzip.open(bpe, "wt", encoding="utf-8") as f:
        f.write("#version\n" + "\n".join(merges) + "\n")
    import genwm.mini.model as M

    old = M.CLIP_MERGES
    M.CLIP_MERGES = len(merges)
    try:
        clip_tokenizer_files(bpe, tmp_path / "tok")
    finally:
        M.CLIP_MERGES = old
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text())
    assert len(vocab) == 512 + len(merges) + 2 and vocab["<|endoftext|>"] == len(vocab) - 1
    assert list(vocab)[:256] == byte_alphabet() and vocab["photo</w>"] == 512 + 3
    tok = load_tokenizer(tmp_path / "tok", max_length=16)
    ids = tok("photo").input_ids
    assert ids == [vocab["<|startoftext|>"], vocab["photo</w>"], vocab["<|endoftext|>"]]
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_tokenizer(tmp_path / "nothing")


def test_pretrain_mini_writes_a_pipeline_that_reloads_and_generates(tmp_path):
    from diffusers import StableDiffusionPipeline
    from tiny_sd import tiny_tokenizer

    from genwm.mini.train import MiniTrainConfig, pretrain_mini

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text(json.dumps(tiny_tokenizer().get_vocab()))
    (tmp_path / "tok" / "merges.txt").write_text("#version: 0.2\n")
    model = MiniConfig(resolution=16, vae_channels=(16, 16, 16), unet_channels=(32, 32, 32), text_hidden=32, text_layers=1, max_length=16)
    config = MiniTrainConfig(model=model, n_images=24, vae_steps=3, vae_batch_size=8, unet_steps=3, unet_batch_size=8, accelerator="cpu", progress=False)
    record = pretrain_mini(config, tmp_path / "tok", tmp_path / "sd", tmp_path / "work")
    assert record["parameters"]["unet"] > 0 and np.isfinite(record["vae_reconstruction_psnr"])
    assert (tmp_path / "work" / "world.npz").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    assert pipe.vae.config.scaling_factor == pytest.approx(record["latent_scaling_factor"])
    image = pipe("a photo of a toy", num_inference_steps=2, height=16, width=16, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (16, 16)


def test_shipped_mini_model_speaks_clips_vocabulary():
    """The shipped model's tokenizer is CLIP's own BPE: the ids CLIP gives."""
    from pathlib import Path

    from transformers import CLIPTokenizer

    folder = Path(__file__).resolve().parents[1] / "checkpoints" / "genwm-mini-sd"
    tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok("a photo of sks person").input_ids == [49406, 320, 1125, 539, 48136, 2533, 49407]


def test_unet_plain_levels_drop_cross_attention_from_the_finest_levels_only():
    import dataclasses

    from genwm.mini.model import build_unet

    shipped = build_unet(MiniConfig()).config
    assert shipped.down_block_types == ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    plain = build_unet(dataclasses.replace(MiniConfig(), unet_channels=(32, 32, 64, 64), unet_plain_levels=2)).config
    assert plain.down_block_types == ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    assert plain.up_block_types == tuple(reversed(["UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]))

"""DreamBooth, Textual Inversion and LoRA on a tiny random Stable Diffusion pipeline (built
from configs, saved, and opened through from_pretrained as users do), synthesis, and the
errors bad input gets. A few optimizer steps each, on CPU."""
import argparse
import json
import os

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file
from tiny_sd import make_subject_images, save_tiny_pipeline

from genwm.personalize import load_personalized, make_config, personalize
from genwm.personalize.common import load_pipeline, make_optimizer, prediction_target
from genwm.synthesize import SamplerConfig, synthesize

FAST = dict(max_train_steps=2, train_batch_size=2, accelerator="cpu", progress=False)
SAMPLER = SamplerConfig(num_inference_steps=2, device="cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("personalize")
    base = save_tiny_pipeline(root / "sd")
    photos = make_subject_images(root / "photos", n=4, size=24)
    return root, base, photos


def state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def generate(pipe, prompt, seed=0):
    return pipe([prompt], num_inference_steps=2, generator=[torch.Generator().manual_seed(seed)], output_type="np").images[0]


def test_dreambooth_trains_unet_with_prior_and_saves_a_pipeline(setup):
    root, base, photos = setup
    base_pipe = StableDiffusionPipeline.from_pretrained(base)
    extra = dict(num_class_images=2, class_inference_steps=2, learning_rate=1e-3)
    result = personalize("dreambooth", base, photos, root / "db", **FAST, **extra)
    m = result.manifest
    assert m["identifier"] == "sks person" and m["instance_prompt"] == "a photo of sks person"
    assert m["training"]["steps"] == 2 and m["class_images"]["n"] == 2

    reopened = StableDiffusionPipeline.from_pretrained(root / "db")  # the user's path, no genwm needed
    tuned, orig = state(reopened.unet), state(base_pipe.unet)
    assert any(not torch.equal(tuned[k], orig[k]) for k in orig)
    assert all(torch.equal(a, b) for a, b in zip(state(reopened.vae).values(), state(base_pipe.vae).values()))
    assert all(torch.equal(a, b) for a, b in zip(state(reopened.text_encoder).values(), state(base_pipe.text_encoder).values()))
    assert generate(reopened, "a photo of sks person").shape == (16, 16, 3)

    # Class images are cached: a second model (other seed) reuses them, nothing regenerated.
    class_dir = m["class_images"]["dir"]
    stamps = {f: os.stat(os.path.join(class_dir, f)).st_mtime_ns for f in os.listdir(class_dir)}
    personalize("dreambooth", base, photos, root / "db-seed1", **FAST, **extra, seed=1)
    assert {f: os.stat(os.path.join(class_dir, f)).st_mtime_ns for f in os.listdir(class_dir)} == stamps

    # The same request again reuses the output instead of training.
    again = personalize("dreambooth", base, photos, root / "db", **FAST, **extra)
    assert again.pipeline is None and again.manifest == m
    with pytest.raises(ValueError, match="different personalization"):
        personalize("dreambooth", base, photos, root / "db", **FAST, **extra, seed=7)


def test_textual_inversion_changes_only_the_new_embedding(setup):
    root, base, photos = setup
    base_pipe = StableDiffusionPipeline.from_pretrained(base)
    result = personalize("textual-inversion", base, photos, root / "ti", learning_rate=5e-2, **FAST)
    pipe, m = result.pipeline, result.manifest
    token_id = m["token_id"]
    assert m["placeholder_token"] == "<sks>" and token_id == len(base_pipe.tokenizer)

    table, old = pipe.text_encoder.get_input_embeddings().weight, base_pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[:token_id], old)  # every existing row as it was
    init = old[base_pipe.tokenizer.encode("person", add_special_tokens=False)].mean(0)
    assert not torch.allclose(table[token_id], init)  # the new row learned
    rest = {k: v for k, v in state(pipe.text_encoder).items() if "token_embedding" not in k}
    assert all(torch.equal(v, state(base_pipe.text_encoder)[k]) for k, v in rest.items())
    assert all(torch.equal(a, b) for a, b in zip(state(pipe.unet).values(), state(base_pipe.unet).values()))
    assert all(torch.equal(a, b) for a, b in zip(state(pipe.vae).values(), state(base_pipe.vae).values()))

    assert sorted(os.listdir(root / "ti")) == ["genwm_personalization.json", "learned_embeds.safetensors"]
    saved = load_file(root / "ti" / "learned_embeds.safetensors")
    assert list(saved) == ["<sks>"] and torch.equal(saved["<sks>"][0], table[token_id].detach())
    user = StableDiffusionPipeline.from_pretrained(base)
    user.load_textual_inversion(str(root / "ti"))  # diffusers' own loader reads the output
    assert generate(user, "a photo of <sks>").shape == (16, 16, 3)


def test_lora_saves_only_the_adapter_and_leaves_base_weights_untouched(setup):
    root, base, photos = setup
    base_unet = state(StableDiffusionPipeline.from_pretrained(base).unet)
    result = personalize("lora", base, photos, root / "lora", learning_rate=1e-2, **FAST)

    compared = 0
    for k, v in state(result.pipeline.unet).items():
        if "lora_" in k:
            continue
        assert torch.equal(v, base_unet[k.replace(".base_layer", "")]), k
        compared += 1
    assert compared == len(base_unet)

    assert sorted(os.listdir(root / "lora")) == ["genwm_personalization.json", "pytorch_lora_weights.safetensors"]
    adapter = load_file(root / "lora" / "pytorch_lora_weights.safetensors")
    assert adapter and all("lora" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora.up" in k or "lora_B" in k)  # B left zero init

    plain = StableDiffusionPipeline.from_pretrained(base)
    with_lora = StableDiffusionPipeline.from_pretrained(base)
    with_lora.load_lora_weights(str(root / "lora"))  # diffusers' own loader
    a, b = generate(plain, "a photo of sks person"), generate(with_lora, "a photo of sks person")
    assert a.shape == b.shape == (16, 16, 3) and not np.array_equal(a, b)


def test_gpu_options_bf16_gradient_checkpointing_and_accumulation(setup):
    root, base, photos = setup
    # 4 photos, batch 1, accumulation 3: cycles must not be cut short at the photo set's end
    options = dict(FAST, train_batch_size=1, mixed_precision="bf16", gradient_checkpointing=True, gradient_accumulation_steps=3)
    result = personalize("lora", base, photos, root / "lora-bf16", **options)
    assert result.manifest["training"]["steps"] == 2 and result.manifest["training"]["micro_batches"] == 6
    assert result.pipeline is None  # the base was cast to bf16 in memory: reload from disk instead
    pipe, _ = load_personalized(root / "lora-bf16")
    assert generate(pipe, "a photo of sks person").shape == (16, 16, 3)


def test_sd2_layout_trains_on_velocity(setup, tmp_path):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(prediction_type="v_prediction")
    latents, noise, t = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2), torch.tensor([10, 900])
    a = scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(prediction_target(scheduler, latents, noise, t), a * noise - s * latents, atol=1e-6)
    assert prediction_target(DDPMScheduler(), latents, noise, t) is noise

    _, _, photos = setup
    base = save_tiny_pipeline(tmp_path / "sd2", sd2=True)
    result = personalize("dreambooth", base, photos, tmp_path / "db2", with_prior_preservation=False, **FAST)
    pipe, _ = load_personalized(tmp_path / "db2")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert result.manifest["resolution"] == 16 and generate(pipe, "a photo of sks person").shape == (16, 16, 3)


def test_synthesize_records_prompts_seeds_and_is_batch_invariant(setup, tmp_path):
    root, base, photos = setup
    if not (root / "lora").is_dir():
        personalize("lora", base, photos, root / "lora", learning_rate=1e-2, **FAST)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na photo of {identifier}\n\na drawing of {identifier}\n")
    rec = synthesize(root / "lora", prompts, 3, tmp_path / "s", seed=5, sampler=SamplerConfig(num_inference_steps=2, batch_size=3, device="cpu"), progress=False)
    assert [im["seed"] for im in rec["images"]] == [5, 6, 7]
    assert [im["prompt"] for im in rec["images"]] == ["a photo of sks person", "a drawing of sks person", "a photo of sks person"]
    assert rec["sampler"]["num_inference_steps"] == 2 and rec["sampler"]["scheduler"] == "DDIMScheduler"
    assert rec["personalization"]["method"] == "lora" and rec["personalization"]["seed"] == 0
    on_disk = json.loads((tmp_path / "s" / "synthesis.json").read_text())
    assert on_disk["images"] == rec["images"]
    assert Image.open(tmp_path / "s" / "00000.png").size == (16, 16)

    one_by_one = synthesize(root / "lora", prompts, 3, tmp_path / "s1", seed=5, sampler=SamplerConfig(num_inference_steps=2, batch_size=1, device="cpu"), progress=False)
    for a, b in zip(rec["images"], one_by_one["images"]):
        x = np.asarray(Image.open(tmp_path / "s" / a["file"]), dtype=int)
        y = np.asarray(Image.open(tmp_path / "s1" / b["file"]), dtype=int)
        assert np.abs(x - y).max() <= 1  # per-image generators: the batch does not change an image

    assert synthesize(root / "lora", prompts, 3, tmp_path / "s", seed=5, sampler=SamplerConfig(num_inference_steps=2, batch_size=2, device="cpu"), progress=False) == rec
    with pytest.raises(ValueError, match="different image set"):
        synthesize(root / "lora", prompts, 4, tmp_path / "s", seed=5, sampler=SAMPLER, progress=False)
    bigger = synthesize(root / "lora", prompts, 1, tmp_path / "s24", sampler=SamplerConfig(num_inference_steps=2, resolution=24, device="cpu"), progress=False)
    assert Image.open(tmp_path / "s24" / bigger["images"][0]["file"]).size == (24, 24)


def test_bad_input_gets_a_one_line_error_naming_the_file(setup, tmp_path, monkeypatch):
    root, base, photos = setup
    with pytest.raises(FileNotFoundError, match="no such pipeline directory"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no model_index.json"):
        load_pipeline(tmp_path / "empty")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="--local-dir"):
        load_pipeline("someone/no-such-model")

    broken = tmp_path / "broken"
    broken.mkdir()
    Image.open(photos / "photo_00.png").save(broken / "ok.png")
    (broken / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"bad\.jpg: cannot read image"):
        personalize("lora", base, broken, tmp_path / "out", **FAST)

    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of {identifier}\na photo of a dog\n")
    with pytest.raises(ValueError, match=r"p\.txt:2: prompt has no \{identifier\}"):
        synthesize(base, prompts, 1, tmp_path / "s", identifier="x", sampler=SAMPLER)
    foreign = tmp_path / "someone-elses"
    foreign.mkdir()
    (foreign / "00000.png").write_bytes(b"theirs")
    prompts.write_text("a photo of {identifier}\n")
    with pytest.raises(ValueError, match="not a genwm image set"):
        synthesize(base, prompts, 1, foreign, identifier="x", sampler=SAMPLER)
    assert (foreign / "00000.png").read_bytes() == b"theirs"

    cfg = tmp_path / "c.yaml"
    cfg.write_text("common:\n  max_train_steps: 3\nlora:\n  rnak: 8\n")
    with pytest.raises(ValueError, match=r"c\.yaml: unknown option.*rnak"):
        make_config("lora", cfg)
    assert make_config("lora", rank=8).rank == 8

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="bitsandbytes"):
            make_optimizer([torch.nn.Parameter(torch.zeros(1))], make_config("lora", use_8bit_adam=True))


def test_cli_personalize_and_synthesize(setup, tmp_path):
    from genwm.commands import personalize as commands

    root, base, photos = setup
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["personalize", "--method", "textual-inversion", "--model", str(base), "--images", str(photos), "--out", str(tmp_path / "ti"), "--steps", "2", "--batch-size", "2", "--accelerator", "cpu", "--seed", "3", "--quiet"])
    assert args.func(args) == 0
    manifest = json.loads((tmp_path / "ti" / "genwm_personalization.json").read_text())
    assert manifest["seed"] == 3 and manifest["config"]["max_train_steps"] == 2

    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of {identifier}\n")
    args = parser.parse_args(["synthesize", "--model", str(tmp_path / "ti"), "--prompts", str(prompts), "--n", "2", "--out", str(tmp_path / "s"), "--sample-steps", "2", "--device", "cpu", "--quiet"])
    assert args.func(args) == 0
    assert [im["prompt"] for im in json.loads((tmp_path / "s" / "synthesis.json").read_text())["images"]] == ["a photo of <sks>"] * 2

    args = parser.parse_args(["personalize", "--method", "dreambooth", "--model", str(base), "--images", str(photos), "--out", str(tmp_path / "x"), "--rank", "8"])
    with pytest.raises(ValueError, match="--rank applies to lora"):
        args.func(args)


@pytest.mark.parametrize("name", ["gpu.yaml", "cpu-small.yaml"])
def test_shipped_configs_load_for_every_method(name):
    from pathlib import Path

    from genwm.protect import load_protect_config

    path = Path(__file__).resolve().parents[1] / "configs" / "personalize" / name
    for method in ("dreambooth", "textual-inversion", "lora"):
        assert make_config(method, path).identifier == "sks"
    assert load_protect_config(path).n_images > 0


def test_a_config_file_extends_another_mapping_by_mapping(tmp_path):
    from genwm.protect import load_protect_config

    (tmp_path / "base.yaml").write_text("protect: {n_images: 7, methods: [lora]}\nfinetune: {epochs: 3, batch_size: 4}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nprotect: {methods: [dreambooth]}\nfinetune: {epochs: 5}\n")
    config = load_protect_config(tmp_path / "child.yaml")
    assert (config.n_images, config.methods, config.finetune.epochs, config.finetune.batch_size) == (7, ["dreambooth"], 5, 4)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="a.yaml: extends itself"):
        load_protect_config(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match="gone.yaml: config file not found"):
        load_protect_config(tmp_path / "orphan.yaml")


def test_shipped_profile_variants_change_only_what_they_say():
    from pathlib import Path

    from genwm.demo import load_demo_config, protect_config_for

    configs = Path(__file__).resolve().parents[1] / "configs"
    base = load_demo_config(configs / "demo-profile.yaml")
    two = load_demo_config(configs / "demo-profile-2test.yaml")
    assert two["evaluate"] == {**base["evaluate"], "test_seed_offsets": [1000, 4000], "control_seed_offsets": [2000, 3000, 5000]}
    assert {k: v for k, v in two.items() if k != "evaluate"} == {k: v for k, v in base.items() if k != "evaluate"}
    rowmeans_two = load_demo_config(configs / "demo-profile-rowmeans-2test.yaml")
    assert rowmeans_two == {**two, "checkpoint": load_demo_config(configs / "demo-profile-rowmeans.yaml")["checkpoint"]}
    assert rowmeans_two["checkpoint"].endswith("genwm-mini-profile-rowmeans")
    band_two = load_demo_config(configs / "demo-profile-band-2test.yaml")
    assert band_two == {**two, "checkpoint": load_demo_config(configs / "demo-profile-band.yaml")["checkpoint"]}
    assert band_two["checkpoint"].endswith("genwm-mini-profile-band")
    band_rings, band_plain = (protect_config_for(configs / f, 0, {}) for f in ("demo-profile-band-rings-2test.yaml", "demo-profile-band-2test.yaml"))
    assert (band_rings.finetune.rings, band_plain.finetune.rings) == (True, False)
    assert band_rings.finetune.replace(rings=False) == band_plain.finetune and band_rings.personalize == band_plain.personalize
    assert load_demo_config(configs / "demo-profile-band-rings-2test.yaml") == band_two
    strong, plain = (protect_config_for(configs / f, 0, {}) for f in ("demo-profile-strong.yaml", "demo-profile.yaml"))
    assert (strong.strength, plain.strength) == (1.1, 1.0)
    assert strong.finetune == plain.finetune and strong.personalize == plain.personalize
    # the personalization commands read an extending file's sections through the same reader
    assert make_config("dreambooth", configs / "demo-profile-2test.yaml").max_train_steps == make_config("dreambooth", configs / "demo.yaml").max_train_steps == 1000

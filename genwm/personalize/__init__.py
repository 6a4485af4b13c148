"""Personalize a Stable Diffusion pipeline on a subject's photos, as a mimic would.

    from genwm.personalize import personalize, load_personalized
    result = personalize("lora", "path/to/sd-pipeline", "photos/", "out/lora", max_train_steps=500)
    pipe = load_personalized("out/lora")

Methods: "dreambooth", "textual-inversion", "lora". Each module has a Config dataclass,
train(model, images, out, config) and load(path, manifest).
"""
from pathlib import Path

from genwm.personalize import dreambooth, lora, textual_inversion
from genwm.personalize.common import Personalized, config_from, load_pipeline, pipeline_resolution, read_manifest

METHODS = {
    dreambooth.METHOD: (dreambooth, dreambooth.DreamBoothConfig),
    textual_inversion.METHOD: (textual_inversion, textual_inversion.TextualInversionConfig),
    lora.METHOD: (lora, lora.LoRAConfig),
}


def method_module(method: str):
    if method not in METHODS:
        raise ValueError(f"unknown personalization method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method]


def make_config(method: str, yaml_path=None, **overrides):
    """The method's config: defaults, then a YAML file's `common:` and `<method>:` sections,
    then keyword overrides (None values ignored)."""
    _, cls = method_module(method)
    return config_from(cls, yaml_path, section=method, **overrides)


def identifier_phrase(method: str, config) -> str:
    """What `{identifier}` in a prompt becomes for this method ("sks person", "<sks>")."""
    module, _ = method_module(method)
    return module.identifier_phrase(config)


def personalize(method: str, model, images, out, config=None, overwrite: bool = False, **overrides) -> Personalized:
    """Train `method` on the photos in `images`, starting from pipeline `model`; write `out`.

    Re-running with the same request returns the existing output without training."""
    module, _ = method_module(method)
    config = (config or make_config(method)).replace(**overrides)
    return module.train(model, images, out, config, overwrite=overwrite)


def load_personalized(path, base=None, dtype=None):
    """A pipeline for a personalization output (or a plain pipeline folder); `base` replaces
    the recorded base model of a LoRA or TI output, for when it has moved. -> (pipe, manifest)."""
    import torch

    dtype = dtype or torch.float32
    manifest = read_manifest(path) if Path(path).is_dir() else None
    if manifest is None:
        return load_pipeline(path, dtype=dtype), None
    module, _ = method_module(manifest["method"])
    return module.load(path, manifest, base=base, dtype=dtype), manifest


__all__ = ["METHODS", "Personalized", "identifier_phrase", "load_personalized", "make_config", "personalize", "pipeline_resolution"]

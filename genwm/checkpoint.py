"""A genwm checkpoint is a folder: model.safetensors (weights), config.json (model configs and
training metadata, so loading needs no guesswork) and, for detectors, calibration.json."""
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from genwm import atomic
from genwm.models import Detector, DetectorConfig, GeneratorConfig, WatermarkGenerator

FORMAT = "genwm-checkpoint"
# 2: G is a learned filter over key noise, one key bit per tile pixel (version 1's G mapped 64
# bits through a network; its weights mean nothing to this code).
VERSION = 2


def save_checkpoint(path, generator: WatermarkGenerator | None = None, detector: Detector | None = None, metadata: dict | None = None):
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors, config = {}, {"format": FORMAT, "version": VERSION}
    for name, model in (("generator", generator), ("detector", detector)):
        config[name] = model.config.to_dict() if model is not None else None
        if model is not None:
            # clone: in phase 1 the detector's template *is* the generator, and safetensors
            # stores no tensor twice
            tensors.update({f"{name}.{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()})
    config["metadata"] = metadata or {}
    with atomic.atomic_path(path / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    atomic.write_json(path / "config.json", config)


def read_config(path) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: not a genwm checkpoint (no config.json)")
    config = json.loads(cfg_file.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{cfg_file}: not a genwm checkpoint config (format={config.get('format')!r})")
    if config.get("version") != VERSION:
        raise ValueError(f"{cfg_file}: checkpoint format version {config.get('version')}, this genwm reads version {VERSION}; "
                         "retrain it with the current recipe (scripts/train_base.sh, or genwm pretrain / genwm finetune)")
    return config


def load_checkpoint(path, device="cpu"):
    """-> (generator or None, detector or None, config dict)."""
    path = Path(path)
    config = read_config(path)
    weights_file = path / "model.safetensors"
    if not weights_file.is_file():
        raise FileNotFoundError(f"{path}: checkpoint has no model.safetensors")
    state = load_file(str(weights_file), device=str(device))
    models = []
    for name, cls, cfg_cls in (("generator", WatermarkGenerator, GeneratorConfig), ("detector", Detector, DetectorConfig)):
        if config.get(name) is None:
            models.append(None)
            continue
        model = cls(cfg_cls(**config[name]))
        prefix = f"{name}."
        model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        models.append(model.to(device).eval())
    return models[0], models[1], config


def load_calibration(path) -> dict | None:
    f = Path(path) / "calibration.json"
    return json.loads(f.read_text()) if f.is_file() else None


def save_calibration(path, calibration: dict) -> None:
    atomic.write_json(Path(path) / "calibration.json", calibration)


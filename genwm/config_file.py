"""Reading genwm's YAML config files: one reader for every section a file holds, so a file that
extends another reads the same to the protect, demo, personalization and pretrain commands."""
from pathlib import Path


def read_config_file(path, _seen: tuple = ()) -> dict:
    """A YAML config file's sections. `extends: OTHER.yaml` (relative to the file) reads that
    file first and lays this one over it, mapping by mapping (a list or a value replaces), so
    a variant config holds only what it changes."""
    import yaml

    path = Path(path)
    if path.resolve() in _seen:
        raise ValueError(f"{path}: extends itself (through {' -> '.join(str(p) for p in _seen)})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    base = data.pop("extends", None)
    if base is None:
        return data

    def laid_over(under: dict, over: dict) -> dict:
        out = dict(under)
        for k, v in over.items():
            out[k] = laid_over(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return laid_over(read_config_file(path.parent / base, (*_seen, path.resolve())), data)

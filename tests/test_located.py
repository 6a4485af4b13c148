"""Phase 2's located reading: find where personalized models draw the mark, read there alone."""
import numpy as np
import torch
from PIL import Image

from genwm.checkpoint import save_checkpoint
from genwm.evaluate import detection_metrics
from genwm.finetune import FinetuneConfig, finetune_detector, locate
from genwm.keys import key_bits
from genwm.models import Detector, DetectorConfig, GeneratorConfig

from conftest import smooth_photo

KEY = "located-key"
SHIFT = (3, 5)


def detector() -> Detector:
    torch.manual_seed(0)
    return Detector(DetectorConfig(template=GeneratorConfig(tile=8, canonical_size=64).to_dict(), width=8, highpass=True, scale_range=(0.8, 1.25))).eval()


def images(n: int, seed: int, mark: torch.Tensor | None = None, amplitude: float = 0.0) -> list[torch.Tensor]:
    """64-px photo-like images with a little noise; with `mark`, its tile repeated over the
    image and moved by SHIFT, at `amplitude` (RMS) — the faint, grid-tied mark a personalized
    model draws."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = torch.from_numpy(smooth_photo(64, 64, seed * 1000 + i)).permute(2, 0, 1).float() / 255
        x = x + torch.from_numpy(rng.normal(0, 0.02, x.shape)).float()
        if mark is not None:
            tiled = mark.repeat(1, 8, 8).roll(SHIFT, dims=(1, 2))
            x = x + amplitude * tiled / tiled.square().mean().sqrt()
        out.append(x.clamp(0, 1))
    return out


def test_locate_finds_a_faint_mark_where_it_was_drawn_and_reading_there_beats_searching():
    d = detector()
    bits = key_bits(KEY, d.config.n_bits)[None]
    with torch.no_grad():
        mark = d.templates(bits)[0]
    train_clean, train_marked = images(24, 1), images(24, 2, mark, 0.0006)
    test_clean, test_marked = images(24, 3), images(24, 4, mark, 0.0006)

    found = locate(d, train_clean, train_marked, bits)
    assert (found["dy"], found["dx"]) == SHIFT and found["scale"] == 1.0

    def auc(det):
        with torch.no_grad():
            return detection_metrics([det.logit(x[None], bits).item() for x in test_clean], [det.logit(x[None], bits).item() for x in test_marked])["roc_auc"]

    searching = auc(d)
    d.config.located = (found["scale"], found["dy"], found["dx"])
    located = auc(d)
    assert located >= 0.95 and located > searching + 0.2, (located, searching)
    # Another key's detector, read at the same place, does not see this key's mark.
    other = key_bits("another-key", d.config.n_bits)[None]
    with torch.no_grad():
        other_logits = [d.logit(x[None], other).item() for x in test_marked]
        clean_logits = [d.logit(x[None], other).item() for x in test_clean]
    assert abs(detection_metrics(clean_logits, other_logits)["roc_auc"] - 0.5) < 0.25


def test_phase2_with_locate_records_the_place_and_the_saved_detector_reads_there(tmp_path):
    d = detector()
    bits = key_bits(KEY, d.config.n_bits)[None]
    with torch.no_grad():
        mark = d.templates(bits)[0]
    folders = {}
    for side, seed, amplitude in (("clean", 5, 0.0), ("watermarked", 6, 0.001)):
        folder = tmp_path / side
        folder.mkdir()
        for i, x in enumerate(images(30, seed, mark if amplitude else None, amplitude)):
            Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
        folders[side] = folder
    save_checkpoint(tmp_path / "base", detector=d, metadata={"phase": 1})
    config = FinetuneConfig(epochs=3, batch_size=16, learning_rate=1e-3, locate=True, progress=False, accelerator="cpu")
    meta = finetune_detector(folders["clean"], folders["watermarked"], tmp_path / "base", tmp_path / "tuned", KEY, config)

    location = meta["location"]
    assert (location["dy"], location["dx"]) == SHIFT and location["scale"] == 1.0
    # held-out pairs, never used to locate or train
    assert location["holdout_metrics_located"]["roc_auc"] >= 0.9
    assert meta["holdout_metrics_after"]["roc_auc"] >= 0.9
    tuned = Detector.from_pretrained(tmp_path / "tuned")
    assert tuned.config.located == (1.0, *SHIFT)
    assert tuned.calibration is not None

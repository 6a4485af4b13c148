"""Phase 2's located reading: find where personalized models draw the mark, read there alone."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from genwm.calibration import key_test
from genwm.checkpoint import save_checkpoint
from genwm.evaluate import detection_metrics, evaluate_sets, folder_logits
from genwm.finetune import FinetuneConfig, finetune_detector, locate, ring_readings
from genwm.keys import key_bits, null_key_bits
from genwm.models import Detector, DetectorConfig, GeneratorConfig
from genwm.models.generator import cycles_per_tile

from conftest import smooth_photo

KEY = "located-key"
SHIFT = (3, 5)


def detector() -> Detector:
    torch.manual_seed(0)
    return Detector(DetectorConfig(template=GeneratorConfig(tile=8, canonical_size=64).to_dict(), width=8, highpass=True, scale_range=(0.8, 1.25))).eval()


def images(n: int, seed: int, mark: torch.Tensor | None = None, amplitude: float = 0.0, smeared: bool = False, shift=SHIFT) -> list[torch.Tensor]:
    """64-px photo-like images with a little noise; with `mark`, its tile repeated over the
    image and moved by `shift`, at `amplitude` (RMS) — the faint, grid-tied mark a personalized
    model draws. `smeared`: each image's mark at a random horizontal shift instead, in SHIFT's
    row (a model that knows the row from the top border but not the column)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = torch.from_numpy(smooth_photo(64, 64, seed * 1000 + i)).permute(2, 0, 1).float() / 255
        x = x + torch.from_numpy(rng.normal(0, 0.02, x.shape)).float()
        if mark is not None:
            moved = (shift[0], int(rng.integers(mark.shape[-1]))) if smeared else shift
            tiled = mark.repeat(1, 8, 8).roll(moved, dims=(1, 2))
            x = x + amplitude * tiled / tiled.square().mean().sqrt()
        out.append(x.clamp(0, 1))
    return out


def auc(d: Detector, bits: torch.Tensor, clean: list[torch.Tensor], marked: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return detection_metrics([d.logit(x[None], bits).item() for x in clean], [d.logit(x[None], bits).item() for x in marked])["roc_auc"]


def read_at(d: Detector, scale: float, weights) -> Detector:
    d.config.located = {"scale": scale, "weights": [float(w) for w in weights]}
    return d


def test_locate_finds_a_faint_mark_where_it_was_drawn_and_reading_there_beats_searching():
    d = detector()
    bits = key_bits(KEY, d.config.n_bits)[None]
    with torch.no_grad():
        mark = d.templates(bits)[0]
    train_clean, train_marked = images(24, 1), images(24, 2, mark, 0.0006)
    test_clean, test_marked = images(24, 3), images(24, 4, mark, 0.0006)

    found = locate(d, train_clean, train_marked, bits)
    assert found["peak"] == list(SHIFT) and found["scale"] == 1.0

    searching = auc(d, bits, test_clean, test_marked)
    located = auc(read_at(d, found["scale"], found["weights"]), bits, test_clean, test_marked)
    assert located >= 0.95 and located > searching + 0.2, (located, searching)
    # Another key's detector, read at the same place, does not see this key's mark.
    other = key_bits("another-key", d.config.n_bits)[None]
    with torch.no_grad():
        other_logits = [d.logit(x[None], other).item() for x in test_marked]
        clean_logits = [d.logit(x[None], other).item() for x in test_clean]
    assert abs(detection_metrics(clean_logits, other_logits)["roc_auc"] - 0.5) < 0.25


def test_weighing_every_shift_reads_a_mark_smeared_along_a_row_that_its_peak_alone_misses():
    d = detector()
    bits = key_bits(KEY, d.config.n_bits)[None]
    with torch.no_grad():
        mark = d.templates(bits)[0]
    found = locate(d, images(32, 1), images(32, 2, mark, 0.005, smeared=True), bits)
    test_clean, test_marked = images(24, 3), images(24, 4, mark, 0.005, smeared=True)
    weighted = auc(read_at(d, found["scale"], found["weights"]), bits, test_clean, test_marked)
    peak_alone = auc(read_at(d, found["scale"], np.eye(d.config.tile**2)[found["peak"][0] * d.config.tile + found["peak"][1]]), bits, test_clean, test_marked)
    assert weighted >= 0.85 and weighted > peak_alone + 0.1, (weighted, peak_alone)


def save_folder(folder, xs: list[torch.Tensor]):
    folder.mkdir()
    for i, x in enumerate(xs):
        Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def phase2_folders(tmp_path, d: Detector, mark: torch.Tensor, amplitude: float, shift=SHIFT) -> dict:
    """Generated-image folders of each side, and the phase-1 checkpoint at tmp_path / "base"."""
    folders = {side: save_folder(tmp_path / side, images(30, seed, mark if a else None, a, shift=shift)) for side, seed, a in (("clean", 5, 0.0), ("watermarked", 6, amplitude))}
    save_checkpoint(tmp_path / "base", detector=d, metadata={"phase": 1})
    return folders


def test_phase2_with_locate_records_the_place_and_the_saved_detector_reads_there(tmp_path):
    d = detector()
    bits = key_bits(KEY, d.config.n_bits)[None]
    with torch.no_grad():
        mark = d.templates(bits)[0]
    folders = phase2_folders(tmp_path, d, mark, 0.001)
    config = FinetuneConfig(epochs=3, batch_size=16, learning_rate=1e-3, locate=True, null_keys=39, progress=False, accelerator="cpu")
    meta = finetune_detector(folders["clean"], folders["watermarked"], tmp_path / "base", tmp_path / "tuned", KEY, config)

    location = meta["location"]
    assert location["peak"] == list(SHIFT) and location["scale"] == 1.0
    # held-out pairs, never used to locate or train
    assert location["holdout_metrics_located"]["roc_auc"] >= 0.9
    assert meta["holdout_metrics_after"]["roc_auc"] >= 0.9
    tuned = Detector.from_pretrained(tmp_path / "tuned")
    weights = np.array(tuned.config.located["weights"])
    assert tuned.config.located["scale"] == 1.0 and divmod(int(weights.argmax()), tuned.config.tile) == SHIFT
    assert tuned.calibration is not None
    # Phase 2 fitted the logit's affine map alone: the front end is phase 1's, as the key test needs.
    assert all(torch.equal(a, b) for a, b in zip(d.extractor.state_dict().values(), tuned.extractor.state_dict().values()))

    # The key test: the null keys were located on the same images and travel with the detector.
    assert len(tuned.config.located["null_scales"]) == 39 and tuned.null_weights.shape == (39, tuned.config.tile**2)
    assert tuned.null_weights.abs().sum(dim=1).min() > 0
    assert 0 < location["t_max_key_rank_p"] <= 1 / 40 + 1e-9  # the mark's place stands out among the null keys'
    marked = images(30, 8, mark, 0.001)  # new images: the fine-tuning ones were fitted
    evidence = tuned.key_evidences(marked[:4], KEY)
    with torch.no_grad():
        logits = torch.cat([tuned.logit(tuned.to_canonical(x), bits) for x in marked[:4]])
    assert np.allclose(evidence[:, 0], ((logits + tuned.bias) / tuned.scale).detach().numpy(), atol=1e-4)  # column 0 is what D reads
    found = tuned.verdict(marked, KEY, alpha=0.05)
    assert found["p_value"] == pytest.approx(1 / 40) and found["watermark_detected"]  # no null key reads as high
    assert not tuned.verdict(marked, KEY)["watermark_detected"]  # 39 null keys cannot reach p <= 0.01
    assert not tuned.verdict(images(30, 7), KEY, alpha=0.05)["watermark_detected"]

    # evaluate_sets reads a located detector's images once for its logits and its key tests:
    # the logits are still D's own.
    test = {side: save_folder(tmp_path / f"test_{side}", imgs) for side, imgs in (("clean", images(8, 11)), ("watermarked", marked[:8]))}
    result = evaluate_sets(tuned, KEY, test["clean"], test["watermarked"], "known", allow_dishonest=True, set_size=4)
    for side in ("clean", "watermarked"):
        assert np.allclose(result["logits"][side], folder_logits(tuned, test[side], KEY), atol=1e-4)
    assert result["key_test"]["n_null_keys"] == 39 and len(result["key_test"]["models"]) == 2


def test_the_drawn_place_reads_every_key_at_shift_0_and_finds_a_mark_drawn_there(tmp_path):
    d = detector()
    bits = key_bits(KEY, d.config.n_bits)[None]
    with torch.no_grad():
        mark = d.templates(bits)[0]
    folders = phase2_folders(tmp_path, d, mark, 0.001, shift=(0, 0))
    config = FinetuneConfig(epochs=2, batch_size=16, learning_rate=1e-3, locate=True, place="drawn", null_keys=39, progress=False, accelerator="cpu")
    meta = finetune_detector(folders["clean"], folders["watermarked"], tmp_path / "base", tmp_path / "tuned", KEY, config)

    tuned = Detector.from_pretrained(tmp_path / "tuned")
    located = tuned.config.located
    one_hot = np.eye(tuned.config.tile**2)[0]
    # Nothing was chosen: every key, the subject's and the null ones, is read at scale 1, shift 0.
    assert located["scale"] == 1.0 and located["null_scales"] == [1.0] * 39
    assert np.array_equal(located["weights"], one_hot) and np.array_equal(tuned.null_weights.numpy(), np.tile(one_hot, (39, 1)))
    assert meta["location"]["peak"] == [0, 0] and 0 < meta["location"]["t_max_key_rank_p"] <= 1 / 40 + 1e-9
    marked = images(30, 8, mark, 0.001, shift=(0, 0))
    assert tuned.verdict(marked, KEY, alpha=0.05)["watermark_detected"]
    # The mark drawn elsewhere is not read at the drawn place.
    assert not tuned.verdict(images(30, 9, mark, 0.001), KEY, alpha=0.05)["watermark_detected"]


def reproductions(photos: list[torch.Tensor], n: int, seed: int, mark: torch.Tensor, amplitude: float = 0.0) -> list[torch.Tensor]:
    """n images of a model that redraws its training photos (with fresh noise), and, with
    amplitude, the mark at shift 0 over them."""
    rng = np.random.default_rng(seed)
    tiled = mark.repeat(1, 8, 8)
    tiled = tiled / tiled.square().mean().sqrt()
    return [(photos[i % len(photos)] + torch.from_numpy(rng.normal(0, 0.02, photos[0].shape)).float() + amplitude * tiled).clamp(0, 1) for i in range(n)]


def test_the_key_test_regresses_out_what_the_photos_share_with_every_key(tmp_path):
    """Models redraw their photos, and so every key reads their images about as it reads the
    photos; these photos happen to meet the key (here, in the extreme, they hold a little of
    its template). Ranked among the null keys, every clean model's set is "found"; compared
    with what the photos predict of each key (DetectorConfig.located["covariates"]), only a
    mark beyond the photos' own is."""
    d = detector()
    bits = key_bits(KEY, d.config.n_bits)[None]
    with torch.no_grad():
        mark = d.templates(bits)[0]
    photos = images(8, 11, mark, 0.0004, shift=(0, 0))
    extra = 0.0005
    folders = {"clean": save_folder(tmp_path / "clean", reproductions(photos, 30, 5, mark)), "watermarked": save_folder(tmp_path / "watermarked", reproductions(photos, 30, 6, mark, extra))}
    save_checkpoint(tmp_path / "base", detector=d, metadata={"phase": 1})
    config = FinetuneConfig(epochs=1, batch_size=16, learning_rate=1e-3, locate=True, place="drawn", null_keys=39, progress=False, accelerator="cpu")
    meta = finetune_detector(folders["clean"], folders["watermarked"], tmp_path / "base", tmp_path / "tuned", KEY, config, covariate_dirs={"photos": save_folder(tmp_path / "photos", photos)})
    tuned = Detector.from_pretrained(tmp_path / "tuned")
    assert list(tuned.key_covariates) == ["photos"] and len(tuned.key_covariates["photos"]) == 40
    assert meta["key_test_covariates"] == {"photos": str((tmp_path / "photos").resolve())}

    def fired(amplitude: float, covariates) -> int:
        return sum(key_test(tuned.key_evidences(reproductions(photos, 30, seed, mark, amplitude), KEY), 0.05, covariates)["watermark_detected"] for seed in range(10, 20))

    assert fired(0.0, None) >= 9  # the photos' own correlation, taken for a mark
    assert fired(0.0, tuned.key_covariates) <= 2  # 0.5 of 10 expected at 0.05
    assert fired(extra, tuned.key_covariates) >= 8
    verdict = tuned.verdict(reproductions(photos, 30, 7, mark), KEY, alpha=0.05)  # verdicts condition on the photos
    assert verdict["conditioned_on"] == ["photos"] and not verdict["watermark_detected"]

    # `genwm scan` with this detector tests a folder the same way and says so
    from genwm.cli import main

    suspects = save_folder(tmp_path / "suspects", reproductions(photos, 30, 21, mark, extra))
    code = main(["scan", str(suspects), "--key", KEY, "--detector", str(tmp_path / "tuned"), "--alpha", "0.05", "--json", str(tmp_path / "scan.json")])
    scanned = json.loads((tmp_path / "scan.json").read_text())["verdict"]
    assert code == 1 and scanned["test"] == "key" and scanned["conditioned_on"] == ["photos"] and scanned["watermark_detected"]
    # its per-image logits come from the key test's reading, and are what D itself gives
    rows = json.loads((tmp_path / "scan.json").read_text())["images"]
    direct = tuned.logits([Image.open(r["path"]) for r in rows], KEY)
    assert np.allclose([r["logit"] for r in rows], direct, atol=1e-4)


def test_place_must_be_known():
    with pytest.raises(ValueError, match="place must be one of found, drawn"):
        FinetuneConfig().replace(place="anywhere")


def only_rings(mark: torch.Tensor, rings: list[int]) -> torch.Tensor:
    """mark [3, T, T] with only the given rings of its frequencies kept (Detector.ring_index)."""
    t = mark.shape[-1]
    keep = torch.isin(cycles_per_tile(t, onesided=True).round().long(), torch.tensor(rings))
    return torch.fft.irfft2(torch.fft.rfft2(mark) * keep, s=(t, t))


def test_ring_readings_add_up_to_the_located_reading():
    d = detector()
    all_bits = torch.cat([key_bits(KEY, d.config.n_bits)[None].float(), null_key_bits(3, d.config.n_bits)])
    with torch.no_grad():
        spectrum = d.template_spectrum(d.templates(all_bits)[None])
        weights = torch.randn(4, d.config.tile**2, generator=torch.Generator().manual_seed(0))
        for x in images(2, 7, d.templates(all_bits[:1])[0], 0.01):
            residual = d.residual(x[None])
            parts = ring_readings(d, residual, spectrum, 1.0, weights)
            assert parts.shape == (4, d.config.tile // 2 + 1) and parts[:, 1:].abs().sum() > 0
            assert torch.allclose(parts.sum(dim=1), d.read_located(residual, spectrum, [1.0] * 4, weights)[0], atol=1e-4)
            # gains of 1 on every ring change nothing; a gain of 0 takes that ring's part away
            flat = torch.ones(4, d.config.tile // 2 + 1)
            assert torch.allclose(d.read_located(residual, spectrum, [1.0] * 4, weights, flat), parts.sum(dim=1), atol=1e-4)
            drop = flat.clone()
            drop[:, 2] = 0
            without = ring_readings(d, residual, spectrum * drop[:, d.ring_index()][None, :, None, None], 1.0, weights)
            assert torch.allclose(without[:, 2], torch.zeros(4), atol=1e-6)


def with_texture(xs: list[torch.Tensor], seed: int, amplitude: float, ring: int) -> list[torch.Tensor]:
    """xs, each with a texture of its own on the tile's grid, all of it in one ring of the
    tile's frequencies: what a personalized model's own textures add where it keeps no mark."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for x in xs:
        tile = only_rings(torch.randn(1, 8, 8, generator=g).expand(3, -1, -1), [ring]).repeat(1, 8, 8)
        out.append((x + amplitude * tile / tile.square().mean().sqrt()).clamp(0, 1))
    return out


def test_rings_fitted_in_phase_2_weigh_up_the_frequencies_the_models_keep(tmp_path):
    d = detector()
    bits = key_bits(KEY, d.config.n_bits)[None]
    with torch.no_grad():
        kept = only_rings(d.templates(bits)[0], [1, 2, 3])  # the models kept the mark's rings 1-3, and vary most at ring 4

    def generated(n, seed, mark=None):
        return with_texture(images(n, seed, mark, 0.001 if mark is not None else 0.0, shift=(0, 0)), seed, 0.003, ring=4)

    folders = {side: save_folder(tmp_path / side, generated(30, seed, mark)) for side, seed, mark in (("clean", 5, None), ("watermarked", 6, kept))}
    save_checkpoint(tmp_path / "base", detector=d, metadata={"phase": 1})
    config = FinetuneConfig(epochs=1, batch_size=16, learning_rate=1e-3, locate=True, place="drawn", null_keys=39, rings=True, progress=False, accelerator="cpu")
    finetune_detector(folders["clean"], folders["watermarked"], tmp_path / "base", tmp_path / "tuned", KEY, config)

    tuned = Detector.from_pretrained(tmp_path / "tuned")
    gains = tuned.config.located["rings"]
    assert gains[0] == 0 and max(gains[1:4]) == 1 and gains[4] < 0.2, gains
    test_clean, test_marked = generated(40, 30), generated(40, 31, kept)
    plain = auc(read_at(detector(), 1.0, np.eye(d.config.tile**2)[0]), bits, test_clean, test_marked)
    weighed = auc(tuned, bits, test_clean, test_marked)
    assert weighed > plain + 0.15, (weighed, plain)
    evidence = {side: tuned.key_evidences(xs, KEY) for side, xs in (("clean", test_clean), ("marked", test_marked))}
    with torch.no_grad():
        logits = torch.cat([tuned.logit(x[None], bits) for x in test_marked])
    assert np.allclose(evidence["marked"][:, 0], ((logits + tuned.bias) / tuned.scale).detach().numpy(), atol=1e-4)  # column 0 is what D reads
    # The null keys, read with the same gains, do not read the key's mark.
    null_aucs = [detection_metrics(evidence["clean"][:, j], evidence["marked"][:, j])["roc_auc"] for j in range(1, 40)]
    assert abs(np.median(null_aucs) - 0.5) < 0.1, np.median(null_aucs)


def test_rings_need_locate():
    with pytest.raises(ValueError, match="rings .* needs locate"):
        FinetuneConfig().replace(rings=True)

"""Phase 1 and the models: keyed marks, any resolution, a short joint training run that
learns, checkpoints, calibration, and LPIPS's offline behaviour."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smooth_photo
from PIL import Image

from genwm.checkpoint import load_checkpoint, save_checkpoint
from genwm.keys import key_bits, key_fingerprint
from genwm.models import Detector, GeneratorConfig, WatermarkGenerator
from genwm.models.generator import band_gain, centre_crop_offset, cycles_per_tile
from genwm.watermarker import Watermarker


def test_key_bits_are_deterministic_and_keys_differ():
    assert torch.equal(key_bits("alice", 64), key_bits("alice", 64))
    assert not torch.equal(key_bits("alice", 64), key_bits("bob", 64))
    assert set(key_bits("alice", 64).tolist()) == {-1.0, 1.0}
    assert key_fingerprint("alice") != key_fingerprint("bob") and "alice" not in key_fingerprint("alice")
    with pytest.raises(ValueError):
        key_bits("", 64)


def test_same_key_same_mark_other_key_other_mark(tiny_checkpoint):
    a, b = Watermarker.from_pretrained(tiny_checkpoint), Watermarker.from_pretrained(tiny_checkpoint)
    pa, pb = a.pattern(80, 100, "alice"), b.pattern(80, 100, "alice")
    assert np.array_equal(pa, pb)
    other = a.pattern(80, 100, "bob")
    assert np.abs(pa - other).mean() > 0.1 * np.abs(pa).mean()


@pytest.mark.parametrize("height, width", [(64, 100), (100, 64), (300, 470), (470, 300)])
def test_a_centre_crop_of_the_photo_carries_the_mark_at_shift_0(tiny_checkpoint, height, width):
    """The mark's origin is the corner of the photo's central square, so the crop that a
    mimic's pipeline takes (short side resized to the canonical size, then a centre crop:
    genwm.personalize's own transform) holds it at shift 0, as a place read where genwm drew it
    expects, whatever the photo's shape and size."""
    from genwm.personalize.common import image_transform

    wm = Watermarker.from_pretrained(tiny_checkpoint, key="k", strength=15.0)
    c = wm.generator.config
    grey = np.full((height, width, 3), 0.5, dtype=np.float32)
    marked = Image.fromarray(np.round(wm.watermark_array(grey) * 255).astype(np.uint8))
    crop = image_transform(c.canonical_size, center_crop=True, random_flip=False)(marked)[0]  # [-1, 1], one channel (grey mark)
    tile = wm.tile()[:1]
    corr = torch.zeros(c.tile, c.tile)
    for dy in range(c.tile):
        for dx in range(c.tile):
            shifted = WatermarkGenerator.render(tile, c.canonical_size, c.canonical_size, 1.0, (dy, dx))[0, 0]
            corr[dy, dx] = torch.corrcoef(torch.stack([crop.flatten(), shifted.flatten()]))[0, 1]
    dy, dx = divmod(int(corr.argmax()), c.tile)
    if max(height, width) <= 100:  # drawn at the canonical scale: no resampling
        assert (dy, dx) == (0, 0) and corr[0, 0] > 0.9
    else:
        # Drawn larger and resized back, the mark's grid is stretched by the rounding of the
        # sizes (rendered a whole number of canonical pixels long, ceil(470 / 4.6875) = 101,
        # which the mimic's resize makes 100): within a pixel of shift 0. Drawn from the photo's
        # corner, it would sit 18 canonical pixels (2 in the tile) off.
        assert max(abs((dy + 1) % c.tile - 1), abs((dx + 1) % c.tile - 1)) <= 1 and corr.max() > 0.5
    assert centre_crop_offset(height, height, c.canonical_size, c.tile) == (0, 0)  # square photos: as before


def test_mark_energy_is_fixed_by_max_rms():
    g = WatermarkGenerator(GeneratorConfig(tile=8, max_rms=0.01))
    tiles = g(key_bits("k", g.config.n_bits)[None])
    assert tiles.pow(2).mean().sqrt().item() == pytest.approx(0.01, rel=1e-4)
    assert tiles.mean(dim=(2, 3)).abs().max().item() < 1e-6  # no brightness shift


def test_large_photo_is_marked_at_full_resolution(tiny_checkpoint):
    """A 4000 x 3000 photo keeps its size; the mark is drawn at the photo's resolution, and
    the photo's own pixels are never resampled (the output minus the mark is the input)."""
    wm = Watermarker.from_pretrained(tiny_checkpoint, key="k")
    photo = Image.fromarray(smooth_photo(3000, 4000, seed=1))
    out = wm.watermark(photo)
    assert out.size == (4000, 3000) and out.mode == "RGB"
    diff = np.asarray(out, dtype=np.float32) - np.asarray(photo, dtype=np.float32)
    pattern = wm.pattern(3000, 4000) * 255
    assert np.abs(diff - pattern).max() <= 0.5 + 1e-3  # rounding only: no clipping on this photo
    # The mark covers the whole photo, not a corner of it.
    for block in (diff[:500, :500], diff[-500:, -500:]):
        assert np.abs(block).mean() > 0.1


def test_detector_scores_any_size_and_rejects_too_small(tiny_checkpoint):
    detector = Detector.from_pretrained(tiny_checkpoint)
    bits = key_bits("k", detector.config.n_bits)[None]
    for h, w in ((16, 16), (37, 91), (200, 64)):
        logit = detector.logit(torch.rand(1, 3, h, w), bits)
        assert logit.shape == (1,) and torch.isfinite(logit).all()
    with pytest.raises(ValueError, match="smaller than one period"):
        detector.logit(torch.rand(1, 3, 3, 3), bits)


def test_highpass_detector_finds_marks_before_any_training():
    """The fixed high-pass makes an untrained detector a working matched filter."""
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    g = WatermarkGenerator(GeneratorConfig(tile=16, max_rms=0.011, canonical_size=64))
    photos = torch.stack([torch.from_numpy(smooth_photo(64, 64, seed=i)).permute(2, 0, 1).float() / 255 for i in range(16)])
    bits = key_bits("k", g.config.n_bits)[None].expand(16, -1)
    marked = g.embed(photos, bits)
    auc = {}
    for highpass in (False, True):
        d = Detector.for_generator(g, block_periods=2, highpass=highpass)
        with torch.no_grad():
            own, clean = d.logit(marked, bits), d.logit(photos, bits)
        auc[highpass] = roc_auc_score([1] * 16 + [0] * 16, torch.cat([own, clean]).numpy())
    assert auc[True] > 0.95 and auc[True] >= auc[False], auc  # measured: 1.0 and 0.98


def test_checkpoint_round_trip_gives_identical_outputs(tiny_checkpoint, tmp_path):
    g, d, config = load_checkpoint(tiny_checkpoint)
    save_checkpoint(tmp_path / "copy", generator=g, detector=d, metadata=config["metadata"])
    g2, d2, config2 = load_checkpoint(tmp_path / "copy")
    bits = key_bits("k", g.config.n_bits)[None]
    x = torch.rand(2, 3, 40, 40)
    assert torch.equal(g(bits), g2(bits))
    assert torch.equal(d.logit(x, bits), d2.logit(x, bits))
    assert config2["metadata"] == config["metadata"] and config2["detector"] == config["detector"]
    # safetensors only: nothing in the folder is a pickle
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["config.json", "model.safetensors"]


def test_checkpoint_of_another_format_version_is_refused_by_name(tiny_checkpoint, tmp_path):
    """A version-1 checkpoint's G is a different network: loading it must fail with the file
    and what to do, not with a tensor-shape error from deep inside."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    config = json.loads((old / "config.json").read_text())
    config["version"] = 1
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"old/config.json: checkpoint format version 1.*retrain"):
        load_checkpoint(old)


def test_missing_lpips_backbone_names_the_file_and_where_to_put_it(tmp_path):
    from genwm.perceptual import load_perceptual

    missing = tmp_path / "nothing.pth"
    with pytest.raises(FileNotFoundError) as e:
        load_perceptual("lpips-alex", backbone_path=str(missing))
    message = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in message and str(missing) in message and "checkpoints" in message
    with pytest.raises(ValueError, match="unknown perceptual backend"):
        load_perceptual("alexnet-please")


def test_effnet_perceptual_distance_orders_distortions():
    from genwm.perceptual import load_perceptual

    p = load_perceptual("effnet-lite0")
    x = torch.from_numpy(smooth_photo(64, 64, seed=2)).permute(2, 0, 1)[None].float() / 255
    torch.manual_seed(0)
    small = p(x, (x + 0.005 * torch.randn_like(x)).clamp(0, 1)).item()
    large = p(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1)).item()
    assert p(x, x).item() == pytest.approx(0, abs=1e-6)
    assert 0 < small < large


# ---- a short phase-1 run -------------------------------------------------------------------------


def write_photos(folder: Path, n: int, size: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(smooth_photo(size, size, seed=seed + i)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def phase1_run(tmp_path_factory):
    from genwm.pretrain import load_pretrain_config, pretrain

    root = tmp_path_factory.mktemp("phase1")
    train = write_photos(root / "train", 12, 64, seed=0)
    calib = write_photos(root / "calib", 6, 64, seed=100)
    config = load_pretrain_config(
        None,
        out=str(root / "ckpt"),
        run_dir=str(root / "run"),
        data={"train_dirs": [str(train)], "val_dirs": [str(calib)], "crop": 32, "batch_size": 8, "steps_per_epoch": 25, "val_crops": 32},
        model={
            "generator": {"tile": 8, "max_rms": 0.03, "canonical_size": 64},
            "detector": {"width": 8, "scale_range": [0.8, 1.25], "scale_step": 1.1},
            "perceptual": "lpips-alex-random",
            "budget": 0.5,
            "lr_d": 3e-3,
            "lr_g": 1e-3,
            "detector_warmup": 10,
            "channel_ramp": 0,
        },
        trainer={"max_epochs": 3, "accelerator": "cpu"},
        calibration={"n_keys": 4},
    )
    metadata = pretrain(config, progress=False)
    return root, config, metadata


def held_out_auc(checkpoint) -> float:
    """ROC AUC of the key's marked vs clean copies of photos no phase-1 step saw."""
    from sklearn.metrics import roc_auc_score

    wm, detector = Watermarker.from_pretrained(checkpoint), Detector.from_pretrained(checkpoint)
    photos = [Image.fromarray(smooth_photo(64, 64, seed=900 + i)) for i in range(12)]
    own = detector.logits([wm.watermark(p, "carol") for p in photos], "carol")
    clean = detector.logits(photos, "carol")
    return roc_auc_score([1] * len(own) + [0] * len(clean), np.r_[own, clean])


def test_short_phase1_run_raises_detection_accuracy(phase1_run, tmp_path):
    import csv

    from genwm.pretrain import WatermarkPretraining

    root, config, metadata = phase1_run
    torch.manual_seed(config["seed"])
    untrained = WatermarkPretraining(**config["model"])
    save_checkpoint(tmp_path / "untrained", generator=untrained.generator, detector=untrained.detector)
    before, after = held_out_auc(tmp_path / "untrained"), held_out_auc(root / "ckpt")
    assert after > 0.95 and after > before + 0.2
    rows = list(csv.DictReader(open(next((root / "run" / "logs").rglob("metrics.csv")))))
    # three epochs' validations, then the exported (best) epoch's again
    scores = [float(r["val/score"]) for r in rows if r.get("val/score")]
    assert len(scores) == 4 and scores[3] == pytest.approx(max(scores[:3]), abs=1e-6)
    assert metadata["validation"]["val/score"] == pytest.approx(max(scores[:3]), abs=1e-6)
    assert metadata["selected_epoch"] == int(np.argmax(scores[:3]))
    assert metadata["perceptual"] == "lpips-alex-random" and "warning" in metadata


def test_validation_attacks_are_checked_up_front():
    """val_attacks names what selects the exported epoch: an unknown name, or 'vae' without a VAE
    in the channel, fails before any training."""
    from genwm.pretrain import WatermarkPretraining

    small = dict(generator={"tile": 8}, detector={"block_periods": 2}, perceptual="lpips-alex-random")
    assert WatermarkPretraining(**small, val_attacks=["clean", "blur1"]).hparams.val_attacks == ["clean", "blur1"]
    for attacks in (["clean", "rotate90"], ["clean", "vae"]):
        with pytest.raises(ValueError, match="val_attacks"):
            WatermarkPretraining(**small, val_attacks=attacks)


def test_trained_detector_tells_marks_keys_and_clean_apart(phase1_run, tmp_path):
    root, _, _ = phase1_run
    wm = Watermarker.from_pretrained(root / "ckpt")
    detector = Detector.from_pretrained(root / "ckpt")
    photos = [Image.fromarray(smooth_photo(64, 64, seed=500 + i)) for i in range(8)]
    marked = [wm.watermark(p, "alice") for p in photos]
    own = detector.logits(marked, "alice")
    clean = detector.logits(photos, "alice")
    other = detector.logits(marked, "bob")
    assert own.mean() > clean.mean() + 1 and own.mean() > other.mean() + 1
    assert (own > max(clean.max(), other.max())).mean() >= 0.75


def test_pretrain_writes_checkpoint_calibration_and_resumes(phase1_run):
    from genwm.pretrain import pretrain

    root, config, metadata = phase1_run
    saved = json.loads((root / "ckpt" / "config.json").read_text())
    assert saved["metadata"]["steps"] == metadata["steps"] and saved["generator"]["tile"] == 8
    cal = json.loads((root / "ckpt" / "calibration.json").read_text())
    assert len(cal["null_logits"]) == 6 * 4 * len(cal["attacks"]) and 0 < cal["fpr_at_threshold"] < 0.1
    assert (root / "run" / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(ValueError, match="--resume"):
        pretrain(config, progress=False)
    resumed = pretrain({**config, "trainer": {**config["trainer"], "max_epochs": 4}}, resume=True, progress=False)
    assert resumed["epochs"] == 4 and resumed["steps"] > metadata["steps"]


def test_cli_calibrate_then_scan_verdict(phase1_run, tmp_path, capsys):
    import shutil

    from genwm.cli import main

    root, _, _ = phase1_run
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "ckpt", ckpt)
    (ckpt / "calibration.json").unlink()
    assert main(["calibrate", str(ckpt), "--images", str(root / "calib"), "--n-keys", "4", "--quiet"]) == 0
    assert (ckpt / "calibration.json").is_file()
    photos = write_photos(tmp_path / "photos", 6, 64, seed=700)
    assert main(["watermark", str(photos), "--out", str(tmp_path / "marked"), "--key", "alice", "--checkpoint", str(ckpt), "--no-metrics"]) == 0
    assert main(["scan", str(tmp_path / "marked"), "--key", "alice", "--detector", str(ckpt)]) == 1  # detected
    assert main(["scan", str(photos), "--key", "alice", "--detector", str(ckpt)]) == 0  # clean photos
    assert main(["scan", str(tmp_path / "marked"), "--key", "bob", "--detector", str(ckpt)]) == 0  # another key


def test_key_overlap_is_one_for_equal_tiles_and_small_for_random_ones():
    from genwm.pretrain import key_overlap

    torch.manual_seed(0)
    same = torch.randn(1, 3, 16, 16).expand(4, -1, -1, -1)
    assert key_overlap(same).item() == pytest.approx(1.0, abs=1e-5)
    assert key_overlap(torch.randn(8, 3, 16, 16)).item() < 5 / (3 * 16 * 16)


def test_band_gain_keeps_the_mark_in_its_band():
    tiles = WatermarkGenerator(GeneratorConfig(tile=16))
    with torch.no_grad():
        tiles.gain.copy_(band_gain(16, 4))
        spectrum = torch.fft.fft2(tiles(key_bits("k", 256)[None])[0, 0]).abs()
    outside = cycles_per_tile(16) > 4
    assert spectrum[outside].max().item() < 1e-6 * spectrum.max().item()
    assert spectrum[~outside].pow(2).sum() > 0.99 * spectrum.pow(2).sum()


def test_band_min_takes_the_lowest_frequencies_out_of_a_profile_mark(tmp_path):
    """GeneratorConfig.band_min: a row-constant mark keeps no energy below band_min or above
    band cycles per tile, at the same RMS, and its detector's template (from a checkpoint)
    is the same band-passed mark, so the detector reads its own key's mark."""
    from genwm.models import DetectorConfig

    config = GeneratorConfig(tile=64, max_rms=0.011, canonical_size=64, band=14, band_min=5, mirror=True, rows=True)
    g = WatermarkGenerator(config)
    bits = key_bits("k", config.n_bits)[None]
    with torch.no_grad():
        tile = g(bits)[0, 0]
    assert torch.equal(tile, tile[:, :1].expand_as(tile))
    energy = torch.fft.rfft(tile[:, 0]).abs().pow(2)
    assert energy[:5].sum() < 1e-9 * energy.sum() and energy[15:].sum() < 1e-9 * energy.sum()
    assert tile.pow(2).mean().sqrt().item() == pytest.approx(0.011, rel=1e-4)
    full = WatermarkGenerator(GeneratorConfig(**{**config.to_dict(), "band": 16, "band_min": None}))
    with torch.no_grad():
        full_energy = torch.fft.rfft(full(bits)[0, 0, :, 0]).abs().pow(2)
    assert full_energy[1:5].sum() > 0.05 * full_energy.sum()  # the key's noise did have energy there
    detector = Detector(DetectorConfig(template=config.to_dict(), block_periods=2, row_window=9))
    detector.templates.load_state_dict(g.state_dict())
    detector.set_located(1.0, torch.eye(64 * 64)[0].tolist())  # read where G drew it
    save_checkpoint(tmp_path / "ck", generator=g, detector=detector)
    g2, d2, saved = load_checkpoint(tmp_path / "ck")
    assert saved["generator"]["band_min"] == 5 and d2.config.template["band_min"] == 5
    with torch.no_grad():
        assert torch.allclose(g2(bits), g(bits)) and torch.allclose(d2.templates(bits), g(bits))
        photos = torch.stack([torch.from_numpy(smooth_photo(64, 64, seed=i)).permute(2, 0, 1).float() / 255 for i in range(8)])
        own, clean = (d2.evidence(x, g(bits)[:, None])[:, 0] for x in (g.embed(photos, bits), photos))
    assert own.mean() > clean.mean() + 2.5, (own, clean)


def test_band_holds_whatever_the_gain_learns(tmp_path):
    """`band` is a constraint: gains above it have no effect, before and after any update,
    and it survives a checkpoint round trip (the detector's template too)."""
    g = WatermarkGenerator(GeneratorConfig(tile=16, band=4))
    with torch.no_grad():
        g.gain.mul_(torch.rand_like(g.gain) * 5)
    bits = key_bits("k", 256)[None]
    loss = g(bits)[0, 0, :, 1:].sub(g(bits)[0, 0, :, :-1]).pow(2).sum()  # pushes energy up the band
    loss.backward()
    outside = band_gain(16, 4) == 0
    assert g.gain.grad[outside].abs().max().item() == 0.0
    save_checkpoint(tmp_path / "ck", generator=g, detector=Detector.for_generator(g), metadata={"phase": 1})
    g2, d2, _ = load_checkpoint(tmp_path / "ck")
    for tiles in (g2, d2.templates):
        with torch.no_grad():
            tiles.gain.fill_(1.0)
            spectrum = torch.fft.fft2(tiles(bits)[0, 0]).abs()
        assert spectrum[cycles_per_tile(16) > 4].max().item() < 1e-6 * spectrum.max().item()


def test_mirror_symmetric_mark_survives_a_horizontal_flip():
    """With `mirror`, a mirrored marked image (personalization's random_flip) is found as
    well as the original; an asymmetric mark mirrored is not found at all."""
    photos = torch.stack([torch.from_numpy(smooth_photo(64, 96, seed=s)).permute(2, 0, 1).float() / 255 for s in range(4)])
    bits = key_bits("k", 256)[None]
    evidence = {}
    for mirror in (False, True):
        torch.manual_seed(0)
        g = WatermarkGenerator(GeneratorConfig(tile=16, max_rms=0.02, canonical_size=64, band=4, mirror=mirror))
        tile = g(bits)[0, 0]
        assert torch.allclose(tile, tile.flip(-1), atol=1e-7) == mirror
        detector = Detector.for_generator(g, block_periods=2, highpass=True)
        marked = g.embed(photos, bits, offset=(3, 5))
        with torch.no_grad():
            evidence[mirror] = [detector.evidence(x, g(bits)[:, None])[:, 0] for x in (marked, marked.flip(-1), photos)]
    marked, flipped, clean = evidence[True]
    assert flipped.min() > 0.9 * marked.min() and flipped.min() > clean.max() + 3
    marked, flipped, clean = evidence[False]
    assert flipped.max() < marked.min() - 3


def test_row_constant_tiles_keep_the_rms_and_a_detector_of_the_same_config_reads_them():
    """With `rows`, each tile is its rows' means (horizontal stripes) at the same RMS, unchanged
    by a horizontal flip; the detector whose templates share the config, reading where the
    mark was drawn, finds the stripes on textured images and another key's template does not."""
    from genwm.keys import random_bits

    torch.manual_seed(0)
    g = WatermarkGenerator(GeneratorConfig(tile=16, max_rms=0.02, canonical_size=64, band=4, mirror=True, rows=True))
    tiles = g(random_bits(3, g.config.n_bits))
    assert torch.equal(tiles, tiles[..., :1].expand_as(tiles)) and torch.equal(tiles, tiles.flip(-1))
    assert torch.allclose(tiles.pow(2).mean(dim=(1, 2, 3)).sqrt(), torch.full((3,), 0.02))
    assert not torch.allclose(tiles[0], tiles[1])
    rng = np.random.default_rng(0)
    textured = torch.from_numpy(0.5 + rng.normal(0, 0.05, (8, 3, 64, 64))).float().clamp(0, 1)
    bits, other = key_bits("k", 256)[None], key_bits("another", 256)[None]
    detector = Detector.for_generator(g, block_periods=2, highpass=True)
    detector.set_located(1.0, torch.eye(256)[0].tolist())
    marked = g.embed(textured, bits)
    with torch.no_grad():
        own, foreign, clean = (detector.evidence(x, g(b)[:, None])[:, 0] for x, b in ((marked, bits), (marked, other), (textured, bits)))
    # Each image's z-score over the tile's shifts has sd 1 on clean images, and a stripe
    # template's reads at most about 2.2 (its profile's neighbouring shifts correlate too):
    # one image tells little, a set of them a lot.
    assert own.mean() > clean.mean() + 1.5 and own.min() > foreign.max() + 1, (own, foreign, clean)
    assert own.max() < 3


def test_row_means_front_end_reads_a_profile_from_row_means_alone(tmp_path):
    """DetectorConfig.row_window: the residual is the grey row means minus their moving
    average, so it ignores the columns' order and the colour; it reads a profile mark where it
    was drawn on photos with content, not another key's; it has no learned weights to save;
    and it refuses a mark that is not row-constant."""
    from genwm.models import DetectorConfig

    torch.manual_seed(0)
    config = GeneratorConfig(tile=64, max_rms=0.011, canonical_size=64, band=16, mirror=True, rows=True)
    g = WatermarkGenerator(config)
    detector = Detector(DetectorConfig(template=config.to_dict(), block_periods=2, row_window=9))
    detector.templates.load_state_dict(g.state_dict())
    detector.set_located(1.0, torch.eye(64 * 64)[0].tolist())
    assert not list(detector.extractor.parameters())
    photos = torch.stack([torch.from_numpy(smooth_photo(64, 64, seed=i)).permute(2, 0, 1).float() / 255 for i in range(16)])
    residual = detector.residual(photos)
    assert torch.allclose(residual, detector.residual(photos[..., torch.randperm(64)]), atol=1e-6)
    assert torch.equal(residual, residual[:, :1, :, :1].expand_as(residual))
    assert residual.abs().amax() > 0 and detector.residual(torch.full((1, 3, 64, 64), 0.3)).abs().amax() < 1e-6
    bits, other = key_bits("k", config.n_bits)[None], key_bits("another", config.n_bits)[None]
    marked = g.embed(photos, bits)
    with torch.no_grad():
        own, foreign, clean = (detector.evidence(x, g(b)[:, None])[:, 0] for x, b in ((marked, bits), (marked, other), (photos, bits)))
    assert own.mean() > clean.mean() + 1.5 and own.mean() > foreign.mean() + 1.5, (own, foreign, clean)
    save_checkpoint(tmp_path / "ck", generator=g, detector=detector)
    _, loaded, saved = load_checkpoint(tmp_path / "ck")
    assert saved["detector"]["row_window"] == 9 and torch.equal(loaded.residual(photos), residual)
    for bad, match in (({"row_window": 8}, "odd"), ({"row_window": 9, "template": GeneratorConfig(tile=64, band=16).to_dict()}, "row-constant")):
        with pytest.raises(ValueError, match=match):
            DetectorConfig(**{"template": config.to_dict(), **bad})


def test_keys_tiles_are_nearly_orthogonal_whatever_the_filter():
    """Keys' tiles are independent noise through one filter: they stay apart even when the
    filter keeps only a band of frequencies (what training could drive it to)."""
    from genwm.keys import random_bits
    from genwm.pretrain import key_overlap

    torch.manual_seed(0)
    g = WatermarkGenerator(GeneratorConfig(tile=32))
    bits = random_bits(16, g.config.n_bits)
    for gain in (torch.ones(32, 17), band_gain(32, 8)):
        with torch.no_grad():
            g.gain.copy_(gain)
            tiles = g(bits)
        assert torch.equal(tiles[:, 0], tiles[:, 2])  # grey: the same on R, G and B
        # mean squared correlation is about 1 / (frequencies kept): 1 / 1024 white, 1 / 289 for k <= 8
        assert key_overlap(tiles).item() < 2 / gain.count_nonzero().item(), gain.count_nonzero()


def test_whitening_ignores_a_zero_phase_filter_of_the_residual():
    """Whitened, a one-block residual's correlation depends on its spectrum's phase only: a
    zero-phase filter (a blur, a resize's low-pass) leaves every correlation map as it was."""
    torch.manual_seed(0)
    g = WatermarkGenerator(GeneratorConfig(tile=16))
    bits = key_bits("k", g.config.n_bits)[None]
    residual = torch.randn(1, 1, 32, 32).expand(1, 3, -1, -1)  # one block of 2 x 2 periods, grey
    k = torch.fft.fftfreq(32)
    # positive and symmetric (zero phase), and never so small that whitening's floor applies
    gain = 0.3 + torch.exp(-((k[:, None] ** 2 + torch.fft.rfftfreq(32)[None] ** 2) / 0.05))
    filtered = torch.fft.irfft2(torch.fft.rfft2(residual) * gain, s=(32, 32))
    for whiten, same in ((True, True), (False, False)):
        d = Detector.for_generator(g, block_periods=2, whiten=whiten)
        spectrum = d.template_spectrum(g(bits)[:, None])
        maps = [d.correlation_maps(r, spectrum) for r in (residual, filtered)]
        assert torch.allclose(*maps, atol=1e-5) == same


def test_whitening_finds_a_mark_under_strong_texture_at_its_frequencies():
    """A photo busy at a few of the mark's frequencies (a fabric, foliage) drowns the mark
    for a plain matched filter; whitened, those frequencies count less and the mark is found."""
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    g = WatermarkGenerator(GeneratorConfig(tile=16, max_rms=0.01, canonical_size=128, band=4))
    bits = key_bits("k", g.config.n_bits)[None]
    y, x = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    photos = []
    for s in range(12):
        rng = np.random.default_rng(s)
        texture = sum(0.08 * torch.sin(2 * torch.pi * (fy * y + fx * x) / 16 + float(rng.uniform(0, 6.3)))
                      for fy, fx in ((1, 2), (3, 1), (2, 3)))
        base = torch.from_numpy(smooth_photo(128, 128, seed=s)).permute(2, 0, 1).float() / 255
        photos.append((0.8 * base + 0.1 + texture).clamp(0, 1))
    photos = torch.stack(photos)
    marked = g.embed(photos, bits.expand(12, -1))
    auc = {}
    for whiten in (False, True):
        d = Detector.for_generator(g, block_periods=2, highpass=True, whiten=whiten)
        with torch.no_grad():
            scores = torch.cat([d.logit(marked, bits), d.logit(photos, bits)])
        auc[whiten] = roc_auc_score([1] * 12 + [0] * 12, scores.numpy())
    assert auc[True] > 0.95 and auc[True] > auc[False] + 0.1, auc  # measured: 1.0 and 0.61


def test_read_options_change_how_the_exported_detector_reads_not_its_weights(phase1_run, tmp_path):
    """`read:` is applied to the selected detector after training (the shipped genwm-base was
    exported this way from a finished run, with --resume)."""
    import copy

    from genwm.pretrain import pretrain

    root, config, _ = phase1_run
    cfg = copy.deepcopy(config)
    # the run as it stands (an earlier test may have resumed it for more epochs): train no further
    cfg["trainer"]["max_epochs"] = torch.load(root / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] + 1
    cfg["out"] = str(tmp_path / "plain")
    pretrain(cfg, resume=True, progress=False)
    cfg["out"], cfg["read"] = str(tmp_path / "read"), {"whiten": True}
    metadata = pretrain(cfg, resume=True, progress=False)
    _, plain, _ = load_checkpoint(tmp_path / "plain")
    _, read, saved = load_checkpoint(tmp_path / "read")
    assert read.config.whiten and not plain.config.whiten
    assert metadata["read"] == saved["metadata"]["read"] == {"whiten": True}
    assert all(torch.equal(a, b) for a, b in zip(read.state_dict().values(), plain.state_dict().values()))
    assert (tmp_path / "read" / "calibration.json").is_file()
    cfg["read"] = {"whitening": True}
    with pytest.raises(ValueError, match="whitening is not a detector option"):
        pretrain(cfg, resume=True, progress=False)


@pytest.mark.parametrize("true_scale", [1.0135, 0.9875])
def test_drift_search_finds_a_scale_between_the_coarse_ones(true_scale):
    """A scale error moves each block's correlation peak in proportion to the block's distance
    from the middle; moving the maps back by the drift (DetectorConfig.drift_steps) locates the
    error and adds the blocks up as well as resampling to the exact scale would."""
    torch.manual_seed(0)
    g = WatermarkGenerator(GeneratorConfig(tile=32, max_rms=0.003, canonical_size=512, band=8))
    tiles = g(key_bits("k", g.config.n_bits)[None])
    d = Detector.for_generator(g, block_periods=4, scale_step=1.03, drift_steps=8)  # coarse scales 1.03**k
    with torch.no_grad():
        residual = g.render(tiles, 512, 512, true_scale) + 0.003 * torch.randn(1, 3, 512, 512)
        spectrum = d.template_spectrum(tiles[:, None])
        drifts = d.config.drifts()
        coherent, _, height = d.statistics_at(residual, spectrum, [1.0], drifts)
        coherent, height = coherent[0, :, 0, 0], height[0, :, 0, 0]
        exact = d.statistics_at(residual, spectrum, [true_scale])[0].item()
    step = drifts[1] - drifts[0]
    found = drifts[height.argmax()]
    assert abs(found - (true_scale - 1)) <= 2 * step, (found, coherent)
    assert coherent.max() >= 0.8 * exact and coherent[drifts.index(0.0)] < 0.3 * coherent.max(), (coherent, exact)


def test_drift_search_finds_a_weak_mark_the_coarse_scales_miss():
    """A weak mark over a whole image, at a scale between two coarse ones: every block alone is
    noise, and a scale 1.3 % off spreads the summed peak, so the coarse scales show nothing and
    their refinement has nothing to follow; located by the drift, it is read at its scale."""
    g = WatermarkGenerator(GeneratorConfig(tile=32, max_rms=0.003, canonical_size=512, band=8))
    tiles = g(key_bits("k", g.config.n_bits)[None])
    d = Detector.for_generator(g, block_periods=4, scale_step=1.03, whiten=True, highpass=True)
    for p in d.extractor.parameters():  # the fixed high-pass alone: no random front end
        p.data.zero_()
    marked, clean = {0: [], 8: []}, {0: [], 8: []}
    for seed, true_scale in enumerate((1.0135, 0.9875)):
        torch.manual_seed(seed)
        with torch.no_grad():
            images = {"marked": 0.5 + g.render(tiles, 512, 512, true_scale) + 0.2 * torch.randn(1, 3, 512, 512),
                      "clean": 0.5 + 0.2 * torch.randn(1, 3, 512, 512)}
            for steps in (0, 8):
                d.config.drift_steps = steps
                marked[steps].append(d.evidence(images["marked"], tiles[:, None]).item())
                clean[steps].append(d.evidence(images["clean"], tiles[:, None]).item())
    # measured: with drift 4.2 and 4.0 (clean 0.7, 1.9); without 0.8 and 0.7 (clean 0.7, 0.9)
    assert min(marked[8]) > max(clean[8]) + 1, (marked, clean)
    assert max(marked[0]) < max(clean[0]) + 1, (marked, clean)

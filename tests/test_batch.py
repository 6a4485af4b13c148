"""`genwm watermark` and `genwm scan`, end to end on small photos and a tiny random checkpoint."""
import argparse
import csv
import io
import json
import math
import os

import numpy as np
import pytest
from conftest import TEST_KEY, file_hashes, smooth_photo
from PIL import Image

from genwm.batch import SUMMARY_NAME, scan_paths, watermark_paths
from genwm.commands import files
from genwm.keys import key_fingerprint
from genwm.perceptual import real_lpips_available


def _cli_has_file_commands() -> bool:
    try:
        from genwm.cli import build_parser

        return "watermark" in build_parser().format_help()
    except ImportError:  # cli.py imports command modules that may not be written yet
        return False


def genwm(*argv) -> int:
    """Run `genwm ARGV` and return its exit code: through genwm.cli.main once it registers
    these commands, else through files.register on a parser built the same way."""
    argv = [str(a) for a in argv]
    try:
        if _cli_has_file_commands():
            from genwm.cli import main

            return main(argv)
        parser = argparse.ArgumentParser(prog="genwm")
        files.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except SystemExit as e:  # argparse's usage errors
        return e.code


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


@pytest.fixture
def photos(tmp_path):
    """A folder of photos in every supported format, some in a sub-folder."""
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    Image.fromarray(smooth_photo(48, 64, 1)).save(root / "a.jpg", quality=90)
    Image.fromarray(smooth_photo(40, 56, 2)).save(root / "b.png")
    Image.fromarray(smooth_photo(48, 48, 3)).save(root / "trip" / "c.webp", quality=90)
    Image.fromarray(smooth_photo(32, 40, 4)).save(root / "trip" / "d.tif", compression="tiff_lzw")
    Image.fromarray(smooth_photo(32, 32, 5)[..., 0], "L").save(root / "trip" / "gray.png")
    rgba = np.dstack([smooth_photo(32, 32, 6), np.full((32, 32), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "trip" / "alpha.png")
    return root


OUTPUTS = ["a.jpg", "b.png", "trip/alpha.png", "trip/c.webp", "trip/d.tif", "trip/gray.png"]


def read_summary(out):
    return json.loads((out / SUMMARY_NAME).read_text())


# ---- watermark --------------------------------------------------------------------------------


def test_watermark_folder(photos, tmp_path, tiny_checkpoint, capsys):
    before = file_hashes(photos)
    out = tmp_path / "out"
    assert genwm("watermark", photos, "--out", out, "--key", TEST_KEY, "--checkpoint", tiny_checkpoint) == 0
    err = capsys.readouterr().err
    assert "random-backbone LPIPS" in err  # the tiny checkpoint says it was trained with one
    assert error_lines(err) == []

    assert file_hashes(photos) == before, "an input was modified"
    assert sorted(rel for rel in file_hashes(out) if rel != SUMMARY_NAME) == OUTPUTS
    for rel in OUTPUTS:
        src, dst = Image.open(photos / rel), Image.open(out / rel)
        assert (dst.format, dst.size, dst.mode) == (src.format, src.size, src.mode)
        assert not np.array_equal(np.asarray(src), np.asarray(dst)), f"{rel} was not watermarked"

    summary = read_summary(out)
    assert summary["key_fingerprint"] == key_fingerprint(TEST_KEY)
    assert TEST_KEY not in (out / SUMMARY_NAME).read_text()
    assert summary["checkpoint"] == str(tiny_checkpoint)
    assert summary["perceptual"] == "lpips-alex-random"
    assert summary["counts"] == {"ok": 6, "skipped": 0, "error": 0}
    entries = {e["output"]: e for e in summary["images"]}
    assert sorted(entries) == OUTPUTS
    for rel, e in entries.items():
        assert e["status"] == "ok" and e["error"] is None
        assert e["input"] == str(photos / rel)
        assert (e["width"], e["height"]) == Image.open(photos / rel).size
        assert math.isfinite(e["psnr"]) and e["psnr"] > 30, rel
        assert 0.9 < e["ssim"] <= 1
        assert ("lpips" in e) == real_lpips_available()
    assert entries["trip/alpha.png"]["mode"] == "RGBA"
    assert np.array_equal(np.asarray(Image.open(out / "trip/alpha.png"))[..., 3], np.full((32, 32), 200))


def test_no_metrics_leaves_them_out(photos, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    assert genwm("watermark", photos / "b.png", "--out", out, "--key", TEST_KEY, "--checkpoint", tiny_checkpoint, "--no-metrics") == 0
    (entry,) = read_summary(out)["images"]
    assert entry["status"] == "ok" and "psnr" not in entry and "ssim" not in entry


def test_bad_files_are_reported_and_the_rest_processed(photos, tmp_path, tiny_checkpoint, capsys, monkeypatch):
    (photos / "empty.jpg").write_bytes(b"")
    data = (photos / "a.jpg").read_bytes()
    (photos / "cut.jpg").write_bytes(data[: len(data) // 2])
    (photos / "notes.jpg").write_text("not a photo\n")
    Image.fromarray(smooth_photo(100, 100)).save(photos / "bomb.png")  # 10,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # the photos above are at most 3,072
    before = file_hashes(photos)
    out = tmp_path / "out"

    assert genwm("watermark", photos, "--out", out, "--key", TEST_KEY, "--checkpoint", tiny_checkpoint) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 4
    for name, reason in [("empty.jpg", "empty file"), ("cut.jpg", "truncated"), ("notes.jpg", "not an image"), ("bomb.png", "decompression bomb")]:
        (line,) = [e for e in errors if f"{photos / name}:" in e]
        assert reason in line
    assert all((out / rel).is_file() for rel in OUTPUTS)
    assert not any((out / name).exists() for name in ["empty.jpg", "cut.jpg", "notes.jpg", "bomb.png"])
    summary = read_summary(out)
    assert summary["counts"] == {"ok": 6, "skipped": 0, "error": 4}
    assert {e["output"] for e in summary["images"] if e["status"] == "error"} == {"empty.jpg", "cut.jpg", "notes.jpg", "bomb.png"}
    assert file_hashes(photos) == before


def test_output_folder_equal_to_input_folder_clobbers_nothing(photos, tiny_checkpoint, capsys):
    before = file_hashes(photos)
    assert genwm("watermark", photos, "--out", photos, "--key", TEST_KEY, "--checkpoint", tiny_checkpoint) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == len(OUTPUTS)
    assert all("refusing to write the output onto an input file" in e for e in errors)
    after = file_hashes(photos)
    assert after.pop(SUMMARY_NAME)  # the only new file is the summary saying why
    assert after == before


def test_output_folder_inside_the_input_folder_is_not_rescanned(photos, tiny_checkpoint):
    out = photos / "marked"
    for _ in range(2):
        assert genwm("watermark", photos, "--out", out, "--key", TEST_KEY, "--checkpoint", tiny_checkpoint) == 0
    assert sorted(e["output"] for e in read_summary(out)["images"]) == OUTPUTS
    assert not (out / "marked").exists()


def test_resume_skips_done_outputs_and_keeps_their_entries(photos, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    assert genwm("watermark", photos, "--out", out, "--key", TEST_KEY, "--checkpoint", tiny_checkpoint) == 0
    first = {e["output"]: e for e in read_summary(out)["images"]}
    done = file_hashes(out)
    (out / "b.png").unlink()  # as if the run had been interrupted before this one

    assert genwm("watermark", photos, "--out", out, "--key", TEST_KEY, "--checkpoint", tiny_checkpoint) == 0
    summary = read_summary(out)
    assert summary["counts"] == {"ok": 1, "skipped": 5, "error": 0}
    second = {e["output"]: e for e in summary["images"]}
    assert sorted(second) == OUTPUTS
    assert second["b.png"]["status"] == "ok"
    for rel in set(OUTPUTS) - {"b.png"}:
        assert second[rel]["status"] == "skipped"
        assert second[rel]["psnr"] == first[rel]["psnr"]  # what the first run measured
    now = file_hashes(out)
    assert {k: v for k, v in now.items() if k not in ("b.png", SUMMARY_NAME)} == {k: v for k, v in done.items() if k not in ("b.png", SUMMARY_NAME)}


def test_interrupted_run_leaves_no_partial_output_and_resumes(photos, tmp_path, tiny_checkpoint, monkeypatch):
    out = tmp_path / "out"
    real_save, calls = Image.Image.save, []

    def save_then_interrupt(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:  # half-way through the third photo's file
            open(fp, "wb").write(b"partial")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        watermark_paths([photos], out, watermarker_for(tiny_checkpoint), TEST_KEY, metrics=False, progress=False)
    monkeypatch.setattr(Image.Image, "save", real_save)

    assert sorted(file_hashes(out)) == ["a.jpg", "b.png", SUMMARY_NAME]  # no partial or temp file
    assert [e["output"] for e in read_summary(out)["images"]] == ["a.jpg", "b.png"]
    summary = watermark_paths([photos], out, watermarker_for(tiny_checkpoint), TEST_KEY, metrics=False, progress=False)
    assert summary["counts"] == {"ok": 4, "skipped": 2, "error": 0}
    assert sorted(e["output"] for e in summary["images"]) == OUTPUTS


def test_resume_with_another_key_is_refused(photos, tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "out"
    assert genwm("watermark", photos / "a.jpg", "--out", out, "--key", TEST_KEY, "--checkpoint", tiny_checkpoint) == 0
    before = file_hashes(out)
    assert genwm("watermark", photos, "--out", out, "--key", "another key", "--checkpoint", tiny_checkpoint) == 2
    assert "another key (fingerprint" in capsys.readouterr().err
    assert file_hashes(out) == before


def test_key_and_checkpoint_from_the_environment(photos, tmp_path, tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setenv("GENWM_KEY", TEST_KEY)
    monkeypatch.setenv("GENWM_CHECKPOINT", str(tiny_checkpoint))
    out = tmp_path / "out"
    assert genwm("watermark", photos / "a.jpg", "--out", out) == 0
    assert read_summary(out)["key_fingerprint"] == key_fingerprint(TEST_KEY)
    assert read_summary(out)["checkpoint"] == str(tiny_checkpoint)

    monkeypatch.delenv("GENWM_KEY")
    assert genwm("watermark", photos / "a.jpg", "--out", tmp_path / "out2") == 2
    assert "no key: pass --key KEY or set GENWM_KEY" in capsys.readouterr().err


def test_usage_errors_exit_2(photos, tmp_path, tiny_checkpoint, capsys):
    common = ["--key", TEST_KEY, "--checkpoint", tiny_checkpoint]
    assert genwm("watermark", photos, "--out", tmp_path / "o", "--key", TEST_KEY, "--checkpoint", tmp_path / "nope") == 2
    assert "not a genwm checkpoint" in capsys.readouterr().err
    assert genwm("watermark", photos, "--out", tmp_path / "o", "--jpeg-quality", "0", *common) == 2
    assert genwm("watermark", photos, "--out", tmp_path / "o", "--budget", "-1", *common) == 2
    (tmp_path / "empty").mkdir()
    assert genwm("watermark", tmp_path / "empty", "--out", tmp_path / "o", *common) == 2
    assert "no photos found" in capsys.readouterr().err


def test_budget_lowers_the_strength_to_meet_it(photos, tmp_path, tiny_checkpoint):
    from genwm.perceptual import load_perceptual
    from genwm.watermarker import Watermarker

    watermarker = Watermarker.from_pretrained(tiny_checkpoint, strength=2.0)
    model = load_perceptual("lpips-alex-random")
    free = watermark_paths([photos / "b.png"], tmp_path / "free", watermarker, TEST_KEY, progress=False, budget=1.0, perceptual=model)
    (free_entry,) = free["images"]
    assert free_entry["strength"] == 2.0  # a loose budget leaves the strength alone
    budget = free_entry["perceptual_distance"] / 10

    out = tmp_path / "out"
    assert genwm("watermark", photos / "b.png", "--out", out, "--key", TEST_KEY, "--checkpoint", tiny_checkpoint, "--strength", "2", "--budget", budget) == 0
    (entry,) = read_summary(out)["images"]
    assert entry["perceptual_distance"] <= budget
    assert 0.4 < entry["strength"] < 1.0  # about 2 * sqrt(1/10) = 0.63
    assert entry["psnr"] > free_entry["psnr"] + 5


def test_jpeg_quality_option(photos, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    assert genwm("watermark", photos / "a.jpg", "--out", out, "--key", TEST_KEY, "--checkpoint", tiny_checkpoint, "--jpeg-quality", "50") == 0
    reference = io.BytesIO()
    Image.fromarray(smooth_photo(48, 64, 1)).save(reference, format="JPEG", quality=50)
    assert Image.open(out / "a.jpg").quantization == Image.open(reference).quantization


# ---- scan -----------------------------------------------------------------------------------------


@pytest.fixture
def marked(photos, tmp_path, tiny_checkpoint):
    out = tmp_path / "marked"
    watermark_paths([photos], out, watermarker_for(tiny_checkpoint), TEST_KEY, metrics=False, progress=False)
    return out


def watermarker_for(checkpoint):
    from genwm.watermarker import Watermarker

    return Watermarker.from_pretrained(checkpoint)


def test_scan_detected_exit_1_with_json_and_csv(marked, tmp_path, always_detects, capsys):
    report_json, report_csv = tmp_path / "r.json", tmp_path / "r.csv"
    assert genwm("scan", marked, "--key", TEST_KEY, "--detector", always_detects, "--json", report_json, "--csv", report_csv) == 1
    out = capsys.readouterr().out
    assert "DETECTED" in out and f"{len(OUTPUTS)} images, {len(OUTPUTS)} above the threshold" in out

    result = json.loads(report_json.read_text())
    assert result["verdict"]["watermark_detected"] is True
    assert result["verdict"]["n_images"] == len(OUTPUTS)
    assert result["key_fingerprint"] == key_fingerprint(TEST_KEY) and TEST_KEY not in report_json.read_text()
    assert sorted(os.path.relpath(r["path"], marked) for r in result["images"]) == OUTPUTS
    rows = list(csv.DictReader(report_csv.open()))
    assert [r["path"] for r in rows] == [r["path"] for r in result["images"]]
    for row, r in zip(rows, result["images"]):
        assert float(row["logit"]) == pytest.approx(r["logit"])
        assert float(row["probability"]) == pytest.approx(1 / (1 + math.exp(-r["logit"])))
        assert row["above_threshold"] == "1"


def test_scan_not_detected_exit_0(marked, never_detects, capsys):
    assert genwm("scan", marked, "--key", TEST_KEY, "--detector", never_detects) == 0
    out = capsys.readouterr().out
    assert "not detected" in out and "DETECTED" not in out


def test_scan_without_calibration_exit_2_and_says_to_calibrate(marked, tiny_checkpoint, capsys):
    assert genwm("scan", marked, "--key", TEST_KEY, "--detector", tiny_checkpoint) == 2
    captured = capsys.readouterr()
    assert "genwm calibrate" in captured.err
    assert str(marked / "a.jpg") in captured.out  # the scores are still shown


def test_scan_reports_bad_files_and_scans_the_rest(marked, always_detects, capsys):
    (marked / "broken.jpg").write_text("nope")
    assert genwm("scan", marked, "--key", TEST_KEY, "--detector", always_detects, "--json", "-") == 1
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout holds only the JSON; the table went to stderr
    assert [e["path"] for e in result["errors"]] == [str(marked / "broken.jpg")]
    assert len(result["images"]) == len(OUTPUTS)
    assert error_lines(captured.err) == [f"error: {marked / 'broken.jpg'}: not an image, or a format genwm cannot read"]


def test_scan_with_no_readable_photo_or_bad_arguments_exit_2(tmp_path, always_detects, capsys):
    (tmp_path / "x.jpg").write_bytes(b"")
    assert genwm("scan", tmp_path / "x.jpg", "--key", TEST_KEY, "--detector", always_detects) == 2
    assert "no readable photos" in capsys.readouterr().err
    assert genwm("scan", tmp_path, "--key", TEST_KEY, "--detector", always_detects, "--json", "-", "--csv", "-") == 2
    assert genwm("scan", tmp_path, "--key", TEST_KEY, "--alpha", "1.5") == 2


def test_scan_paths_rows_match_the_detector(marked, always_detects):
    from genwm.images import load_image
    from genwm.models.detector import Detector

    detector = Detector.from_pretrained(always_detects)
    rows, verdict, errors = scan_paths([marked], detector, TEST_KEY)
    assert errors == [] and verdict["n_images"] == len(rows) == len(OUTPUTS)
    for r in rows:
        expected = detector.logits([load_image(r["path"]).image], TEST_KEY)[0]
        assert r["logit"] == pytest.approx(expected)
        assert r["above_threshold"] == (r["logit"] >= detector.calibration["threshold"])


def test_baseline_marks_small_images_at_their_own_size():
    """invisible-watermark refuses images under 256 px; enlarge_small marks a 64-px photo on an
    enlarged copy, returns it at 64 px, leaves the input as it was, and its decoder reads the
    message back better than from the clean photo."""
    from genwm.baselines import InvisibleWatermark

    img = Image.fromarray(smooth_photo(64, 64, seed=2))
    before = np.asarray(img).copy()
    refusing = InvisibleWatermark("dwtDct")
    with pytest.raises(RuntimeError):
        refusing.embed(img, refusing.message_for("k"))
    mark = InvisibleWatermark("dwtDct", enlarge_small=True)
    message = mark.message_for("k")
    marked = mark.embed(img, message)
    assert marked.size == (64, 64) and np.array_equal(np.asarray(img), before)
    assert mark.bit_accuracy(marked, [message])[0] > mark.bit_accuracy(img, [message])[0] + 0.15


def test_scan_with_key_test_ranks_the_key_among_null_keys_and_keeps_the_binomial_beside(marked, always_detects, capsys):
    from genwm.images import find_images, load_image
    from genwm.models.detector import Detector

    code = genwm("scan", marked, "--key", TEST_KEY, "--detector", always_detects, "--key-test", "19", "--json", "-")
    captured = capsys.readouterr()
    verdict = json.loads(captured.out)["verdict"]
    assert verdict["test"] == "key" and verdict["n_null_keys"] == 19 and verdict["n_images"] == len(OUTPUTS)
    assert code == (1 if verdict["watermark_detected"] else 0) and "key test p-value" in captured.err
    # The binomial test of this calibration always fires; the key test is not fooled by it.
    assert verdict["binomial"]["watermark_detected"] is True
    detector = Detector.from_pretrained(always_detects)
    evidence = detector.key_evidences([load_image(p).image for p, _ in find_images([marked])], TEST_KEY, 19)
    assert verdict["evidence"] == pytest.approx(evidence[:, 0].mean(), abs=1e-5)
    assert verdict["p_value"] == pytest.approx((1 + np.sum(evidence[:, 1:].mean(0) >= evidence[:, 0].mean())) / 20)
    assert genwm("scan", marked, "--key", TEST_KEY, "--detector", always_detects, "--key-test", "-1") == 2

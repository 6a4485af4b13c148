"""genwm.images: loading, applying a mark in every pixel mode, saving like the original."""
import os
import struct
import zlib

import numpy as np
import pytest
from conftest import smooth_photo
from PIL import Image, ImageCms, JpegImagePlugin, PngImagePlugin

from genwm.images import (
    ImageError,
    apply_to_pil,
    conversion_note,
    find_images,
    load_image,
    save_like,
    to_float_rgb,
    upright_exif,
)
from genwm.perceptual import psnr

MAKE, MODEL, DATETIME_ORIGINAL = 0x010F, 0x0110, 0x9003
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def checker_mark(rgb: np.ndarray, amplitude: float = 0.02) -> np.ndarray:
    """A stand-in watermark: +-amplitude in a 2x2 checkerboard, different per channel."""
    h, w = rgb.shape[:2]
    sign = np.where((np.arange(h)[:, None] // 2 + np.arange(w)[None] // 2) % 2, 1.0, -1.0)
    pattern = np.stack([sign, -sign, sign], axis=2).astype(np.float32) * amplitude
    return np.clip(rgb + pattern, 0, 1)


def camera_exif(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE] = "GenwmCam"
    exif[MODEL] = "Test 1"
    exif[0x8769] = {DATETIME_ORIGINAL: "2024:05:06 07:08:09"}
    if orientation is not None:
        exif[0x0112] = orientation
    return exif


SAVE_CASES = {
    "jpeg": ("jpg", {"quality": 85}),
    "png": ("png", {}),
    "webp-lossy": ("webp", {"quality": 80}),
    "webp-lossless": ("webp", {"lossless": True}),
    "tiff-raw": ("tif", {}),
    "tiff-lzw": ("tif", {"compression": "tiff_lzw"}),
    "tiff-deflate": ("tif", {"compression": "tiff_adobe_deflate"}),
}


def write_source(tmp_path, case, arr, orientation=None, name="src"):
    ext, opts = SAVE_CASES[case]
    exif = camera_exif(orientation)
    if case.startswith("tiff-") and case != "tiff-raw":
        del exif[0x8769]  # PIL cannot write an Exif sub-IFD into a compressed TIFF either
    path = tmp_path / f"{name}.{ext}"
    Image.fromarray(arr).save(path, exif=exif.tobytes(), icc_profile=SRGB_ICC, dpi=(300, 300), **opts)
    return path


def roundtrip(src, dst, fn=checker_mark, **kw):
    loaded = load_image(src)
    save_like(apply_to_pil(loaded.image, fn), loaded.meta, dst, **kw)
    return loaded, Image.open(dst)


# ---- format, size, mode, metadata --------------------------------------------------------


@pytest.mark.parametrize("case", list(SAVE_CASES))
def test_roundtrip_keeps_format_size_mode_exif_icc(tmp_path, case):
    arr = smooth_photo(48, 64, seed=1)
    src = write_source(tmp_path, case, arr)
    loaded, out = roundtrip(src, tmp_path / f"out{src.suffix}")

    source = Image.open(src)
    assert out.format == source.format
    assert out.size == source.size == (64, 48)
    assert out.mode == source.mode == "RGB"
    exif = out.getexif()
    assert exif[MAKE] == "GenwmCam" and exif[MODEL] == "Test 1"
    if case != "tiff-lzw" and case != "tiff-deflate":
        assert exif.get_ifd(0x8769)[DATETIME_ORIGINAL] == "2024:05:06 07:08:09"
    assert out.info["icc_profile"] == SRGB_ICC
    if case.startswith("tiff"):
        assert out.info["compression"] == source.info["compression"]
    if case != "webp-lossy" and case != "webp-lossless":  # WebP has no resolution field
        assert out.info["dpi"] == pytest.approx(source.info["dpi"], rel=1e-3)

    before, after = np.asarray(loaded.image), np.asarray(out.convert("RGB"))
    assert not np.array_equal(before, after), "the mark was not applied"
    assert 30 < psnr(before, after) < 60
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "temp file left behind"


def test_jpeg_keeps_quantization_tables_and_subsampling(tmp_path):
    src = tmp_path / "q.jpg"
    Image.fromarray(smooth_photo(64, 64)).save(src, quality=62, subsampling="4:2:2")
    _, out = roundtrip(src, tmp_path / "out.jpg")
    source = Image.open(src)
    assert out.quantization == source.quantization
    assert JpegImagePlugin.get_sampling(out) == JpegImagePlugin.get_sampling(source) == 1  # 4:2:2


def test_jpeg_quality_overrides_the_original_tables(tmp_path):
    src = tmp_path / "q.jpg"
    Image.fromarray(smooth_photo(64, 64)).save(src, quality=40)
    _, out = roundtrip(src, tmp_path / "out.jpg", jpeg_quality=95)
    reference = tmp_path / "ref.jpg"
    Image.fromarray(smooth_photo(64, 64)).save(reference, quality=95)
    assert out.quantization != Image.open(src).quantization
    assert out.quantization == Image.open(reference).quantization


@pytest.mark.parametrize("lossless", [True, False])
def test_webp_stays_lossless_or_lossy(tmp_path, lossless):
    src = tmp_path / "w.webp"
    Image.fromarray(smooth_photo(32, 32)).save(src, lossless=lossless, quality=70)
    loaded, _ = roundtrip(src, tmp_path / "out.webp")
    assert loaded.meta.webp_lossless is lossless
    chunk = b"VP8L" if lossless else b"VP8 "
    assert chunk in (tmp_path / "out.webp").read_bytes()[:64]
    if lossless:  # lossless really is: exactly the marked pixels come back
        marked = apply_to_pil(loaded.image, checker_mark)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out.webp")), np.asarray(marked))


def test_png_text_and_gamma_chunks_are_kept(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Ada")
    info.add_itxt("Description", "naïve café", lang="fr")
    info.add(b"gAMA", struct.pack(">I", 45455))
    src = tmp_path / "t.png"
    Image.fromarray(smooth_photo(16, 16)).save(src, pnginfo=info)
    _, out = roundtrip(src, tmp_path / "out.png")
    assert out.text["Author"] == "Ada"
    assert out.text["Description"] == "naïve café"
    assert out.info["gamma"] == pytest.approx(0.45455)


# ---- orientation ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["jpeg", "png", "webp-lossless", "tiff-raw"])
def test_exif_orientation_is_applied_and_reset(tmp_path, case):
    arr = smooth_photo(40, 60, seed=2)  # stored 60 wide, 40 high
    src = write_source(tmp_path, case, arr, orientation=6)  # 6: display rotated 90 degrees clockwise
    loaded, out = roundtrip(src, tmp_path / f"out{src.suffix}")

    assert loaded.meta.orientation == 6
    assert loaded.image.size == (40, 60)  # upright: 40 wide, 60 high
    expected = np.asarray(Image.fromarray(arr).transpose(Image.Transpose.ROTATE_270))
    if case in ("png", "webp-lossless", "tiff-raw"):  # lossless sources: exact pixels
        assert np.array_equal(np.asarray(loaded.image), expected)
    assert out.size == (40, 60)
    exif = out.getexif()
    assert exif.get(0x0112) == 1
    assert exif[MAKE] == "GenwmCam"


def test_upright_exif_changes_only_the_orientation_value():
    raw = camera_exif(orientation=8).tobytes()
    fixed = upright_exif(raw)
    assert len(fixed) == len(raw)
    diff = [i for i, (a, b) in enumerate(zip(raw, fixed)) if a != b]
    assert len(diff) == 1  # one byte of the SHORT value: 8 -> 1
    exif = Image.Exif()
    exif.load(fixed)
    assert exif[0x0112] == 1 and exif[MAKE] == "GenwmCam"


# ---- pixel modes ------------------------------------------------------------------------------


@pytest.mark.parametrize("ext,opts", [("png", {}), ("webp", {"lossless": True}), ("tif", {})])
def test_rgba_alpha_is_bit_exact(tmp_path, ext, opts):
    rng = np.random.default_rng(3)
    alpha = rng.integers(0, 256, (32, 40), dtype=np.uint8)
    arr = np.dstack([smooth_photo(32, 40), alpha])
    src = tmp_path / f"a.{ext}"
    Image.fromarray(arr, "RGBA").save(src, **opts)
    _, out = roundtrip(src, tmp_path / f"out.{ext}")
    assert out.mode == "RGBA"
    got = np.asarray(out)
    assert np.array_equal(got[..., 3], alpha)
    assert not np.array_equal(got[..., :3], arr[..., :3])


def test_la_alpha_is_bit_exact(tmp_path):
    gray = smooth_photo(32, 40)[..., 0]
    alpha = np.random.default_rng(4).integers(0, 256, (32, 40), dtype=np.uint8)
    src = tmp_path / "la.png"
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(src)
    _, out = roundtrip(src, tmp_path / "out.png")
    assert out.mode == "LA"
    assert np.array_equal(np.asarray(out)[..., 1], alpha)
    assert not np.array_equal(np.asarray(out)[..., 0], gray)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_grayscale_stays_grayscale_with_the_luma_of_the_mark(tmp_path, ext):
    gray = smooth_photo(32, 40)[..., 1]
    src = tmp_path / f"g.{ext}"
    Image.fromarray(gray, "L").save(src, **({"quality": 95} if ext == "jpg" else {}))
    loaded, out = roundtrip(src, tmp_path / f"out.{ext}", fn=lambda rgb: np.clip(rgb + [0.04, 0.02, -0.01], 0, 1))
    assert out.mode == "L" and out.size == (40, 32)
    shift = np.asarray(out).astype(float) - np.asarray(loaded.image).astype(float)
    luma = (0.299 * 0.04 + 0.587 * 0.02 - 0.114 * 0.01) * 255  # about 4.1 levels
    assert shift.mean() == pytest.approx(luma, abs=0.6 if ext == "png" else 1.5)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_grayscale_keeps_16bit_precision(tmp_path, ext):
    values = (smooth_photo(24, 32)[..., 0].astype(np.uint16) * 257 + 100).astype(np.uint16)
    src = tmp_path / f"g16.{ext}"
    Image.frombytes("I;16", (32, 24), values.astype("<u2").tobytes()).save(src)
    delta = 0.001  # 65.5 levels at 16 bits; less than a quarter of one 8-bit level
    loaded, out = roundtrip(src, tmp_path / f"out.{ext}", fn=lambda rgb: rgb + delta)
    assert loaded.image.mode.startswith("I;16")
    assert out.mode.startswith("I;16")
    got = np.asarray(out).astype(np.int64)
    assert np.all(np.abs(got - values - delta * 65535) <= 1)
    assert to_float_rgb(out).shape == (24, 32, 3)
    assert np.allclose(to_float_rgb(out)[..., 0] * 65535, got)


def test_palette_image_becomes_truecolour(tmp_path):
    src = tmp_path / "p.png"
    Image.fromarray(smooth_photo(24, 24)).quantize(32).save(src)
    loaded, out = roundtrip(src, tmp_path / "out.png")
    assert loaded.image.mode == "P" and out.mode == "RGB"
    assert "palette" in conversion_note("P")
    assert not np.array_equal(np.asarray(out), np.asarray(loaded.image.convert("RGB")))


def test_palette_transparency_becomes_exact_alpha(tmp_path):
    p = Image.fromarray(smooth_photo(24, 24)).quantize(32)
    index = np.asarray(p)
    transparent_index = int(index[0, 0])
    src = tmp_path / "pt.png"
    p.save(src, transparency=transparent_index)
    _, out = roundtrip(src, tmp_path / "out.png")
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3] == 0, index == transparent_index)


@pytest.mark.parametrize("ext", ["tif", "jpg"])
def test_cmyk_mark_is_subtracted_from_cmy_and_k_untouched(tmp_path, ext):
    rng = np.random.default_rng(5)
    cmyk = np.dstack([smooth_photo(24, 32)[..., :3] // 2 + 40, rng.integers(0, 120, (24, 32), dtype=np.uint8)])
    src = tmp_path / f"c.{ext}"
    Image.fromarray(cmyk, "CMYK").save(src, **({"quality": 100, "subsampling": 0} if ext == "jpg" else {}))
    delta = 0.03  # +0.03 in RGB terms: 7.65 levels less ink in C, M and Y
    loaded, out = roundtrip(src, tmp_path / f"out.{ext}", fn=lambda rgb: rgb + delta)
    assert out.mode == "CMYK" and out.size == (32, 24)
    before, after = np.asarray(loaded.image).astype(float), np.asarray(out).astype(float)
    tol = 0.51 if ext == "tif" else 2.0
    assert np.abs(after[..., :3] - (before[..., :3] - delta * 255)).mean() < tol
    if ext == "tif":
        assert np.array_equal(after[..., 3], before[..., 3])


def test_one_bit_image_cannot_carry_a_mark():
    with pytest.raises(ValueError, match="1-bit"):
        apply_to_pil(Image.new("1", (8, 8)), checker_mark)


def test_apply_rejects_a_function_that_changes_the_shape():
    with pytest.raises(ValueError, match="shape"):
        apply_to_pil(Image.new("RGB", (8, 8)), lambda rgb: rgb[:4])


# ---- bad files ----------------------------------------------------------------------------------


def png_with_header_size(path, width, height):
    """A tiny PNG whose header claims width x height pixels: a cheap decompression bomb."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path):
    full = path.with_name("full-" + path.name)
    Image.fromarray(smooth_photo(64, 64)).save(full, quality=90)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "name,make,reason",
    [
        ("empty.jpg", lambda p: p.write_bytes(b""), "empty file"),
        ("cut.jpg", truncated_jpeg, "truncated"),
        ("notes.jpg", lambda p: p.write_text("not a photo\n"), "not an image"),
        ("bomb.png", lambda p: png_with_header_size(p, 100_000, 100_000), "decompression bomb"),
        ("missing.jpg", lambda p: None, "no such file"),
    ],
)
def test_bad_files_give_a_one_line_error_naming_the_file(tmp_path, name, make, reason):
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert reason in message
    assert "\n" not in message


def test_decompression_bomb_warning_is_an_error(tmp_path, monkeypatch):
    src = tmp_path / "big.png"
    Image.fromarray(smooth_photo(40, 40)).save(src)  # 1600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over 1x (PIL warns), under 2x (PIL errors)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(src)


def test_max_pixels_limit(tmp_path):
    src = tmp_path / "img.png"
    Image.fromarray(smooth_photo(40, 40)).save(src)
    assert load_image(src, max_pixels=1600).image.size == (40, 40)
    with pytest.raises(ImageError, match="over the limit of 1599"):
        load_image(src, max_pixels=1599)


def test_unsupported_format_is_named(tmp_path):
    src = tmp_path / "anim.jpg"  # a GIF under a JPEG name
    Image.new("P", (8, 8)).save(src, format="GIF")
    with pytest.raises(ImageError, match="GIF images are not supported"):
        load_image(src)


def test_output_gets_the_permissions_of_a_plain_new_file(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(smooth_photo(16, 16)).save(src)
    loaded = load_image(src)
    save_like(loaded.image, loaded.meta, tmp_path / "out.png")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_reports_and_model_folders_get_plain_permissions_too(tmp_path):
    """JSON reports, checkpoints and personalized-model folders are written through temp files
    and folders as well; none of them may come out owner-only."""
    from genwm import atomic
    from genwm.personalize.common import atomic_dir

    atomic.write_json(tmp_path / "report.json", {"a": 1})
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights.bin").write_bytes(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o777 & ~umask


def test_failed_save_leaves_no_file(tmp_path):
    src = tmp_path / "a.jpg"
    Image.fromarray(smooth_photo(16, 16)).save(src)
    loaded = load_image(src)
    with pytest.raises(ImageError, match="cannot write JPEG"):
        save_like(Image.new("RGBA", (16, 16)), loaded.meta, tmp_path / "out" / "a.jpg")  # JPEG has no alpha
    assert list((tmp_path / "out").iterdir()) == []


# ---- finding photos -------------------------------------------------------------------------


def make_tree(root, names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_find_images_recursive_sorted_skipping_hidden(tmp_path):
    root = tmp_path / "photos"
    make_tree(root, ["b.JPG", "a.png", "sub/c.tiff", "sub/deep/d.webp", "e.tif", "f.jpeg", ".hidden.jpg", ".cache/g.jpg", "notes.txt", "h.gif"])
    found = find_images([root])
    assert [rel.as_posix() for _, rel in found] == ["a.png", "b.JPG", "e.tif", "f.jpeg", "sub/c.tiff", "sub/deep/d.webp"]
    assert all(path == root / rel for path, rel in found)


def test_find_images_several_inputs_keep_their_folder_names(tmp_path):
    make_tree(tmp_path / "day1", ["IMG_1.jpg"])
    make_tree(tmp_path / "day2", ["IMG_1.jpg"])
    make_tree(tmp_path, ["loose.png"])
    found = find_images([tmp_path / "day1", tmp_path / "day2", tmp_path / "loose.png"])
    assert [rel.as_posix() for _, rel in found] == ["day1/IMG_1.jpg", "day2/IMG_1.jpg", "loose.png"]


def test_find_images_excludes_the_output_folder_and_lists_named_files(tmp_path):
    make_tree(tmp_path / "in", ["a.jpg", "marked/a.jpg"])
    found = find_images([tmp_path / "in"], exclude=[tmp_path / "in" / "marked"])
    assert [rel.as_posix() for _, rel in found] == ["a.jpg"]
    # Named explicitly, a file is listed whatever its name (its loader judges it), once.
    named = find_images([tmp_path / "in" / "a.jpg", tmp_path / "in" / "a.jpg", tmp_path / "nope.heic"])
    assert [rel.as_posix() for _, rel in named] == ["a.jpg", "nope.heic"]

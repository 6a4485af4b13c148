"""Photos in and out: robust loading, the watermark applied in any pixel mode, and saving
in the original format with the original metadata and quality (owned by the image I/O module).

The rule throughout: the photo a user gets back looks and behaves like the one they gave
(same size, orientation, format, colour profile, EXIF, JPEG quality), except for the mark.
"""
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from genwm.atomic import atomic_path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"}
# Pillow's name for the format -> the format it is saved as. MPO is a camera JPEG with extra
# pictures (a preview or a stereo pair) appended; the primary picture is an ordinary JPEG.
SAVE_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "TIFF": "TIFF"}
WEBP_LOSSY_QUALITY = 95
ORIENTATION_TAG = 0x0112
EXIF_IFD_TAG, GPS_IFD_TAG = 0x8769, 0x8825

# Luma weights of ITU-R 601-2, the ones PIL's RGB -> L conversion uses, so a grayscale
# output carries the same gray a reader sees when it converts the colour mark to gray.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# TIFF tags that describe the photo rather than the pixel layout. Only these are copied to
# the output; layout tags (strips, bits per sample, ...) are written afresh by the encoder.
TIFF_DESCRIPTIVE_TAGS = {
    269,  # DocumentName
    270,  # ImageDescription
    271,  # Make
    272,  # Model
    274,  # Orientation
    282,  # XResolution
    283,  # YResolution
    285,  # PageName
    296,  # ResolutionUnit
    305,  # Software
    306,  # DateTime
    315,  # Artist
    316,  # HostComputer
    700,  # XMP
    33432,  # Copyright
    33723,  # IPTC
    34377,  # Photoshop
    0x8769,  # Exif IFD
    0x8825,  # GPS IFD
}


class ImageError(Exception):
    """A photo that cannot be read or written; str() is one line: '<path>: <reason>'."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the cause said
        super().__init__(f"{self.path}: {self.reason}")


@dataclass
class ImageMeta:
    """What it takes to save a watermarked photo like its original."""

    format: str  # the format to save in: JPEG, PNG, WEBP or TIFF
    mode: str  # the source's pixel mode, before any conversion
    source_format: str = ""  # Pillow's name for what was read (e.g. MPO)
    exif: bytes | None = None  # orientation already reset to 1
    icc_profile: bytes | None = None
    xmp: bytes | None = None
    dpi: tuple | None = None
    orientation: int = 1  # the EXIF orientation the source had, now applied to the pixels
    jpeg_qtables: dict | None = None
    jpeg_subsampling: int | None = None
    jpeg_progressive: bool = False
    jpeg_comment: bytes | None = None
    png_text: dict = field(default_factory=dict)
    png_chunks: list = field(default_factory=list)  # (chunk type, data): gAMA, cHRM, sRGB
    tiff_compression: str | None = None
    webp_lossless: bool | None = None
    n_frames: int = 1
    notes: list = field(default_factory=list)


@dataclass
class LoadedImage:
    path: Path
    image: Image.Image  # fully loaded, in display orientation
    meta: ImageMeta


# ---- reading --------------------------------------------------------------------------


def load_image(path, max_pixels: int | None = None) -> LoadedImage:
    """Open and fully decode a photo, upright; any failure is an ImageError with a short reason.

    max_pixels defaults to PIL's Image.MAX_IMAGE_PIXELS; larger images are refused as
    possible decompression bombs (PIL's warning is treated as the error it usually is).
    """
    path = Path(path)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Our own file object, so a failure inside Image.open cannot leak the handle.
            with open(path, "rb") as f, Image.open(f) as im:
                _check_readable(im, limit)
                # Read before load(): the tile list is gone once loaded, and PIL turns TIFFs
                # upright while loading them, dropping their orientation tag.
                rawmode = _source_rawmode(im)
                orientation = _orientation(im)
                im.load()
                meta = _read_meta(im, f, rawmode, orientation)
                upright = ImageOps.exif_transpose(im)
        _finish_meta(meta, upright)
        return LoadedImage(path, upright, meta)
    except ImageError as e:
        raise ImageError(path, e.reason) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, f"refused as a possible decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image, or a format genwm cannot read") from None
    except MemoryError:
        raise ImageError(path, "not enough memory to decode this image") from None
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, struct.error ...
        raise ImageError(path, _decode_failure(e)) from None


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    if path.is_dir():
        raise ImageError(path, "is a folder, not an image")
    if size == 0:
        raise ImageError(path, "empty file")
    if not os.access(path, os.R_OK):
        raise ImageError(path, "permission denied")


def _check_readable(im: Image.Image, limit: int | None) -> None:
    if im.format not in SAVE_FORMATS:
        raise ImageError("", f"{im.format} images are not supported (JPEG, PNG, WebP and TIFF are)")
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError("", f"invalid size {w}x{h}")
    if limit is not None and w * h > limit:
        raise ImageError("", f"{w}x{h} = {w * h} pixels is over the limit of {limit} (possible decompression bomb)")


def _decode_failure(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    if "truncated" in text or isinstance(e, EOFError):
        return f"truncated or damaged file ({text})"
    return f"cannot decode image ({text})"


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(ORIENTATION_TAG, 1) or 1)
    except Exception:  # damaged EXIF must not cost the photo; exif_transpose will see none
        return 1
    return value if 1 <= value <= 8 else 1


def _source_rawmode(im: Image.Image) -> str:
    """How the decoder unpacks the file's pixels, e.g. 'RGB;16B' for 16-bit colour PNG."""
    if not im.tile:
        return ""
    args = im.tile[0][3]
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return rawmode if isinstance(rawmode, str) else ""


def _read_meta(im: Image.Image, fp, rawmode: str, orientation: int) -> ImageMeta:
    """Metadata of the source as it is on disk, before it is turned upright."""
    info = im.info
    meta = ImageMeta(format=SAVE_FORMATS[im.format], mode=im.mode, source_format=im.format)
    meta.icc_profile = info.get("icc_profile") or None
    meta.dpi = info.get("dpi")
    meta.n_frames = getattr(im, "n_frames", 1)
    meta.orientation = orientation
    if meta.format == "TIFF":
        meta.tiff_compression = info.get("compression")
        meta.exif = _tiff_exif(im, meta)
    elif info.get("exif"):
        try:
            meta.exif = upright_exif(info["exif"])
        except Exception:
            meta.notes.append("damaged EXIF block dropped")
    if meta.format == "JPEG":
        from PIL import JpegImagePlugin

        meta.jpeg_qtables = getattr(im, "quantization", None) or None
        sampling = JpegImagePlugin.get_sampling(im) if im.mode != "L" else -1
        meta.jpeg_subsampling = sampling if sampling != -1 else None
        meta.jpeg_progressive = bool(info.get("progressive") or info.get("progression"))
        meta.jpeg_comment = info.get("comment")
    if meta.format == "PNG":
        meta.png_chunks = _png_colour_chunks(info)
        meta.png_text = dict(getattr(im, "text", None) or {})
    if meta.format == "WEBP":
        meta.webp_lossless = _webp_is_lossless(fp)
    if meta.n_frames > 1:
        what = "the primary picture" if im.format == "MPO" else "the first frame"
        meta.notes.append(f"{meta.n_frames} frames in the file: only {what} is kept")
    if im.mode in ("RGB", "RGBA") and ";16" in rawmode:
        meta.notes.append("16-bit colour is read at 8 bits per channel (PIL has no 16-bit RGB mode); the output is 8-bit")
    return meta


def _finish_meta(meta: ImageMeta, upright: Image.Image) -> None:
    """Metadata that exif_transpose rewrites (XMP and text chunks lose their orientation)."""
    xmp = upright.info.get("xmp") or upright.info.get("XML:com.adobe.xmp")
    meta.xmp = xmp.encode() if isinstance(xmp, str) else xmp
    meta.png_text = {k: upright.info.get(k, v) for k, v in meta.png_text.items()}


def upright_exif(raw: bytes) -> bytes:
    """EXIF bytes with the orientation tag set to 1, everything else byte-identical.

    The pixels are turned upright on load, so a kept orientation tag would turn them again.
    The tag is patched in place: re-serialising EXIF would move maker notes, whose internal
    offsets then break.
    """
    data = bytearray(raw)
    start = 6 if data[:6] == b"Exif\x00\x00" else 0
    try:
        order = {b"II": "<", b"MM": ">"}[bytes(data[start : start + 2])]
        (ifd0,) = struct.unpack_from(order + "I", data, start + 4)
        (count,) = struct.unpack_from(order + "H", data, start + ifd0)
        for i in range(count):
            entry = start + ifd0 + 2 + 12 * i
            tag, kind, n = struct.unpack_from(order + "HHI", data, entry)
            if tag == ORIENTATION_TAG and kind == 3 and n == 1:  # SHORT, stored inline
                struct.pack_into(order + "H", data, entry + 8, 1)
        return bytes(data)
    except (KeyError, struct.error):
        exif = Image.Exif()  # not plain TIFF-structured EXIF: let PIL rewrite it
        exif.load(raw)
        if ORIENTATION_TAG in exif:
            exif[ORIENTATION_TAG] = 1
        return exif.tobytes()


def _tiff_exif(im: Image.Image, meta: ImageMeta) -> bytes | None:
    """A TIFF's descriptive tags (and Exif/GPS sub-IFDs) as EXIF bytes, orientation 1."""
    exif = Image.Exif()
    source = im.getexif()
    for tag in source:
        if tag in TIFF_DESCRIPTIVE_TAGS:
            exif[tag] = source.get_ifd(tag) if tag in (EXIF_IFD_TAG, GPS_IFD_TAG) else source[tag]
    if meta.tiff_compression not in (None, "raw"):
        # PIL writes compressed TIFFs through libtiff, which it cannot hand sub-IFDs to.
        dropped = [name for tag, name in ((EXIF_IFD_TAG, "Exif"), (GPS_IFD_TAG, "GPS")) if exif.pop(tag, None) is not None]
        if dropped:
            meta.notes.append(f"the {' and '.join(dropped)} sub-IFD of this compressed TIFF is not kept (PIL cannot write it)")
    if meta.orientation != 1 or ORIENTATION_TAG in exif:
        exif[ORIENTATION_TAG] = 1  # PIL already turned the pixels upright while loading
    return exif.tobytes() if len(exif) else None


def _png_colour_chunks(info: dict) -> list:
    """gAMA, cHRM and sRGB, which PIL reads but does not write back on its own."""
    chunks = []
    if "gamma" in info:
        chunks.append((b"gAMA", struct.pack(">I", round(info["gamma"] * 100000))))
    if "chromaticity" in info:
        chunks.append((b"cHRM", struct.pack(">8I", *(round(v * 100000) for v in info["chromaticity"]))))
    if "srgb" in info:
        chunks.append((b"sRGB", bytes([info["srgb"]])))
    return chunks


def _webp_is_lossless(fp) -> bool | None:
    """Read the RIFF chunks: VP8L is lossless, VP8 (with a space) lossy; None if unclear."""
    try:
        pos = fp.tell()
        fp.seek(0)
        head = fp.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
            return None
        while True:
            chunk = fp.read(8)
            if len(chunk) < 8:
                return None
            kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind == b"VP8L":
                return True
            if kind == b"VP8 ":
                return False
            fp.seek(size + (size & 1), 1)
    except (OSError, ValueError, AttributeError):
        return None
    finally:
        try:
            fp.seek(pos)
        except Exception:
            pass


# ---- pixels ---------------------------------------------------------------------------


def _int_range(img: Image.Image) -> float:
    """Full scale of a 16/32-bit integer grayscale image (see to_float_rgb)."""
    if img.mode != "I":
        return 65535.0
    return 65535.0 if np.asarray(img).max() > 255 else 255.0


def to_float_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL image -> H x W x 3 float32 in [0, 1] (alpha dropped, 16-bit kept exact)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float32) / _int_range(img)
        return np.repeat(a.clip(0, 1)[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def conversion_note(mode: str, info: dict | None = None) -> str | None:
    """Why apply_to_pil's output has a different mode than its input, or None."""
    info = info or {}
    if mode in ("P", "PA"):
        return "palette image saved as truecolour (re-quantizing to a palette would erase the watermark)"
    if mode in ("L", "RGB") and "transparency" in info:
        return "colour-keyed transparency saved as an alpha channel (the mark changes the keyed colour)"
    return None


def apply_to_pil(img: Image.Image, fn) -> Image.Image:
    """Apply fn (H x W x 3 float32 in [0, 1] -> same) to a PIL image of any usual mode.

    Size is kept; mode is kept except for palettes (which become RGB/RGBA: a palette cannot
    hold the mark) and colour-keyed transparency (which becomes an alpha channel). Alpha is
    carried over bit-exact. 1-bit images cannot carry a mark and raise ValueError.
    """
    mode = img.mode
    if mode == "1":
        raise ValueError("1-bit (black and white) images cannot carry a watermark")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    elif mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
    out = _apply_by_mode(img, _checked(fn))
    out.info = {k: v for k, v in img.info.items() if k != "transparency"}
    return out


def _checked(fn):
    def run(rgb: np.ndarray) -> np.ndarray:
        res = np.asarray(fn(rgb), dtype=np.float32)
        if res.shape != rgb.shape:
            raise ValueError(f"the watermark function returned shape {res.shape} for an image of shape {rgb.shape}")
        return np.clip(res, 0.0, 1.0)

    return run


def _apply_by_mode(img: Image.Image, fn) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return Image.fromarray(_to_uint8(fn(_u8(img))), "RGB")
    if mode == "RGBA":
        a = np.asarray(img)
        rgb = _to_uint8(fn(a[..., :3].astype(np.float32) / 255))
        return Image.fromarray(np.dstack([rgb, a[..., 3]]), "RGBA")
    if mode == "L":
        return Image.fromarray(_to_uint8(_gray_through_rgb(_u8(img), fn)), "L")
    if mode == "LA":
        a = np.asarray(img)
        gray = _to_uint8(_gray_through_rgb(a[..., 0].astype(np.float32) / 255, fn))
        return Image.fromarray(np.dstack([gray, a[..., 1]]), "LA")
    if mode in ("I;16", "I;16L", "I;16B", "I"):
        return _apply_int_gray(img, fn)
    if mode == "CMYK":
        return _apply_cmyk(img, fn)
    raise ValueError(f"images in PIL mode {mode} are not supported")


def _u8(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / 255


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)


def _gray_through_rgb(gray: np.ndarray, fn) -> np.ndarray:
    """Mark a gray image as the gray photo it is, replicated to RGB, and take the luma back."""
    rgb = np.repeat(gray[..., None], 3, axis=2)
    return fn(rgb) @ LUMA


def _apply_int_gray(img: Image.Image, fn) -> Image.Image:
    """16-bit (or 32-bit integer) grayscale: float32 holds every 16-bit value exactly."""
    scale = _int_range(img)
    a = np.asarray(img)
    gray = np.clip(a.astype(np.float32) / scale, 0, 1)
    out = np.clip(np.rint(_gray_through_rgb(gray, fn) * scale), 0, scale)
    if img.mode == "I":
        return Image.fromarray(out.astype(np.int32))
    dtype = ">u2" if img.mode == "I;16B" else "<u2"
    return Image.frombytes(img.mode, img.size, out.astype(dtype).tobytes())


def _apply_cmyk(img: Image.Image, fn) -> Image.Image:
    """CMYK: C, M, Y are inverted R, G, B; the mark is subtracted from them, K is untouched.

    Going through PIL's CMYK -> RGB -> CMYK would fold K into C, M and Y and change the
    whole separation; this changes each ink only by the mark.
    """
    a = np.asarray(img)
    rgb_like = 1.0 - a[..., :3].astype(np.float32) / 255
    cmy = _to_uint8(1.0 - fn(rgb_like))
    return Image.fromarray(np.dstack([cmy, a[..., 3]]), "CMYK")


# ---- writing --------------------------------------------------------------------------


def save_like(img: Image.Image, meta: ImageMeta, out_path, jpeg_quality: int | None = None) -> None:
    """Save atomically in the source's format, with its EXIF, ICC profile and quality.

    JPEG: the source's quantization tables and chroma subsampling (so the same quality),
    or jpeg_quality if given. WebP: lossless if the source was, else quality 95. TIFF: the
    source's compression. A reader never sees a half-written file.
    """
    out_path = Path(out_path)
    options = _save_options(img, meta, jpeg_quality)
    with atomic_path(out_path) as tmp:
        try:
            img.save(tmp, format=meta.format, **options)
        except Exception as e:
            raise ImageError(out_path, f"cannot write {meta.format} ({' '.join(str(e).split())})") from None


def _save_options(img: Image.Image, meta: ImageMeta, jpeg_quality: int | None) -> dict:
    fmt = meta.format
    opts = {}
    if meta.icc_profile:
        opts["icc_profile"] = meta.icc_profile
    if meta.exif:
        opts["exif"] = meta.exif
    if fmt == "JPEG":
        opts.update(_jpeg_options(meta, jpeg_quality))
    elif fmt == "PNG":
        opts.update(_png_options(meta))
    elif fmt == "WEBP":
        opts.update(lossless=True, exact=True) if meta.webp_lossless else opts.update(quality=WEBP_LOSSY_QUALITY)
        if meta.xmp:
            opts["xmp"] = meta.xmp
    elif fmt == "TIFF":
        # TIFF keeps its descriptive tags (resolution included) in the EXIF built on load.
        opts["compression"] = None if meta.tiff_compression in (None, "raw") else meta.tiff_compression
    return opts


def _jpeg_options(meta: ImageMeta, jpeg_quality: int | None) -> dict:
    opts = {}
    if jpeg_quality is not None:
        opts["quality"] = int(jpeg_quality)
    elif meta.jpeg_qtables:
        opts["qtables"] = meta.jpeg_qtables
    else:
        opts["quality"] = 95
    if meta.jpeg_subsampling is not None:
        opts["subsampling"] = meta.jpeg_subsampling
    if meta.jpeg_progressive:
        opts["progressive"] = True
    if meta.jpeg_comment:
        opts["comment"] = meta.jpeg_comment
    if meta.xmp:
        opts["xmp"] = meta.xmp
    if meta.dpi and all(meta.dpi):
        opts["dpi"] = meta.dpi
    return opts


def _png_options(meta: ImageMeta) -> dict:
    opts = {}
    if meta.dpi and all(meta.dpi):
        opts["dpi"] = meta.dpi
    info = PngImagePlugin.PngInfo()
    for key, value in meta.png_text.items():
        if isinstance(value, PngImagePlugin.iTXt):
            info.add_itxt(key, value, value.lang or "", value.tkey or "")
        elif isinstance(value, bytes):
            info.add_itxt(key, value.decode("utf-8", "replace"))
        else:
            info.add_text(key, str(value))
    for kind, data in meta.png_chunks:
        if kind == b"sRGB" and meta.icc_profile:
            continue  # PNG allows an ICC profile or sRGB, not both; the profile wins
        info.add(kind, data)
    if info.chunks:
        opts["pnginfo"] = info
    return opts


# ---- finding photos -------------------------------------------------------------------


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(inputs, exclude=()) -> list[tuple[Path, Path]]:
    """Files and folders -> sorted (path, relative output path) pairs.

    Folders are searched recursively for .jpg/.jpeg/.png/.webp/.tif/.tiff (any case),
    skipping hidden files and folders and the `exclude` folders (an output folder inside
    an input folder). As with `cp -r`, one folder's contents keep its structure directly;
    with several inputs, each folder keeps its own name on top, so that two folders of
    camera files (both with IMG_0001.JPG) do not collide. A file named explicitly is always
    listed (its loader decides whether it is an image), a missing one too, so that it is
    reported rather than silently dropped. The same file named twice is listed once.
    """
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    excluded = {Path(p).resolve() for p in exclude}
    several = len(inputs) > 1
    found, seen = [], set()
    for root in inputs:
        if root.is_dir():
            prefix = Path(root.resolve().name) if several else Path()
            pairs = [(p, prefix / rel) for p, rel in _walk_images(root, excluded)]
        else:
            pairs = [(root, Path(root.name))]
        for path, rel in pairs:
            ident = path.resolve()
            if ident not in seen:
                seen.add(ident)
                found.append((path, rel))
    return found


def _walk_images(root: Path, excluded: set) -> list[tuple[Path, Path]]:
    pairs = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # Prune in place so os.walk does not descend into hidden or excluded folders.
        dirnames[:] = [d for d in dirnames if not is_hidden(d) and (here / d).resolve() not in excluded]
        for name in filenames:
            if not is_hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                pairs.append((here / name, (here / name).relative_to(root)))
    return sorted(pairs, key=lambda pair: pair[1].as_posix())

"""A procedural subject world: objects and painting styles, in varied poses, scales and scenes.

Stable Diffusion knows what "a toy" or "a painting" looks like but not *this* toy or *this*
artist: a subject to protect is a new instance of a known class. This world reproduces that.
The mini model (genwm.mini) pretrains on an endless stream of random instances with
captions ("a photo of a red striped toy on grass", "a painting of a house in the snow");
a subject is one fixed instance (an object's shape, colours and texture, or a style's
palette and brushwork), drawn from seeds the stream never uses, photographed in several
poses and scenes. Its images are what the subject owner watermarks and a mimic fine-tunes on.

Everything is drawn with numpy and Pillow from a seed; photo backgrounds are crops of the
photos that ship inside scikit-image, scikit-learn and matplotlib, so the world is the same
on every machine with those packages and needs no download.
"""
import colorsys
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SUPERSAMPLE = 2  # shapes are drawn at twice the size and downsampled: smooth edges

CLASSES = ("toy", "vase", "house", "flower", "robot", "fish", "mushroom", "star")
COLORS = {
    "red": (205, 45, 45), "orange": (235, 135, 30), "yellow": (240, 210, 50), "green": (60, 160, 70),
    "blue": (45, 90, 200), "purple": (130, 60, 170), "pink": (235, 120, 170), "white": (235, 235, 230),
    "black": (35, 35, 40), "brown": (125, 80, 45), "teal": (30, 150, 150), "gray": (130, 130, 135),
}
TEXTURES = ("plain", "striped", "dotted", "checkered", "speckled")
SCENES = ("on grass", "on gravel", "by a brick wall", "in the sky", "on the beach", "in the snow",
          "on a table", "in a garden", "in the city", "at night")

# Seeds: the pretraining stream draws instances from [0, 2**31); subjects from above it.
SUBJECT_SEED_BASE = 2**31


# ---- backgrounds --------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A bundled photo as H x W x 3 uint8 (loaded once)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def _photo_crop(name: str, rng: np.random.Generator, size: int, tint=None) -> np.ndarray:
    img = _photo(name)
    h, w = img.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(img[top : top + side, left : left + side]).resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(crop, dtype=np.float32)
    if tint is not None:
        out = out * np.asarray(tint, dtype=np.float32)
    return out


def _vertical_gradient(size: int, top, bottom) -> np.ndarray:
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    return np.broadcast_to((1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32), (size, size, 3)).copy()


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    coarse = rng.uniform(-1, 1, (cells, cells, channels)).astype(np.float32)
    img = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((size, size), Image.Resampling.BICUBIC)) for c in range(channels)], axis=2)
    return img


def background(scene: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A size x size scene as float32 RGB in [0, 255], plus where the ground line is."""
    s = size
    if scene == "on grass":
        return _photo_crop("grass", rng, s, tint=(0.8, 1.05, 0.7))
    if scene == "on gravel":
        return _photo_crop("gravel", rng, s)
    if scene == "by a brick wall":
        return _photo_crop("brick", rng, s, tint=(1.25, 0.8, 0.65))
    if scene == "in the garden" or scene == "in a garden":
        return _photo_crop("flower", rng, s)
    if scene == "in the city":
        return _photo_crop("china", rng, s)
    if scene == "in the sky":
        sky = _vertical_gradient(s, (70, 120, 215), (170, 205, 240))
        clouds = np.clip(_smooth_noise(rng, s, 5) * 1.6 - 0.2, 0, 1)
        return sky * (1 - clouds) + 245 * clouds
    if scene == "on the beach":
        horizon = int(s * rng.uniform(0.3, 0.5))
        img = _vertical_gradient(s, (120, 170, 225), (200, 225, 245))
        img[horizon:] = _vertical_gradient(s, (40, 110, 160), (60, 140, 180))[horizon:]
        shore = horizon + int(s * rng.uniform(0.1, 0.2))
        img[shore:] = np.asarray((225, 200, 150), np.float32) + 12 * _smooth_noise(rng, s, 16)[shore:]
        return img
    if scene == "in the snow":
        img = _vertical_gradient(s, (200, 210, 225), (245, 248, 252))
        return img + 8 * _smooth_noise(rng, s, 12)
    if scene == "on a table":
        wall = np.asarray(COLORS[str(rng.choice(["white", "gray", "yellow", "teal"]))], np.float32) * 0.5 + 110
        img = np.broadcast_to(wall, (s, s, 3)).copy()
        edge = int(s * rng.uniform(0.5, 0.65))
        wood = np.asarray((150, 100, 60), np.float32) + 25 * np.sin(np.linspace(0, 30, s))[None, :, None] * _smooth_noise(rng, s, 4)
        img[edge:] = wood[edge:]
        return img
    if scene == "at night":
        img = _vertical_gradient(s, (10, 15, 40), (35, 40, 80))
        stars = rng.random((s, s)) > 0.992
        img[stars] = 230
        return img
    raise ValueError(f"unknown scene {scene!r}")


# ---- objects ------------------------------------------------------------------------------------


@dataclass
class ObjectSpec:
    """One object instance: everything that makes it this object and not another of its class."""

    cls: str
    color: str
    color2: str
    texture: str
    shape: dict = field(default_factory=dict)  # class-specific proportions, all in [0, 1]
    hue_jitter: float = 0.0  # the exact shade: two red toys are not the same red

    def words(self) -> str:
        """How a caption names it: 'red striped toy'."""
        tex = "" if self.texture == "plain" else f"{self.texture} "
        return f"{self.color} {tex}{self.cls}"


def _shade(rgb, hue_jitter: float, value: float = 1.0):
    h, l, s = colorsys.rgb_to_hls(*(c / 255 for c in rgb))
    r, g, b = colorsys.hls_to_rgb((h + hue_jitter) % 1.0, min(1.0, l * value), s)
    return (int(r * 255), int(g * 255), int(b * 255))


def random_object(rng: np.random.Generator, cls: str | None = None) -> ObjectSpec:
    names = list(COLORS)
    c1 = str(rng.choice(names))
    c2 = str(rng.choice([c for c in names if c != c1]))
    return ObjectSpec(
        cls=cls or str(rng.choice(CLASSES)),
        color=c1,
        color2=c2,
        texture=str(rng.choice(TEXTURES)),
        shape={k: float(v) for k, v in zip("abcdef", rng.random(6))},
        hue_jitter=float(rng.uniform(-0.03, 0.03)),
    )


def _texture(spec: ObjectSpec, size: int, angle: float) -> Image.Image:
    """The object's surface: its colours in its pattern, size x size."""
    c1, c2 = _shade(COLORS[spec.color], spec.hue_jitter), _shade(COLORS[spec.color2], spec.hue_jitter)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    period = 0.08 + 0.1 * spec.shape["f"]
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    if spec.texture == "striped":
        mask = (np.floor(u / period) % 2) == 0
    elif spec.texture == "dotted":
        mask = ((u / period) % 2 - 1) ** 2 + ((v / period) % 2 - 1) ** 2 > 0.35
    elif spec.texture == "checkered":
        mask = ((np.floor(u / period) + np.floor(v / period)) % 2) == 0
    elif spec.texture == "speckled":
        r = np.random.default_rng(int(spec.shape["e"] * 1e6))
        mask = np.asarray(Image.fromarray((r.random((24, 24)) > 0.3).astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 0
    else:
        mask = np.ones((size, size), dtype=bool)
    img = np.where(mask[..., None], np.asarray(c1, np.float32), np.asarray(c2, np.float32))
    shading = 0.85 + 0.3 * (1 - yy)[..., None]  # light from above
    return Image.fromarray(np.clip(img * shading, 0, 255).astype(np.uint8))


def _draw_shape(spec: ObjectSpec, S: int) -> tuple[Image.Image, list]:
    """The object's silhouette (L mask, S x S, centred) and its details [(kind, xy, colour)]."""
    p, mask = spec.shape, Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(mask)
    c, details = S / 2, []
    dark, light = (25, 25, 30), (245, 245, 240)
    if spec.cls == "toy":
        w, h = S * (0.55 + 0.3 * p["a"]), S * (0.5 + 0.35 * p["b"])
        d.ellipse([c - w / 2, c - h / 2, c + w / 2, c + h / 2], fill=255)
        ear = S * (0.1 + 0.1 * p["c"])
        for sx in (-1, 1):
            x = c + sx * w * 0.3
            d.ellipse([x - ear, c - h / 2 - ear * 0.8, x + ear, c - h / 2 + ear * 1.2], fill=255)
            eye = S * (0.05 + 0.04 * p["d"])
            ex, ey = c + sx * w * 0.18, c - h * 0.1
            details += [("ellipse", [ex - eye, ey - eye, ex + eye, ey + eye], light), ("ellipse", [ex - eye / 2, ey - eye / 2, ex + eye / 2, ey + eye / 2], dark)]
    elif spec.cls == "vase":
        ys = np.linspace(-0.45, 0.45, 24)
        widths = 0.12 + 0.18 * p["a"] + (0.12 + 0.15 * p["b"]) * np.sin(np.pi * (ys + 0.5) * (1 + p["c"])) ** 2
        left = [(c - wd * S, c + y * S) for y, wd in zip(ys, widths)]
        d.polygon(left + [(2 * c - x, y) for x, y in reversed(left)], fill=255)
    elif spec.cls == "house":
        w, h = S * (0.45 + 0.3 * p["a"]), S * (0.3 + 0.2 * p["b"])
        base = c + S * 0.3
        d.rectangle([c - w / 2, base - h, c + w / 2, base], fill=255)
        roof = S * (0.15 + 0.2 * p["c"])
        d.polygon([(c - w / 2 - S * 0.05, base - h), (c + w / 2 + S * 0.05, base - h), (c, base - h - roof)], fill=255)
        dw = w * 0.18
        details += [("rectangle", [c - dw / 2, base - h * 0.55, c + dw / 2, base], dark)]
        for sx in (-1, 1):
            x = c + sx * w * 0.3
            details.append(("rectangle", [x - dw / 2, base - h * 0.8, x + dw / 2, base - h * 0.45], (250, 230, 140)))
    elif spec.cls == "flower":
        n = 5 + int(p["a"] * 4)
        r, pr = S * (0.1 + 0.06 * p["b"]), S * (0.13 + 0.08 * p["c"])
        for k in range(n):
            t = 2 * math.pi * k / n
            x, y = c + math.cos(t) * (r + pr * 0.6), c - S * 0.1 + math.sin(t) * (r + pr * 0.6)
            d.ellipse([x - pr, y - pr, x + pr, y + pr], fill=255)
        d.rectangle([c - S * 0.02, c, c + S * 0.02, c + S * 0.45], fill=255)
        cy = c - S * 0.1
        details.append(("ellipse", [c - r, cy - r, c + r, cy + r], _shade(COLORS[spec.color2], 0, 0.7)))
    elif spec.cls == "robot":
        hw, hh = S * (0.18 + 0.1 * p["a"]), S * (0.13 + 0.06 * p["b"])
        bw, bh = S * (0.25 + 0.12 * p["c"]), S * (0.22 + 0.1 * p["d"])
        top = c - (2 * hh + 2 * bh) / 2
        d.rectangle([c - hw, top, c + hw, top + 2 * hh], fill=255)
        d.rectangle([c - bw, top + 2 * hh + S * 0.02, c + bw, top + 2 * hh + S * 0.02 + 2 * bh], fill=255)
        d.line([c, top, c, top - S * 0.08], fill=255, width=max(1, S // 40))
        for sx in (-1, 1):
            ex, ey, er = c + sx * hw * 0.45, top + hh, S * 0.035
            details.append(("rectangle", [ex - er, ey - er, ex + er, ey + er], (250, 60, 60) if p["e"] > 0.5 else (80, 220, 250)))
    elif spec.cls == "fish":
        w, h = S * (0.5 + 0.2 * p["a"]), S * (0.25 + 0.15 * p["b"])
        d.ellipse([c - w / 2, c - h / 2, c + w / 2, c + h / 2], fill=255)
        tail = S * (0.15 + 0.1 * p["c"])
        d.polygon([(c + w / 2 - S * 0.05, c), (c + w / 2 + tail, c - tail), (c + w / 2 + tail, c + tail)], fill=255)
        ex, ey, er = c - w * 0.28, c - h * 0.1, S * 0.035
        details += [("ellipse", [ex - er, ey - er, ex + er, ey + er], light), ("ellipse", [ex - er / 2, ey - er / 2, ex + er / 2, ey + er / 2], dark)]
    elif spec.cls == "mushroom":
        cw, ch = S * (0.55 + 0.3 * p["a"]), S * (0.3 + 0.15 * p["b"])
        sw = S * (0.12 + 0.08 * p["c"])
        d.rectangle([c - sw / 2, c - S * 0.05, c + sw / 2, c + S * 0.35], fill=255)
        d.pieslice([c - cw / 2, c - ch, c + cw / 2, c + ch * 0.4], 180, 360, fill=255)
        for k in range(3 + int(p["d"] * 3)):
            x = c + (k / 3 - 0.6) * cw * 0.6
            details.append(("ellipse", [x - S * 0.03, c - ch * 0.55, x + S * 0.03, c - ch * 0.55 + S * 0.06], light))
    elif spec.cls == "star":
        n, inner = 5 + int(p["a"] * 3), 0.35 + 0.25 * p["b"]
        R = S * (0.35 + 0.1 * p["c"])
        pts = [(c + R * (1 if k % 2 == 0 else inner) * math.sin(math.pi * k / n), c - R * (1 if k % 2 == 0 else inner) * math.cos(math.pi * k / n)) for k in range(2 * n)]
        d.polygon(pts, fill=255)
    else:
        raise ValueError(f"unknown class {spec.cls!r}")
    return mask, details


def draw_object(canvas: np.ndarray, spec: ObjectSpec, rng: np.random.Generator) -> np.ndarray:
    """Paste the object onto canvas (H x W x 3 float) in a random pose: scale, position, tilt, mirror."""
    size = canvas.shape[0]
    S = size * SUPERSAMPLE
    mask, details = _draw_shape(spec, S)
    obj = _texture(spec, S, angle=spec.shape["d"] * math.pi)
    draw = ImageDraw.Draw(obj)
    for kind, xy, colour in details:
        getattr(draw, kind)(xy, fill=colour)
        ImageDraw.Draw(mask).__getattribute__(kind)(xy, fill=255)
    angle = float(rng.uniform(-25, 25))
    mirror = rng.random() < 0.5
    scale = float(rng.uniform(0.5, 0.9))
    side = max(8, int(round(size * scale)))
    rgba = obj.convert("RGBA")
    rgba.putalpha(mask)
    if mirror:
        rgba = rgba.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    rgba = rgba.rotate(angle, resample=Image.Resampling.BICUBIC).resize((side, side), Image.Resampling.LANCZOS)
    x = int(rng.integers(-side // 8, size - side + side // 8 + 1))
    y = int(rng.integers(-side // 8, size - side + side // 8 + 1))
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    layer.paste(rgba, (x, y))
    a = np.asarray(layer, dtype=np.float32)
    alpha = a[..., 3:] / 255
    # a soft contact shadow under the object grounds it in the scene
    shadow = np.asarray(Image.fromarray((alpha[..., 0] * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(size / 24)), np.float32)[..., None] / 255
    shadow = np.roll(shadow, (max(1, size // 32), max(1, size // 48)), axis=(0, 1))
    canvas = canvas * (1 - 0.35 * shadow)
    return canvas * (1 - alpha) + a[..., :3] * alpha


# ---- painting styles ----------------------------------------------------------------------------


@dataclass
class StyleSpec:
    """An artist's hand: a palette, how far colours are flattened, outlines, and brushwork."""

    palette: list  # RGB triples
    levels: int  # posterization: colour steps per channel before mapping to the palette
    outline: float  # 0: none, 1: heavy dark contours
    stroke_angle: float  # radians
    stroke_strength: float
    blur: float  # how soft the paint is, in pixels at 64 px
    name_words: str = "painting"


def random_style(rng: np.random.Generator) -> StyleSpec:
    k = int(rng.integers(4, 7))
    base_hue = rng.random()
    palette = []
    for i in range(k):
        h = (base_hue + rng.normal(0, 0.12) + (0.5 if i % 3 == 2 else 0)) % 1
        l, s = rng.uniform(0.15, 0.85), rng.uniform(0.3, 0.9)
        palette.append(tuple(int(255 * v) for v in colorsys.hls_to_rgb(h, l, s)))
    return StyleSpec(
        palette=palette,
        levels=int(rng.integers(3, 6)),
        outline=float(rng.uniform(0, 1)),
        stroke_angle=float(rng.uniform(0, math.pi)),
        stroke_strength=float(rng.uniform(0.05, 0.25)),
        blur=float(rng.uniform(0.3, 1.2)),
    )


def apply_style(img: np.ndarray, style: StyleSpec, rng: np.random.Generator) -> np.ndarray:
    """A scene (H x W x 3 float in [0, 255]) repainted in the style."""
    size = img.shape[0]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(style.blur * size / 64))
    x = np.asarray(pil, np.float32) / 255
    q = np.round(x * (style.levels - 1)) / (style.levels - 1)
    pal = np.asarray(style.palette, np.float32) / 255
    lum = q @ np.array([0.299, 0.587, 0.114], np.float32)
    pal_lum = pal @ np.array([0.299, 0.587, 0.114], np.float32)
    # each pixel takes the palette colour nearest in luminance and hue direction, mixed with its own
    dist = ((q[..., None, :] - pal[None, None]) ** 2).sum(-1) + 2 * (lum[..., None] - pal_lum[None, None]) ** 2
    painted = 0.75 * pal[dist.argmin(-1)] + 0.25 * q
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = xx * math.cos(style.stroke_angle) + yy * math.sin(style.stroke_angle)
    strokes = np.sin(u * 1.7 + 3 * _smooth_noise(rng, size, 8)[..., 0]) * style.stroke_strength * 0.5
    painted = painted * (1 + strokes[..., None])
    if style.outline > 0.2:
        edges = np.asarray(Image.fromarray((lum * 255).astype(np.uint8)).filter(ImageFilter.FIND_EDGES), np.float32)[..., None] / 255
        painted = painted * (1 - np.clip(edges * 3 * style.outline, 0, 0.8))
    return np.clip(painted * 255, 0, 255)


# ---- scenes and captions ------------------------------------------------------------------------


def scene_image(rng: np.random.Generator, size: int, obj: ObjectSpec | None = None, scene: str | None = None) -> tuple[np.ndarray, ObjectSpec, str]:
    scene = scene or str(rng.choice(SCENES))
    obj = obj or random_object(rng)
    img = draw_object(background(scene, rng, size), obj, rng)
    return img, obj, scene


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def pretraining_example(seed: int, size: int = 64, p_painting: float = 0.3) -> tuple[np.ndarray, str]:
    """One random captioned image of the pretraining stream (seed < SUBJECT_SEED_BASE)."""
    rng = np.random.default_rng(seed)
    img, obj, scene = scene_image(rng, size)
    if rng.random() < p_painting:
        img = apply_style(img, random_style(rng), rng)
        caption = f"a painting of a {obj.cls} {scene}" if rng.random() < 0.5 else f"a painting of a {obj.words()} {scene}"
    else:
        form = rng.integers(3)
        caption = (f"a photo of a {obj.words()} {scene}", f"a {obj.words()} {scene}", f"a photo of a {obj.cls}")[form]
    return to_uint8(img), caption


# ---- subjects -----------------------------------------------------------------------------------


@dataclass
class Subject:
    """A subject to protect: a fixed object, or a fixed painting style."""

    index: int
    kind: str  # "object" or "style"
    class_noun: str  # what DreamBooth calls it: "toy", "vase", ..., or "painting"
    object: ObjectSpec | None = None
    style: StyleSpec | None = None

    @property
    def name(self) -> str:
        return f"subject{self.index:02d}-{self.class_noun}"

    def images(self, n: int = 8, size: int = 64, seed: int = 0) -> list[np.ndarray]:
        """n photos of the object (or paintings in the style), each in another pose and scene."""
        rng = np.random.default_rng([SUBJECT_SEED_BASE + self.index, 1 + seed])
        scenes = list(rng.permutation(SCENES))
        out = []
        for i in range(n):
            scene = scenes[i % len(scenes)]
            if self.kind == "object":
                img, _, _ = scene_image(rng, size, obj=self.object, scene=scene)
            else:
                img, _, _ = scene_image(rng, size, scene=scene)
                img = apply_style(img, self.style, rng)
            out.append(to_uint8(img))
        return out


def subject(index: int) -> Subject:
    """Subject `index`, from seeds the pretraining stream never draws. Every third is a style."""
    rng = np.random.default_rng(SUBJECT_SEED_BASE + index)
    if index % 3 == 2:
        return Subject(index, "style", "painting", style=random_style(rng))
    obj = random_object(rng, cls=CLASSES[index % len(CLASSES)])
    return Subject(index, "object", obj.cls, object=obj)

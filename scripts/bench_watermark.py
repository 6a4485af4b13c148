"""Benchmark: genwm's phase-1 watermark against invisible-watermark's dwtDct, dwtDctSvd and
rivaGan, side by side in one run, on held-out photos that no phase-1 step saw.

    python scripts/bench_watermark.py --photos data/photos/bench --checkpoint checkpoints/genwm-base \
        --out docs/results/bench_watermark

For each photo (longer side capped at --max-side, 768 px) and each of K keys (random 32-bit
messages for the baselines), the photo is marked; marked and clean copies then go through each
attack.
Scores: genwm's detector logit for the key; for the baselines, the fraction of the message's
bits their decoder recovers. Positives are marked copies, negatives the clean copies scored
for the same key. Detection ROC AUC and TPR at 1% FPR come from sklearn. Quality is PSNR,
SSIM and the effnet-lite0 perceptual distance of marked vs clean (and LPIPS with AlexNet where
its weights are present); speed is embedding throughput in megapixels per second on this
machine, one image at a time.
"""
import argparse
import io
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sklearn.metrics import roc_auc_score, roc_curve

from genwm import atomic

MAX_SIDE = 768
BASELINES = ("dwtDct", "dwtDctSvd", "rivaGan")


def attack(img: Image.Image, name: str, rng: np.random.Generator) -> Image.Image:
    """One named attack, or several joined by "+" applied left to right (resize0.8+jpeg85: what
    a site that shrinks and recompresses does)."""
    if "+" in name:
        for part in name.split("+"):
            img = attack(img, part, rng)
        return img
    if name == "clean":
        return img
    if name.startswith("jpeg"):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(name[4:]))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if name.startswith("resize"):
        factor = float(name[6:])
        return img.resize((int(img.width * factor), int(img.height * factor)), Image.Resampling.LANCZOS)  # floor: resize0.5 halves as w // 2
    if name == "crop0.8":
        w, h = round(img.width * 0.8), round(img.height * 0.8)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        return img.crop((left, top, left + w, top + h))
    if name == "blur1":
        return img.filter(ImageFilter.GaussianBlur(1.0))
    if name == "noise0.02":
        a = np.asarray(img, dtype=np.float32) + rng.normal(0, 0.02 * 255, (img.height, img.width, 3))
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    raise ValueError(name)


ATTACKS = ("clean", "jpeg75", "jpeg50", "resize0.5", "crop0.8", "blur1", "noise0.02")


def marked_and_clean_scores(method, photos, attack_name: str, keys_of) -> tuple[np.ndarray, np.ndarray]:
    """Scores after one attack: each photo's copy marked with each of keys_of(photo name),
    scored for its key, and the clean photo scored for all of them -> (marked, clean)."""
    rng = np.random.default_rng(0)
    pos, neg = [], []
    for name, img in photos:
        keys = keys_of(name)
        neg.extend(method.scores(attack(img, attack_name, rng), keys))
        pos.extend(method.scores(attack(method.embed(img, k), attack_name, rng), [k])[0] for k in keys)
    return np.array(pos), np.array(neg)


def load_photos(folder, max_side: int = MAX_SIDE) -> list[tuple[str, Image.Image]]:
    from genwm.images import find_images, load_image

    photos = []
    for path, _ in find_images([folder]):
        img = load_image(path).image.convert("RGB")
        s = max_side / max(img.size)
        if s < 1:
            img = img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.LANCZOS)
        photos.append((path.name, img))
    return photos


class Genwm:
    name = "genwm"

    def __init__(self, checkpoint):
        from genwm.models import Detector
        from genwm.watermarker import Watermarker

        self.watermarker = Watermarker.from_pretrained(checkpoint)
        self.detector = Detector.from_pretrained(checkpoint)

    def key(self, i: int, rng):
        return f"bench-key-{i}"

    def embed(self, img, key):
        return self.watermarker.watermark(img, key)

    def scores(self, img, keys) -> np.ndarray:
        """The detector's logit for each key (one pass: the residual is shared)."""
        import torch

        from genwm.images import to_float_rgb
        from genwm.keys import key_bits

        x = self.detector.to_canonical(torch.from_numpy(to_float_rgb(img)).permute(2, 0, 1))
        bits = torch.stack([key_bits(k, self.detector.config.n_bits) for k in keys])[None]
        with torch.no_grad():
            return self.detector.logits_for(x, bits)[0].numpy()


class Baseline:
    """invisible-watermark's method with a random 32-bit message per key; score = fraction of
    the message's bits recovered."""

    def __init__(self, method):
        from genwm.baselines import InvisibleWatermark

        self.mark = InvisibleWatermark(method)
        self.name = method

    def key(self, i, rng):
        return [int(b) for b in rng.integers(0, 2, self.mark.n_bits)]

    def embed(self, img, key):
        return self.mark.embed(img, key)

    def scores(self, img, keys) -> np.ndarray:
        return self.mark.bit_accuracy(img, keys)


def quality(a: Image.Image, b: Image.Image, perceptual: dict) -> dict:
    """PSNR, SSIM, and each perceptual distance in `perceptual` (name -> model)."""
    import torch

    from genwm.perceptual import psnr, ssim

    x, y = np.asarray(a), np.asarray(b)
    out = {"psnr": psnr(x, y), "ssim": ssim(x, y)}
    t = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    for name, model in perceptual.items():
        with torch.no_grad():
            out[name] = float(model(t(a), t(b)).reshape(-1)[0])
    return out


def run(method, photos, n_keys: int, seed: int, perceptual: dict, progress: bool) -> dict:
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    pos = {a: [] for a in ATTACKS}
    neg = {a: [] for a in ATTACKS}
    q, embed_seconds, megapixels = [], 0.0, 0.0
    for name, img in tqdm(photos, desc=method.name, disable=not progress):
        keys = [method.key(i, rng) for i in range(n_keys)]
        for a in ATTACKS:
            neg[a].extend(method.scores(attack(img, a, rng), keys))
        for i, key in enumerate(keys):
            t = time.perf_counter()
            marked = method.embed(img, key)
            embed_seconds += time.perf_counter() - t
            megapixels += img.width * img.height / 1e6
            if i == 0:
                q.append(quality(img, marked, perceptual))
            for a in ATTACKS:
                pos[a].append(method.scores(attack(marked, a, rng), [key])[0])
    result = {"method": method.name, "n_photos": len(photos), "n_keys": n_keys, "mp_per_s": megapixels / embed_seconds}
    for k in q[0]:
        values = [r[k] for r in q if np.isfinite(r[k])]
        result[k] = float(np.mean(values))
    result["detection"] = {}
    for a in ATTACKS:
        y = np.r_[np.ones(len(pos[a])), np.zeros(len(neg[a]))]
        s = np.r_[pos[a], neg[a]]
        fpr, tpr, _ = roc_curve(y, s)
        result["detection"][a] = {"auc": float(roc_auc_score(y, s)), "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max()), "n_pos": len(pos[a]), "n_neg": len(neg[a])}
    return result


def key_separation(method: Genwm, photos, n_keys: int) -> dict:
    """Marks of key i scored for key j != i, clean and after JPEG 75: how often the detector's
    calibrated threshold calls another key's mark its own."""
    threshold = method.detector.calibration["threshold"] if method.detector.calibration else 0.0
    out = {}
    rng = np.random.default_rng(0)
    for a in ("clean", "jpeg75"):
        other = []
        for _, img in photos:
            keys = [method.key(i, rng) for i in range(n_keys)]
            marked = attack(method.embed(img, keys[0]), a, rng)
            other.extend(method.scores(marked, keys[1:]))
        out[a] = {"n": len(other), "rate_above_threshold": float(np.mean(np.asarray(other) >= threshold))}
    return {"threshold_logit": threshold, **out}


def mark_spectrum(method: Genwm, n_keys: int) -> dict:
    """Where the mark's energy lies (see bench_key_overlap.band_energy), over the keys' tiles."""
    import torch

    from bench_key_overlap import band_energy
    from genwm.keys import key_bits

    g = method.watermarker.generator
    bits = torch.stack([key_bits(method.key(i, None), g.config.n_bits) for i in range(n_keys)])
    with torch.no_grad():
        return band_energy(g(bits))


def example_png(method: Genwm, photos, path: Path) -> None:
    """A photo, its marked copy and the mark amplified 20x, side by side (a 256 px crop)."""
    name, img = photos[0]
    marked = method.embed(img, method.key(0, None))
    box = (0, 0, min(256, img.width), min(256, img.height))
    a, b = np.asarray(img.crop(box), np.float32), np.asarray(marked.crop(box), np.float32)
    diff = np.clip(128 + 20 * (b - a), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(np.concatenate([a, b, diff], axis=1).astype(np.uint8)).save(buf, format="PNG")
    atomic.write_bytes(path, buf.getvalue())


def markdown(results, separation, spectrum) -> str:
    extra = [k for k in ("lpips", "effnet") if k in results[0]]
    head = "| method | PSNR dB | SSIM | " + "".join(f"{k} | " for k in extra) + "MP/s | " + " | ".join(f"AUC {a}" for a in ATTACKS) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        cells = [r["method"], f"{r['psnr']:.2f}", f"{r['ssim']:.4f}"] + [f"{r[k]:.4f}" for k in extra] + [f"{r['mp_per_s']:.2f}"]
        cells += [f"{r['detection'][a]['auc']:.4f}" for a in ATTACKS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "TPR at 1% FPR:", "", "| method | " + " | ".join(ATTACKS) + " |", "|" + "---|" * (len(ATTACKS) + 1)]
    for r in results:
        lines.append("| " + r["method"] + " | " + " | ".join(f"{r['detection'][a]['tpr_at_1pct_fpr']:.3f}" for a in ATTACKS) + " |")
    if separation:
        lines += ["", f"genwm key separation: another key's mark scored above the calibrated threshold in "
                  f"{separation['clean']['rate_above_threshold']:.4f} of {separation['clean']['n']} cases (clean), "
                  f"{separation['jpeg75']['rate_above_threshold']:.4f} of {separation['jpeg75']['n']} (JPEG 75)."]
    if spectrum:
        lines += ["", "genwm mark energy: " + ", ".join(f"{e:.3f} at <= {c} cycles per tile" for c, e in spectrum.items()) + "."]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default="data/photos/bench")
    ap.add_argument("--checkpoint", default="checkpoints/genwm-base")
    ap.add_argument("--out", default="docs/results/bench_watermark")
    ap.add_argument("--keys", type=int, default=8, help="keys (messages) per photo")
    ap.add_argument("--methods", nargs="+", default=["genwm", *BASELINES])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-side", type=int, default=MAX_SIDE, help="photos larger than this are first resized to it (lanczos)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    from genwm.perceptual import load_perceptual, real_lpips_available

    # effnet-lite0 is genwm's offline perceptual distance (the budget's); LPIPS-AlexNet joins
    # it wherever its weights are present.
    perceptual = {"effnet": load_perceptual("effnet-lite0")}
    if real_lpips_available():
        perceptual["lpips"] = load_perceptual("lpips-alex")
    photos = load_photos(args.photos, args.max_side)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, separation, spectrum = [], None, None
    for name in args.methods:
        method = Genwm(args.checkpoint) if name == "genwm" else Baseline(name)
        results.append(run(method, photos, args.keys, args.seed, perceptual, not args.quiet))
        if name == "genwm":
            separation = key_separation(method, photos, args.keys)
            spectrum = mark_spectrum(method, args.keys)
            example_png(method, photos, out / "example.png")
    record = {
        "command": "python scripts/bench_watermark.py " + " ".join(f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items() if k != "quiet"),
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, {platform.python_version()}",
        "photos": [n for n, _ in photos],
        "lpips": "alexnet" if "lpips" in perceptual else "unavailable (no AlexNet weights on this machine)",
        "results": results,
        "key_separation": separation,
        "genwm_mark_spectrum": {f"energy_at_most_{c}_cycles": e for c, e in spectrum.items()} if spectrum else None,
    }
    atomic.write_json(out / "results.json", record)
    table = markdown(results, separation, spectrum)
    atomic.write_bytes(out / "table.md", (table + "\n").encode())
    print(table)


if __name__ == "__main__":
    main()

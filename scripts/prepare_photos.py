"""Assemble the phase-1 photo sets from sources that install offline.

    sudo apt-get install -y opencv-doc plasma-workspace-wallpapers darknet   # train, calib, bench
    sudo apt-get install -y mate-backgrounds ukui-wallpapers lomiri-wallpapers sway-backgrounds   # backgrounds
    python scripts/prepare_photos.py --out data/photos

train: opencv-doc's sample images (3 of every 4) and the Plasma wallpapers.
calib: opencv-doc's remaining images (the clean-score null for `genwm calibrate`).
bench: photos no phase-1 step ever sees: scikit-image's, scikit-learn's and matplotlib's bundled
       photos and darknet's samples (for scripts/bench_watermark.py).
backgrounds: a second held-out set, every image under /usr/share/backgrounds (one rendering of
       each; with the packages above: photographs from lomiri's and MATE's, UKUI's photos and
       illustrations, MATE's and sway's abstracts), that no phase-1 step sees either.
Files are linked, not copied; a missing source package is reported and skipped.
"""
import argparse
import hashlib
import os
import re
import sys
from pathlib import Path

PHOTO_EXT = {".jpg", ".jpeg", ".png"}
OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
WALLPAPERS = Path("/usr/share/wallpapers")
DARKNET = Path("/usr/share/darknet/data")
BACKGROUNDS = Path("/usr/share/backgrounds")
SKIMAGE_PHOTOS = ["astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
                  "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "retina.jpg", "rocket.jpg"]


def bundled_photos() -> list[Path]:
    import matplotlib
    import skimage
    import sklearn

    sk = Path(skimage.__file__).parent / "data"
    return ([sk / n for n in SKIMAGE_PHOTOS]
            + [Path(sklearn.__file__).parent / "datasets" / "images" / n for n in ("china.jpg", "flower.jpg")]
            + [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"])


def wallpapers() -> list[Path]:
    out = []
    for folder in sorted(WALLPAPERS.glob("*/contents/images*")):
        files = [p for p in folder.iterdir() if p.suffix.lower() in PHOTO_EXT]
        if files:  # the largest rendering of each wallpaper
            out.append(max(files, key=lambda p: p.stat().st_size))
    return out


def backgrounds() -> list[Path]:
    """Every image under BACKGROUNDS, the first of each set of renderings (names that differ
    only by a size such as _1920x1080 or by _Portrait are one image, and so are a file and a
    link to it)."""
    out, files = {}, set()
    for p in sorted(BACKGROUNDS.rglob("*")):
        if p.suffix.lower() in PHOTO_EXT and p.resolve() not in files:
            files.add(p.resolve())
            out.setdefault((p.parent, re.sub(r"_\d+x\d+|_Portrait", "", p.stem)), p)
    return list(out.values())


def in_calib(path: Path) -> bool:
    return int(hashlib.sha256(path.name.encode()).hexdigest(), 16) % 4 == 0


def link_all(files, dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        # Wallpapers live at WALLPAPERS/<name>/contents/images/<size>.jpg: name them by wallpaper.
        if WALLPAPERS in f.parents:
            name = f"{f.parents[2].name}-{f.name}"
        elif BACKGROUNDS in f.parents:
            name = "-".join(f.relative_to(BACKGROUNDS).parts)
        else:
            name = f.name
        target = dest / name
        if not target.exists():
            os.symlink(f.resolve(), target)
    return len(files)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/photos")
    out = Path(ap.parse_args().out)
    for src, pkg in ((OPENCV, "opencv-doc"), (WALLPAPERS, "plasma-workspace-wallpapers"), (DARKNET, "darknet"),
                     (BACKGROUNDS, "mate-backgrounds ukui-wallpapers lomiri-wallpapers sway-backgrounds")):
        if not src.is_dir():
            print(f"warning: {src} missing: apt-get install {pkg}", file=sys.stderr)
    opencv = sorted(p for p in OPENCV.glob("*") if p.suffix.lower() in PHOTO_EXT) if OPENCV.is_dir() else []
    darknet = sorted(p for p in DARKNET.glob("*.jpg")) if DARKNET.is_dir() else []
    counts = {
        "train": link_all([p for p in opencv if not in_calib(p)] + wallpapers(), out / "train"),
        "calib": link_all([p for p in opencv if in_calib(p)], out / "calib"),
        "bench": link_all(bundled_photos() + darknet, out / "bench"),
        "backgrounds": link_all(backgrounds() if BACKGROUNDS.is_dir() else [], out / "backgrounds"),
    }
    print(" ".join(f"{k}={v}" for k, v in counts.items()), "images under", out)


if __name__ == "__main__":
    main()

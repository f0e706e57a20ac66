"""Scan an ImageNet-layout folder and report every file that training would trip over, before a long run.

    python -m tools.check_dataset /data/imagenet/train
    python -m tools.check_dataset /data/imagenet/train --workers 8 --json report.json

Each image (.jpeg/.jpg/.png/.bmp, any case) is fully decoded with Pillow in ``--workers`` processes.
Reported: class folders without images, zero-byte files, files that do not decode or are truncated (with
the reason), images in a format MindSpore's decoder does not read (e.g. a WebP file named .jpg), and, for
information, files ignored for their extension and the image modes found (grayscale, CMYK, RGBA and
palette images are fine: training converts them to RGB). Truncated JPEGs matter most: MindSpore 2.10's
decoder can kill the training process with SIGFPE on them, which no ``bad_images`` policy can catch.
Prints one ``bad:`` line per problem, a summary, and a final JSON line; exits 1 when anything is bad.
"""
import argparse
import collections
import json
import multiprocessing
import os
import sys

from src.dataset import IMAGE_EXTENSIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Formats MindSpore's Decode reads; Pillow may read more (WebP, GIF...) that training would then fail on.
TRAINING_FORMATS = {"JPEG", "PNG", "BMP", "TIFF", "MPO"}


def _check(path):
    """(path, error or None, "FORMAT MODE" or None) for one file: fully decoded with Pillow, which reports
    truncated and corrupt files as errors (MindSpore 2.10's decoder can crash the whole process with
    SIGFPE on some truncated JPEGs, so it is not used here)."""
    from PIL import Image
    try:
        if os.path.getsize(path) == 0:
            return path, "empty file (0 bytes)", None
        with Image.open(path) as img:
            img.load()
            kind = img.format
            mode = f"{img.format} {img.mode}"
    except Exception as exc:  # UnidentifiedImageError, OSError ("image file is truncated"), SyntaxError ...
        text = str(exc).strip().splitlines()
        return path, (text[0] if text else type(exc).__name__)[:200], None
    if kind not in TRAINING_FORMATS:
        return path, f"{kind} image: MindSpore's decoder reads {', '.join(sorted(TRAINING_FORMATS - {'MPO'}))}", None
    return path, None, mode


def scan(root):
    """Walk ``root``: (classes, {class: [image files]}, empty class folders, ignored files)."""
    if not os.path.isdir(root):
        raise SystemExit(f"error: data folder not found: {root}")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise SystemExit(f"error: {root}: no class folders (expected {root}/<class>/<image>.JPEG)")
    files, empty_classes, ignored = {}, [], []
    for name in classes:
        folder = os.path.join(root, name)
        images = []
        for dirpath, dirs, names in os.walk(folder):
            dirs.sort()
            for n in sorted(names):
                (images if n.lower().endswith(IMAGE_EXTENSIONS) else ignored).append(os.path.join(dirpath, n))
        files[name] = images
        if not images:
            empty_classes.append(folder)
    return classes, files, empty_classes, ignored


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_path")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    parser.add_argument("--json", default=None, help="also write the full report to this file")
    args = parser.parse_args(argv)
    classes, files, empty_classes, ignored = scan(args.data_path)
    todo = [f for c in classes for f in files[c]]
    bad, modes = [], collections.Counter()
    chunk = max(1, min(256, len(todo) // (args.workers * 4) or 1))
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        for i, (path, error, mode) in enumerate(pool.imap(_check, todo, chunksize=chunk), 1):
            if error:
                bad.append({"file": path, "reason": error})
                print(f"bad: {path}: {error}", flush=True)
            else:
                modes[mode] += 1
            if i % 50000 == 0:
                print(f"... {i}/{len(todo)} files checked", flush=True)
    for folder in empty_classes:
        print(f"bad: {folder}: class folder holds no images", flush=True)
    if ignored:
        print(f"note: {len(ignored)} file(s) ignored for their extension, e.g. {ignored[0]}", flush=True)
    report = {"data_path": args.data_path, "classes": len(classes), "images": len(todo), "bad_files": bad,
              "empty_classes": empty_classes, "ignored_files": len(ignored), "modes": dict(modes),
              "ok": not bad and not empty_classes}
    print(f"{len(classes)} classes, {len(todo)} images, {len(bad)} bad file(s), {len(empty_classes)} empty class "
          f"folder(s); modes: " + ", ".join(f"{m} {n}" for m, n in modes.most_common()), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "bad_files"} | {"bad_files": len(bad)}), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

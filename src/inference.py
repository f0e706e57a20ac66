"""Classifying single image files: reading any common image, the class-name map, top-k results."""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.dataset import IMAGE_EXTENSIONS, eval_transforms
from src.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Sequence


def find_images(paths: Sequence[str]) -> list[str]:
    """Files to classify: each path that is a file, and every image file under each folder (recursively,
    sorted). A missing path is a UserError."""
    files = []
    for path in paths:
        if os.path.isfile(path):
            files.append(path)
        elif os.path.isdir(path):
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, n) for n in names
                          if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
            if not found:
                raise UserError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            files += sorted(found)
        else:
            raise UserError(f"image not found: {path}")
    return files


def read_rgb(path: str) -> np.ndarray:
    """Decode ``path`` to an RGB uint8 HWC array. Grayscale, palette, CMYK and 16-bit images are converted;
    an alpha channel is dropped (as the training decoder does). Raises ValueError with the reason."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                img = img.point(lambda v: v / 256).convert("L")
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def preprocess(rgb: np.ndarray, image_size: int, crop_ratio: float, dataset: str = "imagenet2012") -> np.ndarray:
    """The evaluation transform of src/dataset.py for networks trained on ``dataset``, run eagerly: float32 CHW,
    normalised."""
    out = rgb
    for op in eval_transforms(image_size, crop_ratio, dataset):
        out = op(out)
    return np.asarray(out, dtype=np.float32)


def class_names(class_num: int, ckpt_path: str, map_path: str | None = None) -> tuple[list[str], str | None]:
    """Names of the classes, index order, from ``class_indexing.json`` ({name: index}) saved by train.py
    beside the checkpoint, or from ``map_path``. Without a map the names are ``class_<i>``.
    Returns ``(names, source)``; a map that disagrees with ``class_num`` is a UserError."""
    if map_path is None:
        folder = ckpt_path if os.path.isdir(ckpt_path) else os.path.dirname(os.path.abspath(ckpt_path))
        candidate = os.path.join(folder, "class_indexing.json")
        if not os.path.isfile(candidate):
            return [f"class_{i}" for i in range(class_num)], None
        map_path = candidate
    if not os.path.isfile(map_path):
        raise UserError(f"class map not found: {map_path}")
    try:
        with open(map_path, encoding="utf-8") as f:
            mapping = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{map_path}: not valid JSON ({exc})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
        raise UserError(f"{map_path}: expected a JSON object {{class_name: index}}")
    if sorted(mapping.values()) != list(range(class_num)):
        raise UserError(f"{map_path}: maps {len(mapping)} classes, but the network has class_num {class_num}")
    names = [None] * class_num
    for name, index in mapping.items():
        names[index] = name
    return names, map_path


def top_k(logits: np.ndarray, names: Sequence[str], k: int) -> list[tuple[str, int, float]]:
    """Softmax probabilities of one row of logits: the ``k`` best as [(name, index, probability)]."""
    z = logits.astype(np.float64) - logits.max()
    prob = np.exp(z) / np.exp(z).sum()
    best = np.argsort(-prob, kind="stable")[:k]
    return [(names[i], int(i), float(prob[i])) for i in best]

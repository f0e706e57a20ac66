"""Input pipelines: ImageNet-layout folders (``DIR/<class>/*.JPEG``) and a synthetic, learnable source.

Train: RandomCropDecodeResize(size, scale crop_scale_min-1 (0.08 by default), ratio 3/4-4/3) -> RandomHorizontalFlip
-> Normalize (ImageNet mean/std) -> HWC2CHW, batches of ``batch_size`` with the remainder dropped. With
``train_crop: padded`` (small images such as CIFAR's): Decode -> Resize(size) when the image is not size x size
-> RandomCrop(size) after zero-padding by size/8 on every side -> RandomHorizontalFlip -> the same.
Eval: Decode -> Resize(size / crop_ratio) -> CenterCrop(size) -> Normalize -> HWC2CHW; the last
partial batch is kept, so every image of the split is scored.
Data parallel: each rank reads the 1/group_size shard ``rank`` of the files.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import mindspore as ms
import mindspore.dataset as ds
import mindspore.dataset.transforms as T
import mindspore.dataset.vision as V
import numpy as np

from src.errors import UserError
from src.host import worker_budget

if TYPE_CHECKING:
    from collections.abc import Callable

    from easydict import EasyDict


IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp")


def scan_image_folder(path: str) -> tuple[list[str], list[int], list[str]]:
    """Check an ImageNet-layout folder and return ``(class_names, images_per_class, empty_files)``.

    Raises a UserError naming the folder when it is missing, has no class folders, or a class folder
    holds no image file (an empty class would silently shift every later label). Files with other
    extensions are ignored; zero-byte image files are listed in ``empty_files`` (one stat per file).
    """
    if not path or not os.path.exists(path):
        raise UserError(f"data folder not found: {path}")
    if not os.path.isdir(path):
        raise UserError(f"data path is not a folder: {path}")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))
    if not classes:
        raise UserError(f"{path}: no class folders (expected {path}/<class>/<image>.JPEG)")
    counts, empty = [], []
    for name in classes:
        folder = os.path.join(path, name)
        n = 0
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
                    n += 1
                    if entry.stat().st_size == 0:
                        empty.append(entry.path)
        if n == 0:
            raise UserError(f"{folder}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        counts.append(n)
    return classes, counts, sorted(empty)


def _sharding(train, shuffle, rank, group_size, num_items):
    """Dataset arguments for rank ``rank`` of ``group_size``. Training shards with MindSpore's distributed
    sampler (equal shard sizes, padded by repeating samples). Evaluation gives rank k the items k, k + G,
    k + 2G, ... so that the shards are disjoint and every item is scored exactly once over all ranks."""
    if group_size <= 1:
        return {"shuffle": shuffle}
    if train:
        return {"shuffle": shuffle, "num_shards": group_size, "shard_id": rank}
    return {"sampler": ds.SubsetSampler(list(range(rank, num_items, group_size)))}


def _extensions():
    return [e for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())]


def eval_transforms(image_size: int, crop_ratio: float = 0.875, dataset: str = "imagenet2012") -> list:
    """Evaluation preprocessing of a decoded RGB HWC uint8 image: resize the shorter side to
    ``image_size / crop_ratio``, center-crop ``image_size``, normalise, HWC -> CHW. Shared by the eval
    pipeline and predict.py (where the ops run eagerly on NumPy arrays). For a network trained on ``cifar10``:
    resize to ``image_size`` square and normalise with CIFAR-10's mean and std, as its pipeline does."""
    if dataset == "cifar10":
        return [V.Resize((image_size, image_size)), V.Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD), V.HWC2CHW()]
    resize = int(round(image_size / crop_ratio))
    return [V.Resize(resize), V.CenterCrop(image_size), V.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            V.HWC2CHW()]


def create_folder_dataset(path: str, train: bool, image_size: int, batch_size: int, num_workers: int = 2, rank: int = 0,
                          group_size: int = 1, crop_ratio: float = 0.875, drop_remainder: bool | None = None,
                          shuffle: bool | None = None, bad_images: str = "stop", warn: Callable[[str], None] = print,
                          crop_scale_min: float = 0.08, train_crop: str = "resized") -> tuple[ds.Dataset, list[str]]:
    """Build the train or eval pipeline over an ImageNet-layout folder. Returns (dataset, class_names).
    Zero-byte image files stop here with ``bad_images`` stop, and are announced with skip."""
    classes, counts, empty = scan_image_folder(path)
    if empty:
        more = f" and {len(empty) - 1} more" if len(empty) > 1 else ""
        if bad_images == "stop":
            raise UserError(f"{empty[0]}{more}: empty image file(s) (0 bytes); remove them, or set bad_images skip "
                            f"(python -m tools.check_dataset lists every bad file)")
        warn(f"{len(empty)} empty image file(s) in {path} will be skipped: {empty[0]}{more}")
    shuffle = train if shuffle is None else shuffle
    drop_remainder = train if drop_remainder is None else drop_remainder
    data = ds.ImageFolderDataset(path, num_parallel_workers=num_workers, extensions=_extensions(),
                                 class_indexing={c: i for i, c in enumerate(classes)},
                                 **_sharding(train, shuffle, rank, group_size, sum(counts)))
    if train and train_crop == "padded":
        ops = [V.Decode(), V.Resize((image_size, image_size)), V.RandomCrop(image_size, padding=image_size // 8),
               V.RandomHorizontalFlip(prob=0.5), V.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), V.HWC2CHW()]
    elif train:
        ops = [V.RandomCropDecodeResize(image_size, scale=(crop_scale_min, 1.0), ratio=(0.75, 1.333333)),
               V.RandomHorizontalFlip(prob=0.5), V.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), V.HWC2CHW()]
    else:
        ops = [V.Decode()] + eval_transforms(image_size, crop_ratio)
    data = data.map(operations=ops, input_columns="image", num_parallel_workers=num_workers)
    data = data.map(operations=T.TypeCast(ms.int32), input_columns="label", num_parallel_workers=num_workers)
    data = data.batch(batch_size, drop_remainder=drop_remainder)
    return data, classes


class SyntheticImages:
    """Deterministic, learnable images: class ``c`` is a fixed low-resolution colour pattern, upsampled
    to ``image_size``, plus Gaussian noise. Item ``i`` has label ``i % class_num`` and depends only on
    ``(seed, split, i)``, so every run and every rank sees the same data; the train (split 0) and eval
    (split 1) sets share the class patterns and differ in noise. Images are already normalised, CHW."""

    def __init__(self, num_images, class_num, image_size, seed=0, split=0, noise=1.0, grid=4):
        self.num_images = num_images
        self.class_num = class_num
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.noise = noise
        rng = np.random.default_rng(seed)
        self.prototypes = rng.standard_normal((class_num, 3, grid, grid)).astype(np.float32)
        self.index = (np.arange(image_size) * grid) // image_size

    def __len__(self):
        return self.num_images

    def __getitem__(self, i):
        label = int(i) % self.class_num
        proto = self.prototypes[label][:, self.index][:, :, self.index]
        rng = np.random.default_rng((self.seed, self.split, int(i)))
        image = proto + self.noise * rng.standard_normal(proto.shape, dtype=np.float32)
        # 0-d arrays, not NumPy scalars: GeneratorDataset rejects np.int32 scalars under NumPy 2.
        return image.astype(np.float32), np.array(label, dtype=np.int32)


def create_synthetic_dataset(num_images: int, class_num: int, image_size: int, batch_size: int, train: bool,
                             seed: int = 0, rank: int = 0, group_size: int = 1,
                             drop_remainder: bool | None = None) -> tuple[ds.Dataset, list[str]]:
    """Synthetic train or eval pipeline; eval uses a disjoint range of items (other noise)."""
    source = SyntheticImages(num_images, class_num, image_size, seed=seed, split=0 if train else 1)
    data = ds.GeneratorDataset(source, column_names=["image", "label"], python_multiprocessing=False,
                               **_sharding(train, train, rank, group_size, num_images))
    drop_remainder = train if drop_remainder is None else drop_remainder
    data = data.batch(batch_size, drop_remainder=drop_remainder)
    return data, [f"class_{i}" for i in range(class_num)]


CIFAR10_MEAN = [0.4914 * 255, 0.4822 * 255, 0.4465 * 255]  # the model zoo's CIFAR-10 normalisation
CIFAR10_STD = [0.2023 * 255, 0.1994 * 255, 0.2010 * 255]
CIFAR10_RECORD = 1 + 3 * 32 * 32  # label byte, then the R, G and B planes
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar10_files(path, train):
    """The binary batches of ``path`` the split reads, checked: ``[(file, images)]``."""
    if not os.path.isdir(path):
        raise UserError(f"{path}: CIFAR-10 folder not found (dataset cifar10 reads cifar-10-batches-bin)")
    wanted = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    found = [(os.path.join(path, f), os.path.getsize(os.path.join(path, f))) for f in wanted
             if os.path.isfile(os.path.join(path, f))]
    if not found:
        raise UserError(f"{path}: no {' / '.join(wanted[:1] + (['...'] if train else []))} here; dataset cifar10 "
                        f"reads the binary version's folder (cifar-10-batches-bin)")
    for name, size in found:
        if size == 0 or size % (10000 * CIFAR10_RECORD):
            raise UserError(f"{name}: {size} bytes, not whole CIFAR-10 binary batches of 10000 images "
                            f"({10000 * CIFAR10_RECORD} bytes each); re-download the binary version")
    return [(name, size // CIFAR10_RECORD) for name, size in found]


def create_cifar10_dataset(path: str, train: bool, image_size: int, batch_size: int, num_workers: int = 2,
                           rank: int = 0, group_size: int = 1) -> tuple[ds.Dataset, list[str]]:
    """CIFAR-10 from its binary batches (``data_batch_1..5.bin`` for training, ``test_batch.bin`` for
    evaluation), preprocessed as the model zoo's ResNet does: training RandomCrop 32 with 4 pixels of padding
    and a horizontal flip; both splits resized to ``image_size`` (224 in the zoo's recipe), normalised with
    CIFAR-10's mean and std, HWC -> CHW. Returns (dataset, class_names)."""
    files = _cifar10_files(path, train)
    meta = os.path.join(path, "batches.meta.txt")
    classes = CIFAR10_CLASSES
    if os.path.isfile(meta):
        with open(meta, encoding="utf-8", errors="replace") as f:
            names = tuple(line.strip() for line in f if line.strip())
        classes = names if len(names) == 10 else classes
    data = ds.Cifar10Dataset(path, usage="train" if train else "test", num_parallel_workers=num_workers,
                             **_sharding(train, train, rank, group_size, sum(n for _, n in files)))
    ops = [V.RandomCrop(32, padding=4), V.RandomHorizontalFlip(prob=0.5)] if train else []
    if image_size != 32:
        ops.append(V.Resize((image_size, image_size)))
    ops += [V.Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD), V.HWC2CHW()]
    data = data.map(operations=ops, input_columns="image", num_parallel_workers=num_workers)
    data = data.map(operations=T.TypeCast(ms.int32), input_columns="label", num_parallel_workers=num_workers)
    return data.batch(batch_size, drop_remainder=train), list(classes)


def resolve_eval_path(cfg: EasyDict) -> str | None:
    """The validation data: ``eval_dataset_path``; else for image folders a ``val`` folder beside ``data_path``,
    for CIFAR-10 the ``data_path`` folder itself (its test_batch.bin); else None."""
    if cfg.eval_dataset_path:
        return cfg.eval_dataset_path
    if cfg.data_path and cfg.dataset == "cifar10":
        return cfg.data_path
    if cfg.data_path:
        sibling = os.path.join(os.path.dirname(os.path.abspath(cfg.data_path)), "val")
        if os.path.isdir(sibling):
            return sibling
    return None


_SAID = set()


def dataset_from_config(cfg: EasyDict, train: bool, rank: int = 0, group_size: int = 1, path: str | None = None,
                        warn: Callable[[str], None] = print) -> tuple[ds.Dataset, list[str]]:
    """Factory used by train.py and eval.py. ``path`` overrides the folder; None means synthetic data
    when the config has no data path. Returns (dataset, class_names)."""
    batch = cfg.batch_size if train or not cfg.eval_batch_size else cfg.eval_batch_size
    if path is None:
        path = cfg.data_path if train else resolve_eval_path(cfg)
    if path is None:
        if cfg.data_path and not train:
            raise UserError("no validation folder: set eval_dataset_path (no 'val' folder beside data_path)")
        n = cfg.synthetic_train_images if train else cfg.synthetic_eval_images
        size = cfg.train_image_size if train else cfg.eval_image_size
        data, classes = create_synthetic_dataset(n, cfg.class_num, size, batch, train, seed=cfg.seed,
                                                 rank=rank, group_size=group_size)
    else:
        size = cfg.train_image_size if train else cfg.eval_image_size
        workers, note = worker_budget(cfg.num_parallel_workers)
        if note and note not in _SAID:  # once per process, not once per pipeline
            _SAID.add(note)
            warn(note)
    if path is not None and cfg.dataset == "cifar10":
        if cfg.class_num != 10:
            raise UserError(f"{path}: CIFAR-10 has 10 classes, but class_num is {cfg.class_num}")
        data, classes = create_cifar10_dataset(path, train, size, batch, workers, rank, group_size)
    elif path is not None:
        data, classes = create_folder_dataset(path, train, size, batch, workers, rank,
                                              group_size, cfg.eval_crop_ratio, bad_images=cfg.bad_images,
                                              warn=warn, crop_scale_min=cfg.crop_scale_min,
                                              train_crop=cfg.train_crop)
        if len(classes) != cfg.class_num:
            raise UserError(f"{path}: {len(classes)} class folders, but class_num is {cfg.class_num}")
    if train and cfg.max_steps_per_epoch and data.get_dataset_size() > cfg.max_steps_per_epoch:
        data = data.take(cfg.max_steps_per_epoch)
    if data.get_dataset_size() == 0:
        where = path or "synthetic data"
        raise UserError(f"{where}: fewer images than one batch of {batch} per device; lower batch_size")
    return data, classes

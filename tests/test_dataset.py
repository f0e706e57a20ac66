import os

import numpy as np
import pytest
from conftest import write_image_folder

from src.dataset import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    SyntheticImages,
    create_folder_dataset,
    dataset_from_config,
    scan_image_folder,
)
from src.errors import UserError
from src.inference import preprocess


def _batches(data):
    return list(data.create_tuple_iterator(num_epochs=1, output_numpy=True))


def test_train_pipeline_shapes_labels_and_normalisation(image_data):
    data, classes = create_folder_dataset(os.path.join(image_data, "train"), True, 16, 5, num_workers=1)
    assert classes == ["class_0", "class_1", "class_2"]
    batches = _batches(data)
    assert len(batches) == 24 // 5  # remainder dropped for training
    image, label = batches[0]
    assert image.shape == (5, 3, 16, 16) and image.dtype == np.float32
    assert label.dtype == np.int32 and set(label) <= {0, 1, 2}
    assert -3.0 < image.mean() < 3.0 and image.std() > 0.1  # normalised, not raw 0..255


def test_eval_pipeline_scores_every_image(image_data):
    data, _ = create_folder_dataset(os.path.join(image_data, "val"), False, 16, 4, num_workers=1, crop_ratio=0.875)
    batches = _batches(data)
    assert [b[0].shape[0] for b in batches] == [4, 4, 4, 3]
    labels = np.concatenate([b[1] for b in batches])
    assert sorted(labels.tolist()) == [0] * 5 + [1] * 5 + [2] * 5
    assert batches[0][0].shape == (4, 3, 16, 16)


def test_sharding_splits_files_between_ranks(image_data):
    seen = []
    for rank in range(2):
        data, _ = create_folder_dataset(os.path.join(image_data, "val"), False, 16, 100, num_workers=1,
                                        rank=rank, group_size=2)
        seen.append(sum(b[0].shape[0] for b in _batches(data)))
    assert seen == [8, 7]  # disjoint for evaluation: every image exactly once
    labels = []
    for rank in range(2):
        data, _ = create_folder_dataset(os.path.join(image_data, "val"), False, 16, 100, num_workers=1,
                                        rank=rank, group_size=2)
        labels += [int(v) for b in _batches(data) for v in b[1]]
    assert sorted(labels) == [0] * 5 + [1] * 5 + [2] * 5
    train, _ = create_folder_dataset(os.path.join(image_data, "train"), True, 16, 4, num_workers=1, rank=1,
                                     group_size=2)
    assert train.get_dataset_size() == 3  # 24 images / 2 ranks / batch 4


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="data folder not found"):
        scan_image_folder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        scan_image_folder(str(tmp_path / "empty"))
    root = write_image_folder(str(tmp_path / "data"), classes=2, per_class=2)
    os.makedirs(os.path.join(root, "class_9"))
    with pytest.raises(UserError, match=r"class_9: class folder holds no images"):
        scan_image_folder(root)


def test_class_num_must_match_the_folder(image_data, tiny_cfg):
    cfg = tiny_cfg("--data_path", os.path.join(image_data, "train"), "--class_num", "5")
    with pytest.raises(UserError, match="3 class folders, but class_num is 5"):
        dataset_from_config(cfg, train=True)


def test_batch_larger_than_the_dataset_is_a_clear_error(image_data, tiny_cfg):
    cfg = tiny_cfg("--data_path", os.path.join(image_data, "train"), "--batch_size", "64")
    with pytest.raises(UserError, match="fewer images than one batch of 64"):
        dataset_from_config(cfg, train=True)


def test_synthetic_images_are_deterministic_and_learnable():
    a = SyntheticImages(20, 4, 16, seed=3)
    b = SyntheticImages(20, 4, 16, seed=3)
    x1, y1 = a[5]
    x2, y2 = b[5]
    np.testing.assert_array_equal(x1, x2)
    assert y1.shape == () and int(y1) == 5 % 4 and x1.shape == (3, 16, 16)
    # Images of one class are closer to their own prototype than to the others' (learnable).
    protos = [a.prototypes[k][:, a.index][:, :, a.index] for k in range(4)]
    hits = sum(int(np.argmin([((a[i][0] - p) ** 2).mean() for p in protos]) == i % 4) for i in range(20))
    assert hits >= 18
    ev = SyntheticImages(20, 4, 16, seed=3, split=1)
    np.testing.assert_array_equal(ev.prototypes, a.prototypes)
    assert not np.array_equal(ev[5][0], x1)


def test_synthetic_dataset_from_config(tiny_cfg):
    cfg = tiny_cfg()
    train, classes = dataset_from_config(cfg, train=True)
    assert train.get_dataset_size() == 24 // 4 and len(classes) == 3
    ev, _ = dataset_from_config(cfg, train=False)
    assert sum(b[0].shape[0] for b in _batches(ev)) == 10


def test_cifar10_binary_batches_read_as_the_zoo_preprocesses_them(cifar10_bin, tiny_cfg, tmp_path):
    """Evaluation reads test_batch.bin in file order: pixels normalised with CIFAR-10's mean/std, CHW, labels as
    written; training reads the data batches, random-cropped (padding 4) and flipped, then resized."""
    path, written = cifar10_bin
    cfg = tiny_cfg("--dataset", "cifar10", "--data_path", path, "--class_num", "10", "--eval_batch_size", "100",
                   "--eval_image_size", "32", "--train_image_size", "24")
    data, classes = dataset_from_config(cfg, train=False)
    assert classes[0] == "airplane" and len(classes) == 10 and data.get_dataset_size() == 100
    image, label = next(data.create_tuple_iterator(num_epochs=1, output_numpy=True))
    labels, pixels = written["test_batch.bin"]
    np.testing.assert_array_equal(label, labels[:100])
    expected = (pixels[:100].astype(np.float32) - np.float32(CIFAR10_MEAN)) / np.float32(CIFAR10_STD)
    np.testing.assert_allclose(image, expected.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-4)
    # predict.py's eager transform for a CIFAR-10 network: the same values for the same image
    np.testing.assert_allclose(preprocess(pixels[0], 32, 1.0, "cifar10"), image[0], rtol=1e-5, atol=1e-4)
    train, _ = dataset_from_config(cfg, train=True)
    image, label = next(train.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert image.shape == (4, 3, 24, 24) and label.dtype == np.int32 and train.get_dataset_size() == 2500

    with pytest.raises(UserError, match="class_num is 3"):
        dataset_from_config(tiny_cfg("--dataset", "cifar10", "--data_path", path), train=False)
    with pytest.raises(UserError, match="no data_batch_1.bin"):
        dataset_from_config(tiny_cfg("--dataset", "cifar10", "--data_path", str(tmp_path), "--class_num", "10"),
                            train=True)
    (tmp_path / "test_batch.bin").write_bytes(b"\0" * 3073 * 10)
    with pytest.raises(UserError, match="not whole CIFAR-10 binary batches"):
        dataset_from_config(tiny_cfg("--dataset", "cifar10", "--data_path", str(tmp_path), "--class_num", "10"),
                            train=False)


def test_padded_crop_is_a_shifted_possibly_flipped_copy(tmp_path):
    # train_crop padded: every training image is the (lossless, already 16x16) original shifted by at most
    # 16/8 = 2 pixels with zero padding, maybe mirrored, then normalised: found among all 25 shifts x 2 flips.
    from PIL import Image

    from src.dataset import IMAGENET_MEAN, IMAGENET_STD
    root = write_image_folder(str(tmp_path / "png"), classes=2, per_class=3, size=16, fmt="PNG")
    originals = {}
    for k in range(2):
        for i in range(3):
            originals.setdefault(k, []).append(np.asarray(Image.open(os.path.join(root, f"class_{k}", f"{i:03d}.png"))))
    data, _ = create_folder_dataset(root, True, 16, 2, num_workers=1, train_crop="padded")
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    seen_shift = False
    for images, labels in _batches(data):
        for image, label in zip(images, labels):
            hwc = image.transpose(1, 2, 0) * std + mean  # back to pixel values
            matches = []
            for src in originals[int(label)]:
                padded = np.pad(src.astype(np.float64), ((2, 2), (2, 2), (0, 0)))
                for dy in range(5):
                    for dx in range(5):
                        crop = padded[dy:dy + 16, dx:dx + 16]
                        for flip in (crop, crop[:, ::-1]):
                            if np.abs(flip - hwc).max() < 0.01:
                                matches.append((dy, dx))
            assert matches, "a padded-crop training image is not a shifted copy of its source"
            seen_shift |= (2, 2) not in matches
    assert seen_shift  # not always the centred crop

"""Shared test helpers: generated image folders, tiny-network configs, and a subprocess runner."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from src import host  # noqa: E402

# The tests' own MindSpore kernels run with the cap train.py would choose (decided before any kernel exists);
# scripts started by the tests inherit it. tests/test_host.py checks the decision with a clean environment.
host.apply_isa_cap("CPU", "auto", log=None)

# A ResNet-18 of width 4 on 16x16 images: compiles and trains in seconds on 2 cores.
TINY_ARGS = ["--device_target", "CPU", "--net_name", "resnet18", "--base_width", "4", "--class_num", "3",
             "--train_image_size", "16", "--eval_image_size", "16", "--eval_crop_ratio", "1.0",
             "--batch_size", "4", "--num_parallel_workers", "1", "--lr_max", "0.05", "--warmup_epochs", "0",
             "--loss_scale", "1", "--log_interval", "2", "--synthetic_train_images", "24",
             "--synthetic_eval_images", "10"]


def write_image_folder(root, classes=3, per_class=8, size=20, seed=0, fmt="JPEG"):
    """Write ``root/class_<k>/<i>.JPEG``: each class a distinct mean colour plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(classes, 3))
    for k in range(classes):
        folder = os.path.join(root, f"class_{k}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(colours[k] + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
            ext = "JPEG" if fmt == "JPEG" else fmt.lower()
            Image.fromarray(pixels).save(os.path.join(folder, f"{i:03d}.{ext}"), format=fmt)
    return root


def write_cifar10_batches(root, files=("data_batch_1.bin", "test_batch.bin"), seed=0):
    """CIFAR-10 binary batches as the dataset ships them: 10000 records per file, each a label byte and the R, G
    and B planes of a 32x32 image; returns {file: (labels, images (N, 32, 32, 3) uint8)}."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in files:
        labels = rng.integers(0, 10, 10000).astype(np.uint8)
        planes = rng.integers(0, 256, (10000, 3, 32, 32)).astype(np.uint8)
        np.concatenate([labels[:, None], planes.reshape(10000, -1)], axis=1).tofile(os.path.join(root, name))
        written[name] = (labels, planes.transpose(0, 2, 3, 1))
    return written


@pytest.fixture(scope="session")
def cifar10_bin(tmp_path_factory):
    """A ``cifar-10-batches-bin`` folder with one training batch and the test batch (random pixels)."""
    root = str(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-bin")
    return root, write_cifar10_batches(root)


@pytest.fixture(scope="session")
def image_data(tmp_path_factory):
    """``train/`` (3 classes x 8 images) and ``val/`` (3 classes x 5 = 15 images, not a multiple of 4)."""
    root = tmp_path_factory.mktemp("imagenet_like")
    write_image_folder(os.path.join(root, "train"), per_class=8, seed=0)
    write_image_folder(os.path.join(root, "val"), per_class=5, seed=1)
    return str(root)


@pytest.fixture(scope="session")
def trained(image_data, tmp_path_factory):
    """The tiny net trained for 2 epochs on the generated folder, evaluated every epoch: (output_dir, proc)."""
    out = str(tmp_path_factory.mktemp("run"))
    proc = run_script("train.py", *TINY_ARGS, "--data_path", os.path.join(image_data, "train"),
                      "--epoch_size", "2", "--save_checkpoint_epochs", "1", "--run_eval", "true",
                      "--output_dir", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def run_script(script, *args, cwd=None, timeout=600, env=None):
    """Run a repository script (``train.py``, or ``-m tools.check_dataset``) with this interpreter, as a user
    would, from the repository root unless ``cwd``; returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    target = [script] if script == "-m" else [os.path.join(REPO, script)]
    return subprocess.run([sys.executable, *target, *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def launcher_env(**extra):
    """Environment for the launchers: this interpreter's bin first on PATH (msrun starts `python`)."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def last_json(stdout):
    """The last line of ``stdout`` that parses as a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise AssertionError(f"no JSON line in output:\n{stdout}")


def error_lines(stderr):
    """Lines of stderr that our entry points print (``error: ...``)."""
    return [l for l in stderr.splitlines() if l.startswith("error: ")]


def fails_cleanly(proc, fragment):
    """The process exited 2 with exactly one ``error:`` line containing ``fragment`` and no traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def tiny_cfg():
    """Build a parsed config for the tiny network with extra overrides."""
    from src.config import parse_args

    def make(*extra):
        return parse_args(TINY_ARGS + list(extra))
    return make

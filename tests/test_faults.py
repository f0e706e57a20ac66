"""Faults a long run meets, each through the entry point where a user would meet it: bad images, numerical
trouble, bad config, unwritable or full output, and SIGKILL followed by resume."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY_ARGS, fails_cleanly, run_script, write_image_folder
from PIL import Image


def metrics(out):
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


def done(out):
    return [e for e in metrics(out) if e["event"] == "done"][-1]


# ---- data faults ---------------------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path):
    """A fresh copy of a small 3-class JPEG folder per test (3 x 8 images: 6 steps of 4)."""
    return write_image_folder(str(tmp_path / "train"), per_class=8)


def train_on(folder, out, *extra):
    return run_script("train.py", *TINY_ARGS, "--data_path", folder, "--epoch_size", "1", "--output_dir", out, *extra)


def test_unusual_but_valid_images_train(folder, tmp_path):
    """Grayscale, CMYK, RGBA, palette PNG, BMP, spaces and non-ASCII in names, upper-case extensions, and a
    non-image file in a class folder (ignored): all train, every image is used."""
    rgb = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    c0, c1, c2 = (os.path.join(folder, f"class_{k}") for k in range(3))
    Image.fromarray(rgb[:, :, 0]).save(os.path.join(c0, "gray scale.jpg"))
    Image.fromarray(rgb).convert("CMYK").save(os.path.join(c0, "cmyk.JPG"))
    Image.fromarray(np.dstack([rgb, rgb[:, :, :1]]), "RGBA").save(os.path.join(c1, "alpha.png"))
    Image.fromarray(rgb).convert("P").save(os.path.join(c1, "palette.PNG"))
    Image.fromarray(rgb).save(os.path.join(c2, "ünïcödé 写真.bmp"))
    Image.fromarray(rgb).save(os.path.join(c2, "plain.jpeg"))
    with open(os.path.join(c2, "notes.txt"), "w") as f:
        f.write("not an image")
    out = tmp_path / "out"
    proc = train_on(folder, out, "--bad_images", "stop")
    assert proc.returncode == 0, proc.stderr
    assert "7 steps/epoch" in proc.stdout  # (24 + 6) images // 4
    assert np.isfinite(done(out)["loss"]) and done(out)["bad_images_skipped"] == 0


def test_corrupt_jpeg_stops_with_one_line_by_default(folder, tmp_path):
    bad = os.path.join(folder, "class_1", "003.JPEG")
    with open(bad, "wb") as f:
        f.write(b"this is not a JPEG at all" * 10)
    proc = train_on(folder, tmp_path / "out")
    fails_cleanly(proc, f"{bad}: cannot be read as an image")
    assert "[ERROR] MD" not in proc.stderr  # MindSpore's own C++ error block is filtered out
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".ckpt")]


def test_zero_byte_file_stops_before_compiling(folder, tmp_path):
    empty = os.path.join(folder, "class_2", "005.JPEG")
    open(empty, "wb").close()
    proc = train_on(folder, tmp_path / "out")
    fails_cleanly(proc, f"{empty}: empty image file(s) (0 bytes)")
    assert "steps/epoch" not in proc.stdout  # stopped at the folder scan, before the network was built


def test_skip_policy_names_and_counts_bad_files_and_keeps_the_step_count(folder, tmp_path):
    empty = os.path.join(folder, "class_2", "005.JPEG")
    open(empty, "wb").close()
    corrupt = os.path.join(folder, "class_0", "001.JPEG")
    with open(corrupt, "wb") as f:
        f.write(b"\x00" * 500)
    out = tmp_path / "out"
    proc = run_script("train.py", *TINY_ARGS, "--data_path", folder, "--epoch_size", "2", "--output_dir", out,
                      "--bad_images", "skip")
    assert proc.returncode == 0, proc.stderr
    warnings = [l for l in proc.stderr.splitlines() if l.startswith("warning: skipped unreadable image")]
    assert sorted(w.split(" (")[0].rsplit(" ", 1)[1] for w in warnings) == sorted([corrupt, empty])  # once each
    assert "1 empty image file(s)" in proc.stderr
    summary = done(out)
    assert summary["bad_images_skipped"] == 2 and summary["steps"] == 12 and np.isfinite(summary["loss"])
    assert os.path.exists(out / "resnet18-2_12.ckpt")  # epochs kept their 6 steps: checkpoint names agree


def test_empty_class_folder_stops(folder, tmp_path):
    os.makedirs(os.path.join(folder, "class_3"))
    fails_cleanly(train_on(folder, tmp_path / "out", "--class_num", "4"), "class_3: class folder holds no images")


def test_check_dataset_reports_every_bad_file(folder, tmp_path):
    c0 = os.path.join(folder, "class_0")
    good = open(os.path.join(c0, "000.JPEG"), "rb").read()
    with open(os.path.join(c0, "truncated.JPEG"), "wb") as f:
        f.write(good[: len(good) // 2])
    open(os.path.join(c0, "empty.jpg"), "wb").close()
    with open(os.path.join(c0, "text.jpg"), "w") as f:
        f.write("hello")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(c0, "webp.jpg"), format="WEBP")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(folder, "class_1", "gray é.png"))
    with open(os.path.join(c0, "readme.txt"), "w") as f:
        f.write("ignored")
    os.makedirs(os.path.join(folder, "class_3"))
    report = tmp_path / "report.json"
    proc = run_script("-m", "tools.check_dataset", folder, "--workers", "2", "--json", report)
    assert proc.returncode == 1, proc.stderr
    bad = {os.path.basename(b["file"]): b["reason"] for b in json.load(open(report))["bad_files"]}
    assert set(bad) == {"truncated.JPEG", "empty.jpg", "text.jpg", "webp.jpg"}
    assert "truncated" in bad["truncated.JPEG"].lower() and bad["empty.jpg"] == "empty file (0 bytes)"
    assert "WEBP" in bad["webp.jpg"]
    assert f"bad: {os.path.join(folder, 'class_3')}: class folder holds no images" in proc.stdout
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["images"] == 29 and summary["ignored_files"] == 1 and summary["modes"]["PNG L"] == 1
    shutil.rmtree(os.path.join(folder, "class_3"))
    for name in bad:
        os.remove(os.path.join(c0, name))
    clean = run_script("-m", "tools.check_dataset", folder, "--workers", "1")
    assert clean.returncode == 0 and '"ok": true' in clean.stdout


# ---- numerical faults ----------------------------------------------------------------------------------

def test_overflow_steps_are_skipped_and_counted_with_dynamic_loss_scale(tmp_path):
    """A loss scale of 2^127 overflows the gradients: those steps are skipped, the scale halves until the
    gradients fit, and training goes on with finite loss."""
    out = tmp_path / "out"
    proc = run_script("train.py", *TINY_ARGS, "--epoch_size", "5", "--loss_scale", str(2 ** 127),
                      "--loss_scale_mode", "dynamic", "--output_dir", out)
    assert proc.returncode == 0, proc.stderr
    summary = done(out)
    assert 1 <= summary["overflow_steps"] < 30 and np.isfinite(summary["loss"])
    assert sum(e["overflow_steps"] for e in metrics(out) if e["event"] == "epoch") == summary["overflow_steps"]


def test_overflow_in_a_row_stops_a_fixed_scale_run(tmp_path):
    proc = run_script("train.py", *TINY_ARGS, "--epoch_size", "2", "--loss_scale", str(2 ** 127),
                      "--overflow_stop_steps", "4", "--output_dir", tmp_path / "out")
    fails_cleanly(proc, "gradients were non-finite in 4 steps in a row (up to global step 4")


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    """Epoch 1 trains normally and is saved; resumed with an absurd lr, the loss becomes NaN: the run stops
    with the step named, and the epoch-1 checkpoint is untouched and still loads."""
    out = tmp_path / "out"
    assert run_script("train.py", *TINY_ARGS, "--epoch_size", "1", "--output_dir", out).returncode == 0
    ckpt = out / "resnet18-1_6.ckpt"
    before = (os.path.getmtime(ckpt), os.path.getsize(ckpt))
    proc = run_script("train.py", *TINY_ARGS, "--epoch_size", "3", "--output_dir", out, "--resume_ckpt", "auto",
                      "--lr_max", "3e38", "--lr_decay_mode", "constant")
    fails_cleanly(proc, "loss is nan at epoch 2 step 2 (global step 8); training stopped, the last checkpoint is kept")
    assert "the schedule changed since the checkpoint" in proc.stderr
    assert sorted(f for f in os.listdir(out) if f.endswith(".ckpt")) == ["resnet18-1_6.ckpt"]
    assert (os.path.getmtime(ckpt), os.path.getsize(ckpt)) == before
    assert run_script("eval.py", "--checkpoint_path", ckpt).returncode == 0


# ---- config faults -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--batch_size", "-4"], "config key 'batch_size' must be >= 1, got -4"),
    (["--optimizer", "Thor", "--frequency", "0"], "config key 'frequency' must be >= 1, got 0"),
    (["--optimizer", "LAMB"], "config key 'optimizer': 'LAMB' is not one of Momentum, Thor"),
    (["--data_path", "/nonexistent/imagenet/train"], "data folder not found: /nonexistent/imagenet/train"),
    (["--data_path", ""], "config key 'data_path' is empty"),
    (["--bad_images", "ignore"], "config key 'bad_images': 'ignore' is not one of stop, skip"),
    (["--damping_min", "0"], "config key 'damping_min' must be > 0"),
])
def test_bad_config_values_stop_before_compiling(tmp_path, args, message):
    proc = run_script("train.py", *TINY_ARGS, "--output_dir", tmp_path / "out", *args)
    fails_cleanly(proc, message)
    assert "steps/epoch" not in proc.stdout


def test_class_num_that_disagrees_with_the_folder(folder, tmp_path):
    fails_cleanly(train_on(folder, tmp_path / "out", "--class_num", "5"), "3 class folders, but class_num is 5")


# ---- output directory and disk -------------------------------------------------------------------------

def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    fails_cleanly(run_script("train.py", *TINY_ARGS, "--output_dir", blocker / "out"), "is not writable")


def test_free_space_is_checked_before_training(tmp_path, monkeypatch):

    import train
    from src.errors import UserError
    from src.resnet import create_network
    net = create_network("resnet18", 3, 4)
    size = sum(p.size * 4 for p in net.get_parameters())
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(train.shutil, "disk_usage", lambda p: usage._replace(free=size * 5))
    assert train.check_free_space(str(tmp_path), net, 3) == size * 5
    with pytest.raises(UserError, match=r"free, but 4 checkpoints of this run need"):
        train.check_free_space(str(tmp_path), net, 4)


def test_failed_checkpoint_write_leaves_no_partial_file_and_keeps_the_previous(tmp_path):
    """A file-size limit below the checkpoint size makes the write fail mid-file, like a full disk: the run
    stops with one line, the temporary file is gone, and the previous checkpoint is intact."""
    out = tmp_path / "out"
    assert run_script("train.py", *TINY_ARGS, "--epoch_size", "1", "--output_dir", out).returncode == 0
    first = out / "resnet18-1_6.ckpt"
    limit = os.path.getsize(first) // 2

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *TINY_ARGS, "--epoch_size", "2",
                           "--output_dir", str(out), "--resume_ckpt", "auto"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, preexec_fn=cap)
    fails_cleanly(proc, f"could not write checkpoint {out / 'resnet18-2_12.ckpt'}")
    assert sorted(os.listdir(out)) == sorted(["class_indexing.json", "config.yaml", "metrics.jsonl", "train.log",
                                              "resnet18-1_6.ckpt"])
    assert run_script("eval.py", "--checkpoint_path", first).returncode == 0


# ---- SIGKILL and resume --------------------------------------------------------------------------------

def test_kill_9_mid_epoch_then_resume_finishes_the_run(tmp_path):
    """Kill train.py with SIGKILL in the middle of epoch 2 (after the epoch-1 checkpoint), then rerun the
    same command with --resume_ckpt auto: it continues from the last checkpoint and ends at the same step
    count as an uninterrupted run, with finite loss and the uninterrupted run's lr at every logged step."""
    out = tmp_path / "out"
    args = [*TINY_ARGS, "--synthetic_train_images", "1600", "--epoch_size", "3", "--log_interval", "20",
            "--lr_decay_mode", "cosine", "--save_checkpoint_epochs", "1", "--output_dir", str(out)]
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *args, "--resume_ckpt", "auto"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_at = None
    for line in proc.stdout:  # wait for the progress line in the middle of epoch 2
        if line.startswith("epoch 2/3 step 200/400"):
            proc.send_signal(signal.SIGKILL)
            killed_at = line
            break
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL
    assert sorted(f for f in os.listdir(out) if f.endswith(".ckpt")) == ["resnet18-1_400.ckpt"]

    resumed = run_script("train.py", *args, "--resume_ckpt", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "resnet18-1_400.ckpt at epoch 1 (global step 400" in resumed.stdout
    assert sorted(f for f in os.listdir(out) if f.endswith(".ckpt")) == [
        "resnet18-1_400.ckpt", "resnet18-2_800.ckpt", "resnet18-3_1200.ckpt"]
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    events = metrics(out)
    summary = [e for e in events if e["event"] == "done"][-1]
    assert summary["steps"] == 1200 and np.isfinite(summary["loss"])
    # the lr logged after the resume is the uninterrupted schedule's (cosine over 1200 steps, lr_max 0.05)
    from src.schedules import warmup_lr
    lr = warmup_lr(0.0, 0.05, 0.0, 0, 3, 400, "cosine")
    steps = [e for e in events if e["event"] == "step"]
    assert steps[-1]["step"] == 1200
    for e in steps:
        assert e["lr"] == pytest.approx(float(lr[e["step"] - 1]), rel=1e-6), e
    import mindspore as ms
    last = ms.load_checkpoint(str(out / "resnet18-3_1200.ckpt"))
    assert int(last["step_num"].asnumpy()) == 1200 and int(last["global_step"].asnumpy().reshape(-1)[0]) == 1200
    assert "net_name: resnet18" in last["config"] and float(last["lr"].asnumpy()) == pytest.approx(float(lr[-1]))

"""train.py -> eval.py -> export.py through subprocesses, as a user runs them, plus bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import REPO, TINY_ARGS, fails_cleanly, last_json, run_script

pytestmark = pytest.mark.slow  # end-to-end through the real scripts


def test_training_writes_logs_metrics_checkpoints_and_config(trained, image_data):
    out, proc = trained
    assert "img/s" in proc.stdout and "eta" in proc.stdout and "eval epoch 2: top1" in proc.stdout
    assert "lr was tuned for a global batch of 2048, this run's is 4" in proc.stderr  # default recipe, batch 4
    files = set(os.listdir(out))
    assert {"resnet18-1_6.ckpt", "resnet18-2_12.ckpt", "resnet18-best.ckpt", "config.yaml", "metrics.jsonl",
            "class_indexing.json", "train.log"} <= files
    saved = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert saved["net_name"] == "resnet18" and saved["data_path"].endswith("train") and saved["epoch_size"] == 2
    assert json.load(open(os.path.join(out, "class_indexing.json"))) == {"class_0": 0, "class_1": 1, "class_2": 2}
    events = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    kinds = [e["event"] for e in events]
    assert kinds.count("epoch") == 2 and kinds.count("eval") == 2 and kinds[-1] == "done"
    peaks = [e["peak_rss_mib"] for e in events if e["event"] == "epoch"]  # the process's own peak, never lower
    assert 100 < peaks[0] <= peaks[1] and f"peak RSS {peaks[1]:.0f} MiB" in proc.stdout
    evals = [e for e in events if e["event"] == "eval"]
    assert all(e["images"] == 15 for e in evals)  # val has 15 images: none dropped
    steps = [e for e in events if e["event"] == "step"]
    assert all(np.isfinite(e["loss"]) and e["img_per_s"] > 0 for e in steps)
    assert [e["step"] for e in steps] == [2, 4, 6, 8, 10, 12]


def test_eval_scores_every_image_and_prints_json(trained, image_data):
    out, _ = trained
    proc = run_script("eval.py", "--checkpoint_path", os.path.join(out, "resnet18-2_12.ckpt"),
                      "--data_path", os.path.join(image_data, "val"))
    assert proc.returncode == 0, proc.stderr
    res = last_json(proc.stdout)
    assert res["images"] == 15 and 0.0 <= res["top1"] <= res["top5"] <= 1.0
    # the same number as the evaluation during training at epoch 2
    events = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    during = [e for e in events if e["event"] == "eval" and e["epoch"] == 2][0]
    assert res["top1"] == pytest.approx(during["top1"]) and res["top5"] == pytest.approx(during["top5"])


def test_eval_over_a_folder_of_checkpoints(trained):
    out, _ = trained
    proc = run_script("eval.py", "--checkpoint_path", out)  # val folder found beside data_path
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if ": top1 " in l]
    assert len(lines) == 3 and "resnet18-1_6.ckpt" in lines[0] and "resnet18-2_12.ckpt" in lines[1]
    assert last_json(proc.stdout)["images"] == 15


def test_resume_continues_exactly(trained, image_data, tmp_path):
    """Resuming from the epoch-1 checkpoint reproduces the uninterrupted run bit for bit."""
    import mindspore as ms
    out, _ = trained
    resumed = str(tmp_path / "resumed")
    proc = run_script("train.py", *TINY_ARGS, "--data_path", os.path.join(image_data, "train"),
                      "--epoch_size", "2", "--save_checkpoint_epochs", "1", "--run_eval", "true",
                      "--output_dir", resumed, "--resume_ckpt", os.path.join(out, "resnet18-1_6.ckpt"),
                      "--resume_replay_data", "true")
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout and "epoch 2/2 step 2/6" in proc.stdout
    a = ms.load_checkpoint(os.path.join(out, "resnet18-2_12.ckpt"))
    b = ms.load_checkpoint(os.path.join(resumed, "resnet18-2_12.ckpt"))
    params = [k for k in a if isinstance(a[k], ms.Parameter)]
    assert "moments.conv1.weight" in params and "global_step" in params
    for k in params:
        np.testing.assert_array_equal(a[k].asnumpy(), b[k].asnumpy(), err_msg=k)


def test_bad_config_keys_fail_before_anything_runs(tmp_path):
    fails_cleanly(run_script("train.py", "--batch_sise", "4", "--output_dir", tmp_path),
                  "unknown config key 'batch_sise'")
    fails_cleanly(run_script("train.py", "--optimizer", "Adam"), "'optimizer': 'Adam' is not one of")
    assert not os.listdir(tmp_path)


def test_missing_data_and_bad_images_are_named(image_data, tmp_path):
    fails_cleanly(run_script("train.py", *TINY_ARGS, "--data_path", tmp_path / "nope", "--output_dir", tmp_path / "o1"),
                   "data folder not found")
    from conftest import write_image_folder
    root = write_image_folder(str(tmp_path / "data"), classes=3, per_class=4)
    bad = os.path.join(root, "class_1", "broken.JPEG")
    with open(bad, "wb") as f:
        f.write(b"this is not a jpeg" * 20)
    fails_cleanly(run_script("train.py", *TINY_ARGS, "--data_path", root, "--output_dir", tmp_path / "o2",
                              "--epoch_size", "1"), f"{bad}: cannot be read as an image")


def test_mismatched_checkpoint_and_existing_outputs_are_protected(trained):
    out, _ = trained
    ckpt = os.path.join(out, "resnet18-2_12.ckpt")
    before = os.path.getmtime(ckpt)
    fails_cleanly(run_script("eval.py", "--checkpoint_path", ckpt, "--class_num", "5"),
                   "does not match the network: 'end_point.weight' has shape (3, 32) in the checkpoint")
    fails_cleanly(run_script("eval.py", "--checkpoint_path", ckpt, "--net_name", "resnet50"),
                  "does not match the network")
    truncated = ckpt + ".cut.ckpt"
    with open(ckpt, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read()[:500])
    fails_cleanly(run_script("eval.py", "--checkpoint_path", truncated), "not a readable MindSpore checkpoint")
    os.remove(truncated)
    # a new run into a folder that holds checkpoints would mix two runs: refused
    fails_cleanly(run_script("train.py", *TINY_ARGS, "--output_dir", out), "already holds checkpoints")
    assert os.path.getmtime(ckpt) == before


def test_keep_checkpoint_max_and_help(tmp_path):
    out = tmp_path / "keep"
    proc = run_script("train.py", *TINY_ARGS, "--epoch_size", "3", "--save_checkpoint_epochs", "1",
                      "--keep_checkpoint_max", "2", "--output_dir", out)
    assert proc.returncode == 0, proc.stderr
    ckpts = sorted(f for f in os.listdir(out) if f.endswith(".ckpt"))
    assert ckpts == ["resnet18-2_12.ckpt", "resnet18-3_18.ckpt"]
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    helped = run_script("train.py", "--help")
    assert helped.returncode == 0 and "--thor_mode" in helped.stdout and "--batch_size" in helped.stdout


def test_cifar10_binary_recipe_trains_and_evaluates_through_the_zoo_launchers(cifar10_bin, tmp_path):
    """The zoo's CIFAR-10 recipe (shortened, on the tiny network) from binary batches, through
    run_standalone_train.sh and run_eval.sh in their positional forms; every one of the 10000 test images
    scored."""
    path, _ = cifar10_bin
    out = str(tmp_path / "cifar")
    env = dict(os.environ, PYTHON=sys.executable)
    small = [*TINY_ARGS, "--class_num", "10", "--epoch_size", "1", "--max_steps_per_epoch", "3",
             "--eval_batch_size", "500", "--warmup_epochs", "0", "--output_dir", out]
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "run_standalone_train.sh"), path,
                           os.path.join(REPO, "config", "resnet50_cifar10.yaml"), "", *small],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "eval epoch 1: top1" in proc.stdout
    ckpt = os.path.join(out, "resnet18-1_3.ckpt")
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "run_eval.sh"), path, ckpt],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert last_json(proc.stdout)["images"] == 10000

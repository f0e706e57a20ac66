"""THOR through the real training path: logging, resume, eval/export of its checkpoints (THOR against Momentum
in the same steps is tests/test_thor.py::test_thor_beats_momentum_in_the_same_steps)."""
import os

import mindspore as ms
import numpy as np
import pytest
from conftest import TINY_ARGS, last_json, run_script

pytestmark = pytest.mark.slow  # end-to-end through the real scripts

THOR_ARGS = ["--optimizer", "Thor", "--frequency", "4", "--split_dim", "16", "--damping_init", "0.03",
             "--kl_clip", "0.001"]


@pytest.fixture(scope="module")
def thor_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("thor"))
    proc = run_script("train.py", *TINY_ARGS, *THOR_ARGS, "--epoch_size", "2", "--save_checkpoint_epochs", "1",
                      "--run_eval", "true", "--output_dir", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def test_thor_training_logs_refreshes_and_evaluates(thor_run):
    out, proc = thor_run
    assert "THOR: 21 preconditioned layers" in proc.stdout
    assert "thor_refreshed 21/21@" in proc.stdout and "damping" in proc.stdout
    assert "eval epoch 2: top1" in proc.stdout  # evaluation during THOR training works


def test_thor_resume_continues_identically(thor_run, tmp_path):
    out, _ = thor_run
    resumed = str(tmp_path / "resumed")
    proc = run_script("train.py", *TINY_ARGS, *THOR_ARGS, "--epoch_size", "2", "--save_checkpoint_epochs", "1",
                      "--output_dir", resumed, "--resume_ckpt", os.path.join(out, "resnet18-1_6.ckpt"))
    assert proc.returncode == 0, proc.stderr
    a = ms.load_checkpoint(os.path.join(out, "resnet18-2_12.ckpt"))
    b = ms.load_checkpoint(os.path.join(resumed, "resnet18-2_12.ckpt"))
    names = [k for k in a if isinstance(a[k], ms.Parameter)]
    assert any(k.endswith(".a_inv") for k in names) and "thor.updates" in names  # THOR state is saved
    assert int(a["thor.updates"].asnumpy()) == 3  # steps 0, 4, 8 across the epoch boundary (6 steps/epoch)
    for k in names:
        np.testing.assert_array_equal(a[k].asnumpy(), b[k].asnumpy(), err_msg=k)


def test_eager_update_pass_trains_and_resumes_identically(tmp_path):
    """``thor_update_pass: eager`` (the statistics pass op by op) through train.py: it logs its refreshes, and a run
    resumed from its epoch-1 checkpoint ends with the same parameters and THOR state as the run it came from."""
    runs = {}
    for name, extra in (("full", []), ("resumed", ["--resume_ckpt", str(tmp_path / "full" / "resnet18-1_6.ckpt")])):
        proc = run_script("train.py", *TINY_ARGS, *THOR_ARGS, "--thor_update_pass", "eager", "--epoch_size", "2",
                          "--save_checkpoint_epochs", "1", "--run_eval", "false", "--output_dir",
                          str(tmp_path / name), *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        runs[name] = ms.load_checkpoint(str(tmp_path / name / "resnet18-2_12.ckpt"))
    assert "(eager pass)" in proc.stdout and "thor_refreshed 21/21@" in proc.stdout
    a, b = runs["full"], runs["resumed"]
    assert int(a["thor.updates"].asnumpy()) == 3
    for k in (k for k in a if isinstance(a[k], ms.Parameter)):
        np.testing.assert_array_equal(a[k].asnumpy(), b[k].asnumpy(), err_msg=k)


def test_eval_and_export_load_thor_checkpoints(thor_run, tmp_path):
    out, _ = thor_run
    ckpt = os.path.join(out, "resnet18-2_12.ckpt")
    proc = run_script("eval.py", "--checkpoint_path", ckpt)
    assert proc.returncode == 0, proc.stderr
    assert last_json(proc.stdout)["images"] == 10
    proc = run_script("export.py", "--checkpoint_path", ckpt, "--file_name", tmp_path / "thor_tiny", "--verify", "true")
    assert proc.returncode == 0, proc.stderr
    assert "verify MINDIR: max |exported - checkpoint|" in proc.stdout
    assert os.path.isfile(tmp_path / "thor_tiny.mindir")

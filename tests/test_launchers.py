"""The Ascend launcher in dry-run mode, and rank-table checks, on a machine with no Ascend."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, launcher_env

SCRIPT = os.path.join(REPO, "scripts", "run_distribute_train.sh")
TABLES = os.path.join(REPO, "tools", "rank_table.py")


def _table(tmp_path, name, servers):
    path = str(tmp_path / name)
    args = [sys.executable, TABLES, "generate", "--output", path]
    for sid, n in servers:
        args += ["--server", f"{sid}:" + ",".join(f"192.168.{len(sid)}.{i}" for i in range(n))]
    subprocess.run(args, check=True, capture_output=True)
    return path


def _dry_run(table, data, tmp_path, *args, **env):
    args = args or ("", "", "--batch_size", "32")
    return subprocess.run(["bash", SCRIPT, table, data, *args], capture_output=True, text=True,
                          cwd=tmp_path, env=launcher_env(DRY_RUN="1", **env), timeout=60)


def test_positional_arguments_end_at_a_flag_or_double_dash(tmp_path):
    """RANK_TABLE_FILE DATA_PATH [CONFIG_PATH] [RESUME_CKPT] [--] [train.py args]: flags right after DATA_PATH
    go to train.py (not taken for CONFIG_PATH); a call without DATA_PATH prints the usage line."""
    table = _table(tmp_path, "rt2.json", [("10.0.0.1", 2)])
    for args in (("--batch_size", "32"), ("--", "--batch_size", "32"), (os.path.join(REPO, "default_config.yaml"),
                                                                         "--", "--batch_size", "32")):
        proc = _dry_run(table, str(tmp_path), tmp_path, *args)
        assert proc.returncode == 0, proc.stderr
        commands = [line for line in proc.stdout.splitlines() if "train.py" in line]
        assert len(commands) == 2 and all("default_config.yaml" in c and "--batch_size 32" in c for c in commands)
        assert not any(" -- " in c for c in commands)
    proc = subprocess.run(["bash", SCRIPT, table], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: bash scripts/run_distribute_train.sh")


def _ranks(stdout):
    out = {}
    for line in stdout.splitlines():
        if "RANK_TABLE_FILE=" in line:
            fields = dict(kv.split("=", 1) for kv in line.split(": ", 1)[1].split())
            out[int(fields["RANK_ID"])] = fields
    return out


def test_eight_devices_one_server(tmp_path):
    table = _table(tmp_path, "rt8.json", [("10.0.0.1", 8)])
    proc = _dry_run(table, str(tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stderr
    ranks = _ranks(proc.stdout)
    assert sorted(ranks) == list(range(8))
    assert all(r["DEVICE_ID"] == str(k) and r["RANK_SIZE"] == "8" for k, r in ranks.items())
    assert len({r["cwd"] for r in ranks.values()}) == 8
    assert proc.stdout.count("--run_distribute true --device_num 8") == 8 and "--batch_size 32" in proc.stdout


def test_sixteen_devices_two_servers_picks_this_server(tmp_path):
    table = _table(tmp_path, "rt16.json", [("10.0.0.1", 8), ("10.0.0.2", 8)])
    proc = _dry_run(table, str(tmp_path), tmp_path, SERVER_ID="10.0.0.2")
    assert proc.returncode == 0, proc.stderr
    ranks = _ranks(proc.stdout)
    assert sorted(ranks) == list(range(8, 16))
    assert all(r["DEVICE_ID"] == str(k - 8) and r["RANK_SIZE"] == "16" for k, r in ranks.items())


@pytest.mark.parametrize("mutate, message", [
    (lambda t: "{not json", "not valid JSON"),
    (lambda t: {k: v for k, v in t.items() if k != "version"}, "missing key 'version'"),
    (lambda t: {**t, "server_count": "3"}, "'server_count' is 3 but 'server_list' has 2 servers"),
    (lambda t: _set_rank(t, 1, "0"), "rank_id 0 appears more than once"),
    (lambda t: _set_rank(t, 1, "99"), "without gaps"),
    (lambda t: _drop_key(t, "device_ip"), "has no 'device_ip'"),
])
def test_bad_tables_are_rejected_with_a_clear_line(tmp_path, mutate, message):
    good = json.load(open(_table(tmp_path, "good.json", [("10.0.0.1", 8), ("10.0.0.2", 8)])))
    bad = mutate(good)
    path = tmp_path / "bad.json"
    path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    proc = _dry_run(str(path), str(tmp_path), tmp_path, SERVER_ID="10.0.0.1")
    assert proc.returncode == 2
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "bad.json" in errors[0], proc.stderr
    assert "rank 0:" not in proc.stdout


def test_unknown_server_and_missing_data_are_rejected(tmp_path):
    table = _table(tmp_path, "rt16.json", [("10.0.0.1", 8), ("10.0.0.2", 8)])
    proc = _dry_run(table, str(tmp_path), tmp_path, SERVER_ID="10.9.9.9")
    assert proc.returncode == 2 and "no server with server_id '10.9.9.9'" in proc.stderr
    proc = _dry_run(table, str(tmp_path / "nope"), tmp_path, SERVER_ID="10.0.0.1")
    assert proc.returncode == 2 and "data folder not found" in proc.stderr


def _set_rank(table, index, value):
    table["server_list"][0]["device"][index]["rank_id"] = value
    return table


def _drop_key(table, key):
    del table["server_list"][1]["device"][3][key]
    return table


def _launch(script, *args, **env):
    """A launcher with PYTHON=echo (the train.py / eval.py command is printed, not run) and DRY_RUN=1."""
    return subprocess.run(["bash", os.path.join(REPO, "scripts", script), *args], capture_output=True, text=True,
                          env=launcher_env(PYTHON="echo", DRY_RUN="1", **env), timeout=60)


@pytest.mark.parametrize("script, args, expected", [
    ("run_standalone_train.sh", ["/d/train", "cfg.yaml", "auto", "--epoch_size", "1"],
     "train.py --data_path /d/train --config_path cfg.yaml --resume_ckpt auto --epoch_size 1"),
    ("run_standalone_train.sh", ["/d/train", "--", "--epoch_size", "1"],
     "train.py --data_path /d/train --epoch_size 1"),
    ("run_standalone_train.sh", ["--config_path", "cfg.yaml"], "train.py --config_path cfg.yaml"),
    ("run_eval.sh", ["/d/val", "best.ckpt", "cfg.yaml"],
     "eval.py --data_path /d/val --checkpoint_path best.ckpt --config_path cfg.yaml"),
    ("run_eval.sh", ["--checkpoint_path", "best.ckpt"], "eval.py --checkpoint_path best.ckpt"),
    ("run_distribute_train_gpu.sh", ["/d/train", "cfg.yaml", "--epoch_size", "1"],
     "train.py --run_distribute true --device_num 8 --device_target GPU --data_path /d/train --config_path cfg.yaml "
     "--epoch_size 1"),
])
def test_zoo_positional_forms_and_flag_forms(script, args, expected):
    proc = _launch(script, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(expected), proc.stdout


@pytest.mark.parametrize("script, args", [
    ("run_standalone_train.sh", ["/d/train", "cfg.yaml", "auto", "extra"]),
    ("run_eval.sh", ["/d/val"]),
    ("run_eval.sh", ["/d/val", "best.ckpt", "cfg.yaml", "extra"]),
    ("run_distribute_train_gpu.sh", []),
    ("run_distribute_train_gpu.sh", ["/d/train", "cfg.yaml", "extra"]),
])
def test_zoo_launchers_print_their_usage_on_a_wrong_call(script, args):
    proc = _launch(script, *args)
    assert proc.returncode == 2 and proc.stderr.startswith(f"usage: bash scripts/{script}"), proc.stderr

"""The convergence-study script: the time-to-target arithmetic, and one tiny end-to-end run of it."""
import json
import os

import pytest
from conftest import TINY_ARGS, run_script, write_image_folder

pytestmark = pytest.mark.slow  # end-to-end through the real scripts


def test_reach_and_ratios_by_hand():
    from studies.convergence_study import markdown, summarise
    runs = [{"name": "momentum", "curve": [(1, 0.30, 100.0), (2, 0.50, 200.0), (3, 0.60, 300.0), (4, 0.62, 400.0)]},
            {"name": "thor", "curve": [(1, 0.45, 150.0), (2, 0.63, 290.0)]},
            {"name": "slow", "curve": [(1, 0.20, 90.0), (2, 0.61, 180.0)]}]
    summarise(runs)
    assert runs[0]["target_top1"] == 0.62
    assert runs[0]["reached"] == {"epoch": 4, "seconds": 400.0, "epoch_ratio": 1.0, "time_ratio": 1.0}
    assert runs[1]["reached"] == {"epoch": 2, "seconds": 290.0, "epoch_ratio": 0.5, "time_ratio": 0.725}
    assert runs[2]["reached"] is None
    table = markdown(runs)
    assert "| thor | 2 | 0.6300 | 0.6300 | 2 | 4.8 min | 0.50 | 0.72 |" in table
    assert "| slow | 2 | 0.6100 | 0.6100 | not reached | - | - | - |" in table


def test_study_runs_the_recipes_end_to_end(tmp_path):
    data = tmp_path / "data"
    write_image_folder(str(data / "train"), classes=10, per_class=4)
    write_image_folder(str(data / "val"), classes=10, per_class=2, seed=1)
    out = tmp_path / "study"
    i = TINY_ARGS.index("--class_num")
    tiny = TINY_ARGS[:i] + TINY_ARGS[i + 2:]  # class_num 10 from the recipes
    proc = run_script("-m", "studies.convergence_study", data,
                      "--recipes", "config/cifar10_momentum.yaml,config/cifar10_thor.yaml", "--output_dir", out,
                      *tiny, "--epoch_size", "2", "--frequency", "3")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.load(open(out / "study.json"))
    assert [r["name"] for r in report["runs"]] == ["cifar10_momentum", "cifar10_thor"]
    for r in report["runs"]:
        assert [p[0] for p in r["curve"]] == [1, 2] and all(0 <= p[1] <= 1 for p in r["curve"])
        assert [p[2] for p in r["curve"]] == sorted(p[2] for p in r["curve"])
    assert "Target: the baseline's (cifar10_momentum) final top-1" in open(out / "study.md").read()
    pytest.importorskip("matplotlib")
    assert os.path.getsize(out / "study.png") > 1000

    # Rerun after an interruption of the first run: the finished THOR run is read back, not trained again;
    # the unfinished one starts again and its folder is kept aside.
    metrics = out / "cifar10_momentum" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(line for line in lines if '"event": "done"' not in line) + "\n")
    again = run_script("-m", "studies.convergence_study", data,
                       "--recipes", "config/cifar10_momentum.yaml,config/cifar10_thor.yaml", "--output_dir", out,
                       *tiny, "--epoch_size", "2", "--frequency", "3")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "== cifar10_thor: finished earlier" in again.stdout and "cifar10_momentum: an unfinished run" in again.stdout
    assert len([p for p in os.listdir(out) if p.startswith("cifar10_momentum.interrupted-")]) == 1
    rerun = json.load(open(out / "study.json"))["runs"]
    assert rerun[1]["curve"] == report["runs"][1]["curve"]  # the THOR curve, as read back
    assert [p[0] for p in rerun[0]["curve"]] == [1, 2]

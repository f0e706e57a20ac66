"""The convergence-study and recipe-search scripts: the arithmetic over seeds by hand, and one tiny end-to-end
study through train.py, resumed."""
import json
import os
import re

import pytest
from conftest import TINY_ARGS, run_script, write_image_folder

pytestmark = pytest.mark.slow  # end-to-end through the real scripts


def _run(name, seed, curve, img_per_s=None):
    return {"name": f"{name}_seed{seed}", "seed": seed, "curve": curve, "seconds": curve[-1][2],
            "img_per_s": img_per_s}


def test_target_spread_and_ratios_by_hand():
    from studies.convergence_study import markdown, summarise
    arms = [{"name": "momentum", "runs": [
                _run("momentum", 1, [(1, 0.30, 100.0), (2, 0.50, 200.0), (3, 0.60, 300.0), (4, 0.62, 400.0)], 300.0),
                _run("momentum", 2, [(1, 0.32, 110.0), (2, 0.52, 210.0), (3, 0.66, 310.0), (4, 0.66, 420.0)], 200.0)]},
            {"name": "thor", "runs": [_run("thor", 1, [(1, 0.45, 150.0), (2, 0.65, 290.0)], 140.0),
                                      _run("thor", 2, [(1, 0.64, 140.0), (2, 0.70, 280.0)], 150.0)]},
            {"name": "slow", "runs": [_run("slow", 1, [(1, 0.20, 90.0), (2, 0.61, 180.0)])]}]
    target = summarise(arms)
    assert target == pytest.approx(0.64)  # mean of the baseline's final 0.62 and 0.66
    momentum, thor, slow = arms
    # momentum seed 1 never reaches the mean, seed 2 does at epoch 3
    assert [r["reached"] for r in momentum["runs"]] == [None, {"epoch": 3, "seconds": 310.0}]
    assert [r["reached"] for r in thor["runs"]] == [{"epoch": 2, "seconds": 290.0}, {"epoch": 1, "seconds": 140.0}]
    assert thor["final_top1"]["mean"] == pytest.approx(0.675) and thor["final_top1"]["std"] == pytest.approx(0.03535534)
    to = thor["to_target"]
    assert to["epochs"]["mean"] == 1.5 and (to["epochs"]["min"], to["epochs"]["max"]) == (1, 2)
    assert to["epoch_ratio"] == pytest.approx(1.5 / 4)  # to the baseline's 4-epoch schedule
    assert to["time_ratio"] == pytest.approx(215.0 / 410.0)  # to its mean wall-clock to the last evaluation
    assert slow["reached_by"] == 0 and slow["to_target"] is None
    # the other way round: momentum reaches slow's final 0.61 at epochs 4 and 3 (400 s, 310 s), never thor's 0.675
    back = slow["baseline_to_final"]
    assert back["reached_by"] == 2 and back["epochs"]["mean"] == 3.5 and back["seconds"]["mean"] == 355.0
    assert back["epoch_ratio"] == pytest.approx(2 / 3.5) and back["time_ratio"] == pytest.approx(180 / 355)
    assert thor["baseline_to_final"] == {"top1": pytest.approx(0.675), "reached_by": 0}
    table = markdown(arms, target)
    assert momentum["img_per_s"]["mean"] == 250.0 and thor["img_per_s"]["min"] == 140.0 and slow["img_per_s"] is None
    assert "| thor | 1,2 | 2 | 0.6750 (0.6500-0.7000) | 0.0354 | 2/2 | 1.50 (1-2) | 3.6 min (2.3-4.8) | 0.38 | 0.52 " \
        "| 145 (140-150) |" in table
    assert "| momentum | 1,2 | 4 | 0.6400 (0.6200-0.6600) | 0.0283 | 1/2 | 3.00 (3-3) | 5.2 min (5.2-5.2) | 0.75 " \
        "| 0.76 | 250 (200-300) |" in table
    assert "| slow | 1 | 2 | 0.6100 (0.6100-0.6100) | 0.0000 | 0/1 | - | - | - | - | - |" in table
    assert "| slow | 0.6100 | 2/2 | 3.50 (3-4) | 5.9 min (5.2-6.7) | 0.57 | 0.51 |" in table
    assert "| thor | 0.6750 | 0/2 | - | - | - | - |" in table
    assert f"Study time: {(400 + 420 + 290 + 280 + 180) / 60:.1f} min" in table


def test_train_speed_is_the_median_after_the_first_epoch():
    from studies.convergence_study import train_speed
    epoch = [{"event": "epoch", "img_per_s": v} for v in (50.0, 300.0, 100.0, 200.0)]
    assert train_speed([{"event": "start"}, *epoch, {"event": "eval", "img_per_s": 1.0}]) == 200.0
    assert train_speed(epoch[:1]) == 50.0 and train_speed([{"event": "start"}]) is None


def test_recipe_arguments_are_checked():
    proc = run_script("-m", "studies.convergence_study", ".", "--recipes", "config/cifar10_momentum.yaml@1,x")
    assert proc.returncode == 2 and "seeds must be integers" in proc.stderr
    proc = run_script("-m", "studies.recipe_search", ".", "config/cifar10_momentum.yaml", "--grid", "lr_max")
    assert proc.returncode == 2 and "expected key=v1,v2" in proc.stderr


def test_study_runs_seeds_end_to_end_and_resumes(tmp_path):
    data = tmp_path / "data"
    write_image_folder(str(data / "train"), classes=10, per_class=4)
    write_image_folder(str(data / "val"), classes=10, per_class=2, seed=1)
    out = tmp_path / "study"
    i = TINY_ARGS.index("--class_num")
    tiny = [*TINY_ARGS[:i], "--class_num", "10", *TINY_ARGS[i + 2:], "--epoch_size", "2"]
    study = ["-m", "studies.convergence_study", data, "--output_dir", out, *tiny, "--recipes"]
    proc = run_script(*study, "config/cifar10_momentum.yaml", "config/resnet50_cpu_smoke.yaml@1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.load(open(out / "study.json"))
    names = [r["name"] for a in report["arms"] for r in a["runs"]]
    assert names == ["cifar10_momentum_seed1", "resnet50_cpu_smoke_seed1"]
    for arm in report["arms"]:
        for r in arm["runs"]:
            assert [p[0] for p in r["curve"]] == [1, 2] and all(0 <= p[1] <= 1 for p in r["curve"])
            assert [p[2] for p in r["curve"]] == sorted(p[2] for p in r["curve"])
    assert report["target_top1"] == report["arms"][0]["runs"][0]["curve"][-1][1]
    best = out / "resnet50_cpu_smoke_seed1" / "resnet18-best.ckpt"
    assert f"best checkpoint of resnet50_cpu_smoke: {best}" in proc.stdout and best.is_file()
    assert "Study time:" in open(out / "study.md").read()

    # (the THOR recipes run through train.py in tests/test_thor_training.py; two Momentum arms keep this short)
    # A second seed added, and a folder left by an interrupted run of it: the finished runs are read back, not
    # trained again; the unfinished one starts again with its folder kept aside.
    (out / "cifar10_momentum_seed2").mkdir()
    (out / "cifar10_momentum_seed2" / "metrics.jsonl").write_text('{"event": "start", "time": 1.0, "epoch": 0}\n{"ev')
    again = run_script(*study, "config/cifar10_momentum.yaml@1,2", "config/resnet50_cpu_smoke.yaml")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "cifar10_momentum_seed1: finished earlier" in again.stdout
    assert "resnet50_cpu_smoke_seed1: finished earlier" in again.stdout
    assert "cifar10_momentum_seed2: an unfinished run was here" in again.stdout
    assert len([p for p in os.listdir(out) if p.startswith("cifar10_momentum_seed2.interrupted-")]) == 1
    rerun = json.load(open(out / "study.json"))
    assert rerun["arms"][1]["runs"][0]["curve"] == report["arms"][1]["runs"][0]["curve"]  # read back
    assert [r["seed"] for r in rerun["arms"][0]["runs"]] == [1, 2]
    log = open(out / "study.log").read()
    assert log.count("cifar10_momentum_seed2: start:") == 1 and log.count("resnet50_cpu_smoke_seed1: start:") == 1
    # seed-major: every arm's first seed before any arm's second
    second = log[log.rindex("study: "):]
    assert second.index("resnet50_cpu_smoke_seed1: finished") < second.index("cifar10_momentum_seed2: an unfinished")
    assert all(r["img_per_s"] > 0 for a in rerun["arms"] for r in a["runs"])
    pytest.importorskip("matplotlib")
    assert os.path.getsize(out / "study.png") > 1000


def test_a_finished_run_is_stale_when_its_recipe_or_command_changed(tmp_path):
    from src.config import parse_args, save_config
    from studies.convergence_study import ROOT, changed_keys, train_command
    recipe = os.path.join(ROOT, "config", "cifar10_momentum.yaml")
    out = tmp_path / "run"
    out.mkdir()
    args = train_command(recipe, "../shared/data/cifar10", str(out), ["--seed", "2"])[2:]
    save_config(parse_args(args), str(out / "config.yaml"))
    assert changed_keys(str(out), args) == []
    # the same data given as an absolute path: not a change (train.py runs from the repository root)
    absolute = train_command(recipe, os.path.join(ROOT, "..", "shared/data/cifar10"), str(out), ["--seed", "2"])[2:]
    assert changed_keys(str(out), absolute) == []
    assert changed_keys(str(out), [*args[:-2], "--seed", "3"]) == ["seed"]
    edited = tmp_path / "edited.yaml"
    text = re.sub(r"^lr_max: .*$", "lr_max: 0.0123", open(recipe).read(), flags=re.M)
    edited.write_text(re.sub(r"^warmup_epochs: .*$", "warmup_epochs: 7", text, flags=re.M))
    assert changed_keys(str(out), [*args[:1], str(edited), *args[2:]]) == ["lr_max", "warmup_epochs"]
    saved = (out / "config.yaml").read_text()  # written before train_crop existed: resized was the only crop
    (out / "config.yaml").write_text(re.sub(r"^train_crop: .*\n", "", saved, flags=re.M))
    assert changed_keys(str(out), [*args, "--train_crop", "resized"]) == []
    assert changed_keys(str(out), args) == ["train_crop"]  # the recipe's padded crop is a change
    (out / "config.yaml").unlink()
    assert changed_keys(str(out), args) == ["config.yaml (missing)"]

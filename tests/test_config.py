import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from src.config import DEFAULT_CONFIG, key_help, load_yaml, parse_args, save_config
from src.errors import UserError

ZOO_KEYS = ["data_path", "output_dir", "device_target", "optimizer", "net_name", "class_num", "batch_size",
            "epoch_size", "lr_init", "lr_max", "lr_end", "warmup_epochs", "lr_decay_mode", "loss_scale", "momentum",
            "weight_decay", "use_label_smooth", "label_smooth_factor", "save_checkpoint_epochs",
            "keep_checkpoint_max", "run_eval", "eval_interval", "eval_dataset_path", "train_image_size",
            "eval_image_size", "pre_trained", "resume_ckpt"]


def test_default_config_is_the_zoo_imagenet_momentum_recipe():
    cfg = parse_args([])
    assert (cfg.net_name, cfg.class_num, cfg.epoch_size, cfg.batch_size) == ("resnet50", 1000, 90, 256)
    assert (cfg.lr_max, cfg.warmup_epochs, cfg.lr_decay_mode, cfg.momentum) == (0.8, 2, "linear", 0.9)
    assert (cfg.use_label_smooth, cfg.label_smooth_factor, cfg.loss_scale) == (True, 0.1, 1024)
    assert cfg.weight_decay == 1e-4 and cfg.decay_bn_bias is False
    assert cfg.optimizer == "Momentum" and cfg.data_path is None


def test_zoo_key_names_exist_and_every_key_is_documented():
    defaults = load_yaml(DEFAULT_CONFIG)
    for key in ZOO_KEYS:
        assert key in defaults
    helps = key_help()
    assert [k for k in defaults if not helps.get(k)] == []
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    assert [k for k in defaults if f"`{k}`" not in readme] == []


def test_overrides_are_typed():
    cfg = parse_args(["--batch_size", "8", "--lr_max=0.1", "--run_eval", "true", "--data_path", "/x",
                      "--loss_scale", "128"])
    assert cfg.batch_size == 8 and isinstance(cfg.batch_size, int)
    assert cfg.lr_max == 0.1 and cfg.run_eval is True and cfg.data_path == "/x"
    assert isinstance(cfg.loss_scale, int) and cfg.loss_scale == 128
    assert parse_args(["--data_path", "null"]).data_path is None
    lists = parse_args(["--all_reduce_fusion_config", "85,160", "--thor_skip_layers", "end_point,layer4.*"])
    assert lists.all_reduce_fusion_config == [85, 160] and lists.thor_skip_layers == ["end_point", "layer4.*"]
    with pytest.raises(UserError, match="all_reduce_fusion_config' expects an integer"):
        parse_args(["--all_reduce_fusion_config", "85,x"])


@pytest.mark.parametrize("argv, fragment", [
    (["--batch_sise", "8"], "unknown config key 'batch_sise' (did you mean 'batch_size'?)"),
    (["--batch_size", "eight"], "key 'batch_size' expects an integer"),
    (["--batch_size", "1.5"], "key 'batch_size' expects an integer"),
    (["--run_eval", "maybe"], "key 'run_eval' expects true or false"),
    (["--optimizer", "Adam"], "'optimizer': 'Adam' is not one of Momentum, Thor"),
    (["--batch_size", "-4"], "'batch_size' must be >= 1"),
    (["--momentum", "1.5"], "'momentum' must be in [0, 1)"),
    (["--lr_max", "abc"], "key 'lr_max' expects a number"),
    (["--epoch_size"], "--epoch_size needs a value"),
    (["batch_size", "3"], "expected --key value"),
    (["--config_path", "/nonexistent.yaml"], "config file not found: /nonexistent.yaml"),
])
def test_bad_command_lines_are_rejected_with_the_key_named(argv, fragment):
    with pytest.raises(UserError) as err:
        parse_args(argv)
    assert fragment in str(err.value)


def test_recipe_files_are_laid_over_defaults_and_checked(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("batch_size: 16\nnet_name: resnet18\n")
    cfg = parse_args(["--config_path", str(good), "--batch_size", "4"])
    assert cfg.net_name == "resnet18" and cfg.batch_size == 4 and cfg.epoch_size == 90
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: 16\nlearning_rate: 0.1\n")
    with pytest.raises(UserError, match=r"bad.yaml: unknown config key 'learning_rate'"):
        parse_args(["--config_path", str(bad)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("batch_size: [16\n")
    with pytest.raises(UserError, match=r"broken.yaml \(line \d+\): not valid YAML"):
        parse_args(["--config_path", str(broken)])
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("run_eval: 3\n")
    with pytest.raises(UserError, match=r"wrong.yaml: key 'run_eval' expects true or false"):
        parse_args(["--config_path", str(wrong_type)])


def test_every_shipped_recipe_parses():
    folder = os.path.join(REPO, "config")
    recipes = [f for f in os.listdir(folder) if f.endswith(".yaml")]
    assert recipes
    for name in recipes:
        parse_args(["--config_path", os.path.join(folder, name)])


def test_saved_config_round_trips(tmp_path):
    cfg = parse_args(["--batch_size", "8", "--data_path", "/data/train"])
    path = tmp_path / "config.yaml"
    save_config(cfg, str(path))
    again = parse_args(["--config_path", str(path)])
    assert {k: v for k, v in again.items() if k != "config_path"} == \
        {k: v for k, v in cfg.items() if k != "config_path"}
    assert "config_path" not in yaml.safe_load(path.read_text())


def test_nothing_parses_sys_argv_at_import():
    code = ("import sys; sys.argv=['x','--bogus','1']; import src.config, src.resnet, src.dataset, src.optim; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok")

"""Helpers shared by eval.py and export.py: script-only options and the network from a checkpoint."""
import os

from src import checkpoint
from src.config import parse_args
from src.errors import UserError
from src.resnet import network_from_config


def pop_option(argv, name, default=None, required=False):
    """Remove ``--name value`` (or ``--name=value``) from ``argv`` and return the value."""
    argv = list(argv)
    for i, tok in enumerate(argv):
        if tok == f"--{name}":
            if i + 1 >= len(argv):
                raise UserError(f"command line: --{name} needs a value")
            value = argv[i + 1]
            del argv[i:i + 2]
            return value, argv
        if tok.startswith(f"--{name}="):
            del argv[i]
            return tok.split("=", 1)[1], argv
    if required:
        raise UserError(f"command line: --{name} is required")
    return default, argv


def config_for_checkpoint(argv, ckpt_path):
    """Parse the config for a script that works on a checkpoint. Without ``--config_path``, the
    ``config.yaml`` that train.py saved beside the checkpoint is used (so net_name, class_num, width and
    image sizes match the training run); otherwise default_config.yaml."""
    if not any(a == "--config_path" or a.startswith("--config_path=") for a in argv):
        folder = ckpt_path if os.path.isdir(ckpt_path) else os.path.dirname(os.path.abspath(ckpt_path))
        saved = os.path.join(folder, "config.yaml")
        if os.path.isfile(saved):
            argv = ["--config_path", saved] + list(argv)
    cfg = parse_args(argv)
    if not any(a == "--run_distribute" or a.startswith("--run_distribute=") for a in argv):
        cfg.run_distribute, cfg.device_num = False, 1  # a data-parallel training run does not make eval one
    return cfg


def load_network(cfg, ckpt_path):
    """Build the network of ``cfg`` and load its weights from ``ckpt_path``; optimizer and THOR state in
    the checkpoint are ignored."""
    network = network_from_config(cfg)
    params = checkpoint.read(ckpt_path)
    checkpoint.load_into(network, params, ckpt_path)
    network.set_train(False)
    return network

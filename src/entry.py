"""Helpers shared by eval.py and export.py: script-only options and the network from a checkpoint."""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from easydict import EasyDict

from src import checkpoint
from src.config import coerce, parse_args, print_help
from src.errors import UserError
from src.resnet import network_from_config

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mindspore import nn


class Option:
    """A script-only command-line option (not a config key): ``--name value``, typed like config keys."""

    def __init__(self, name, typ, default=None, help="", required=False, choices=None, check=None):
        self.name, self.typ, self.default, self.help = name, typ, default, help
        self.required, self.choices, self.check = required, choices, check


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def print_script_help(usage: str, options: Sequence, doc: str | None = None) -> None:
    """Usage, the script's own options, then every config key (they are accepted too)."""
    print(f"usage: {usage}\n")
    if doc:
        print(doc.strip().splitlines()[0] + "\n")
    print("options of this script:")
    for o in options:
        default = "required" if o.required else o.default
        print(f"  --{o.name:<24} {default!s:<14} {o.help}")
    print()
    print_help(header="config keys (any key of default_config.yaml; default, meaning):")


def parse_script_args(argv: Sequence[str], options: Sequence, usage: str, doc: str | None = None) -> tuple:
    """Take the script's own ``options`` out of ``argv`` and return ``(values, rest)``.

    Values are converted with the config's typed rules (``--verify ture`` is an error naming the option);
    ``rest`` holds the remaining ``--key value`` pairs for the config parser. ``-h``/``--help`` anywhere
    prints the usage, the options and the config keys, then exits 0."""
    argv = list(argv)
    if wants_help(argv):
        print_script_help(usage, options, doc)
        sys.exit(0)
    values = {}
    for o in options:
        raw, argv = _pop(argv, o.name)
        if raw is None:
            if o.required:
                raise UserError(f"command line: --{o.name} is required (usage: {usage})")
            values[o.name] = o.default
            continue
        value = coerce(o.name, raw, o.typ, "command line")
        if o.choices and value not in o.choices:
            raise UserError(f"command line: --{o.name} {value!r} is not one of {', '.join(o.choices)}")
        if o.check and not o.check[0](value):
            raise UserError(f"command line: --{o.name} {o.check[1]}, got {value!r}")
        values[o.name] = value
    return EasyDict(values), argv


def _pop(argv, name):
    """Remove ``--name value`` (or ``--name=value``) from ``argv``; ``(value or None, argv)``."""
    for i, tok in enumerate(argv):
        if tok == f"--{name}":
            if i + 1 >= len(argv):
                raise UserError(f"command line: --{name} needs a value")
            value = argv[i + 1]
            return value, argv[:i] + argv[i + 2:]
        if tok.startswith(f"--{name}="):
            return tok.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return None, argv


def config_for_checkpoint(argv: Sequence[str], ckpt_path: str) -> EasyDict:
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


def load_network(cfg: EasyDict, ckpt_path: str) -> nn.Cell:
    """Build the network of ``cfg`` and load its weights from ``ckpt_path``; optimizer and THOR state in
    the checkpoint are ignored."""
    network = network_from_config(cfg)
    params = checkpoint.read(ckpt_path)
    checkpoint.load_into(network, params, ckpt_path)
    network.set_train(False)
    return network

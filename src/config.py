"""Configuration: YAML files plus ``--key value`` overrides, type-checked, unknown keys rejected.

``default_config.yaml`` at the repository root is the schema: it defines every key, its default and
(through the default's YAML type) its type. A recipe given with ``--config_path`` is laid over it and may
only use keys defined there. Command-line overrides come last. Nothing here runs at import time.

    cfg = parse_args(["--config_path", "config/resnet50_cpu_smoke.yaml", "--batch_size", "8"])
    cfg.batch_size  # 8
"""
from __future__ import annotations

import difflib
import os
import re
import sys
from typing import TYPE_CHECKING

import yaml
from easydict import EasyDict

from src.errors import UserError
from src.host import SETTINGS as CPU_ISA_SETTINGS

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "default_config.yaml")

# Keys whose default is null or an empty list: their type cannot be read from the default.
EXPLICIT_TYPES = {
    "data_path": str,
    "eval_dataset_path": str,
}
# Element types of list-valued keys.
LIST_ELEMENT_TYPES = {"thor_skip_layers": str, "all_reduce_fusion_config": int}

CHOICES = {
    "device_target": ("CPU", "GPU", "Ascend"),
    "mode": ("GRAPH", "PYNATIVE"),
    "amp_level": ("O0", "O1", "O2", "O3"),
    "net_name": ("resnet18", "resnet34", "resnet50", "resnet101"),
    "stem": ("imagenet", "cifar", "cifar_s2"),
    "train_crop": ("resized", "padded"),
    "optimizer": ("Momentum", "Thor"),
    "lr_decay_mode": ("linear", "cosine", "steps", "poly", "constant", "thor"),
    "lr_scaling": ("none", "linear"),
    "dataset": ("imagenet2012", "cifar10"),
    "loss_scale_mode": ("fixed", "dynamic"),
    "thor_mode": ("fixed", "trace"),
    "thor_convention": ("mindspore", "kfac"),
    "thor_right_product": ("bmm", "conv"),
    "thor_update_pass": ("statistics", "eager", "step"),
    "label_smooth_mode": ("uniform", "zoo"),
    "bad_images": ("stop", "skip"),
    "cpu_isa_cap": CPU_ISA_SETTINGS,
}

# (key, predicate, description) checked after all overrides are applied.
RANGE_CHECKS = [
    ("batch_size", lambda v: v >= 1, "must be >= 1"),
    ("epoch_size", lambda v: v >= 1, "must be >= 1"),
    ("class_num", lambda v: v >= 2, "must be >= 2"),
    ("base_width", lambda v: v >= 1, "must be >= 1"),
    ("log_interval", lambda v: v >= 1, "must be >= 1"),
    ("device_num", lambda v: v >= 1, "must be >= 1"),
    ("num_parallel_workers", lambda v: v >= 1, "must be >= 1"),
    ("max_steps_per_epoch", lambda v: v >= 0, "must be >= 0"),
    ("train_image_size", lambda v: v >= 8, "must be >= 8"),
    ("eval_image_size", lambda v: v >= 8, "must be >= 8"),
    ("eval_crop_ratio", lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
    ("crop_scale_min", lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
    ("synthetic_train_images", lambda v: v >= 1, "must be >= 1"),
    ("synthetic_eval_images", lambda v: v >= 1, "must be >= 1"),
    ("lr_init", lambda v: v >= 0, "must be >= 0"),
    ("lr_max", lambda v: v > 0, "must be > 0"),
    ("lr_end", lambda v: v >= 0, "must be >= 0"),
    ("lr_batch_size", lambda v: v >= 0, "must be >= 0"),
    ("warmup_epochs", lambda v: v >= 0, "must be >= 0"),
    ("lr_decay", lambda v: v >= 0, "must be >= 0"),
    ("lr_end_epoch", lambda v: v > 0, "must be > 0"),
    ("decay_epochs", lambda v: v >= 0, "must be >= 0"),
    ("momentum", lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    ("weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("label_smooth_factor", lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    ("loss_scale", lambda v: v >= 1, "must be >= 1"),
    ("loss_scale_window", lambda v: v >= 1, "must be >= 1"),
    ("overflow_stop_steps", lambda v: v >= 0, "must be >= 0"),
    ("save_checkpoint_epochs", lambda v: v >= 1, "must be >= 1"),
    ("keep_checkpoint_max", lambda v: v >= 1, "must be >= 1"),
    ("eval_interval", lambda v: v >= 1, "must be >= 1"),
    ("eval_batch_size", lambda v: v >= 0, "must be >= 0"),
    ("frequency", lambda v: v >= 1, "must be >= 1"),
    ("damping_init", lambda v: v > 0, "must be > 0"),
    ("damping_decay", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("damping_total_epochs", lambda v: v > 0, "must be > 0"),
    ("damping_min", lambda v: v > 0, "must be > 0"),
    ("split_dim", lambda v: v >= 0, "must be >= 0"),
    ("factor_decay", lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    ("kl_clip", lambda v: v >= 0, "must be >= 0"),
    ("trace_w1", lambda v: v >= 0, "must be >= 0"),
    ("trace_w2", lambda v: v >= 0, "must be >= 0"),
    ("frequency_growth", lambda v: v >= 1.0, "must be >= 1"),
    ("frequency_growth_epochs", lambda v: v >= 0, "must be >= 0"),
    ("frequency_max", lambda v: v >= 0, "must be >= 0"),
]

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def load_yaml(path: str) -> dict:
    """Read a YAML mapping from ``path``; every failure is a one-line UserError naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of key: value at the top level")
    return data


def key_help(path: str = DEFAULT_CONFIG) -> dict[str, str]:
    """Return {key: comment} from the ``key: value  # comment`` lines of the default config."""
    helps = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^(\w+):[^#]*#\s*(.*)$", line)
            if m:
                helps[m.group(1)] = m.group(2).strip()
    return helps


def _schema(defaults):
    schema = {}
    for key, value in defaults.items():
        if key in EXPLICIT_TYPES:
            schema[key] = EXPLICIT_TYPES[key]
        elif isinstance(value, list):
            schema[key] = list
        elif value is None:
            raise UserError(f"{DEFAULT_CONFIG}: key '{key}' is null but has no declared type")
        else:
            schema[key] = type(value)
    return schema


def _unknown(key, known, source):
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return UserError(f"{source}: unknown config key '{key}'{hint}")


def coerce(key: str, value: Any, typ: type, source: str) -> Any:
    """Convert ``value`` (from YAML or from the command line) to ``typ`` or raise a UserError."""
    where = f"{source}: key '{key}'"
    if value is None:
        if key in EXPLICIT_TYPES:
            return None
        raise UserError(f"{where} may not be null")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise UserError(f"{where} expects true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise UserError(f"{where} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise UserError(f"{where} expects an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise UserError(f"{where} expects a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise UserError(f"{where} expects a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            if key in EXPLICIT_TYPES and value.strip().lower() in ("null", "none"):
                return None
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where} expects a string, got {value!r}")
    if typ is list:
        elem = LIST_ELEMENT_TYPES.get(key, str)
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise UserError(f"{where} expects a list, got {value!r}")
        return [coerce(key, v, elem, source) for v in items]
    raise UserError(f"{where}: unsupported type {typ.__name__}")


def _split_argv(argv):
    """Turn ['--a', '1', '--b=2'] into [('a', '1'), ('b', '2')]; reject anything else."""
    pairs = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise UserError(f"command line: expected --key value, got {tok!r}")
        if "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        else:
            key = tok[2:]
            if i + 1 >= len(argv):
                raise UserError(f"command line: --{key} needs a value")
            value = argv[i + 1]
            i += 2
        pairs.append((key.replace("-", "_"), value))
    return pairs


def validate(cfg: EasyDict) -> EasyDict:
    """Check choices and ranges of an assembled config; raise a UserError naming the key."""
    for key, choices in CHOICES.items():
        if key in cfg and cfg[key] not in choices:
            raise UserError(f"config key '{key}': {cfg[key]!r} is not one of {', '.join(choices)}")
    for key, pred, text in RANGE_CHECKS:
        if key in cfg and not pred(cfg[key]):
            raise UserError(f"config key '{key}' {text}, got {cfg[key]!r}")
    if cfg.lr_end > cfg.lr_max:
        raise UserError(f"config key 'lr_end' ({cfg.lr_end}) must not exceed 'lr_max' ({cfg.lr_max})")
    if cfg.warmup_epochs > cfg.epoch_size:
        raise UserError(f"config key 'warmup_epochs' ({cfg.warmup_epochs}) exceeds 'epoch_size' ({cfg.epoch_size})")
    if cfg.trace_w2 > cfg.trace_w1:
        raise UserError(f"config key 'trace_w2' ({cfg.trace_w2}) must not exceed 'trace_w1' ({cfg.trace_w1})")
    for key in ("data_path", "eval_dataset_path"):
        if cfg[key] is not None and not str(cfg[key]).strip():
            raise UserError(f"config key '{key}' is empty; give a folder or leave it null for synthetic data")
    if cfg.pre_trained and cfg.resume_ckpt:
        raise UserError("config keys 'pre_trained' and 'resume_ckpt' are exclusive: resume already restores weights")
    return cfg


def parse_args(argv: Sequence[str] | None = None, default_path: str = DEFAULT_CONFIG) -> EasyDict:
    """Build the run configuration from the default YAML, an optional recipe and ``--key value`` pairs.

    ``argv`` defaults to ``sys.argv[1:]``. ``--config_path FILE`` selects the recipe. Returns an EasyDict
    that also records ``config_path``. Raises UserError for unknown keys, bad types or bad values.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print_help(default_path)
        sys.exit(0)
    pairs = _split_argv(argv)
    config_path = default_path
    rest = []
    for key, value in pairs:
        if key == "config_path":
            config_path = value
        else:
            rest.append((key, value))

    defaults = load_yaml(default_path)
    schema = _schema(defaults)
    cfg = {k: coerce(k, v, schema[k], default_path) for k, v in defaults.items()}

    if os.path.abspath(config_path) != os.path.abspath(default_path):
        for key, value in load_yaml(config_path).items():
            if key not in schema:
                raise _unknown(key, schema, config_path)
            cfg[key] = coerce(key, value, schema[key], config_path)
    for key, value in rest:
        if key not in schema:
            raise _unknown(key, schema, "command line")
        cfg[key] = coerce(key, value, schema[key], "command line")

    cfg = EasyDict(cfg)
    cfg.config_path = os.path.abspath(config_path)
    return validate(cfg)


def print_help(default_path: str = DEFAULT_CONFIG, header: str | None = None) -> None:
    helps = key_help(default_path)
    defaults = load_yaml(default_path)
    print(header or "usage: train.py [--config_path FILE] [--key value ...]\n\nkeys (default, meaning):")
    for key, value in defaults.items():
        print(f"  --{key:<24} {value!s:<14} {helps.get(key, '')}")


def config_yaml(cfg: EasyDict) -> str:
    """The resolved config as YAML text (every key, no ``config_path``): saved beside the outputs and
    inside every checkpoint."""
    plain = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.items() if k != "config_path"}
    return yaml.safe_dump(plain, sort_keys=False)


def save_config(cfg: EasyDict, path: str) -> None:
    """Write the resolved config as YAML (atomically), so a run can be reproduced from its outputs."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"# resolved configuration (recipe: {cfg.get('config_path', DEFAULT_CONFIG)})\n")
        f.write(config_yaml(cfg))
    os.replace(tmp, path)

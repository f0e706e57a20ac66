"""Checkpoints: atomic writes with metadata, and loading with one-line errors.

A checkpoint of the training cell holds the network (weights and BN statistics), the optimizer state
(momentum buffers, step counter, THOR state when THOR is used), the loss scale, and these extras:
``epoch_num``, ``step_num`` (global step) and ``net_name``/``class_num``. It is written to a hidden
temporary file in the same folder and renamed into place, so a crash never leaves a half-written
checkpoint under the real name.
"""
from __future__ import annotations

import glob
import os
import re
from typing import TYPE_CHECKING

import mindspore as ms

from src.config import config_yaml
from src.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from easydict import EasyDict
    from mindspore import nn


META_KEYS = ("epoch_num", "step_num", "net_name", "class_num", "lr", "damping", "config")
TMP_PREFIX = ".tmp-"


def save(cell: nn.Cell, path: str, epoch: int, step: int, cfg: EasyDict, extra: dict | None = None) -> None:
    """Write ``cell``'s parameters and metadata to ``path`` atomically (temp file + fsync + rename).

    The metadata: ``net_name``, ``class_num``, the resolved config as YAML text (``config``), and for a
    training state ``epoch_num``, ``step_num`` plus ``extra`` (train.py adds the lr and THOR damping of the
    next step). A failed write (disk full, file size limit) removes the temporary file, leaves every
    earlier checkpoint as it was and raises a UserError."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-{os.path.basename(path)}")
    extras = {"net_name": cfg.net_name, "class_num": int(cfg.class_num), "config": config_yaml(cfg)}
    if epoch is not None:  # None: a weights-only file (converted or exported weights), not a training state
        extras.update(epoch_num=int(epoch), step_num=int(step))
        extras.update(extra or {})
    try:
        ms.save_checkpoint(cell, tmp, append_dict=extras, crc_check=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0][:200]
        raise UserError(f"could not write checkpoint {path} ({reason}); earlier checkpoints are kept") from None
    finally:
        # MindSpore writes through its own "<name>.tmp" first and may leave it behind when the write fails
        for leftover in (tmp, os.path.splitext(tmp)[0] + ".tmp"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return path


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete temporary checkpoint files left by a process that was killed while writing (their pid is
    gone). Returns the removed paths."""
    removed = []
    for path in glob.glob(os.path.join(folder, TMP_PREFIX + "*")):
        m = re.match(re.escape(TMP_PREFIX) + r"(\d+)-", os.path.basename(path))
        if not m or _alive(int(m.group(1))):
            continue
        os.remove(path)
        removed.append(path)
    return removed


def _alive(pid):
    """Whether another running process has this pid (called at start-up, before this process writes)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def latest_loadable(folder: str, prefix: str, warn: Callable[[str], None] = print) -> tuple[str | None, dict | None]:
    """``(path, params)`` of the newest periodic checkpoint in ``folder`` that reads back (CRC checked), or
    ``(None, None)``. Unreadable ones (e.g. cut by a crash outside this code) are named in a warning and
    skipped, never deleted."""
    for path in reversed(list_checkpoints(folder, prefix)):
        try:
            params = read(path)
        except UserError as exc:
            warn(f"skipping {exc}")
            continue
        if meta(params)["epoch_num"] is not None:
            return path, params
    return None, None


def read(path: str) -> dict:
    """Load a checkpoint file into a dict of Parameters; a UserError for a missing or unreadable file."""
    if not path or not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint is empty: {path}")
    try:
        return ms.load_checkpoint(path, crc_check=True)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError/TypeError for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable MindSpore checkpoint ({first[:200]})") from None


def meta(params: dict) -> dict:
    """The metadata saved with a checkpoint (missing keys are None)."""
    out = {}
    for key in META_KEYS:
        value = params.get(key)
        if value is not None and hasattr(value, "asnumpy"):
            value = value.asnumpy().item()
        out[key] = value
    return out


def load_into(cell: nn.Cell, params: dict, path: str, skip: Sequence[str] = ()) -> list[str]:
    """Copy ``params`` into ``cell`` after checking that every parameter of ``cell`` is present with the
    same shape; ``skip`` lists name prefixes not to load at all. Raises a UserError naming the first
    mismatch."""
    wanted = {}
    for p in cell.get_parameters():
        if any(p.name.startswith(s) for s in skip):
            continue
        if p.name not in params:
            raise UserError(f"{path}: does not match the network: parameter '{p.name}' is missing "
                            f"(wrong net_name, or a checkpoint of another model?)")
        src = params[p.name]
        if tuple(src.shape) != tuple(p.shape):
            raise UserError(f"{path}: does not match the network: '{p.name}' has shape {tuple(src.shape)} "
                            f"in the checkpoint, {tuple(p.shape)} in the network (check class_num, "
                            f"net_name, base_width)")
        wanted[p.name] = src
    ms.load_param_into_net(cell, wanted, strict_load=False)
    return sorted(wanted)


def step_of(path: str) -> int:
    """Global step encoded in a file name ``<prefix>-<epoch>_<step>.ckpt`` (for ordering), or -1."""
    m = re.search(r"-(\d+)_(\d+)\.ckpt$", path)
    return int(m.group(2)) if m else -1


def list_checkpoints(folder: str, prefix: str) -> list[str]:
    """Periodic checkpoints of ``prefix`` in ``folder``, oldest step first."""
    files = glob.glob(os.path.join(folder, f"{prefix}-*_*.ckpt"))
    return sorted(files, key=step_of)

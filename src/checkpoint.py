"""Checkpoints: atomic writes with metadata, and loading with one-line errors.

A checkpoint of the training cell holds the network (weights and BN statistics), the optimizer state
(momentum buffers, step counter, THOR state when THOR is used), the loss scale, and these extras:
``epoch_num``, ``step_num`` (global step) and ``net_name``/``class_num``. It is written to a hidden
temporary file in the same folder and renamed into place, so a crash never leaves a half-written
checkpoint under the real name.
"""
import glob
import os
import re

import mindspore as ms

from src.errors import UserError

META_KEYS = ("epoch_num", "step_num", "net_name", "class_num")


def save(cell, path, epoch, step, cfg):
    """Write ``cell``'s parameters and metadata to ``path`` atomically (temp file + fsync + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    extras = {"net_name": cfg.net_name, "class_num": int(cfg.class_num)}
    if epoch is not None:  # None: a weights-only file (converted or exported weights), not a training state
        extras.update(epoch_num=int(epoch), step_num=int(step))
    try:
        ms.save_checkpoint(cell, tmp, append_dict=extras, crc_check=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read(path):
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


def meta(params):
    """The metadata saved with a checkpoint (missing keys are None)."""
    out = {}
    for key in META_KEYS:
        value = params.get(key)
        if value is not None and hasattr(value, "asnumpy"):
            value = value.asnumpy().item()
        out[key] = value
    return out


def load_into(cell, params, path, allow_missing=(), skip=()):
    """Copy ``params`` into ``cell`` after checking that every parameter of ``cell`` is present with the
    same shape. ``allow_missing`` lists name prefixes that may be absent (kept at their initial value);
    ``skip`` lists name prefixes not to load at all. Raises a UserError naming the first mismatch."""
    wanted = {}
    for p in cell.get_parameters():
        if any(p.name.startswith(s) for s in skip):
            continue
        if p.name not in params:
            if any(p.name.startswith(s) for s in allow_missing):
                continue
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


def step_of(path):
    """Global step encoded in a file name ``<prefix>-<epoch>_<step>.ckpt`` (for ordering), or -1."""
    m = re.search(r"-(\d+)_(\d+)\.ckpt$", path)
    return int(m.group(2)) if m else -1


def list_checkpoints(folder, prefix):
    """Periodic checkpoints of ``prefix`` in ``folder``, oldest step first."""
    files = glob.glob(os.path.join(folder, f"{prefix}-*_*.ckpt"))
    return sorted(files, key=step_of)

"""Resuming a run: which checkpoint to continue from, and putting the training cell, the schedule position and
the data order back where the run stopped."""
from __future__ import annotations

from typing import TYPE_CHECKING

import mindspore.dataset as ds

from src import checkpoint
from src.errors import UserError
from src.thor.capture import DERIVED_PREFIX

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    from easydict import EasyDict
    from mindspore import nn

    from src.logger import Logger


# rebuilt from the config on resume (their length follows epoch_size, so a run can be extended); the position
# in them is the optimizer's global step, restored with the rest
SCHEDULE_PARAMS = ("learning_rate", "thor.damping")


def find_resume(cfg: EasyDict, out: str, log: Logger) -> tuple[str | None, dict | None]:
    """``(path, params)`` of the checkpoint to resume from, ``(None, None)`` for a fresh start. ``auto``
    picks the newest readable checkpoint in ``out`` (or none); a file path is read here."""
    if not cfg.resume_ckpt:
        return None, None
    if cfg.resume_ckpt != "auto":
        return cfg.resume_ckpt, checkpoint.read(cfg.resume_ckpt)
    path, params = checkpoint.latest_loadable(out, cfg.net_name, warn=log.warning)
    log(f"resume_ckpt auto: {path or 'no checkpoint in ' + out + ', starting from scratch'}")
    return path, params


def schedule_position(lr: np.ndarray, optimizer: nn.Optimizer) -> Callable[[int], dict]:
    """``state_at(step)``: the schedule position saved with a checkpoint, the lr (and THOR damping) of the next
    step."""
    damping = optimizer.damping.asnumpy() if hasattr(optimizer, "damping") else None

    def state_at(step):
        i = min(step, len(lr) - 1)
        return {"lr": float(lr[i]), **({"damping": float(damping[i])} if damping is not None else {})}
    return state_at


def _warn_changed_schedule(info, now, path, log):
    """A recipe changed since the checkpoint is allowed, but said out loud."""
    for key, value in now.items():
        saved = info.get(key)
        if saved is not None and abs(saved - value) > 1e-6 * max(abs(value), 1e-12):
            log.warning(f"{key} at step {info['step_num']} is {value:.6g} with this config, {saved:.6g} in "
                        f"{path}: the schedule changed since the checkpoint")


def restore(cfg: EasyDict, train_cell: nn.Cell, params: dict, path: str, steps_per_epoch: int,
            state_at: Callable[[int], dict], train_ds: ds.Dataset, log: Logger) -> int:
    """Load ``params`` into ``train_cell``, check they fit this run, continue the data order; returns the epoch
    to start from."""
    info = checkpoint.meta(params)
    if info["epoch_num"] is None:
        raise UserError(f"{path}: no epoch recorded; not a training checkpoint of this repository")
    checkpoint.load_into(train_cell, params, path, skip=SCHEDULE_PARAMS + (DERIVED_PREFIX,))
    epoch = int(info["epoch_num"])
    if info["step_num"] != epoch * steps_per_epoch:
        raise UserError(f"{path}: saved at step {info['step_num']} of epoch {epoch}, which does not match "
                        f"{steps_per_epoch} steps per epoch of this dataset and batch_size")
    if epoch >= cfg.epoch_size:
        raise UserError(f"{path}: already at epoch {epoch} of epoch_size {cfg.epoch_size}")
    now = state_at(info["step_num"])
    _warn_changed_schedule(info, now, path, log)
    train_cell.sync_counters()
    # Continue the data order where the run stopped: the shuffle state is restored and the samples already
    # seen are skipped without decoding them (random crops then differ from an uninterrupted run), or with
    # resume_replay_data the pipeline is replayed so that they repeat bit for bit.
    ds.config.set_fast_recovery(not cfg.resume_replay_data)
    train_ds.set_init_step(info["step_num"])
    log(f"resumed from {path} at epoch {epoch} (global step {info['step_num']}, "
        + ", ".join(f"{k} {v:.6g}" for k, v in now.items()) + ")")
    return epoch

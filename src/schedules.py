"""Learning-rate and damping schedules: pure functions returning one float32 value per training step.

Step ``i`` runs from 0 to ``total_steps - 1``. Resuming at global step ``k`` uses ``schedule[k:]``;
the optimizer indexes the full array with its own step counter, which a checkpoint restores.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from easydict import EasyDict


def warmup_lr(lr_init: float, lr_max: float, lr_end: float, warmup_epochs: float, total_epochs: int,
              steps_per_epoch: int, mode: str = "linear") -> np.ndarray:
    """Linear warm-up from ``lr_init`` to ``lr_max`` over ``warmup_epochs``, then a decay to ``lr_end``.

    With W = warmup steps and T = total steps, for step i:
      i < W:        lr_init + (lr_max - lr_init) * i / W
      then, with p = (i - W) / (T - W) in [0, 1):
        linear:   lr_max - (lr_max - lr_end) * p
        cosine:   lr_end + (lr_max - lr_end) * (1 + cos(pi * p)) / 2
        poly:     lr_end + (lr_max - lr_end) * (1 - p) ** 2
        steps:    lr_max * 0.1 ** k, k = number of the points 0.3T, 0.6T, 0.8T that i has reached
        constant: lr_max
    """
    total = int(total_epochs * steps_per_epoch)
    warm = int(warmup_epochs * steps_per_epoch)
    lrs = np.empty(total, dtype=np.float64)
    for i in range(total):
        if i < warm:
            lrs[i] = lr_init + (lr_max - lr_init) * i / warm
            continue
        p = (i - warm) / max(total - warm, 1)
        if mode == "linear":
            lrs[i] = lr_max - (lr_max - lr_end) * p
        elif mode == "cosine":
            lrs[i] = lr_end + (lr_max - lr_end) * (1.0 + math.cos(math.pi * p)) / 2.0
        elif mode == "poly":
            lrs[i] = lr_end + (lr_max - lr_end) * (1.0 - p) ** 2
        elif mode == "steps":
            k = sum(i >= int(f * total) for f in (0.3, 0.6, 0.8))
            lrs[i] = lr_max * 0.1 ** k
        elif mode == "constant":
            lrs[i] = lr_max
        else:
            raise ValueError(f"unknown lr mode {mode!r}")
    return lrs.astype(np.float32)


def thor_lr(lr_init: float, lr_decay: float, lr_end_epoch: float, decay_epochs: float, total_epochs: int,
            steps_per_epoch: int) -> np.ndarray:
    """The model zoo's THOR learning rate, per step i with e = (i + 1) / steps_per_epoch:

      lr_i = lr_init * (1 - e / lr_end_epoch) ** lr_decay,
      halved when e >= decay_epochs, and halved again when e >= decay_epochs + 1.
    """
    total = int(total_epochs * steps_per_epoch)
    lrs = np.empty(total, dtype=np.float64)
    for i in range(total):
        e = (i + 1) / steps_per_epoch
        lr = lr_init * max(1.0 - e / lr_end_epoch, 0.0) ** lr_decay
        if e >= decay_epochs:
            lr *= 0.5
        if e >= decay_epochs + 1:
            lr *= 0.5
        lrs[i] = lr
    return lrs.astype(np.float32)


def thor_damping(damping_init: float, damping_decay: float, total_epochs: int, steps_per_epoch: float,
                 horizon_epochs: float | None = None, floor: float = 0.0) -> np.ndarray:
    """THOR damping per step i with e = (i + 1) / steps_per_epoch:

      damping_i = max(damping_init * damping_decay ** (min(e, horizon_epochs) / 10), floor)

    ``horizon_epochs`` (the zoo's hard-coded 70) caps e: past it the damping stays constant. ``floor``
    (config ``damping_min``) keeps the damped factors invertible in float32 whatever the decay.
    """
    total = int(total_epochs * steps_per_epoch)
    e = (np.arange(total, dtype=np.float64) + 1.0) / steps_per_epoch
    if horizon_epochs is not None:
        e = np.minimum(e, horizon_epochs)
    return np.maximum(damping_init * damping_decay ** (e / 10.0), floor).astype(np.float32)


def lr_batch_scaling(lr_batch_size: int, global_batch: int, scaling: str) -> tuple[float, str | None]:
    """``(factor, note)`` for a run whose global batch may differ from the one its recipe's lr was tuned for.

    With ``scaling`` "linear" and a recorded ``lr_batch_size``, every lr value is multiplied by
    global_batch / lr_batch_size (Goyal et al. 2017) and ``note`` says so; otherwise the factor is 1 and ``note``
    is a warning when the batches differ (None when they agree or nothing is recorded)."""
    if lr_batch_size <= 0 or global_batch == lr_batch_size:
        return 1.0, None
    if scaling == "linear":
        factor = global_batch / lr_batch_size
        return factor, (f"lr_scaling linear: every lr value x {factor:.6g} (global batch {global_batch}, "
                        f"the recipe's lr was tuned for {lr_batch_size})")
    return 1.0, (f"the recipe's lr was tuned for a global batch of {lr_batch_size}, this run's is {global_batch}; "
                 f"the lr is used as given (--lr_scaling linear scales it by {global_batch}/{lr_batch_size}, "
                 f"or set lr_max / lr_init for this batch)")


def lr_from_config(cfg: EasyDict, steps_per_epoch: int, factor: float = 1.0) -> np.ndarray:
    """Per-step learning rates for ``cfg.epoch_size`` epochs of ``steps_per_epoch`` steps, times ``factor``
    (``lr_batch_scaling``; every schedule is linear in its lr values)."""
    if cfg.lr_decay_mode == "thor":
        lr = thor_lr(cfg.lr_init, cfg.lr_decay, cfg.lr_end_epoch, cfg.decay_epochs, cfg.epoch_size, steps_per_epoch)
    else:
        lr = warmup_lr(cfg.lr_init, cfg.lr_max, cfg.lr_end, cfg.warmup_epochs, cfg.epoch_size, steps_per_epoch,
                       cfg.lr_decay_mode)
    return (lr * np.float32(factor)).astype(np.float32) if factor != 1.0 else lr


def thor_update_steps(total_steps: int, steps_per_epoch: int, frequency: int, growth: float = 1.0,
                      growth_epochs: int = 0, max_interval: int = 0) -> np.ndarray:
    """Boolean per step: True where THOR recomputes its statistics and inverses.

    Step 0 is always an update. After an update at step i (in epoch e = i // steps_per_epoch), the next one
    comes ``interval(e)`` steps later, where

      interval(e) = frequency * growth ** (e // growth_epochs)     (growth_epochs > 0, growth > 1)
      interval(e) = frequency                                       otherwise

    capped at ``max_interval`` when it is > 0. Any frequency >= 1 and any steps_per_epoch work: the
    cadence runs across epoch boundaries.
    """
    flags = np.zeros(int(total_steps), dtype=bool)
    i = 0
    while i < total_steps:
        flags[i] = True
        interval = float(frequency)
        if growth_epochs > 0 and growth > 1.0:
            interval *= growth ** ((i // steps_per_epoch) // growth_epochs)
        if max_interval > 0:
            interval = min(interval, max_interval)
        i += max(int(round(interval)), 1)
    return flags

"""Loss, optimizer and training-cell factories shared by train.py and the benchmarks.

Loss scaling changes nothing but the float16 range: the loss is multiplied by ``loss_scale`` before
back-propagation and the gradients are divided by it before the optimizer (src/train_step.py), so the
optimizer itself is built with ``loss_scale=1``. A step whose gradients are not finite is skipped (and,
in ``dynamic`` mode, the scale is halved).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import mindspore as ms
from mindspore import nn, ops

from src.schedules import thor_damping, thor_update_steps
from src.thor.capture import attach
from src.thor.optimizer import Thor
from src.thor.trainer import ThorTrainer
from src.train_step import TrainStep

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    from easydict import EasyDict


class ZooSmoothCrossEntropy(nn.Cell):
    """Mean cross entropy against the model zoo's smoothed targets (its CrossEntropySmooth): the true class
    gets 1 - eps, every other class eps / (C - 1). (``nn.CrossEntropyLoss(label_smoothing=eps)`` gives the
    true class 1 - eps + eps / C and the others eps / C.)"""

    def __init__(self, eps, num_classes):
        super().__init__()
        self.on_value = 1.0 - eps
        self.off_value = eps / (num_classes - 1)
        self.num_classes = num_classes

    def construct(self, logits, label):
        target = ops.one_hot(label, self.num_classes, ops.scalar_to_tensor(self.on_value, logits.dtype),
                             ops.scalar_to_tensor(self.off_value, logits.dtype))
        return -(target * ops.log_softmax(logits, -1)).sum(-1).mean()


def create_loss(cfg: EasyDict) -> nn.Cell:
    """Cross entropy, label-smoothed by ``label_smooth_factor`` when ``use_label_smooth``, with the targets of
    ``label_smooth_mode`` (uniform: torch's and nn.CrossEntropyLoss's; zoo: the model zoo's)."""
    smooth = cfg.label_smooth_factor if cfg.use_label_smooth else 0.0
    if smooth > 0.0 and cfg.label_smooth_mode == "zoo":
        return ZooSmoothCrossEntropy(smooth, cfg.class_num)
    return nn.CrossEntropyLoss(label_smoothing=smooth, reduction="mean")


def is_no_decay(name: str) -> bool:
    """BN gamma/beta and biases take no weight decay (unless ``decay_bn_bias``)."""
    return name.endswith(("gamma", "beta", "bias"))


def param_groups(network: nn.Cell, weight_decay: float, decay_bn_bias: bool = False) -> list[dict]:
    params = network.trainable_params()
    if decay_bn_bias:
        return [{"params": params, "weight_decay": weight_decay}, {"order_params": params}]
    decay = [p for p in params if not is_no_decay(p.name)]
    no_decay = [p for p in params if is_no_decay(p.name)]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {"order_params": params}]


def create_optimizer(cfg: EasyDict, network: nn.Cell, lr: np.ndarray) -> nn.Optimizer:
    """Momentum or THOR over ``network``'s trainable parameters with the per-step ``lr`` array.

    For THOR this turns the network's Conv2d/Dense layers into capturing layers (src/thor/capture.py;
    parameter names unchanged) and builds the damping schedule for the same number of steps as ``lr``.
    """
    groups = param_groups(network, cfg.weight_decay, cfg.decay_bn_bias)
    lr_tensor = ms.Tensor(lr, ms.float32)
    if cfg.optimizer == "Momentum":
        return nn.Momentum(groups, learning_rate=lr_tensor, momentum=cfg.momentum, loss_scale=1.0)
    steps_per_epoch = len(lr) / cfg.epoch_size
    damping = thor_damping(cfg.damping_init, cfg.damping_decay, cfg.epoch_size, steps_per_epoch,
                           cfg.damping_total_epochs, cfg.damping_min)
    layers = attach(network, cfg.thor_skip_layers, cfg.split_dim)
    return Thor(groups, lr_tensor, damping, cfg.momentum, layers, mode=cfg.thor_mode,
                factor_decay=cfg.factor_decay, kl_clip=cfg.kl_clip, trace_w1=cfg.trace_w1, trace_w2=cfg.trace_w2,
                convention=cfg.thor_convention, right_product=cfg.thor_right_product)


def thor_update_flags(cfg: EasyDict, steps_per_epoch: int) -> np.ndarray:
    """Per-step booleans: where THOR refreshes its statistics (fixed interval, or growing in trace mode)."""
    total = cfg.epoch_size * steps_per_epoch
    if cfg.thor_mode == "trace":
        return thor_update_steps(total, steps_per_epoch, cfg.frequency, cfg.frequency_growth,
                                 cfg.frequency_growth_epochs, cfg.frequency_max)
    return thor_update_steps(total, steps_per_epoch, cfg.frequency)


class NetWithLoss(nn.Cell):
    """network + loss; logits are cast to float32 so the loss is computed in float32 under AMP."""

    def __init__(self, network, loss_fn):
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss_fn = loss_fn

    def construct(self, image, label):
        logits = self.network(image)
        return self.loss_fn(ops.cast(logits, ms.float32), label)


def apply_amp(network: nn.Cell, amp_level: str) -> nn.Cell:
    """Cast the network for mixed precision (O1/O2/O3); O2 keeps BatchNorm in float32."""
    if amp_level != "O0":
        network = ms.amp.auto_mixed_precision(network, amp_level)
    return network


def create_train_cell(cfg: EasyDict, net_with_loss: nn.Cell, optimizer: nn.Optimizer, steps_per_epoch: int,
                      warn: Callable[[str], None] = print) -> nn.Cell:
    """The training cell (src/train_step.py; for THOR src/thor/trainer.py, which reports through ``warn``).
    Outputs ``(loss, overflow, loss_scale)``."""
    dynamic = cfg.loss_scale_mode == "dynamic"
    if isinstance(optimizer, Thor):
        cell = ThorTrainer(net_with_loss, optimizer, thor_update_flags(cfg, steps_per_epoch),
                           loss_scale=cfg.loss_scale, dynamic=dynamic, window=cfg.loss_scale_window, warn=warn,
                           update_pass=cfg.thor_update_pass)
        cell.set_train()
        return cell
    cell = TrainStep(net_with_loss, optimizer, loss_scale=cfg.loss_scale, dynamic=dynamic,
                     window=cfg.loss_scale_window)
    cell.set_train()
    return cell

"""The THOR training cell: graphs over one model, picked per step in Python.

``plain`` step, one graph: forward, backward, preconditioning with the stored inverses, momentum step; it holds
no statistics work, so a non-update step costs about what a Momentum step costs.
``update`` step, two graphs run one after the other (compiled with thor_capture / thor_update True): first the
forward with A capture and the backward with G capture, which returns the gradients; then the factor and
inverse refresh and the preconditioned momentum step (TrainStep.gradients and TrainStep.apply, the two halves
of one TrainStep, so the arithmetic is the same as one graph's). Split, the two halves do not hold their
kernels' memory at the same time: the update step's peak RSS is about 200 MiB lower on full-width ResNet-50
(python -m benchmarks.thor_step, docs/performance.md). The gradients pass between them as a ``mutable`` tuple
(a tuple of tensors given to a graph is otherwise a constant, and the graph would be compiled at every call).

The step counter is the optimizer's ``global_step`` (restored from checkpoints), so resuming continues the
cadence exactly. ``mindspore.Model`` drives this cell like any training cell.
"""
import numpy as np
from mindspore import mutable, nn

from src.thor.capture import set_capture
from src.train_step import TrainStep


class _UpdateGradients(nn.Cell):
    """The update step's first graph: ``step.gradients`` (forward and backward with statistics capture)."""

    def __init__(self, step):
        super().__init__(auto_prefix=False)
        self.step = step

    def construct(self, image, label):
        return self.step.gradients(image, label)


class _UpdateApply(nn.Cell):
    """The update step's second graph: ``step.apply`` (refresh, preconditioned step, loss-scale update)."""

    def __init__(self, step):
        super().__init__(auto_prefix=False)
        self.step = step

    def construct(self, loss, grads, finite, scale):
        return self.step.apply(loss, grads, finite, scale)


class ThorTrainer(nn.Cell):
    """Outputs ``(loss, overflow, loss_scale)`` like TrainStep."""

    def __init__(self, net_with_loss, optimizer, update_flags, loss_scale=1.0, dynamic=False, window=2000, warn=print):
        super().__init__(auto_prefix=False)
        self.plain_step = TrainStep(net_with_loss, optimizer, loss_scale, dynamic, window)
        self.update_step = TrainStep(net_with_loss, optimizer, loss_scale, dynamic, window,
                                     share_scale_with=self.plain_step)
        self.update_gradients = _UpdateGradients(self.update_step)
        self.update_apply = _UpdateApply(self.update_step)
        optimizer.loss_scale_ref = self.plain_step.loss_scale
        self.optimizer = optimizer
        self.damping_schedule = optimizer.damping.asnumpy()  # per step, fixed for the run (for log lines)
        self.update_flags = np.asarray(update_flags, bool)
        self.last_update = None  # (global_step, layers refreshed) of the latest update step
        self.nonfinite_seen = 0  # thor_nonfinite already reported (restored from a checkpoint on resume)
        self.warn = warn  # where a refresh that fell back to the last good inverse is reported

    def sync_counters(self):
        """Call after loading a checkpoint: non-finite events before it are not reported again."""
        self.nonfinite_seen = int(self.optimizer.thor_nonfinite.asnumpy())

    def global_step(self):
        return int(self.optimizer.global_step.asnumpy().reshape(-1)[0])

    def is_update(self, step):
        return bool(self.update_flags[min(step, len(self.update_flags) - 1)]) if len(self.update_flags) else False

    def describe(self):
        opt = self.optimizer
        mode = "trace" if opt.trace_mode else "fixed"
        return (f"THOR: {len(opt.thor_layers)} preconditioned layers, {mode} mode, {opt.convention} convention, "
                f"{int(self.update_flags.sum())} update steps in {len(self.update_flags)}, "
                f"state {opt.state_bytes() / 2**20:.1f} MiB")

    def log_fields(self):
        """The damping of the next step, and ``refreshed/layers@step`` of the latest update step."""
        schedule = self.damping_schedule
        info = {"damping": float(schedule[min(self.global_step(), len(schedule) - 1)])}
        if self.last_update is not None:
            info["thor_refreshed"] = f"{self.last_update[1]}/{len(self.optimizer.thor_layers)}@{self.last_update[0]}"
        return info

    def _set(self, flag):
        set_capture(self.optimizer.thor_layers, flag)
        self.optimizer.thor_update = flag

    def __call__(self, image, label):
        step = self.global_step()
        if not self.is_update(step):
            return self.plain_step(image, label)
        self._set(True)
        try:
            loss, grads, finite, scale = self.update_gradients(image, label)
            # mutable: a tuple of tensors passed to a graph is otherwise taken as a constant (recompiled per call)
            out = self.update_apply(loss, mutable(grads), finite, scale)
        finally:
            self._set(False)
        self.last_update = (step, int(self.optimizer.thor_refreshed.asnumpy()))
        nonfinite = int(self.optimizer.thor_nonfinite.asnumpy())
        if nonfinite > self.nonfinite_seen:
            self.warn(f"THOR step {step}: {nonfinite - self.nonfinite_seen} layer(s) had non-finite factors or "
                      f"inverses and kept their last good ones ({nonfinite} so far)")
            self.nonfinite_seen = nonfinite
        return out

    def construct(self, image, label):  # pragma: no cover - dispatch happens in __call__
        return self.plain_step(image, label)

"""The THOR training cell: graphs over one model, picked per step in Python.

``plain`` step, one graph: forward, backward, preconditioning with the stored inverses, momentum step; it holds
no statistics work, so a non-update step costs about what a Momentum step costs.
``update`` step, three graphs run one after the other: the forward with A capture and the backward with G
capture, which returns the gradients (TrainStep.gradients, compiled with thor_capture True); when the gradients
are finite, the factor and inverse refresh (``Thor.refresh``); then the preconditioned momentum step and the
loss-scale update (TrainStep.apply). Gradients and step are the two halves of one TrainStep, so the arithmetic is
that of one graph. Split, the graphs do not hold their kernels' memory at once (on CPU a compiled graph keeps
its kernels' memory): the update step's graphs add about 230 MiB less to the peak RSS than with the refresh in
the step's graph, and they compile in 33 s instead of 38-41 (python -m benchmarks.thor_step, full-width
ResNet-50 at 32x32; docs/performance.md). The plain step stays one graph: split the same way, it ran 1.52x
Momentum's step against 1.42-1.47x. The gradients pass between graphs as a ``mutable`` tuple (a tuple of tensors
given to a graph is otherwise a constant, and the graph would be compiled at every call).

The step counter is the optimizer's ``global_step`` (restored from checkpoints), so resuming continues the
cadence exactly. ``mindspore.Model`` drives this cell like any training cell.
"""
import numpy as np
from mindspore import mutable, nn

from src.thor.capture import set_capture
from src.train_step import TrainStep


class _Gradients(nn.Cell):
    """A graph of ``step.gradients``: forward and backward (with statistics capture, as compiled here)."""

    def __init__(self, step):
        super().__init__(auto_prefix=False)
        self.step = step

    def construct(self, image, label):
        return self.step.gradients(image, label)


class _Refresh(nn.Cell):
    """A graph of ``optimizer.refresh()``: factors and inverses from the captured statistics."""

    def __init__(self, optimizer):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer

    def construct(self):
        return self.optimizer.refresh()


class _Apply(nn.Cell):
    """A graph of ``step.apply``: the preconditioned step and the loss-scale update."""

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
        # the update step's graphs: cells of their own over the same TrainStep, so each compiles separately
        self.capture_gradients = _Gradients(self.plain_step)
        self.refresh_factors = _Refresh(optimizer)
        self.apply_step = _Apply(self.plain_step)
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

    def __call__(self, image, label):
        step = self.global_step()
        if not self.is_update(step):
            return self.plain_step(image, label)
        set_capture(self.optimizer.thor_layers, True)  # read when the capture graph is compiled
        try:
            loss, grads, finite, scale = self.capture_gradients(image, label)
        finally:
            set_capture(self.optimizer.thor_layers, False)
        if bool(finite.asnumpy()):  # an overflowed step is skipped: it refreshes nothing, the next step retries
            self.refresh_factors()
        out = self.apply_step(loss, mutable(grads), finite, scale)
        self.last_update = (step, int(self.optimizer.thor_refreshed.asnumpy()))
        nonfinite = int(self.optimizer.thor_nonfinite.asnumpy())
        if nonfinite > self.nonfinite_seen:
            self.warn(f"THOR step {step}: {nonfinite - self.nonfinite_seen} layer(s) had non-finite factors or "
                      f"inverses and kept their last good ones ({nonfinite} so far)")
            self.nonfinite_seen = nonfinite
        return out

    def construct(self, image, label):  # pragma: no cover - dispatch happens in __call__
        return self.plain_step(image, label)

"""The THOR training cell: graphs over one model, picked per step in Python.

``plain`` step, one graph: forward, backward, preconditioning with the stored inverses, momentum step; it holds
no statistics work, so a non-update step costs about what a Momentum step costs.

``update`` step, in one of three layouts (config key ``thor_update_pass``), each a few passes run one after the
other. The arithmetic of the step is the same in all (tests/test_thor.py checks every parameter: bit for bit
between ``statistics`` and ``step``, within float32 rounding for ``eager``, whose op-by-op kernels round some sums
differently);
what differs is what the compiled graphs hold (on CPU a compiled graph keeps its kernels' memory, oneDNN
scratchpads included, and its IR, for as long as it lives) and what the update step costs:

- ``statistics`` (the default): a statistics pass, the forward with A capture and the backward *to the image*
  with G capture (no weight gradient is formed, so the convolutions' backward-weights kernels, which hold the
  largest oneDNN scratchpads, are not compiled a second time); when the statistics are finite, the factor and
  inverse refresh (``Thor.refresh``); then the plain step's own graph. The pass leaves the batch norm moving
  statistics as they are, so the update step moves them once, as a plain step does. It holds less memory (one fewer
  compiled backward) and its update step costs a forward/backward-to-the-image more than ``step``'s
  (python -m benchmarks.thor_step --update_pass ..., docs/performance.md).
- ``eager``: the same statistics pass run op by op (MindSpore's PyNative mode, switched on for the pass and back
  to graph mode after it), then the refresh and the plain step's graphs. No graph is compiled for the pass, so the
  process keeps neither its IR nor a second set of forward and input-gradient convolution kernels, and compiles
  faster; the pass itself runs several times slower than compiled. For long update intervals (the ImageNet
  recipe's 834 steps), where the update step's cost is spread over the interval.
- ``step``: the forward with A capture and the backward with G capture return the gradients
  (TrainStep.gradients, compiled with thor_capture True); when the gradients are finite, the refresh; then the
  preconditioned momentum step and the loss-scale update (TrainStep.apply). Gradients and step are the two
  halves of one TrainStep. The fastest update step; it holds a second copy of every backward kernel. The
  gradients pass between graphs as a ``mutable`` tuple (a tuple of tensors given to a graph is otherwise a
  constant, and the graph would be compiled at every call).

The step counter is the optimizer's ``global_step`` (restored from checkpoints), so resuming continues the
cadence exactly. ``mindspore.Model`` drives this cell like any training cell.
"""
import contextlib

import mindspore as ms
import numpy as np
from mindspore import ParameterTuple, mutable, nn, ops

from src.errors import UserError
from src.thor.capture import set_capture, sync_shapes
from src.train_step import TrainStep, all_finite, compile_ahead, compile_ahead_once

UPDATE_PASSES = ("statistics", "eager", "step")


class _Gradients(nn.Cell):
    """A graph of ``step.gradients``: forward and backward (with statistics capture, as compiled here)."""

    def __init__(self, step):
        super().__init__(auto_prefix=False)
        self.step = step

    def construct(self, image, label):
        return self.step.gradients(image, label)


# the G statistics are read with HyperMap, not with ``out = out + (x,)`` in a loop (see the note in optimizer.py)
_after = ops.MultitypeFuncGraph("thor_after")


@_after.register("Tensor", "Tensor")
def _after_tensor(done, x):
    """``x``, read after ``done``."""
    return ops.depend(x, done)


class _Statistics(nn.Cell):
    """A graph of the statistics pass: the loss-scaled backward to the image, with statistics capture (as compiled
    here); no weight gradient and no step. Returns True when every layer's G statistics are finite (a loss-scale
    overflow shows there first: they hold squared output gradients).

    The forward runs in training mode (batch statistics, as the step's forward) but must not move the batch norm
    moving statistics: the plain step that follows moves them once. The pass is compiled with each batch norm's
    training op swapped for one with momentum 0 (``hold_moving_statistics``), which leaves them exactly as they
    are (moving * 1 + batch * 0). Saving and restoring them in the graph instead made the pass's kernel graph 4189
    nodes instead of 3585 for ResNet-50 (python -m benchmarks.thor_graphs), and a compiled graph keeps memory per
    node (python -m benchmarks.graph_memory). tests/test_thor.py checks the whole run against the ``step`` pass,
    bit for bit."""

    def __init__(self, step, layers):
        super().__init__(auto_prefix=False)
        self.network = step.network
        self.loss_scale = step.loss_scale
        self.grad = ops.GradOperation(sens_param=True)
        self.hyper_map = ops.HyperMap()
        self.g_stats = ParameterTuple([cell.thor_g for cell in layers])
        swaps, moving = [], set()
        for _, cell in self.network.cells_and_names():
            if isinstance(cell, (nn.BatchNorm1d, nn.BatchNorm2d)):
                held = ops.BatchNorm(is_training=True, epsilon=cell.eps, momentum=0.0, data_format=cell.format)
                swaps.append((cell, cell.bn_train, held))
                moving.update((id(cell.moving_mean), id(cell.moving_variance)))
        for p in self.network.get_parameters():
            if not p.requires_grad and not p.name.startswith("thor.") and id(p) not in moving:
                raise UserError(f"THOR's statistics pass would change '{p.name}', which is neither trained nor a "
                                 f"batch norm moving statistic; use thor_update_pass: step")
        object.__setattr__(self, "_swaps", tuple(swaps))  # cells of the network: not sub-cells of this one

    def hold_moving_statistics(self, flag):
        """Swap the batch norms' training ops (read when this graph is compiled: call around its first call)."""
        for cell, moving, held in self._swaps:
            cell.bn_train = held if flag else moving

    def construct(self, image, label):
        done = self.grad(self.network)(image, label, self.loss_scale * 1.0)
        return all_finite(self.hyper_map, self.hyper_map(ops.partial(_after, done), self.g_stats))


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
        self.compiled_for = set()  # inputs compiled ahead (train_step.compile_ahead_once)

    def construct(self, loss, grads, finite, scale):
        return self.step.apply(loss, grads, finite, scale)


@contextlib.contextmanager
def _op_by_op(flag):
    """With ``flag``, MindSpore's PyNative mode inside (cells called there run op by op, compiling nothing), and
    the mode of before restored after, also when the body raises."""
    if not flag:
        yield
        return
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=mode)


class ThorTrainer(nn.Cell):
    """Outputs ``(loss, overflow, loss_scale)`` like TrainStep."""

    def __init__(self, net_with_loss, optimizer, update_flags, loss_scale=1.0, dynamic=False, window=2000, warn=print,
                 update_pass="statistics"):
        super().__init__(auto_prefix=False)
        if update_pass not in UPDATE_PASSES:
            raise ValueError(f"THOR update_pass must be one of {UPDATE_PASSES}, got {update_pass!r}")
        self.update_pass = update_pass
        self.plain_step = TrainStep(net_with_loss, optimizer, loss_scale, dynamic, window)
        # the update step's graphs: cells of their own over the same TrainStep, so each compiles separately
        if update_pass in ("statistics", "eager"):
            self.statistics = _Statistics(self.plain_step, optimizer.thor_layers)
        else:
            self.capture_gradients = _Gradients(self.plain_step)
            self.apply_step = _Apply(self.plain_step)
        self.refresh_factors = _Refresh(optimizer)
        optimizer.loss_scale_ref = self.plain_step.loss_scale
        self.optimizer = optimizer
        self.damping_schedule = optimizer.damping.asnumpy()  # per step, fixed for the run (for log lines)
        self.update_flags = np.asarray(update_flags, bool)
        self.last_update = None  # (global_step, layers refreshed) of the latest update step
        self.nonfinite_seen = 0  # thor_nonfinite already reported (restored from a checkpoint on resume)
        self.warn = warn  # where a refresh that fell back to the last good inverse is reported
        self.compiled_ahead = False

    def compile_graphs(self, image, label):
        """Compile the run's graphs for these inputs' shapes before any of them runs, each followed by giving the
        heap it freed back (``train_step.compile_ahead``): the update step's capture graph, the plain step and the
        refresh (the ``step`` layout's preconditioned step compiles at its first update, on the gradients it is
        given; the ``eager`` layout's statistics pass is not compiled). The first call does this by itself. Compiled
        one after the other and run after, THOR's graphs peak lower than when each is compiled at its first call,
        between the others' runs; and in this order lower than with the refresh second: its compile then fits in the
        heap the other two left free (docs/performance.md)."""
        self.compiled_ahead = True
        if self.update_pass != "eager":
            with self._capturing():
                compile_ahead(self.statistics if self.update_pass == "statistics" else self.capture_gradients, image,
                              label)
        compile_ahead(self.plain_step, image, label)  # recorded: its first call does not compile again
        compile_ahead(self.refresh_factors)

    @contextlib.contextmanager
    def _capturing(self):
        """Statistics capture on (and, for the statistics pass, the batch norms' moving statistics held): what the
        capture graph is compiled with, or the ``eager`` pass runs with."""
        hold = self.update_pass != "step"
        set_capture(self.optimizer.thor_layers, True)
        if hold:
            self.statistics.hold_moving_statistics(True)
        try:
            yield
        finally:
            set_capture(self.optimizer.thor_layers, False)
            if hold:
                self.statistics.hold_moving_statistics(False)

    def sync_counters(self):
        """Call after loading a checkpoint: non-finite events before it are not reported again, and each layer's T
        and statistics scales are written again from the capture graph already compiled (or the op-by-op pass
        already run), if any (the checkpoint's may come from other image sizes)."""
        self.nonfinite_seen = int(self.optimizer.thor_nonfinite.asnumpy())
        sync_shapes(self.optimizer.thor_layers, force=True)

    def global_step(self):
        return int(self.optimizer.global_step.asnumpy().reshape(-1)[0])

    def is_update(self, step):
        return bool(self.update_flags[min(step, len(self.update_flags) - 1)]) if len(self.update_flags) else False

    def describe(self):
        opt = self.optimizer
        mode = "trace" if opt.trace_mode else "fixed"
        return (f"THOR: {len(opt.thor_layers)} preconditioned layers, {mode} mode, {opt.convention} convention, "
                f"{int(self.update_flags.sum())} update steps in {len(self.update_flags)} "
                f"({self.update_pass} pass), "
                f"state {opt.state_bytes() / 2**20:.1f} MiB")

    def log_fields(self):
        """The damping of the next step, and ``refreshed/layers@step`` of the latest update step."""
        schedule = self.damping_schedule
        info = {"damping": float(schedule[min(self.global_step(), len(schedule) - 1)])}
        if self.last_update is not None:
            info["thor_refreshed"] = f"{self.last_update[1]}/{len(self.optimizer.thor_layers)}@{self.last_update[0]}"
        return info

    def __call__(self, image, label):
        if not self.compiled_ahead:
            self.compile_graphs(image, label)
        step = self.global_step()
        if not self.is_update(step):
            return self.plain_step(image, label)
        out = self._update_in_step(image, label) if self.update_pass == "step" else \
            self._update_by_statistics(image, label)
        self.last_update = (step, int(self.optimizer.thor_refreshed.asnumpy()))
        nonfinite = int(self.optimizer.thor_nonfinite.asnumpy())
        if nonfinite > self.nonfinite_seen:
            self.warn(f"THOR step {step}: {nonfinite - self.nonfinite_seen} layer(s) had non-finite factors or "
                      f"inverses and kept their last good ones ({nonfinite} so far)")
            self.nonfinite_seen = nonfinite
        return out

    def _update_by_statistics(self, image, label):
        """The ``statistics`` and ``eager`` layouts: the statistics pass (op by op for ``eager``), the refresh, the
        plain step's graph."""
        with self._capturing(), _op_by_op(self.update_pass == "eager"):
            finite = self.statistics(image, label)  # compiled now if its inputs have new shapes (not op by op)
        self._refresh_if(finite)
        return self.plain_step(image, label)

    def _update_in_step(self, image, label):
        """The ``step`` layout: the gradients with capture, the refresh, the preconditioned step on them."""
        with self._capturing():  # read if the capture graph is compiled now (inputs of new shapes)
            loss, grads, finite, scale = self.capture_gradients(image, label)
        self._refresh_if(finite)
        grads = mutable(grads)
        compile_ahead_once(self.apply_step, loss, grads, finite, scale)
        return self.apply_step(loss, grads, finite, scale)

    def _refresh_if(self, finite):
        """The factor and inverse refresh, when the statistics are finite, with each layer's T as the capture graph
        was compiled for. An overflow refreshes nothing; a step whose gradients overflow is skipped, and the next one
        retries the update (the step counter does not advance)."""
        sync_shapes(self.optimizer.thor_layers)
        if bool(finite.asnumpy()):
            self.refresh_factors()

    def construct(self, image, label):  # pragma: no cover - dispatch happens in __call__
        return self.plain_step(image, label)

"""One training step with loss scaling, written from portable ops so it runs on CPU, GPU and Ascend.

MindSpore's ``TrainOneStepWithLossScaleCell`` selects Ascend-only overflow ops (NPUGetFloatStatusV2) on
CPU, so the step is ours:

    loss = L(x, y)                        (mean over the batch)
    grads = d(S * loss) / dw               S = loss scale, applied through the backward "sens"
    grads = all_reduce_mean(grads)         data parallel only
    grads = grads / S                      loss scaling changes nothing but the float16 range
    finite = all(isfinite(sum(g) for g in grads))   one reduction per gradient (see _grad_sum)
    if finite: optimizer(grads)            a non-finite step is skipped and reported as overflow
    dynamic mode, after the optimizer: S /= 2 on overflow (not below 1); S *= 2 after ``window`` finite
    steps in a row

Outputs ``(loss, overflow, S)``.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.context import ParallelMode
from mindspore.parallel._utils import _get_device_num, _get_gradients_mean, _get_parallel_mode

from src.host import release_free_heap

_unscale = ops.MultitypeFuncGraph("_unscale")
_grad_sum = ops.MultitypeFuncGraph("_grad_sum")


@_unscale.register("Tensor", "Tensor")
def _unscale_tensor(scale, grad):
    return grad * ops.cast(ops.reciprocal(scale), grad.dtype)


@_grad_sum.register("Tensor")
def _grad_sum_tensor(grad):
    """The sum of a gradient's elements: finite exactly when every element is, unless finite elements add up
    past float32's range (3.4e38), which is reported as an overflow too.

    Computed as ``ones(1, rows) @ grad.reshape(rows, -1)``, a matrix-vector product that runs at memory
    speed: on CPU, ``isfinite(grad).all()`` and ``ReduceSum`` use slow reduction kernels (140 and 139 ms
    over ResNet-50's 161 gradients here, against 17 ms for this; python -m benchmarks.step_overhead)."""
    return sum_rows(ops.cast(grad, ms.float32)).sum()


def all_finite(hyper_map: ops.HyperMap, tensors: tuple) -> Tensor:
    """True when every element of every tensor is finite: one ``_grad_sum`` per tensor, one isfinite over them."""
    return ops.isfinite(ops.stack(hyper_map(_grad_sum, tensors))).all()


def _input_key(cell: nn.Cell, args: tuple) -> tuple:
    """What a compiled graph of ``cell`` is specific to: its inputs' shapes (tensors, or tuples of them) and the
    cell's train/eval mode."""
    def key(a):
        if isinstance(a, (tuple, list)):
            return tuple(key(x) for x in a)
        return tuple(a.shape) if hasattr(a, "shape") else a
    return tuple(key(a) for a in args), cell.training


def compile_ahead(cell: nn.Cell, *args) -> None:
    """In graph mode, compile ``cell`` for ``args`` (its next call with inputs of these shapes runs it without
    compiling), then give back the heap pages the compile freed (``host.release_free_heap``): the graph's first
    run then starts from less resident memory, and the process peaks lower (docs/performance.md). Nothing in
    PyNative mode, where a call runs op by op. A cell that keeps ``compiled_for`` (a set) has these inputs
    recorded there (``compile_ahead_once``)."""
    if ms.get_context("mode") == ms.GRAPH_MODE:
        cell.compile(*args)
        release_free_heap()
    compiled = getattr(cell, "compiled_for", None)
    if compiled is not None:
        compiled.add(_input_key(cell, args))


def compile_ahead_once(cell: nn.Cell, *args) -> None:
    """``compile_ahead`` unless ``cell`` was compiled ahead for inputs of these shapes, in this mode, already (the
    cell keeps ``compiled_for``, a set): for a cell's ``__call__``, so that its first call and a call with inputs
    of a new shape (a smaller last batch) compile, trim, then run."""
    if _input_key(cell, args) not in cell.compiled_for:
        compile_ahead(cell, *args)


def sum_rows(x: Tensor) -> Tensor:
    """Sum over the first axis of ``x`` (N, ...), flattened to (1, rest), as ``ones(1, N) @ x``: a matrix-vector
    product at memory speed (the CPU ReduceSum kernel is several times slower)."""
    n = x.shape[0]
    return ops.matmul(ops.ones((1, n), x.dtype), ops.reshape(x, (n, -1)))


class TrainStep(nn.Cell):
    """Forward, scaled backward, all-reduce, unscale, overflow check, optimizer step."""

    def __init__(self, net_with_loss, optimizer, loss_scale=1.0, dynamic=False, window=2000):
        super().__init__(auto_prefix=False)
        self.network = net_with_loss
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()
        self.loss_scale = Parameter(Tensor(float(loss_scale), ms.float32), name="loss_scale", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale_good_steps", requires_grad=False)
        self.dynamic = dynamic
        self.window = window
        self.reducer = None
        self.compiled_for = set()  # inputs compiled ahead (compile_ahead_once)
        if _get_parallel_mode() in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL):
            self.reducer = nn.DistributedGradReducer(self.weights, _get_gradients_mean(), _get_device_num())

    # What train.py asks of any training cell (the THOR trainer has its own answers).
    def describe(self):
        """A line for the run's log about this cell's optimizer, or None."""
        return None

    def log_fields(self):
        """Extra fields for the progress lines and the metrics file."""
        return {}

    def sync_counters(self):
        """Called after a checkpoint is loaded."""

    def __call__(self, *args):
        compile_ahead_once(self, *args)  # inputs of a new shape: compiled, the compile's freed heap given back
        return super().__call__(*args)

    def construct(self, image, label):
        loss, grads, finite, scale = self.gradients(image, label)
        return self.apply(loss, grads, finite, scale)

    def gradients(self, image, label):
        """The first half of the step: ``(loss, unscaled gradients, all finite, loss scale used)``."""
        loss = self.network(image, label)
        scale = self.loss_scale * 1.0  # the value used in this step (read before any update)
        sens = ops.ones_like(loss) * ops.cast(scale, loss.dtype)
        grads = self.grad(self.network, self.weights)(image, label, sens)
        if self.reducer is not None:
            grads = self.reducer(grads)
        grads = self.hyper_map(ops.partial(_unscale, scale), grads)
        finite = all_finite(self.hyper_map, grads)
        return loss, grads, finite, scale

    def apply(self, loss, grads, finite, scale):
        """The second half: the optimizer step when the gradients are finite, then the loss-scale update.
        Returns ``(loss, overflow, scale)``."""
        overflow = ops.logical_not(finite)
        if finite:
            loss = ops.depend(loss, self.optimizer(grads))
        # After the optimizer: THOR's refresh reads the loss scale to undo it in G, and must see the scale this
        # step ran with, not the one doubled (or halved) for the next step.
        if self.dynamic:
            loss = ops.depend(loss, self._update_scale(overflow))
        return loss, overflow, scale

    def _update_scale(self, overflow):
        good = self.good_steps + 1
        grow = ops.logical_and(ops.logical_not(overflow), good >= self.window)
        scale = self.loss_scale
        new_scale = ops.select(overflow, ops.maximum(scale / 2.0, ops.ones_like(scale)),
                               ops.select(grow, scale * 2.0, scale))
        new_good = ops.select(ops.logical_or(overflow, grow), ops.zeros_like(good), good)
        return ops.depend(ops.assign(self.loss_scale, new_scale), ops.assign(self.good_steps, new_good))

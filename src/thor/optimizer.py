"""THOR: momentum SGD on Kronecker-factored natural gradients, with its own inverse-update cadence.

Per preconditioned layer l (Conv2d/Dense weight W_l; see capture.py for A and G), on an *update* step:

  A_l <- A_new                      or, with factor_decay rho > 0 (after the first update):
  A_l <- rho * A_l + (1 - rho) * A_new   (G likewise; in data parallel A_new, G_new are first averaged
                                          across ranks)
  then the damped inverses (per diagonal block), in one of two conventions (``thor_convention``):

    mindspore (default):  A_l^-1 <- (A_l + sqrt(lambda / T) I)^-1,   G_l^-1 <- (G_l + sqrt(lambda * T) I)^-1
    kfac:                 A_l^-1 <- (A_l + sqrt(lambda) I)^-1,       G_l^-1 <- (G_l + sqrt(lambda) I)^-1

  T = output positions per sample (H_out * W_out; 1 for Dense, where both agree). ``mindspore`` is what
  MindSpore's own THOR computes on Ascend (nn/optim/thor.py ThorAscend with nn/layer/thor_layer.py
  Conv2dThor): it stores G / T, adds sqrt(lambda / T) to A and to G / T, and multiplies the
  preconditioned gradient by 1 / T, which is the form above. The zoo's lr and damping were tuned on it.
  ``kfac`` is the textbook form (Grosse & Martens 2016, kfac-pytorch) with one damping for both factors.

  lambda is the damping of the step (damping_i = max(damping_init * damping_decay^(e/10), damping_min),
  schedules.py). Each damped block is inverted by an LU solve, with its damping floored at b * 2^-24 times
  its largest diagonal entry, where float32 could no longer add it (blocks.damped_inverse). The factors are
  used as computed: symmetric up to the summation order of the Gram products, which the LU inverse does not
  need (symmetrising cost a transpose per factor). When a new factor or inverse holds a non-finite value, the
  layer keeps its last good factors and inverse, and ``thor_nonfinite`` counts the event (the trainer logs a
  warning).

  Trace mode (THOR paper, Chen et al. AAAI 2021), per layer with d = d_in * d_out:
    tr_k   = tr(A_l) * tr(G_l) + lambda * d        = tr(F_k + lambda I)  (tr of a Kronecker product)
    tr_prev: the same with the factors of the layer's last refresh
    delta  = |tr_k - tr_prev| / tr_prev
    delta > w1          -> refresh the inverse (and remember these factors as the reference)
    w2 <= delta <= w1   -> keep the previous inverse
    delta < w2          -> freeze the layer: its inverse is never refreshed again
  The first update of a layer always refreshes. The number of refreshed layers is kept in
  ``thor_refreshed`` for logging. The per-layer references (``trace_ref``) are kept in trace mode only and
  the per-layer flags ([seen, frozen]) in trace mode or with factor_decay > 0, the only places they are read.

On *every* step:

  D_l = G_l^-1 * dW_l * A_l^-1          (dW_l reshaped to (out, in*kh*kw) and back)
  optional KL clipping (kfac-pytorch): nu = min(1, sqrt(kl_clip / (lr^2 * sum_l <D_l, dW_l>))), D_l *= nu
  then weight decay (BN gamma/beta and biases excluded) and momentum, exactly as nn.Momentum;
  parameters of layers that are not preconditioned (BN, biases, skipped layers) take the plain
  momentum step.

The refresh is ``refresh()``, compiled as a graph of its own (trainer.py runs it on update steps, between the
gradients and the step); ``construct`` is the preconditioned step alone, the same graph on every step.
"""
import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore.context import ParallelMode
from mindspore.nn.optim.momentum import _momentum_opt
from mindspore.parallel._utils import _get_device_num, _get_parallel_mode

from src.thor.blocks import (
    RESHAPE,
    RIGHT_PRODUCTS,
    apply_left,
    apply_right,
    block_diagonal,
    block_trace,
    damped_inverse,
)
from src.train_step import _grad_sum_tensor


def _all_finite(x, y):
    """True when every element of ``x`` and ``y`` is finite, as the finiteness of the sum of their sums (one
    matrix-vector product each; the CPU ``isfinite(x).all()`` reduction is several times slower). A sum of finite
    float32 values that overflows counts as non-finite, which for a factor or an inverse is as unusable."""
    return ops.isfinite(_grad_sum_tensor(x) + _grad_sum_tensor(y))


def _dot(x, y):
    """<x, y> (sum of the elementwise product) as one (1, n) @ (n, 1) matrix product: no product tensor is
    formed and the CPU ReduceSum kernel is avoided (python -m benchmarks.thor_ops)."""
    return ops.matmul(RESHAPE(x, (1, -1)), RESHAPE(y, (-1, 1)))


def _pick(cond, new, old):
    """``where(cond, new, old)`` for a scalar ``cond``, broadcast first: on CPU a Select that broadcasts holds
    more memory in the compiled graph (19 MiB against 6 MiB per use on a 36 x 128 x 128 factor;
    python -m benchmarks.thor_ops)."""
    return ops.where(ops.broadcast_to(cond, old.shape), new, old)


def _eye_blocks(nb, b):
    return Tensor(np.broadcast_to(np.eye(b, dtype=np.float32), (nb, b, b)).copy())


# Per-parameter functions over the whole gradient tuple, applied with HyperMap. A graph-mode loop that builds its
# result as ``out = out + (g,)`` makes tuples of 1, 2, ..., n elements, which the compiled graph keeps: for
# ResNet-50's 161 parameters THOR's process peaked 213 MiB higher that way (python -m benchmarks.thor_step at
# 32x32; python -m benchmarks.graph_memory shows the effect alone; docs/performance.md). ``info``:
# ``Thor.param_info`` of the parameter, (layer, rows, nb_A, b_A, nb_G, b_G), layer -1 for a parameter THOR does
# not precondition.
_precondition_one = ops.MultitypeFuncGraph("thor_precondition_one")
_kl_scale = ops.MultitypeFuncGraph("thor_kl_scale")


@_precondition_one.register("Tuple", "Tuple", "String", "Tuple", "Tensor")
def _precondition_tensor(a_inv, g_inv, how, info, grad):
    """G^-1 grad A^-1 for a preconditioned layer's weight gradient, reshaped to (rows, -1) and back."""
    layer = info[0]
    if layer < 0:
        return grad
    g2 = apply_right(RESHAPE(grad, (info[1], -1)), a_inv[layer], info[2], info[3], how)
    g2 = apply_left(g_inv[layer], g2, info[4], info[5])
    return RESHAPE(g2, grad.shape)


@_kl_scale.register("Tensor", "Tuple", "Tensor")
def _kl_scale_tensor(nu, info, grad):
    """The KL clip's factor on a preconditioned gradient."""
    if info[0] < 0:
        return grad
    return grad * nu


class Thor(nn.Momentum):
    """THOR optimizer over ``params`` (the same groups nn.Momentum takes) for the capturing ``layers``."""

    def __init__(self, params, learning_rate, damping, momentum, layers, mode="fixed", factor_decay=0.0,
                 kl_clip=0.0, trace_w1=0.01, trace_w2=0.0, convention="mindspore", right_product="bmm"):
        super().__init__(params, learning_rate, momentum, weight_decay=0.0, loss_scale=1.0)
        if convention not in ("mindspore", "kfac"):
            raise ValueError(f"THOR convention must be 'mindspore' or 'kfac', got {convention!r}")
        self.convention = convention
        if right_product not in RIGHT_PRODUCTS:
            raise ValueError(f"THOR right_product must be one of {RIGHT_PRODUCTS}, got {right_product!r}")
        self.right_product = right_product
        self.split_damping = convention == "mindspore"
        # The capturing layers (capture.attach) whose statistics this optimizer reads and whose capture the
        # trainer switches on for update steps; a plain attribute, so that they are not registered twice as
        # sub-cells (they belong to the network).
        object.__setattr__(self, "thor_layers", tuple(layers))
        self.num_layers = len(layers)
        self.trace_mode = mode == "trace"
        self.factor_decay = float(factor_decay)
        self.kl_clip = float(kl_clip)
        self.trace_w1 = float(trace_w1)
        self.trace_w2 = float(trace_w2)
        self.damping = Parameter(Tensor(np.asarray(damping, np.float32)), name="thor.damping", requires_grad=False)
        self.loss_scale_ref = Parameter(Tensor(1.0, ms.float32), name="thor.loss_scale_ref", requires_grad=False)

        weight_ids = {id(cell.weight): i for i, cell in enumerate(layers)}
        self.param_layer = tuple(weight_ids.get(id(p), -1) for p in self._parameters)
        missing = [cell.thor_name for cell in layers if id(cell.weight) not in {id(p) for p in self._parameters}]
        if missing:
            raise ValueError(f"THOR layers whose weight is not optimised: {missing}")
        self.weight_shapes = tuple(tuple(cell.weight.shape) for cell in layers)
        self.a_layout = tuple(cell.thor_a_layout for cell in layers)
        self.g_layout = tuple(cell.thor_g_layout for cell in layers)
        self.dims = tuple(cell.thor_dims for cell in layers)
        self.param_info = tuple((l, self.weight_shapes[l][0], *self.a_layout[l], *self.g_layout[l]) if l >= 0
                                else (-1, 0, 0, 0, 0, 0) for l in self.param_layer)

        def state(suffix, layout_of, init):
            return ParameterTuple([Parameter(init(*layout_of(c)), name=f"thor.{c.thor_name}.{suffix}",
                                             requires_grad=False) for c in layers])

        def zeros(nb, b):
            return Tensor(np.zeros((nb, b, b), np.float32))

        self.a_stat = ParameterTuple([c.thor_a for c in layers])
        self.positions = ParameterTuple([c.thor_positions for c in layers])
        self.g_stat = ParameterTuple([c.thor_g for c in layers])
        self.a_scale = ParameterTuple([c.thor_a_scale for c in layers])
        self.g_scale = ParameterTuple([c.thor_g_scale for c in layers])
        self.a_avg = state("a", lambda c: c.thor_a_layout, zeros)
        self.g_avg = state("g", lambda c: c.thor_g_layout, zeros)
        self.a_inv = state("a_inv", lambda c: c.thor_a_layout, _eye_blocks)
        self.g_inv = state("g_inv", lambda c: c.thor_g_layout, _eye_blocks)
        self.trace_ref = ParameterTuple([Parameter(Tensor(np.ones(2, np.float32)), name=f"thor.{c.thor_name}.trace_ref",
                                                   requires_grad=False) for c in layers])
        self.layer_flags = ParameterTuple([Parameter(Tensor(np.zeros(2, np.float32)), name=f"thor.{c.thor_name}.flags",
                                                     requires_grad=False) for c in layers])  # [seen, frozen]
        self.thor_refreshed = Parameter(Tensor(0, ms.int32), name="thor.refreshed", requires_grad=False)
        self.thor_updates = Parameter(Tensor(0, ms.int32), name="thor.updates", requires_grad=False)
        # layer refreshes that fell back to the last good factors/inverse because of a non-finite value
        self.thor_nonfinite = Parameter(Tensor(0, ms.int32), name="thor.nonfinite", requires_grad=False)

        self.group_size = 1
        self.allreduce = None
        if _get_parallel_mode() in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL):
            self.group_size = _get_device_num()
            self.allreduce = ops.AllReduce()

    def state_bytes(self):
        """Bytes of THOR state (statistics, factors, inverses), the part Momentum does not have."""
        tuples = (self.a_stat, self.g_stat, self.a_avg, self.g_avg, self.a_inv, self.g_inv)
        return int(sum(p.size * 4 for t in tuples for p in t))

    def _step_damping(self):
        """The damping of the current step (the schedule's last value past its end)."""
        step = ops.minimum(self.global_step, self.damping.shape[0] - 1)
        return ops.gather(self.damping, step, 0).reshape(())

    def refresh(self):
        """Update factors and inverses from the statistics the capturing layers stored on this step (a graph of
        its own, run before the step, which reads the inverses). Returns the number of layers refreshed."""
        damping = self._step_damping()
        inv_scale2 = 1.0 / (self.loss_scale_ref * self.loss_scale_ref)
        rho = self.factor_decay
        # the per-layer flags [seen, frozen] matter to the factor decay and the trace rule only; without those the
        # graph does not write them (the compiler drops reads nobody uses) nor computes traces: fewer nodes
        track = self.trace_mode or rho > 0.0
        sqrt_damping = ops.sqrt(damping)
        count = ops.zeros((), ms.float32)
        bad = ops.zeros((), ms.float32)
        for l in range(self.num_layers):
            # the capture stores sums (capture.py): A = sum * 1/(N*T), G = sum * N / S^2
            a_new = self.a_stat[l] * self.a_scale[l]
            g_new = self.g_stat[l] * self.g_scale[l] * inv_scale2
            if self.allreduce is not None:
                a_new = self.allreduce(a_new) / self.group_size
                g_new = self.allreduce(g_new) / self.group_size
            flags = self.layer_flags[l]
            seen = flags[0] > 0.5
            frozen = flags[1] > 0.5
            if rho > 0.0:
                a = _pick(seen, rho * self.a_avg[l] + (1.0 - rho) * a_new, a_new)
                g = _pick(seen, rho * self.g_avg[l] + (1.0 - rho) * g_new, g_new)
            else:
                a = a_new
                g = g_new
            factors_ok = _all_finite(a, g)
            # the solver must see finite blocks; a layer with a non-finite factor keeps its last inverse anyway
            a_in = ops.nan_to_num(a, 0.0, 0.0, 0.0)
            g_in = ops.nan_to_num(g, 0.0, 0.0, 0.0)
            diag_a, diag_g = block_diagonal(a_in), block_diagonal(g_in)
            if self.split_damping:  # the mindspore convention: lambda / T on A, lambda * T on G
                positions = self.positions[l]
                a_inv = damped_inverse(a_in, ops.sqrt(damping / positions), diag_a)
                g_inv = damped_inverse(g_in, ops.sqrt(damping * positions), diag_g)
            else:
                a_inv = damped_inverse(a_in, sqrt_damping, diag_a)
                g_inv = damped_inverse(g_in, sqrt_damping, diag_g)
            finite = ops.logical_and(factors_ok, _all_finite(a_inv, g_inv))
            refresh = finite
            keep_factors = factors_ok
            if self.trace_mode:
                d_in, d_out = self.dims[l]
                tr_a = block_trace(a_in, d_in, diag_a)  # equal to a's trace whenever the layer refreshes
                tr_g = block_trace(g_in, d_out, diag_g)
                extra = damping * float(d_in * d_out)
                tr_new = tr_a * tr_g + extra
                ref = self.trace_ref[l]
                tr_prev = ref[0] * ref[1] + extra
                delta = ops.abs(tr_new - tr_prev) / tr_prev
                changed = ops.logical_or(ops.logical_not(seen), delta > self.trace_w1)
                settled = ops.logical_and(ops.logical_and(seen, factors_ok), delta < self.trace_w2)
                refresh = ops.logical_and(refresh, ops.logical_and(changed, ops.logical_not(frozen)))
                keep_factors = ops.logical_and(ops.logical_not(frozen), factors_ok)
                ops.assign(self.trace_ref[l], _pick(refresh, ops.stack([tr_a, tr_g]), self.trace_ref[l]))
                frozen = ops.logical_or(frozen, settled)
            ops.assign(self.a_avg[l], _pick(keep_factors, a, self.a_avg[l]))
            ops.assign(self.g_avg[l], _pick(keep_factors, g, self.g_avg[l]))
            ops.assign(self.a_inv[l], _pick(refresh, a_inv, self.a_inv[l]))
            ops.assign(self.g_inv[l], _pick(refresh, g_inv, self.g_inv[l]))
            if track:
                ops.assign(self.layer_flags[l], ops.stack([ops.ones((), ms.float32), ops.cast(frozen, ms.float32)]))
            count = count + ops.cast(refresh, ms.float32)
            bad = bad + ops.cast(ops.logical_not(finite), ms.float32)
        ops.assign(self.thor_updates, self.thor_updates + 1)
        ops.assign(self.thor_nonfinite, self.thor_nonfinite + ops.cast(bad, ms.int32))
        return ops.assign(self.thor_refreshed, ops.cast(count, ms.int32))

    def _precondition(self, gradients):
        return self.hyper_map(ops.partial(_precondition_one, self.a_inv, self.g_inv, self.right_product),
                              self.param_info, gradients)

    def _kl_clip(self, new_grads, gradients, lr):
        vg = ops.zeros((), ms.float32)
        for i in range(len(self.param_layer)):
            if self.param_layer[i] >= 0:
                vg = vg + RESHAPE(_dot(new_grads[i], gradients[i]), ())
        vg = vg * lr * lr
        nu = ops.minimum(ops.ones((), ms.float32), ops.sqrt(self.kl_clip / ops.maximum(vg, 1e-30)))
        return self.hyper_map(ops.partial(_kl_scale, nu), self.param_info, new_grads)

    def construct(self, gradients):
        params = self.params
        moments = self.moments
        new_grads = self._precondition(gradients)
        lr = self.get_lr()
        if self.kl_clip > 0.0:
            new_grads = self._kl_clip(new_grads, gradients, lr)
        new_grads = self.decay_weight(new_grads)
        new_grads = self.scale_grad(new_grads)
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        return self.hyper_map(ops.partial(_momentum_opt, self.opt, self.momentum, lr), new_grads, params, moments)

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
  ``thor_refreshed`` for logging.

On *every* step:

  D_l = G_l^-1 * dW_l * A_l^-1          (dW_l reshaped to (out, in*kh*kw) and back)
  optional KL clipping (kfac-pytorch): nu = min(1, sqrt(kl_clip / (lr^2 * sum_l <D_l, dW_l>))), D_l *= nu
  then weight decay (BN gamma/beta and biases excluded) and momentum, exactly as nn.Momentum;
  parameters of layers that are not preconditioned (BN, biases, skipped layers) take the plain
  momentum step.

The refresh works on the factors of all layers at once, one op per group of factors of one block size
(groups.py); the state stays one parameter per layer and factor.

Which of the two is compiled is fixed by the Python flag ``thor_update`` at compile time (trainer.py
compiles two graphs); the non-update graph holds no statistics, inversion or trace work.
"""
import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore.context import ParallelMode
from mindspore.nn.optim.momentum import _momentum_opt
from mindspore.parallel._utils import _get_device_num, _get_parallel_mode

from src.thor.blocks import apply_left, apply_right, block_diagonal, damped_inverse
from src.thor.groups import factor_groups

_MATMUL_TA = ops.MatMul(transpose_a=True)


def _pick(cond, new, old):
    """``where(cond, new, old)`` for a scalar ``cond``, broadcast first: on CPU a Select that broadcasts holds
    more memory in the compiled graph (19 MiB against 6 MiB per use on a 36 x 128 x 128 factor;
    python -m benchmarks.thor_ops)."""
    return ops.where(ops.broadcast_to(cond, old.shape), new, old)


def _pick_blocks(cond, new, old):
    """Per block of ``new`` / ``old`` (nb, b, b): ``new`` where ``cond`` (nb,) is 1.0, else ``old``."""
    return ops.where(ops.broadcast_to(ops.reshape(cond > 0.5, (-1, 1, 1)), old.shape), new, old)


def _nonfinite_blocks(blocks):
    """(nb, 1): 1.0 for each block of ``blocks`` (nb, b, b) holding a non-finite value, else 0.0. Tested as the
    finiteness of the block's sum, one matrix-vector product (the CPU ``isfinite(x).all()`` reduction is several
    times slower); a sum of finite values that overflows counts as non-finite, which for a factor or an inverse
    is as unusable."""
    nb, b, _ = blocks.shape
    sums = ops.matmul(ops.reshape(blocks, (nb, b * b)), ops.ones((b * b, 1), ms.float32))
    return ops.cast(ops.logical_not(ops.isfinite(sums)), ms.float32)


def _eye_blocks(nb, b):
    return Tensor(np.broadcast_to(np.eye(b, dtype=np.float32), (nb, b, b)).copy())


class Thor(nn.Momentum):
    """THOR optimizer over ``params`` (the same groups nn.Momentum takes) for the capturing ``layers``."""

    def __init__(self, params, learning_rate, damping, momentum, layers, mode="fixed", factor_decay=0.0,
                 kl_clip=0.0, trace_w1=0.01, trace_w2=0.0, convention="mindspore"):
        super().__init__(params, learning_rate, momentum, weight_decay=0.0, loss_scale=1.0)
        if convention not in ("mindspore", "kfac"):
            raise ValueError(f"THOR convention must be 'mindspore' or 'kfac', got {convention!r}")
        self.convention = convention
        self.split_damping = convention == "mindspore"
        # The capturing layers (capture.attach) whose statistics this optimizer reads and whose capture the
        # trainer switches on for update steps; a plain attribute, so that they are not registered twice as
        # sub-cells (they belong to the network).
        object.__setattr__(self, "thor_layers", tuple(layers))
        self.num_layers = len(layers)
        self.thor_update = False  # compile-time switch, see trainer.py
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
        groups, order = factor_groups(self.a_layout, self.g_layout, self.dims)
        self.block_sizes = tuple(g.b for g in groups)
        self.group_a_layers = tuple(g.a_layers for g in groups)
        self.group_g_layers = tuple(g.g_layers for g in groups)
        self.group_block_factor = tuple(Tensor(g.block_factor) for g in groups)
        self.group_onehot = tuple(Tensor(g.onehot) for g in groups)
        self.group_diag_mask = tuple(Tensor(g.diag_mask) for g in groups)
        self.group_is_g = tuple(Tensor(g.is_g.reshape(-1, 1, 1)) for g in groups)
        self.factor_order = Tensor(order)                                          # see groups.factor_groups
        self.factor_layer = Tensor(np.arange(2 * len(layers), dtype=np.int32) // 2)  # factor -> its layer
        self.layer_size = Tensor(np.asarray([d_in * d_out for d_in, d_out in self.dims], np.float32))
        # where each factor's blocks sit in its group's state: factor f -> (group, first block, blocks, size)
        where = {}
        for k, g in enumerate(groups):
            for f, start, nb in zip(g.factors, np.cumsum((0,) + g.sections[:-1]), g.sections):
                where[f] = (k, int(start), nb, g.b)
        self.factor_place = tuple(where[f] for f in range(2 * len(layers)))

        self.a_stat = ParameterTuple([c.thor_a for c in layers])
        self.positions = ParameterTuple([c.thor_positions for c in layers])
        self.g_stat = ParameterTuple([c.thor_g for c in layers])
        # the state, one parameter per block size (groups.py): the factors (running averages with factor_decay)
        # and the inverses of all layers' A and G blocks of that size, in the group's order
        self.factor_state = ParameterTuple([
            Parameter(Tensor(np.zeros((g.num_blocks, g.b, g.b), np.float32)), name=f"thor.blocks{g.b}.factors",
                      requires_grad=False) for g in groups])
        self.inverse_state = ParameterTuple([
            Parameter(_eye_blocks(g.num_blocks, g.b), name=f"thor.blocks{g.b}.inverses", requires_grad=False)
            for g in groups])
        n = len(layers)
        self.trace_ref = Parameter(Tensor(np.ones((n, 2), np.float32)), name="thor.trace_ref", requires_grad=False)
        self.layer_flags = Parameter(Tensor(np.zeros((n, 2), np.float32)), name="thor.layer_flags",
                                     requires_grad=False)  # per layer [seen, frozen]
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
        tuples = (self.a_stat, self.g_stat, self.factor_state, self.inverse_state)
        return int(sum(p.size * 4 for t in tuples for p in t))

    def layer_state(self, l):
        """NumPy copies of layer ``l``'s factors and inverses (``a``, ``g``, ``a_inv``, ``g_inv``: its blocks
        (nb, b, b)), ``trace_ref`` and ``flags`` ([seen, frozen]); for tests and inspection."""
        out = {"trace_ref": self.trace_ref.asnumpy()[l], "flags": self.layer_flags.asnumpy()[l]}
        for side, f in (("a", 2 * l), ("g", 2 * l + 1)):
            k, start, nb, _ = self.factor_place[f]
            out[side] = self.factor_state[k].asnumpy()[start:start + nb]
            out[side + "_inv"] = self.inverse_state[k].asnumpy()[start:start + nb]
        return out

    def legacy_state(self, params):
        """``params`` (a checkpoint's dict) with THOR state saved per layer (``thor.<layer>.a``, ``.g``,
        ``.a_inv``, ``.g_inv``, ``.trace_ref``, ``.flags``, as this optimizer kept it before grouping by block
        size) packed into the grouped parameters; ``params`` unchanged when it has grouped state already or no
        per-layer state."""
        names = [c.thor_name for c in self.thor_layers]
        if self.trace_ref.name in params or f"thor.{names[0]}.a_inv" not in params:
            return params
        out = dict(params)
        for state, suffixes in ((self.factor_state, ("a", "g")), (self.inverse_state, ("a_inv", "g_inv"))):
            for k in range(len(self.block_sizes)):
                parts = [params[f"thor.{names[l]}.{suffixes[0]}"].asnumpy() for l in self.group_a_layers[k]]
                parts += [params[f"thor.{names[l]}.{suffixes[1]}"].asnumpy() for l in self.group_g_layers[k]]
                out[state[k].name] = Parameter(Tensor(np.concatenate(parts)), name=state[k].name)
        for param, suffix in ((self.trace_ref, "trace_ref"), (self.layer_flags, "flags")):
            rows = np.stack([params[f"thor.{name}.{suffix}"].asnumpy() for name in names])
            out[param.name] = Parameter(Tensor(rows), name=param.name)
        return out

    def _statistics(self, k, after):
        """This step's statistics of group ``k``'s factors (A of its a_layers, then G of its g_layers) along the
        block axis, each read after ``after``."""
        parts = ()
        for l in self.group_a_layers[k]:
            parts = parts + (ops.depend(self.a_stat[l], after),)
        for l in self.group_g_layers[k]:
            parts = parts + (ops.depend(self.g_stat[l], after),)
        if len(parts) == 1:
            return parts[0]
        return ops.concat(parts, 0)

    def _per_factor(self, parts):
        """Per-group (factors_k, 1) columns -> (L, 2) in layer order: column 0 the layer's A, 1 its G."""
        column = ops.reshape(ops.concat(parts, 0), (-1,)) if len(parts) > 1 else ops.reshape(parts[0], (-1,))
        return ops.reshape(ops.gather(column, self.factor_order, 0), (self.num_layers, 2))

    def _refresh(self, damping, gradients):
        """Update factors and inverses from this step's statistics (update graph only): one op per group of
        factors of one block size (groups.py), the per-layer decisions on (L,) vectors."""
        inv_scale2 = 1.0 / (self.loss_scale_ref * self.loss_scale_ref)
        rho = self.factor_decay
        flags = self.layer_flags
        seen = flags[:, 0] > 0.5
        frozen = flags[:, 1] > 0.5
        seen_f = ops.gather(flags[:, 0], self.factor_layer, 0)  # (2L,) 1.0 where the factor's layer was seen
        if self.split_damping:  # the mindspore convention: lambda / T on A, lambda * T on G
            rows = ()
            for l in range(self.num_layers):
                rows = rows + (ops.depend(self.positions[l], gradients),)
            positions = ops.stack(rows)
            shift_f = ops.reshape(ops.sqrt(ops.stack([damping / positions, damping * positions], 1)), (-1,))
        else:
            shift = ops.sqrt(damping)
        blended, inverses, bad, bad_inv, traces = (), (), (), (), ()
        for k in range(len(self.block_sizes)):
            block_factor = self.group_block_factor[k]
            new = self._statistics(k, gradients)
            new = new * ops.where(self.group_is_g[k], inv_scale2, 1.0)  # the hook stores S^2 * G
            if self.allreduce is not None:
                new = self.allreduce(new) / self.group_size
            x = new
            if rho > 0.0:
                old = self.factor_state[k]
                x = _pick_blocks(ops.gather(seen_f, block_factor, 0), rho * old + (1.0 - rho) * new, new)
            # the solver must see finite blocks; a layer with a non-finite factor keeps its last inverse anyway
            x_in = ops.nan_to_num(x, 0.0, 0.0, 0.0)
            diag = block_diagonal(x_in)
            if self.split_damping:
                shift = ops.reshape(ops.gather(shift_f, block_factor, 0), (-1, 1, 1))
            inv = damped_inverse(x_in, shift, diag)
            onehot = self.group_onehot[k]
            bad = bad + (_MATMUL_TA(onehot, _nonfinite_blocks(x)),)
            bad_inv = bad_inv + (_MATMUL_TA(onehot, _nonfinite_blocks(inv)),)
            b = self.block_sizes[k]
            block_traces = ops.matmul(diag * self.group_diag_mask[k], ops.ones((b, 1), ms.float32))
            traces = traces + (_MATMUL_TA(onehot, block_traces),)
            blended, inverses = blended + (x,), inverses + (inv,)
        bad = self._per_factor(bad)
        factors_ok = (bad[:, 0] + bad[:, 1]) < 0.5
        bad_inv = self._per_factor(bad_inv)
        finite = ops.logical_and(factors_ok, (bad_inv[:, 0] + bad_inv[:, 1]) < 0.5)
        tr = self._per_factor(traces)  # equal to the factors' traces whenever a layer refreshes
        ref = self.trace_ref
        refresh = finite
        new_frozen = frozen
        if self.trace_mode:
            extra = damping * self.layer_size
            tr_new = tr[:, 0] * tr[:, 1] + extra
            tr_prev = ref[:, 0] * ref[:, 1] + extra
            delta = ops.abs(tr_new - tr_prev) / tr_prev
            changed = ops.logical_or(ops.logical_not(seen), delta > self.trace_w1)
            settled = ops.logical_and(ops.logical_and(seen, factors_ok), delta < self.trace_w2)
            new_frozen = ops.logical_or(frozen, settled)
            refresh = ops.logical_and(refresh, ops.logical_and(changed, ops.logical_not(frozen)))
        keep_factors = ops.logical_and(ops.logical_not(frozen), factors_ok)
        keep_f = ops.gather(ops.cast(keep_factors, ms.float32), self.factor_layer, 0)
        refresh_f = ops.gather(ops.cast(refresh, ms.float32), self.factor_layer, 0)
        for k in range(len(self.block_sizes)):
            block_factor = self.group_block_factor[k]
            factors, inverse = self.factor_state[k], self.inverse_state[k]
            ops.assign(factors, _pick_blocks(ops.gather(keep_f, block_factor, 0), blended[k], factors))
            ops.assign(inverse, _pick_blocks(ops.gather(refresh_f, block_factor, 0), inverses[k], inverse))
        ops.assign(self.trace_ref, _pick(ops.reshape(refresh, (-1, 1)), tr, ref))
        ops.assign(self.layer_flags, ops.stack([ops.ones((self.num_layers,), ms.float32),
                                                ops.cast(new_frozen, ms.float32)], 1))
        count = ops.cast(refresh, ms.float32).sum()
        nonfinite = ops.cast(ops.logical_not(finite), ms.float32).sum()
        ops.assign(self.thor_updates, self.thor_updates + 1)
        ops.assign(self.thor_nonfinite, self.thor_nonfinite + ops.cast(nonfinite, ms.int32))
        return ops.assign(self.thor_refreshed, ops.cast(count, ms.int32))

    def _inverse_of(self, f):
        """The inverse blocks (nb, b, b) of factor ``f`` (2 l: A of layer l, 2 l + 1: its G), cut from its group's
        state."""
        k, start, nb, b = self.factor_place[f]
        inv = self.inverse_state[k]
        if inv.shape[0] == nb:
            return inv
        return ops.slice(inv, (start, 0, 0), (nb, b, b))

    def _precondition(self, gradients):
        out = ()
        for i in range(len(self.param_layer)):
            l = self.param_layer[i]
            g = gradients[i]
            if l >= 0:
                o = self.weight_shapes[l][0]
                nba, ba = self.a_layout[l]
                nbg, bg = self.g_layout[l]
                g2 = ops.reshape(g, (o, -1))
                g2 = apply_right(g2, self._inverse_of(2 * l), nba, ba)
                g2 = apply_left(self._inverse_of(2 * l + 1), g2, nbg, bg)
                g = ops.reshape(g2, self.weight_shapes[l])
            out = out + (g,)
        return out

    def _kl_clip(self, new_grads, gradients, lr):
        vg = ops.zeros((), ms.float32)
        for i in range(len(self.param_layer)):
            if self.param_layer[i] >= 0:
                vg = vg + (new_grads[i] * gradients[i]).sum()
        vg = vg * lr * lr
        nu = ops.minimum(ops.ones((), ms.float32), ops.sqrt(self.kl_clip / ops.maximum(vg, 1e-30)))
        out = ()
        for i in range(len(self.param_layer)):
            g = new_grads[i]
            if self.param_layer[i] >= 0:
                g = g * nu
            out = out + (g,)
        return out

    def construct(self, gradients):
        params = self.params
        moments = self.moments
        step = ops.minimum(self.global_step, self.damping.shape[0] - 1)
        damping = ops.gather(self.damping, step, 0).reshape(())
        if self.thor_update:
            gradients = ops.depend(gradients, self._refresh(damping, gradients))
        new_grads = self._precondition(gradients)
        lr = self.get_lr()
        if self.kl_clip > 0.0:
            new_grads = self._kl_clip(new_grads, gradients, lr)
        new_grads = self.decay_weight(new_grads)
        new_grads = self.scale_grad(new_grads)
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        return self.hyper_map(ops.partial(_momentum_opt, self.opt, self.momentum, lr), new_grads, params, moments)

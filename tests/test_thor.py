"""THOR against a NumPy float64 reference of the formulas in src/thor (capture.py, optimizer.py)."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from src.errors import UserError
from src.optim import NetWithLoss
from src.schedules import thor_update_steps
from src.thor.blocks import (
    apply_left,
    apply_right,
    block_gram,
    block_layout,
    block_trace,
    damped_inverse,
    sample_block_gram,
    swap_leading,
)
from src.thor.capture import attach, sync_shapes
from src.thor.optimizer import Thor
from src.thor.trainer import ThorTrainer
from src.train_step import TrainStep

N, C, H = 4, 3, 6          # batch, input channels, input size
K, CLASSES = 5, 3          # conv output channels, classes


class TinyNet(nn.Cell):
    """conv 3x3/2 pad 1 (no bias) -> ReLU -> global average pool -> Dense with bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, K, 3, stride=2, pad_mode="pad", padding=1, has_bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Dense(K, CLASSES)

    def construct(self, x):
        return self.fc(ops.mean(self.relu(self.conv(x)), (2, 3)))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, C, H, H)).astype(np.float32), rng.integers(0, CLASSES, N).astype(np.int32)


def _im2col(x, k=3, stride=2, pad=1):
    """(N, C, H, W) -> (N, T, C*k*k) patches, C outermost like the weight reshape."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, w = xp.shape
    out = (h - k) // stride + 1
    cols = np.empty((n, out * out, c * k * k))
    for i in range(out):
        for j in range(out):
            cols[:, i * out + j] = xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k].reshape(n, -1)
    return cols


def _reference(w_conv, w_fc, b_fc, x, y):
    """Float64 A, G and batch-mean gradients of both layers, straight from the formulas."""
    x = x.astype(np.float64)
    a_conv = _im2col(x)                                        # (N, T, 27)
    s = a_conv @ w_conv.reshape(K, -1).T                       # (N, T, K) conv output
    r = np.maximum(s, 0)
    h = r.mean(axis=1)                                         # (N, K) pooled
    logits = h @ w_fc.T + b_fc
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g_fc = p - np.eye(CLASSES)[y]                              # dl_n / dlogits_n (per sample)
    g_conv = (g_fc @ w_fc)[:, None, :] / s.shape[1] * (s > 0)  # dl_n / ds_{n,t}
    t = s.shape[1]
    return {
        "A_conv": np.einsum("ntd,nte->de", a_conv, a_conv) / (N * t),
        "G_conv": np.einsum("ntk,ntl->kl", g_conv, g_conv) / N,
        "dW_conv": np.einsum("ntk,ntd->kd", g_conv, a_conv) / N,
        "A_fc": h.T @ h / N,
        "G_fc": g_fc.T @ g_fc / N,
        "dW_fc": g_fc.T @ h / N,
    }


def _softmax_grad(w_conv, w_fc, b_fc, x, y):
    h = np.maximum(_im2col(x.astype(np.float64)) @ w_conv.reshape(K, -1).T, 0).mean(1)
    logits = h @ w_fc.T + b_fc
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True) - np.eye(CLASSES)[y]


def _blockdiag_inverse(m, split, damping):
    d = m.shape[0]
    nb, b = block_layout(d, split)
    out = np.zeros_like(m)
    for i in range(nb):
        sl = slice(i * b, min((i + 1) * b, d))
        blk = m[sl, sl]
        out[sl, sl] = np.linalg.inv(blk + np.sqrt(damping) * np.eye(blk.shape[0]))
    return out


def _block_mask(d, split):
    nb, b = block_layout(d, split)
    idx = np.arange(d) // b
    return idx[:, None] == idx[None, :]


def _blocks_to_dense(blocks, d):
    nb, b, _ = blocks.shape
    full = np.zeros((nb * b, nb * b))
    for i in range(nb):
        full[i * b:(i + 1) * b, i * b:(i + 1) * b] = blocks[i]
    return full[:d, :d]


def _build(split_dim, damping=0.01, loss_scale=8.0, lr=1.0, momentum=0.0, steps=1, frequency=1, mode="fixed",
           factor_decay=0.0, w1=0.01, w2=0.0, seed=0, kl_clip=0.0, convention="kfac", net_class=TinyNet,
           update_pass="statistics"):
    """The tiny net under THOR; the references of this file use the kfac convention's damping
    (test_thor_parity.py covers both conventions)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(seed)
    net = net_class()
    layers = attach(net, split_dim=split_dim)
    n = max(steps, 2)
    opt = Thor(net.trainable_params(), ms.Tensor(np.full(n, lr, np.float32)), np.full(n, damping),
               momentum, layers, mode=mode, factor_decay=factor_decay, trace_w1=w1, trace_w2=w2, kl_clip=kl_clip,
               convention=convention)
    flags = thor_update_steps(steps, steps, frequency)
    trainer = ThorTrainer(NetWithLoss(net, nn.CrossEntropyLoss()), opt, flags, loss_scale=loss_scale,
                          update_pass=update_pass)
    trainer.set_train()
    return net, opt, trainer


class _Blocks(nn.Cell):
    def __init__(self, nb_a, b_a, nb_g, b_g):
        super().__init__()
        self.a, self.g = (nb_a, b_a), (nb_g, b_g)

    def construct(self, x, grad, inv_a, inv_g, x12, x2):
        right = apply_right(grad, inv_a, *self.a)
        one_position = ops.reshape(x, (x.shape[0], x.shape[1], 1))  # (11, d, 1): the samples moved side by side
        return (block_gram(x, *self.a), block_trace(inv_a, grad.shape[1]), right,
                apply_left(inv_g, right, *self.g), sample_block_gram(one_position, *self.a),
                sample_block_gram(x12, *self.a),  # (5, d, 12): the per-sample path (b <= 12 in every case)
                sample_block_gram(x2, *self.a))  # (5, d, 2): the samples moved side by side (b > 2)


@pytest.mark.parametrize("o, d, split", [(6, 5, 0), (8, 12, 4), (7, 10, 4), (12, 8, 4), (5, 9, 4), (3, 16, 8),
                                         (2, 12, 4), (4, 20, 10)])
def test_block_algebra_matches_dense_numpy(o, d, split):
    """Gram blocks, trace, grad @ blockdiag(A)^T and blockdiag(G) @ grad, for full, evenly split and ragged
    (zero-padded) widths on either side, more rows than column blocks and fewer, against dense float64
    block-diagonal matrices."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(o * 100 + d)
    (nba, ba), (nbg, bg) = block_layout(d, split), block_layout(o, split)
    x = rng.standard_normal((11, d)).astype(np.float32)
    grad = rng.standard_normal((o, d)).astype(np.float32)
    inv_a = rng.standard_normal((nba, ba, ba)).astype(np.float32)
    inv_g = rng.standard_normal((nbg, bg, bg)).astype(np.float32)
    x12 = rng.standard_normal((5, d, 12)).astype(np.float32)
    x2 = rng.standard_normal((5, d, 2)).astype(np.float32)
    gram, trace, right, both, sample_gram, sample_gram12, sample_gram2 = (t.asnumpy() for t in _Blocks(
        nba, ba, nbg, bg)(Tensor(x), Tensor(grad), Tensor(inv_a), Tensor(inv_g), Tensor(x12), Tensor(x2)))
    dense_a, dense_g = _blocks_to_dense(inv_a.astype(np.float64), d), _blocks_to_dense(inv_g.astype(np.float64), o)
    x64, g64 = x.astype(np.float64), grad.astype(np.float64)
    np.testing.assert_allclose(_blocks_to_dense(gram, d), (x64.T @ x64) * _block_mask(d, split),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_blocks_to_dense(sample_gram, d), (x64.T @ x64) * _block_mask(d, split),
                               rtol=1e-5, atol=1e-5)
    for got, xl in ((sample_gram12, x12), (sample_gram2, x2)):
        xl = xl.astype(np.float64)
        np.testing.assert_allclose(_blocks_to_dense(got, d), np.einsum("ndl,nel->de", xl, xl) *
                                   _block_mask(d, split), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(trace, np.trace(dense_a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(right, g64 @ dense_a.T, rtol=1e-5, atol=1e-5)  # each block transposed (symmetric A^-1)
    np.testing.assert_allclose(both, dense_g @ g64 @ dense_a.T, rtol=1e-4, atol=1e-4)


class _Swap(nn.Cell):
    def construct(self, x):
        return swap_leading(x)


def test_zero_padding_made_at_run_time_equals_the_constant(monkeypatch):
    """Padding larger than _RUNTIME_ZEROS_BYTES is made from |x_0| * 0 when the graph runs: the same +0 entries as
    the folded constant (x_0 negative here: no -0), and the same block statistics to the last bit."""
    import src.thor.blocks as blocks

    ms.set_context(mode=ms.GRAPH_MODE)
    x = np.random.default_rng(5).standard_normal((6, 10, 3)).astype(np.float32)
    x[0, 0, 0] = -2.0

    class Pad(nn.Cell):
        def construct(self, x):
            return blocks._pad_to(x, 1, 16), sample_block_gram(x, 4, 4)

    outs = {}
    for limit in (2 ** 20, 0):  # the constant, then the run-time zeros
        monkeypatch.setattr(blocks, "_RUNTIME_ZEROS_BYTES", limit)
        outs[limit] = [o.asnumpy() for o in Pad()(Tensor(x))]
    padded = outs[0][0]
    np.testing.assert_array_equal(padded, np.concatenate([x, np.zeros((6, 6, 3), np.float32)], 1))
    assert not np.signbit(padded[:, 10:]).any()
    for const, runtime in zip(outs[2 ** 20], outs[0]):
        np.testing.assert_array_equal(const, runtime)


@pytest.mark.parametrize("shape", [(5, 3, 4), (3, 5, 4), (4, 4, 2), (2, 6, 3, 2), (1, 7, 3)])
def test_swap_leading_is_the_transpose_of_the_two_leading_axes(shape):
    """Unstack + Stack along the shorter leading axis computes np.transpose(x, (1, 0, 2, ...)) exactly."""
    ms.set_context(mode=ms.GRAPH_MODE)
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    got = _Swap()(Tensor(x)).asnumpy()
    np.testing.assert_array_equal(got, np.swapaxes(x, 0, 1))


class _Inverse(nn.Cell):
    def construct(self, blocks, damping):
        return damped_inverse(blocks, damping)


def test_damped_inverse_matches_numpy_and_floors_a_damping_float32_cannot_add():
    """(B + d I)^-1 per block against float64; a block whose damping is below float32's resolution of its
    diagonal (rank one, entries 1e8, d = 1e-4: singular as stored, an exactly zero pivot that would stop the
    CPU solver) is inverted with d raised to b * 2^-24 * its largest diagonal entry instead."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 20, 8))
    spd = np.einsum("kni,knj->kij", x, x) / 20
    out = _Inverse()(Tensor(spd.astype(np.float32)), Tensor(np.float32(0.05))).asnumpy()
    np.testing.assert_allclose(out, np.linalg.inv(spd + 0.05 * np.eye(8)), rtol=1e-4, atol=1e-5)

    floor = 8 * 2.0 ** -24 * 1e8
    diag = np.zeros((2, 8, 8), np.float32)
    diag[:, np.arange(8), np.arange(8)] = [1e8] + [1.0] * 7
    out = _Inverse()(Tensor(diag), Tensor(np.float32(1e-4))).asnumpy()
    np.testing.assert_allclose(np.diagonal(out, 0, 1, 2), np.broadcast_to(1 / (np.diagonal(diag[0]) + floor), (2, 8)),
                               rtol=1e-5)
    ones = np.full((2, 8, 8), 1e8, np.float32)  # rank one: the floor is what keeps the solver going
    assert np.isfinite(_Inverse()(Tensor(ones), Tensor(np.float32(1e-4))).asnumpy()).all()


class _OneConv(nn.Cell):
    def __init__(self, k, stride, pad):
        super().__init__()
        self.conv = nn.Conv2d(C, K, k, stride=stride, pad_mode="pad", padding=pad, has_bias=False)

    def construct(self, x):
        return self.conv(x)


@pytest.mark.parametrize("k, stride, pad", [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (5, 1, 2)])
def test_conv_statistics_for_every_kernel_form(k, stride, pad):
    """A (im2col patches) and T for the kernel forms of ResNet-50 (1x1, 1x1 stride 2, 3x3, a 7x7-like stem),
    in blocks of 4 (C*k*k = 3, 12, 27, 75: single, even and ragged), against float64."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    net = _OneConv(k, stride, pad)
    (layer,) = attach(net, split_dim=4)
    layer.thor_capture = True
    x, _ = _data()
    net(Tensor(x)).asnumpy()
    sync_shapes([layer])
    cols = _im2col(x.astype(np.float64), k, stride, pad)
    t = cols.shape[1]
    expected = np.einsum("ntd,nte->de", cols, cols) / (N * t) * _block_mask(C * k * k, 4)
    got = _blocks_to_dense(layer.thor_a.asnumpy() * layer.thor_a_scale.asnumpy(), C * k * k)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert float(layer.thor_positions.asnumpy()) == t


@pytest.mark.parametrize("split_dim", [0, 2, 8])
def test_factors_and_preconditioned_gradient_match_numpy(split_dim):
    net, opt, trainer = _build(split_dim)
    x, y = _data()
    w_conv, w_fc, b_fc = (p.asnumpy().astype(np.float64) for p in (net.conv.weight, net.fc.weight, net.fc.bias))
    ref = _reference(w_conv, w_fc, b_fc, x, y)
    loss, overflow, _ = trainer(Tensor(x), Tensor(y))
    assert not bool(overflow.asnumpy())

    def rel(a, b):
        return np.abs(a - b).max() / np.abs(b).max()

    # statistics (block-diagonal part) in the optimizer state: layer 0 = conv, layer 1 = fc
    for l, name, d_in, d_out in [(0, "conv", C * 9, K), (1, "fc", K, CLASSES)]:
        a = _blocks_to_dense(opt.a_avg[l].asnumpy(), d_in)
        g = _blocks_to_dense(opt.g_avg[l].asnumpy(), d_out)
        mask_a, mask_g = _block_mask(d_in, split_dim), _block_mask(d_out, split_dim)
        assert rel(a, ref[f"A_{name}"] * mask_a) < 1e-4, name
        assert rel(g, ref[f"G_{name}"] * mask_g) < 1e-4, name
    # preconditioned step: lr 1, momentum 0, no weight decay -> W_old - W_new = G^-1 dW A^-1
    for name, w_old, shape in [("conv", w_conv, (K, C, 3, 3)), ("fc", w_fc, (CLASSES, K))]:
        a_inv = _blockdiag_inverse(ref[f"A_{name}"], split_dim, 0.01)
        g_inv = _blockdiag_inverse(ref[f"G_{name}"], split_dim, 0.01)
        expected = (g_inv @ ref[f"dW_{name}"] @ a_inv).reshape(shape)
        new = getattr(net, name).weight.asnumpy().astype(np.float64)
        assert rel(w_old - new, expected) < 1e-4, name
    # the bias takes the plain (unpreconditioned) step: b_old - b_new = lr * mean_n g_n
    p = _softmax_grad(w_conv, w_fc, b_fc, x, y)
    assert rel(b_fc - net.fc.bias.asnumpy(), p.mean(0)) < 1e-4


def test_kl_clip_scales_preconditioned_updates_by_nu():
    """nu = min(1, sqrt(kl_clip / (lr^2 * sum_l <D_l, dW_l>))) on the preconditioned layers only."""
    kl = 1e-4
    net, _, trainer = _build(0, kl_clip=kl, lr=0.5)
    x, y = _data()
    w_conv, w_fc, b_fc = (p.asnumpy().astype(np.float64) for p in (net.conv.weight, net.fc.weight, net.fc.bias))
    ref = _reference(w_conv, w_fc, b_fc, x, y)
    d = {name: _blockdiag_inverse(ref[f"G_{name}"], 0, 0.01) @ ref[f"dW_{name}"] @
         _blockdiag_inverse(ref[f"A_{name}"], 0, 0.01) for name in ("conv", "fc")}
    vg = sum((d[n] * ref[f"dW_{n}"]).sum() for n in d) * 0.5 ** 2
    nu = min(1.0, np.sqrt(kl / vg))
    assert nu < 0.5  # the clip is active in this setup
    trainer(Tensor(x), Tensor(y))
    step_fc = (w_fc - net.fc.weight.asnumpy()) / 0.5
    np.testing.assert_allclose(step_fc, nu * d["fc"], rtol=1e-3, atol=1e-7)
    step_bias = (b_fc - net.fc.bias.asnumpy()) / 0.5  # bias: plain gradient, not clipped
    np.testing.assert_allclose(step_bias, _softmax_grad(w_conv, w_fc, b_fc, x, y).mean(0), rtol=1e-3, atol=1e-7)


def test_factor_decay_keeps_a_running_average():
    _, opt, trainer = _build(8, lr=0.1, steps=2, factor_decay=0.75)
    trainer(*map(Tensor, _data(seed=0)))
    first_a, first_g = opt.a_avg[0].asnumpy().copy(), opt.g_avg[1].asnumpy().copy()
    # the capture stores sums: A = sum * a_scale, G = sum * g_scale / S^2 (the refresh's products, in float32)
    a_new = opt.a_stat[0].asnumpy() * opt.a_scale[0].asnumpy()
    np.testing.assert_array_equal(first_a, a_new)  # first update: no history
    trainer(*map(Tensor, _data(seed=1)))
    a_new = opt.a_stat[0].asnumpy() * opt.a_scale[0].asnumpy()
    np.testing.assert_allclose(opt.a_avg[0].asnumpy(), 0.75 * first_a + 0.25 * a_new, rtol=1e-5)
    g_new = opt.g_stat[1].asnumpy() * opt.g_scale[1].asnumpy() / np.float32(8.0 ** 2)
    np.testing.assert_allclose(opt.g_avg[1].asnumpy(), 0.75 * first_g + 0.25 * g_new, rtol=1e-5, atol=1e-9)


def test_loss_scale_does_not_change_the_thor_step():
    results = []
    for scale in (1.0, 1024.0):
        net, _, trainer = _build(8, loss_scale=scale)
        x, y = _data()
        trainer(Tensor(x), Tensor(y))
        results.append(net.conv.weight.asnumpy().copy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-4, atol=1e-6)


def test_statistics_and_inverses_change_only_on_update_steps():
    net, opt, trainer = _build(8, lr=0.1, momentum=0.9, steps=7, frequency=3)
    changed_stats, changed_inv = [], []
    for step in range(7):
        x, y = _data(seed=step)
        before_stat = opt.a_stat[0].asnumpy().copy()
        before_inv = opt.a_inv[0].asnumpy().copy(), opt.g_inv[1].asnumpy().copy()
        trainer(Tensor(x), Tensor(y))
        changed_stats.append(not np.array_equal(before_stat, opt.a_stat[0].asnumpy()))
        changed_inv.append(not np.array_equal(before_inv[0], opt.a_inv[0].asnumpy())
                           and not np.array_equal(before_inv[1], opt.g_inv[1].asnumpy()))
    expected = [True, False, False, True, False, False, True]
    assert changed_stats == expected
    assert changed_inv == expected
    assert int(opt.thor_updates.asnumpy()) == 3 and trainer.last_update == (6, 2)


class TinyBNNet(nn.Cell):
    """TinyNet with a batch norm after the convolution: moving statistics the update step must move once."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, K, 3, stride=2, pad_mode="pad", padding=1, has_bias=False)
        self.bn = nn.BatchNorm2d(K)
        self.relu = nn.ReLU()
        self.fc = nn.Dense(K, CLASSES)

    def construct(self, x):
        return self.fc(ops.mean(self.relu(self.bn(self.conv(x))), (2, 3)))


def test_all_update_passes_train_alike():
    """The statistics pass (then the plain step) and the step's own captured gradients give the same run: every
    parameter, moment, batch norm moving statistic and THOR factor, inverse and counter, to the last bit. The same
    pass run op by op gives it up to float32 rounding (PyNative's kernels under the oneDNN cap round some sums of the
    backward differently: within 2e-6 of each tensor's largest value in this run, checked at 1e-5), and leaves graph
    mode on after it."""
    runs = {}
    for update_pass in ("statistics", "eager", "step"):
        _, _, trainer = _build(4, lr=0.1, momentum=0.9, steps=5, frequency=2, seed=2, net_class=TinyBNNet,
                               update_pass=update_pass)
        losses = [float(trainer(*map(Tensor, _data(seed=step)))[0].asnumpy()) for step in range(5)]
        assert ms.get_context("mode") == ms.GRAPH_MODE
        runs[update_pass] = losses, {p.name: p.asnumpy().copy() for p in trainer.get_parameters()}
    loss_s, params_s = runs["statistics"]
    moved = [name for name in params_s if "moving_" in name]
    assert len(moved) == 2 and all(not np.array_equal(params_s[name], 1.0 * (name.endswith("variance")))
                                   for name in moved)
    assert int(params_s["thor.updates"]) == 3
    loss_t, params_t = runs["step"]
    assert loss_s == loss_t
    assert params_s.keys() == params_t.keys()
    for name in params_s:
        np.testing.assert_array_equal(params_s[name], params_t[name], err_msg=name)
    loss_e, params_e = runs["eager"]
    np.testing.assert_allclose(loss_e, loss_s, rtol=1e-6)
    assert params_s.keys() == params_e.keys()
    for name in params_s:
        scale = float(np.abs(params_s[name]).max())
        np.testing.assert_allclose(params_e[name], params_s[name], rtol=0, atol=1e-5 * scale, err_msg=name)
    assert int(params_e["thor.updates"]) == 3


def test_eager_pass_restores_graph_mode_when_it_fails(monkeypatch):
    """An error inside the op-by-op statistics pass leaves the process in graph mode, as it found it."""
    _, _, trainer = _build(4, steps=2, frequency=1, update_pass="eager")

    def fail(*_):
        assert ms.get_context("mode") == ms.PYNATIVE_MODE
        raise RuntimeError("inside the pass")

    monkeypatch.setattr(type(trainer.statistics), "construct", fail)
    with pytest.raises(RuntimeError, match="inside the pass"):
        trainer(*map(Tensor, _data()))
    assert ms.get_context("mode") == ms.GRAPH_MODE


def test_positions_written_again_after_a_checkpoint_load():
    """T comes from the compiled capture graph; a checkpoint loaded over it (sync_counters) is corrected at once."""
    _, opt, trainer = _build(4, steps=2, frequency=1)
    trainer(*map(Tensor, _data()))
    t = float(opt.positions[0].asnumpy())
    assert t > 1.0
    opt.positions[0].set_data(Tensor(99.0, ms.float32))  # as a checkpoint from other image sizes would
    trainer.sync_counters()
    assert float(opt.positions[0].asnumpy()) == t


@pytest.mark.parametrize("update_pass", ["statistics", "eager", "step"])
def test_every_graph_compiled_before_the_first_step_runs(monkeypatch, update_pass):
    """The first call compiles the run's graphs one after the other (capture graph, plain step, refresh), giving the
    freed heap back after each, before any of them runs (the step layout's preconditioned step at its first
    update; the eager layout's statistics pass never); later steps compile nothing."""
    import src.train_step as train_step

    _, opt, trainer = _build(4, steps=4, frequency=2, net_class=TinyBNNet, update_pass=update_pass)
    first = {"statistics": ["statistics"], "eager": [], "step": ["capture_gradients"]}[update_pass]
    names = first + ["plain_step", "refresh_factors"] + (["apply_step"] if update_pass == "step" else [])
    graphs = [getattr(trainer, name) for name in names]
    seen = []

    def release():
        seen.append(([len(g.compile_cache) for g in graphs], int(opt.global_step.asnumpy().reshape(-1)[0]),
                     int(opt.thor_updates.asnumpy())))
        return True

    monkeypatch.setattr(train_step, "release_free_heap", release)
    trainer(*map(Tensor, _data(seed=0)))  # an update step
    ahead = [([1, 0, 0], 0, 0), ([1, 1, 0], 0, 0), ([1, 1, 1], 0, 0)]
    if update_pass == "eager":
        ahead = [([1, 0], 0, 0), ([1, 1], 0, 0)]
    if update_pass == "step":
        ahead = [(counts + [0], *rest) for counts, *rest in ahead] + [([1, 1, 1, 1], 0, 1)]
    assert seen == ahead
    for step in range(1, 4):  # plain, update, plain
        trainer(*map(Tensor, _data(seed=step)))
    assert len(seen) == len(ahead)
    assert [len(g.compile_cache) for g in graphs] == [1] * len(graphs)
    assert int(opt.global_step.asnumpy().reshape(-1)[0]) == 4 and int(opt.thor_updates.asnumpy()) == 2


class _CountingNet(TinyBNNet):
    """TinyBNNet with a non-trainable counter that its forward moves: state the statistics pass cannot hold."""

    def __init__(self):
        super().__init__()
        self.seen = Parameter(Tensor(np.zeros(1, np.float32)), name="seen", requires_grad=False)

    def construct(self, x):
        x = ops.depend(x, ops.assign_add(self.seen, ops.ones(1, ms.float32)))
        return super().construct(x)


def test_statistics_pass_refuses_state_it_would_change():
    with pytest.raises(UserError, match="'seen'.*thor_update_pass: step"):
        _build(4, net_class=_CountingNet)
    _build(4, net_class=_CountingNet, update_pass="step")  # the step layout moves such state once anyway


def test_update_schedule_any_frequency_and_growth():
    np.testing.assert_array_equal(np.flatnonzero(thor_update_steps(10, 4, 3)), [0, 3, 6, 9])
    np.testing.assert_array_equal(np.flatnonzero(thor_update_steps(5, 5, 7)), [0])
    # interval doubles every epoch (4 steps/epoch): 0, +1 -> 1, +1 -> 2, +1 -> 3, (epoch 1) +2 -> 4, 6, (epoch 2) +4
    np.testing.assert_array_equal(np.flatnonzero(thor_update_steps(16, 4, 1, 2.0, 1)), [0, 1, 2, 3, 4, 6, 8, 12])
    np.testing.assert_array_equal(np.flatnonzero(thor_update_steps(16, 4, 1, 2.0, 1, max_interval=2)),
                                  [0, 1, 2, 3, 4, 6, 8, 10, 12, 14])


def test_trace_rule_refreshes_keeps_and_freezes():
    # w1 huge: after the first refresh nothing changes enough -> inverses kept
    _, opt, trainer = _build(8, lr=0.1, steps=3, mode="trace", w1=1e9, w2=0.0)
    for step in range(3):
        x, y = _data(seed=step)
        trainer(Tensor(x), Tensor(y))
        if step == 0:
            first = opt.a_inv[0].asnumpy().copy()
            assert trainer.last_update == (0, 2)
    assert trainer.last_update == (2, 0)
    np.testing.assert_array_equal(opt.a_inv[0].asnumpy(), first)
    # w1 = 0: every change refreshes; w2 huge: every layer freezes after its first update
    _, opt, trainer = _build(8, lr=0.1, steps=3, mode="trace", w1=0.0, w2=0.0)
    for step in range(3):
        trainer(*map(Tensor, _data(seed=step)))
    assert trainer.last_update == (2, 2)
    _, opt, trainer = _build(8, lr=0.1, steps=3, mode="trace", w1=0.0, w2=1e9)
    for step in range(3):
        trainer(*map(Tensor, _data(seed=step)))
    assert trainer.last_update == (2, 0)
    assert all(opt.layer_flags[l].asnumpy()[1] == 1.0 for l in range(2))


def _ill_conditioned_batches(steps, seed=0, batch=16):
    """Class patterns plus noise whose three input channels differ in scale by 10x and 100x."""
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 0.1, 0.01])[None, :, None, None]
    proto = rng.standard_normal((CLASSES, C, H, H))
    for _ in range(steps):
        y = rng.integers(0, CLASSES, batch)
        x = (proto[y] + 1.5 * rng.standard_normal((batch, C, H, H))) * scale
        yield Tensor(x.astype(np.float32)), Tensor(y.astype(np.int32))


def _final_loss(optimizer, lr, steps=80):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    net = TinyNet()
    lrs = Tensor(np.full(steps, lr, np.float32))
    if optimizer == "Momentum":
        cell = TrainStep(NetWithLoss(net, nn.CrossEntropyLoss()), nn.Momentum(net.trainable_params(), lrs, 0.9))
    else:
        layers = attach(net, split_dim=0)
        opt = Thor(net.trainable_params(), lrs, np.full(steps, 0.03), 0.9, layers)
        cell = ThorTrainer(NetWithLoss(net, nn.CrossEntropyLoss()), opt, thor_update_steps(steps, steps, 5))
    cell.set_train()
    losses = [float(cell(x, y)[0].asnumpy()) for x, y in _ill_conditioned_batches(steps)]
    return float(np.mean(losses[-20:]))


def test_thor_beats_momentum_in_the_same_steps():
    """Same seed, data and steps: THOR at one lr ends lower than Momentum at the best of three lrs."""
    thor = _final_loss("Thor", 0.03)
    momentum = {lr: _final_loss("Momentum", lr) for lr in (0.03, 0.1, 0.3)}
    print(f"last-20-step mean loss: THOR (lr 0.03) {thor:.3f}; Momentum "
          + ", ".join(f"(lr {lr}) {v:.3f}" for lr, v in momentum.items()))
    assert thor < 0.85 * min(momentum.values()), (thor, momentum)


def test_non_finite_factor_keeps_the_last_good_inverse():
    """An activation spike makes A of the conv layer overflow (x^2 > float32 max) while the gradients stay
    finite: that layer keeps its last good factor and inverse, the other layer refreshes, the step stays
    finite, and the event is counted and reported."""
    net, opt, trainer = _build(0, lr=0.01, steps=2, frequency=1)
    warnings = []
    trainer.warn = warnings.append
    trainer(*map(Tensor, _data(seed=0)))
    good_a, good_inv = opt.a_avg[0].asnumpy().copy(), opt.a_inv[0].asnumpy().copy()
    fc_inv = opt.g_inv[1].asnumpy().copy()
    assert np.isfinite(good_inv).all() and np.allclose(good_a, good_a.transpose(0, 2, 1))
    x, y = _data(seed=1)
    x[0, 0, 2, 2] = 1e20
    loss, overflow, _ = trainer(Tensor(x), Tensor(y))
    assert not bool(overflow.asnumpy())  # gradients were finite: the step was taken
    assert not np.isfinite(opt.a_stat[0].asnumpy()).all()  # the captured statistic did overflow
    np.testing.assert_array_equal(opt.a_avg[0].asnumpy(), good_a)
    np.testing.assert_array_equal(opt.a_inv[0].asnumpy(), good_inv)
    assert not np.array_equal(opt.g_inv[1].asnumpy(), fc_inv)  # the fc layer refreshed
    assert int(opt.thor_nonfinite.asnumpy()) == 1 and trainer.last_update == (1, 1)
    assert all(np.isfinite(p.asnumpy()).all() for p in net.trainable_params())
    assert len(warnings) == 1 and "1 layer(s) had non-finite factors" in warnings[0]

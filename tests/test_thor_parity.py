"""THOR in both conventions against a NumPy float64 simulation, the zoo recipe and loss against the zoo's
definitions (written out here), and the loss scale THOR undoes on a step where the dynamic scale changes.

The simulation runs several steps of the tiny net of test_thor.py (conv 3x3 stride 2 pad 1 on 6x6 inputs,
so T = 9 output positions per sample, and a Dense layer, T = 1): factors and inverses are recomputed on
update steps only, every step is preconditioned with the stored inverses, then weight decay and momentum
with a per-step lr and damping, as src/thor/optimizer.py documents.
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn
from test_thor import TinyNet, _blockdiag_inverse, _data, _reference, _softmax_grad

from src.config import parse_args
from src.optim import NetWithLoss, create_loss, param_groups
from src.schedules import thor_damping, thor_lr, thor_update_steps
from src.thor.capture import attach
from src.thor.optimizer import Thor
from src.thor.trainer import ThorTrainer

STEPS = 4
FREQUENCY = 2            # update steps 0 and 2; steps 1 and 3 reuse the stored inverses
LRS = np.array([0.3, 0.2, 0.25, 0.1])
DAMPINGS = np.array([0.05, 0.04, 0.02, 0.03])
MOMENTUM, WEIGHT_DECAY, LOSS_SCALE = 0.9, 0.01, 16.0
T_CONV = 9               # 6x6 input, 3x3 kernel, stride 2, pad 1 -> 3x3 outputs


def _damped_blockdiag_inverse(m, split, add):
    """Inverse of (each diagonal block of m) + add * I (test_thor's helper adds sqrt(damping) * I)."""
    return _blockdiag_inverse(m, split, add ** 2)


def _damping_terms(convention, lam, positions):
    """(added to A, added to G) per convention; ``positions`` = T of the layer."""
    if convention == "mindspore":
        return np.sqrt(lam / positions), np.sqrt(lam * positions)
    return np.sqrt(lam), np.sqrt(lam)


def _simulate(w_conv, w_fc, b_fc, batches, convention, split, decay_bias):
    """Float64 THOR over ``batches``; returns the final (w_conv, w_fc, b_fc)."""
    w = {"conv": w_conv.copy(), "fc": w_fc.copy()}
    b = b_fc.copy()
    acc = {name: np.zeros_like(v) for name, v in w.items()}
    acc_b = np.zeros_like(b)
    inv = {}
    for step, (x, y) in enumerate(batches):
        ref = _reference(w["conv"], w["fc"], b, x, y)
        grad_b = _softmax_grad(w["conv"], w["fc"], b, x, y).mean(0)
        if step % FREQUENCY == 0:  # update step: new factors, new damped inverses
            for name, positions in (("conv", T_CONV), ("fc", 1)):
                add_a, add_g = _damping_terms(convention, DAMPINGS[step], positions)
                inv[name] = (_damped_blockdiag_inverse(ref[f"A_{name}"], split, add_a),
                             _damped_blockdiag_inverse(ref[f"G_{name}"], split, add_g))
        for name in ("conv", "fc"):
            a_inv, g_inv = inv[name]
            d = (g_inv @ ref[f"dW_{name}"] @ a_inv).reshape(w[name].shape)
            d = d + WEIGHT_DECAY * w[name]  # weight decay after preconditioning, as MindSpore's THOR
            acc[name] = MOMENTUM * acc[name] + d
            w[name] = w[name] - LRS[step] * acc[name]
        if decay_bias:
            grad_b = grad_b + WEIGHT_DECAY * b
        acc_b = MOMENTUM * acc_b + grad_b  # the bias is not preconditioned
        b = b - LRS[step] * acc_b
    return w["conv"], w["fc"], b


def _build(convention, split, decay_bias, right_product="bmm"):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(3)
    net = TinyNet()
    layers = attach(net, split_dim=split)
    opt = Thor(param_groups(net, WEIGHT_DECAY, decay_bias), Tensor(LRS.astype(np.float32)),
               DAMPINGS.astype(np.float32), MOMENTUM, layers, convention=convention,
               right_product=right_product)
    trainer = ThorTrainer(NetWithLoss(net, nn.CrossEntropyLoss()), opt,
                          thor_update_steps(STEPS, STEPS, FREQUENCY), loss_scale=LOSS_SCALE)
    trainer.set_train()
    return net, opt, trainer


@pytest.mark.parametrize("convention, right_product", [("mindspore", "bmm"), ("kfac", "bmm"), ("mindspore", "conv")])
@pytest.mark.parametrize("split, decay_bias", [(0, False), (8, True)])
def test_thor_steps_match_the_float64_simulation(convention, right_product, split, decay_bias):
    net, opt, trainer = _build(convention, split, decay_bias, right_product)
    start = [p.asnumpy().astype(np.float64) for p in (net.conv.weight, net.fc.weight, net.fc.bias)]
    batches = [_data(seed=s) for s in range(STEPS)]
    for x, y in batches:
        _, overflow, _ = trainer(Tensor(x), Tensor(y))
        assert not bool(overflow.asnumpy())
    assert int(opt.thor_updates.asnumpy()) == 2  # steps 0 and 2
    assert float(opt.positions[0].asnumpy()) == T_CONV and float(opt.positions[1].asnumpy()) == 1.0
    expected = _simulate(*start, batches, convention, split, decay_bias)
    got = [p.asnumpy().astype(np.float64) for p in (net.conv.weight, net.fc.weight, net.fc.bias)]
    for name, g, e, s in zip(("conv", "fc", "bias"), got, expected, start):
        moved = np.abs(e - s).max()
        assert np.abs(g - e).max() <= 2e-4 * moved, (name, np.abs(g - e).max(), moved)


def test_mindspore_convention_is_what_thor_ascend_computes():
    """MindSpore's Ascend path, step by step as its code does it (Conv2dThor.construct / save_gradient and
    ThorAscend._get_ainv_ginv_amax_gmax_list / _get_second_grad_by_matmul), in float64 on the tiny conv
    layer, equals the mindspore row of the convention table."""
    rng = np.random.default_rng(1)
    n, t, d, o, scale, lam = 4, 9, 27, 5, 128.0, 0.03
    patches = rng.standard_normal((n * t, d))                    # img2col rows, a_normalizer = N*T
    per_sample_g = rng.standard_normal((n * t, o))               # dl_n / ds_{n,t}
    dout = scale / n * per_sample_g                              # what the backward hook sees (mean loss)
    dw = rng.standard_normal((o, d))
    a_normalizer = g_normalizer = n * t
    matrix_a_cov = patches.T @ patches / a_normalizer
    matrix_g_cov = dout.T @ dout / g_normalizer
    matrix_a = matrix_a_cov + np.sqrt(lam * n / a_normalizer) * np.eye(d)       # damping * batch / a_norm
    matrix_g = matrix_g_cov * (1 / scale ** 2) * n ** 2 + np.sqrt(lam * n / g_normalizer) * np.eye(o)
    theirs = np.linalg.inv(matrix_g) @ dw @ np.linalg.inv(matrix_a) * (n / a_normalizer)  # temp_max * batch / a_norm
    a = patches.T @ patches / (n * t)                            # our A
    g = per_sample_g.T @ per_sample_g / n                        # our G
    ours = np.linalg.inv(g + np.sqrt(lam * t) * np.eye(o)) @ dw @ np.linalg.inv(a + np.sqrt(lam / t) * np.eye(d))
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_the_conventions_differ_on_convolutions_only():
    """Same data and start: the conv step differs between conventions (T = 9), the Dense step does not
    on the first update (T = 1)."""
    steps = {}
    for convention in ("mindspore", "kfac"):
        net, _, trainer = _build(convention, 0, False)
        w0 = net.conv.weight.asnumpy().copy(), net.fc.weight.asnumpy().copy()
        trainer(*map(Tensor, _data(seed=0)))
        steps[convention] = (w0[0] - net.conv.weight.asnumpy(), w0[1] - net.fc.weight.asnumpy())
    conv_diff = np.abs(steps["mindspore"][0] - steps["kfac"][0]).max() / np.abs(steps["kfac"][0]).max()
    assert conv_diff > 0.05
    np.testing.assert_allclose(steps["mindspore"][1], steps["kfac"][1], rtol=1e-5, atol=1e-8)


# ---- the zoo's Ascend recipe and loss, written out from the zoo (official ResNet, config_thor_Ascend) ----

ZOO_THOR_ASCEND = {
    "batch_size": 32, "loss_scale": 128, "momentum": 0.9, "weight_decay": 5e-4, "epoch_size": 45,
    "label_smooth_factor": 0.1, "lr_init": 0.05803, "lr_decay": 4.04839, "lr_end_epoch": 53,
    "damping_init": 0.02714, "damping_decay": 0.50036, "frequency": 834,
}


def test_the_thor_recipe_is_the_zoo_ascend_run():
    cfg = parse_args(["--config_path", "config/resnet50_imagenet2012_thor.yaml"])
    for key, value in ZOO_THOR_ASCEND.items():
        assert cfg[key] == pytest.approx(value), key
    assert cfg.optimizer == "Thor" and cfg.thor_convention == "mindspore" and cfg.device_num == 8
    assert cfg.decay_bn_bias and cfg.use_label_smooth and cfg.label_smooth_mode == "zoo"
    assert cfg.lr_decay_mode == "thor" and cfg.decay_epochs == 39 and cfg.damping_total_epochs == 70
    assert cfg.loss_scale_mode == "fixed"
    # the zoo's schedules: get_thor_lr(0, lr_init, lr_decay, lr_end_epoch, steps, decay_epochs=39) and
    # get_thor_damping(0, damping_init, damping_decay, 70, steps), with e = (i + 1) / steps
    steps = 5004
    lr = thor_lr(cfg.lr_init, cfg.lr_decay, cfg.lr_end_epoch, cfg.decay_epochs, cfg.epoch_size, steps)
    damping = thor_damping(cfg.damping_init, cfg.damping_decay, cfg.epoch_size, steps, cfg.damping_total_epochs)
    for i in (0, 834, 5003, 39 * steps - 1, 39 * steps, 40 * steps, 45 * steps - 1):
        e = (i + 1) / steps
        zoo_lr = 0.05803 * (1 - e / 53) ** 4.04839 * (0.5 if e >= 39 else 1) * (0.5 if e >= 40 else 1)
        assert lr[i] == pytest.approx(zoo_lr, rel=1e-5), i
        assert damping[i] == pytest.approx(0.02714 * 0.50036 ** (e / 10), rel=1e-5), i


def _zoo_cross_entropy_smooth(logits, labels, eps, classes):
    """The zoo's CrossEntropySmooth: one-hot with on_value 1 - eps, off_value eps / (classes - 1), softmax
    cross entropy, mean over the batch."""
    target = np.full(logits.shape, eps / (classes - 1))
    target[np.arange(len(labels)), labels] = 1.0 - eps
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return float(-(target * logp).sum(1).mean())


def _uniform_smoothing(logits, labels, eps, classes):
    target = np.full(logits.shape, eps / classes)
    target[np.arange(len(labels)), labels] += 1.0 - eps
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return float(-(target * logp).sum(1).mean())


@pytest.mark.parametrize("mode, reference", [("zoo", _zoo_cross_entropy_smooth), ("uniform", _uniform_smoothing)])
def test_label_smoothing_modes(mode, reference):
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 7)) * 3
    labels = rng.integers(0, 7, 6)
    cfg = parse_args(["--class_num", "7", "--label_smooth_factor", "0.2", "--label_smooth_mode", mode])
    got = float(create_loss(cfg)(Tensor(logits.astype(np.float32)), Tensor(labels.astype(np.int32))).asnumpy())
    assert got == pytest.approx(reference(logits, labels, 0.2, 7), rel=1e-5)
    other = _uniform_smoothing if mode == "zoo" else _zoo_cross_entropy_smooth
    assert abs(got - other(logits, labels, 0.2, 7)) > 1e-3  # the two modes are different losses


# ---- dynamic loss scale on THOR update steps ---------------------------------------------------------------

def _thor_with_scale(window, steps=3, frequency=3):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(5)
    net = TinyNet()
    layers = attach(net, split_dim=0)
    opt = Thor(net.trainable_params(), Tensor(np.full(steps, 0.05, np.float32)), np.full(steps, 0.03, np.float32),
               0.0, layers)
    trainer = ThorTrainer(NetWithLoss(net, nn.CrossEntropyLoss()), opt,
                          thor_update_steps(steps, steps, frequency), loss_scale=64.0, dynamic=True, window=window)
    trainer.set_train()
    return opt, trainer


def test_g_is_unscaled_with_the_scale_the_step_ran_with():
    """window 1: the scale doubles after the first (update) step. G must not see the doubled scale (it was 4x
    too small when the scale was updated before the optimizer)."""
    x, y = map(Tensor, _data(seed=0))
    g = {}
    for window in (1, 1000):
        opt, trainer = _thor_with_scale(window)
        _, overflow, scale = trainer(x, y)
        assert not bool(overflow.asnumpy()) and float(scale.asnumpy()) == 64.0
        assert float(trainer.plain_step.loss_scale.asnumpy()) == (128.0 if window == 1 else 64.0)
        g[window] = opt.g_avg[0].asnumpy().copy()
    np.testing.assert_allclose(g[1], g[1000], rtol=1e-5)


def test_an_overflow_on_an_update_step_refreshes_on_the_next_finite_step():
    opt, trainer = _thor_with_scale(1000)
    x, y = _data(seed=0)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    _, overflow, _ = trainer(Tensor(bad), Tensor(y))
    assert bool(overflow.asnumpy()) and int(opt.thor_updates.asnumpy()) == 0
    assert int(opt.global_step.asnumpy().reshape(-1)[0]) == 0  # the skipped step did not advance
    _, overflow, _ = trainer(Tensor(x), Tensor(y))
    assert not bool(overflow.asnumpy())
    assert int(opt.thor_updates.asnumpy()) == 1 and trainer.last_update[0] == 0
    assert np.isfinite(opt.g_inv[0].asnumpy()).all()

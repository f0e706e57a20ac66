"""The loss-scaled training step: scaling changes nothing but the float16 range; overflows are skipped."""
import mindspore as ms
import numpy as np
from mindspore import nn

from src.optim import NetWithLoss, create_loss, create_optimizer, create_train_cell
from src.resnet import network_from_config
from src.train_step import TrainStep


def _train(cfg, steps=3, seed=0):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(1)
    net = network_from_config(cfg)
    lr = np.full(max(steps, 2), 0.05, np.float32)
    cell = create_train_cell(cfg, NetWithLoss(net, create_loss(cfg)), create_optimizer(cfg, net, lr), len(lr))
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        x = ms.Tensor(rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
        y = ms.Tensor(rng.integers(0, 3, 4).astype(np.int32))
        loss, overflow, _ = cell(x, y)
        assert not bool(overflow.asnumpy())
        losses.append(float(loss.asnumpy()))
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}, losses


def test_loss_scale_changes_nothing_but_the_range(tiny_cfg):
    plain, l1 = _train(tiny_cfg("--loss_scale", "1"))
    scaled, l2 = _train(tiny_cfg("--loss_scale", "1024"))
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for name, value in plain.items():
        np.testing.assert_allclose(scaled[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    # and training did move the weights (the zoo's CPU bug made updates 1024x too small)
    init, _ = _train(tiny_cfg("--loss_scale", "1"), steps=0)
    assert np.abs(plain["conv1.weight"] - init["conv1.weight"]).max() > 1e-3


class _Tiny(nn.Cell):
    def __init__(self):
        super().__init__()
        self.fc = nn.Dense(4, 2)

    def construct(self, x):
        return self.fc(x)


def test_overflow_step_is_skipped_and_dynamic_scale_adapts():
    ms.set_context(mode=ms.GRAPH_MODE)
    net = _Tiny()
    opt = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9)
    cell = TrainStep(NetWithLoss(net, nn.CrossEntropyLoss()), opt, loss_scale=64.0, dynamic=True, window=2)
    cell.set_train()
    y = ms.Tensor(np.array([0, 1], np.int32))
    good = ms.Tensor(np.ones((2, 4), np.float32))
    bad = ms.Tensor(np.array([[np.inf, 1, 1, 1], [1, 1, 1, 1]], np.float32))
    before = net.fc.weight.asnumpy().copy()
    _, overflow, scale = cell(bad, y)
    assert bool(overflow.asnumpy()) and float(scale.asnumpy()) == 64.0
    np.testing.assert_array_equal(net.fc.weight.asnumpy(), before)  # skipped
    assert float(cell.loss_scale.asnumpy()) == 32.0  # halved
    for _ in range(2):
        _, overflow, _ = cell(good, y)
        assert not bool(overflow.asnumpy())
    assert float(cell.loss_scale.asnumpy()) == 64.0  # doubled after `window` good steps
    assert not np.array_equal(net.fc.weight.asnumpy(), before)


def test_each_new_input_shape_is_compiled_ahead_of_its_run(monkeypatch):
    """The first call, and the first call with inputs of another shape (a smaller last batch), compile the step's
    graph and give the freed heap back before it runs; the step counter shows nothing ran yet at each release."""
    import src.train_step as train_step

    ms.set_context(mode=ms.GRAPH_MODE)
    net = _Tiny()
    opt = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9)
    cell = TrainStep(NetWithLoss(net, nn.CrossEntropyLoss()), opt)
    cell.set_train()
    seen = []

    def release():
        seen.append((len(cell.compile_cache), int(opt.global_step.asnumpy().reshape(-1)[0])))
        return True

    monkeypatch.setattr(train_step, "release_free_heap", release)
    rng = np.random.default_rng(0)

    def batch(n):
        return (ms.Tensor(rng.standard_normal((n, 4)).astype(np.float32)),
                ms.Tensor(rng.integers(0, 2, n).astype(np.int32)))

    cell(*batch(4))
    cell(*batch(4))
    assert seen == [(1, 0)]
    cell(*batch(2))  # a new shape: compiled before its first run
    cell(*batch(2))
    assert seen == [(1, 0), (2, 2)]
    assert int(opt.global_step.asnumpy().reshape(-1)[0]) == 4

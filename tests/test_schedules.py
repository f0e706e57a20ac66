import numpy as np
import pytest

from src.schedules import lr_batch_scaling, lr_from_config, thor_damping, thor_lr, warmup_lr


def test_linear_warmup_then_linear_decay_by_hand():
    # 2 epochs x 4 steps, 1 warm-up epoch: warm-up 0, .2, .4, .6 then .8 - .8 * (i - 4) / 4
    lr = warmup_lr(0.0, 0.8, 0.0, 1, 2, 4, "linear")
    assert lr.dtype == np.float32
    np.testing.assert_allclose(lr, [0.0, 0.2, 0.4, 0.6, 0.8, 0.6, 0.4, 0.2], rtol=1e-6)


def test_zoo_recipe_first_and_last_values():
    lr = warmup_lr(0.0, 0.8, 0.0, 2, 90, 5004, "linear")
    assert len(lr) == 90 * 5004
    assert lr[0] == 0.0 and lr[10008] == pytest.approx(0.8)
    assert lr[-1] == pytest.approx(0.8 / (88 * 5004), rel=1e-4)


def test_other_decay_modes_by_hand():
    cos = warmup_lr(0.0, 1.0, 0.0, 0, 1, 4, "cosine")
    np.testing.assert_allclose(cos, [1.0, (1 + np.cos(np.pi / 4)) / 2, 0.5, (1 + np.cos(3 * np.pi / 4)) / 2],
                               rtol=1e-6)
    poly = warmup_lr(0.0, 1.0, 0.0, 0, 1, 4, "poly")
    np.testing.assert_allclose(poly, [1.0, 0.5625, 0.25, 0.0625], rtol=1e-6)
    steps = warmup_lr(0.0, 1.0, 0.0, 0, 10, 1, "steps")
    np.testing.assert_allclose(steps, [1, 1, 1, .1, .1, .1, .01, .01, .001, .001], rtol=1e-5)
    np.testing.assert_allclose(warmup_lr(0.1, 1.0, 0.0, 1, 2, 2, "constant"), [0.1, 0.55, 1.0, 1.0], rtol=1e-6)


def test_thor_lr_by_hand():
    # e = (i + 1) / 2; lr = 0.1 * (1 - e / 4) ** 2, halved at e >= 2, again at e >= 3
    lr = thor_lr(0.1, 2.0, 4, 2, 4, 2)
    expected = []
    for i in range(8):
        e = (i + 1) / 2
        v = 0.1 * (1 - e / 4) ** 2
        v *= 0.5 if e >= 2 else 1.0
        v *= 0.5 if e >= 3 else 1.0
        expected.append(v)
    np.testing.assert_allclose(lr, expected, rtol=1e-6)
    assert lr[0] == pytest.approx(0.1 * 0.875 ** 2) and lr[-1] == 0.0


def test_thor_zoo_recipe_values():
    lr = thor_lr(0.05803, 4.0839, 53, 39, 45, 5004)
    assert lr[0] == pytest.approx(0.05803 * (1 - 1 / 5004 / 53) ** 4.0839, rel=1e-5)
    e = 39.0
    assert lr[39 * 5004 - 1] == pytest.approx(0.05803 * (1 - e / 53) ** 4.0839 * 0.5, rel=1e-5)


def test_thor_damping_by_hand_and_horizon():
    d = thor_damping(0.03, 0.5, 30, 1)
    np.testing.assert_allclose(d[[0, 9, 19, 29]], [0.03 * 0.5 ** 0.1, 0.015, 0.0075, 0.00375], rtol=1e-5)
    capped = thor_damping(0.03, 0.5, 30, 1, horizon_epochs=20)
    np.testing.assert_allclose(capped[19:], 0.0075, rtol=1e-5)
    floored = thor_damping(0.03, 0.5, 30, 1, floor=0.01)  # 0.03 * 0.5^(e/10) < 0.01 from e = 16 (0.0099)
    np.testing.assert_allclose(floored[[0, 9, 14, 15, 29]], [0.03 * 0.5 ** 0.1, 0.015, 0.03 * 0.5 ** 1.5, 0.01, 0.01],
                               rtol=1e-5)


def test_lr_from_config_uses_the_mode(tiny_cfg):
    cfg = tiny_cfg("--epoch_size", "3", "--lr_decay_mode", "cosine", "--warmup_epochs", "1", "--lr_max", "0.4")
    lr = lr_from_config(cfg, 5)
    assert len(lr) == 15 and lr[5] == pytest.approx(0.4) and lr[0] == 0.0


def test_lr_for_another_global_batch_is_warned_about_or_scaled_linearly(tiny_cfg):
    assert lr_batch_scaling(2048, 2048, "none") == (1.0, None)
    assert lr_batch_scaling(0, 4, "linear") == (1.0, None)  # nothing recorded: nothing to compare
    factor, note = lr_batch_scaling(2048, 4, "none")
    assert factor == 1.0 and "tuned for a global batch of 2048, this run's is 4" in note
    factor, note = lr_batch_scaling(2048, 256, "linear")
    assert factor == 0.125 and "x 0.125" in note
    cfg = tiny_cfg("--epoch_size", "2", "--lr_decay_mode", "linear", "--warmup_epochs", "1", "--lr_max", "0.8")
    np.testing.assert_allclose(lr_from_config(cfg, 4, 0.125),
                               0.125 * np.array([0.0, 0.2, 0.4, 0.6, 0.8, 0.6, 0.4, 0.2]), rtol=1e-6)

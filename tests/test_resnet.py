import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.errors import UserError
from src.resnet import create_network


def test_resnet50_parameter_count_and_zoo_names():
    net = create_network("resnet50", 1000)
    assert sum(p.size for p in net.trainable_params()) == 25_557_032
    names = {p.name for p in net.get_parameters()}
    for name in ["conv1.weight", "bn1.gamma", "bn1.beta", "bn1.moving_mean", "bn1.moving_variance",
                 "layer1.0.conv1.weight", "layer1.0.conv3.weight", "layer1.0.down_sample_layer.0.weight",
                 "layer1.0.down_sample_layer.1.gamma", "layer4.2.bn3.moving_variance", "end_point.weight",
                 "end_point.bias"]:
        assert name in names
    assert not any("bias" in n for n in names if n.startswith(("conv", "layer")))


def test_v15_stride_on_the_3x3_and_symmetric_padding():
    net = create_network("resnet50", 10)
    block = net.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2) and block.conv3.stride == (1, 1)
    assert block.conv2.kernel_size == (3, 3) and block.conv2.padding == 1 and block.conv2.pad_mode == "pad"
    assert block.down_sample_layer[0].stride == (2, 2)
    assert net.conv1.kernel_size == (7, 7) and net.conv1.padding == 3 and net.conv1.stride == (2, 2)
    assert all(c.eps == pytest.approx(1e-5) for c in net.cells_and_names() if isinstance(c, nn.BatchNorm2d))
    assert net.end_point.has_bias


@pytest.mark.parametrize("name, feats", [("resnet18", 32), ("resnet34", 32), ("resnet50", 128), ("resnet101", 128)])
def test_output_shapes(name, feats):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = create_network(name, class_num=7, base_width=4)
    net.set_train(False)
    out = net(ms.Tensor(np.random.rand(2, 3, 32, 32).astype(np.float32)))
    assert out.shape == (2, 7)
    assert net.num_features == feats


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("size", [9, 10])
def test_stem_maxpool_matches_symmetric_padding(training, size):
    # Training (padded pool) and inference (zero rows/columns + valid pool) forms, on non-negative input:
    # both equal a 3x3/2 pool with -inf padding 1, for odd and even sizes.
    ms.set_context(mode=ms.GRAPH_MODE)
    net = create_network("resnet18", 3, base_width=4)
    net.maxpool.set_train(training)
    x = np.random.default_rng(size).random((2, 4, size, size)).astype(np.float32)
    got = net.maxpool(ms.Tensor(x)).asnumpy()
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    out = (size + 2 - 3) // 2 + 1
    ref = np.array([[[[padded[n, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max() for j in range(out)]
                      for i in range(out)] for c in range(4)] for n in range(2)])
    np.testing.assert_array_equal(got, ref)


def test_init_and_zero_init_residual():
    net = create_network("resnet50", 10, base_width=8, zero_init_residual=True)
    assert np.all(net.layer1[0].bn3.gamma.asnumpy() == 0) and np.all(net.layer1[0].bn1.gamma.asnumpy() == 1)
    w = net.layer3[0].conv2.weight.asnumpy()  # kaiming normal, fan_out = out * 3 * 3
    expected_std = np.sqrt(2.0 / (w.shape[0] * 9))
    assert abs(w.std() / expected_std - 1) < 0.15
    plain = create_network("resnet50", 10, base_width=8)
    assert np.all(plain.layer1[0].bn3.gamma.asnumpy() == 1)


def test_unknown_network_is_a_user_error():
    with pytest.raises(UserError, match="unknown net_name 'resnet7'"):
        create_network("resnet7")


def test_cifar_stems_keep_more_resolution_into_layer1():
    # 3x3 stem without max-pool: layer1 sees 32x32 (stride 1) or 16x16 (stride 2), the ImageNet stem 8x8;
    # the body and its parameter names are unchanged, only conv1's kernel differs.
    ms.set_context(mode=ms.PYNATIVE_MODE)
    cifar = create_network("resnet50", 10, base_width=4, stem="cifar")
    cifar_s2 = create_network("resnet50", 10, base_width=4, stem="cifar_s2")
    imagenet = create_network("resnet50", 10, base_width=4)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1) and cifar.conv1.padding == 1
    assert cifar_s2.conv1.kernel_size == (3, 3) and cifar_s2.conv1.stride == (2, 2) and cifar_s2.conv1.padding == 1
    shapes = {}
    for name, net in (("cifar", cifar), ("cifar_s2", cifar_s2), ("imagenet", imagenet)):
        net.set_train(False)
        x = ms.Tensor(np.random.rand(2, 3, 32, 32).astype(np.float32))
        stem = net.relu(net.bn1(net.conv1(x)))
        shapes[name] = (net.maxpool(stem) if net.pool_stem else stem).shape
        assert net(x).shape == (2, 10)
    assert shapes == {"cifar": (2, 4, 32, 32), "cifar_s2": (2, 4, 16, 16), "imagenet": (2, 4, 8, 8)}
    names = lambda n: {p.name for p in n.get_parameters()}  # noqa: E731
    assert names(cifar) == names(imagenet)
    with pytest.raises(UserError, match="unknown stem 'tiny'"):
        create_network("resnet50", 10, stem="tiny")

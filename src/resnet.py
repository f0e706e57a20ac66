"""ResNet v1.5 (He et al. 2016, with the stride on the 3x3 convolution of the bottleneck).

Parameter names follow the MindSpore model zoo ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.down_sample_layer.0``, ``end_point``) so zoo checkpoints and habits carry over.
Padding is symmetric (7x7 stem pad 3, 3x3 pad 1, max-pool 3x3/2 pad 1), BatchNorm eps is 1e-5, the head
is a global average pool and a Dense layer with bias. ``resnet50(1000)`` has 25,557,032 trainable
parameters, like torchvision's resnet50.

``base_width`` scales every stage (64 is the standard network); tests use tiny widths.

``stem="cifar"`` replaces the ImageNet stem (7x7/2 convolution and 3x3/2 max-pool, which shrink the input 4x
before layer1) by a 3x3 stride-1 convolution without pooling, the usual choice for 32x32 images: layer1 then
sees 32x32 maps instead of 8x8. ``stem="cifar_s2"`` is the same convolution with stride 2 (layer1 at 16x16: a
quarter of the ``cifar`` stem's compute in every stage). The body (3-4-6-3, v1.5 strides) is the same.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mindspore import Tensor, nn, ops
from mindspore.common.initializer import HeNormal, HeUniform, Uniform

from src.errors import UserError

if TYPE_CHECKING:
    from easydict import EasyDict


def _conv(in_ch, out_ch, kernel, stride=1):
    return nn.Conv2d(in_ch, out_ch, kernel_size=kernel, stride=stride, pad_mode="pad",
                     padding=kernel // 2, has_bias=False,
                     weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))


def _bn(channels, zero_gamma=False):
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.9,
                          gamma_init="zeros" if zero_gamma else "ones")


class BasicBlock(nn.Cell):
    """Two 3x3 convolutions (ResNet-18/34)."""
    expansion = 1

    def __init__(self, in_channel, channel, stride=1, zero_init_residual=False):
        super().__init__()
        out_channel = channel * self.expansion
        self.conv1 = _conv(in_channel, channel, 3, stride)
        self.bn1 = _bn(channel)
        self.conv2 = _conv(channel, out_channel, 3)
        self.bn2 = _bn(out_channel, zero_init_residual)
        self.relu = nn.ReLU()
        self.down_sample = stride != 1 or in_channel != out_channel
        if self.down_sample:
            self.down_sample_layer = nn.SequentialCell([_conv(in_channel, out_channel, 1, stride), _bn(out_channel)])

    def construct(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.down_sample:
            identity = self.down_sample_layer(identity)
        return self.relu(out + identity)


class Bottleneck(nn.Cell):
    """1x1 -> 3x3 (carries the stride: v1.5) -> 1x1, expansion 4 (ResNet-50/101)."""
    expansion = 4

    def __init__(self, in_channel, channel, stride=1, zero_init_residual=False):
        super().__init__()
        out_channel = channel * self.expansion
        self.conv1 = _conv(in_channel, channel, 1)
        self.bn1 = _bn(channel)
        self.conv2 = _conv(channel, channel, 3, stride)
        self.bn2 = _bn(channel)
        self.conv3 = _conv(channel, out_channel, 1)
        self.bn3 = _bn(out_channel, zero_init_residual)
        self.relu = nn.ReLU()
        self.down_sample = stride != 1 or in_channel != out_channel
        if self.down_sample:
            self.down_sample_layer = nn.SequentialCell([_conv(in_channel, out_channel, 1, stride), _bn(out_channel)])

    def construct(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.down_sample:
            identity = self.down_sample_layer(identity)
        return self.relu(out + identity)


def zero_pad_hw(x: Tensor) -> Tensor:
    """Pad the last two axes of NCHW ``x`` by one zero row/column on each side, by concatenation (on
    MindSpore 2.10's CPU backend far faster than nn.Pad, and exportable to ONNX)."""
    n, c, h, w = x.shape
    rows = ops.zeros((n, c, 1, w), x.dtype)
    x = ops.concat((rows, x, rows), 2)
    cols = ops.zeros((n, c, h + 2, 1), x.dtype)
    return ops.concat((cols, x, cols), 3)


class StemMaxPool(nn.Cell):
    """The stem's 3x3/2 max-pool with symmetric padding 1, on non-negative input (it follows a ReLU), where
    zero padding equals -inf padding. Two equal forms, picked by the fastest kernels of MindSpore 2.10's CPU
    backend (python -m benchmarks.stem_pool, full-width stem at 224x224 batch 16): training uses the padded
    pool (forward + backward 174 ms, against 543 ms for nn.Pad + valid pool); inference and export pad by
    concatenating zero rows and columns, then pool 'valid' (58 ms, against 136 ms for the padded pool and
    371 ms with nn.Pad), which also exports to ONNX (a padded max-pool does not in 2.10)."""

    def __init__(self):
        super().__init__()
        self.pool_padded = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
        self.pool_valid = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")

    def construct(self, x):
        if self.training:
            return self.pool_padded(x)
        return self.pool_valid(zero_pad_hw(x))


class ResNet(nn.Cell):
    """ResNet backbone and classifier. Input NCHW float32, output logits (N, class_num)."""

    def __init__(self, block, layer_nums, class_num=1000, base_width=64, zero_init_residual=False,
                 stem="imagenet"):
        super().__init__()
        if stem not in STEMS:
            raise UserError(f"unknown stem {stem!r}; expected one of {', '.join(STEMS)}")
        widths = [base_width, base_width * 2, base_width * 4, base_width * 8]
        self.pool_stem = stem == "imagenet"
        self.conv1 = _conv(3, base_width, 7, stride=2) if self.pool_stem else \
            _conv(3, base_width, 3, stride=2 if stem == "cifar_s2" else 1)
        self.bn1 = _bn(base_width)
        self.relu = nn.ReLU()
        self.maxpool = StemMaxPool() if self.pool_stem else nn.Identity()
        in_channel = base_width
        stages = []
        for i, (width, num) in enumerate(zip(widths, layer_nums)):
            blocks = []
            for j in range(num):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_channel, width, stride, zero_init_residual))
                in_channel = width * block.expansion
            stages.append(nn.SequentialCell(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = in_channel
        # torchvision-style default Dense init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
        bound = 1.0 / math.sqrt(in_channel)
        self.end_point = nn.Dense(in_channel, class_num, has_bias=True,
                                  weight_init=HeUniform(negative_slope=math.sqrt(5)),
                                  bias_init=Uniform(scale=bound))

    def construct(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.pool_stem:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = ops.mean(x, (2, 3), keep_dims=False)
        return self.end_point(x)


STEMS = ("imagenet", "cifar", "cifar_s2")

_ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def create_network(net_name: str = "resnet50", class_num: int = 1000, base_width: int = 64,
                   zero_init_residual: bool = False, stem: str = "imagenet") -> nn.Cell:
    """Factory used by train.py, eval.py and export.py."""
    if net_name not in _ARCHS:
        raise UserError(f"unknown net_name {net_name!r}; expected one of {', '.join(_ARCHS)}")
    block, layers = _ARCHS[net_name]
    return ResNet(block, layers, class_num=class_num, base_width=base_width,
                  zero_init_residual=zero_init_residual, stem=stem)


def network_from_config(cfg: EasyDict) -> nn.Cell:
    return create_network(cfg.net_name, cfg.class_num, cfg.base_width, cfg.zero_init_residual, cfg.stem)

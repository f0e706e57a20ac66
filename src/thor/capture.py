"""Per-layer statistics capture for THOR (Kronecker factors of the Fisher block of a Conv2d or Dense layer).

For a layer with weight W (out x in*kh*kw after reshaping), on an update step:

  A = (1 / (N*T)) * sum_{n,t} a_{n,t} a_{n,t}^T
      a_{n,t}: the input patch (im2col column, C*kh*kw wide) of sample n at output position t;
      T = number of output positions (1 for Dense). Captured in the forward pass.

  G = (1 / N) * sum_n sum_t g_{n,t} g_{n,t}^T,   g_{n,t} = dl_n / ds_{n,t}
      the gradient of the *unscaled per-sample* loss l_n w.r.t. the layer output s at position t.
      The backward pass sees dout = (S / N) * g (loss scale S, batch-mean 1/N), so N * sum dout dout^T = S^2 * G.
      Captured with ops.InsertGradientOf.

The capture graph stores the sums only (``thor_a`` = sum a a^T, ``thor_g`` = sum dout dout^T); the refresh
(optimizer.py) multiplies them by ``thor_a_scale`` = 1/(N*T) and ``thor_g_scale`` = N, then divides G by S^2: the
same float32 multiplications the capture graph did before, in the same order, so the factors are unchanged to the
last bit. A multiplication inside the backward hook cost the statistics pass's compiled graph about 55 MiB of
resident memory for ResNet-50 (one per layer; the same multiplication in the forward costs nothing measurable;
docs/performance.md).

The layer also records T (``thor_positions``; output positions per sample, H_out * W_out for a convolution,
1 for Dense), which the ``mindspore`` convention of optimizer.py uses to split the damping, and the two scales.
T and N are fixed by the shapes the capture graph is compiled for, so they are noted in Python while that graph
compiles (``_note_shape``, a ``constexpr``, runs then) and written to the parameters by ``sync_shapes`` after the
graph's call, rather than assigned by the graph at every update step: the statistics pass's kernel graph has 3427
nodes for ResNet-50 instead of 3585 (python -m benchmarks.thor_graphs), and a compiled graph keeps memory per node
(python -m benchmarks.graph_memory). They are derived values: a resumed run does not load them from its checkpoint
(``DERIVED_PREFIX``; the positions are written again anyway).

Then F ~= A (x) G (KFC, Grosse & Martens 2016: positions assumed independent, spatially homogeneous),
and vec(dW) is preconditioned as G^-1 dW A^-1. Only the diagonal blocks of A and G are formed
(``split_dim``; see blocks.py), so capture costs N*T*D*b flops, not N*T*D^2. A convolution's patches are
taken as (N, C*kh*kw, T) (a reshape for a 1x1 stride-1 conv, ``ops.unfold`` otherwise) and its output
gradient as (N, O, T), the layouts MindSpore already holds; only the small ones (T < the block size) are
copied, to put the samples side by side (blocks.sample_block_gram).

Capture happens only in the graph compiled while ``thor_capture`` is True (the update-step graph); the
other graph contains no statistics work at all. The statistics are computed from ``stop_gradient`` of the layer
input: without it, the backward differentiates through them (the kernel graph held the gradient's reshapes and
products of every layer's A, all zeros).
"""
from __future__ import annotations

import fnmatch
import itertools
from typing import TYPE_CHECKING

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.ops import constexpr

from src.errors import UserError
from src.thor.blocks import RESHAPE, block_gram, block_layout, sample_block_gram

if TYPE_CHECKING:
    from collections.abc import Sequence


# (T, N) per capturing layer (its ``thor_token``), as the capture graph last compiled saw them
_COMPILED_SHAPES = {}
_TOKENS = itertools.count()
# names of the statistics' scales start with this; resume does not load them (sync_shapes writes them)
DERIVED_PREFIX = "thor.scale."


@constexpr(reuse_result=False)
def _note_shape(token, positions, batch):
    """Runs in Python while a capture graph is compiled, with the layer's T and N as constants."""
    _COMPILED_SHAPES[token] = (positions, batch)
    return positions


def statistic_scales(positions: int, batch: int) -> tuple[np.float32, np.float32]:
    """``(1 / (N * T), N)`` in float32: what the refresh multiplies the sums A and G by (as the capture graph used
    to: a Python float times a float32 tensor is that float rounded to float32, then a float32 product)."""
    return np.float32(1.0 / (batch * positions)), np.float32(batch)


def sync_shapes(layers: Sequence[nn.Cell], force: bool = False) -> None:
    """Write each layer's T and the scales of its statistics, as its capture graph was compiled for, to
    ``thor_positions``, ``thor_a_scale`` and ``thor_g_scale`` (call after that graph's first call; the parameters
    are written only when the shapes change, or always with ``force``: after a checkpoint was loaded over them)."""
    for cell in layers:
        shape = _COMPILED_SHAPES.get(cell.thor_token)
        if shape is not None and (force or shape != cell.thor_shape_written):
            positions, batch = shape
            a_scale, g_scale = statistic_scales(positions, batch)
            cell.thor_positions.set_data(Tensor(float(positions), ms.float32))
            cell.thor_a_scale.set_data(Tensor(a_scale))
            cell.thor_g_scale.set_data(Tensor(g_scale))
            cell.thor_shape_written = shape


class _CaptureMixin:
    """Attributes and hooks shared by the capturing Conv2d and Dense."""

    def _thor_setup(self, name, d_in, d_out, split_dim):
        self.thor_name = name
        self.thor_token = f"{name}#{next(_TOKENS)}"  # unique in the process, across networks
        self.thor_shape_written = None
        self.thor_capture = False
        self.thor_dims = (d_in, d_out)
        self.thor_a_layout = block_layout(d_in, split_dim)
        self.thor_g_layout = block_layout(d_out, split_dim)
        nba, ba = self.thor_a_layout
        nbg, bg = self.thor_g_layout
        self.thor_a = Parameter(Tensor(np.zeros((nba, ba, ba), np.float32)), name=f"thor.{name}.a_stat",
                                requires_grad=False)
        self.thor_g = Parameter(Tensor(np.zeros((nbg, bg, bg), np.float32)), name=f"thor.{name}.g_stat",
                                requires_grad=False)
        self.thor_positions = Parameter(Tensor(1.0, ms.float32), name=f"thor.{name}.positions", requires_grad=False)
        self.thor_a_scale = Parameter(Tensor(1.0, ms.float32), name=f"{DERIVED_PREFIX}{name}.a", requires_grad=False)
        self.thor_g_scale = Parameter(Tensor(1.0, ms.float32), name=f"{DERIVED_PREFIX}{name}.g", requires_grad=False)
        self.thor_g_hook = ops.InsertGradientOf(self._thor_save_g)

    def _thor_record_a(self, x, stat, positions):
        """Store sum a a^T (diagonal blocks) and note T = ``positions`` and N; returns ``x`` ordered after the
        store."""
        _note_shape(self.thor_token, positions, x.shape[0])
        return ops.depend(x, ops.assign(self.thor_a, stat))

    def _thor_save_g(self, dout):
        """Store sum dout dout^T (diagonal blocks; S^2 * G / N); no scale here (see the module docstring)."""
        nbg, bg = self.thor_g_layout
        if len(dout.shape) == 4:  # (N, O, H, W) -> (N, O, L): a reshape, no transpose
            stat = sample_block_gram(RESHAPE(dout, (dout.shape[0], dout.shape[1], -1)), nbg, bg)
        else:
            stat = block_gram(dout, nbg, bg)
        return ops.depend(dout, ops.assign(self.thor_g, stat))


class CaptureConv2d(nn.Conv2d, _CaptureMixin):
    """nn.Conv2d that records A (forward) and S^2*G (backward) when compiled with ``thor_capture``."""

    def _input_patches(self, x):
        """(N, C*kh*kw, L): the input patch of every output position, C outermost like the weight reshape."""
        kh, kw = self.kernel_size
        sh, sw = self.stride
        if kh == 1 and kw == 1 and self.thor_pad == 0 and sh == 1 and sw == 1:
            return RESHAPE(x, (x.shape[0], x.shape[1], -1))
        return ops.unfold(x, (kh, kw), 1, self.thor_pad, (sh, sw))

    def _capture_a(self, x):
        patches = self._input_patches(ops.stop_gradient(ops.cast(x, ms.float32)))
        nba, ba = self.thor_a_layout
        return self._thor_record_a(x, sample_block_gram(patches, nba, ba), patches.shape[2])

    def construct(self, x):
        if self.thor_capture:
            x = self._capture_a(x)
        out = self.conv2d(x, self.weight)
        if self.has_bias:
            out = self.bias_add(out, self.bias)
        if self.thor_capture:
            out = self.thor_g_hook(out)
        return out


class CaptureDense(nn.Dense, _CaptureMixin):
    """nn.Dense (2-D input, no activation) that records A and S^2*G when compiled with ``thor_capture``."""

    def construct(self, x):
        if self.thor_capture:
            x = self._thor_record_a(x, block_gram(ops.stop_gradient(x), *self.thor_a_layout), 1)
        out = self.matmul(x, self.weight)
        if self.has_bias:
            out = self.bias_add(out, self.bias)
        if self.thor_capture:
            out = self.thor_g_hook(out)
        return out


def _conv_padding(cell, name):
    if cell.group != 1 or tuple(cell.dilation) not in ((1, 1), (1, 1, 1, 1)):
        raise UserError(f"THOR: layer '{name}' uses groups or dilation, which THOR does not support; "
                        f"add it to thor_skip_layers")
    if cell.pad_mode == "valid":
        return 0
    if cell.pad_mode == "pad":
        pad = cell.padding
        if isinstance(pad, (tuple, list)):
            if len(set(pad)) != 1:
                raise UserError(f"THOR: layer '{name}' has asymmetric padding {pad}; add it to thor_skip_layers")
            pad = pad[0]
        return int(pad)
    raise UserError(f"THOR: layer '{name}' uses pad_mode '{cell.pad_mode}'; use 'pad' or add it to thor_skip_layers")


def attach(network: nn.Cell, skip_patterns: Sequence[str] = (), split_dim: int = 128) -> list[nn.Cell]:
    """Turn every Conv2d and Dense of ``network`` whose name matches none of ``skip_patterns`` (fnmatch,
    e.g. ``end_point`` or ``layer4.*``) into a capturing layer. Parameter names are unchanged.
    Returns the list of capturing cells in network order."""
    layers = []
    for name, cell in network.cells_and_names():
        if not name or any(fnmatch.fnmatchcase(name, p) for p in skip_patterns):
            continue
        if type(cell) is nn.Conv2d:
            kh, kw = cell.kernel_size
            pad = _conv_padding(cell, name)
            cell.__class__ = CaptureConv2d
            cell.thor_pad = pad
            cell._thor_setup(name, cell.in_channels * kh * kw, cell.out_channels, split_dim)
        elif type(cell) is nn.Dense:
            if cell.activation_flag:
                raise UserError(f"THOR: Dense layer '{name}' has a built-in activation; add it to thor_skip_layers")
            cell.__class__ = CaptureDense
            cell._thor_setup(name, cell.in_channels, cell.out_channels, split_dim)
        else:
            continue
        layers.append(cell)
    if not layers:
        raise UserError("THOR: no Conv2d or Dense layer left to precondition (check thor_skip_layers)")
    return layers


def set_capture(layers: Sequence[nn.Cell], flag: bool) -> None:
    for cell in layers:
        cell.thor_capture = bool(flag)

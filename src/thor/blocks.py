"""Block-diagonal Kronecker-factor algebra, in portable MindSpore ops (usable inside GRAPH_MODE).

A factor of width D is kept as its ``nb`` diagonal blocks of size ``b`` (``block_layout``): with
``split_dim`` = s > 0 and D > s, b = s and nb = ceil(D / b), the last block zero-padded; with
``split_dim`` = 0 (or D <= s) a single full block. Zero padding is harmless: the damping added before
inversion makes the padded diagonal invertible, the inverse of [[B, 0], [0, 0]] + lambda I restricted to
its first rows and columns is exactly (B + lambda I)^-1, and the padded rows/columns of gradients are zero
and cut off after preconditioning.

The gradient (O, D) of a layer is row-major, so the left product blockdiag(G^-1) @ grad is a batched
matmul over a free reshape (nb, b, D), while the right product grad @ blockdiag(A^-1) needs the column
blocks brought to the front and back (two transposes): the least data movement the layout allows.
Padding is written as a concatenation with zeros and the cut as ``ops.slice``; on CPU, ``ops.pad`` and
``x[:, :d]`` (StridedSlice) cost 15x and 70x as much (python -m benchmarks.thor_ops).
"""
import math

import mindspore as ms
from mindspore import ops

_MATMUL_TA = ops.MatMul(transpose_a=True)
_BMM_TA = ops.BatchMatMul(transpose_a=True)


def block_layout(dim, split_dim):
    """``(nb, b)`` for a factor of width ``dim``: one full block when ``split_dim`` <= 0 or dim <= split_dim."""
    if split_dim <= 0 or dim <= split_dim:
        return 1, dim
    return int(math.ceil(dim / split_dim)), split_dim


def _pad_to(x, axis, width):
    """``x`` zero-padded along ``axis`` (0 or 1 of a 2-D tensor) to ``width``."""
    extra = width - x.shape[axis]
    if extra <= 0:
        return x
    shape = (extra, x.shape[1]) if axis == 0 else (x.shape[0], extra)
    return ops.concat((x, ops.zeros(shape, x.dtype)), axis)


def _cut_to(x, rows, cols):
    """The leading ``rows`` x ``cols`` of a 2-D ``x`` (no copy when nothing is cut)."""
    if tuple(x.shape) == (rows, cols):
        return x
    return ops.slice(x, (0, 0), (rows, cols))


def to_block_columns(x, nb, b):
    """(M, D) -> (nb, M, b): the columns of ``x`` cut into ``nb`` groups of ``b`` (zero-padded)."""
    m = x.shape[0]
    x = _pad_to(x, 1, nb * b)
    return ops.transpose(ops.reshape(x, (m, nb, b)), (1, 0, 2))


def block_gram(x, nb, b, scale):
    """Diagonal blocks of ``scale * x^T x`` for x (M, D): (nb, b, b), computed blockwise (M * D * b flops)."""
    x = ops.cast(x, ms.float32)
    if nb == 1:  # b == D
        return ops.reshape(_MATMUL_TA(x, x), (1, b, b)) * scale
    cols = to_block_columns(x, nb, b)
    return _BMM_TA(cols, cols) * scale


def block_trace(blocks, dim):
    """Trace of the block-diagonal matrix restricted to its first ``dim`` rows (padding excluded)."""
    nb, b, _ = blocks.shape
    diag = ops.reshape(ops.diagonal(blocks, 0, -2, -1), (1, nb * b))
    return _cut_to(diag, 1, dim).sum()


def damped_inverse(blocks, damping):
    """``(B + damping * I)^-1`` for every block of ``blocks`` (nb, b, b)."""
    nb, b, _ = blocks.shape
    eye = ops.broadcast_to(ops.eye(b, b, ms.float32), (nb, b, b))
    return ops.inverse(blocks + damping * eye)


def apply_right(grad, inv, nb, b):
    """``grad @ blockdiag(inv)`` for grad (O, D) and inv (nb, b, b) -> (O, D)."""
    o, d = grad.shape
    if nb == 1:
        return ops.matmul(grad, ops.reshape(inv, (b, b)))
    cols = to_block_columns(grad, nb, b)               # (nb, O, b)
    out = ops.reshape(ops.transpose(ops.bmm(cols, inv), (1, 0, 2)), (o, nb * b))
    return _cut_to(out, o, d)


def apply_left(inv, grad, nb, b):
    """``blockdiag(inv) @ grad`` for inv (nb, b, b) and grad (O, D) -> (O, D): a reshape, no transpose."""
    o, d = grad.shape
    if nb == 1:
        return ops.matmul(ops.reshape(inv, (b, b)), grad)
    rows = ops.reshape(_pad_to(grad, 0, nb * b), (nb, b, d))
    out = ops.reshape(ops.bmm(inv, rows), (nb * b, d))
    return _cut_to(out, o, d)

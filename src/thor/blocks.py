"""Block-diagonal Kronecker-factor algebra, in portable MindSpore ops (usable inside GRAPH_MODE).

A factor of width D is kept as its ``nb`` diagonal blocks of size ``b`` (``block_layout``): with
``split_dim`` = s > 0 and D > s, b = s and nb = ceil(D / b), the last block zero-padded; with
``split_dim`` = 0 (or D <= s) a single full block. Zero padding is harmless: the damping added before
inversion makes the padded diagonal invertible, and the padded rows/columns of gradients are zero and cut
off after preconditioning.
"""
import math

import mindspore as ms
from mindspore import ops


def block_layout(dim, split_dim):
    """``(nb, b)`` for a factor of width ``dim``: one full block when ``split_dim`` <= 0 or dim <= split_dim."""
    if split_dim <= 0 or dim <= split_dim:
        return 1, dim
    return int(math.ceil(dim / split_dim)), split_dim


def to_block_columns(x, nb, b):
    """(M, D) -> (nb, M, b): the columns of ``x`` cut into ``nb`` groups of ``b`` (zero-padded)."""
    m, d = x.shape
    pad = nb * b - d
    if pad:
        x = ops.pad(x, (0, pad))
    return ops.transpose(ops.reshape(x, (m, nb, b)), (1, 0, 2))


def block_gram(x, nb, b, scale):
    """Diagonal blocks of ``scale * x^T x`` for x (M, D): (nb, b, b), computed blockwise (M * D * b flops)."""
    cols = to_block_columns(ops.cast(x, ms.float32), nb, b)
    return ops.bmm(ops.transpose(cols, (0, 2, 1)), cols) * scale


def block_trace(blocks, dim):
    """Trace of the block-diagonal matrix restricted to its first ``dim`` rows (padding excluded)."""
    nb, b, _ = blocks.shape
    diag = ops.reshape(ops.diagonal(blocks, 0, -2, -1), (nb * b,))
    return diag[:dim].sum()


def damped_inverse(blocks, damping):
    """``(B + damping * I)^-1`` for every block of ``blocks`` (nb, b, b)."""
    nb, b, _ = blocks.shape
    eye = ops.broadcast_to(ops.eye(b, b, ms.float32), (nb, b, b))
    return ops.inverse(blocks + damping * eye)


def apply_right(grad, inv, nb, b):
    """``grad @ blockdiag(inv)`` for grad (O, D) and inv (nb, b, b) -> (O, D)."""
    o, d = grad.shape
    cols = to_block_columns(grad, nb, b)               # (nb, O, b)
    out = ops.bmm(cols, inv)                            # (nb, O, b)
    out = ops.reshape(ops.transpose(out, (1, 0, 2)), (o, nb * b))
    return out[:, :d]


def apply_left(inv, grad, nb, b):
    """``blockdiag(inv) @ grad`` for inv (nb, b, b) and grad (O, D) -> (O, D)."""
    return ops.transpose(apply_right(ops.transpose(grad, (1, 0)), ops.transpose(inv, (0, 2, 1)), nb, b), (1, 0))

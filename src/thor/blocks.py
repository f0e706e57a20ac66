"""Block-diagonal Kronecker-factor algebra, in portable MindSpore ops (usable inside GRAPH_MODE).

A factor of width D is kept as its ``nb`` diagonal blocks of size ``b`` (``block_layout``): with
``split_dim`` = s > 0 and D > s, b = s and nb = ceil(D / b), the last block zero-padded; with
``split_dim`` = 0 (or D <= s) a single full block. Zero padding is harmless: the damping added before
inversion makes the padded diagonal invertible, the inverse of [[B, 0], [0, 0]] + lambda I restricted to
its first rows and columns is exactly (B + lambda I)^-1, and the padded rows/columns of gradients are zero
and cut off after preconditioning.

The gradient (O, D) of a layer is row-major, so the left product blockdiag(G^-1) @ grad is a batched
matmul over the reshape (nb, b, D). The right product grad @ blockdiag(A^-1) works on column blocks, in one of
two forms (``apply_right``, config key ``thor_right_product``): ``bmm`` moves the gradient's column blocks to
the front (nb, O, b), multiplies them in one batched matmul and moves them back; ``conv`` is a grouped 1x1
convolution over the reshape (O, D, 1, 1) (group k = column block k), with no data moved. Both multiply by each
block's transpose: A^-1 is the inverse of the symmetric A + damping I, and its stored float32 value is used
transposed (equal up to the rounding of the inverse). Statistics of a convolution are gathered from the
(N, D, positions) layout: per sample with a batched matmul on large feature maps (the activation is not moved),
with the samples moved side by side on small ones (``sample_block_gram``). Padding is written as a
concatenation with zeros and the cut as ``ops.slice``.

No ``ops.transpose`` anywhere: MindSpore's CPU Transpose kernel, given a constant permutation, builds a table of
one 8-byte source index per element when the graph is compiled and keeps it as long as the graph lives (a
transpose of the 9 MiB 512 x 4608 gradient holds 32 MiB; THOR's plain-step graph had 90 of them and its process
peaked 828 MiB higher; docs/performance.md). ``swap_leading`` swaps the two leading axes with an Unstack and a
Stack along the shorter of them instead: no table, contiguous runs copied, and faster than the table's gather
(python -m benchmarks.thor_ops). ``ops.pad`` is far slower than a concatenation; a cut is skipped when nothing is
cut.
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Tensor, ops

_MATMUL_TA = ops.MatMul(transpose_a=True)
_MATMUL_TB = ops.MatMul(transpose_b=True)
_BMM_TB = ops.BatchMatMul(transpose_b=True)
_BMM_TA = ops.BatchMatMul(transpose_a=True)
_SOLVE = ops.MatrixSolve()
_MATMUL = ops.MatMul()
_CAST = ops.Cast()
_ONES = ops.Ones()
# primitive instances called directly: the functional forms (ops.reshape, ops.stack, ops.unstack) are Python
# functions the graph compiler parses and inlines at every call, and the statistics pass's compile left about 25 MiB
# more resident with them (docs/performance.md)
RESHAPE = ops.Reshape()
_STACK0, _STACK1 = ops.Stack(axis=0), ops.Stack(axis=1)
_UNSTACK0, _UNSTACK1 = ops.Unstack(axis=0), ops.Unstack(axis=1)
_UNIT_ROUNDOFF = 2.0 ** -24  # float32
_RUNTIME_ZEROS_BYTES = 2 ** 20  # zero padding larger than this is made at run time (_pad_to)


def _float32(x):
    """``x`` as float32 (no Cast node when it is float32 already)."""
    return x if x.dtype == ms.float32 else ops.cast(x, ms.float32)


def block_layout(dim: int, split_dim: int) -> tuple[int, int]:
    """``(nb, b)`` for a factor of width ``dim``: one full block when ``split_dim`` <= 0 or dim <= split_dim."""
    if split_dim <= 0 or dim <= split_dim:
        return 1, dim
    return int(math.ceil(dim / split_dim)), split_dim


def _pad_to(x, axis, width):
    """``x`` zero-padded at the end of ``axis`` to ``width`` (a concatenation with zeros).

    ``ops.zeros`` of a static shape is folded into a constant that the compiled graph keeps as long as it lives
    (the statistics pass held about 125 MiB of them at 224x224, 86 for the stem's patches). Zeros of more than
    ``_RUNTIME_ZEROS_BYTES`` are therefore made when the graph runs, from one element of ``x`` (|x_0| * 0: +0 for
    a finite x; a non-finite x makes its statistics non-finite anyway), broadcast, and freed after the
    concatenation. Smaller ones stay constants: the four kernel nodes would hold more than the constant does
    (python -m benchmarks.graph_memory; docs/performance.md)."""
    extra = width - x.shape[axis]
    if extra <= 0:
        return x
    shape = tuple(extra if i == axis else n for i, n in enumerate(x.shape))
    if math.prod(shape) * 4 <= _RUNTIME_ZEROS_BYTES:
        return ops.concat((x, ops.zeros(shape, x.dtype)), axis)
    zero = ops.abs(ops.slice(x, (0,) * x.ndim, (1,) * x.ndim)) * 0.0
    return ops.concat((x, ops.broadcast_to(zero, shape)), axis)


def _cut_to(x, rows, cols):
    """The leading ``rows`` x ``cols`` of a 2-D ``x`` (no copy when nothing is cut)."""
    if tuple(x.shape) == (rows, cols):
        return x
    return ops.slice(x, (0, 0), (rows, cols))


def swap_leading(x: Tensor) -> Tensor:
    """(P, Q, ...) -> (Q, P, ...), as ``ops.transpose(x, (1, 0, 2, ...))`` computes it, with an Unstack along the
    shorter of the two axes and a Stack at the other's place (no index table; see the module docstring)."""
    if x.shape[1] <= x.shape[0]:
        return _STACK0(_UNSTACK1(x))
    return _STACK1(_UNSTACK0(x))


def to_block_columns(x: Tensor, nb: int, b: int) -> Tensor:
    """(M, D) -> (nb, M, b): the columns of ``x`` cut into ``nb`` groups of ``b`` (zero-padded)."""
    m = x.shape[0]
    x = _pad_to(x, 1, nb * b)
    return swap_leading(RESHAPE(x, (m, nb, b)))


def block_gram(x: Tensor, nb: int, b: int) -> Tensor:
    """Diagonal blocks of ``x^T x`` for x (M, D): (nb, b, b), computed blockwise (M * D * b flops)."""
    x = _float32(x)
    if nb == 1:  # b == D
        return RESHAPE(_MATMUL_TA(x, x), (1, b, b))
    cols = to_block_columns(x, nb, b)
    return _BMM_TA(cols, cols)


def sample_block_gram(x: Tensor, nb: int, b: int) -> Tensor:
    """Diagonal blocks of ``sum_n x_n x_n^T`` for x (N, D, L) (D = features, L = positions): (nb, b, b).

    With fewer positions than the block size (L < b), the samples are moved next to each other, (N, D, L) ->
    (D, N, L) (one copy of x, as ``swap_leading`` does it), and each block is one product of (b, N * L) by its
    transpose. With L >= b: a free reshape to (N * nb, b, L), one batched matmul per sample and block, a sum over
    samples, without moving the activation. Each way holds the smaller of the two intermediates (the moved copy,
    N * D * L, against the per-sample products, N * D * b), and the first gives long products (N * L terms) where
    the per-sample ones would be short.

    Written with primitive instances and no call to another function unless the input needs it (a cast, a
    padding): THOR's G capture runs it inside the backward hook of every layer, where each nested Python function
    made the compiled statistics pass hold about 0.4 MiB more per layer: this function's helper calls (float32
    check, padding, swap, sum over samples) and its former scale together about 80 MiB for ResNet-50
    (docs/performance.md)."""
    n, d, positions = x.shape
    if x.dtype != ms.float32:
        x = _CAST(x, ms.float32)
    if nb * b > d:
        x = _pad_to(x, 1, nb * b)
    if positions < b:
        moved = _STACK0(_UNSTACK1(x)) if nb * b <= n else _STACK1(_UNSTACK0(x))  # swap_leading, inline
        cols = RESHAPE(moved, (nb, b, n * positions))
        return _BMM_TB(cols, cols)
    rows = RESHAPE(x, (n * nb, b, positions))
    per_sample = RESHAPE(_BMM_TB(rows, rows), (n, nb * b * b))     # (N, nb * b * b)
    return RESHAPE(_MATMUL(_ONES((1, n), ms.float32), per_sample), (nb, b, b))  # the sum over samples


def block_diagonal(blocks: Tensor) -> Tensor:
    """The diagonal of every block: (nb, b, b) -> (nb, b)."""
    return ops.diagonal(blocks, 0, -2, -1)


def block_trace(blocks: Tensor, dim: int, diag: Tensor | None = None) -> Tensor:
    """Trace of the block-diagonal matrix restricted to its first ``dim`` rows (padding excluded);
    ``diag``: ``block_diagonal(blocks)`` when the caller has it already."""
    nb, b, _ = blocks.shape
    diag = block_diagonal(blocks) if diag is None else diag
    return _cut_to(RESHAPE(diag, (1, nb * b)), 1, dim).sum()


def damped_inverse(blocks: Tensor, damping: Tensor, diag: Tensor | None = None) -> Tensor:
    """``(B + d I)^-1`` for every block of ``blocks`` (nb, b, b), as the solution X of (B + d I) X = I (LU with
    partial pivoting: three times faster on CPU than ``ops.inverse`` and as exact; python -m benchmarks.thor_ops).

    d = max(damping, b * 2^-24 * the block's largest diagonal entry). The floor matters only when the damping
    is below what float32 can add to that diagonal: the block is then singular as stored, and the CPU solver
    stops the process on an exactly zero pivot rather than returning a non-finite value the caller could
    discard. The blocks must be finite (the optimizer zeroes non-finite entries first and discards the
    result). ``diag``: ``block_diagonal(blocks)`` when the caller has it already."""
    nb, b, _ = blocks.shape
    diag = block_diagonal(blocks) if diag is None else diag
    eye = ops.broadcast_to(ops.eye(b, b, ms.float32), (nb, b, b))
    shift = ops.maximum(damping, RESHAPE(diag.max(axis=1), (nb, 1, 1)) * (b * _UNIT_ROUNDOFF))
    # broadcast first: a CPU Mul of (nb, 1, 1) by (nb, b, b) builds two 8-byte indices per output element on its
    # first run and keeps them while its graph lives (python -m benchmarks.thor_ops, "damping on the diagonal")
    return _SOLVE(blocks + ops.broadcast_to(shift, (nb, b, b)) * eye, eye)


RIGHT_PRODUCTS = ("bmm", "conv")


def apply_right(grad: Tensor, inv: Tensor, nb: int, b: int, how: str = "bmm") -> Tensor:
    """``grad @ blockdiag(inv)^T`` for grad (O, D) and inv (nb, b, b) -> (O, D) (inv symmetric up to rounding,
    see the module docstring). ``how``: ``bmm``, the column blocks (nb, O, b) by ``swap_leading``, one batched
    matmul and the blocks moved back; ``conv``, a grouped 1x1 convolution over the same memory (group k = column
    block k)."""
    o, d = grad.shape
    if nb == 1:
        return _MATMUL_TB(grad, RESHAPE(inv, (b, b)))
    x = _pad_to(grad, 1, nb * b)
    if how == "bmm":
        out = swap_leading(_BMM_TB(swap_leading(RESHAPE(x, (o, nb, b))), inv))
    else:
        out = ops.conv2d(RESHAPE(x, (o, nb * b, 1, 1)), RESHAPE(inv, (nb * b, b, 1, 1)), groups=nb)
    return _cut_to(RESHAPE(out, (o, nb * b)), o, d)


def apply_left(inv: Tensor, grad: Tensor, nb: int, b: int) -> Tensor:
    """``blockdiag(inv) @ grad`` for inv (nb, b, b) and grad (O, D) -> (O, D): a reshape, no transpose."""
    o, d = grad.shape
    if nb == 1:
        return ops.matmul(RESHAPE(inv, (b, b)), grad)
    rows = RESHAPE(_pad_to(grad, 0, nb * b), (nb, b, d))
    out = RESHAPE(ops.bmm(inv, rows), (nb * b, d))
    return _cut_to(out, o, d)

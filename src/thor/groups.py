"""The Kronecker factors of all THOR layers, grouped by block size, so that a refresh runs one op per group.

Factor f of the optimizer is A of layer f // 2 (f even) or G of layer f // 2 (f odd); each is kept as ``nb``
diagonal blocks of size ``b`` (blocks.block_layout). On an update step the refresh concatenates the blocks of
every factor of one block size along the block axis (for ResNet-50 at ``split_dim`` 128, two groups: b = 128
and b = 64), and blends, checks, inverts and traces each group with one op, instead of one op per layer. What
is decided per factor (is it finite, its trace) comes out of the group as a segment sum over its blocks (a
matrix product with a constant 0/1 block-to-factor matrix), and what is decided per layer (refresh, keep the
factors) goes back to the blocks by a gather with a constant block-to-factor index. Every block is computed as
before, so the numbers are the per-layer refresh's: the inverse of each block is the same solve, and a trace
is summed in another order (float32 rounding).

Why: the per-layer refresh was about 107 kernel nodes per layer (about 5,800 for ResNet-50's 54 layers), over
half of the update graph, whose node count sets its compile time and whose node outputs set its memory
(python -m benchmarks.thor_graphs). A group costs a fixed number of nodes, whatever the number of layers.

The state stays one Parameter per layer and factor (checkpoints and the preconditioning of the plain step are
unchanged): a group reads them by concatenation and writes them back by one split and an assignment each.
"""
from __future__ import annotations

import numpy as np


class FactorGroup:
    """One block size ``b``: the factors (``factors``, optimizer factor indices: the A of ``a_layers``, then the G
    of ``g_layers``) whose blocks are ``b`` wide, in that order, with ``sections`` blocks each, and the constants
    the refresh uses on the group."""

    def __init__(self, b: int, factors: list[int], layouts: list[tuple[int, int]], dims: list[int]):
        self.b = b
        # A factors first, then G (each in layer order), so that the graph reads them in two plain loops
        self.a_layers = tuple(f // 2 for f in factors if f % 2 == 0)
        self.g_layers = tuple(f // 2 for f in factors if f % 2 == 1)
        factors = [2 * l for l in self.a_layers] + [2 * l + 1 for l in self.g_layers]
        self.factors = tuple(factors)
        self.sections = tuple(layouts[f][0] for f in factors)
        local = np.repeat(np.arange(len(factors)), self.sections)                # block -> factor within group
        self.num_blocks = int(local.size)
        self.block_factor = np.asarray(factors, np.int32)[local]                 # block -> optimizer factor index
        self.onehot = (local[:, None] == np.arange(len(factors))[None, :]).astype(np.float32)  # (blocks, factors)
        first = np.concatenate([[0], np.cumsum(self.sections)[:-1]]).astype(np.int64)
        within = np.arange(self.num_blocks) - first[local]                        # block index inside its factor
        width = np.asarray([dims[f] for f in factors])[local]
        # diagonal entries of real (not zero-padded) rows: column i of block k of a factor is row k * b + i
        self.diag_mask = ((within[:, None] * b + np.arange(b)[None, :]) < width[:, None]).astype(np.float32)
        self.is_g = (self.block_factor % 2 == 1)                                  # blocks of a G factor


def factor_groups(a_layouts, g_layouts, dims):
    """The groups of a network's factors: ``a_layouts`` / ``g_layouts`` are each layer's ``(nb, b)`` of A and G,
    ``dims`` each layer's ``(d_in, d_out)``. Returns ``(groups, order)``: the groups by increasing block size,
    and ``order``, the index into the concatenation of the groups' per-factor values that puts them back in
    factor order (factor 2 l = A of layer l, 2 l + 1 = G)."""
    layouts = [lay for pair in zip(a_layouts, g_layouts) for lay in pair]
    widths = [w for pair in dims for w in pair]
    by_size: dict[int, list[int]] = {}
    for f, (_, b) in enumerate(layouts):
        by_size.setdefault(b, []).append(f)
    groups = [FactorGroup(b, by_size[b], layouts, widths) for b in sorted(by_size)]
    concat = np.concatenate([g.factors for g in groups])
    order = np.argsort(concat).astype(np.int32)
    return groups, order

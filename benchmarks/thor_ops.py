"""The CPU kernels THOR's layout choices rest on: time per call and memory each use adds to a compiled graph.

    python -m benchmarks.thor_ops

ResNet-50's largest THOR layer: a 512 x 4608 gradient (layer4 3x3 conv) and its 36 blocks of 128 x 128. Each
row compiles a graph holding ``--copies`` uses of one op on as many distinct inputs (same oneDNN cap as
train.py), in a process of its own, and reports the median time of one use (the graph's time / copies;
windows after warm-up; the uses may run two at a time on two cores, as the runtime schedules them) and the
resident memory the graph added at compile and at its first run (some CPU kernels build index tables then and
keep them), per use. Rows come in pairs: the form src/thor uses and the one it avoids; ``--only TEXT`` runs the
rows whose name contains TEXT. Prints a markdown table, writes JSON.
"""
import argparse
import time

from benchmarks.timing import child_result, host_info, markdown_table, print_result, time_windows, write_json

O, D, B = 512, 4608, 128
NB = D // B

# name: (input kind, what it stands for)
OPS = {
    "gradient column blocks: transpose (O, nb, b) -> (nb, O, b)": ("grad", "avoided"),
    "gradient column blocks: Unstack + Stack (swap_leading)": ("grad", "used"),
    "grad @ blockdiag(A): transpose + bmm + transpose": ("grad", "avoided"),
    "grad @ blockdiag(A): swap_leading + bmm + swap_leading": ("grad", "used (thor_right_product bmm)"),
    "grad @ blockdiag(A): grouped 1x1 convolution": ("grad", "used (thor_right_product conv)"),
    "blockdiag(G) @ grad: reshape + bmm": ("grad", "used"),
    "zero padding: ops.pad (64 columns)": ("grad", "avoided"),
    "zero padding: concat with zeros (64 columns)": ("grad", "used"),
    "cut: x[:, :d] (StridedSlice)": ("grad", "avoided"),
    "cut: ops.slice": ("grad", "used"),
    "where(scalar condition, new, old)": ("factor", "avoided"),
    "where(condition broadcast first, new, old)": ("factor", "used"),
    "isfinite(x).all()": ("factor", "avoided"),
    "isfinite(sum of x as one matvec)": ("factor", "used"),
    "inverse of 36 blocks: ops.inverse": ("factor", "avoided"),
    "inverse of 36 blocks: MatrixSolve(B, I) (LU with partial pivoting)": ("factor", "used"),
    "inverse of 36 blocks: cholesky + triangular solve + bmm": ("factor", "avoided"),
    "KL clip's <D, dW>: (D * dW).sum()": ("grad", "avoided"),
    "KL clip's <D, dW>: one matrix-vector product": ("grad", "used"),
    "damping on the diagonal: (nb, 1, 1) x eye, broadcast in the Mul": ("factor", "avoided"),
    "damping on the diagonal: broadcast_to, then (nb, b, b) x eye": ("factor", "used"),
}


def _op(name):
    import mindspore as ms
    from mindspore import ops

    from src.thor.blocks import _cut_to, _pad_to, apply_left, apply_right, swap_leading
    from src.thor.optimizer import _dot
    from src.train_step import _grad_sum_tensor

    tri = ops.MatrixTriangularSolve(lower=True)
    solve = ops.MatrixSolve()
    bmm_ta = ops.BatchMatMul(transpose_a=True)
    bmm_tb = ops.BatchMatMul(transpose_b=True)

    def blocks_t(x, a):
        return apply_right(x, a, NB, B, "bmm")

    def blocks_transpose(x, a):
        cols = ops.transpose(ops.reshape(x, (O, NB, B)), (1, 0, 2))
        return ops.reshape(ops.transpose(bmm_tb(cols, a), (1, 0, 2)), (O, D))

    def swap_only(x, a):
        return ops.reshape(swap_leading(ops.reshape(x, (O, NB, B))), (O, D))

    def chol_inv(m, eye):
        linv = tri(ops.cholesky(m), eye)
        return bmm_ta(linv, linv)

    def transpose_only(x, a):
        return ops.reshape(ops.transpose(ops.reshape(x, (O, NB, B)), (1, 0, 2)), (O, D))

    def right_conv(x, a):
        return apply_right(x, a, NB, B, "conv")

    def left_bmm(x, a):
        return apply_left(ops.slice(a, (0, 0, 0), (O // B, B, B)), x, O // B, B)

    def pad_op(x, a):
        return ops.pad(x, (0, 64))

    def pad_concat(x, a):
        return _pad_to(x, 1, D + 64)

    def cut_strided(x, a):
        return x[:, :D - 64]

    def cut_slice(x, a):
        return _cut_to(x, O, D - 64)

    def where_scalar(m, e):
        return ops.where(m[0, 0, 0] > -1.0, m * 1.0, m)

    def where_full(m, e):
        return ops.where(ops.broadcast_to(m[0, 0, 0] > -1.0, m.shape), m * 1.0, m)

    def finite_all(m, e):
        return m + ops.cast(ops.isfinite(m).all(), ms.float32)

    def finite_sum(m, e):
        return m + ops.cast(ops.isfinite(_grad_sum_tensor(m)), ms.float32)

    def lu_inv(m, e):
        return ops.inverse(m)

    def solve_inv(m, e):
        return solve(m, e)

    def dot_sum(x, a):
        return x + (x * (x + 1.0)).sum()

    def dot_matvec(x, a):
        return x + ops.reshape(_dot(x, x + 1.0), ())

    def shift_mul(m, e):
        return m + ops.reshape(m[:, 0, 0], (NB, 1, 1)) * e

    def shift_broadcast_mul(m, e):
        return m + ops.broadcast_to(ops.reshape(m[:, 0, 0], (NB, 1, 1)), (NB, B, B)) * e

    fns = [transpose_only, swap_only, blocks_transpose, blocks_t, right_conv, left_bmm, pad_op, pad_concat,
           cut_strided, cut_slice, where_scalar, where_full, finite_all, finite_sum, lu_inv, solve_inv, chol_inv,
           dot_sum, dot_matvec, shift_mul, shift_broadcast_mul]
    table = dict(zip(OPS, fns))
    return table[name]


def measure(name, copies, runs):
    """Child process: compile ``copies`` uses of the op, time and size them."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    from src import host

    host.apply_isa_cap("CPU", "auto")
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    kind = OPS[name][0]
    if kind == "grad":
        first = rng.standard_normal((O, D)).astype(np.float32) * 0.01
        second = np.broadcast_to(np.eye(B, dtype=np.float32), (NB, B, B)).copy()
    else:  # a damped factor: symmetric positive definite blocks
        x = rng.standard_normal((NB, 256, B)).astype(np.float32)
        first = np.einsum("kni,knj->kij", x, x) / 256 + 0.1 * np.eye(B, dtype=np.float32)
        second = np.broadcast_to(np.eye(B, dtype=np.float32), (NB, B, B)).copy()
    fn = _op(name)

    class Uses(nn.Cell):
        def construct(self, xs, a):
            outs = ()
            for i in range(copies):  # one use per distinct input (identical uses would be merged by the compiler)
                outs = outs + (fn(xs[i], a),)
            return outs

    def rss_mib():
        with open("/proc/self/statm", encoding="utf-8") as f:
            return int(f.read().split()[1]) * 4096 / 2 ** 20

    cell = Uses()
    args = (tuple(ms.Tensor(first + np.float32(i * 1e-3)) for i in range(copies)), ms.Tensor(second))
    before = rss_mib()
    start = time.perf_counter()
    cell.compile(*args)
    compile_s = time.perf_counter() - start
    after = rss_mib()
    [o.asnumpy() for o in cell(*args)]  # the first run: some kernels build tables then and keep them
    after_run = rss_mib()
    t, _ = time_windows(lambda: [o.asnumpy() for o in cell(*args)], warmup=2, runs=runs)
    return {"ms_per_use": t * 1000 / copies, "compile_mib_per_use": (after - before) / copies,
            "first_run_mib_per_use": (after_run - after) / copies, "compile_s": compile_s}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8, help="uses of the op per graph")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", default="", help="run only the rows whose name contains this text")
    parser.add_argument("--output", default="bench_results/thor_ops.json")
    parser.add_argument("--op", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.op:
        print_result(measure(args.op, args.copies, args.runs))
        return None
    rows, results = [], {}
    for name, (_, role) in OPS.items():
        if args.only not in name:
            continue
        r = child_result("benchmarks.thor_ops", ["--op", name, "--copies", str(args.copies), "--runs", str(args.runs)],
                         f"'{name}'")
        results[name] = dict(r, role=role)
        rows.append([name, role, f"{r['ms_per_use']:.2f}", f"{r['compile_mib_per_use']:.1f}",
                     f"{r['first_run_mib_per_use']:.1f}"])
        print(f"  {name}: {r['ms_per_use']:.2f} ms, {r['compile_mib_per_use']:.1f} + {r['first_run_mib_per_use']:.1f} "
              "MiB per use", flush=True)
    if not rows:
        raise SystemExit(f"error: --only {args.only!r} matches no row")
    write_json(args.output, {"host": host_info(), "args": vars(args), "results": results})
    print()
    print(markdown_table(["op (512 x 4608 gradient / 36 blocks of 128)", "in src/thor", "ms per use",
                         "MiB per use in the graph", "MiB per use at its first run"], rows))
    print(f"\nwritten {args.output}")
    return results


if __name__ == "__main__":
    main()

"""Per-op CPU timings with and without oneDNN's ISA cap: the measurement behind ``cpu_isa_cap: auto``.

    python -m benchmarks.cpu_ops                         # no cap vs AVX2 vs AVX512_CORE, batch 8
    python -m benchmarks.cpu_ops --isas none,AVX2,AVX2_VNNI --batch 16 --output bench_results/cpu_ops.json

Times, on this host, the ops a ResNet-50 training step and THOR spend their time in: convolutions of
ResNet-50's shapes (7x7 stem, 3x3 and 1x1 of each stage; forward, backward-data and backward-filter),
BatchNorm (training forward + backward), the classifier MatMul, and THOR's BatchMatMul and block
inverse. oneDNN reads its ISA cap once per process, so each setting runs in a child process of its own
(with ``ONEDNN_MAX_CPU_ISA`` set, ``none`` = unset). Each op: warm-up, then up to ``--runs`` timed windows
(of enough calls to last 0.1 s) within a ``--budget`` of seconds (a slow path is still measured, just fewer
times); the median is reported. Prints a markdown table (ms per call, the fastest setting per op, and each
setting's total) and writes JSON.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.timing import host_info, markdown_table, time_windows, write_json


def conv_cases(batch):
    """(name, N, C_in, C_out, k, stride, H) of ResNet-50 v1.5 convolutions at 224x224 (and one of 32x32)."""
    return [
        ("stem 7x7/2 3->64 @224", batch, 3, 64, 7, 2, 224),
        ("3x3 64 @56", batch, 64, 64, 3, 1, 56),
        ("3x3 128 @28", batch, 128, 128, 3, 1, 28),
        ("3x3 256 @14", batch, 256, 256, 3, 1, 14),
        ("3x3 512 @7", batch, 512, 512, 3, 1, 7),
        ("1x1 256->64 @56", batch, 256, 64, 1, 1, 56),
        ("1x1 64->256 @56", batch, 64, 256, 1, 1, 56),
        ("1x1 1024->256 @14", batch, 1024, 256, 1, 1, 14),
        ("1x1 512->2048 @7", batch, 512, 2048, 1, 1, 7),
        ("3x3 256 @8 (32x32 input, batch 32)", 32, 256, 256, 3, 1, 8),
    ]


def build_ops(batch):
    """``[(op name, shape text, callable that launches the op and returns its output)]``, PYNATIVE mode."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops
    from mindspore.ops.operations import _grad_ops

    rng = np.random.default_rng(0)

    def t(*shape):
        return ms.Tensor(rng.standard_normal(shape).astype(np.float32))

    cases = []
    for name, n, cin, cout, k, stride, h in conv_cases(batch):
        pad = k // 2
        ho = (h + 2 * pad - k) // stride + 1
        x, w, dy = t(n, cin, h, h), t(cout, cin, k, k), t(n, cout, ho, ho)
        fwd = ops.Conv2D(cout, k, pad_mode="pad", pad=pad, stride=stride)
        bwd_data = ops.Conv2DBackpropInput(cout, k, pad_mode="pad", pad=pad, stride=stride)
        bwd_filter = _grad_ops.Conv2DBackpropFilter(cout, k, pad_mode="pad", pad=pad, pad_list=(pad,) * 4,
                                                    stride=(stride, stride))
        shape = f"N{n} {cin}->{cout} {h}x{h}"
        cases.append((f"conv {name} fwd", shape, lambda f=fwd, x=x, w=w: f(x, w)))
        if cin > 3:  # the stem's input gradient is never computed
            cases.append((f"conv {name} bwd-data", shape,
                          lambda f=bwd_data, dy=dy, w=w, s=x.shape: f(dy, w, s)))
        cases.append((f"conv {name} bwd-filter", shape,
                      lambda f=bwd_filter, dy=dy, x=x, s=w.shape: f(dy, x, s)))

    bn = nn.BatchNorm2d(256)
    bn.set_train(True)
    xb = t(batch, 256, 56, 56)
    bn_grad = ms.grad(bn, grad_position=0)
    cases.append(("BatchNorm 256 @56 train fwd+bwd", f"N{batch} 256 56x56", lambda: bn_grad(xb)))

    a, b = t(batch, 2048), t(2048, 1000)
    cases.append(("MatMul (classifier)", f"{batch}x2048 @ 2048x1000", lambda: ops.matmul(a, b)))
    g, inv = t(36, 512, 128), t(36, 128, 128)
    cases.append(("BatchMatMul (THOR block precondition)", "36x512x128 @ 36x128x128",
                  lambda: ops.bmm(g, inv)))
    m = rng.standard_normal((36, 128, 128))
    spd = ms.Tensor((m @ m.transpose(0, 2, 1) + 128 * np.eye(128)).astype(np.float32))
    cases.append(("MatrixInverse (THOR damped block)", "36x128x128", lambda: ops.inverse(spd)))
    return cases


def child(args):
    """Time every op in this process (its ISA cap is already in the environment) and print JSON."""
    import mindspore as ms
    ms.set_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    results = []
    for name, shape, fn in build_ops(args.batch):
        fn().asnumpy()  # warm-up (kernel selection, allocation)
        start = time.perf_counter()
        fn().asnumpy()
        once = time.perf_counter() - start
        # Fast ops are timed in windows of several launches synchronised once at the end (>= 0.1 s): a
        # synchronisation after every call rounds its time up to the host's polling step (4 ms here).
        window = max(1, min(50, int(0.1 / max(once, 1e-6))))

        def run_window(fn=fn, window=window):
            out = None
            for _ in range(window):
                out = fn()
            out.asnumpy()
        median, times = time_windows(run_window, warmup=0, runs=args.runs, budget_s=args.budget)
        median, times = median / window, [t / window for t in times]
        results.append({"op": name, "shape": shape, "ms": median * 1000, "runs": len(times), "window": window})
        print(f"  {name}: {median * 1000:.2f} ms ({len(times)} x {window} calls)", file=sys.stderr, flush=True)
    print(json.dumps(results))


def run_setting(isa, args):
    env = dict(os.environ)
    env.pop("DNNL_MAX_CPU_ISA", None)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa != "none":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    print(f"ONEDNN_MAX_CPU_ISA={'(unset)' if isa == 'none' else isa}:", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "benchmarks.cpu_ops", "--child", "--batch", str(args.batch), "--runs",
           str(args.runs), "--budget", str(args.budget)]
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isas", default="none,AVX2,AVX512_CORE",
                        help="comma-separated ONEDNN_MAX_CPU_ISA values to compare; none = oneDNN's own choice")
    parser.add_argument("--batch", type=int, default=8, help="batch of the 224x224-shaped ops")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per op (at most)")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per op before stopping")
    parser.add_argument("--output", default="bench_results/cpu_ops.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    isas = [s.strip() for s in args.isas.split(",") if s.strip()]
    by_isa = {isa: run_setting(isa, args) for isa in isas}
    ops_order = [r["op"] for r in by_isa[isas[0]]]
    ms_of = {isa: {r["op"]: r["ms"] for r in rows} for isa, rows in by_isa.items()}
    shape_of = {r["op"]: r["shape"] for r in by_isa[isas[0]]}
    rows, wins = [], {isa: 0 for isa in isas}
    for op in ops_order:
        best = min(isas, key=lambda i: ms_of[i][op])
        wins[best] += 1
        rows.append([op, shape_of[op]] + [f"{ms_of[i][op]:.2f}" for i in isas] + [best])
    totals = {i: sum(ms_of[i].values()) for i in isas}
    rows.append(["total", ""] + [f"{totals[i]:.1f}" for i in isas] + [min(isas, key=totals.get)])
    header = ["op", "shape"] + [f"{i} ms" for i in isas] + ["fastest"]
    table = markdown_table(header, rows)
    print(table)
    print("fastest per op: " + ", ".join(f"{i} {wins[i]}" for i in isas))
    write_json(args.output, {"host": host_info(), "batch": args.batch, "isas": isas, "results": by_isa,
                             "totals_ms": totals, "wins": wins})
    print(f"written: {args.output}")
    return totals


if __name__ == "__main__":
    main()

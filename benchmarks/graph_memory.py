"""What a compiled graph holds on CPU for its size alone: per node, and for a tuple built in a loop.

    python -m benchmarks.graph_memory

Each arm is a process of its own (graph mode, CPU) that compiles one graph on a 4 x 4 float32 input, so that the
tensors themselves weigh nothing, runs it once and reports the resident memory that call added (``VmRSS`` after
glibc's ``malloc_trim``: what the process still holds, not what compiling used for a while):

- ``adds``: a chain of ``--nodes`` additions, ``x = x + 1.0``; the memory per node is what MindSpore keeps per
  compiled node (its IR, kernel, actor, shapes) as long as the graph lives;
- ``tuple_loop``: a ``--length``-tuple of ``x * k`` (k = 1 .. length) built as ``out = out + (x * k,)`` in a
  graph-mode loop, which makes tuples of 1, 2, ..., length elements;
- ``tuple_hypermap``: the same tuple from one ``HyperMap`` over a tuple of the constants, which builds it once.

``--length`` defaults to 161, ResNet-50's parameter count: THOR's optimizer built its preconditioned gradients the
first way until the graphs were measured (docs/performance.md). Prints a markdown table and writes JSON.
"""
from benchmarks import timing
from src.host import release_free_heap

ARMS = ("adds", "tuple_loop", "tuple_hypermap")


def measure(arm, args):
    """Child process: compile and run the arm's graph once; the resident memory that added."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    nodes, length = args.nodes, args.length
    scale = ops.MultitypeFuncGraph("scale")

    @scale.register("Tensor", "Number")
    def _scale(x, k):
        return x * k

    class Graph(nn.Cell):
        def __init__(self):
            super().__init__()
            self.hyper_map = ops.HyperMap()
            self.constants = tuple(float(k) for k in range(1, length + 1))

        def construct(self, x):
            if arm == "adds":
                for _ in range(nodes):
                    x = x + 1.0
                return x
            if arm == "tuple_loop":
                out = ()
                for k in range(1, length + 1):
                    out = out + (x * float(k),)
                return out
            return self.hyper_map(ops.partial(scale, x), self.constants)

    def resident():
        release_free_heap()
        return timing.status_mib("VmRSS")

    x = ms.Tensor(np.ones((4, 4), np.float32))
    graph = Graph()
    ops.add(x, x).asnumpy()  # the runtime exists before the measurement
    before = resident()
    out = graph(x)
    last = (out[-1] if isinstance(out, tuple) else out).asnumpy()
    return {"added_mib": resident() - before, "count": nodes if arm == "adds" else length,
            "elements": len(out) if isinstance(out, tuple) else 1, "last_sum": float(last.sum())}


def main(argv=None):
    parser = timing.benchmark_parser(__doc__, nodes=400, length=161, output="bench_results/graph_memory.json",
                              helps={"nodes": "additions in the adds graph (MindSpore's call depth limit is 1000)",
                                     "length": "elements of the tuple graphs"})
    parsed = timing.parse_arms(parser, argv, ARMS, measure)
    if parsed is None:  # a child process: it has printed its result
        return None
    args, passed = parsed
    if not 0 < args.nodes <= 900 or not 0 < args.length <= 900:
        raise SystemExit("error: --nodes and --length must be between 1 and 900 (MindSpore's call depth limit)")
    results, rows = {}, []
    for arm in ARMS:
        r = timing.child_result("benchmarks.graph_memory", [*passed, "--arm", arm], f"the {arm} process")
        results[arm] = r
        what = {"adds": f"{r['count']} additions, x = x + 1.0",
                "tuple_loop": f"a {r['count']}-tuple built as out = out + (x * k,)",
                "tuple_hypermap": f"a {r['count']}-tuple from one HyperMap"}[arm]
        rows.append([what, f"{r['added_mib']:.1f}", f"{r['added_mib'] * 1024 / r['count']:.0f}"])
    timing.write_json(args.output, {"host": timing.host_info(), "args": vars(args), "results": results})
    print(timing.markdown_table(["graph (4 x 4 float32 input)", "resident MiB added", "KiB per node / element"], rows))
    print(f"\nwritten {args.output}")
    return results


if __name__ == "__main__":
    main()

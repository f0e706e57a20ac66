"""What one compiled convolution kernel holds on the heap, by direction, against the size of its weights.

    python -m benchmarks.conv_scratchpad                          # three ResNet-50 convolutions, batch 32
    python -m benchmarks.conv_scratchpad --max_concurrency 1      # oneDNN told to plan for one thread

For each convolution shape (``--shapes``: ``in,out,kernel,input size`` separated by ``;``; stride 1, padding
kernel // 2, no bias, NCHW float32 as MindSpore's CPU backend runs it) and each direction (``forward``: the
output; ``input``: the gradient of the input only; ``weight``: the gradient of the weight only), a process of its
own compiles that one graph and runs it once, with the oneDNN cap train.py applies. Reported: the heap (glibc
``mallinfo2``: in-use chunks plus mapped blocks) the first call added, which holds the kernels' oneDNN primitives
and their scratchpads, and that over the weights' bytes. A compiled graph keeps its kernels, so a training
process holds this once per compiled graph that contains the kernel (docs/performance.md: why THOR's update step
has a statistics pass).

``--max_concurrency N`` calls oneDNN's ``dnnl_threadpool_interop_set_max_concurrency(N)`` before anything is
compiled: the thread count oneDNN plans its per-thread buffers for (0: leave its default, the cores).
Prints a markdown table and writes JSON to ``--output``.
"""
import ctypes
import os
import sys

from benchmarks.timing import benchmark_parser, child_result, host_info, markdown_table, parse_arms, write_json
from src.host import libc

DIRECTIONS = ("forward", "input", "weight")
DEFAULT_SHAPES = "512,512,3,1;1024,2048,1,2;64,64,3,8"  # ResNet-50's layer4 3x3, a downsample 1x1, layer1 3x3 at 32x32


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def heap_info():
    """glibc's heap now: ``in_use_mib`` (chunks handed out, separately mapped blocks included), ``free_mib`` (freed
    chunks its arenas keep, resident wherever they were touched) and ``free_chunks`` (how many)."""
    mallinfo2 = getattr(libc(), "mallinfo2", None)
    if mallinfo2 is None:
        raise RuntimeError("glibc's mallinfo2 (glibc 2.33 or later) is needed to read the heap")
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {"in_use_mib": (info.uordblks + info.hblkhd) / 2 ** 20, "free_mib": info.fordblks / 2 ** 20,
            "free_chunks": int(info.ordblks)}


def heap_mib():
    """Bytes malloc has handed out and not taken back (chunks in use + separately mapped blocks), in MiB."""
    return heap_info()["in_use_mib"]


def parse_shape(text):
    """``in,out,kernel,size`` -> four ints (``ValueError`` naming the text otherwise)."""
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"a shape is in,out,kernel,size (positive integers), got {text!r}")
    return tuple(int(p) for p in parts)


def measure(direction, args):
    """Child process: one convolution graph in ``direction``; the heap its first call added."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    from src import host
    host.apply_isa_cap("CPU", "auto", log=None)  # as train.py: the oneDNN cap picks the kernels measured
    if args.max_concurrency > 0:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(ms.__file__), "lib", "libdnnl.so.3"))
        if lib.dnnl_threadpool_interop_set_max_concurrency(args.max_concurrency) != 0:
            sys.exit("error: oneDNN refused --max_concurrency")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    cin, cout, k, size = parse_shape(args.shapes)
    conv = nn.Conv2d(cin, cout, k, pad_mode="pad", padding=k // 2, has_bias=False)

    class Graph(nn.Cell):
        def __init__(self):
            super().__init__()
            self.conv = conv
            self.weights = ms.ParameterTuple(conv.trainable_params())
            self.grad_input = ops.GradOperation()
            self.grad_weight = ops.GradOperation(get_by_list=True)

        def total(self, x):
            return self.conv(x).sum()

        def construct(self, x):
            if direction == "forward":
                return self.conv(x)
            if direction == "input":
                return self.grad_input(self.total)(x)
            return self.grad_weight(self.total, self.weights)(x)[0]

    x = ms.Tensor(np.random.default_rng(0).standard_normal((args.batch_size, cin, size, size)).astype(np.float32))
    graph = Graph()  # built outside the measurement: building it changes the heap by tens of MiB either way
    ops.add(x, x).asnumpy()  # the runtime and its memory pool exist before the measurement
    before = heap_mib()
    graph(x).asnumpy()
    return {"heap_added_mib": heap_mib() - before, "weight_mib": cin * cout * k * k * 4 / 2 ** 20}


def main(argv=None):
    parser = benchmark_parser(__doc__, shapes=DEFAULT_SHAPES, batch_size=32, max_concurrency=0, output=None,
                              helps={"shapes": "in,out,kernel,input size; several separated by ';'",
                                     "max_concurrency": "threads oneDNN plans for (0: its default)",
                                     "output": "JSON path (default bench_results/conv_scratchpad.json)"})
    parsed = parse_arms(parser, argv, DIRECTIONS, measure)
    if parsed is None:  # a child process: it has printed its result
        return None
    args, _ = parsed
    try:
        shapes = [parse_shape(s) for s in args.shapes.split(";")]
    except ValueError as err:
        sys.exit(f"error: --shapes: {err}")
    rows, results = [], []
    for shape in shapes:
        text = ",".join(map(str, shape))
        row = [f"{shape[0]} -> {shape[1]}, {shape[2]}x{shape[2]}, {shape[3]}x{shape[3]}"]
        for direction in DIRECTIONS:
            passed = ["--shapes", text, "--batch_size", str(args.batch_size),
                      "--max_concurrency", str(args.max_concurrency), "--arm", direction]
            result = child_result("benchmarks.conv_scratchpad", passed, f"the {direction} process for {text}")
            results.append({"shape": text, "direction": direction, **result})
            row.append(f"{result['heap_added_mib']:.1f} ({result['heap_added_mib'] / result['weight_mib']:.1f}x)")
        rows.append([row[0], f"{result['weight_mib']:.2f}", *row[1:]])
    output = args.output or os.path.join("bench_results", "conv_scratchpad.json")
    write_json(output, {"host": host_info(), "args": vars(args), "result": results})
    print(markdown_table(["convolution (in -> out, kernel, input)", "weights MiB",
                          *(f"heap added MiB: {d} (x weights)" for d in DIRECTIONS)], rows))
    print(f"\nwritten {output}")
    return results


if __name__ == "__main__":
    main()

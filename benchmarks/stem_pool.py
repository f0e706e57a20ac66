"""The stem's 3x3/2 max-pool with padding 1: three equal forms, timed forward and forward + backward.

    python -m benchmarks.stem_pool                       # full-width stem output at 224x224, batch 16
    python -m benchmarks.stem_pool --batch 32 --size 16  # the stem output of 32x32 images

On non-negative input (the pool follows a ReLU) zero padding equals -inf padding, so these are equal:
``nn.Pad`` + valid pool, zero rows/columns concatenated + valid pool, and MaxPool2d(pad_mode='pad'). Each is
checked against the first (max abs difference) and timed in GRAPH mode (median of windows after warm-up).
src/resnet.py's StemMaxPool picks the fastest form for training and for inference from this table.
"""
import argparse

from benchmarks.timing import host_info, markdown_table, time_windows, write_json

FORMS = ("nn.Pad + valid pool", "concat zeros + valid pool", "MaxPool2d pad_mode='pad'")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=112, help="stem output height/width (112 for 224 inputs)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", default="bench_results/stem_pool.json")
    args = parser.parse_args(argv)

    import mindspore as ms
    import numpy as np
    from mindspore import nn

    from src import host
    from src.resnet import zero_pad_hw
    host.apply_isa_cap("CPU", "auto")
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)

    class Pool(nn.Cell):
        def __init__(self, form):
            super().__init__()
            self.form = form
            self.pad = nn.Pad(paddings=((0, 0), (0, 0), (1, 1), (1, 1)))
            self.valid = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")
            self.padded = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)

        def construct(self, x):
            if self.form == FORMS[0]:
                return self.valid(self.pad(x))
            if self.form == FORMS[1]:
                return self.valid(zero_pad_hw(x))
            return self.padded(x)

    x = ms.Tensor(np.abs(np.random.default_rng(0).standard_normal(
        (args.batch, args.channels, args.size, args.size))).astype(np.float32))
    results, reference = {}, None
    for form in FORMS:
        cell = Pool(form)
        out = cell(x).asnumpy()
        reference = out if reference is None else reference
        grad = ms.grad(cell)
        fwd, _ = time_windows(lambda cell=cell: cell(x).asnumpy(), warmup=1, runs=args.runs)
        both, _ = time_windows(lambda grad=grad: grad(x).asnumpy(), warmup=1, runs=args.runs)
        results[form] = {"forward_ms": fwd * 1000, "forward_backward_ms": both * 1000,
                         "max_abs_diff": float(np.abs(out - reference).max())}
    rows = [[f, f"{r['forward_ms']:.1f}", f"{r['forward_backward_ms']:.1f}", f"{r['max_abs_diff']:.1g}"]
            for f, r in results.items()]
    print(markdown_table(["form", "forward ms", "forward + backward ms", "max abs diff"], rows))
    write_json(args.output, {"host": host_info(), "shape": [args.batch, args.channels, args.size, args.size],
                             "results": results})
    print(f"written: {args.output}")
    return results


if __name__ == "__main__":
    main()

"""Where a training step's time goes around the network: the pieces of src/train_step.py, one at a time.

    python -m benchmarks.step_overhead                       # full-width ResNet-50, 32x32, batch 32
    python -m benchmarks.step_overhead --image_size 224 --batch 16 --runs 5

Each row is a compiled training step on one fixed batch (same network, seed and batch) that adds one piece
to a bare ``forward -> backward -> Momentum`` step:

- ``bare``: ``nn.Momentum``, plain cross entropy, no loss scale, no overflow check
- ``+ label smoothing``: the loss of the recipe
- ``+ weight-decay groups``: our optimizer factory (decay on weights only, per-step lr array)
- ``+ loss scale``: backward scaled by ``loss_scale``, gradients unscaled
- ``+ overflow check (isfinite.all)``: the textbook check, one boolean reduction per gradient
- ``+ overflow check (ours)``: the check src/train_step.py uses (one matrix-vector sum per gradient)
- ``TrainStep``: src/train_step.py as train.py builds it (all of the above, the step skipped on overflow)

Then the per-gradient reductions alone, over ResNet-50's 161 gradients. Every row runs in a process of its
own (same oneDNN cap as train.py). Prints a markdown table, writes JSON.
"""
import argparse
import json
import subprocess
import sys

from benchmarks.timing import benchmark_parser, host_info, markdown_table, time_windows, write_json

VARIANTS = {
    # name: (label smoothing, weight-decay groups, loss scale, check)
    "bare": (False, False, False, None),
    "+ label smoothing": (True, False, False, None),
    "+ weight-decay groups": (True, True, False, None),
    "+ loss scale": (True, True, True, None),
    "+ overflow check (isfinite.all)": (True, True, True, "isfinite"),
    "+ overflow check (ours)": (True, True, True, "ours"),
    "TrainStep": None,
}


def build_step(name, cfg, lr):
    import mindspore as ms
    from mindspore import Parameter, Tensor, nn, ops

    from src.optim import NetWithLoss, create_loss, create_optimizer, create_train_cell
    from src.resnet import network_from_config
    from src.train_step import _grad_sum, _unscale

    ms.set_seed(1)
    net = network_from_config(cfg)
    if VARIANTS[name] is None:
        return create_train_cell(cfg, NetWithLoss(net, create_loss(cfg)), create_optimizer(cfg, net, lr), len(lr))
    smooth, groups, scaled, check = VARIANTS[name]
    loss_fn = create_loss(cfg) if smooth else nn.CrossEntropyLoss()
    opt = create_optimizer(cfg, net, lr) if groups else nn.Momentum(net.trainable_params(), Tensor(lr), 0.9)
    finite_all = ops.MultitypeFuncGraph("finite_all")

    @finite_all.register("Tensor")
    def _finite_all(grad):
        return ops.isfinite(grad).all()

    class Step(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.network = NetWithLoss(net, loss_fn)
            self.network.set_grad()
            self.optimizer = opt
            self.weights = opt.parameters
            self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
            self.hyper_map = ops.HyperMap()
            self.scale = Parameter(Tensor(float(cfg.loss_scale if scaled else 1.0), ms.float32), name="scale",
                                   requires_grad=False)

        def construct(self, image, label):
            loss = self.network(image, label)
            scale = self.scale * 1.0
            grads = self.grad(self.network, self.weights)(image, label, ops.ones_like(loss) * scale)
            if scaled:
                grads = self.hyper_map(ops.partial(_unscale, scale), grads)
            finite = ops.ones((), ms.bool_)
            if check == "isfinite":
                finite = ops.stack(self.hyper_map(finite_all, grads)).all()
            elif check == "ours":
                finite = ops.isfinite(ops.stack(self.hyper_map(_grad_sum, grads))).all()
            return ops.depend(loss, self.optimizer(grads)), finite

    cell = Step()
    cell.set_train()
    return cell


def build_reduction(name):
    from mindspore import nn, ops

    from src.train_step import _grad_sum

    finite_all = ops.MultitypeFuncGraph("finite_all_r")

    @finite_all.register("Tensor")
    def _finite_all(grad):
        return ops.isfinite(grad).all()

    reduce_sum = ops.MultitypeFuncGraph("reduce_sum_r")

    @reduce_sum.register("Tensor")
    def _reduce_sum(grad):
        return ops.ReduceSum()(grad)

    class Reduce(nn.Cell):
        def __init__(self):
            super().__init__()
            self.hyper_map = ops.HyperMap()

        def construct(self, *grads):
            if name == "isfinite(g).all() per gradient":
                return ops.stack(self.hyper_map(finite_all, grads)).all()
            if name == "ReduceSum per gradient":
                return ops.isfinite(ops.stack(self.hyper_map(reduce_sum, grads))).all()
            return ops.isfinite(ops.stack(self.hyper_map(_grad_sum, grads))).all()
    return Reduce()


REDUCTIONS = ("isfinite(g).all() per gradient", "ReduceSum per gradient", "ours: ones @ g.reshape(rows, -1)")


def child(args):
    import mindspore as ms
    import numpy as np

    from src import host
    from src.config import parse_args
    from src.resnet import network_from_config

    host.apply_isa_cap("CPU", "auto", log=None)
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = parse_args(["--class_num", "1000", "--batch_size", str(args.batch_size), "--train_image_size",
                      str(args.image_size), "--epoch_size", "1", "--warmup_epochs", "0"])
    rng = np.random.default_rng(0)
    if args.child in VARIANTS:
        lr = np.full(1000, 0.01, np.float32)
        cell = build_step(args.child, cfg, lr)
        x = ms.Tensor(rng.standard_normal((args.batch_size, 3, args.image_size, args.image_size)).astype(np.float32))
        y = ms.Tensor(rng.integers(0, 1000, args.batch_size).astype(np.int32))
        sec, times = time_windows(lambda: cell(x, y)[0].asnumpy(), warmup=args.warmup, runs=args.runs,
                                  window=args.window)
    else:
        grads = tuple(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32))
                      for p in network_from_config(cfg).trainable_params())
        cell = build_reduction(args.child)
        sec, times = time_windows(lambda: cell(*grads).asnumpy(), warmup=2, runs=7)
    print(json.dumps({"ms": sec * 1000, "windows_ms": [t * 1000 for t in times]}))


def main(argv=None):
    parser = benchmark_parser(__doc__, image_size=32, batch_size=32, warmup=2, runs=7, window=2,
                              output="bench_results/step_overhead.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    results = {}
    for name in list(VARIANTS) + list(REDUCTIONS):
        cmd = [sys.executable, "-m", "benchmarks.step_overhead", "--child", name, "--image_size",
               str(args.image_size), "--batch_size", str(args.batch_size), "--warmup", str(args.warmup), "--runs",
               str(args.runs), "--window", str(args.window)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        print(f"{name}: {results[name]['ms']:.1f} ms", flush=True)
    bare = results["bare"]["ms"]
    rows = [[name, f"{results[name]['ms']:.1f}", f"{args.batch_size * 1000 / results[name]['ms']:.1f}",
             f"{results[name]['ms'] - bare:+.1f}"] for name in VARIANTS]
    print(markdown_table(["training step", "ms/step", "img/s", "vs bare (ms)"], rows))
    print(markdown_table(["overflow reduction over ResNet-50's 161 gradients", "ms"],
                         [[name, f"{results[name]['ms']:.1f}"] for name in REDUCTIONS]))
    write_json(args.output, {"host": host_info(), "image_size": args.image_size, "batch": args.batch_size,
                             "results": results})
    print(f"written: {args.output}")
    return results


if __name__ == "__main__":
    main()

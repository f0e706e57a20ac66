"""Step-time benchmark: Momentum vs THOR (non-update and update steps) on ResNet-50, synthetic data.

    python scripts/bench_thor.py                                   # 224x224 and 32x32, batch 32
    python scripts/bench_thor.py --image_sizes 32 --batch_size 32 --runs 7 --device_target GPU

For each image size: a compiled step is warmed up, then ``--runs`` windows of ``--window`` steps are timed
(each ended by reading the loss back, so device work is included); the median window gives ms/step and img/s.
Reports the amortized THOR cost per image at ``--frequency`` (the recipe's 834):
(t_update + (F - 1) * t_plain) / (F * t_momentum), and the memory of the THOR state. Prints a markdown
table and writes JSON to ``--output``.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mindspore as ms  # noqa: E402

from src import host  # noqa: E402
from src.config import parse_args  # noqa: E402
from src.optim import NetWithLoss, create_loss, create_optimizer, create_train_cell  # noqa: E402
from src.resnet import network_from_config  # noqa: E402


def build(cfg, update_every_step):
    ms.set_seed(1)
    net = network_from_config(cfg)
    steps = 1000
    lr = np.full(steps, 0.01, np.float32)
    opt = create_optimizer(cfg, net, lr)
    cell = create_train_cell(cfg, NetWithLoss(net, create_loss(cfg)), opt, steps)
    if cfg.optimizer == "Thor":
        cell.update_flags[:] = update_every_step
    return cell, opt


def time_cell(cell, batch, warmup, runs, window):
    x, y = batch
    for _ in range(warmup):
        cell(x, y)[0].asnumpy()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(window):
            out = cell(x, y)
        out[0].asnumpy()
        times.append((time.perf_counter() - start) / window)
    return statistics.median(times), times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_sizes", default="224,32")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--frequency", type=int, default=834)
    parser.add_argument("--split_dim", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--window", type=int, default=1, help="steps per timed window")
    parser.add_argument("--device_target", default="CPU")
    parser.add_argument("--output", default=os.path.join(ROOT, "bench_results", "thor_step_times.json"))
    args = parser.parse_args(argv)
    host.apply_isa_cap(args.device_target, "auto")  # as train.py does, before the first kernel
    ms.set_device(args.device_target)
    ms.set_context(mode=ms.GRAPH_MODE)

    results = []
    for size in [int(s) for s in args.image_sizes.split(",")]:
        common = ["--device_target", args.device_target, "--net_name", "resnet50", "--class_num", "1000",
                  "--batch_size", str(args.batch_size), "--train_image_size", str(size), "--loss_scale", "128",
                  "--split_dim", str(args.split_dim), "--epoch_size", "1", "--warmup_epochs", "0"]
        rng = np.random.default_rng(0)
        batch = (ms.Tensor(rng.standard_normal((args.batch_size, 3, size, size)).astype(np.float32)),
                 ms.Tensor(rng.integers(0, 1000, args.batch_size).astype(np.int32)))
        row = {"image_size": size, "batch_size": args.batch_size}
        for name, extra, update in [("momentum", ["--optimizer", "Momentum"], False),
                                    ("thor_plain", ["--optimizer", "Thor"], False),
                                    ("thor_update", ["--optimizer", "Thor"], True)]:
            cfg = parse_args(common + extra)
            cell, opt = build(cfg, update)
            t, all_t = time_cell(cell, batch, args.warmup, args.runs, args.window)
            row[f"{name}_ms"] = t * 1000
            row[f"{name}_img_s"] = args.batch_size / t
            row[f"{name}_all_ms"] = [round(v * 1000, 2) for v in all_t]
            if name == "thor_update":
                row["thor_state_mib"] = opt.state_bytes() / 2 ** 20
            print(f"  {size}px {name}: {t * 1000:.1f} ms/step, {args.batch_size / t:.3g} img/s", flush=True)
            del cell, opt
        f = args.frequency
        row["frequency"] = f
        row["plain_over_momentum"] = row["thor_plain_ms"] / row["momentum_ms"]
        row["update_over_momentum"] = row["thor_update_ms"] / row["momentum_ms"]
        row["amortized_over_momentum"] = (row["thor_update_ms"] + (f - 1) * row["thor_plain_ms"]) / (f * row["momentum_ms"])
        results.append(row)

    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                          "device_target": args.device_target, "mindspore": ms.__version__},
              "args": vars(args), "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as fh:
        json.dump(report, fh, indent=1)
    print("\n| image | batch | Momentum ms/step (img/s) | THOR non-update ms/step (x) | THOR update ms/step (x) | "
          f"amortized at F={args.frequency} | THOR state MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['image_size']} | {r['batch_size']} | {r['momentum_ms']:.1f} ({r['momentum_img_s']:.3g}) | "
              f"{r['thor_plain_ms']:.1f} ({r['plain_over_momentum']:.3f}x) | "
              f"{r['thor_update_ms']:.1f} ({r['update_over_momentum']:.2f}x) | {r['amortized_over_momentum']:.3f}x | "
              f"{r['thor_state_mib']:.1f} |")
    print(f"\nwritten {args.output}")
    return report


if __name__ == "__main__":
    main()

"""Where the time goes around the network: the data pipeline, our training loop against a raw MindSpore loop,
evaluation, and peak memory of training.

    python -m benchmarks.pipeline --data_path ../shared/data/cifar10/train          # CPU, defaults below
    python -m benchmarks.pipeline --data_path /data/imagenet/train --device_target GPU --base_width 64

Rows (each after warm-up; the median of ``--runs`` windows of ``--window`` steps or batches):
- data: decode + RandomCropDecodeResize(``--image_size``) + flip + normalise + batch from the JPEG folder with
  ``--workers`` workers, no training (img/s the pipeline can feed);
- raw loop: ``nn.TrainOneStepCell(nn.WithLossCell(net, loss), nn.Momentum)`` on one fixed batch, called in a
  Python loop (what the network alone costs);
- train.py Momentum / THOR: the real entry point in a subprocess (synthetic data of the same size, our train
  step, callbacks, ``Model.train``); img/s of its logged windows, the first epoch (compile) left out; its peak
  RSS as its own metrics log records it (``wait4``'s would include this process's, inherited through exec);
- eval: ``LogitsCell`` forward passes on one batch (img/s).
The ratio train.py Momentum / raw loop shows the overhead of our pipeline; data / train.py shows the head room
of the input pipeline. Prints a markdown table and writes JSON to ``--output``.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import mindspore as ms
import numpy as np
from mindspore import nn

from benchmarks.timing import host_info, time_windows, write_json
from src import host
from src.config import parse_args
from src.dataset import create_folder_dataset
from src.evaluate import LogitsCell
from src.optim import create_loss
from src.resnet import network_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_jpegs(n, classes=10, seed=0):
    """``n`` photo-like 500x375 JPEGs (smooth colour fields plus noise, quality 90, about 100-150 KB like
    ImageNet's) in ``classes`` class folders of a temporary directory."""
    from PIL import Image
    root = tempfile.mkdtemp(prefix="bench_jpegs_")
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500] / 100.0
    for i in range(n):
        folder = os.path.join(root, f"class_{i % classes}")
        os.makedirs(folder, exist_ok=True)
        f = rng.uniform(0.5, 3, (3, 2))
        img = np.stack([np.sin(f[c, 0] * x + c) * np.cos(f[c, 1] * y) for c in range(3)], -1) * 80 + 128
        img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"{i:05d}.JPEG"), quality=90)
    return root


def windows(step, warmup, runs, window, images_per_step):
    """img/s of ``runs`` timed windows of ``window`` calls of ``step`` after ``warmup`` calls (the median, and
    each window's)."""
    _, seconds = time_windows(step, warmup=warmup, runs=runs, window=window)
    rates = [images_per_step / t for t in seconds]
    return statistics.median(rates), rates


def bench_data(args):
    data, _ = create_folder_dataset(args.data_path, True, args.image_size, args.batch_size, args.workers)
    it = data.repeat().create_tuple_iterator(output_numpy=True)
    return windows(lambda: next(it), args.warmup * 5, args.runs, args.window * 5, args.batch_size)


def net_cfg(args, *extra):
    return parse_args(["--device_target", args.device_target, "--net_name", args.net_name, "--base_width",
                       str(args.base_width), "--class_num", str(args.class_num), "--batch_size", str(args.batch_size),
                       "--train_image_size", str(args.image_size), "--eval_image_size", str(args.image_size),
                       *extra])


def batch(args):
    rng = np.random.default_rng(0)
    return (ms.Tensor(rng.standard_normal((args.batch_size, 3, args.image_size, args.image_size)).astype(np.float32)),
            ms.Tensor(rng.integers(0, args.class_num, args.batch_size).astype(np.int32)))


def bench_raw(args):
    cfg = net_cfg(args)
    ms.set_seed(1)
    net = network_from_config(cfg)
    cell = nn.TrainOneStepCell(nn.WithLossCell(net, create_loss(cfg)),
                               nn.Momentum(net.trainable_params(), 0.01, 0.9, weight_decay=1e-4))
    cell.set_train()
    x, y = batch(args)
    return windows(lambda: cell(x, y).asnumpy(), args.warmup, args.runs, args.window, args.batch_size)


def bench_eval(args):
    cfg = net_cfg(args)
    net = network_from_config(cfg)
    cell = LogitsCell(net)
    net.set_train(False)
    x, _ = batch(args)
    return windows(lambda: cell(x).asnumpy(), args.warmup, args.runs, args.window, args.batch_size)


def bench_train_py(args, optimizer):
    """Run train.py on synthetic data; img/s of the logged windows after epoch 1, and peak RSS."""
    out = tempfile.mkdtemp(prefix=f"bench_{optimizer}_")
    steps = (args.warmup + args.runs * args.window)
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--device_target", args.device_target,
           "--net_name", args.net_name, "--base_width", str(args.base_width), "--class_num", str(args.class_num),
           "--batch_size", str(args.batch_size), "--train_image_size", str(args.image_size),
           "--eval_image_size", str(args.image_size), "--optimizer", optimizer, "--epoch_size", "2",
           "--warmup_epochs", "0", "--synthetic_train_images", str(steps * args.batch_size),
           "--log_interval", str(args.window), "--save_checkpoint", "false", "--loss_scale", "1",
           "--frequency", str(args.frequency), "--output_dir", out]
    with open(os.path.join(out, "stdout.txt"), "w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        status = child.wait()
    if status != 0:
        raise SystemExit(f"train.py failed, see {out}/stdout.txt")
    events = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    # epoch 2 only (epoch 1 holds the compile); its first window follows the epoch boundary
    rates = [e["img_per_s"] for e in events if e["event"] == "step" and e["epoch"] == 2][1:]
    peak = max((e.get("peak_rss_mib") or 0.0) for e in events if e["event"] == "epoch")
    return statistics.median(rates), rates, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=None, help="an ImageNet-layout JPEG folder (e.g. cifar10/train)")
    parser.add_argument("--make_jpegs", type=int, default=0,
                        help="instead of --data_path: write this many ImageNet-sized (500x375) JPEGs to a temporary "
                             "folder and read those")
    parser.add_argument("--data_only", action="store_true", help="only the data-pipeline row")
    parser.add_argument("--device_target", default="CPU")
    parser.add_argument("--net_name", default="resnet50")
    parser.add_argument("--base_width", type=int, default=16)
    parser.add_argument("--class_num", type=int, default=10)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--data_image_size", type=int, default=224, help="crop size for the data-pipeline row")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frequency", type=int, default=10, help="THOR update interval in the train.py row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--output", default=os.path.join(ROOT, "bench_results", "pipeline.json"))
    args = parser.parse_args(argv)
    host.apply_isa_cap(args.device_target, "auto")  # as train.py does, before the first kernel
    ms.set_device(args.device_target)
    ms.set_context(mode=ms.GRAPH_MODE)

    if args.make_jpegs:
        args.data_path = make_jpegs(args.make_jpegs)
    elif not args.data_path:
        parser.error("give --data_path or --make_jpegs")
    rows = {}
    size = args.image_size
    args.image_size = args.data_image_size
    rows["data"] = bench_data(args)
    args.image_size = size
    print(f"data pipeline ({args.data_image_size}px): {rows['data'][0]:.1f} img/s", flush=True)
    if args.data_only:
        write_json(args.output, {"host": host_info(), "args": vars(args), "img_per_s": {"data": rows["data"][0]},
                                 "windows": {"data": [round(r, 2) for r in rows["data"][1]]}})
        print(f"written {args.output}")
        return
    rows["raw"] = bench_raw(args)
    print(f"raw TrainOneStepCell loop: {rows['raw'][0]:.1f} img/s", flush=True)
    rows["eval"] = bench_eval(args)
    print(f"eval forward: {rows['eval'][0]:.1f} img/s", flush=True)
    for opt in ("Momentum", "Thor"):
        rows[opt] = bench_train_py(args, opt)
        print(f"train.py {opt}: {rows[opt][0]:.1f} img/s, peak RSS {rows[opt][2]:.0f} MiB", flush=True)

    result = {"host": host_info(), "args": vars(args),
              "img_per_s": {k: v[0] for k, v in rows.items()},
              "windows": {k: [round(r, 2) for r in v[1]] for k, v in rows.items()},
              "peak_rss_mib": {k: rows[k][2] for k in ("Momentum", "Thor")},
              "train_py_over_raw": rows["Momentum"][0] / rows["raw"][0],
              "data_over_train_py": rows["data"][0] / rows["Momentum"][0]}
    write_json(args.output, result)
    net = f"{args.net_name} width {args.base_width}, {args.image_size}px, batch {args.batch_size}"
    print(f"\n| measurement ({net}) | img/s | note |")
    print("|---|---|---|")
    print(f"| data pipeline, {args.data_image_size}px crops, {args.workers} workers | {rows['data'][0]:.1f} | "
          f"{result['data_over_train_py']:.1f}x train.py Momentum's consumption |")
    print(f"| raw TrainOneStepCell loop | {rows['raw'][0]:.1f} | |")
    print(f"| train.py Momentum | {rows['Momentum'][0]:.1f} | {result['train_py_over_raw']:.3f}x raw loop; "
          f"peak RSS {rows['Momentum'][2]:.0f} MiB |")
    print(f"| train.py THOR (frequency {args.frequency}) | {rows['Thor'][0]:.1f} | "
          f"peak RSS {rows['Thor'][2]:.0f} MiB |")
    print(f"| eval forward | {rows['eval'][0]:.1f} | |")
    print(f"\nwritten {args.output}")


if __name__ == "__main__":
    main()

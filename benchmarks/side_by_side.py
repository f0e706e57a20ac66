"""train.py and eval.py next to a raw MindSpore loop and a raw torchvision loop: same network, image size, batch.

    python -m benchmarks.side_by_side                                  # 32x32 batch 32 and 224x224 batch 16
    python -m benchmarks.side_by_side --cases 32:32 --torch_python /path/to/venv-with-torch/bin/python
    python -m benchmarks.side_by_side --cases 32:32 --cpu_isa_cap none   # MindSpore without the oneDNN cap

Full-width ResNet-50 v1.5 (1000 classes), float32, on synthetic data, one case at a time:
- ``train.py``: the real script (Momentum recipe of default_config.yaml: label smoothing, loss scale, weight
  decay, callbacks, ``Model.train``), run as a subprocess; img/s from its metrics.jsonl, one line per
  ``--window`` steps, the first ``--warmup`` windows (compile) dropped, median of the rest.
- raw MindSpore: ``nn.TrainOneStepCell(nn.WithLossCell(net, CrossEntropyLoss), nn.Momentum)`` on one fixed batch.
- raw torchvision: ``torchvision.models.resnet50()``, SGD momentum, CrossEntropyLoss, one fixed batch; run by
  ``--torch_python`` (default: this interpreter). torch is not a dependency: without it the column is skipped
  and the output says so.
- ``eval.py`` over a folder of links to one checkpoint (each pass prints its img/s; the first pass, which
  compiles, is dropped), the raw MindSpore forward, and torchvision inference (``eval()``, ``no_grad``).

Each column runs in its own process (oneDNN reads its ISA cap once per process; torch and MindSpore are not
loaded together). The MindSpore columns use the same ``cpu_isa_cap`` as train.py. Prints a markdown table with
the ratios and writes JSON.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

from benchmarks.timing import host_info, markdown_table, time_windows, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- children: each runs in a process of its own and prints one JSON line -------------------------------

def child_ms(args):
    """Raw MindSpore training step or forward pass on one fixed batch."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    from src import host
    from src.config import parse_args
    from src.resnet import network_from_config

    host.apply_isa_cap("CPU", args.cpu_isa_cap, log=lambda m: print(m, file=sys.stderr))
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(1)
    net = network_from_config(parse_args(["--class_num", "1000"]))
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 1000, args.batch).astype(np.int32))
    if args.child == "ms_train":
        cell = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()),
                                   nn.Momentum(net.trainable_params(), 0.01, 0.9))
        cell.set_train(True)
        step = lambda: cell(x, y).asnumpy()  # noqa: E731
    else:
        net.set_train(False)
        step = lambda: net(x).asnumpy()  # noqa: E731
    sec, times = time_windows(step, warmup=args.warmup, runs=args.runs, window=args.window)
    print(json.dumps({"img_per_s": args.batch / sec, "windows_s": times}))


def child_torch(args):
    """Raw torchvision training step or inference on one fixed batch."""
    try:
        import torch
        import torchvision
    except ImportError as exc:
        print(json.dumps({"skipped": f"torch/torchvision not importable by {sys.executable} ({exc})"}))
        return
    torch.manual_seed(1)
    net = torchvision.models.resnet50(num_classes=1000)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    if args.child == "torch_train":
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            return loss.item()
    else:
        net.eval()

        def step():
            with torch.no_grad():
                return net(x)[0, 0].item()
    sec, times = time_windows(step, warmup=args.warmup, runs=args.runs, window=args.window)
    print(json.dumps({"img_per_s": args.batch / sec, "windows_s": times, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


# ---- the parent: our scripts as subprocesses, children for the raw loops ------------------------------------

def run_child(kind, size, batch, args, python=None):
    cmd = [python or sys.executable, "-m", "benchmarks.side_by_side", "--child", kind, "--size", str(size),
           "--batch", str(batch), "--warmup", str(args.warmup), "--runs", str(args.runs), "--window",
           str(args.window), "--cpu_isa_cap", args.cpu_isa_cap]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_train_py(size, batch, args, out):
    steps = (args.warmup + args.runs) * args.window
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--output_dir", out, "--class_num", "1000",
           "--batch_size", str(batch), "--train_image_size", str(size), "--eval_image_size", str(size),
           "--epoch_size", "1", "--warmup_epochs", "0", "--lr_max", "0.01", "--synthetic_train_images",
           str(steps * batch), "--synthetic_eval_images", str(batch * args.runs), "--log_interval",
           str(args.window), "--cpu_isa_cap", args.cpu_isa_cap, "--keep_checkpoint_max", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"train.py failed: {proc.stdout.strip().splitlines()[-3:]}")
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    ips = [m["img_per_s"] for m in lines if m.get("event") == "step"][args.warmup:]
    isa = next((line for line in proc.stdout.splitlines() if line.startswith("oneDNN:")), "")
    return {"img_per_s": statistics.median(ips), "windows_img_per_s": ips, "isa_note": isa}


def run_eval_py(size, batch, args, out):
    ckpt = [f for f in os.listdir(out) if f.endswith(".ckpt")][0]
    folder = os.path.join(out, "eval_links")
    os.makedirs(folder, exist_ok=True)
    passes = args.eval_passes + 1
    for i in range(passes):  # eval.py evaluates every checkpoint of a folder, compiling once
        os.symlink(os.path.join(out, ckpt), os.path.join(folder, f"resnet50-{i + 1}_1.ckpt"))
    cmd = [sys.executable, os.path.join(ROOT, "eval.py"), "--checkpoint_path", folder, "--config_path",
           os.path.join(out, "config.yaml"), "--eval_batch_size", str(batch)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"eval.py failed: {proc.stdout.strip().splitlines()[-3:]}")
    ips = [float(v) for v in re.findall(r"\(([\d.]+) img/s\)", proc.stdout)][1:]
    return {"img_per_s": statistics.median(ips), "passes_img_per_s": ips}


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def fmt(result):
    if result is None:
        return "-"
    if "skipped" in result:
        return "skipped"
    return f"{result['img_per_s']:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="32:32,224:16", help="comma-separated IMAGE_SIZE:BATCH")
    parser.add_argument("--torch_python", default=sys.executable,
                        help="a Python with torch and torchvision for the torchvision columns")
    parser.add_argument("--cpu_isa_cap", default="auto", help="for every MindSpore column (see default_config.yaml)")
    parser.add_argument("--warmup", type=int, default=2, help="windows before timing (compile, allocator)")
    parser.add_argument("--runs", type=int, default=5, help="timed windows; the median is reported")
    parser.add_argument("--window", type=int, default=2, help="steps per timed window")
    parser.add_argument("--eval_passes", type=int, default=3, help="timed eval.py passes (after one compiling pass)")
    parser.add_argument("--output", default="bench_results/side_by_side.json")
    parser.add_argument("--child", choices=("ms_train", "ms_infer", "torch_train", "torch_infer"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return (child_ms if args.child.startswith("ms") else child_torch)(args)

    results = []
    for case in args.cases.split(","):
        size, batch = (int(v) for v in case.split(":"))
        print(f"== {size}x{size}, batch {batch}", flush=True)
        row = {"image_size": size, "batch": batch}
        with tempfile.TemporaryDirectory(prefix="side_by_side_") as out:
            row["train_py"] = run_train_py(size, batch, args, out)
            print(f"train.py: {fmt(row['train_py'])} img/s ({row['train_py']['isa_note']})", flush=True)
            row["eval_py"] = run_eval_py(size, batch, args, out)
            print(f"eval.py: {fmt(row['eval_py'])} img/s", flush=True)
        for kind, python in (("ms_train", None), ("ms_infer", None), ("torch_train", args.torch_python),
                             ("torch_infer", args.torch_python)):
            row[kind] = run_child(kind, size, batch, args, python)
            print(f"{kind}: {fmt(row[kind])} img/s" + (f" ({row[kind]['skipped']})" if "skipped" in row[kind] else ""),
                  flush=True)
        results.append(row)

    def ips(r, key):
        return None if r.get(key) is None or "skipped" in r[key] else r[key]["img_per_s"]

    header = ["image", "batch", "train.py img/s", "raw MindSpore", "torchvision", "train.py / raw MS",
              "train.py / torchvision", "eval.py img/s", "raw MS forward", "torchvision inference",
              "eval.py / torchvision"]
    rows = [[f"{r['image_size']}x{r['image_size']}", r["batch"], fmt(r["train_py"]), fmt(r["ms_train"]),
             fmt(r["torch_train"]), ratio(ips(r, "train_py"), ips(r, "ms_train")),
             ratio(ips(r, "train_py"), ips(r, "torch_train")), fmt(r["eval_py"]), fmt(r["ms_infer"]),
             fmt(r["torch_infer"]), ratio(ips(r, "eval_py"), ips(r, "torch_infer"))] for r in results]
    print(markdown_table(header, rows))
    skipped = {r["torch_train"]["skipped"] for r in results if "skipped" in r["torch_train"]}
    for reason in skipped:
        print(f"torchvision columns skipped: {reason}; pass --torch_python PYTHON_WITH_TORCH")
    write_json(args.output, {"host": host_info(), "args": {k: v for k, v in vars(args).items() if k not in
                                                            ("child", "size", "batch")}, "results": results})
    print(f"written: {args.output}")
    return results


if __name__ == "__main__":
    main()

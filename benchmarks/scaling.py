"""Data-parallel scaling on one machine: 1 process against N msrun workers, same global batch.

    python -m benchmarks.scaling                       # narrow ResNet-50, 32x32 synthetic, global batch 32
    python -m benchmarks.scaling --workers 2 --optimizer Thor --extra "--frequency 50"

Both runs go through the real entry points (train.py, scripts/run_distribute_train_msrun.sh) and read img/s
(images of all ranks per second) from rank 0's metrics.jsonl; the first ``--skip`` logged windows (compile,
warm-up) are dropped and the median of the rest is reported. Scaling efficiency = img/s of N workers /
img/s of 1 process. Prints a markdown table and writes JSON to ``--output``.
"""
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile

from benchmarks.timing import benchmark_parser, host_info, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _median_ips(metrics, skip):
    rows = [json.loads(l) for l in open(metrics) if '"event": "step"' in l]
    values = [r["img_per_s"] for r in rows][skip:]
    if not values:
        raise SystemExit(f"error: {metrics}: not enough logged steps after skipping {skip}; raise --steps")
    return statistics.median(values), len(values)


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    p = benchmark_parser(__doc__, workers=2, global_batch=32, image_size=32, base_width=16, optimizer="Momentum",
                         steps=60, log_interval=5, skip=2, extra="",
                         output=os.path.join(ROOT, "bench_results", "scaling.json"),
                         helps={"steps": "training steps per run", "skip": "logged windows to drop (compile, warm-up)",
                                "extra": "more train.py arguments"})
    args = p.parse_args(argv)
    if args.global_batch % args.workers:
        raise SystemExit("error: --global_batch must be a multiple of --workers")

    def common(batch):
        images = args.steps * args.global_batch
        return ["--device_target", "CPU", "--net_name", "resnet50", "--base_width", str(args.base_width),
                "--class_num", "10", "--train_image_size", str(args.image_size), "--batch_size", str(batch),
                "--synthetic_train_images", str(images), "--epoch_size", "1", "--warmup_epochs", "0",
                "--lr_max", "0.05", "--num_parallel_workers", "1", "--log_interval", str(args.log_interval),
                "--save_checkpoint", "false", "--optimizer", args.optimizer, *shlex.split(args.extra)]

    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        single = os.path.join(tmp, "single")
        subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *common(args.global_batch),
                        "--output_dir", single], check=True, env=env, capture_output=True)
        results["single_img_s"], n1 = _median_ips(os.path.join(single, "metrics.jsonl"), args.skip)
        multi = os.path.join(tmp, "multi")
        env_m = dict(env, WORKER_NUM=str(args.workers), MASTER_PORT=str(_port()), LOG_DIR=os.path.join(tmp, "logs"))
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_distribute_train_msrun.sh"),
                        *common(args.global_batch // args.workers), "--output_dir", multi],
                       check=True, env=env_m, capture_output=True)
        results["multi_img_s"], n2 = _median_ips(os.path.join(multi, "metrics.jsonl"), args.skip)
    results["efficiency"] = results["multi_img_s"] / results["single_img_s"]
    report = {"host": host_info(), "args": vars(args), "windows": [n1, n2], **results}
    write_json(args.output, report)
    print(f"| setup | global batch | img/s (median of logged windows) |\n|---|---|---|\n"
          f"| 1 process | {args.global_batch} | {results['single_img_s']:.1f} |\n"
          f"| {args.workers} msrun workers x {args.global_batch // args.workers} | {args.global_batch} | "
          f"{results['multi_img_s']:.1f} |\n\nscaling efficiency {results['efficiency']:.2f} "
          f"({args.optimizer}, resnet50 width {args.base_width}, {args.image_size}x{args.image_size}, "
          f"{os.cpu_count()} cores)\nwritten {args.output}")
    return report


if __name__ == "__main__":
    main()

"""Export and verify a full-width ResNet-50 in every format this backend can run: time, peak memory, and the
max difference between the exported file and the checkpoint network.

    python -m benchmarks.export_formats                         # a freshly initialised ResNet-50, 1x3x224x224
    python -m benchmarks.export_formats --random_bn true        # BatchNorm statistics drawn at random (large logits)
    python -m benchmarks.export_formats --checkpoint_path output/resnet50-best.ckpt

Each format is exported by ``export.py --verify true`` in its own process (as users run it); the process's
wall time is measured, and its peak RSS is the one export.py prints (from /proc: ``wait4``'s ``ru_maxrss`` would
include this process's RSS, inherited through exec). Prints a markdown table and writes JSON to ``--output``.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from benchmarks.timing import host_info, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LINE = re.compile(r"verify (\w+): max \|exported - checkpoint\| = (\S+) .*max \|logit\| (\S+), bound (\S+)\)")
PEAK = re.compile(r"^exported .*, peak RSS (\d+) MiB\)$", re.M)


def make_checkpoint(folder, random_bn, seed):
    """A ResNet-50 checkpoint (fresh init, optionally random BN statistics) and its config.yaml in ``folder``."""
    import mindspore as ms
    import numpy as np

    from src import checkpoint
    from src.config import parse_args, save_config
    from src.resnet import network_from_config
    cfg = parse_args(["--device_target", "CPU", "--seed", str(seed)])
    ms.set_device("CPU")
    ms.set_seed(seed)
    net = network_from_config(cfg)
    if random_bn:
        rng = np.random.default_rng(seed)
        for p in net.get_parameters():
            leaf = p.name.rsplit(".", 1)[-1]
            draw = {"gamma": lambda n: rng.uniform(0.5, 1.5, n), "beta": rng.standard_normal,
                    "moving_mean": rng.standard_normal, "moving_variance": lambda n: rng.uniform(0.5, 2.0, n)}
            if leaf in draw:
                p.set_data(ms.Tensor(np.asarray(draw[leaf](p.shape[0]), np.float32)))
    path = os.path.join(folder, "resnet50-fresh.ckpt")
    checkpoint.save(net, path, None, None, cfg)
    save_config(cfg, os.path.join(folder, "config.yaml"))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint_path", default=None)
    parser.add_argument("--random_bn", default="false")
    parser.add_argument("--formats", default="MINDIR,ONNX")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device_target", default="CPU")
    parser.add_argument("--output", default="bench_results/export.json")
    args = parser.parse_args()
    from src import host
    host.apply_isa_cap(args.device_target, "auto")  # for this process and the export.py runs it starts
    work = tempfile.mkdtemp(prefix="bench_export_")
    ckpt = args.checkpoint_path or make_checkpoint(work, args.random_bn.lower() == "true", args.seed)
    rows = []
    for fmt in args.formats.split(","):
        start = time.perf_counter()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            child = subprocess.Popen([sys.executable, os.path.join(ROOT, "export.py"), "--checkpoint_path", ckpt,
                                      "--file_format", fmt, "--verify", "true", "--batch_size", str(args.batch_size),
                                      "--image_size", str(args.image_size), "--device_target", args.device_target,
                                      "--file_name",
                                      os.path.join(work, "net")], stdout=out, stderr=err)
            status = child.wait()
            seconds = time.perf_counter() - start
            out.seek(0), err.seek(0)
            stdout, stderr, code = out.read(), err.read(), status
        m = LINE.search(stdout)
        peak = PEAK.search(stdout)  # export.py's own peak (wait4's ru_maxrss would include this process's)
        row = {"format": fmt, "ok": code == 0, "seconds": round(seconds, 1),
               "peak_rss_mib": int(peak.group(1)) if peak else None,
               "max_abs_diff": float(m.group(2)) if m else None, "max_logit": float(m.group(3)) if m else None,
               "bound": float(m.group(4)) if m else None}
        if code != 0:
            row["error"] = (stderr.strip().splitlines() or ["?"])[-1]
        rows.append(row)
    print("| format | ok | max abs diff | max logit | bound | export+verify s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['ok']} | {r['max_abs_diff']} | {r['max_logit']} | {r['bound']} | "
              f"{r['seconds']} | {'-' if r['peak_rss_mib'] is None else r['peak_rss_mib']} |")
    result = {"checkpoint": args.checkpoint_path or ("fresh ResNet-50" + (", random BN" if args.random_bn.lower()
                                                                          == "true" else "")),
              "input": [args.batch_size, 3, args.image_size, args.image_size], "rows": rows,
              "host": host_info()}
    write_json(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

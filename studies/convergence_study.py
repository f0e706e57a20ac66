"""THOR against Momentum on real images: per-epoch validation top-1 and the time each needs to reach
Momentum's final accuracy.

    python -m studies.convergence_study ../shared/data/cifar10
    python -m studies.convergence_study DATA --recipes config/cifar10_momentum.yaml,config/cifar10_thor.yaml

``DATA`` holds ``train/`` and ``val/`` in the ImageNet folder layout. Each recipe runs through train.py (same
seed; evaluation after every epoch), in its own folder under ``--output_dir``. The first recipe is the
baseline: its final top-1 is the target. For every run the report gives the first epoch whose top-1 reaches
the target and the wall-clock from train.py's ``start`` record to the end of that epoch's evaluation (compile
time included: it is part of what a user waits for), and the ratios to the baseline. Writes ``study.json``,
``study.md`` and, when matplotlib is installed, ``study.png`` into ``--output_dir``. Any further arguments
(``--key value``) go to every train.py run.

Rerunning the same command skips the runs that finished (their ``metrics.jsonl`` ends with ``done``) and reads
their curves back, so a study can span sessions; a run that was interrupted is started again, its folder kept
as ``<name>.interrupted-<time>``.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from src.errors import UserError, cli_main
from tools.plot_metrics import draw, read_events, read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RECIPES = "config/cifar10_momentum.yaml,config/cifar10_thor.yaml,config/cifar10_thor_trace.yaml"


def train_command(recipe, data, out, extra=()):
    """train.py on ``data``/train with evaluation on ``data``/val after every epoch, no checkpoints."""
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config_path", recipe,
            "--data_path", os.path.join(data, "train"), "--eval_dataset_path", os.path.join(data, "val"),
            "--run_eval", "true", "--eval_interval", "1", "--save_checkpoint", "false", "--output_dir", out, *extra]


def run_start(events):
    """Time of the run's ``start`` record (train.py writes it before compiling)."""
    return min(e["time"] for e in events if e["event"] == "start")


def points(events, start):
    """[(epoch, top1, seconds since ``start``)] of a run's evaluations."""
    return [(e["epoch"], e["top1"], e["time"] - start) for e in events if e["event"] == "eval"]


def curve(metrics_path, start=None):
    """``points`` of the run behind ``metrics_path``, since ``start`` (default: its ``start`` record)."""
    events = read_events(metrics_path)
    return points(events, run_start(events) if start is None else start)


def reach(points, target):
    """(epoch, seconds) of the first evaluation with top-1 >= target, or None."""
    return next(((e, t) for e, top1, t in points if top1 >= target - 1e-12), None)


def summarise(runs):
    """Add to each run: reached (epoch, seconds) of the baseline's final top-1, and the ratios."""
    base = runs[0]
    target = base["curve"][-1][1]
    base_epoch, base_time = len(base["curve"]), base["curve"][-1][2]
    for run in runs:
        hit = reach(run["curve"], target)
        run["target_top1"] = target
        run["reached"] = None if hit is None else {"epoch": hit[0], "seconds": round(hit[1], 1),
                                                   "epoch_ratio": hit[0] / base_epoch,
                                                   "time_ratio": hit[1] / base_time}
    return runs


def markdown(runs):
    lines = [f"Target: the baseline's ({runs[0]['name']}) final top-1 {runs[0]['target_top1']:.4f}.", "",
             "| run | epochs | final top-1 | best top-1 | epoch reaching target | wall-clock to target | "
             "epochs ratio | time ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c, hit = r["curve"], r["reached"]
        lines.append(f"| {r['name']} | {len(c)} | {c[-1][1]:.4f} | {max(p[1] for p in c):.4f} | "
                     + (f"{hit['epoch']} | {hit['seconds'] / 60:.1f} min | {hit['epoch_ratio']:.2f} | "
                        f"{hit['time_ratio']:.2f} |" if hit else "not reached | - | - | - |"))
    epochs = max(len(r["curve"]) for r in runs)
    lines += ["", "| epoch | " + " | ".join(r["name"] for r in runs) + " |", "|---|" + "---|" * len(runs)]
    for e in range(1, epochs + 1):
        cells = []
        for r in runs:
            p = [x for x in r["curve"] if x[0] == e]
            cells.append(f"{p[0][1]:.4f} ({p[0][2] / 60:.1f} min)" if p else "")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs, path):
    """top-1 against epochs and against wall-clock, the baseline's final top-1 as a dashed line
    (tools/plot_metrics.py); None when matplotlib is missing."""
    try:
        return draw([read_run(r["metrics"]) for r in runs], path, [r["name"] for r in runs],
                    panels=("top1_epoch", "top1_time"), hline=runs[0]["target_top1"])
    except UserError as exc:
        print(f"no plot: {exc}")
        return None


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="folder with train/ and val/ in ImageNet layout")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES)
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "bench_results", "study"))
    args, extra = parser.parse_known_args(argv)
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(args.data, split)):
            raise SystemExit(f"error: {args.data}: no {split}/ folder")
    os.makedirs(args.output_dir, exist_ok=True)
    runs = []
    for recipe in args.recipes.split(","):
        name = os.path.splitext(os.path.basename(recipe))[0]
        out = os.path.join(args.output_dir, name)
        metrics = os.path.join(out, "metrics.jsonl")
        try:
            events = read_events(metrics) if os.path.isfile(metrics) else []
        except UserError:  # a record torn by the interruption: the run did not finish
            events = []
        if any(e["event"] == "done" for e in events):
            print(f"== {name}: finished earlier, read from {metrics}", flush=True)
        else:
            if os.path.exists(out):
                kept = f"{out}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}"
                os.replace(out, kept)
                print(f"== {name}: an unfinished run was here; kept as {kept}, starting again", flush=True)
            cmd = train_command(recipe, args.data, out, extra)
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            proc = subprocess.run(cmd, cwd=ROOT)
            if proc.returncode != 0:
                raise SystemExit(f"error: {name} failed (exit {proc.returncode}); see {out}/train.log")
            events = read_events(metrics)
        start = run_start(events)
        runs.append({"name": name, "recipe": recipe, "seconds": max(e["time"] for e in events) - start,
                     "metrics": metrics, "curve": points(events, start)})
    summarise(runs)
    table = markdown(runs)
    print(table)
    with open(os.path.join(args.output_dir, "study.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.output_dir, "study.json"), "w") as f:
        json.dump({"data": args.data, "extra_args": extra, "runs": runs}, f, indent=1)
    png = plot(runs, os.path.join(args.output_dir, "study.png"))
    print(f"written {args.output_dir}/study.json, study.md" + (", study.png" if png else ""))


if __name__ == "__main__":
    main()

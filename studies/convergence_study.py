"""THOR against Momentum on real images, over several seeds: per-epoch validation top-1, and the epochs and
wall-clock each arm needs to reach the baseline's mean final top-1.

    python -m studies.convergence_study ../shared/data/cifar10
    python -m studies.convergence_study DATA --recipes config/cifar10_momentum.yaml@1,2,3 config/cifar10_thor.yaml@1

``DATA`` holds ``train/`` and ``val/`` in the ImageNet folder layout. An arm is a recipe and its seeds
(``RECIPE@SEED,SEED``; no ``@``: seed 1); the first arm is the baseline and its mean final top-1 is the target.
Every run goes through train.py (evaluation after every epoch, the best checkpoint kept) in its own folder
``<output_dir>/<recipe>_seed<k>``. For each run the report gives the first epoch whose top-1 reaches the target
and the wall-clock from train.py's ``start`` record to the end of that epoch's evaluation (compile time
included: it is part of what a user waits for); for each arm the mean and the range over its seeds, and the
ratios to the baseline's schedule (its epochs, and its mean wall-clock to the end of training); and the other way
round, the epochs and wall-clock the baseline takes to reach each arm's mean final top-1, so that an arm which
ends below the target is still compared at equal accuracy. Runs go seed-major (every arm's first seed, then every
arm's second, ...), and each run's training img/s is reported, since a shared machine's speed drifts. Writes
``study.json``, ``study.md`` and, when matplotlib is installed, ``study.png`` into ``--output_dir``, and prints
the best checkpoint of each arm. Any further arguments (``--key value``) go to every train.py run.

Rerunning the same command skips the runs that finished (their ``metrics.jsonl`` ends with ``done``) and reads
their curves back, so a study can span sessions; a run that was interrupted is started again, its folder kept
as ``<name>.interrupted-<time>``. A finished run whose saved ``config.yaml`` differs from what its recipe and the
command give now (a recipe edited since) is started again too, its folder kept as ``<name>.stale-<time>``.
``study.log`` in ``--output_dir`` records when each run started and ended.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import yaml

from src.config import config_yaml, load_yaml, parse_args
from src.errors import UserError, cli_main
from tools.plot_metrics import draw, read_events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RECIPES = ("config/cifar10_momentum.yaml@1,2,3", "config/cifar10_thor.yaml@1,2,3",
                   "config/cifar10_thor_mindspore.yaml@1")


def train_command(recipe, data, out, extra=(), checkpoints=True):
    """train.py on ``data``/train with evaluation on ``data``/val after every epoch; with ``checkpoints`` only
    the best one and the last one are written, without them none."""
    keep = ["--save_checkpoint", "true", "--save_checkpoint_epochs", "1000", "--keep_checkpoint_max", "1"]
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config_path", recipe,
            "--data_path", os.path.join(data, "train"), "--eval_dataset_path", os.path.join(data, "val"),
            "--run_eval", "true", "--eval_interval", "1", *(keep if checkpoints else ["--save_checkpoint", "false"]),
            "--output_dir", out, *extra]


def parse_arm(item):
    """``RECIPE[@SEED,SEED...]`` -> (recipe's absolute path, name, [seeds]); a relative RECIPE is looked up from
    the repository root, then from the working directory."""
    recipe, _, seeds = item.partition("@")
    try:
        seeds = [int(s) for s in seeds.split(",")] if seeds else [1]
    except ValueError:
        raise UserError(f"--recipes {item!r}: seeds must be integers, as in {recipe}@1,2,3") from None
    path = next((p for p in (os.path.join(ROOT, recipe), os.path.abspath(recipe)) if os.path.isfile(p)), None)
    if path is None:
        raise UserError(f"--recipes: recipe not found: {recipe}")
    return path, os.path.splitext(os.path.basename(recipe))[0], seeds


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


def finished_events(metrics):
    """The records of a finished run (its metrics.jsonl has a ``done`` record), else None."""
    try:
        events = read_events(metrics) if os.path.isfile(metrics) else []
    except UserError:  # a record torn by the interruption: the run did not finish
        return None
    return events if any(e["event"] == "done" for e in events) else None


PATH_KEYS = ("data_path", "eval_dataset_path")


def changed_keys(out, args):
    """Keys that the recipe or the command ``args`` (train.py's arguments) set and whose value in the run's saved
    config.yaml differs from what they give now; paths compared as absolute from the repository root (train.py's
    working directory); a key the saved config lacks (added to the code since) counts as at its default."""
    path = os.path.join(out, "config.yaml")
    if not os.path.isfile(path):
        return ["config.yaml (missing)"]
    saved = load_yaml(path)
    want = yaml.safe_load(config_yaml(parse_args(args)))
    recipe = args[args.index("--config_path") + 1]
    keys = set(load_yaml(recipe)) | {a[2:].split("=")[0] for a in args if a.startswith("--")}

    def norm(key, value):
        return os.path.normpath(os.path.join(ROOT, value)) if key in PATH_KEYS and value else value
    defaults = yaml.safe_load(config_yaml(parse_args([])))  # a key added since the run: its default then

    def was(key):
        return norm(key, saved.get(key, defaults.get(key)))
    return sorted(k for k in keys - {"config_path", "output_dir"} if was(k) != norm(k, want.get(k)))


def train_speed(events):
    """Median training img/s of a run's epochs, its first left out when it has more (it includes compiling):
    the machine's speed during the run, to read wall-clock ratios between runs by."""
    speeds = [e["img_per_s"] for e in events if e["event"] == "epoch"]
    return statistics.median(speeds[1:] if len(speeds) > 1 else speeds) if speeds else None


def reach(points, target):
    """(epoch, seconds) of the first evaluation with top-1 >= target, or None."""
    return next(((e, t) for e, top1, t in points if top1 >= target - 1e-12), None)


def spread(values):
    """{"mean", "std", "min", "max", "n"} of ``values`` (std 0 for one value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarise(arms):
    """Add to every run its reach of the target (the baseline arm's mean final top-1) and to every arm the
    spread over its seeds of final top-1, epochs and seconds to the target, and the ratios of their means to
    the baseline's schedule (its epochs; its mean wall-clock to the last evaluation). Returns the target."""
    base = arms[0]
    target = statistics.fmean(r["curve"][-1][1] for r in base["runs"])
    base_epochs = statistics.fmean(len(r["curve"]) for r in base["runs"])
    base_seconds = statistics.fmean(r["curve"][-1][2] for r in base["runs"])
    for arm in arms:
        for run in arm["runs"]:
            hit = reach(run["curve"], target)
            run["reached"] = None if hit is None else {"epoch": hit[0], "seconds": round(hit[1], 1)}
        hits = [r["reached"] for r in arm["runs"] if r["reached"]]
        arm["final_top1"] = spread([r["curve"][-1][1] for r in arm["runs"]])
        arm["run_seconds"] = spread([r["curve"][-1][2] for r in arm["runs"]])
        speeds = [r["img_per_s"] for r in arm["runs"] if r.get("img_per_s")]
        arm["img_per_s"] = spread(speeds) if speeds else None
        arm["reached_by"] = len(hits)
        arm["to_target"] = None
        if hits:
            epochs, seconds = spread([h["epoch"] for h in hits]), spread([h["seconds"] for h in hits])
            arm["to_target"] = {"epochs": epochs, "seconds": seconds, "epoch_ratio": epochs["mean"] / base_epochs,
                                "time_ratio": seconds["mean"] / base_seconds}
    for arm in arms[1:]:  # the other way round: how long the baseline takes to reach this arm's final top-1
        level = arm["final_top1"]["mean"]
        hits = [h for h in (reach(r["curve"], level) for r in base["runs"]) if h]
        arm["baseline_to_final"] = {"top1": level, "reached_by": len(hits)}
        if hits:
            epochs, seconds = spread([h[0] for h in hits]), spread([h[1] for h in hits])
            arm["baseline_to_final"].update(
                epochs=epochs, seconds=seconds,
                epoch_ratio=statistics.fmean(len(r["curve"]) for r in arm["runs"]) / epochs["mean"],
                time_ratio=arm["run_seconds"]["mean"] / seconds["mean"])
    return target


def _reach_cells(to):
    """The four table cells of a reach (epochs and wall-clock, mean (min-max), and the two ratios); dashes for
    None."""
    if not to:
        return "- | - | - | - |"
    e, s = to["epochs"], to["seconds"]
    return (f"{e['mean']:.2f} ({e['min']}-{e['max']}) | {s['mean'] / 60:.1f} min ({s['min'] / 60:.1f}-"
            f"{s['max'] / 60:.1f}) | {to['epoch_ratio']:.2f} | {to['time_ratio']:.2f} |")


def markdown(arms, target):
    base = arms[0]
    lines = [f"Target: the mean final top-1 of {base['name']} over its {len(base['runs'])} seed(s), {target:.4f}. "
             f"Ratios are to its schedule: {statistics.fmean(len(r['curve']) for r in base['runs']):g} epochs, "
             f"{base['run_seconds']['mean'] / 60:.1f} min (mean wall-clock to its last evaluation, compile "
             "included).", "",
             "| arm | seeds | epochs | final top-1 mean (min-max) | std | reached target | epochs to target "
             "mean (min-max) | wall-clock to target mean (min-max) | epochs ratio | time ratio | train img/s mean "
             "(min-max) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        f, to = arm["final_top1"], arm["to_target"]
        epochs = sorted({len(r["curve"]) for r in arm["runs"]})
        row = (f"| {arm['name']} | {','.join(str(r['seed']) for r in arm['runs'])} | "
               f"{','.join(map(str, epochs))} | {f['mean']:.4f} ({f['min']:.4f}-{f['max']:.4f}) | {f['std']:.4f} | "
               f"{arm['reached_by']}/{len(arm['runs'])} | ")
        row += _reach_cells(to)
        speed = arm.get("img_per_s")
        row += f" {speed['mean']:.0f} ({speed['min']:.0f}-{speed['max']:.0f}) |" if speed else " - |"
        lines.append(row)
    if len(arms) > 1:
        lines += ["", f"The other way round: the epochs and wall-clock {base['name']} takes to reach each arm's mean "
                  "final top-1, and the arm's schedule (epochs; mean wall-clock to its last evaluation) against them.",
                  "", f"| arm | its final top-1 mean | {base['name']} reached it | its epochs to it mean (min-max) "
                  "| its wall-clock to it mean (min-max) | arm's epochs / those | arm's wall-clock / that |",
                  "|---|---|---|---|---|---|---|"]
        for arm in arms[1:]:
            to = arm["baseline_to_final"]
            lines.append(f"| {arm['name']} | {to['top1']:.4f} | {to['reached_by']}/{len(base['runs'])} | "
                         + _reach_cells(to if to["reached_by"] else None))
    runs = [r for arm in arms for r in arm["runs"]]
    epochs = max(len(r["curve"]) for r in runs)
    lines += ["", "Top-1 after each epoch (minutes since the run's start):", "",
              "| epoch | " + " | ".join(r["name"] for r in runs) + " |", "|---|" + "---|" * len(runs)]
    for e in range(1, epochs + 1):
        cells = []
        for r in runs:
            p = [x for x in r["curve"] if x[0] == e]
            cells.append(f"{p[0][1]:.4f} ({p[0][2] / 60:.1f})" if p else "")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    total = sum(r["seconds"] for r in runs)
    lines += ["", f"Study time: {total / 60:.1f} min, the sum of the runs' wall-clock from train.py's start "
              "record to its done record (study.log has the start and end of every run). Train img/s: each run's "
              "median over its epochs after the first, the machine's speed during the run, on which wall-clock "
              "ratios between runs made at different times depend."]
    return "\n".join(lines) + "\n"


def plot(arms, target, path):
    """top-1 against epochs and against wall-clock, one colour per arm, the target as a dashed line
    (tools/plot_metrics.py); None when matplotlib is missing."""
    series, labels, colours = [], [], []
    for k, arm in enumerate(arms):
        for run in arm["runs"]:
            series.append({"top1_epoch": [(e, t) for e, t, _ in run["curve"]],
                           "top1_time": [(s / 60.0, t) for _, t, s in run["curve"]]})
            labels.append(arm["name"])
            colours.append(f"C{k}")
    try:
        return draw(series, path, labels, panels=("top1_epoch", "top1_time"), hline=target, colours=colours)
    except UserError as exc:
        print(f"no plot: {exc}")
        return None


def best_checkpoint(arm):
    """(path, top1, run name) of the arm's best evaluation whose ``-best.ckpt`` exists, or None."""
    best = None
    for run in arm["runs"]:
        path = os.path.join(run["output_dir"], f"{run['net_name']}-best.ckpt")
        top = max(run["curve"], key=lambda p: p[1])[1]
        if os.path.isfile(path) and (best is None or top > best[1]):
            best = (path, top, run["name"])
    return best


class StudyLog:
    """``study.log``: one timestamped line per event, also printed."""

    def __init__(self, path):
        self.path = path

    def __call__(self, message):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def run_once(recipe, seed, data, out, extra, log):
    """Train one run unless it finished earlier; returns its metrics records."""
    name = os.path.basename(out)
    metrics = os.path.join(out, "metrics.jsonl")
    cmd = train_command(recipe, data, out, [*extra, "--seed", str(seed)])
    events = finished_events(metrics)
    changed = changed_keys(out, cmd[2:]) if events is not None else []
    if events is not None and not changed:
        log(f"{name}: finished earlier, read from {metrics}")
        return events
    if os.path.exists(out):
        stamp = time.strftime('%Y%m%d-%H%M%S')
        kept = f"{out}.stale-{stamp}" if changed else f"{out}.interrupted-{stamp}"
        os.replace(out, kept)
        log(f"{name}: a finished run with other values of {', '.join(changed)} was here; kept as {kept}, starting "
            "again" if changed else f"{name}: an unfinished run was here; kept as {kept}, starting again")
    log(f"{name}: start: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise UserError(f"{name} failed (exit {proc.returncode}); see {out}/train.log")
    events = read_events(metrics)
    log(f"{name}: done in {(max(e['time'] for e in events) - run_start(events)) / 60:.1f} min")
    return events


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="folder with train/ and val/ in ImageNet layout")
    parser.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), help="RECIPE[@SEED,SEED...]")
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "output", "convergence_study"))
    args, extra = parser.parse_known_args(argv)
    arms = [parse_arm(item) for item in args.recipes]
    args.data = os.path.abspath(args.data)  # train.py runs from the repository root
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(args.data, split)):
            raise UserError(f"{args.data}: no {split}/ folder")
    os.makedirs(args.output_dir, exist_ok=True)
    log = StudyLog(os.path.join(args.output_dir, "study.log"))
    log(f"study: {' '.join(args.recipes)} on {args.data}" + (f" with {' '.join(extra)}" if extra else ""))
    report = [{"name": name, "recipe": os.path.relpath(recipe, ROOT), "runs": []} for recipe, name, _ in arms]
    # seed-major (every arm's first seed, then every arm's second ...): the arms' runs interleave in time, so
    # a machine whose speed drifts over hours slows all arms alike
    for k in range(max(len(seeds) for _, _, seeds in arms)):
        for (recipe, name, seeds), arm in zip(arms, report):
            if k >= len(seeds):
                continue
            seed = seeds[k]
            out = os.path.join(args.output_dir, f"{name}_seed{seed}")
            events = run_once(recipe, seed, args.data, out, extra, log)
            start = run_start(events)
            arm["runs"].append({"name": f"{name}_seed{seed}", "seed": seed, "output_dir": out,
                                "net_name": _net_name(out), "metrics": os.path.join(out, "metrics.jsonl"),
                                "seconds": max(e["time"] for e in events) - start, "curve": points(events, start),
                                "img_per_s": train_speed(events)})
    target = summarise(report)
    table = markdown(report, target)
    print(table)
    with open(os.path.join(args.output_dir, "study.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.output_dir, "study.json"), "w") as f:
        json.dump({"data": args.data, "extra_args": extra, "target_top1": target, "arms": report}, f, indent=1)
    png = plot(report, target, os.path.join(args.output_dir, "study.png"))
    for arm in report:
        best = best_checkpoint(arm)
        print(f"best checkpoint of {arm['name']}: " + (f"{best[0]} (top-1 {best[1]:.4f})" if best else "none kept"))
    print(f"written {args.output_dir}/study.json, study.md" + (", study.png" if png else ""))
    return report


def _net_name(out):
    """The run's net_name, from the config.yaml train.py saved beside its outputs."""
    return load_yaml(os.path.join(out, "config.yaml")).get("net_name", "resnet50")


if __name__ == "__main__":
    main()

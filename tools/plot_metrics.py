"""Draw one or several runs' ``metrics.jsonl`` as one PNG.

    python -m tools.plot_metrics output/smoke                                  # a run's output_dir
    python -m tools.plot_metrics output/momentum output/thor --output runs.png --labels Momentum,THOR

Panels: training loss, lr and (for THOR) damping against the global step; top-1 against epochs and against
wall-clock minutes since the run's first record; img/s against the step. A panel with nothing to draw (no
evaluation, no damping) says so. matplotlib is optional (``pip install matplotlib``): without it this command
says so in one line and exits with 2.
"""
import argparse
import json
import os
import sys

from src.errors import UserError, cli_main

PANELS = ("loss", "lr", "damping", "top1_epoch", "top1_time", "img_per_s")
TITLES = {"loss": ("global step", "training loss"), "lr": ("global step", "learning rate"),
          "damping": ("global step", "THOR damping"), "top1_epoch": ("epoch", "top-1"),
          "top1_time": ("wall-clock (min)", "top-1"), "img_per_s": ("global step", "img/s")}


def read_events(path: str) -> list[dict]:
    """The records of a run's metrics.jsonl (``path``: the run's output_dir or the file); a UserError naming the
    file when it is missing, empty or holds a line that is not JSON."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no metrics.jsonl (give a run's output_dir or the file)")
    events = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path}: line {number} is not JSON") from None
    if not events:
        raise UserError(f"{path}: empty")
    return events


def read_run(path: str) -> dict:
    """The series of one run (``path``: its output_dir or its metrics.jsonl): lists of (x, y) per panel."""
    events = read_events(path)
    start = min(e["time"] for e in events if "time" in e)
    series = {name: [] for name in PANELS}
    for e in events:
        if e.get("event") == "step":
            for name in ("loss", "lr", "damping", "img_per_s"):
                if isinstance(e.get(name), (int, float)) and not (name == "loss" and e.get("overflow")):
                    series[name].append((e["step"], e[name]))
        elif e.get("event") == "eval":
            series["top1_epoch"].append((e["epoch"], e["top1"]))
            series["top1_time"].append(((e["time"] - start) / 60.0, e["top1"]))
    return series


def draw(runs: list, output: str, labels: list, panels=PANELS, hline=None, colours=None) -> str:
    """Draw ``runs`` (``read_run`` results) into ``output``, one subplot per panel; ``hline``: a top-1 level
    drawn across the top-1 panels (a study's target); ``colours``: one matplotlib colour per run (runs sharing
    a label, such as the seeds of one recipe, share one legend entry). Returns ``output``."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("matplotlib is not installed: pip install matplotlib (plots are optional)") from None
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, panels):
        xlabel, ylabel = TITLES[name]
        drawn = False
        seen = set()
        for k, (series, label) in enumerate(zip(runs, labels)):
            points = series[name]
            if points:
                x, y = zip(*points)
                ax.plot(x, y, marker="o" if name.startswith("top1") else None, markersize=3,
                        label=None if label in seen else label, color=colours[k] if colours else None)
                seen.add(label)
                drawn = True
        if hline is not None and name.startswith("top1"):
            ax.axhline(hline, color="grey", linestyle="--", linewidth=0.8)
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        elif name == "loss":
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn and len(set(labels)) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output_dir of a run, or its metrics.jsonl")
    parser.add_argument("--output", default="metrics.png", help="PNG to write")
    parser.add_argument("--labels", default=None, help="comma-separated names, one per run (default: folder names)")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [
        os.path.basename(os.path.normpath(p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))))
        for p in args.runs]
    if len(labels) != len(args.runs):
        raise UserError(f"--labels has {len(labels)} names for {len(args.runs)} runs")
    path = draw([read_run(p) for p in args.runs], args.output, labels)
    print(f"written {path}")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""A grid search of a recipe on real images, recorded: each point is one train.py run (no checkpoints) with
evaluation after every epoch.

    python -m studies.recipe_search ../shared/data/cifar10 config/cifar10_momentum.yaml \\
        --grid lr_max=0.2,0.4,0.8 --epoch_size 4
    python -m studies.recipe_search DATA config/cifar10_thor.yaml --grid lr_max=0.1,0.2 damping_init=0.03,0.3

``--grid key=v1,v2`` (several keys: every combination) overrides recipe keys; any other ``--key value`` goes
to every run (``--epoch_size 4`` for a short proxy). Writes ``search.json`` and ``search.md`` (final and best
top-1, minutes from train.py's start record, compile included) into ``--output_dir`` and prints the table.
Rerunning the same command skips the points that finished, so a search can be extended or resumed; a point
whose saved config differs from what the recipe gives now (an edited recipe) runs again.
"""
import argparse
import itertools
import json
import os
import subprocess
import time

from src.errors import UserError, cli_main
from studies.convergence_study import changed_keys, finished_events, parse_arm, points, run_start, train_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_grid(items):
    """["key=v1,v2", ...] -> (keys, [[v1, v2], ...])."""
    keys, values = [], []
    for item in items:
        key, sep, vals = item.partition("=")
        if not sep or not key or not vals:
            raise UserError(f"--grid {item!r}: expected key=v1,v2,...")
        keys.append(key)
        values.append(vals.split(","))
    return keys, values


def table(keys, rows):
    lines = [f"| {' | '.join(keys)} | top-1 per epoch | final top-1 | best top-1 | minutes |",
             "|" + "---|" * (len(keys) + 4)]
    for r in rows:
        t = r["top1"]
        lines.append(f"| {' | '.join(r['point'].values())} | {' '.join(f'{x:.3f}' for x in t) or 'failed'} | "
                     f"{f'{t[-1]:.4f}' if t else 'failed'} | {f'{max(t):.4f}' if t else '-'} | {r['minutes']} |")
    return "\n".join(lines) + "\n"


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("recipe")
    parser.add_argument("--grid", nargs="+", required=True, help="key=v1,v2,...")
    parser.add_argument("--output_dir", default=None)
    args, extra = parser.parse_known_args(argv)
    recipe, name, _ = parse_arm(args.recipe)
    args.data = os.path.abspath(args.data)  # train.py runs from the repository root
    out_root = args.output_dir or os.path.join(ROOT, "output", "search", name)
    keys, values = parse_grid(args.grid)
    rows = []
    for combo in itertools.product(*values):
        tag = "_".join(f"{k}{v}" for k, v in zip(keys, combo))
        out = os.path.join(out_root, tag)
        overrides = [x for k, v in zip(keys, combo) for x in (f"--{k}", v)]
        cmd = train_command(recipe, args.data, out, [*extra, *overrides], checkpoints=False)
        events = finished_events(os.path.join(out, "metrics.jsonl"))
        if events is not None and changed_keys(out, cmd[2:]):
            events = None  # the recipe changed since: this point runs again
        code = 0
        if events is None:
            if os.path.exists(out):
                os.replace(out, f"{out}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            print(f"== {tag}", flush=True)
            code = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
            events = finished_events(os.path.join(out, "metrics.jsonl")) if code == 0 else None
        else:
            print(f"== {tag}: finished earlier", flush=True)
        curve = points(events, run_start(events)) if events else []
        row = {"point": dict(zip(keys, combo)), "exit": code,
               "minutes": round(curve[-1][2] / 60, 1) if curve else None, "top1": [round(p[1], 4) for p in curve]}
        rows.append(row)
        print(f"   top-1 per epoch {row['top1']} ({row['minutes']} min, exit {code})", flush=True)
    os.makedirs(out_root, exist_ok=True)
    with open(os.path.join(out_root, "search.json"), "w") as f:
        json.dump({"recipe": args.recipe, "extra_args": extra, "rows": rows}, f, indent=1)
    text = f"`{args.recipe}` {' '.join(extra)}\n\n" + table(keys, rows)
    with open(os.path.join(out_root, "search.md"), "w") as f:
        f.write(text)
    print("\n" + text)
    return rows


if __name__ == "__main__":
    main()

"""A brief grid search of a recipe on real images, recorded: each point is one train.py run with evaluation
after every epoch.

    python -m studies.recipe_search ../shared/data/cifar10 config/cifar10_momentum.yaml \\
        --grid lr_max=0.2,0.4,0.8 --epoch_size 4
    python -m studies.recipe_search DATA config/cifar10_thor.yaml --grid lr_max=0.1,0.2 kl_clip=0.001,0.01

``--grid key=v1,v2`` (several keys: every combination) overrides recipe keys; any other ``--key value`` goes
to every run (``--epoch_size 4`` for a short proxy). Prints a table (final and best top-1, minutes) and writes
``search.json`` into ``--output_dir``.
"""
import argparse
import itertools
import json
import os
import subprocess
import time

from studies.convergence_study import curve, train_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("recipe")
    parser.add_argument("--grid", nargs="+", required=True, help="key=v1,v2,...")
    parser.add_argument("--output_dir", default=None)
    args, extra = parser.parse_known_args(argv)
    name = os.path.splitext(os.path.basename(args.recipe))[0]
    out_root = args.output_dir or os.path.join(ROOT, "bench_results", "search", name)
    keys, values = [], []
    for item in args.grid:
        key, _, vals = item.partition("=")
        keys.append(key)
        values.append(vals.split(","))
    rows = []
    for combo in itertools.product(*values):
        tag = "_".join(f"{k}{v}" for k, v in zip(keys, combo))
        out = os.path.join(out_root, tag)
        overrides = [x for k, v in zip(keys, combo) for x in (f"--{k}", v)]
        cmd = train_command(args.recipe, args.data, out, [*extra, *overrides])
        print(f"== {tag}", flush=True)
        start = time.time()
        code = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
        points = curve(os.path.join(out, "metrics.jsonl"), start) if code == 0 else []
        row = {"point": dict(zip(keys, combo)), "exit": code, "minutes": round((time.time() - start) / 60, 1),
               "top1": [round(p[1], 4) for p in points]}
        rows.append(row)
        print(f"   top-1 per epoch {row['top1']} ({row['minutes']} min, exit {code})", flush=True)
    os.makedirs(out_root, exist_ok=True)
    with open(os.path.join(out_root, "search.json"), "w") as f:
        json.dump({"recipe": args.recipe, "extra_args": extra, "rows": rows}, f, indent=1)
    print(f"\n| {' | '.join(keys)} | final top-1 | best top-1 | minutes |")
    print("|" + "---|" * (len(keys) + 3))
    for r in rows:
        t = r["top1"]
        print(f"| {' | '.join(r['point'].values())} | {t[-1] if t else 'failed'} | {max(t) if t else '-'} | "
              f"{r['minutes']} |")


if __name__ == "__main__":
    main()

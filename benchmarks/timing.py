"""Timing helpers shared by the benchmarks: warm-up, timed windows, median, and the JSON/markdown output."""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def time_windows(step, warmup=1, runs=5, window=1, budget_s=None, min_runs=1):
    """Call ``step()`` ``warmup`` times, then time ``runs`` windows of ``window`` calls each.

    ``step`` must block until its work is done (read a result back). With ``budget_s``, stop after the
    window in which the timed total passes the budget (at least ``min_runs`` windows): a slow path still
    gets measured without taking minutes. Returns ``(median seconds per call, [seconds per call of
    each window])``."""
    for _ in range(warmup):
        step()
    times = []
    spent = 0.0
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(window):
            step()
        elapsed = time.perf_counter() - start
        times.append(elapsed / window)
        spent += elapsed
        if budget_s is not None and spent >= budget_s and len(times) >= min_runs:
            break
    return statistics.median(times), times


def status_mib(key):
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process in MiB (``src.host.memory_mib``; NaN where
    /proc has none)."""
    from src.host import memory_mib

    value = memory_mib(key)
    return float("nan") if value is None else value


def host_info():
    """What the numbers were measured on (kept with every result file)."""
    import mindspore
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "python": platform.python_version(), "mindspore": mindspore.__version__,
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")}


def write_json(path, payload):
    """Write ``payload`` as indented JSON, creating the folder; atomically (temp + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def markdown_table(header, rows):
    """A markdown table from a header list and rows of cells (already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def child_result(module, args, what, env=None):
    """Run ``python -m module *args`` (a benchmark measuring in a process of its own; ``env``: variables added to
    this process's environment for it) and return the JSON it printed on its last ``RESULT `` line; exit with one
    line naming ``what`` when the child fails."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env={**os.environ, **env} if env else None)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.exit(f"error: {module}: {what} failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1][len("RESULT "):])


def print_result(payload):
    """The child side of ``child_result``."""
    print("RESULT " + json.dumps(payload), flush=True)


def benchmark_parser(doc, helps=None, **defaults):
    """An argparse parser for a benchmark: its docstring as description and one ``--name`` option per keyword,
    typed by its default (``None`` defaults take strings); ``helps`` maps option names to help texts."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in defaults.items():
        kind = str if default is None else type(default)
        parser.add_argument(f"--{name}", type=kind, default=default, help=(helps or {}).get(name))
    return parser


def parse_arms(parser, argv, arms, measure):
    """Parse a two-process benchmark's arguments. The parent starts one child per arm with ``--arm NAME`` added
    (a hidden option); in a child this runs ``measure(arm, args)``, prints its result for ``child_result`` and
    returns None. In the parent it returns ``(args, the arguments to pass on to the children)``."""
    parser.add_argument("--arm", choices=arms, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm:
        print_result(measure(args.arm, args))
        return None
    return args, list(argv if argv is not None else sys.argv[1:])

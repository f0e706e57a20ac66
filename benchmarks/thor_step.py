"""THOR's cost against Momentum's: step time, compile time and peak memory, full-width ResNet-50, synthetic data.

    python -m benchmarks.thor_step                                  # 32x32 batch 32
    python -m benchmarks.thor_step --image_size 224 --batch_size 16 --runs 5 --window 1

Two processes, one after the other, each building its training cell as train.py does (same oneDNN cap, loss
scale 128, ``split_dim`` 128, the default thor_convention):

- ``momentum``: a Momentum run alone: its compile time and peak RSS.
- ``thor``: one THOR run. Its first step is an update step, its second a plain one; its peak RSS is read then,
  as a real THOR run holds all its graphs. Its first call compiles every graph before any runs, as in training
  (``ThorTrainer.compile_graphs``): with ``--update_pass statistics`` (the default) the statistics pass, the plain
  step and the factor refresh; with ``eager``, the plain step and the refresh (its statistics pass runs op by op:
  nothing to compile); with ``step``, the gradients with statistics capture, the plain step and the refresh, and
  the preconditioned step at its first call. Then a Momentum cell is built in the same process and
  ``--runs`` rounds are timed, each one window of ``--window`` steps of Momentum, of THOR plain and of THOR
  update steps, one after the other: the ratios of a round are taken within seconds of each other, so a machine
  whose speed drifts (this VM's does by 10-30% between minutes) moves all three alike.

Each window ends by reading the loss back. Reported: the median over rounds of each step time and of THOR's
plain and update steps over Momentum's, the cost amortized over ``--frequency`` steps ((t_update + (F - 1)
t_plain) / (F t_momentum), F = 834 is the ImageNet recipe's), compile time (first calls minus timed steps), each
run's peak RSS (and the peak after building the cell and after each graph's compile and first run, in order, which
shows which graph holds the memory), the THOR state (statistics, factors, inverses), and for each graph of the
update step its compile time and its median run time. Prints a markdown table and writes JSON to ``--output``.
"""
import os
import statistics
import sys
import time

from benchmarks.timing import (
    benchmark_parser,
    child_result,
    host_info,
    markdown_table,
    parse_arms,
    status_mib,
    time_windows,
    write_json,
)


def _peak_rss_mib():
    return status_mib("VmHWM")


def _heap_now():
    """glibc's heap now (benchmarks.conv_scratchpad.heap_info): in use, and freed but kept by its arenas."""
    from benchmarks.conv_scratchpad import heap_info
    return heap_info()


def setup(args):
    """As train.py does before the first kernel: the oneDNN cap, the device, graph mode."""
    import mindspore as ms

    from src import host
    host.apply_isa_cap(args.device_target, "auto")
    ms.set_device(args.device_target)
    ms.set_context(mode=ms.GRAPH_MODE)


def build_cell(optimizer, args, steps=100000):
    """The training cell train.py would build for full-width ResNet-50 (1000 classes, loss scale 128) with
    ``optimizer``, and ``step()``: one call on a fixed synthetic batch, reading the loss back.
    Returns ``(optimizer cell, training cell, step)``."""
    import mindspore as ms
    import numpy as np

    from src.config import parse_args
    from src.optim import NetWithLoss, create_loss, create_optimizer, create_train_cell
    from src.resnet import network_from_config

    cfg = parse_args(["--device_target", args.device_target, "--net_name", "resnet50", "--class_num", "1000",
                      "--batch_size", str(args.batch_size), "--train_image_size", str(args.image_size),
                      "--loss_scale", "128", "--split_dim", str(args.split_dim), "--epoch_size", "1",
                      "--warmup_epochs", "0", "--optimizer", optimizer, "--kl_clip", str(args.kl_clip),
                      "--thor_right_product", args.right_product, "--thor_update_pass", args.update_pass])
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((args.batch_size, 3, args.image_size, args.image_size)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 1000, args.batch_size).astype(np.int32))
    ms.set_seed(1)
    net = network_from_config(cfg)
    opt = create_optimizer(cfg, net, np.full(steps, 0.01, np.float32))
    cell = create_train_cell(cfg, NetWithLoss(net, create_loss(cfg)), opt, steps)
    return opt, cell, (lambda: cell(x, y)[0].asnumpy())


# the options build_cell reads (shared with benchmarks.thor_memory)
CELL_OPTIONS = {"image_size": 32, "batch_size": 32, "split_dim": 128, "kl_clip": 0.0, "right_product": "bmm",
                "update_pass": "statistics", "device_target": "CPU"}
CELL_HELPS = {"kl_clip": "THOR's KL clip (the CIFAR-10 recipes use 0.01)",
              "right_product": "thor_right_product: bmm or conv",
              "update_pass": "thor_update_pass: statistics, eager or step"}

# the THOR trainer's graphs per thor_update_pass, in the order ThorTrainer.compile_graphs compiles them (the step
# layout's apply_step compiles at its first update, the eager layout's statistics pass never: it runs op by op;
# plain_step is the plain steps' graph, and the update step's last graph in the statistics and eager layouts)
GRAPHS = {"statistics": ("statistics", "plain_step", "refresh_factors"),
          "eager": ("statistics", "plain_step", "refresh_factors"),
          "step": ("capture_gradients", "plain_step", "refresh_factors", "apply_step")}


class _TimedGraph:
    """Stands in for one of the THOR trainer's graph cells: records the time its compile took (the trainer
    compiles every graph before the first runs), the wall time of each call (until the device is idle again), and
    the process's peak RSS and glibc's heap after the compile and after the first call, as ``(when, what, MiB,
    heap)`` in ``events``."""

    def __init__(self, cell, name, events):
        self.cell = cell
        self.name = name
        self.events = events
        self.times = []
        self.compile_s = 0.0

    def __getattr__(self, name):  # the trainer's other uses of the graph cell (statistics.hold_moving_statistics)
        return getattr(self.cell, name)

    def compile(self, *args):
        start = time.perf_counter()
        out = self.cell.compile(*args)
        self.compile_s += time.perf_counter() - start
        self.events.append((time.perf_counter(), f"{self.name} compile", _peak_rss_mib(), _heap_now()))
        return out

    def __call__(self, *args):
        start = time.perf_counter()
        out = self.cell(*args)
        first = out
        while isinstance(first, (tuple, list)):
            first = first[0]
        first.asnumpy()  # waits for the graph (the CPU backend has no device synchronize)
        self.times.append(time.perf_counter() - start)
        if len(self.times) == 1:
            self.events.append((time.perf_counter(), f"{self.name} first run", _peak_rss_mib(), _heap_now()))
        return out


def time_graphs(cell, events):
    """Wrap each graph of a THOR trainer (``GRAPHS``); returns ``{name: _TimedGraph}``."""
    timed = {}
    for name in GRAPHS[cell.update_pass]:
        timed[name] = _TimedGraph(getattr(cell, name), name, events)
        object.__setattr__(cell, name, timed[name])  # an instance attribute, found before nn.Cell's sub-cells
    return timed


def measure(arm, args):
    """Runs in the child process: build, compile, time. Returns a dict."""
    setup(args)

    def first_call(step):
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    out = {"arm": arm}
    if arm == "momentum":
        _, _, momentum = build_cell("Momentum", args)
        out["built_rss_mib"] = _peak_rss_mib()
        first = first_call(momentum)
        t, _ = time_windows(momentum, warmup=args.warmup, runs=args.runs, window=args.window)
        out.update(compile_s=first - t, peak_rss_mib=_peak_rss_mib(), heap=_heap_now())
        return out

    opt, cell, thor = build_cell("Thor", args)
    events = []
    graphs = time_graphs(cell, events)
    out["built_rss_mib"] = _peak_rss_mib()
    flags = cell.update_flags
    flags[:] = True
    first_update = first_call(thor)               # update graph
    out["after_update_graph_rss_mib"] = _peak_rss_mib()
    flags[:] = False
    first_plain = first_call(thor)                # plain graph
    out.update(peak_rss_mib=_peak_rss_mib(), state_mib=opt.state_bytes() / 2 ** 20, heap=_heap_now())
    _, _, momentum = build_cell("Momentum", args)
    first_call(momentum)

    def plain():
        flags[:] = False
        thor()

    def update():
        flags[:] = True
        thor()

    for step in (momentum, plain, update):
        for _ in range(args.warmup):
            step()
    rounds = {"momentum": [], "plain": [], "update": []}
    for _ in range(args.runs):
        for name, step in (("momentum", momentum), ("plain", plain), ("update", update)):
            rounds[name].append(time_windows(step, warmup=0, runs=1, window=args.window)[0])
    med = {k: statistics.median(v) for k, v in rounds.items()}
    out.update({f"{k}_ms": v * 1000 for k, v in med.items()})
    out.update({f"{k}_all_ms": [t * 1000 for t in v] for k, v in rounds.items()})
    out["plain_over_momentum"] = statistics.median(p / m for p, m in zip(rounds["plain"], rounds["momentum"]))
    out["update_over_momentum"] = statistics.median(u / m for u, m in zip(rounds["update"], rounds["momentum"]))
    f = args.frequency
    out["amortized_over_momentum"] = statistics.median(
        (u + (f - 1) * p) / (f * m) for u, p, m in zip(rounds["update"], rounds["plain"], rounds["momentum"]))
    out.update(compile_update_s=first_update - med["update"], compile_plain_s=first_plain - med["plain"])
    for name, timed in graphs.items():  # compiled ahead (the step layout's apply_step at its first call)
        first = timed.times[0] - statistics.median(timed.times[1:])
        out[f"graph_{name}_compile_s"] = timed.compile_s if timed.compile_s else first
        out[f"graph_{name}_ms"] = statistics.median(timed.times[1:]) * 1000
    out["events"] = [[what, mib, heap] for _, what, mib, heap in sorted(events)]
    return out


def main(argv=None):
    parser = benchmark_parser(__doc__, **CELL_OPTIONS, frequency=834, warmup=2, runs=5, window=3, output=None,
                              helps={**CELL_HELPS, "window": "steps per timed window",
                                     "output": "JSON path (default bench_results/thor_step_<size>.json)"})
    parsed = parse_arms(parser, argv, ("momentum", "thor"), measure)
    if parsed is None:  # a child process: it has printed its result
        return None
    args, passed = parsed
    if args.update_pass not in GRAPHS:  # before any process is started
        sys.exit(f"error: --update_pass must be one of {', '.join(GRAPHS)}, got {args.update_pass!r}")
    row = {"image_size": args.image_size, "batch_size": args.batch_size, "frequency": args.frequency}
    for arm in ("momentum", "thor"):
        result = child_result("benchmarks.thor_step", [*passed, "--arm", arm], f"the {arm} process")
        row.update({f"{arm}_{k}": v for k, v in result.items() if k != "arm"})
        print(f"  {arm}: " + ", ".join(f"{k} {v:.1f}" for k, v in result.items() if isinstance(v, float)), flush=True)

    row["rss_budget_mib"] = row["momentum_peak_rss_mib"] + 2 * row["thor_state_mib"] + 200
    output = args.output or os.path.join("bench_results", f"thor_step_{args.image_size}.json")
    write_json(output, {"host": host_info(), "args": vars(args), "result": row})

    header = ["image, batch", "Momentum ms/step", "THOR plain ms/step", "THOR update ms/step",
              f"amortized, F={args.frequency}", "compile s: Momentum / THOR",
              "peak RSS MiB: Momentum / THOR", "THOR state MiB"]
    cells = [f"{args.image_size}, {args.batch_size}", f"{row['thor_momentum_ms']:.1f}",
             f"{row['thor_plain_ms']:.1f} ({row['thor_plain_over_momentum']:.2f}x)",
             f"{row['thor_update_ms']:.1f} ({row['thor_update_over_momentum']:.2f}x)",
             f"{row['thor_amortized_over_momentum']:.2f}x",
             f"{row['momentum_compile_s']:.1f} / {row['thor_compile_plain_s'] + row['thor_compile_update_s']:.1f}",
             f"{row['momentum_peak_rss_mib']:.0f} / {row['thor_peak_rss_mib']:.0f}", f"{row['thor_state_mib']:.1f}"]
    print()
    print(markdown_table(header, [cells]))
    print(f"\npeak RSS by phase, MiB: Momentum built {row['momentum_built_rss_mib']:.0f}, compiled "
          f"+{row['momentum_peak_rss_mib'] - row['momentum_built_rss_mib']:.0f}; "
          f"THOR built {row['thor_built_rss_mib']:.0f}, "
          f"first (update) step +{row['thor_after_update_graph_rss_mib'] - row['thor_built_rss_mib']:.0f}, first "
          f"plain step "
          f"+{row['thor_peak_rss_mib'] - row['thor_after_update_graph_rss_mib']:.0f}; "
          f"budget (Momentum + 2 x state + 200) {row['rss_budget_mib']:.0f}")
    print("\nper THOR graph, compile s / run ms: " + "; ".join(
        f"{name} {row[f'thor_graph_{name}_compile_s']:.1f} / {row[f'thor_graph_{name}_ms']:.1f}"
        for name in GRAPHS[args.update_pass]))
    parts, before = [], row["thor_built_rss_mib"]
    for what, peak, heap in row["thor_events"]:
        parts.append(f"{what} {peak - before:+.0f} (heap free {heap['free_mib']:.0f} in {heap['free_chunks']} chunks)")
        before = peak
    print("peak RSS each THOR graph's compile and first run added, in order, MiB, and glibc's freed heap then (a "
          "compile's is given back, where whole pages are free, right after it): " + "; ".join(parts))
    print("glibc's heap after the first steps, MiB in use / freed but kept: " + "; ".join(
        f"{arm} {row[f'{arm}_heap']['in_use_mib']:.0f} / {row[f'{arm}_heap']['free_mib']:.0f} "
        f"({row[f'{arm}_heap']['free_chunks']} free chunks)" for arm in ("momentum", "thor")))
    print(f"\nwritten {output}")
    return row


if __name__ == "__main__":
    main()

"""What THOR's compiled graphs hold against Momentum's: kernel-graph nodes and the bytes of their outputs.

    python -m benchmarks.thor_graphs                     # full-width ResNet-50, 32x32, batch 32

Builds the training cells as benchmarks.thor_step does (same oneDNN cap, loss scale 128, ``split_dim`` 128), each
arm in a process of its own with MindSpore's IR dump switched on (``MS_DEV_SAVE_GRAPHS=1``, into a temporary
folder), calls one Momentum step, or one THOR update step and then one plain step, and reads the kernel graphs
MindSpore built for each (``graph_build_*.ir``, after its own graph optimisations). Reported per step kind: the
number of kernel nodes, and the sum of the sizes of their outputs (aliasing nodes excluded: Load, Depend,
TupleGetItem, UpdateState, MakeTuple), with the op types holding the most. Compile time grows with the node
count; on CPU the resident memory a compiled graph adds follows its output bytes (docs/performance.md).
Compile times are not reported: the dump itself slows compiling several-fold (benchmarks.thor_step times it).
"""
import collections
import glob
import os
import re
import tempfile

from benchmarks.timing import benchmark_parser, child_result, host_info, markdown_table, parse_arms, write_json

ALIASES = {"Load", "Depend", "TupleGetItem", "UpdateState", "MakeTuple"}
DTYPE_BYTES = {"Float32": 4, "Float16": 2, "BFloat16": 2, "Float64": 8, "Int32": 4, "Int64": 8, "Int16": 2,
               "Int8": 1, "UInt8": 1, "Bool": 1}
_NODE = re.compile(r"  %\d+\([^)]*\) = ([A-Za-z_0-9]+)")
_TENSOR = re.compile(r"Tensor\[(\w+)\], \(([\d, ]*)\)")


def summarise_ir(path):
    """``(nodes, {op: count}, {op: output bytes})`` of one ``graph_build_*.ir`` file."""
    counts, sizes = collections.Counter(), collections.Counter()
    current = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            match = _NODE.match(line)
            if match:
                current = match.group(1)
                counts[current] += 1
                continue
            if current and line.startswith("      : (") and "->" in line:  # the node's shapes: (in) -> (out)
                for dtype, dims in _TENSOR.findall(line.split("->", 1)[1]):
                    size = DTYPE_BYTES.get(dtype, 4)
                    for d in dims.split(","):
                        size *= int(d) if d.strip() else 1
                    sizes[current] += size
                current = None
    return sum(counts.values()), counts, sizes


def graph_files(folder):
    """The kernel-graph dumps in ``folder`` in build order."""
    def order(path):
        return int(re.search(r"graph_build_(\d+)_", os.path.basename(path)).group(1))
    return sorted(glob.glob(os.path.join(folder, "graph_build_*.ir")), key=order)


def measure(arm, args):
    """Child process: build the cell, call each step kind once; return which dump files each call added."""
    from benchmarks.thor_step import build_cell, setup
    folder = os.environ["MS_DEV_SAVE_GRAPHS_PATH"]
    setup(args)
    _, cell, step = build_cell("Momentum" if arm == "momentum" else "Thor", args)
    calls = [("momentum", None)] if arm == "momentum" else [("THOR update", True), ("THOR plain", False)]
    out, seen = {}, set()
    for name, update in calls:
        if update is not None:
            cell.update_flags[:] = update
        step()
        new = [p for p in graph_files(folder) if p not in seen]
        seen.update(new)
        out[name] = new
    return out


def row(name, files):
    nodes, counts, sizes, per_graph, mib_per_graph = 0, collections.Counter(), collections.Counter(), [], []
    for path in files:
        n, c, s = summarise_ir(path)
        nodes += n
        per_graph.append(n)
        counts.update(c)
        sizes.update(s)
        mib_per_graph.append(sum(v for op, v in s.items() if op not in ALIASES) / 2 ** 20)
    for alias in ALIASES:
        sizes.pop(alias, None)
    top = ", ".join(f"{op} {counts[op]} x {b / 2 ** 20:.0f}" for op, b in sizes.most_common(4))
    return {"step": name, "kernel_graphs": len(files), "nodes": nodes, "nodes_per_graph": per_graph,
            "output_mib": sum(mib_per_graph), "output_mib_per_graph": mib_per_graph,
            "reshape_nodes": counts["PrimFunc_Reshape"], "top_ops_mib": top,
            "op_counts": dict(counts.most_common()), "op_output_mib": {op: b / 2 ** 20 for op, b in sizes.items()}}


def main(argv=None):
    from benchmarks.thor_step import CELL_HELPS, CELL_OPTIONS

    parser = benchmark_parser(__doc__, **CELL_OPTIONS, output="bench_results/thor_graphs.json", helps=CELL_HELPS)
    parsed = parse_arms(parser, argv, ("momentum", "thor"), measure)
    if parsed is None:  # a child process: it has printed its result
        return None
    args, passed = parsed
    rows = []
    with tempfile.TemporaryDirectory(prefix="thor_graphs_") as tmp:
        for arm in ("momentum", "thor"):
            dump = {"MS_DEV_SAVE_GRAPHS": "1", "MS_DEV_SAVE_GRAPHS_PATH": os.path.join(tmp, arm)}
            files = child_result("benchmarks.thor_graphs", [*passed, "--arm", arm], f"the {arm} process", env=dump)
            rows += [row(name, paths) for name, paths in files.items()]
    write_json(args.output, {"host": host_info(), "args": vars(args), "result": rows})
    header = ["step", "nodes (per kernel graph)", "output MiB, aliases excluded (per kernel graph)", "Reshape nodes",
              "op types holding most (count x MiB)"]
    def parts(total, each):
        return f"{total} ({' + '.join(map(str, each))})"
    print(markdown_table(header, [[r["step"], parts(r["nodes"], r["nodes_per_graph"]),
                                   parts(f"{r['output_mib']:.0f}", [f"{m:.0f}" for m in r["output_mib_per_graph"]]),
                                   r["reshape_nodes"], r["top_ops_mib"]] for r in rows]))
    print(f"\nwritten {args.output}")
    return rows


if __name__ == "__main__":
    main()

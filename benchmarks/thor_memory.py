"""Where a THOR run's memory goes, against Momentum's: full-width ResNet-50, synthetic batch.

    python -m benchmarks.thor_memory                     # 32x32 batch 32: resident memory by mapping
    python -m benchmarks.thor_memory --heaptrack true    # and the heap's peak by allocation site (needs heaptrack)

One process per optimizer, each building its training cell as benchmarks.thor_step does (loss scale 128,
``split_dim`` 128) and running ``--steps`` steps (THOR: an update step first, then plain steps, so that all its
graphs are compiled and have run, as in a real run). Then it reads:

- the peak RSS (``VmHWM``) and the RSS now;
- ``/proc/self/smaps``, the resident memory of each kind of mapping: ``[heap]`` (the main malloc arena),
  the memory pool (the anonymous mapping of at least 1 GiB: MindSpore's CPU memory pool reserves its block of
  kernel outputs and workspaces that way; only the pages it has used are resident), other anonymous mappings
  (malloc's large blocks, which it maps one by one, such as oneDNN scratchpads; other threads' malloc arenas;
  thread stacks: the kernel merges neighbouring mappings, so their sizes say nothing of who made them) and file
  mappings (the libraries);

With ``--heaptrack true`` each process runs under heaptrack (https://github.com/KDE/heaptrack; several times
slower) and its heap at the moment of its peak is split by where it was allocated (``classify_stack``): oneDNN
primitives (created when a graph is compiled; each holds its own scratchpad), the memory pool's block (its whole
virtual size: compare the pool's resident memory above), tensors made from NumPy arrays (parameters and THOR's
state as built), graph compile, graph run, and the rest (Python objects and what heaptrack cannot attribute).
The heap is what was allocated; RSS is what was touched, so the two differ where a block is allocated and only
partly used.

Prints a markdown table and writes JSON to ``--output``.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

from benchmarks import timing

MAPPING_KINDS = ("heap", "memory pool", "other anonymous", "file", "other")
SITE_KINDS = ("oneDNN primitives", "memory pool block", "tensors from NumPy", "graph compile", "graph run", "rest")
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def classify_mapping(size_mib, name):
    """The kind of a mapping of ``/proc/self/smaps`` from its virtual size and its name (empty when anonymous)."""
    if name == "[heap]":
        return "heap"
    if not name:
        if size_mib >= 1024:
            return "memory pool"
        return "other anonymous"
    return "other" if name.startswith("[") else "file"


def rss_by_mapping(smaps_text):
    """Resident MiB per mapping kind (``MAPPING_KINDS``) of the text of ``/proc/<pid>/smaps``."""
    out = dict.fromkeys(MAPPING_KINDS, 0.0)
    kind = None
    for line in smaps_text.splitlines():
        match = _MAPPING.match(line)
        if match:
            size = (int(match.group(2), 16) - int(match.group(1), 16)) / 2 ** 20
            kind = classify_mapping(size, match.group(3).strip())
        elif line.startswith("Rss:") and kind is not None:
            out[kind] += int(line.split()[1]) / 1024.0
    return out


def classify_stack(frames):
    """The kind (``SITE_KINDS``) of an allocation from its backtrace, outermost frame first."""
    text = ";".join(frames)
    if "dnnl_primitive_create" in text:
        return "oneDNN primitives"
    if "DynamicMemPoolBestFit::AddMemBlock" in text:
        return "memory pool block"
    if "mindspore::tensor::from_buffer" in text:
        return "tensors from NumPy"
    if "CompileInner" in text or "BackendManager::Build" in text:
        return "graph compile"
    if "ActorBase::Run" in text or "RunInner" in text or "GraphScheduler::Run" in text:
        return "graph run"
    return "rest"


def heap_by_site(lines):
    """MiB per allocation site kind of heaptrack_print's flame-graph output (``frame;frame;... bytes`` lines;
    an iterable of lines, such as the open file: it is hundreds of MiB)."""
    out = dict.fromkeys(SITE_KINDS, 0.0)
    for line in lines:
        stack, _, cost = line.rstrip().rpartition(" ")
        if stack and cost.isdigit():
            out[classify_stack(stack.split(";"))] += int(cost) / 2 ** 20
    return out


def measure(arm, args):
    """Runs in the child process: build, run all graphs, read the memory."""
    from benchmarks.thor_step import build_cell, setup

    setup(args)
    opt, cell, step = build_cell("Momentum" if arm == "momentum" else "Thor", args)
    out = {"arm": arm, "built_rss_mib": timing.status_mib("VmHWM")}
    for i in range(args.steps):
        if arm == "thor":
            cell.update_flags[:] = i == 0
        step()
    with open("/proc/self/smaps", encoding="utf-8") as f:
        out["rss_by_mapping_mib"] = rss_by_mapping(f.read())
    out.update(peak_rss_mib=timing.status_mib("VmHWM"), rss_mib=timing.status_mib("VmRSS"))
    if arm == "thor":
        out["state_mib"] = opt.state_bytes() / 2 ** 20
    return out


def _under_heaptrack(passed, arm):
    """Run the ``arm`` child under heaptrack; returns its heap at the peak by site kind (MiB)."""
    for tool in ("heaptrack", "heaptrack_print"):
        if shutil.which(tool) is None:
            sys.exit(f"error: --heaptrack true needs '{tool}' on PATH (https://github.com/KDE/heaptrack)")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, arm)
        cmd = ["heaptrack", "-o", data, sys.executable, "-m", "benchmarks.thor_memory", *passed, "--arm", arm]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: heaptrack run of the {arm} process failed (exit {proc.returncode})")
        files = [os.path.join(tmp, n) for n in os.listdir(tmp) if n.startswith(arm)]
        stacks = os.path.join(tmp, "stacks.txt")
        subprocess.run(["heaptrack_print", "-f", files[0], "--print-peaks", "0", "--print-allocators", "0",
                        "--print-temporary", "0", "--flamegraph-cost-type", "peak", "-F", stacks],
                       capture_output=True, text=True, check=True)
        with open(stacks, encoding="utf-8", errors="replace") as f:
            return heap_by_site(f)


def main(argv=None):
    from benchmarks.thor_step import CELL_HELPS, CELL_OPTIONS

    parser = timing.benchmark_parser(__doc__, **CELL_OPTIONS, steps=3, heaptrack="false", output=None,
                              helps={**CELL_HELPS,
                                     "steps": "steps run before reading (THOR: the first is an update step)",
                                     "heaptrack": "true: also run each process under heaptrack",
                                     "output": "JSON path (default bench_results/thor_memory_<size>.json)"})
    parsed = timing.parse_arms(parser, argv, ("momentum", "thor"), measure)
    if parsed is None:  # a child process: it has printed its result
        return None
    args, passed = parsed
    if args.heaptrack not in ("true", "false"):
        sys.exit(f"error: --heaptrack must be true or false, got {args.heaptrack!r}")
    result = {}
    for arm in ("momentum", "thor"):
        result[arm] = timing.child_result("benchmarks.thor_memory", [*passed, "--arm", arm], f"the {arm} process")
        print(f"  {arm}: peak RSS {result[arm]['peak_rss_mib']:.0f} MiB", flush=True)
    if args.heaptrack == "true":
        for arm in ("momentum", "thor"):
            result[arm]["heap_by_site_mib"] = _under_heaptrack(passed, arm)
    output = args.output or os.path.join("bench_results", f"thor_memory_{args.image_size}.json")
    timing.write_json(output, {"host": timing.host_info(), "args": vars(args), "result": result})

    mom, thor = result["momentum"], result["thor"]
    rows = [["peak RSS", f"{mom['peak_rss_mib']:.0f}", f"{thor['peak_rss_mib']:.0f}",
             f"{thor['peak_rss_mib'] - mom['peak_rss_mib']:+.0f}"],
            ["RSS after the cell is built", f"{mom['built_rss_mib']:.0f}", f"{thor['built_rss_mib']:.0f}",
             f"{thor['built_rss_mib'] - mom['built_rss_mib']:+.0f}"],
            ["RSS at the end", f"{mom['rss_mib']:.0f}", f"{thor['rss_mib']:.0f}",
             f"{thor['rss_mib'] - mom['rss_mib']:+.0f}"]]
    for kind in MAPPING_KINDS:
        m, t = mom["rss_by_mapping_mib"][kind], thor["rss_by_mapping_mib"][kind]
        rows.append([f"resident: {kind}", f"{m:.0f}", f"{t:.0f}", f"{t - m:+.0f}"])
    if args.heaptrack == "true":
        for kind in SITE_KINDS:
            m, t = mom["heap_by_site_mib"][kind], thor["heap_by_site_mib"][kind]
            rows.append([f"heap at its peak: {kind}", f"{m:.0f}", f"{t:.0f}", f"{t - m:+.0f}"])
    print()
    print(timing.markdown_table(["MiB", "Momentum", "THOR", "THOR - Momentum"], rows))
    print(f"\nTHOR state {thor['state_mib']:.1f} MiB; budget (Momentum's peak + 2 x state + 200) "
          f"{mom['peak_rss_mib'] + 2 * thor['state_mib'] + 200:.0f} MiB")
    print(f"\nwritten {output}")
    return result


if __name__ == "__main__":
    main()

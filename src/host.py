"""What this host's CPU asks of a MindSpore process: oneDNN's ISA cap and the data workers' core budget; and
this process's memory (:func:`memory_mib`, :func:`release_free_heap`).

oneDNN cap. On hosts with AVX-512, oneDNN (MindSpore 2.10 ships v3.10) serves MindSpore's plain NCHW
float32 3x3 and 7x7 convolutions with ``jit_uni_ncsp`` / a reference kernel, 80-180x slower than the ``gemm:jit``
path it picks when the ISA is capped at AVX2 (``python -m benchmarks.cpu_ops`` times every op
ResNet-50 and THOR use, with and without the cap, on the host it runs on). oneDNN reads
``ONEDNN_MAX_CPU_ISA`` once, when MindSpore creates its first CPU kernel, so :func:`apply_isa_cap` must
run before any network is built or called; ``runtime.setup`` does that for every entry point.

Workers. MindSpore's dataset refuses ``num_parallel_workers`` above the core count; :func:`worker_budget`
gives the cores this process may use, shared among the ranks a launcher started on this machine.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, MutableMapping


ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# The cap that ``auto`` applies on AVX-512 hosts. Chosen from `python -m benchmarks.cpu_ops` (docs/cpu_performance.md):
# a few ops are faster uncapped (the classifier MatMul, some 1x1 convolutions), but over the ops of ResNet-50 and
# THOR the AVX2 total is 1/54 of the uncapped one, because the 3x3 convolutions leave the reference path.
AUTO_CAP = "AVX2"
# Values oneDNN accepts for ONEDNN_MAX_CPU_ISA (v3.x), checked so that a typo is an error, not a silent no-op.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
               "AVX10_2_512", "AVX10_2_512_AMX_2", "DEFAULT", "ALL")
SETTINGS = ("auto", "none") + ONEDNN_ISAS

_applied = {"done": False}


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of this host (empty when they cannot be read, e.g. not Linux)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_isa_cap(setting: str, flags: set[str], environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """Decide the oneDNN ISA cap. Returns ``(value or None, reason)``; ``value`` is what to put in
    ``ONEDNN_MAX_CPU_ISA`` (None: leave the environment as it is).

    A value already in ``ONEDNN_MAX_CPU_ISA`` or ``DNNL_MAX_CPU_ISA`` wins over everything. ``setting`` is
    the config key ``cpu_isa_cap``: ``auto`` caps at AVX2 on hosts with AVX-512 (and does nothing elsewhere,
    where AVX2 is the ceiling anyway), ``none`` leaves oneDNN alone, an ISA name is used as given."""
    for name in ISA_VARIABLES:
        if environ.get(name):
            return None, f"{name}={environ[name]} set in the environment (kept)"
    if setting == "none":
        return None, "cpu_isa_cap none: oneDNN picks its own ISA"
    if setting == "auto":
        if "avx512f" not in flags:
            return None, "no AVX-512 on this host: no cap needed"
        return AUTO_CAP, ("this host has AVX-512, where oneDNN runs MindSpore's NCHW convolutions on a slow "
                          "reference path; capped at AVX2 (python -m benchmarks.cpu_ops measures both)")
    return setting, f"cpu_isa_cap {setting}"


def apply_isa_cap(device_target: str, setting: str = "auto", log: Callable[[str], None] | None = print,
                  environ: MutableMapping[str, str] | None = None, flags: set[str] | None = None) -> str | None:
    """Set ``ONEDNN_MAX_CPU_ISA`` for this process (and the processes it starts) when the target is CPU.

    Must run before MindSpore creates its first CPU kernel. Logs once per process what was decided and
    why. Returns the value set, or None."""
    environ = os.environ if environ is None else environ
    if device_target != "CPU":
        return None
    value, reason = choose_isa_cap(setting, cpu_flags() if flags is None else flags, environ)
    if value is not None:
        environ["ONEDNN_MAX_CPU_ISA"] = value
    if not _applied["done"] and log is not None:
        log(f"oneDNN: {'ONEDNN_MAX_CPU_ISA=' + value + ': ' if value else ''}{reason}")
    _applied["done"] = True
    return value


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a launcher may have narrowed)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, min(len(os.sched_getaffinity(0)), os.cpu_count() or 1))
    return max(1, os.cpu_count() or 1)


def ranks_on_this_machine(environ: Mapping[str, str] | None = None) -> int:
    """Processes of this job that share this machine: ``LOCAL_WORKER_NUM`` (set by our launchers; msrun's
    ``--local_worker_num``), else msrun's ``MS_WORKER_NUM`` (all workers, assumed local), else 1."""
    environ = os.environ if environ is None else environ
    for name in ("LOCAL_WORKER_NUM", "MS_WORKER_NUM"):
        value = environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def _core_share(environ, cores, all_cores):
    """``(share, ranks, pinned)``: the cores this process may count on. A process whose affinity mask is
    narrower than the machine was pinned by a launcher, and the mask is its share; otherwise the machine's
    cores are split among the ranks started on it."""
    cores = usable_cores() if cores is None else cores
    all_cores = (os.cpu_count() or cores) if all_cores is None else all_cores
    ranks = ranks_on_this_machine(environ)
    pinned = cores < all_cores
    return (cores if pinned else max(1, cores // ranks)), ranks, pinned


def op_threads(environ: Mapping[str, str] | None = None, cores: int | None = None, all_cores: int | None = None) -> int:
    """Threads for MindSpore's CPU kernels in this process: its share of the cores when several ranks share
    the machine (each would otherwise run as many threads as the machine has cores, oversubscribing it);
    None when this process is alone or already pinned."""
    share, ranks, pinned = _core_share(environ, cores, all_cores)
    return None if ranks <= 1 or pinned else share


def worker_budget(requested: int, environ: Mapping[str, str] | None = None, cores: int | None = None,
                  all_cores: int | None = None) -> tuple[int, str | None]:
    """``(workers, note)``: ``requested`` data workers clamped to this process's share of the cores
    (see :func:`_core_share`). ``note`` is None when nothing was clamped."""
    share, ranks, pinned = _core_share(environ, cores, all_cores)
    if requested <= share:
        return requested, None
    cores = usable_cores() if cores is None else cores
    who = f"{cores} usable core(s)" + (f" shared by {ranks} local rank(s)" if ranks > 1 and not pinned else "")
    return share, f"num_parallel_workers {requested} clamped to {share} ({who})"


def compile_cache_warning(environ: Mapping[str, str] | None = None) -> str | None:
    """A warning when MindSpore's compile cache is switched on in the environment, else None.

    MindSpore 2.10 decides whether a cached graph is still valid from a hash of the Python sources only: a run
    with another config (base_width 8 after a base_width 16 run, same cache path) loaded the old graph and
    stopped with a NaN loss at its first step. The cache is safe only with one cache path per config."""
    environ = os.environ if environ is None else environ
    if environ.get("MS_COMPILER_CACHE_ENABLE") != "1":
        return None
    where = environ.get("MS_COMPILER_CACHE_PATH") or "the working directory"
    return (f"MS_COMPILER_CACHE_ENABLE=1: MindSpore reuses the graphs cached in {where} whenever the Python "
            "sources are unchanged, even after a config change (a width-8 run loaded a width-16 graph and "
            "diverged at step 1); use one MS_COMPILER_CACHE_PATH per config")


def memory_mib(key: str = "VmHWM", path: str = "/proc/self/status") -> float | None:
    """``VmHWM`` (peak resident set) or ``VmRSS`` (resident now) of this process in MiB, from /proc (Linux);
    None where there is no such file or key. Not ``ru_maxrss``: a process started by vfork + exec (as
    ``subprocess`` starts it) inherits its parent's peak there."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def release_free_heap() -> bool:
    """Give the pages of glibc's heap that hold only freed memory back to the system (``malloc_trim(0)``).
    Returns True when some were given back; False where there is no glibc.

    Compiling a graph allocates and frees a great deal: right after THOR's statistics pass compiled (ResNet-50,
    32x32), glibc held 398 MiB of freed chunks, 394,619 of them between chunks still in use (python -m
    benchmarks.thor_step). A trim after each compile gives back the whole pages among them before the graphs
    first run (the training cells call it between compiling and running; docs/performance.md)."""
    trim = getattr(libc(), "malloc_trim", None)
    if trim is None:
        return False
    return bool(trim(0))


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library, for glibc's malloc calls (``malloc_trim``, ``mallinfo2``); None where it cannot be found.
    Looked up once (``find_library`` runs ``ldconfig``)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None

"""The host decisions every entry point makes: oneDNN's ISA cap, the data workers' core budget, --help,
and the typed script options of eval.py, export.py and predict.py."""
import os

import pytest
from conftest import TINY_ARGS, fails_cleanly, last_json, run_script

from src import host
from src.config import parse_args
from src.errors import UserError

AVX512 = {"avx2", "avx512f", "avx512bw"}
AVX2_ONLY = {"avx", "avx2", "fma"}


def test_auto_caps_at_avx2_on_avx512_hosts_only():
    value, reason = host.choose_isa_cap("auto", AVX512, {})
    assert value == "AVX2" and "AVX-512" in reason
    value, reason = host.choose_isa_cap("auto", AVX2_ONLY, {})
    assert value is None and "no AVX-512" in reason


@pytest.mark.parametrize("name", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
def test_a_value_in_the_environment_wins(name):
    for setting in ("auto", "AVX512_CORE", "none"):
        value, reason = host.choose_isa_cap(setting, AVX512, {name: "AVX512_CORE_BF16"})
        assert value is None and f"{name}=AVX512_CORE_BF16" in reason and "kept" in reason


def test_explicit_and_none_settings():
    assert host.choose_isa_cap("none", AVX512, {})[0] is None
    assert host.choose_isa_cap("AVX2_VNNI", AVX2_ONLY, {})[0] == "AVX2_VNNI"


def test_apply_sets_the_variable_for_cpu_only():
    env = {}
    assert host.apply_isa_cap("GPU", "auto", log=None, environ=env, flags=AVX512) is None and env == {}
    assert host.apply_isa_cap("CPU", "auto", log=None, environ=env, flags=AVX512) == "AVX2"
    assert env == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_cpu_isa_cap_key_is_checked():
    assert parse_args(["--cpu_isa_cap", "AVX2"]).cpu_isa_cap == "AVX2"
    with pytest.raises(UserError, match="cpu_isa_cap"):
        parse_args(["--cpu_isa_cap", "AVX3"])


def test_worker_budget():
    # 2 cores, one process: 8 requested -> 2, said once
    n, note = host.worker_budget(8, environ={}, cores=2, all_cores=2)
    assert n == 2 and "num_parallel_workers 8 clamped to 2" in note
    assert host.worker_budget(2, environ={}, cores=2, all_cores=2) == (2, None)
    # two ranks started on this machine share its cores
    n, note = host.worker_budget(8, environ={"LOCAL_WORKER_NUM": "2"}, cores=2, all_cores=2)
    assert n == 1 and "2 local rank(s)" in note
    assert host.worker_budget(8, environ={"MS_WORKER_NUM": "4"}, cores=16, all_cores=16)[0] == 4
    # a launcher pinned this process to 3 of 16 cores: the mask is its share, not divided again
    assert host.worker_budget(8, environ={"LOCAL_WORKER_NUM": "4"}, cores=3, all_cores=16)[0] == 3
    # never below one
    assert host.worker_budget(8, environ={"LOCAL_WORKER_NUM": "8"}, cores=2, all_cores=2)[0] == 1


def test_op_threads_split_the_cores_among_local_ranks():
    assert host.op_threads(environ={}, cores=2, all_cores=2) is None  # alone: MindSpore's default
    assert host.op_threads(environ={"LOCAL_WORKER_NUM": "2"}, cores=2, all_cores=2) == 1
    assert host.op_threads(environ={"MS_WORKER_NUM": "4"}, cores=16, all_cores=16) == 4
    assert host.op_threads(environ={"LOCAL_WORKER_NUM": "8"}, cores=4, all_cores=16) is None  # pinned already


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k not in host.ISA_VARIABLES}
    return env


def without_isa_env(*args):
    """Run train.py with neither ONEDNN_MAX_CPU_ISA nor DNNL_MAX_CPU_ISA set (as a new user would)."""
    import subprocess
    import sys

    from conftest import REPO
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=_clean_env())


def test_train_with_default_workers_on_a_folder_and_the_isa_line(image_data, tmp_path):
    """The default num_parallel_workers (8) must not crash a machine with fewer cores; the log says what the
    process decided about oneDNN, once."""
    args = [a for a in TINY_ARGS]
    i = args.index("--num_parallel_workers")
    del args[i:i + 2]
    assert parse_args(args).num_parallel_workers == 8  # the default is what is tested
    out = tmp_path / "run"
    proc = without_isa_env(*args, "--data_path", os.path.join(image_data, "train"), "--epoch_size", "1",
                           "--run_eval", "true", "--output_dir", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cores = host.usable_cores()
    if cores < 8:
        assert f"num_parallel_workers 8 clamped to {cores}" in proc.stdout + proc.stderr
        assert (proc.stdout + proc.stderr).count("clamped") == 1  # train and eval pipelines: said once
    isa_lines = [l for l in proc.stdout.splitlines() if l.startswith("oneDNN:")]
    assert len(isa_lines) == 1
    if "avx512f" in host.cpu_flags():
        assert "ONEDNN_MAX_CPU_ISA=AVX2" in isa_lines[0]
    log = open(out / "train.log", encoding="utf-8").read()
    assert isa_lines[0] in log

    proc = run_script("eval.py", "--checkpoint_path", out, "--data_path", os.path.join(image_data, "val"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert last_json(proc.stdout)["images"] == 15
    assert "kept" in proc.stdout  # the cap the tests set in the environment is kept, and said


@pytest.mark.parametrize("script", ["train.py", "eval.py", "export.py", "predict.py"])
def test_every_entry_point_answers_help(script):
    proc = run_script(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {script}") and "--cpu_isa_cap" in proc.stdout
    if script != "train.py":
        assert "--checkpoint_path" in proc.stdout


def test_script_options_are_typed(trained):
    out, _ = trained
    ckpt = os.path.join(out, "resnet18-2_12.ckpt")
    fails_cleanly(run_script("export.py", "--checkpoint_path", ckpt, "--verify", "ture"), "'verify'")
    fails_cleanly(run_script("export.py", "--checkpoint_path", ckpt, "--batch_size", "two"), "'batch_size'")
    fails_cleanly(run_script("predict.py", "x.png", "--checkpoint_path", ckpt, "--top_k", "0"), "--top_k")
    fails_cleanly(run_script("predict.py", "x.png", "--checkpoint_path", ckpt, "--json", "maybe"), "'json'")
    fails_cleanly(run_script("eval.py", "--data_path", out), "--checkpoint_path is required")


def test_compile_cache_warning_names_the_cache_path():
    assert host.compile_cache_warning({}) is None
    assert host.compile_cache_warning({"MS_COMPILER_CACHE_ENABLE": "0"}) is None
    warning = host.compile_cache_warning({"MS_COMPILER_CACHE_ENABLE": "1", "MS_COMPILER_CACHE_PATH": "/tmp/c"})
    assert "/tmp/c" in warning and "one MS_COMPILER_CACHE_PATH per config" in warning
    assert "working directory" in host.compile_cache_warning({"MS_COMPILER_CACHE_ENABLE": "1"})


def test_memory_mib_reads_proc_status_and_is_none_without_it(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n")
    assert host.memory_mib("VmHWM", str(status)) == 200.0 and host.memory_mib("VmRSS", str(status)) == 100.0
    assert host.memory_mib("VmSwap", str(status)) is None
    assert host.memory_mib("VmHWM", str(tmp_path / "missing")) is None  # not Linux: the logs leave it out
    assert 0 < host.memory_mib("VmRSS") <= host.memory_mib("VmHWM")  # this process


def test_release_free_heap_gives_freed_pages_back():
    """Freed blocks between live ones stay resident until trimmed; the trim gives their whole pages back."""
    if host.memory_mib("VmRSS") is None or not host.release_free_heap():
        pytest.skip("needs Linux with glibc")
    blocks = [bytearray(64 * 1024 - 64) for _ in range(2000)]  # ~128 MiB of malloc'd blocks below the mmap threshold
    for i in range(len(blocks)):
        if i % 4:
            blocks[i] = None  # 3 in 4 freed: free chunks between live ones that the heap cannot shrink past
    before = host.memory_mib("VmRSS")
    assert host.release_free_heap()
    assert host.memory_mib("VmRSS") < before - 32
    del blocks

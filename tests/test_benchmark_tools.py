"""Parsing in the benchmarks that read MindSpore's output (no MindSpore run here)."""
from benchmarks.thor_graphs import graph_files, row, summarise_ir
from benchmarks.thor_memory import heap_by_site, rss_by_mapping

IR = """# IR entry: @kernel_graph0
%para1_w: <Ref[Tensor[Float32]], (4, 4)>
  %1(CNode_1) = Load(%para1_w, %0)
      : (<Ref[Tensor[Float32]], (4, 4)>, <UMonad>) -> (<Tensor[Float32], (4, 4)>)
  %2(CNode_2) = PrimFunc_MatMul(%1, %1) {instance name: matmul}
      : (<Tensor[Float32], (4, 4)>, <Tensor[Float32], (4, 4)>) -> (<Tensor[Float32], (4, 4)>)
      : (<Float32xDefaultFormat[const vector]{4, 4}>) -> (<Float32xDefaultFormat[const vector]{4, 4}>)
  %3(CNode_3) = PrimFunc_Reshape(%2, (16))
      : (<Tensor[Float32], (4, 4)>, <Tuple>) -> (<Tensor[Float32], (16)>)
  %4(CNode_4) = MakeTuple(%3, %2)
      : (<Tensor[Float32], (16)>, <Tensor[Float32], (4, 4)>) -> (<Tuple[Tensor[Float32]*2]>)
  %5(CNode_5) = PrimFunc_Cast(%3, I64(43))
      : (<Tensor[Float32], (16)>, <Int64>) -> (<Tensor[Float16], (16)>, <Tensor[Bool], ()>)
"""


def test_summarise_ir_counts_nodes_and_output_bytes(tmp_path):
    path = tmp_path / "graph_build_0_0001.ir"
    path.write_text(IR)
    nodes, counts, sizes = summarise_ir(str(path))
    assert nodes == 5 and counts["PrimFunc_MatMul"] == 1 and counts["MakeTuple"] == 1
    # outputs only (after "->", on the shape line right below each node); a scalar tensor is one element; a
    # tuple output names no shape and holds nothing of its own
    assert sizes == {"Load": 64, "PrimFunc_MatMul": 64, "PrimFunc_Reshape": 64, "PrimFunc_Cast": 33}
    summary = row("step", [str(path)])
    assert summary["nodes"] == 5 and summary["reshape_nodes"] == 1
    assert summary["output_mib"] * 2 ** 20 == 64 + 64 + 33  # Load aliases its parameter
    assert summary["output_mib_per_graph"] == [summary["output_mib"]]


def test_graph_files_are_in_build_order(tmp_path):
    for name in ("graph_build_10_0300.ir", "graph_build_2_0130.ir", "graph_build_0_0098.ir", "other.ir"):
        (tmp_path / name).write_text("")
    assert [p.rsplit("/", 1)[1] for p in graph_files(str(tmp_path))] == [
        "graph_build_0_0098.ir", "graph_build_2_0130.ir", "graph_build_10_0300.ir"]


def test_parse_arms_runs_the_child_or_returns_what_to_pass_on(capsys):
    from benchmarks.timing import benchmark_parser, parse_arms

    def measure(arm, args):
        return {"arm": arm, "batch": args.batch_size}
    parser = benchmark_parser("doc", batch_size=32)
    assert parse_arms(parser, ["--batch_size", "4", "--arm", "thor"], ("momentum", "thor"), measure) is None
    assert capsys.readouterr().out.strip() == 'RESULT {"arm": "thor", "batch": 4}'
    args, passed = parse_arms(benchmark_parser("doc", batch_size=32), ["--batch_size", "4"], ("momentum",), measure)
    assert args.batch_size == 4 and args.arm is None and passed == ["--batch_size", "4"]


SMAPS = """55d0a0000000-55d0a4000000 rw-p 00000000 00:00 0                          [heap]
Size:              65536 kB
Rss:               40960 kB
7f0000000000-7f0040000000 rw-p 00000000 00:00 0
Size:            1048576 kB
Rss:              153600 kB
7f0040000000-7f0044000000 rw-p 00000000 00:00 0
Rss:               10240 kB
7f0044000000-7f0044200000 rw-p 00000000 00:00 0
Rss:                1024 kB
7f0050000000-7f0050800000 r-xp 00000000 08:01 123    /lib/libmindspore_cpu.so
Rss:                2048 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                 132 kB
"""


def test_rss_by_mapping_sorts_mappings_by_kind():
    rss = rss_by_mapping(SMAPS)
    # 64 MiB heap with 40 MiB resident; the 1 GiB anonymous mapping is the memory pool; the other anonymous
    # mappings (64 MiB and 2 MiB) count together
    assert rss == {"heap": 40.0, "memory pool": 150.0, "other anonymous": 11.0, "file": 2.0, "other": 132 / 1024}


def test_heap_by_site_attributes_each_backtrace_once():
    stacks = [  # lines as read from the file
        "main;mindspore::pipeline::GraphExecutorPy::CompileInner;mkl_kernel;dnnl_primitive_create;malloc 3145728",
        "main;mindspore::runtime::GraphScheduler::Run;mindspore::device::DynamicMemPoolBestFit::AddMemBlockAndMemBuf"
        " 1048576",
        "main;mindspore::tensor::from_buffer;malloc 2097152",
        "main;mindspore::pipeline::GraphExecutorPy::CompileInner;mindspore::Cloner::CloneNodes 1048576",
        "main;mindspore::ActorBase::Run;malloc 1048576",
        "main;PyObject_Malloc 524288\n",
        "a line without a cost\n",
    ]
    assert heap_by_site(stacks) == {"oneDNN primitives": 3.0, "memory pool block": 1.0, "tensors from NumPy": 2.0,
                                    "graph compile": 1.0, "graph run": 1.0, "rest": 0.5}


def test_status_mib_reads_this_process():
    from benchmarks.timing import status_mib
    now, peak = status_mib("VmRSS"), status_mib("VmHWM")
    assert 0 < now <= peak


def test_conv_scratchpad_shapes_and_heap_reading():
    import pytest

    from benchmarks.conv_scratchpad import heap_mib, parse_shape
    assert parse_shape("512,64,3,8") == (512, 64, 3, 8)
    for bad in ("512,64,3", "512,64,0,8", "a,b,c,d"):
        with pytest.raises(ValueError, match="in,out,kernel,size"):
            parse_shape(bad)
    before = heap_mib()
    block = bytearray(64 * 2 ** 20)  # one malloc'd block, about 64 MiB
    assert heap_mib() - before >= 63
    del block


def test_graph_memory_arms_build_the_graphs_they_name(capsys):
    """Each arm's graph compiles and runs in this process (the child side) and computes what it names: 3 additions
    to ones give 4 per element; both tuples hold x * 1 .. x * 4, the last summing to 16 * 4."""
    import json

    from benchmarks.graph_memory import main
    for arm, elements, last_sum in (("adds", 1, 64.0), ("tuple_loop", 4, 64.0), ("tuple_hypermap", 4, 64.0)):
        main(["--nodes", "3", "--length", "4", "--arm", arm])
        line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("RESULT ")][-1]
        result = json.loads(line[len("RESULT "):])
        assert (result["elements"], result["last_sum"]) == (elements, last_sum)


def test_thor_step_refuses_an_unknown_update_pass_before_starting_a_process(monkeypatch):
    import pytest

    from benchmarks import thor_step

    def no_child(*_, **__):
        raise AssertionError("a child process was started")

    monkeypatch.setattr(thor_step, "child_result", no_child)
    with pytest.raises(SystemExit, match="--update_pass must be one of statistics, eager, step, got 'foo'"):
        thor_step.main(["--update_pass", "foo"])

"""python -m fusedloss bench: one run of every family at --quick sizes writes the table, the CSV
(device, versions and date in every row, one schema across families) and the plots or the
message saying why there are none; bad arguments exit 2 with the usage line."""
import csv
import math
import pathlib
import sys

import pytest

from fusedloss.__main__ import main

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
FAMILIES = sorted(p.stem.removeprefix("bench_") for p in BENCHMARKS.glob("bench_*.py"))


@pytest.fixture(scope="module")
def common():
    sys.path.insert(0, str(BENCHMARKS))
    import common
    return common


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    status = main(["bench", "--quick", "--out", str(out)])
    return status, out


def test_quick_run_writes_one_schema_for_every_family(quick_run, common):
    status, out = quick_run
    assert status == 0
    with open(out / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == (*common.CONTEXT, *common.COLUMNS)
        rows = list(reader)
    assert sorted({r["family"] for r in rows}) == FAMILIES
    for r in rows:
        assert all(r[key] for key in common.CONTEXT), r
        assert float(r["ms"]) > 0 and float(r["ratio_to_fastest"]) >= 1.0, r
    groups = {}
    for r in rows:
        groups.setdefault((r["family"], r["case"], r["dtype"], r["size"]), []).append(r)
    for group in groups.values():  # every size has fusedloss, a peer, and one fastest
        impls = [r["impl"] for r in group]
        assert impls[0].startswith("fusedloss") and len(impls) >= 2
        assert min(float(r["ratio_to_fastest"]) for r in group) == 1.0
    for family in FAMILIES:  # each plot has at least two sizes to draw its lines through
        assert len({r["size"] for r in rows if r["family"] == family}) >= 2, family
    markdown = (out / "results.md").read_text()
    assert [line.removeprefix("### ") for line in markdown.splitlines()
            if line.startswith("### ")] == FAMILIES
    table_lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table_lines) == len(rows) + 2 * len(FAMILIES)  # a header and a rule per family


def test_quick_run_plots_or_says_why_not(quick_run):
    _, out = quick_run
    pngs = sorted(p.stem for p in out.glob("*.png"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert pngs == []
    else:
        assert pngs == FAMILIES
        assert all((out / f"{f}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in FAMILIES)


def test_plots_without_matplotlib_say_so(common, monkeypatch, tmp_path):
    import report
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    said = []
    assert report.plots(tmp_path, [], {"crf": "T"}, said.append) == []
    assert "matplotlib is not installed" in said[0] and "CSV" in said[0]


def test_ratio_to_fastest_and_pct_of_bound(common):
    measured = [{"ms": ms, "ms_q20": ms, "ms_q80": ms, "peak_mib": None, "note": ""}
                for ms in (4.0, 2.0, math.nan)]
    rows = common.rank([common.row("f", "c", "fp32", "V", 8, name, m)
                        for name, m in zip("abc", measured)])
    assert [r["ratio_to_fastest"] for r in rows] == [2.0, 1.0, None]
    # 1 GB at 1000 GB/s takes 1 ms: done in 2 ms that is 50% of the bound
    assert common.Peaks(gbps=1000).pct_of_bytes(1e9, 2.0) == pytest.approx(50.0)
    assert common.Peaks(tflops=500).pct_of_flops(1e12, 8.0) == pytest.approx(25.0)
    assert common.Peaks().pct_of_bytes(1e9, 2.0) is None
    assert common.datasheet_peaks("NVIDIA H200") == (4800.0, 989.0)
    assert common.datasheet_peaks("NVIDIA H100 PCIe")[0] == 2000.0


def test_bandwidth_bound_is_a_measured_copy_unless_given(common, monkeypatch):
    import torch

    import report
    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda device: 4123.4)
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    h200, _ = common.datasheet_peaks("NVIDIA H200")
    assert report.bandwidth_bound(cuda, h200, None) == (
        4123.4, "4123 GB/s (measured device-to-device copy, datasheet 4800 GB/s)")
    assert report.bandwidth_bound(cuda, None, None) == (  # a GPU no datasheet lists
        4123.4, "4123 GB/s (measured device-to-device copy)")
    assert report.bandwidth_bound(cuda, h200, 3000.0) == (3000.0, "3000 GB/s (--peak-gbps)")
    assert report.bandwidth_bound(torch.device("cpu"), None, None) == (None, "none (CPU interpreter)")


def test_copy_bandwidth_is_measured_only_on_cuda(common, device):
    import torch
    gbps = common.copy_bandwidth_gbps(torch.device(device), size_bytes=2**26)
    if device == "cpu":
        assert gbps is None
    else:  # any GPU's copy lies between a PCIe link's and no HBM's yet
        assert 10 < gbps < 20000, gbps


def test_host_time_skips_every_launch_and_times_both_sides(common, device):
    if device != "cpu":
        pytest.skip("host_time stubs out the Triton interpreter, which runs on the CPU only")
    import host_time
    from triton.runtime.interpreter import InterpretedFunction
    real_run = InterpretedFunction.run
    rows = host_time.measure(calls=3, runs=1)
    assert InterpretedFunction.run is real_run  # the interpreter is back for the tests after
    launches = {name: count for name, _, _, count in rows}
    # forward and the shared backward's scale (which returns at once on the device for a 1);
    # CTC's forward is its states kernel, the two recursions and the gradient kernel
    assert launches == {"cross_entropy fwd+bwd": 2, "cross_entropy fwd, no grad": 1,
                        "mse_loss fwd+bwd": 2, "binary_cross_entropy_with_logits fwd+bwd": 2,
                        "ctc_loss fwd+bwd": 4}
    assert all(ours > 0 and theirs > 0 for _, ours, theirs, _ in rows)


def test_help_lists_only_the_benchmark_families(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "Benchmark families: " + ", ".join(FAMILIES) in " ".join(text.split())
    assert "traffic" not in text and "compile_sm90" not in text and "common" not in text


@pytest.mark.parametrize("argv", [["bench", "--family", "traffic", "--quick"],
                                  ["bench", "--quick", "--peak-gbps", "-1"],
                                  ["bench", "--quick", "--surprise"]])
def test_bad_arguments_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage: python -m fusedloss" in capsys.readouterr().err


def test_without_cuda_only_quick_runs(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: full sizes run")
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--family", "crf"])
    assert exit_.value.code == 2 and "only --quick runs" in capsys.readouterr().err


def test_without_cuda_or_interpreter_exits_2(monkeypatch, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the kernels run compiled")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the user turned the interpreter off
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--quick", "--family", "crf"])
    assert exit_.value.code == 2 and "TRITON_INTERPRET is off" in capsys.readouterr().err


def test_l2_reuse_model_counts_an_lru_cache():
    """benchmarks/l2_reuse.py against hand-counted cases: one program, a row of 10 blocks, a
    cache of 4: pass 1 leaves blocks 6-9 cached; a forward pass 2 misses every block (each miss
    evicts the next one it needs), a downward one (block 9 kept in registers) hits 8, 7, 6 of
    its 9 reads. A cache as large as the rows in flight serves every second read."""
    sys.path.insert(0, str(BENCHMARKS))
    import l2_reuse
    one_row = dict(num_blocks=10, block_bytes=1, programs=1, l2_bytes=4, rows_per_program=1)
    assert l2_reuse.second_read_hits(**one_row, downward=False) == 0
    assert l2_reuse.second_read_hits(**one_row, downward=True) == 3 / 9
    fitting = dict(num_blocks=16, block_bytes=1, programs=8, l2_bytes=8 * 16)
    assert l2_reuse.second_read_hits(**fitting, downward=False) == 1
    assert l2_reuse.second_read_hits(**fitting, downward=True) == 1

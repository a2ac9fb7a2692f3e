"""The fuzzer itself: it bites (planted errors are reported with reproducers that fail when run),
its reproducers rebuild calls exactly, its report reads well, and `python -m fusedloss check`
works end to end."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import fusedloss
from fusedloss import testing
from fusedloss.testing import Failure, Report, Row, fuzz, planted_error, reproducer
from fusedloss.testing.strategies import Call

# CPU tensors on every test device: the fuzzer's own machinery, run on the reference
pytestmark = pytest.mark.cpu_tensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- planted errors -------------------------------------------------------------------------

class _NudgeGradient(torch.autograd.Function):
    """Identity forward; the backward adds 1e-3 to one element of the gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        if grad.numel():
            grad.view(-1)[0] += 1e-3
        return grad


def gradient_off_by_1e3(fn):
    def wrapped(input, *args, **kwargs):
        if input.requires_grad:
            input = _NudgeGradient.apply(input)
        return fn(input, *args, **kwargs)
    return wrapped


def ignored_tokens_count_as_class_0(fn):
    def wrapped(input, target, *args, **kwargs):
        if not target.is_floating_point():
            target = torch.where(target == kwargs.get("ignore_index", -100), 0, target)
        return fn(input, target, *args, **kwargs)
    return wrapped


def _run_reproducer(source):
    exec(compile(source, "<reproducer>", "exec"), {"__name__": "__reproducer__"})


@pytest.mark.parametrize("loss,bug", [
    ("mse_loss", gradient_off_by_1e3),
    ("smooth_l1_loss", gradient_off_by_1e3),
    ("cross_entropy", ignored_tokens_count_as_class_0),
    ("nll_loss", ignored_tokens_count_as_class_0),
])
def test_fuzzer_reports_a_planted_error_with_a_failing_reproducer(loss, bug):
    # Plant on top of the reference so only the planted error can fail, whatever state the
    # kernels are in; the planted wrapper runs as the candidate, never as the truth.
    with fusedloss.use_backend("reference"), planted_error(loss, bug):
        report = fuzz(loss, examples=100, device="cpu", seed=1)
        assert not report.ok, str(report)
        (failure,) = report.failures
        assert failure.loss == loss and failure.ratio > 1
        assert "assert_close_to_reference" in failure.reproducer
        with pytest.raises(AssertionError):
            _run_reproducer(failure.reproducer)
    # without the planted error the same reproducer passes: it failed for the planted reason
    with fusedloss.use_backend("reference"):
        _run_reproducer(failure.reproducer)
    assert loss in str(report) and "FAIL" in str(report) and failure.reproducer in str(report)


def test_planted_error_is_shrunk():
    with fusedloss.use_backend("reference"), planted_error("mse_loss", gradient_off_by_1e3):
        failure, = fuzz("mse_loss", examples=100, device="cpu", seed=3).failures
    tensors = [a for a in failure.call.args if torch.is_tensor(a)]
    assert tensors[0].numel() <= 4, failure.reproducer  # shrunk to a handful of elements


def test_clean_run_passes_on_the_reference():
    with fusedloss.use_backend("reference"):
        report = fuzz(["l1_loss", "rank_loss"], examples=10, device="cpu", seed=0)
    assert report.ok, str(report)
    # hypothesis may draw the same call twice, which the fuzzer checks once: nearly all 10 ran
    assert all(8 <= row.cases <= 10 for row in report.rows), [row.cases for row in report.rows]
    assert all(row.passed == row.cases and row.worst <= 1 for row in report.rows)
    assert "reference" in report.mode


# --- reproducers ----------------------------------------------------------------------------

def test_reproducer_rebuilds_the_exact_call(monkeypatch):
    inf = math.inf
    logits = torch.tensor([[1e4, -inf, 0.1], [2.5, -1e4, 3.0]], dtype=torch.float32).t().contiguous().t()
    call = Call("cross_entropy", (logits.requires_grad_(True), torch.tensor([0, -100])),
                {"weight": torch.tensor([1.0, 0.5, 2.0], dtype=torch.bfloat16),
                 "label_smoothing": 0.0, "softcap": None,
                 "z": torch.empty(0, 3, dtype=torch.float16)}, "note")
    seen = {}
    monkeypatch.setattr(testing, "assert_close_to_reference",
                        lambda name, *args, **kwargs: seen.update(name=name, args=args, kwargs=kwargs))
    _run_reproducer(reproducer(call))
    assert seen["name"] == "cross_entropy"
    rebuilt = list(seen["args"]) + [seen["kwargs"][k] for k in ("weight", "z")]
    for ours, theirs in zip(rebuilt, list(call.args) + [call.kwargs["weight"], call.kwargs["z"]]):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert ours.stride() == theirs.stride() and ours.requires_grad == theirs.requires_grad
        assert torch.equal(ours.isnan(), theirs.isnan())
        assert torch.equal(torch.nan_to_num(ours.detach()), torch.nan_to_num(theirs.detach()))
    assert seen["kwargs"]["softcap"] is None and seen["kwargs"]["label_smoothing"] == 0.0


# --- the report -----------------------------------------------------------------------------

def _sample_report():
    call = Call("mse_loss", (torch.tensor([1.0]), torch.tensor([2.0])), {"reduction": "sum"})
    failure = Failure("mse_loss", call, 12.5, "error is 12.5 x the allowed (grad 0)", reproducer(call))
    rows = [Row("mse_loss", "kernel", 10, 9, 12.5, 1.25, failure),
            Row("binary_cross_entropy_with_logits", "reference", 200, 200, 0.5, 31.0),
            Row("nce_loss", "-", skipped="fusedloss.functional.nce_loss does not exist")]
    return Report(rows, "cpu", 7, 200, "Triton kernels through the Triton interpreter")


def test_report_is_readable_and_serialisable():
    report = _sample_report()
    assert not report.ok and len(report.failures) == 1
    text = str(report)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("loss"))
    table = lines[header:header + 5]
    # aligned: every column starts at the same offset in the header and in each row
    column = table[0].index("backend")
    assert [line[column:].split()[0] for line in table[2:]] == ["kernel", "reference", "-"]
    assert table[2].split()[:6] == ["mse_loss", "kernel", "10", "9", "12.5", "1.2s"] and "FAIL" in table[2]
    assert "ok" in table[3] and "SKIPPED" in table[4]
    assert "seed 7" in text and "assert_close_to_reference('mse_loss'" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["rows"][0]["failure"]["reproducer"] == report.failures[0].reproducer


def test_loss_argument_forms():
    with fusedloss.use_backend("reference"):
        assert [r.loss for r in fuzz("l1_loss", examples=2, seed=0).rows] == ["l1_loss"]
        assert [r.loss for r in fuzz(["l1_loss", "mse_loss"], examples=2, seed=0).rows] == ["l1_loss", "mse_loss"]
    with pytest.raises(ValueError, match="unknown loss"):
        fuzz("no_such_loss", examples=1)


def test_import_without_hypothesis():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import fusedloss.testing as t\n"
            "try:\n    t.fuzz('l1_loss', examples=1)\nexcept ImportError as e:\n    print('IMPORT-ERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "IMPORT-ERROR" in out.stdout and "test extra" in out.stdout


# --- the command line -----------------------------------------------------------------------

def _cli(*args, env=None):
    environment = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FUSEDLOSS_BACKEND")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "fusedloss", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_cli_check(tmp_path):
    path = tmp_path / "report.json"
    out = _cli("check", "--loss", "l1_loss", "--loss", "rank_loss", "--examples", "3", "--seed", "5",
               "--json", str(path))
    data = json.loads(path.read_text())
    assert out.returncode == (0 if data["ok"] else 1), out.stdout + out.stderr
    assert [row["loss"] for row in data["rows"]] == ["l1_loss", "rank_loss"]
    assert all(row["cases"] == 3 for row in data["rows"]) and data["seed"] == 5
    assert "worst err/allowed" in out.stdout and "l1_loss" in out.stdout
    if not torch.cuda.is_available():  # it switched the interpreter on itself and said so
        assert "Triton interpreter" in out.stderr and "interpreter" in data["mode"]
    assert "rank_loss" in out.stderr  # the progress bar


def test_cli_exit_status_and_reproducer_on_failure(capsys):
    from fusedloss.__main__ import main
    with fusedloss.use_backend("reference"), planted_error("mse_loss", gradient_off_by_1e3):
        status = main(["check", "--loss", "mse_loss", "--examples", "50", "--seed", "1"])
    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL" in out and "fusedloss.testing.assert_close_to_reference('mse_loss'" in out


def test_cli_unknown_loss():
    assert _cli("check", "--loss", "nope", "--examples", "1").returncode == 2


@pytest.mark.parametrize("argv", [["check", "--examples", "-3"], ["check", "--examples", "0"],
                                  ["check", "--examples", "many"], ["check", "--device", "tpu"]])
def test_cli_bad_arguments_exit_2_with_usage(argv, capsys):
    from fusedloss.__main__ import main
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage: python -m fusedloss check" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cli_cuda_without_a_device_exits_2(capsys):
    from fusedloss.__main__ import main
    with pytest.raises(SystemExit) as exit_:
        main(["check", "--device", "cuda", "--examples", "1"])
    assert exit_.value.code == 2 and "no CUDA device" in capsys.readouterr().err


def test_grad_output_strided_or_contiguous_gives_the_same_gradients(monkeypatch):
    """run_with_gradients hands a strided grad_output by default (the comparison's rule) and a
    contiguous one on request (the sm_90 compile's realistic calls): the same values either way."""
    from fusedloss import functional
    from fusedloss.testing.compare import run_with_gradients
    handed = []
    original = torch.autograd.grad

    def grad(outputs, inputs, grad_outputs=None, **kwargs):
        if torch.is_tensor(grad_outputs):  # run_with_gradients' call
            handed.append(grad_outputs.is_contiguous())
        return original(outputs, inputs, grad_outputs, **kwargs)
    monkeypatch.setattr(torch.autograd, "grad", grad)
    x = torch.randn(6, 11, requires_grad=True)
    target = torch.randint(0, 11, (6,))
    runs = [run_with_gradients(functional.cross_entropy, (x, target), {"reduction": "none"},
                               grad_seed=0, strided_grad_output=strided)
            for strided in (True, False)]
    assert handed == [False, True]
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=0)

"""fuzz(): hypothesis-driven differential testing of every loss against the float64 reference.

For each loss, hypothesis draws whole valid calls (fusedloss.testing.strategies), each call is
checked by `compare` (docs/design.md's tolerance rule, values and gradients), and the first failing
call is shrunk to a minimal one and turned into a self-contained Python reproducer. The result is
a `Report`: one `Row` per loss, `.ok`, `.failures`, and a table as its `str()`.
"""
import dataclasses
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable

import torch

from .. import _backend, catalog
from .compare import compare

__all__ = ["Failure", "Report", "Row", "fuzz", "reproducer"]

# Shrinking re-runs the call many times; past these budgets only already-seen calls are re-run
# (from a cache), so a failure is reported quickly even through the slow Triton interpreter.
SHRINK_SECONDS = 30.0
SHRINK_CALLS = 150


@dataclasses.dataclass
class Failure:
    """A failing call, shrunk: what went wrong and a runnable reproducer."""
    loss: str
    call: object  # strategies.Call
    ratio: float  # worst error / allowed (inf for an exception)
    message: str
    reproducer: str
    shrink_steps: int = 0

    def __str__(self) -> str:
        return f"{self.loss}: {self.message}\n  call: {self.call!r}\n--- reproducer ---\n{self.reproducer}"


@dataclasses.dataclass
class Row:
    loss: str
    backend: str  # "kernel"; "reference" (no kernel or reference backend: fp32/fp64 only); "-"
    cases: int = 0
    passed: int = 0
    worst: float = 0.0  # worst error / allowed over every case run
    seconds: float = 0.0
    failure: Failure | None = None
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.skipped


@dataclasses.dataclass
class Report:
    rows: list[Row]
    device: str
    seed: int
    examples: int
    mode: str  # what ran as the candidate: the kernels (CUDA or interpreter) or the reference

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    @property
    def failures(self) -> list[Failure]:
        return [row.failure for row in self.rows if row.failure is not None]

    def to_dict(self) -> dict:
        return {
            "ok": self.ok, "device": self.device, "seed": self.seed, "examples": self.examples,
            "mode": self.mode,
            "rows": [{"loss": r.loss, "backend": r.backend, "cases": r.cases, "passed": r.passed,
                      "worst_error_over_allowed": None if math.isinf(r.worst) else r.worst,
                      "seconds": round(r.seconds, 3), "skipped": r.skipped or None,
                      "failure": None if r.failure is None else {
                          "message": r.failure.message, "call": repr(r.failure.call),
                          "reproducer": r.failure.reproducer}} for r in self.rows],
        }

    def table(self) -> str:
        header = ("loss", "backend", "cases", "passed", "worst err/allowed", "time", "status")
        lines = []
        for r in self.rows:
            worst = "inf" if math.isinf(r.worst) else f"{r.worst:.3g}"
            status = "ok" if r.ok else ("SKIPPED: " + r.skipped if r.skipped else "FAIL")
            lines.append((r.loss, r.backend, str(r.cases), str(r.passed), worst, f"{r.seconds:.1f}s", status))
        widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
        numeric = {2, 3, 4, 5}

        def fmt(cells):
            return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        rule = "  ".join("-" * w for w in widths)
        return "\n".join([fmt(header), rule] + [fmt(line) for line in lines])

    def __str__(self) -> str:
        failed = len(self.failures)
        summary = (f"fusedloss fuzz: {len(self.rows)} losses, device {self.device}, seed {self.seed}, "
                   f"{self.examples} examples each; candidate: {self.mode}")
        verdict = "all agree with the reference" if self.ok else (
            f"{failed} loss(es) FAILED" if failed else "some losses were skipped")
        text = [summary, self.table(), verdict]
        for failure in self.failures:
            text += ["", str(failure)]
        return "\n".join(text)


# --- reproducers ----------------------------------------------------------------------------

def _literal(tensor):
    """Python source that rebuilds `tensor` exactly (values, dtype, device, layout, requires_grad)."""
    dtype = str(tensor.dtype)
    device = tensor.device.type if tensor.device.index is None else str(tensor.device)
    options = f"dtype={dtype}" + ("" if device == "cpu" else f", device={device!r}")
    data = tensor.detach().cpu()
    transposed = data.dim() == 2 and not data.is_contiguous() and data.mT.is_contiguous() and data.numel() > 1
    if transposed:
        data = data.mT
    if data.numel() == 0:
        source = f"torch.empty({tuple(data.shape)}, {options})"
    else:
        values = data.tolist() if data.dtype != torch.bfloat16 else data.float().tolist()
        source = f"torch.tensor({values!r}, {options})"
    if transposed:
        source += ".mT"
    if tensor.requires_grad:
        source += ".requires_grad_(True)"
    return source


def _value_source(value, names, lines, hint):
    if torch.is_tensor(value):
        name = hint
        index = 1
        while name in names:
            index += 1
            name = f"{hint}{index}"
        names.add(name)
        lines.append(f"{name} = {_literal(value)}")
        return name
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # inf / nan: defined by the preamble
    return repr(value)


def reproducer(call: object, grad_seed: int = 0, interpret: bool | None = None,
               message: str | None = None) -> str:
    """Self-contained Python source that rebuilds the call's exact tensors and runs
    fusedloss.testing.assert_close_to_reference on them (raising AssertionError while it fails)."""
    if interpret is None:
        interpret = _backend.interpreting()
    lines = ["# fusedloss fuzz reproducer" + (f": {message}" if message else "")]
    if call.note:
        lines.append(f"# {call.note}")
    if interpret:
        lines += ["import os", "os.environ.setdefault('TRITON_INTERPRET', '1')  # before triton is imported"]
    lines += ["from math import inf, nan", "import torch", "import fusedloss.testing", ""]
    names, arguments = set(), []
    hints = catalog.get(call.fn_name).arg_names
    for i, value in enumerate(call.args):
        hint = hints[i] if i < len(hints) else f"arg{i}"
        arguments.append(_value_source(value, names, lines, hint))
    for key, value in call.kwargs.items():
        arguments.append(f"{key}={_value_source(value, names, lines, key)}")
    if grad_seed:
        arguments.append(f"grad_seed={grad_seed}")
    lines += ["", f"fusedloss.testing.assert_close_to_reference({call.fn_name!r}, {', '.join(arguments)})"]
    return "\n".join(lines) + "\n"


# --- the fuzzer -----------------------------------------------------------------------------

def _default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _mode(device):
    if _backend.get_backend() == "reference":
        return "the reference (backend 'reference': the reference checked against itself in float64)"
    if torch.device(device).type == "cuda":
        return "Triton kernels on CUDA"
    if _backend.interpreting():
        return "Triton kernels through the Triton interpreter (TRITON_INTERPRET=1)"
    return ("the reference: CPU tensors without TRITON_INTERPRET=1 do not run the kernels "
            "(set TRITON_INTERPRET=1 before importing triton to check them)")


def _backend_label(name, device):
    from .. import _dispatch
    try:
        if _backend.resolve(device) == "triton" and _dispatch.has_kernel(name):
            return "kernel"
    except Exception:  # noqa: BLE001 - e.g. triton missing: then the reference runs
        pass
    return "reference"


def _dtypes_for(backend):
    """Every float dtype when the kernels run. When the candidate is the reference itself (no
    kernel for the loss, or CPU without the interpreter) float64 only: the reference is a float64
    oracle with no lower-precision accuracy contract, so at fp32 and below a check would report
    the oracle's own rounding (seen: the fp32 CTC recursion at 1.4x the fp32 allowance), not a
    kernel's. What remains checked is the argument handling and dispatch around it."""
    from .strategies import FLOAT_DTYPES
    return FLOAT_DTYPES if backend == "kernel" else (torch.float64,)


def _hypothesis():
    try:
        import hypothesis
    except ImportError as error:
        raise ImportError("fusedloss.testing.fuzz needs hypothesis, a test extra: "
                          "pip install 'fusedloss[test]' (or pip install hypothesis)") from error
    return hypothesis


class _Mismatch(AssertionError):
    pass


def _check_call(name, call, grad_seed=0):
    """(ratio, message) for one call: compare()'s verdict, or inf and the exception it raised."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = compare(name, *call.args, grad_seed=grad_seed, **call.kwargs)
    except Exception as error:  # noqa: BLE001 - a valid call must not raise: that is a failure
        return math.inf, f"raised {type(error).__name__}: {error}"
    if result.ok:
        return result.ratio, ""
    return result.ratio, f"error is {result.ratio:.3g} x the allowed ({result.where})"


def _fuzz_loss(name, examples, device, seed, progress):
    hypothesis = _hypothesis()
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from . import strategies

    row = Row(name, _backend_label(name, device))
    start = time.perf_counter()
    verdicts = {}  # reproducer source -> (ratio, message): shrinking re-runs no call twice
    state = {"failing": None, "shrink_start": None, "shrink_calls": 0}

    def check(call):
        call = call.to(device)
        key = reproducer(call, interpret=False)
        if key in verdicts:
            ratio, message = verdicts[key]
        elif state["failing"] is not None and (
                state["shrink_calls"] >= SHRINK_CALLS
                or time.perf_counter() - state["shrink_start"] > SHRINK_SECONDS):
            return  # shrink budget spent: unseen calls count as passing, seen ones keep their verdict
        else:
            ratio, message = _check_call(name, call)
            verdicts[key] = (ratio, message)
            if state["failing"] is None:
                row.cases += 1
                row.passed += not message
                row.worst = max(row.worst, ratio)
                if progress is not None:
                    progress(name, row.cases, examples)
            else:
                state["shrink_calls"] += 1
        if message:
            if state["failing"] is None:
                state["shrink_start"] = time.perf_counter()
            state["failing"] = (call, ratio, message)
            raise _Mismatch(message)

    test = settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet,
                    report_multiple_bugs=False, print_blob=False,
                    phases=(Phase.explicit, Phase.generate, Phase.shrink))(
        given(strategies.calls(name, _dtypes_for(row.backend)))(check))
    test = hypothesis.seed(seed)(test)
    try:
        test()
    except _Mismatch:
        pass
    except Exception as error:  # noqa: BLE001 - the fuzzer itself broke (e.g. a strategy bug)
        if state["failing"] is None:
            row.failure = Failure(name, None, math.inf, f"fuzzer error {type(error).__name__}: {error}",
                                  "", 0)
    if state["failing"] is not None:
        call, ratio, message = state["failing"]
        row.failure = Failure(name, call, ratio, message, reproducer(call, message=message),
                              state["shrink_calls"])
    row.seconds = time.perf_counter() - start
    return row


def fuzz(loss: str | Iterable[str] | None = None, examples: int = 200, device: str | None = None,
         seed: int | None = None, *,
         progress: Callable[[str, int, int], None] | None = None) -> Report:
    """Differential fuzzing of fusedloss against its float64 reference, values and gradients.

    loss: a name, a list of names, or None for every loss; examples: calls drawn per loss;
    device: 'cpu' or 'cuda' (None: cuda if available, else cpu); seed: None draws one (the report
    shows it, so a run can be repeated). Returns a `Report` (`.ok`, `.failures` with shrunk
    reproducers, `str()` a table). On CPU the kernels are checked only when TRITON_INTERPRET=1
    was set before triton was imported; otherwise the reference runs and the report says so.
    progress(loss, done, total) is called after each case, for progress bars.
    """
    _hypothesis()
    names = list(catalog.NAMES) if loss is None else [loss] if isinstance(loss, str) else list(loss)
    for name in names:
        catalog.get(name)  # ValueError for an unknown loss, before anything runs
    device = str(device or _default_device())
    if seed is None:
        seed = random.SystemRandom().randrange(2 ** 32)
    rows = [_fuzz_loss(name, examples, device, seed, progress) for name in names]
    return Report(rows, device, seed, examples, _mode(device))


if os.environ.get("FUSEDLOSS_FUZZ_SHRINK_SECONDS"):
    SHRINK_SECONDS = float(os.environ["FUSEDLOSS_FUZZ_SHRINK_SECONDS"])

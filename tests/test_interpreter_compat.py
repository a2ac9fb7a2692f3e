"""The interpreter fixes of fusedloss/triton_kernels/_interpreter_compat.py: a launch patches
triton.language once, however many @triton.jit helpers its kernel calls, computes what it
computed before, and leaves the language as it found it."""
import pytest
import torch

pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import fusedloss.triton_kernels  # noqa: E402,F401  (installs the fixes under the interpreter)
from fusedloss import _backend  # noqa: E402

pytestmark = pytest.mark.skipif(not _backend.interpreting(), reason="interpreter only: compiled "
                                "kernels never patch triton.language")


@triton.jit
def _square_plus_one(x):
    return x * x + 1


@triton.jit
def _helpers_in_a_loop_kernel(x_ptr, out_ptr, steps, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offsets)
    total = tl.zeros([BLOCK], tl.float32)
    for _ in range(steps):  # a runtime trip count: the patched range
        total += _square_plus_one(x) + tl.max(x, axis=0)  # ours, and triton.language.standard's
    tl.store(out_ptr + offsets, total)


def test_a_launch_patches_once_and_restores(monkeypatch):
    from triton.runtime import interpreter
    patched = interpreter._patch_lang
    scopes = []
    monkeypatch.setattr(interpreter, "_patch_lang", lambda fn: scopes.append(patched(fn)) or scopes[-1])
    range_before = tl.range
    x = torch.arange(8, dtype=torch.float32)
    out = torch.empty_like(x)
    for _ in range(2):
        _helpers_in_a_loop_kernel[(1,)](x, out, 5, BLOCK=8)
        torch.testing.assert_close(out, 5 * (x * x + 1 + x.max()), rtol=0, atol=0)
    # per launch: the launch's own scope and one for the first helper that sees tl.core
    # (triton.language.standard's); every other helper call (at least the loop's 2 x 5, plus
    # what tl.max calls inside) patched nothing
    real = [s for s in scopes if type(s).__name__ != "_AlreadyPatched"]
    assert len(real) == 2 * 2 and len(scopes) >= 2 * (1 + 2 * 5)
    assert tl.range is range_before

"""Registers and spills of the cross-entropy row kernel on sm_90 (H100/H200), with no GPU:
compiles each launch variant ahead of time (triton.compile for a GPUTarget) and asks the ptxas
bundled with triton for its resource usage. Used to choose _common.MAX_ROW_BLOCK.

    python benchmarks/sm90_registers.py
"""
import os
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, before triton is imported

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fusedloss.triton_kernels import _common, cross_entropy  # noqa: E402

TARGET = GPUTarget("cuda", 90, 64)
OPTIONS = {"plain": {}, "every option": dict(HAS_WEIGHT=True, HAS_SMOOTHING=True, HAS_Z_LOSS=True,
                                             HAS_SOFTCAP=True),
           "soft labels": dict(SOFT_LABELS=True, HAS_SMOOTHING=True)}


def usage(kernel):
    """'registers N, spill stores M B' from ptxas -v on the kernel's PTX."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas-blackwell")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as handle:
        handle.write(kernel.asm["ptx"])
    report = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", handle.name, "-o", os.devnull],
                            capture_output=True, text=True).stderr
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    if not (registers and spills):
        return report[-400:]
    return f"registers {registers.group(1)}, spill stores {spills.group(1)} B"


def compile_row_kernel(dtype, block, single_block, flags):
    kernel = cross_entropy._softmax_loss_kernel
    signature = {}
    for name in kernel.arg_names:
        if name.endswith("_ptr"):
            signature[name] = "*fp32"
        elif "stride" in name:
            signature[name] = "i64"
        else:
            signature[name] = "i32"
    for name in ("label_smoothing", "label_smoothing_lo", "z_loss", "z_loss_lo", "softcap",
                 "softcap_lo", "gamma", "gamma_lo"):
        signature[name] = "fp32"
    signature["logits_ptr"] = signature["grad_ptr"] = f"*{dtype}"
    signature["target_ptr"] = f"*{dtype}" if flags.get("SOFT_LABELS") else "*i64"
    constants = dict(ACC=tl.float32, BLOCK=block, SINGLE_BLOCK=single_block, SOFT_LABELS=False,
                     HAS_WEIGHT=False, HAS_SMOOTHING=False, HAS_Z_LOSS=False, HAS_SOFTCAP=False,
                     FOCAL=False, COMPUTE_GRAD=True, MEAN=True, RETURN_LSE=False)
    constants.update(flags)
    signature.update({name: "constexpr" for name in constants})
    return triton.compile(ASTSource(kernel, signature, constants), target=TARGET,
                          options=dict(num_warps=_common.row_warps(block)))


def main():
    for dtype in ("bf16", "fp32"):
        for vocabulary in (32000, 128256):
            block = _common.row_block(vocabulary)
            for label, flags in OPTIONS.items():
                kernel = compile_row_kernel(dtype, block, vocabulary <= block, flags)
                print(f"{dtype} V={vocabulary} block {block} warps {_common.row_warps(block)} "
                      f"{label}: {usage(kernel)}", flush=True)


if __name__ == "__main__":
    main()

"""Compiles every launched Triton kernel of fusedloss for sm_90 (H100/H200; --arch 80: A100)
without a GPU, in the specialisations the library's own host code launches, and reports
registers and spills.

Two steps, each in its own process:
  record   fusedloss.functional calls (forward and backward) run on CPU tensors through the
           Triton interpreter with the GPU's launch sizes (FUSEDLOSS_LAUNCH_PARAMS=gpu). Every
           kernel launch is intercepted before it executes: triton's own argument binder, set up
           for the target GPU, turns its arguments into the specialisation a GPU launch would
           compile (argument types, ints equal to 1 or divisible by 16, 16-byte aligned
           pointers, constexpr values, num_warps), and the launch is skipped. Outputs therefore
           hold garbage, which nothing here reads. The calls run as on CUDA, every value check
           queued on the device (which reaches the kernels' device-path variants: BCE's range
           check inside its kernel); the queued asserts are skipped too, as they would read
           the skipped launches' garbage.
  compile  each distinct specialisation is compiled for the target with the real JITFunction, in
           processes without the interpreter (so the kernels' globals are the GPU's), a worker
           per core, and the report of the ptxas run triton makes gives registers and spill
           bytes.
Each row also gives the widest global load and store in bytes per thread (from the PTX): 16 is
a 128-bit vector access. It exits 1 when a specialisation fails to compile (naming kernel and
specialisation), when a kernel that must be vectorised to 16 bytes (must_vectorise) is not (at
realistic shapes only: the fuzzer's rows of a few classes and offset views are narrower than
a vector by construction), or when a kernel that fusedloss/triton_kernels/*.py launches
(`kernel[grid](...)`) was never reached.

    python benchmarks/compile_sm90.py        # realistic training shapes, every dtype (CI)
    python benchmarks/compile_sm90.py --arch 80   # the same for sm_80 (A100; CI, one stack)
    python benchmarks/compile_sm90.py --all  # every specialisation the fuzzer's calls reach:
                                             # --examples calls per loss (default 200) drawn
                                             # with its hypothesis strategies
"""
import argparse
import ast
import concurrent.futures
import contextlib
import copyreg
import dataclasses
import importlib
import io
import math
import multiprocessing
import os
import pathlib
import pickle
import re
import subprocess
import sys
import tempfile
import time
import warnings

KERNEL_DIR = pathlib.Path(__file__).resolve().parent.parent / "fusedloss" / "triton_kernels"
DTYPES = ("float32", "float16", "bfloat16", "float64")
FUZZ_SEED = 20240601  # the fuzz tests' seed: two --all runs compile the same set


# The compute capability compiled for (--arch): 90 is what the CUDA driver reports for an
# H100/H200, 80 for an A100. The record step's process and the compile workers inherit it.
ARCH = 90


def _target():
    from triton.backends.compiler import GPUTarget
    return GPUTarget("cuda", ARCH, 32)


@dataclasses.dataclass
class Launch:
    """One specialisation of one kernel, as JITFunction.run would hand it to triton.compile."""
    module: str
    name: str
    signature: dict  # argument name -> triton type ('*bf16', 'i32', 'constexpr', ...)
    constexprs: dict  # argument index path -> value (declared constexprs and ints equal to 1)
    attrs: dict  # argument index path -> [['tt.divisibility', 16]] and the like
    options: dict  # launch options: num_warps, ...
    reached_by: str  # the first call that launched it

    def key(self):
        return repr((self.module, self.name, self.signature, self.constexprs, self.attrs,
                     self.options))


# --- record (runs under TRITON_INTERPRET=1) -------------------------------------------------

def _realistic_calls():
    """(label, loss name, args, kwargs): one call per loss family and option that reaches each
    kernel, at training shapes, in every dtype the kernels take."""
    import torch
    generator = torch.Generator().manual_seed(0)

    def randint(high, *shape, low=0):
        return torch.randint(low, high, shape, generator=generator)

    for dtype_name in DTYPES:
        dtype = getattr(torch, dtype_name)

        def randn(*shape, grad=False):
            return torch.randn(shape, generator=generator).to(dtype).requires_grad_(grad)

        def uniform(*shape, low=0.0, high=1.0):
            return (low + (high - low) * torch.rand(shape, generator=generator)).to(dtype)

        def call(label, name, *args, **kwargs):
            return f"{label} {dtype_name}", name, args, kwargs

        # softmax family: LM vocabularies (Llama 3, Llama 2, GPT-2: not a multiple of 16), an
        # ImageNet head (one block) and a segmentation map (classes strided by H*W)
        for vocab in (128256, 32000, 50257):
            yield call(f"cross_entropy V={vocab}", "cross_entropy", randn(4, vocab, grad=True),
                       randint(vocab, 4))
        yield call("cross_entropy V=128256 every option", "cross_entropy",
                   randn(4, 128256, grad=True), randint(128256, 4), weight=uniform(128256),
                   label_smoothing=0.1, z_loss=1e-4, softcap=30.0, return_lse=True)
        yield call("cross_entropy V=50257 every option", "cross_entropy",
                   randn(4, 50257, grad=True), randint(50257, 4), weight=uniform(50257),
                   label_smoothing=0.1, z_loss=1e-4, softcap=30.0, return_lse=True)
        yield call("cross_entropy V=50257 weight smoothing", "cross_entropy",
                   randn(4, 50257, grad=True), randint(50257, 4), weight=uniform(50257),
                   label_smoothing=0.1)
        yield call("cross_entropy V=50257 weight z-loss softcap", "cross_entropy",
                   randn(4, 50257, grad=True), randint(50257, 4), weight=uniform(50257),
                   z_loss=1e-4, softcap=30.0)
        yield call("cross_entropy V=50257 soft labels every option", "cross_entropy",
                   randn(4, 50257, grad=True), randn(4, 50257).float().softmax(-1).to(dtype),
                   label_smoothing=0.1, z_loss=1e-4, softcap=30.0, return_lse=True)
        yield call("cross_entropy V=128256 eval", "cross_entropy", randn(4, 128256),
                   randint(128256, 4), reduction="none")
        # rows of 32000 held whole (cross_entropy._held_row_block): weighted, per token, no grad
        yield call("cross_entropy V=32000 weight", "cross_entropy", randn(4, 32000, grad=True),
                   randint(32000, 4), weight=uniform(32000))
        yield call("cross_entropy V=32000 none", "cross_entropy", randn(4, 32000, grad=True),
                   randint(32000, 4), reduction="none")
        yield call("cross_entropy V=32000 eval", "cross_entropy", randn(4, 32000),
                   randint(32000, 4), reduction="none")
        yield call("cross_entropy V=32000 soft labels", "cross_entropy",
                   randn(4, 32000, grad=True), randn(4, 32000).float().softmax(-1).to(dtype),
                   label_smoothing=0.1)
        yield call("cross_entropy C=1000", "cross_entropy", randn(256, 1000, grad=True),
                   randint(1000, 256))
        yield call("cross_entropy C=21 64x64", "cross_entropy", randn(4, 21, 64, 64, grad=True),
                   randint(21, 4, 64, 64))
        yield call("softmax_focal_loss V=32000", "softmax_focal_loss", randn(8, 32000, grad=True),
                   randint(32000, 8), alpha=uniform(32000), gamma=2.0)
        yield call("softmax_focal_loss V=50257", "softmax_focal_loss", randn(8, 50257, grad=True),
                   randint(50257, 8), alpha=uniform(50257), gamma=2.0)
        log_probs = randn(4, 21, 64, 64).float().log_softmax(1).to(dtype).requires_grad_()
        yield call("nll_loss C=21 64x64", "nll_loss", log_probs, randint(21, 4, 64, 64),
                   weight=uniform(21))
        log_probs = randn(8, 32000).float().log_softmax(1).to(dtype).requires_grad_()
        yield call("nll_loss V=32000", "nll_loss", log_probs, randint(32000, 8))
        yield call("linear_cross_entropy V=128256 H=64", "linear_cross_entropy",
                   randn(8, 64, grad=True), randn(128256, 64, grad=True), randint(128256, 8))

        # elementwise family: 64 x 4096 activations (64 blocks)
        shape = (64, 4096)
        yield call("binary_cross_entropy_with_logits weight pos_weight",
                   "binary_cross_entropy_with_logits", randn(*shape, grad=True), uniform(*shape),
                   weight=uniform(*shape), pos_weight=uniform(4096, high=4.0))
        yield call("binary_cross_entropy weight", "binary_cross_entropy",
                   uniform(*shape, low=0.01, high=0.99).requires_grad_(), uniform(*shape),
                   weight=uniform(*shape))
        yield call("sigmoid_focal_loss", "sigmoid_focal_loss", randn(*shape, grad=True),
                   randint(2, *shape).to(dtype), reduction="sum")
        for name in ("smooth_l1_loss", "huber_loss", "mse_loss"):
            yield call(name, name, randn(*shape, grad=True), randn(*shape))
        # an element count that is no multiple of 16: only the last block may be masked
        yield call("mse_loss 1000x4097", "mse_loss", randn(1000, 4097, grad=True),
                   randn(1000, 4097))
        yield call("l1_loss weight", "l1_loss", randn(*shape, grad=True), randn(*shape),
                   weight=uniform(*shape))
        yield call("margin_ranking_loss", "margin_ranking_loss", randn(262144, grad=True),
                   randn(262144, grad=True), (2 * randint(2, 262144) - 1).to(dtype), margin=0.5)
        yield call("rank_loss", "rank_loss", randint(2, 262144).to(dtype),
                   randn(262144, grad=True), randn(262144, grad=True))
        yield call("dice_loss 4x64x64 C=21", "dice_loss",
                   randn(4, 64, 64, 21).float().softmax(-1).to(dtype).requires_grad_(),
                   randint(21, 4, 64, 64, 1))

        # sequences: CTC over 1000 frames with 100+ labels (characters), a 64-tag CRF over 512 steps
        targets = randint(32, 4, 120, low=1)
        lengths = (torch.full((4,), 1000), torch.tensor([120, 110, 100, 120]))
        log_probs = randn(1000, 4, 32).float().log_softmax(-1).to(dtype).requires_grad_()
        yield call("ctc_loss T=1000 S=120 C=32", "ctc_loss", log_probs, targets, *lengths)
        yield call("ctc_loss_with_logits T=1000 S=120 C=32", "ctc_loss_with_logits",
                   randn(1000, 4, 32, grad=True), targets, *lengths)
        yield call("ctc_loss T=1000 S=120 C=32 eval", "ctc_loss", log_probs.detach(), targets,
                   *lengths)
        yield call("ctc_loss_with_logits T=1000 S=100 C=5000", "ctc_loss_with_logits",
                   randn(1000, 2, 5000, grad=True), randint(5000, 2, 100, low=1),
                   torch.full((2,), 1000), torch.full((2,), 100))
        # 400 labels: one tile of 512 pairs over 4 warps, its shift between frames through
        # shared memory (within one warp it is shuffles)
        yield call("ctc_loss T=1000 S=400 C=32", "ctc_loss",
                   randn(1000, 2, 32).float().log_softmax(-1).to(dtype).requires_grad_(),
                   randint(32, 2, 400, low=1), torch.full((2,), 1000), torch.full((2,), 400))
        # 2000 labels: 4001 states, swept in tiles by the recursions and the gradient kernel
        yield call("ctc_loss T=4100 S=2000 C=32", "ctc_loss",
                   randn(4100, 1, 32).float().log_softmax(-1).to(dtype).requires_grad_(),
                   randint(32, 1, 2000, low=1), torch.full((1,), 4100), torch.full((1,), 2000))
        mask = torch.arange(512) < torch.tensor([512, 480, 400, 512, 300, 512, 256, 500])[:, None]

        def crf_params(grad):
            return (randn(8, 512, 64, grad=grad), randn(64, 64, grad=grad), randn(64, grad=grad),
                    randn(64, grad=grad))

        emissions, *transitions = crf_params(True)
        yield call("crf_nll T=512 K=64", "crf_nll", emissions, randint(64, 8, 512), *transitions,
                   mask=mask)
        emissions, *transitions = crf_params(False)
        yield call("crf_nll T=512 K=64 eval", "crf_nll", emissions, randint(64, 8, 512),
                   *transitions, mask=mask)
        yield call("crf_marginals T=512 K=64", "crf_marginals", *crf_params(False), mask=mask)
        yield call("crf_marginals T=512 K=64 gradient", "crf_marginals", *crf_params(True),
                   mask=mask)
        yield call("crf_decode T=512 K=64", "crf_decode", *crf_params(False), mask=mask)

        # a CRF with more tags than one tile (K = 300: three of 128), every kernel tiled
        def wide_crf_params(grad):
            return (randn(2, 64, 300, grad=grad), randn(300, 300, grad=grad),
                    randn(300, grad=grad), randn(300, grad=grad))

        wide_mask = mask[:2, :64]
        emissions, *transitions = wide_crf_params(True)
        yield call("crf_nll T=64 K=300", "crf_nll", emissions, randint(300, 2, 64), *transitions,
                   mask=wide_mask, reduction="none")
        emissions, *transitions = wide_crf_params(False)
        yield call("crf_nll T=64 K=300 eval", "crf_nll", emissions, randint(300, 2, 64),
                   *transitions, mask=wide_mask)
        yield call("crf_marginals T=64 K=300 gradient", "crf_marginals", *wide_crf_params(True),
                   mask=wide_mask)
        yield call("crf_decode T=64 K=300", "crf_decode", *wide_crf_params(False), mask=wide_mask)

        # gathered-row logistic losses: a 10000-class output layer
        yield call("hsigmoid_loss C=10000 D=256", "hsigmoid_loss", randn(256, 256, grad=True),
                   randint(10000, 256), 10000, randn(9999, 256, grad=True),
                   bias=randn(9999, grad=True))
        yield call("nce_loss C=10000 k=64 D=256", "nce_loss", randn(256, 256, grad=True),
                   randint(10000, 256), randn(10000, 256, grad=True), randn(10000, grad=True),
                   randint(10000, 256, 64), torch.full((10000,), -math.log(10000)).to(dtype))
        yield call("hsigmoid_loss custom tree L=14 D=256", "hsigmoid_loss",
                   randn(256, 256, grad=True), randint(10000, 256), 10000,
                   randn(9999, 256, grad=True), path_table=randint(9999, 256, 14),
                   path_code=randint(2, 256, 14))
        # 'none': the scatter runs in the backward, each sample's grad_output read per entry
        yield call("nce_loss C=10000 k=64 D=256 none", "nce_loss", randn(256, 256, grad=True),
                   randint(10000, 256), randn(10000, 256, grad=True), None,
                   randint(10000, 256, 64),
                   torch.full((10000,), -math.log(10000)).to(dtype).requires_grad_(),
                   reduction="none")


def _fuzz_calls(examples):
    """(label, loss name, args, kwargs) for `examples` calls per loss drawn from the fuzzer's
    hypothesis strategies (the same seed and dtypes as its tests)."""
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from fusedloss import catalog
    from fusedloss.testing import strategies

    for name in catalog.NAMES:
        drawn = []

        def keep(call):
            drawn.append(call)

        settings(max_examples=examples, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))(
            seed(FUZZ_SEED)(given(strategies.calls(name))(keep)))()
        for call in drawn:
            yield f"fuzz {name}", call.fn_name, call.args, call.kwargs


def _jit_function(module, name):
    """The jit function `name` of `module`: how a jit function passed as a constexpr (a loss's
    math) is pickled, so that the compile step gets the real JITFunction, not the interpreter's."""
    return getattr(importlib.import_module(module), name)


def _by_name(jit):
    """copyreg's reduction of a jit function (interpreted or not): _jit_function of its name, so
    every process unpickles the one its own imports made."""
    return _jit_function, (jit.fn.__module__, jit.fn.__name__)


def record(launch_all, examples):
    """Run the calls with every kernel launch intercepted; the distinct specialisations."""
    from triton.compiler import make_backend
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction, create_function_from_signature

    import torch

    from fusedloss import _args, functional
    from fusedloss.testing.compare import run_with_gradients

    backend = make_backend(_target())
    binders = {}
    launches = {}
    current = [None]

    def intercept(self, *args, grid, warmup, **kwargs):
        # what JITFunction.run does before it compiles (its binder and _pack_args), for ARCH
        if self.fn not in binders:
            kernel = JITFunction(self.fn)
            binders[self.fn] = kernel, create_function_from_signature(kernel.signature,
                                                                      kernel.params, backend)
        kernel, binder = binders[self.fn]
        bound, specialization, options = binder(*args, **kwargs)
        _, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound,
                                                            specialization, options)
        launch = Launch(self.fn.__module__, self.fn.__name__, signature, constexprs, attrs,
                        options, current[0])
        launches.setdefault(launch.key(), launch)

    InterpretedFunction.run = intercept
    copyreg.pickle(InterpretedFunction, _by_name)
    calls = _fuzz_calls(examples) if launch_all else _realistic_calls()
    torch._assert_async = lambda *args, **kwargs: None  # this process only records (module header)
    for label, name, args, kwargs in calls:
        current[0] = label
        with warnings.catch_warnings(), _args.checks_queued_as_on_cuda():
            warnings.simplefilter("ignore")  # torch's broadcast warnings on fuzzed calls
            try:
                # the realistic calls backward a contiguous grad_output, as training does; the
                # fuzzer's take the comparison's strided one (more specialisations)
                run_with_gradients(getattr(functional, name), args, kwargs, grad_seed=0,
                                   strided_grad_output=launch_all)
            except Exception as error:
                error.add_note(f"compile_sm90: raised by the call '{label}'")
                raise
    return list(launches.values())


# --- compile (runs without the interpreter) -------------------------------------------------

def launched_kernels():
    """(module, name) of every JITFunction that fusedloss/triton_kernels/*.py launches with a
    grid, `name[grid](...)`, read from the modules' source."""
    from triton.runtime.jit import JITFunction
    found = set()
    for path in sorted(KERNEL_DIR.glob("*.py")):
        if path.stem == "__init__":
            continue
        module = importlib.import_module(f"fusedloss.triton_kernels.{path.stem}")
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
                    and isinstance(node.func.value, ast.Name)
                    and isinstance(getattr(module, node.func.value.id, None), JITFunction)):
                found.add((module.__name__, node.func.value.id))
    return found


def global_access_bytes(ptx):
    """(widest global load, widest global store) in bytes per thread and instruction, read from
    the PTX (ld.global[.qualifiers][.v2|.v4].<type><bits>): 16 is a 128-bit vector access."""
    widest = {}
    for op, suffix in re.findall(r"\b(ld|st)\.global((?:\.[\w:]+)+)", ptx):
        parts = suffix.split(".")
        lanes = next((int(part[1:]) for part in parts if part in ("v2", "v4", "v8")), 1)
        bits = re.fullmatch(r"[bfsu](\d+)", parts[-1])
        if bits:
            widest[op] = max(widest.get(op, 0), lanes * int(bits.group(1)) // 8)
    return widest.get("ld", 0), widest.get("st", 0)


# Kernels whose accesses are flat contiguous runs: every specialisation must compile to 16-byte
# vector loads and stores (scalar ones cost a GPU a large share of its bandwidth), whatever the
# element count.
VECTOR_KERNELS = ("_elementwise_loss_kernel", "_scale_kernel")


def must_vectorise(launch):
    """Whether the launch must compile to 16-byte loads and stores: the flat kernels always; the
    softmax row kernel when it writes a gradient of contiguous classes with options whose split
    rows fit the registers (cross_entropy._split_fits_registers), whatever the row length (it
    splits unaligned rows at 16-byte boundaries)."""
    if launch.name in VECTOR_KERNELS:
        return True
    names = list(launch.signature)
    flags = {names[index]: value for (index, *_), value in launch.constexprs.items()}
    if not (launch.name == "_softmax_loss_kernel" and flags.get("COMPUTE_GRAD") is True
            and flags.get("logits_stride_c") == 1):
        return False
    import torch
    from fusedloss.triton_kernels.cross_entropy import _split_fits_registers
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
             "fp64": torch.float64}[describe(launch)[0]]
    return _split_fits_registers(dtype, flags.get("HAS_WEIGHT") is True,
                                 float(flags.get("HAS_SMOOTHING") is True),
                                 float(flags.get("HAS_Z_LOSS") is True),
                                 1.0 if flags.get("HAS_SOFTCAP") is True else None)


def compile_launch(launch):
    """(registers, spill store bytes, spill load bytes, widest global load bytes, widest global
    store bytes) of the launch compiled for the target."""
    import triton
    from triton.compiler import ASTSource
    kernel = getattr(importlib.import_module(launch.module), launch.name)
    source = ASTSource(kernel, launch.signature, launch.constexprs, launch.attrs)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # triton prints its ptxas -v report (dump_ptxas_log)
        compiled = triton.compile(source, target=_target(), options=launch.options)
    report = log.getvalue()
    found = [re.search(pattern, report) for pattern in (
        r"Used (\d+) registers", r"(\d+) bytes spill stores", r"(\d+) bytes spill loads")]
    if not all(found):
        raise RuntimeError(f"no ptxas resource report in triton's output:\n{report[-400:]}")
    return (*(int(match.group(1)) for match in found), *global_access_bytes(compiled.asm["ptx"]))


def describe(launch):
    """(first float pointer's dtype, constexprs): True flags by name, False ones left out, ints
    a GPU launch specialises to 1 as name=1, jit functions by name."""
    names = list(launch.signature)
    dtype = next((kind[1:] for kind in launch.signature.values()
                  if kind.startswith(("*fp", "*bf"))), "-")
    parts = []
    for (index, *_), value in launch.constexprs.items():
        if value is True:
            parts.append(names[index])
        elif value is not False:
            parts.append(f"{names[index]}={getattr(value, '__name__', value)}")
    return dtype, " ".join(parts)


def _compile_reported(launch):
    """compile_launch in a worker: ((registers, stores, loads) or None, the error or None)."""
    try:
        return compile_launch(launch), None
    except Exception as error:  # noqa: BLE001 - every failure is reported, then exit 1
        cause = error.__cause__  # a CompilationError names the line; its cause says what broke
        return None, f"{type(error).__name__}: {error}" + (
            f"\n  caused by {type(cause).__name__}: {cause}" if cause is not None else "")


def compile_all(launches, check_vectors):
    """Compile every launch, a worker process per core (each compile is single-threaded MLIR
    and ptxas work), printing one table row each in the recorded order; (launches that failed
    to compile, launches that must_vectorise and are not (with check_vectors), launches that
    spill)."""
    from triton import knobs
    from triton.runtime.jit import JITFunction
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its report
    copyreg.pickle(JITFunction, _by_name)  # the workers' arguments
    width = max(len(launch.reached_by) for launch in launches)
    print(f"{'kernel':<32} {'dtype':<5} {'warps':>5} {'regs':>4} {'spill st/ld B':>13} "
          f"{'ld/st B':>7}  {'reached by':<{width}}  constexprs", flush=True)
    failures = narrow = spilled = 0
    workers = len(os.sched_getaffinity(0))
    with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork")) as pool:
        for launch, (report, error) in zip(launches, pool.map(_compile_reported, launches)):
            dtype, constexprs = describe(launch)
            warps = launch.options.get("num_warps", 4)
            if error is not None:
                failures += 1
                print(f"FAILED {launch.module}.{launch.name} [{launch.reached_by}]\n"
                      f"  signature {launch.signature}\n  constexprs {launch.constexprs}\n"
                      f"  attrs {launch.attrs}\n  options {launch.options}\n  {error}", flush=True)
                continue
            registers, stores, loads, load_bytes, store_bytes = report
            spilled += bool(stores or loads)
            print(f"{launch.name:<32} {dtype:<5} {warps:>5} {registers:>4} "
                  f"{f'{stores}/{loads}':>13} {f'{load_bytes}/{store_bytes}':>7}  "
                  f"{launch.reached_by:<{width}}  {constexprs}", flush=True)
            vectorised = (load_bytes, store_bytes) == (16, 16)
            if check_vectors and must_vectorise(launch) and not vectorised:
                narrow += 1
                print(f"FAILED {launch.module}.{launch.name} [{launch.reached_by}]: widest "
                      f"global load/store {load_bytes}/{store_bytes} bytes, not 16-byte vectors",
                      flush=True)
    return failures, narrow, spilled


def main():
    global ARCH
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true",
                        help="every specialisation the fuzzer's calls reach, not realistic shapes")
    parser.add_argument("--examples", type=int, default=200,
                        help="calls drawn per loss with --all (default 200, the fuzzer's)")
    parser.add_argument("--arch", type=int, choices=(80, 90), default=ARCH,
                        help="compute capability to compile for: 90 (H100/H200, default) or 80 "
                        "(A100)")
    parser.add_argument("--record-to", help=argparse.SUPPRESS)  # the record step's process
    args = parser.parse_args()
    ARCH = args.arch

    if args.record_to:
        with open(args.record_to, "wb") as handle:
            pickle.dump(record(args.all, args.examples), handle)
        return 0

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "launches.pickle")
        # the interpreter must be on before triton is imported, so the record step gets its own
        # process; the backend is pinned so no call silently takes the reference instead
        env = dict(os.environ, TRITON_INTERPRET="1", FUSEDLOSS_LAUNCH_PARAMS="gpu",
                   FUSEDLOSS_BACKEND="triton")
        command = [sys.executable, __file__, "--record-to", path, "--examples", str(args.examples),
                   "--arch", str(args.arch)]
        subprocess.run(command + (["--all"] if args.all else []), env=env, check=True)
        with open(path, "rb") as handle:
            launches = pickle.load(handle)
    recorded = time.perf_counter() - start

    os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU: before triton is imported
    failures, narrow, spilled = compile_all(launches, check_vectors=not args.all)
    missing = launched_kernels() - {(launch.module, launch.name) for launch in launches}
    kernels = len({(launch.module, launch.name) for launch in launches})
    print(f"\n{len(launches)} specialisations of {kernels} kernels for sm_{ARCH} "
          f"({'--all' if args.all else 'realistic shapes'}): recorded in {recorded:.0f} s, "
          f"compiled in {time.perf_counter() - start - recorded:.0f} s; "
          f"{spilled} with spills, {failures} failed to compile"
          + ("" if args.all else f", {narrow} not 16-byte vectors where they must be"))
    for module, name in sorted(missing):
        print(f"NOT REACHED: {module}.{name} is launched by its module but no call compiled it")
    return 1 if failures or narrow or missing else 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m fusedloss check | bench

check: the differential fuzzer (fusedloss.testing.fuzz) over every loss or the ones named, with a
progress bar on stderr, then a table; exit status 1 on any failure, each failure's reproducer
printed.

bench: the benchmark families of the source tree's benchmarks/ (each bench_<family>.py measures
fusedloss and every importable peer in one process), written into one folder as a Markdown
table, a CSV and PNG plots (benchmarks/report.py). On a CPU only --quick runs: tiny sizes
through the interpreter, which keep the outputs alive but measure no speed.

On a machine without CUDA both turn on the Triton interpreter themselves (TRITON_INTERPRET=1, set
before triton is imported: `import fusedloss` does not import it) so the kernels, not the
reference, are what runs. Bad arguments exit 2 with the usage line.
"""
import os
import sys


def _want_interpreter(argv):
    if os.environ.get("TRITON_INTERPRET") not in (None, ""):
        return False  # the user decided
    if "--device" in argv and argv.index("--device") + 1 < len(argv) and argv[argv.index("--device") + 1] == "cuda":
        return False
    if any(a == "--device=cuda" for a in argv):
        return False
    import torch
    return not torch.cuda.is_available()


import argparse
import json
import pathlib
import time


class _Progress:
    """One line on stderr, redrawn in place: [#####.....] loss 12/200."""

    def __init__(self, stream, total_losses, width=30):
        self.stream, self.total_losses, self.width = stream, total_losses, width
        self.done_losses, self.current, self.start = 0, None, time.perf_counter()
        self.tty = stream.isatty()
        self.last = 0.0

    def __call__(self, loss, done, total):
        if loss != self.current:
            if self.current is not None:
                self.done_losses += 1
            self.current = loss
        fraction = (self.done_losses + min(done / max(total, 1), 1.0)) / max(self.total_losses, 1)
        filled = int(round(fraction * self.width))
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done_losses + 1}/"
                f"{self.total_losses} {loss} {done}/{total}  {time.perf_counter() - self.start:.0f}s")
        now = time.perf_counter()
        if self.tty:
            self.stream.write("\r" + line.ljust(100)[:100])
            self.stream.flush()
        elif now - self.last > 5 or done == total:  # a log file gets a line every few seconds
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last = now

    def close(self):
        if self.tty:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


def _check(args, interpreter_set):
    from . import _backend, catalog
    from . import testing

    losses = args.loss or None
    if losses:
        unknown = [name for name in losses if name not in catalog.BY_NAME]
        if unknown:
            print(f"unknown loss(es): {', '.join(unknown)}; known: {', '.join(catalog.NAMES)}",
                  file=sys.stderr)
            return 2
    device = args.device or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
    if interpreter_set:
        print("no CUDA device: running the kernels through the Triton interpreter "
              "(TRITON_INTERPRET=1 set by fusedloss check)", file=sys.stderr)
    elif device == "cpu" and not _backend.interpreting():
        print("note: TRITON_INTERPRET is off, so on the CPU the reference is checked, not the "
              "kernels", file=sys.stderr)
    names = losses or list(catalog.NAMES)
    progress = _Progress(sys.stderr, len(names))
    try:
        report = testing.fuzz(names, examples=args.examples, device=device, seed=args.seed,
                              progress=progress)
    finally:
        progress.close()
    print(report)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report.to_dict(), handle, indent=2)
    return 0 if report.ok else 1


# bench runs from a source checkout: benchmarks/ sits beside the package, not inside the wheel
_BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def _bench_families():
    return sorted(p.stem.removeprefix("bench_") for p in _BENCHMARKS.glob("bench_*.py"))


def _bench(args):
    sys.path.insert(0, str(_BENCHMARKS))
    import report

    from . import use_backend
    families = list(dict.fromkeys(args.family or _bench_families()))
    with use_backend("triton"):  # what is measured is the kernels, whatever FUSEDLOSS_BACKEND says
        return report.run(families, args.quick, args.out, gbps=args.peak_gbps,
                          tflops=args.peak_tflops)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m fusedloss",
                                     description="fusedloss: check the kernels against the reference, "
                                     "or benchmark them against their peers")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="differential fuzzing of the kernels against the "
                                "float64 reference (values and gradients)")
    check.add_argument("--loss", action="extend", nargs="+", metavar="NAME",
                       help="losses to check (repeatable; default: all)")
    check.add_argument("--examples", type=_positive_int, default=200, metavar="N", help="calls per loss (200)")
    check.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="default: cuda if available, else cpu")
    check.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    check.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    families = _bench_families()
    bench = commands.add_parser(
        "bench", help="benchmark fusedloss against every importable peer (a Markdown table, a CSV "
        "and PNG plots)", description="Benchmark families: " + (", ".join(families) or
                                                                "none (no benchmarks/ folder here)"))
    bench.add_argument("--family", action="extend", nargs="+", metavar="F", choices=families,
                       help="families to run (repeatable; default: all)")
    bench.add_argument("--quick", action="store_true",
                       help="tiny sizes (on a CPU through the Triton interpreter): keeps the "
                       "benchmarks alive, measures no speed")
    bench.add_argument("--out", metavar="DIR", help="where to write results.md, results.csv and "
                       "the plots (default: benchmarks/results/<device>-<date>)")
    bench.add_argument("--peak-gbps", type=_positive_float, metavar="X",
                       help="the memory bandwidth for %% of bound (default: a device-to-device "
                       "copy's, measured at the start of the run)")
    bench.add_argument("--peak-tflops", type=_positive_float, metavar="X",
                       help="the device's dense bf16 matmul rate for %% of bound (default: its "
                       "datasheet's)")
    args = parser.parse_args(argv)
    cuda_wanted = args.command == "check" and args.device == "cuda"
    if cuda_wanted and not __import__("torch").cuda.is_available():
        check.error("--device cuda: this torch sees no CUDA device")
    if args.command == "bench":
        if not families:
            bench.error(f"no benchmarks at {_BENCHMARKS}: bench runs from a source checkout "
                        "(the benchmarks are not installed with the package)")
        if not args.quick and not __import__("torch").cuda.is_available():
            bench.error("no CUDA device: on a CPU only --quick runs (tiny sizes through the "
                        "Triton interpreter)")
    interpreter_set = False
    if _want_interpreter(argv[1:]):
        os.environ["TRITON_INTERPRET"] = "1"
        interpreter_set = "triton" not in sys.modules
    if args.command == "bench" and not __import__("torch").cuda.is_available():
        from . import _backend
        if not _backend.interpreting():
            bench.error("TRITON_INTERPRET is off and there is no CUDA device: the kernels cannot "
                        "run here (unset it or set TRITON_INTERPRET=1)")
    return _check(args, interpreter_set) if args.command == "check" else _bench(args)


if __name__ == "__main__":
    sys.exit(main())

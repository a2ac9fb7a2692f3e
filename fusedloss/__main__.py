"""python -m fusedloss check | bench

check: the differential fuzzer (fusedloss.testing.fuzz) over every loss or the ones named, with a
progress bar on stderr, then a table; exit status 1 on any failure, each failure's reproducer
printed. On a machine without CUDA it turns on the Triton interpreter itself (TRITON_INTERPRET=1,
set before triton is imported) so the kernels, not the reference, are what gets checked.

bench: lists the benchmark scripts (they run separately: python benchmarks/<script>.py).
"""
import os
import sys

# Before anything that imports triton. `python -m fusedloss` has imported the package (which
# does not import triton) but nothing that does, so the interpreter can still be switched on.


def _want_interpreter(argv):
    if os.environ.get("TRITON_INTERPRET") not in (None, ""):
        return False  # the user decided
    if "--device" in argv and argv.index("--device") + 1 < len(argv) and argv[argv.index("--device") + 1] == "cuda":
        return False
    if any(a == "--device=cuda" for a in argv):
        return False
    import torch
    return not torch.cuda.is_available()


if len(sys.argv) > 1 and sys.argv[1] == "check" and _want_interpreter(sys.argv[2:]):
    os.environ["TRITON_INTERPRET"] = "1"
    _INTERPRETER_SET = "triton" not in sys.modules
else:
    _INTERPRETER_SET = False

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402


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


def _check(args):
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
    if _INTERPRETER_SET:
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


def _bench(args):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.join(here, "benchmarks")
    scripts = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(folder) else []
    if not scripts:
        print("no benchmarks/ folder next to this installation (benchmarks live in the source "
              "repository, not in the installed package)")
        return 0
    print("fusedloss does not run benchmarks from here; they run separately (GPU figures only "
          "count from a CUDA machine):")
    for script in scripts:
        print(f"  python {os.path.relpath(os.path.join(folder, script))}")
    return 0


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fusedloss",
                                     description="fusedloss: check the kernels against the reference")
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
    commands.add_parser("bench", help="list the benchmark scripts")
    args = parser.parse_args(argv)
    if args.command == "check" and args.device == "cuda" and not __import__("torch").cuda.is_available():
        check.error("--device cuda: this torch sees no CUDA device")
    return _check(args) if args.command == "check" else _bench(args)


if __name__ == "__main__":
    sys.exit(main())

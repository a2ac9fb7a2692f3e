"""Run every benchmark script in this folder in turn, passing the same arguments to each.

On a CUDA machine: `python benchmarks/run_all.py --csv-dir benchmarks/results/<device>-<date>`
writes one CSV per family there. On a CPU, `--smoke` runs each at a tiny size through the Triton
interpreter so the scripts cannot rot.
"""
import argparse
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes through the interpreter")
    parser.add_argument("--csv-dir", help="write each family's CSV into this folder")
    args, passthrough = parser.parse_known_args()
    env = dict(os.environ)
    if args.smoke:
        env["TRITON_INTERPRET"] = "1"
        passthrough.append("--smoke")
    failures = 0
    for script in sorted(HERE.glob("bench_*.py")):
        command = [sys.executable, str(script), *passthrough]
        if args.csv_dir:
            pathlib.Path(args.csv_dir).mkdir(parents=True, exist_ok=True)
            command += ["--csv", str(pathlib.Path(args.csv_dir) / f"{script.stem}.csv")]
        print(f"== {script.name}", flush=True)
        failures += subprocess.call(command, env=env) != 0
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

"""The README's loss table is the catalog's (every row's names, torch twin, status and notes),
its CPU recipes run as written, and its list of benchmark families is the benchmarks'."""
import os
import pathlib
import re
import subprocess
import sys

from fusedloss import _dispatch, catalog

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def readme_table():
    """(names, twin, status, notes) of each row of the README's loss table."""
    rows = re.findall(r"^\| (`[^|]+`) \| ([^|]+) \| (kernel|reference) \|([^|]*)\|$",
                      README.read_text(), re.M)
    return [(re.findall(r"`(\w+)`", names), twin, status, notes.strip())
            for names, twin, status, notes in rows]


def test_status_column_matches_the_kernels():
    rows = readme_table()
    assert len(rows) >= 19
    for names, _, status, _ in rows:
        for name in names:
            assert status == ("kernel" if _dispatch.has_kernel(name) else "reference"), name


def test_rows_are_the_catalogs():
    assert [(names, twin, notes) for names, twin, _, notes in readme_table()] == catalog.readme_rows()


CPU_MARK = "# runs as written on a CPU"


def cpu_recipes():
    """The README's Python blocks that promise to run as written on a CPU."""
    blocks = re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.M | re.S)
    return [block for block in blocks if block.startswith(CPU_MARK)]


def test_cpu_recipes_run_as_written(tmp_path):
    # as a CPU-only user runs them: a fresh process, no interpreter switched on, outside the tree
    recipes = cpu_recipes()
    assert len(recipes) >= 2
    script = "\n".join(f"exec({block!r}, {{}})" for block in recipes)
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("TRITON_INTERPRET", "FUSEDLOSS_BACKEND")}
    environment["PYTHONPATH"] = str(README.parent)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(recipes)
    assert "torch.Size([8, 32000])" in lines[0] and "torch.Size([1000, 64])" in lines[1]


def test_bench_families_are_the_benchmarks():
    section = README.read_text().split("## Benchmarks:")[1].split("\n## ")[0]
    scripts = sorted(p.stem.removeprefix("bench_")
                     for p in (README.parent / "benchmarks").glob("bench_*.py"))
    assert sorted(re.findall(r"^Families: (.*?)\n\(", section, re.M | re.S)[0]
                  .replace("\n", " ").replace("`", "").split(", ")) == scripts

"""Runs benchmark families in one process and writes their one output format into a folder:

  results.md      a Markdown table per family: time, ratio to the fastest peer, % of the bound,
                  peak memory; the device, versions, date and the peers left out above it
  results.csv     every row with device, versions and date (common.CONTEXT + common.COLUMNS)
  <family>.png    time and peak memory against the family's size axis, one line per peer and
                  one row of panels per case (matplotlib, an optional extra: without it the
                  plots are skipped and the command says so)

The table and the CSV are rewritten after each measured row, so a run cut short by a time
limit keeps what it measured.
"""
import csv
import datetime
import importlib
import math
import pathlib
import re

import common

HERE = pathlib.Path(__file__).resolve().parent


def context(device):
    import torch
    import triton

    import fusedloss
    return {"device": common.device_label(device), "torch": torch.__version__,
            "triton": triton.__version__, "fusedloss": fusedloss.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")}


def default_out(device):
    """benchmarks/results/<device>-<date>, where the README says GPU results go."""
    label = common.device_label(device).split(",")[0]
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    return HERE / "results" / f"{slug}-{datetime.date.today():%Y%m%d}"


def bandwidth_bound(device, sheet_gbps, gbps):
    """(GB/s for "% of bound", what the figure is): --peak-gbps where given, else the measured
    device-to-device copy bandwidth on CUDA, with the datasheet's beside it where known; (None,
    why not) on the CPU."""
    if gbps:
        return gbps, f"{gbps:.0f} GB/s (--peak-gbps)"
    if device.type != "cuda":
        return None, "none (CPU interpreter)"
    measured = common.copy_bandwidth_gbps(device)
    sheet = f", datasheet {sheet_gbps:.0f} GB/s" if sheet_gbps else ""
    return measured, f"{measured:.0f} GB/s (measured device-to-device copy{sheet})"


def run(names, quick, out, gbps=None, tflops=None, log=print):
    """Measure the named families into `out`; returns 0, or 1 when a family raised."""
    device = common.kernel_device(quick)
    about = context(device)
    sheet_gbps, sheet_tflops = common.datasheet_peaks(about["device"])
    bound_gbps, about["bandwidth"] = bandwidth_bound(device, sheet_gbps, gbps)
    peaks = common.Peaks(bound_gbps, tflops or sheet_tflops)
    out = pathlib.Path(out) if out else default_out(device)
    out.mkdir(parents=True, exist_ok=True)
    log(", ".join(f"{key} {value}" for key, value in about.items()))
    if device.type != "cuda":
        log("note: kernels through the Triton interpreter on the CPU: these times keep the "
            "benchmarks alive, they are not performance figures")
    elif peaks.tflops is None:
        log(f"note: no datasheet peak for {about['device']}: give --peak-tflops for the "
            "matmul families' % of bound column")
    rows, notes, failures = [], {}, 0
    for name in names:
        log(f"== {name}")
        module = importlib.import_module(f"bench_{name}")
        notes[name] = []
        try:
            for result in module.run(device, quick, peaks, notes[name]):
                rows.append(result)
                write(out, common.rank(rows), notes, about)  # a run cut short keeps every row
        except Exception as error:  # one broken family must not lose the others' results
            failures += 1
            notes[name].append(f"failed: {type(error).__name__}: {error}")
            log(f"{name} failed: {error!r}")
        for note in notes[name]:
            log(f"note: {note}")
    markdown = write(out, rows, notes, about)
    log(markdown)
    log(f"wrote {out / 'results.md'}, {out / 'results.csv'}")
    plots(out, rows, {name: importlib.import_module(f"bench_{name}").AXIS for name in names}, log)
    return 1 if failures else 0


def write(out, rows, notes, about):
    """results.csv and results.md of the rows so far; returns the Markdown."""
    write_csv(out / "results.csv", rows, about)
    markdown = to_markdown(rows, notes, about)
    (out / "results.md").write_text(markdown)
    return markdown


def write_csv(path, rows, about):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*common.CONTEXT, *common.COLUMNS])
        writer.writeheader()
        for r in rows:
            writer.writerow({**about, **{key: "" if r[key] is None else r[key]
                                         for key in common.COLUMNS}})


def _cell(value, spec):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec)


def to_markdown(rows, notes, about):
    lines = [f"Measured on {about['device']}: torch {about['torch']}, triton {about['triton']}, "
             f"fusedloss {about['fusedloss']}, {about['date']}. Bandwidth bound: "
             f"{about['bandwidth']}.", ""]
    for name, family_notes in notes.items():
        lines += [f"### {name}", ""]
        lines += [f"- {note}" for note in family_notes]
        family_rows = [r for r in rows if r["family"] == name]
        if family_rows:
            if family_notes:
                lines.append("")
            lines += ["| case | dtype | size | impl | ms | x fastest | % of bound | peak MiB |",
                      "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
            for r in family_rows:
                impl = f"{r['impl']} ({r['note']})" if r["note"] else r["impl"]
                lines.append(f"| {r['case']} | {r['dtype']} | {r['axis']}={r['size']} | {impl} | "
                             f"{_cell(r['ms'], '.3f')} | {_cell(r['ratio_to_fastest'], '.2f')} | "
                             f"{_cell(r['pct_of_bound'], '.1f')} | {_cell(r['peak_mib'], '.0f')} |")
        lines.append("")
    return "\n".join(lines)


def plots(out, rows, axes, log):
    """One PNG per family; returns the paths written (none without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        log("plots skipped: matplotlib is not installed (pip install matplotlib, or the "
            "package's [bench] extra); the table and the CSV are written without them")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for family, axis in axes.items():
        family_rows = [r for r in rows if r["family"] == family]
        cases = list(dict.fromkeys((r["case"], r["dtype"]) for r in family_rows))
        if not cases:
            continue
        figure, panels = plt.subplots(len(cases), 2, figsize=(10, 3 * len(cases)), squeeze=False)
        for (case, dtype), (time_panel, memory_panel) in zip(cases, panels):
            case_rows = [r for r in family_rows if (r["case"], r["dtype"]) == (case, dtype)]
            measured_memory = any(r["peak_mib"] is not None for r in case_rows)
            for impl in dict.fromkeys(r["impl"] for r in case_rows):
                line = sorted((r["size"], r["ms"], r["peak_mib"]) for r in case_rows
                              if r["impl"] == impl)
                sizes = [size for size, _, _ in line]
                time_panel.plot(sizes, [ms for _, ms, _ in line], marker="o", label=impl)
                if measured_memory:
                    memory_panel.plot(sizes, [math.nan if mib is None else mib
                                              for _, _, mib in line], marker="o", label=impl)
            time_panel.set(title=f"{case} {dtype}: time", xlabel=axis, ylabel="ms", xscale="log",
                           yscale="log")
            memory_panel.set(title=f"{case} {dtype}: peak memory", xlabel=axis,
                             ylabel="MiB beyond the inputs", xscale="log")
            if not measured_memory:
                memory_panel.set_yticks([])
                memory_panel.text(0.5, 0.5, "not measured on the CPU", ha="center",
                                  transform=memory_panel.transAxes)
            time_panel.legend(fontsize="small")
        figure.tight_layout()
        path = out / f"{family}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
        log(f"wrote {path}")
    return written

"""Speed and memory benchmark of spikelens (issue 2 "Speed and memory", issue 3 "end to end in
5 s"). It generates 1M steps x 8 metrics as TensorBoard, JSONL and CSV files (cached, see
`_generate.py`), runs every measurement in a fresh child process N times, and reports the
median wall time and peak RSS of each against the targets; in the same run it times the
`tensorboard` package's own EventAccumulator and spikelens on one smaller TensorBoard file
and prints the ratio. Each child is forked from a tiny launcher that `wait4`s it, so its
`ru_maxrss` is its own (see LAUNCHER). Files are read once before timing so that every
repeat sees the same warm page cache: the figures are parsing cost, not disk speed. A read
must also be right to pass (step count, metric names, the loss role): a fast wrong reader
fails. Usage: `.venv/bin/python benchmarks/speed.py [--check] [--json] [--markdown]
[--tensorboard-python /tmp/tbvenv/bin/python]`; benchmarks/README.md has the rest."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _generate import (  # noqa: E402
    CSV_COLUMNS,
    JSONL_KEYS,
    TB_TAGS,
    Inputs,
    WideInputs,
    ensure_fleet,
    ensure_inputs,
    ensure_wide,
    make_curves,
)

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6

#: Child programs. Each prints one JSON object on its last stdout line with its own timings.
#: Times are CLOCK_MONOTONIC (`time.monotonic`), which is system-wide, so the launcher's and
#: the child's clocks compare: that splits the wall time into start-up, import, work, exit.
READ_CHILD = """
import time
t0 = time.monotonic()
import json, sys
import spikelens
t1 = time.monotonic()
run = spikelens.read_log(sys.argv[1])
t2 = time.monotonic()
loss = run.roles.get("loss")
print(json.dumps({
    "t_begin": t0, "t_done": t2, "import_s": t1 - t0, "read_s": t2 - t1, "format": run.format,
    "steps": int(len(run.frame)), "first": int(run.frame.index[0]),
    "last": int(run.frame.index[-1]), "columns": [str(c) for c in run.frame.columns],
    "roles": {k: str(v) for k, v in run.roles.items()},
    "nonfinite_loss": run.nonfinite_count(loss) if loss else None,
    "warnings": list(run.warnings)[:5], "n_warnings": len(run.warnings),
}))
"""

TB_REFERENCE_CHILD = """
import time
t0 = time.monotonic()
import json, sys
from tensorboard.backend.event_processing import event_accumulator as ea
t1 = time.monotonic()
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0})
acc.Reload()
n = {t: len(acc.Scalars(t)) for t in acc.Tags()["scalars"]}
t2 = time.monotonic()
print(json.dumps({"t_begin": t0, "t_done": t2, "import_s": t1 - t0, "read_s": t2 - t1,
                  "events": sum(n.values()),
                  "tags": sorted(n)}))
"""


@dataclass(frozen=True)
class Sample:
    """One child run."""

    seconds: float
    peak_rss: int  # bytes
    cpu_seconds: float  # user + system, all threads: less sensitive to a busy machine
    returncode: int
    info: dict[str, Any] | None  # the child's JSON line, when it printed one
    stdout_tail: str
    stderr_tail: str


@dataclass(frozen=True)
class Case:
    """One measurement: a command, its target and how to tell a right answer from a wrong."""

    key: str
    label: str
    argv: tuple[str, ...]
    target_s: float | None
    file: Path | None = None
    mem_target: float | None = None  # peak RSS / file size
    validate: Callable[[Sample], str | None] | None = field(default=None, compare=False)
    inspect: Callable[[Sample], list[str]] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Result:
    key: str
    label: str
    size_mb: float | None
    median_s: float | None
    target_s: float | None
    peak_rss_mb: float | None
    ratio: float | None
    mem_target: float | None
    status: str  # PASS, FAIL (...), ERROR, INFO
    error: str | None
    notes: tuple[str, ...]  # right-but-incomplete results (not counted as failures)
    samples_s: tuple[float, ...]
    samples_cpu_s: tuple[float, ...]
    samples_rss_mb: tuple[float, ...]
    child: dict[str, Any] | None

    @property
    def failed(self) -> bool:
        return self.status.startswith(("FAIL", "ERROR"))


#: Starts the measured program from a small process and reports its wall time and rusage.
#: Linux keeps a process's pre-exec memory high-water mark in `ru_maxrss` across `execve`, and
#: a child forked from this harness starts as a copy of it (numpy and the generated curves:
#: tens of MB), so `wait4` on a direct child reports at least this harness's size. Forking
#: from a bare `python -S` instead puts that floor at the launcher's ~10 MB, below what any
#: measured program uses, so the figure is the program's own.
LAUNCHER = """
import json, os, signal, sys, time
out, timeout, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
t0 = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
killed = []
def on_alarm(signum, frame):
    killed.append(1)
    os.kill(pid, signal.SIGKILL)
signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, timeout)
_, status, usage = os.wait4(pid, 0)
t1 = time.monotonic()
signal.setitimer(signal.ITIMER_REAL, 0)
with open(out, "w") as fh:
    json.dump({"seconds": t1 - t0, "t_start": t0, "t_end": t1, "killed": bool(killed),
               "maxrss_kb": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime,
               "returncode": os.waitstatus_to_exitcode(status)},
              fh)
"""


def child_env() -> dict[str, str]:
    """The environment of every child: this checkout first on the path. An editable install
    made before `spikelens/__init__.py` existed maps `spikelens` to a namespace package, and
    the console script then never runs `__init__` (and its imports): the checkout on
    PYTHONPATH makes the children import the package exactly as a regular install would."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def compile_checkout() -> None:
    """Byte-compile the checkout's package once, as `pip install` does. A child imports it
    from source otherwise whenever bytecode writing is off (PYTHONDONTWRITEBYTECODE, a
    read-only checkout), and compiling its ~25 modules costs every `inspect` and `analyze`
    child about 0.12 s that no installed copy pays. Writes `__pycache__/` (git-ignored)."""
    import compileall

    compileall.compile_dir(str(ROOT / "spikelens"), quiet=1)


def run_child(argv: Sequence[str], timeout: float, cwd: Path) -> Sample:
    """Run `argv` to completion; its wall time and its own peak RSS."""
    with tempfile.TemporaryDirectory(prefix="spikelens-bench-") as tmp:
        res_path = Path(tmp) / "rusage.json"
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        exe = shutil.which(argv[0]) or argv[0]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(res_path), str(timeout),
                            exe, *argv[1:]], stdin=subprocess.DEVNULL, stdout=out,
                           stderr=err, cwd=cwd, check=False, env=child_env())
        stdout = out_path.read_text("utf-8", "replace")
        stderr = err_path.read_text("utf-8", "replace")
        try:
            res = json.loads(res_path.read_text())
        except (OSError, json.JSONDecodeError):
            res = {"seconds": float("nan"), "maxrss_kb": 0, "killed": False, "returncode": -1,
                   "cpu_s": float("nan")}
            stderr += "\n(the launcher failed)"
    info: dict[str, Any] | None = None
    lines = stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        try:
            info = json.loads(lines[-1])
        except json.JSONDecodeError:
            info = None
    if info is not None and "t_begin" in info and "t_start" in res:
        # interpreter start-up before the child's first line, and exit after its last
        info["startup_s"] = info.pop("t_begin") - res["t_start"]
        info["exit_s"] = res["t_end"] - info.pop("t_done")
    if res["killed"]:
        stderr += f"\n(killed after the {timeout:g} s timeout)"
    return Sample(seconds=res["seconds"], peak_rss=int(res["maxrss_kb"]) * 1024,
                  cpu_seconds=float(res.get("cpu_s", float("nan"))),
                  returncode=int(res["returncode"]), info=info, stdout_tail=stdout[-2000:],
                  stderr_tail=stderr[-2000:])


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def measure_rounds(cases: list[Case], repeats: int, timeout: float,
                   log: Callable[[str], None]) -> list[Result]:
    """`repeats` rounds, each running every case once, in order. The machine is shared: a
    slow spell of a minute or two, measured case by case, fell on every run of one case
    and moved its median (`inspect` of the CSV 0.77 s in one full run, 1.24 s in the next,
    for the same code); measured in rounds it falls on one run of several cases, and the
    median of each case leaves it out. Each round starts one case further on, so that no
    case always follows the same one, and a case's file is read again just before each of
    its runs (a page-cache hit when the inputs fit in memory together; when they do not,
    it keeps the run from reading a cold file). A case that fails is not run again."""
    samples: dict[str, list[Sample]] = {c.key: [] for c in cases}
    errors: dict[str, str | None] = {c.key: None for c in cases}
    for i in range(repeats):
        shift = i % len(cases) if cases else 0
        for case in cases[shift:] + cases[:shift]:
            if errors[case.key] is not None:
                continue
            if i == 0:
                log(f"{case.key}: {case.label}")
            if case.file is not None and case.file.is_file():
                warm([case.file])
            s = run_child(case.argv, timeout, ROOT)
            log(f"  {case.key} #{i + 1}: {s.seconds:.2f} s (cpu {s.cpu_seconds:.2f} s), "
                f"{s.peak_rss / MB:.0f} MB"
                + ("" if s.returncode == 0 else f", exit {s.returncode}"))
            if s.returncode != 0:
                # a failing command fails the same way every time: do not repeat it
                errors[case.key] = _last_line(s.stderr_tail) or f"exit {s.returncode}"
                continue
            samples[case.key].append(s)
            if case.validate is not None:
                problem = case.validate(s)
                if problem is not None:
                    errors[case.key] = f"wrong result: {problem}"
    return [_result(c, samples[c.key], errors[c.key]) for c in cases]


def _result(case: Case, samples: list[Sample], error: str | None) -> Result:
    size = case.file.stat().st_size if case.file is not None else None
    notes = tuple(case.inspect(samples[0])) if samples and case.inspect is not None else ()
    med_s = statistics.median(s.seconds for s in samples) if samples else None
    med_rss = statistics.median(s.peak_rss for s in samples) if samples else None
    ratio = med_rss / size if (med_rss is not None and size) else None
    if error is not None:
        status = "ERROR" if not samples or not error.startswith("wrong") else "FAIL (wrong)"
    elif case.target_s is None:
        status = "INFO"
    else:
        bad = []
        if med_s is not None and med_s > case.target_s:
            bad.append("time")
        if case.mem_target is not None and ratio is not None and ratio > case.mem_target:
            bad.append("memory")
        status = "PASS" if not bad else f"FAIL ({', '.join(bad)})"
    return Result(
        key=case.key, label=case.label, size_mb=size / MB if size is not None else None,
        median_s=med_s, target_s=case.target_s,
        peak_rss_mb=med_rss / MB if med_rss is not None else None, ratio=ratio,
        mem_target=case.mem_target, status=status, error=error, notes=notes,
        samples_s=tuple(round(s.seconds, 4) for s in samples),
        samples_cpu_s=tuple(round(s.cpu_seconds, 4) for s in samples),
        samples_rss_mb=tuple(round(s.peak_rss / MB, 1) for s in samples),
        # the breakdown of the run whose time is the median one
        child=sorted(samples, key=lambda x: x.seconds)[len(samples) // 2].info if samples
        else None,
    )


# -- checks on what a reader returned ------------------------------------------------------

def read_validator(n_steps: int, names: Sequence[str]) -> Callable[[Sample], str | None]:
    """What a reader must get right for its time to count."""

    def check(s: Sample) -> str | None:
        info = s.info
        if info is None:
            return "the child printed no result"
        if info["steps"] != n_steps:
            return f"{info['steps']} steps, expected {n_steps}"
        missing = [n for n in names if n not in info["columns"]]
        if missing:
            return f"metrics missing: {', '.join(missing)}"
        if info["roles"].get("loss") != names[0]:
            return f"loss role is {info['roles'].get('loss')!r}, expected {names[0]!r}"
        return None

    return check


def read_inspector(nonfinite_loss: int, want_warning: bool) -> Callable[[Sample], list[str]]:
    """What a reader should also get right (reported, not failed): the logged NaN losses are
    evidence and must be kept, and skipped lines must be warned about."""

    def notes(s: Sample) -> list[str]:
        info = s.info or {}
        out = []
        if info.get("nonfinite_loss") != nonfinite_loss:
            out.append(f"{info.get('nonfinite_loss')} non-finite losses kept, expected "
                       f"{nonfinite_loss}")
        if want_warning and not info.get("n_warnings"):
            out.append("no warning about the malformed lines")
        return out

    return notes


def cli_validator(s: Sample) -> str | None:
    return None if s.stdout_tail.strip() else "no output on stdout"


def spikelens_cli() -> list[str]:
    """The console script next to this interpreter (what a user runs), else `-m spikelens`."""
    script = Path(sys.executable).parent / "spikelens"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "spikelens"]


def build_cases(inp: Inputs, small: Inputs | None, tb_python: str | None,
                selected: set[str]) -> list[Case]:
    py = sys.executable
    n_nonfinite = len(make_curves_overflows(inp.n_steps))
    cases = [
        Case("tb", f"TensorBoard read ({inp.n_steps * len(TB_TAGS) / 1e6:g}M events)",
             (py, "-c", READ_CHILD, str(inp.tensorboard)), 3.0, inp.tensorboard, 3.0,
             read_validator(inp.n_steps, TB_TAGS), read_inspector(n_nonfinite, False)),
        Case("jsonl", f"JSONL read ({len(inp.jsonl_bad_lines)} malformed lines)",
             (py, "-c", READ_CHILD, str(inp.jsonl)), 2.5, inp.jsonl, 3.0,
             read_validator(inp.n_steps, JSONL_KEYS), read_inspector(n_nonfinite, True)),
        Case("csv", "CSV read", (py, "-c", READ_CHILD, str(inp.csv)), 1.0, inp.csv, 3.0,
             read_validator(inp.n_steps, CSV_COLUMNS), read_inspector(n_nonfinite, False)),
        Case("help", "spikelens --help", (*spikelens_cli(), "--help"), 0.3, None, None,
             cli_validator),
    ]
    for key, path in (("csv", inp.csv), ("tb", inp.tensorboard), ("jsonl", inp.jsonl)):
        cases.append(Case(f"analyze-{key}", f"spikelens analyze, {key.upper()}",
                          (*spikelens_cli(), "analyze", "--no-cache", str(path)), 5.0, path, None,
                          cli_validator))
    if small is not None:
        cases.append(Case("compare-spikelens",
                          f"spikelens read, small TB ({small.n_steps // 1000}k steps)",
                          (py, "-c", READ_CHILD, str(small.tensorboard)), None,
                          small.tensorboard, None,
                          read_validator(small.n_steps, TB_TAGS)))
        if tb_python is not None:
            cases.append(Case("compare-tensorboard",
                              f"tensorboard EventAccumulator, small TB "
                              f"({small.n_steps // 1000}k steps)",
                              (tb_python, "-c", TB_REFERENCE_CHILD, str(small.tensorboard)),
                              None, small.tensorboard, None))
    return [c for c in cases if c.key in selected or
            (c.key.startswith("compare") and "compare" in selected)]


# -- issue 10: real-shaped logs, many incidents, many runs ---------------------------------

#: Analyses a log in a fresh process as the CLI does (read, analyze, render for the terminal)
#: and reports the split and how many loss incidents were found: the sweeps against N and E.
ANALYZE_CHILD = """
import time
t0 = time.monotonic()
import json, sys
import spikelens
from spikelens.analyze import analyze
from spikelens.report import render
t1 = time.monotonic()
run = spikelens.read_log(sys.argv[1])
t2 = time.monotonic()
report = analyze([run])
t3 = time.monotonic()
text = render(report, [run], "terminal", verbose=False, color=False)
t4 = time.monotonic()
events = [f.event for r in report.runs for f in r.findings]
print(json.dumps({
    "t_begin": t0, "t_done": t4, "import_s": t1 - t0, "read_s": t2 - t1,
    "analyze_s": t3 - t2, "render_s": t4 - t3, "steps": int(len(run.frame)),
    "incidents": sum(1 for e in events if e.metric == "loss" and e.kind != "oscillation"),
    "events": len(events),
}))
"""


def inspect_validator(n_steps: int) -> Callable[[Sample], str | None]:
    """`inspect` must have read every step (a torn last line costs the last one)."""

    def check(s: Sample) -> str | None:
        out = s.stdout_tail
        first = out.split("steps: ", 1)[1].split("\n", 1)[0] if "steps: " in out else ""
        if f"({n_steps} logged" not in first and f"({n_steps - 1} logged" not in first:
            return f"unexpected step line: {first!r}"
        if "loss" not in out:
            return "no loss role in the output"
        return None

    return check


def html_validator(path: Path) -> Callable[[Sample], str | None]:
    def check(s: Sample) -> str | None:
        if not path.exists() or path.stat().st_size < 10_000:
            return f"{path} was not written"
        return None

    return check


#: Issue 10 targets: (inspect s, analyze s, peak RSS / file size).
WIDE_TARGETS = {"csv": (0.8, 2.5, 2.5), "jsonl": (1.5, 3.0, 2.5), "tensorboard": (2.0, 3.0, 2.0)}
SWEEP_N = (10_000, 30_000, 100_000, 300_000, 1_000_000)
SWEEP_E = (0, 10, 100, 300, 1000)


def wide_cases(wide: WideInputs, wide500: WideInputs | None, fleet: Path | None,
               html_out: Path, selected: set[str]) -> list[Case]:
    cli = spikelens_cli()
    n = wide.n_steps
    cases: list[Case] = []
    for kind in ("csv", "jsonl", "tensorboard"):
        path: Path = getattr(wide, kind)
        arg = path.parent if kind == "tensorboard" else path
        short = "tb" if kind == "tensorboard" else kind
        t_inspect, t_analyze, mem = WIDE_TARGETS[kind]
        cases.append(Case(f"w-inspect-{short}", f"inspect, {kind}, 14 columns, 50 spikes",
                          (*cli, "inspect", str(arg)), t_inspect, path, mem,
                          inspect_validator(n)))
        cases.append(Case(f"w-analyze-{short}", f"analyze, {kind}, 14 columns, 50 spikes",
                          (*cli, "analyze", "--no-cache", str(arg)), t_analyze, path, mem,
                          cli_validator))
    if wide500 is not None:
        cases.append(Case("w-analyze-csv500", "analyze, csv, 500 spikes",
                          (*cli, "analyze", "--no-cache", str(wide500.csv)), 3.5, wide500.csv, None,
                          cli_validator))
    if fleet is not None:
        cases.append(Case("w-fleet", f"analyze, a directory of {len(list(fleet.glob('*.csv')))}"
                          " runs x 100k steps", (*cli, "analyze", "--no-cache", str(fleet)), 20.0,
                          None, None, cli_validator))
    cases.append(Case("w-html", "report --html, csv, 1M steps",
                      (*cli, "report", str(wide.csv), "--html", str(html_out)), 4.0,
                      wide.csv, None, html_validator(html_out)))
    return [c for c in cases if c.key in selected]


def sweep_cases(data: Path, sweep_steps: int, selected: set[str],
                log: Callable[[str], None]) -> list[Case]:
    """Analyze time against N (50 spikes, the dirty 14-column CSV) and against E (a clean
    CSV of `sweep_steps` steps whose only incidents are E spikes)."""
    py = sys.executable
    cases: list[Case] = []
    if "sweep-n" in selected:
        for n in SWEEP_N:
            w = ensure_wide(data, n, 50, kinds=("csv",), log=log)
            cases.append(Case(f"sweep-n-{n}", f"analyze, csv, N = {n:,}",
                              (py, "-c", ANALYZE_CHILD, str(w.csv)), None, w.csv))
    if "sweep-e" in selected:
        for e in SWEEP_E:
            w = ensure_wide(data, sweep_steps, e, kinds=("csv",), log=log, clean=True)
            cases.append(Case(f"sweep-e-{e}", f"analyze, csv, {sweep_steps:,} steps, E = {e}",
                              (py, "-c", ANALYZE_CHILD, str(w.csv)), None, w.csv))
    return cases


def _fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def sweep_tables(results: Sequence[Result]) -> str:
    """Markdown tables of analyze time against N and against E, with the fitted slopes."""
    out: list[str] = []
    for prefix, what in (("sweep-n-", "N (steps)"), ("sweep-e-", "E (spikes)")):
        rows = [r for r in results if r.key.startswith(prefix) and r.median_s is not None]
        if not rows:
            continue
        out += ["", f"| {what} | incidents found | wall s (median) | read s | analyze s | "
                "render s |", "|---:|---:|---:|---:|---:|---:|"]
        xs, ys = [], []
        for r in rows:
            x = int(r.key[len(prefix):])
            c = r.child or {}
            out.append(f"| {x:,} | {c.get('incidents', '-')} | {r.median_s:.2f} | "
                       f"{c.get('read_s', float('nan')):.2f} | "
                       f"{c.get('analyze_s', float('nan')):.2f} | "
                       f"{c.get('render_s', float('nan')):.2f} |")
            xs.append(float(c.get("incidents", x)) if prefix == "sweep-e-" else float(x))
            ys.append(float(c.get("analyze_s", r.median_s)))
        if len(xs) >= 2:
            slope, icpt = _fit(xs, ys)
            if prefix == "sweep-n-":
                out.append(f"\nanalysis time ~ {icpt:.2f} s + {slope * 1e6:.2f} s per 1M steps "
                           "(least squares over the rows above)")
            else:
                out.append(f"\nanalysis time ~ {icpt:.2f} s + {slope * 1e3:.2f} ms per "
                           "incident found (least squares over the rows above)")
    return "\n".join(out)


def make_curves_overflows(n_steps: int) -> tuple[int, ...]:
    return make_curves(n_steps, 0).overflow_steps


def tensorboard_available(python: str) -> tuple[bool, str]:
    try:
        p = subprocess.run([python, "-c", "import tensorboard.backend.event_processing."
                            "event_accumulator"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{python}: {exc}"
    if p.returncode != 0:
        return False, f"tensorboard is not importable by {python}"
    return True, ""


def warm(paths: Sequence[Path]) -> None:
    """Read each file once so every timed repeat starts from the same (warm) page cache."""
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(16 << 20):
                pass


# -- output -------------------------------------------------------------------------------

def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: Sequence[Result]) -> str:
    head = ("input", "size MB", "median s", "target", "peak RSS MB", "x file", "result")
    rows = []
    for r in results:
        target = f"<= {r.target_s:g} s" if r.target_s is not None else "-"
        ratio = _fmt(r.ratio, ".2f") + (f" (<= {r.mem_target:g})" if r.mem_target else "")
        rows.append((r.label, _fmt(r.size_mb, ".1f"), _fmt(r.median_s, ".2f"), target,
                     _fmt(r.peak_rss_mb, ".0f"), ratio if r.ratio is not None else "-",
                     r.status))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    out = []
    for i, row in enumerate([head, *rows]):
        out.append("  ".join(str(x).ljust(w) if j == 0 else str(x).rjust(w) if j < 6 else str(x)
                             for j, (x, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown(results: Sequence[Result]) -> str:
    """The table as Markdown, for docs/performance.md."""
    out = ["| input | size MB | median s | target | peak RSS MB | x file | result |",
           "|---|---:|---:|---|---:|---:|---|"]
    for r in results:
        target = f"<= {r.target_s:g} s" if r.target_s is not None else "-"
        if r.mem_target is not None:
            target += f", <= {r.mem_target:g}x"
        out.append(f"| {r.label} | {_fmt(r.size_mb, '.1f')} | {_fmt(r.median_s, '.2f')} | "
                   f"{target} | {_fmt(r.peak_rss_mb, '.0f')} | {_fmt(r.ratio, '.2f')} | "
                   f"{r.status} |")
    return "\n".join(out)


def details(results: Sequence[Result]) -> str:
    out = []
    for r in results:
        if r.error:
            out.append(f"{r.key}: {r.error}")
        for n in r.notes:
            out.append(f"{r.key}: note: {n}")
        if not r.samples_s:
            continue
        runs = ", ".join(f"{s:.2f}" for s in r.samples_s)
        cpu = statistics.median(r.samples_cpu_s)
        line = f"{r.key}: runs {runs} s, min {min(r.samples_s):.2f} s, median cpu {cpu:.2f} s"
        if r.child and "read_s" in r.child:
            c = r.child
            line += (f"; median run = start-up {c.get('startup_s', 0):.2f} + import "
                     f"{c['import_s']:.2f} + read {c['read_s']:.2f} + exit "
                     f"{c.get('exit_s', 0):.2f} s")
        out.append(line)
    return "\n".join(out)


def comparison(results: Sequence[Result], note: str | None) -> str:
    by = {r.key: r for r in results}
    ours, ref = by.get("compare-spikelens"), by.get("compare-tensorboard")
    if ours is None:
        return ""
    if ref is None:
        return f"tensorboard comparison skipped: {note or 'not run'}"
    if ref.median_s is None or ours.median_s is None:
        return f"tensorboard comparison failed: {ours.error or ref.error}"
    return (f"same {ours.size_mb:.1f} MB TensorBoard file, fresh processes, medians: "
            f"tensorboard EventAccumulator {ref.median_s:.2f} s, spikelens.read_log "
            f"{ours.median_s:.2f} s: spikelens is {ref.median_s / ours.median_s:.1f}x faster")


def machine() -> dict[str, Any]:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=ROOT).stdout.strip() if shutil.which("git") else ""
    dirty = subprocess.run(["git", "status", "--porcelain", "spikelens"], capture_output=True,
                           text=True, cwd=ROOT).stdout.strip() if rev else ""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "git": rev + ("+uncommitted" if dirty else "")}


def package_digest(root: Path = ROOT) -> str:
    """A digest of the package's source files (names and contents) under `root`. Taken
    before and after the measurements: the children import the checkout as it is when each
    starts, so a checkout edited during a run mixes two versions in its figures (it happened:
    a run started before an edit and ended with children failing on half-edited modules)."""
    h = hashlib.sha256()
    for f in sorted((root / "spikelens").rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


#: The machine's yardstick, in a fresh child: a pure-Python loop (the interpreter's speed,
#: what imports and the per-event code scale with) and the first touch of 512 MB of new
#: memory (the kernel's zeroing of fresh pages; on a virtual machine that also costs the
#: host, and it was 0.3-1.0 s per GB on this project's machine, run to run). Both vary from
#: machine to machine and hour to hour; printed next to the figures so that a slower
#: machine can be told from a slower spikelens.
YARDSTICK_CHILD = """
import json, time
import numpy as np
t = time.perf_counter()
s = 0
for i in range(10_000_000):
    s += i
loop = time.perf_counter() - t
t = time.perf_counter()
for _ in range(2):
    a = np.ones(32 * 1024 * 1024)  # 256 MB, first touch
    del a
touch = time.perf_counter() - t
print(json.dumps({"python_loop_s": loop, "fresh_memory_gb_s": 0.512 / touch}))
"""


def yardstick(repeats: int = 3) -> dict[str, float]:
    """Median of `repeats` fresh children of `YARDSTICK_CHILD`."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", YARDSTICK_CHILD], capture_output=True,
                             text=True, timeout=120, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}


KEYS = ("tb", "jsonl", "csv", "help", "analyze-csv", "analyze-tb", "analyze-jsonl", "compare")
#: Issue 10: the real-shaped 14-column logs, 500 incidents, 100 runs, HTML, the sweeps.
WIDE_KEYS = ("w-inspect-csv", "w-inspect-jsonl", "w-inspect-tb", "w-analyze-csv",
             "w-analyze-jsonl", "w-analyze-tb", "w-analyze-csv500", "w-fleet", "w-html",
             "sweep-n", "sweep-e")
SUITES = {"issue2": KEYS, "issue10": WIDE_KEYS, "all": KEYS + WIDE_KEYS}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "_data",
                    help="cache directory for the generated inputs (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median "
                    "is reported (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=1_000_000,
                    help="steps of the main inputs; the targets are for 1M (default)")
    ap.add_argument("--compare-steps", type=int, default=100_000,
                    help="steps of the small TensorBoard file for the tensorboard comparison")
    ap.add_argument("--tensorboard-python", default=sys.executable, metavar="PATH",
                    help="interpreter that has the `tensorboard` package (default: this one; "
                    "the comparison is skipped with a note if it cannot import tensorboard)")
    ap.add_argument("--suite", choices=sorted(SUITES), default="all",
                    help="issue2: the 8-metric inputs; issue10: the real-shaped 14-column "
                    "logs, 500 spikes, 100 runs, HTML and the sweeps against N and E; all: "
                    "both (default: %(default)s)")
    ap.add_argument("--only", default=None,
                    help=f"comma-separated subset of: {', '.join(KEYS + WIDE_KEYS)}")
    ap.add_argument("--sweep-steps", type=int, default=1_000_000,
                    help="steps of the logs of the sweep against E (default: %(default)s)")
    ap.add_argument("--fleet-runs", type=int, default=100,
                    help="runs of 100k steps in the directory case (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per child run")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument("--markdown", action="store_true",
                    help="print the table as Markdown (for docs/performance.md)")
    ap.add_argument("--check", action="store_true", help="exit 1 if any target is missed")
    args = ap.parse_args(argv)

    known = KEYS + WIDE_KEYS
    selected = ({k.strip() for k in args.only.split(",") if k.strip()} if args.only
                else set(SUITES[args.suite]))
    unknown = selected - set(known)
    if unknown:
        ap.error(f"unknown --only key(s): {', '.join(sorted(unknown))} "
                 f"(known: {', '.join(known)})")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    env_info = machine()
    cases: list[Case] = []
    inp: Inputs | None = None
    note = None
    if selected & set(KEYS):
        inp = ensure_inputs(args.data, args.steps, log=log)
        small = None
        tb_python: str | None = None
        if "compare" in selected:
            small = ensure_inputs(args.data, args.compare_steps, kinds=("tensorboard",),
                                  log=log)
            ok, note = tensorboard_available(args.tensorboard_python)
            tb_python = args.tensorboard_python if ok else None
            if not ok:
                log(f"tensorboard comparison skipped: {note} (see benchmarks/README.md)")
        cases += build_cases(inp, small, tb_python, selected)
    tmp = tempfile.TemporaryDirectory(prefix="spikelens-bench-")
    if selected & (set(WIDE_KEYS) - {"sweep-n", "sweep-e"}):
        wide = ensure_wide(args.data, args.steps, 50, log=log)
        wide500 = ensure_wide(args.data, args.steps, 500, kinds=("csv",), log=log) \
            if "w-analyze-csv500" in selected else None
        fleet = ensure_fleet(args.data, args.fleet_runs, 100_000, log=log) \
            if "w-fleet" in selected else None
        cases += wide_cases(wide, wide500, fleet, Path(tmp.name) / "report.html", selected)
    cases += sweep_cases(args.data, args.sweep_steps, selected, log)
    warm(sorted({c.file for c in cases if c.file is not None}))
    compile_checkout()
    env_info["yardstick"] = yardstick()
    before = package_digest()
    results = measure_rounds(cases, args.repeats, args.timeout, log)
    tmp.cleanup()
    env_info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    changed = env_info["changed_during_run"] = package_digest() != before
    if changed:
        log("warning: spikelens/ changed during the run; its figures mix two versions "
            "(run the benchmark from a checkout nobody edits, e.g. a git worktree)")

    if args.json:
        print(json.dumps({
            "machine": env_info, "steps": args.steps, "repeats": args.repeats,
            "inputs": {k: str(getattr(inp, k)) for k in ("csv", "jsonl", "tensorboard")}
            if inp is not None else {},
            "results": [{**{k: v for k, v in asdict(r).items()}, "failed": r.failed}
                        for r in results],
            "tensorboard_comparison": comparison(results, note),
        }, indent=2))
    else:
        print(f"spikelens speed benchmark: {args.steps:,} steps, median of "
              f"{args.repeats} fresh processes; python {env_info['python']}, "
              f"{env_info['cpus']} CPUs, load {env_info['loadavg']} -> "
              f"{env_info['loadavg_after']}, git {env_info['git']}"
              + (", SPIKELENS/ CHANGED DURING THE RUN: the figures mix two versions"
                 if changed else ""))
        yard = env_info["yardstick"]
        print(f"machine yardstick (median of 3 fresh processes): a 10M-step Python loop "
              f"{yard['python_loop_s']:.2f} s, first touch of new memory "
              f"{yard['fresh_memory_gb_s']:.2f} GB/s")
        main_rows = [r for r in results if not r.key.startswith("sweep-")]
        if main_rows:
            print()
            print(markdown(main_rows) if args.markdown else table(main_rows))
        sweeps = sweep_tables(results)
        if sweeps:
            print(sweeps)
        extra = details(results)
        if extra:
            print()
            print(extra)
        cmp_line = comparison(results, note)
        if cmp_line:
            print()
            print(cmp_line)
    if args.check and (changed or any(r.failed for r in results)):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

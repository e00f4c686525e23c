"""The command line as a user and a CI pipeline meet it: exit codes, exact messages, the
output formats, several logs in one call, `--summary` and `--fail-on`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLES
from typer.testing import CliRunner

from spikelens.cli import app

runner = CliRunner()
BLOOM = SAMPLES / "megatron" / "bigscience_tr11-176B_first_lm_loss_spike_31214-31251.log"
CALIB = SAMPLES / "megatron" / "bigscience_gpt2_perf_n4_fp16_lossscale_calibration_1-200.log"
STORM = SAMPLES / "csv" / "bench_r05_fp16_overflow_storm.csv"


def _run(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def test_analyze_terminal_first_line_is_the_verdict() -> None:
    code, out, _ = _run("analyze", BLOOM)
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith(f"spiky: {BLOOM}")
    assert "grad_explosion" in out
    assert "\x1b[" not in out  # not a TTY: no colour codes


def test_analyze_json_contract() -> None:
    code, out, _ = _run("analyze", BLOOM, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert list(doc)[:2] == ["schema_version", "runs"] and doc["schema_version"] == 1
    run = doc["runs"][0]
    assert list(run)[:7] == ["source", "format", "verdict", "steps", "metrics", "events",
                             "warnings"]
    assert run["format"] == "megatron" and run["verdict"] == "spiky"
    assert run["steps"]["first"] == 31214 and run["steps"]["last"] == 31251
    assert run["metrics"]["loss"] == "lm loss"
    [ev] = [e for e in run["events"] if e["metric"] == "loss"]
    assert ev["kind"] == "spike" and ev["peak_step"] == 31219 and ev["recovered"] is True
    assert ev["causes"][0]["cause"] == "grad_explosion"
    assert set(ev["causes"][0]) >= {"cause", "score", "summary", "evidence", "remedy"}


@pytest.mark.parametrize(
    ("fail_on", "log", "code"),
    [
        ("spike", BLOOM, 1),
        ("divergence", BLOOM, 0),
        ("any", BLOOM, 1),
        ("any", CALIB, 0),
        ("nonfinite", STORM, 1),
    ],
)
def test_fail_on_exit_codes(fail_on: str, log: Path, code: int) -> None:
    assert _run("analyze", log, "--fail-on", fail_on, "--format", "json")[0] == code


def test_several_logs_one_report_worst_exit(tmp_path: Path) -> None:
    code, out, _ = _run("analyze", CALIB, BLOOM, "--format", "json", "--fail-on", "spike")
    doc = json.loads(out)
    assert [r["verdict"] for r in doc["runs"]] == ["healthy", "spiky"]
    assert code == 1  # the worst run decides


def test_directory_and_glob_expand(tmp_path: Path) -> None:
    shutil.copy(CALIB, tmp_path / "a.log")
    shutil.copy(BLOOM, tmp_path / "b.log")
    (tmp_path / "notes.md").write_text("# just notes\nnothing to see\n")
    code, out, _ = _run("analyze", tmp_path, "--format", "json")
    assert code == 0
    assert [Path(r["source"]).name for r in json.loads(out)["runs"]] == ["a.log", "b.log"]
    code, out, _ = _run("analyze", str(tmp_path / "*.log"), "--format", "json")
    assert len(json.loads(out)["runs"]) == 2
    code, _, err = _run("analyze", str(tmp_path / "*.csv"))
    assert code == 2
    assert err == f"Error: {tmp_path / '*.csv'}: no file matches this pattern\n"


def test_summary_appends_markdown_and_github_annotations(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    code, out, _ = _run("analyze", BLOOM, "--format", "github", "--summary", summary)
    assert code == 0
    assert any(line.startswith("::warning ") and "31219" in line for line in out.splitlines())
    text = summary.read_text()
    assert text.startswith("earlier step\n")
    assert "grad_explosion" in text and "|" in text


def test_output_file(tmp_path: Path) -> None:
    out_file = tmp_path / "r.json"
    code, out, _ = _run("analyze", BLOOM, "--format", "json", "-o", out_file)
    assert code == 0 and out == ""
    assert json.loads(out_file.read_text())["runs"][0]["verdict"] == "spiky"


def test_report_writes_html(tmp_path: Path) -> None:
    page = tmp_path / "out.html"
    code, _, err = _run("report", BLOOM, "--html", page, "--plotlyjs", "cdn")
    assert code == 0
    assert err == f"wrote {page} (spiky)\n"
    html = page.read_text()
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "31219" in html


def test_usage_errors_exit_2() -> None:
    code, _, err = _run("analyze", BLOOM, "--format", "yaml")
    assert code == 2
    assert err == ("Error: unknown output format 'yaml' (known: terminal, json, markdown, "
                   "github, parquet; for HTML use `spikelens report LOG --html out.html`)\n")
    code, _, err = _run("analyze", BLOOM, "--metric", "lossy")
    assert code == 2
    assert err == "Error: --metric expects ROLE=NAME, got 'lossy'\n"
    code, _, err = _run("analyze", BLOOM, "--metric", "loss=nope")
    assert code == 2
    assert err.startswith("Error: --metric loss=nope: no such metric (found: ")
    code, _, _ = _run("analyze", BLOOM, "--fail-on", "sometimes")
    assert code == 2


def test_inspect_json_keys() -> None:
    code, out, _ = _run("inspect", BLOOM, "--format", "json")
    assert code == 0
    d = json.loads(out)
    assert {"format", "steps", "metrics", "extras", "restarts", "warnings"} <= set(d)
    assert d["metrics"]["grad_norm"] == "grad norm"
    assert d["steps"]["first"] == 31214


def test_formats_lists_the_registry() -> None:
    from spikelens.readers import format_names

    code, out, _ = _run("formats")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == format_names()


def test_cli_choices_match_the_registries() -> None:
    from spikelens.cli import OUTPUT_FORMATS
    from spikelens.report import RENDERERS

    assert [n for n in RENDERERS.names() if n != "html"] == list(OUTPUT_FORMATS)
    code, out, _ = _run("analyze", "--help")
    assert code == 0
    assert "terminal, json, markdown, github" in " ".join(out.split())


def test_bad_output_paths_are_refused_before_the_analysis(tmp_path: Path) -> None:
    code, out, err = _run("analyze", BLOOM, "--summary", tmp_path)
    assert (code, out) == (2, "")
    assert err == f"Error: {tmp_path}: is a directory, not a file to write\n"
    target = tmp_path / "no" / "r.json"
    code, out, err = _run("analyze", BLOOM, "-o", target)
    assert (code, out) == (2, "")
    assert err == f"Error: {target}: no such directory {target.parent}\n"


def _entry_point(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The console entry point (`spikelens.cli.main`) in a fresh interpreter, with an exit
    handler of the caller's registered first, as a notebook or a wrapper script might."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('exit handler ran', file=sys.stderr))\n"
            f"sys.argv = ['spikelens', *{list(args)!r}]\n"
            "from spikelens.cli import main\n"
            "main()\n"
            "print('not reached', file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "SPIKELENS_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)


def _blas_threads(tmp_path: Path, user_value: str | None) -> list[str]:
    """What the console entry point leaves OpenBLAS with: the environment variable, then
    (where threadpoolctl is installed) the thread count of each OpenBLAS that numpy and
    scipy loaded, read by an exit handler after `analyze` has run."""
    code = ("import atexit, os, sys\n"
            "def report():\n"
            "    print('env', os.environ.get('OPENBLAS_NUM_THREADS'), file=sys.stderr)\n"
            "    try:\n"
            "        from threadpoolctl import threadpool_info\n"
            "    except ImportError:\n"
            "        return\n"
            "    for info in threadpool_info():\n"
            "        if info['internal_api'] == 'openblas':\n"
            "            print('openblas', info['num_threads'], file=sys.stderr)\n"
            "atexit.register(report)\n"
            f"sys.argv = ['spikelens', 'analyze', '--no-cache', {str(STORM)!r}]\n"
            "from spikelens.cli import main\n"
            "main()\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               SPIKELENS_CACHE_DIR=str(tmp_path / "cache"))
    if user_value is not None:
        env["OPENBLAS_NUM_THREADS"] = user_value
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith(("env", "openblas"))]


def test_the_command_runs_openblas_on_one_thread_unless_the_user_chose(
        tmp_path: Path) -> None:
    """A spinning OpenBLAS server thread takes the second core from the parse on a 2-core
    machine, so the command asks OpenBLAS for one thread; a value the user set is kept."""
    lines = _blas_threads(tmp_path, None)
    assert lines[0] == "env 1"
    assert all(line == "openblas 1" for line in lines[1:])  # each library that loaded
    assert _blas_threads(tmp_path, "2")[0] == "env 2"


def _process_settings(tmp_path: Path, env_update: dict[str, str]) -> list[str]:
    """What the console entry point leaves the process with after `analyze`, read by an
    exit handler: numpy's huge-page request, and (on glibc) how many malloc arenas there
    are once a second thread has allocated (glibc's `malloc_stats` lists them on stderr)."""
    code = ("import atexit, os, sys, threading\n"
            "def report():\n"
            "    import numpy._core.multiarray as m\n"
            "    print('hugepage', m._get_madvise_hugepage(), file=sys.stderr)\n"
            "    # large enough to come from an arena, small enough not to be mmapped\n"
            "    t = threading.Thread(target=lambda: [bytearray(65536) for _ in range(64)])\n"
            "    t.start(); t.join()\n"
            "    import ctypes\n"
            "    sys.stderr.flush()\n"
            "    ctypes.CDLL(None).malloc_stats()\n"
            "atexit.register(report)\n"
            f"sys.argv = ['spikelens', 'analyze', '--no-cache', {str(STORM)!r}]\n"
            "from spikelens.cli import main\n"
            "main()\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMPY_MADVISE_HUGEPAGE", "MALLOC_ARENA_MAX")}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               SPIKELENS_CACHE_DIR=str(tmp_path / "cache"), **env_update)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    arenas = sum(line.startswith("Arena ") for line in done.stderr.splitlines())
    return [line for line in done.stderr.splitlines() if line.startswith("hugepage")] + \
        [f"arenas {arenas}"]


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc and Linux THP")
def test_the_command_asks_for_no_huge_pages_and_one_malloc_arena_unless_the_user_chose(
        tmp_path: Path) -> None:
    """docs/performance.md: numpy's huge-page request stalls first touches on a machine
    whose page cache is full, and a second malloc arena holds memory the main thread cannot
    reuse. The command turns both off; values the user set are kept."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc arenas are glibc's")
    assert _process_settings(tmp_path, {}) == ["hugepage False", "arenas 1"]
    kept = _process_settings(tmp_path, {"NUMPY_MADVISE_HUGEPAGE": "1",
                                        "MALLOC_ARENA_MAX": "4"})
    assert kept[0] == "hugepage True"
    assert kept[1] != "arenas 1"


def test_the_entry_point_leaves_with_the_status_whole_output_and_exit_handlers(
        tmp_path: Path) -> None:
    """`main` ends the process itself (`os._exit`, skipping the interpreter's teardown):
    the whole JSON report still reaches a pipe, the caller's exit handlers still run, and
    the status is the command's own, for a clean run, a failing gate and bad input."""
    ok = _entry_point(tmp_path, "analyze", "--format", "json", str(STORM))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["runs"][0]["verdict"] != "healthy"
    assert ok.stderr.splitlines()[-1] == "exit handler ran"
    assert "not reached" not in ok.stderr

    gate = _entry_point(tmp_path, "analyze", "--fail-on", "any", str(STORM))
    assert gate.returncode == 1
    assert gate.stdout.startswith(_run("analyze", STORM)[1].splitlines()[0])

    bad = _entry_point(tmp_path, "inspect", str(tmp_path / "missing.csv"))
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[0] == f"Error: {tmp_path / 'missing.csv'}: no such file " \
        "or directory"
    assert "exit handler ran" in bad.stderr


def test_a_cell_that_is_not_a_number_is_a_warning_in_every_report(tmp_path: Path) -> None:
    # the run is still analysed (exit 0), and the JSON a pipeline reads carries the warning
    p = tmp_path / "log.csv"
    p.write_text("step,loss\n" + "".join(
        f"{i},{'abc' if i == 7 else 2 - i / 1000}\n" for i in range(1, 200)))
    code, out, _ = _run("analyze", p, "--format", "json")
    assert code == 0
    msg = (f"{p}: 1 value(s) of column 'loss' are not numbers (first 'abc'), read as missing "
           "(line 8)")
    assert msg in json.loads(out)["runs"][0]["warnings"]
    code, out, _ = _run("analyze", p, "--format", "markdown")
    assert code == 0
    assert "1 value(s) of column 'loss' are not numbers (first 'abc'), read as missing " \
        "(line 8)" in out  # the path before it is markdown-escaped


def test_commands_run_without_the_cycle_collector_and_watch_with_it(tmp_path: Path) -> None:
    """A one-shot command's process turns the cyclic collector off (its passes over the
    imported modules were 0.03 s of `inspect`, collecting nothing); `watch`, which runs for
    days, and the analysis of many logs keep it on so that no cycle piles up."""
    log = tmp_path / "train.jsonl"
    log.write_text("".join(json.dumps({"step": i, "loss": 3.0 - i / 1000})
                           .replace("2.85", "NaN") + "\n" for i in range(300)))
    many = tmp_path / "runs"
    many.mkdir()
    for k in range(2):
        (many / f"r{k}.jsonl").write_text(log.read_text())
    gc_report = ("import atexit, gc, sys\n"
                 "atexit.register(lambda: print('gc', gc.isenabled(), file=sys.stderr))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    seen = {}
    for name, args in (("inspect", ["inspect", str(log)]),
                       ("analyze", ["analyze", str(log), "--no-cache"]),
                       ("analyze many", ["analyze", str(many), "--no-cache", "--jobs", "1"]),
                       ("inspect many", ["inspect", str(many)]),
                       ("watch", ["watch", str(log), "--fail-on", "nonfinite"])):
        code = (gc_report + f"sys.argv = ['spikelens', *{args!r}]\n"
                "from spikelens.cli import main\nmain()\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, timeout=120)
        seen[name] = (p.returncode, p.stderr.splitlines()[-1])
    assert seen == {"inspect": (0, "gc False"), "analyze": (0, "gc False"),
                    "analyze many": (0, "gc True"), "inspect many": (0, "gc True"),
                    "watch": (1, "gc True")}

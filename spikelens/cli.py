"""The `spikelens` command: a thin typer layer over the library. It expands the inputs
(files, globs, directories), calls `read_runs` / `analyze` / `render`, writes the output and
picks the exit code: 0 analysed with nothing to fail on, 1 findings the user asked to fail
on (`--fail-on`), 2 bad input or usage. Every `SpikelensError` becomes one `Error: ...` line
on stderr, never a traceback. Heavy modules (pandas, scipy, plotly) are imported inside the
commands so that `spikelens --help` stays fast."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional, TypeVar

import typer

from spikelens.errors import ConfigError, SpikelensError
from spikelens.paths import expand_sources

if TYPE_CHECKING:
    from rich.console import Console

    from spikelens.model import Report, Run

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Post-hoc forensics of ML training logs: find loss spikes, tell them from "
    "oscillation, and explain why they happened.",
)

EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT = 0, 1, 2

#: `analyze --format` choices. Spelled out so `--help` needs no renderer import; a test keeps
#: it equal to the renderer registry (less `html`, which has its own command).
OUTPUT_FORMATS = ("terminal", "json", "markdown", "github")
#: `analyze --format` choices that write tables to files (`report.parquet.TABLE_WRITERS`).
TABLE_FORMATS = ("parquet",)


class FailOn(StrEnum):
    spike = "spike"
    divergence = "divergence"
    nonfinite = "nonfinite"
    any = "any"
    insufficient_data = "insufficient_data"  # a verdict: too little loss to judge
    stall = "stall"  # informational kinds: only when asked for by name
    overfitting = "overfitting"


class PlotlyJs(StrEnum):
    inline = "inline"
    cdn = "cdn"


LogsArg = Annotated[
    list[str], typer.Argument(help="Log files, globs or directories.", show_default=False)
]
MetricOpt = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional here
    typer.Option("--metric", "-m", metavar="ROLE=NAME",
                 help="Use metric NAME for ROLE (loss, lr, grad_norm, loss_scale, ...); "
                 "step=NAME names the step column (a counter, dates or timestamps)."),
]
LogFormatOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--log-format", "-l", metavar="FORMAT",
                 help="Read the logs as this format instead of sniffing it "
                 "(see `spikelens formats`)."),
]


RunOpt = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--run", metavar="NAME_OR_ID",
                 help="Only this run of a store that holds several (MLflow, W&B directory): "
                 "its name or run id (repeatable)."),
]
# the fleet options `analyze` and `report` share (issue 12)
JobsOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--jobs", "-j", metavar="N", show_default=False,
                 help="Analyse logs in N processes (default: one per core)."),
]
DaskOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--dask", metavar="ADDRESS", show_default=False,
                 help="Send one task per log to this Dask scheduler (e.g. "
                 "tcp://scheduler:8786; default $SPIKELENS_DASK_SCHEDULER)."),
]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Neither use nor fill the result cache.")
]
CacheDirOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--cache-dir", metavar="DIR", show_default=False,
                 help="Result cache directory (default: the user cache dir, or "
                 "$SPIKELENS_CACHE_DIR)."),
]


F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(fn: F) -> F:
    """Turn a library error into `Error: ...` on stderr and exit 2 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpikelensError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper  # type: ignore[return-value]


def _read_all(paths: list[str], log_format: str | None, metric: list[str] | None,
              run: list[str] | None = None,
              before_read: Callable[[str], None] | None = None) -> list[Run]:
    from spikelens.metrics import parse_overrides
    from spikelens.readers import read_runs

    overrides = parse_overrides(metric or [])
    if len(paths) > 1:
        import gc

        gc.enable()  # many logs can keep the process for long (`_no_cycle_collector`)
    runs: list[Run] = []
    big = sum(os.path.getsize(p) for p in paths if os.path.isfile(p)) > 64 * 2**20
    if sys.stderr.isatty() and (len(paths) > 1 or big):
        from rich.progress import Progress

        with Progress(transient=True, console=_stderr_console()) as progress:
            task = progress.add_task("reading logs", total=len(paths))
            for p in paths:
                runs.extend(read_runs(p, format=log_format, metrics=overrides,
                                      before_read=before_read))
                progress.advance(task)
    else:
        for p in paths:
            runs.extend(read_runs(p, format=log_format, metrics=overrides,
                                      before_read=before_read))
    if run:
        from spikelens.readers._select import select_runs

        runs = select_runs(runs, run)
    return runs


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _color(no_color: bool) -> bool:
    return not no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()


def _write(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        sys.stdout.flush()
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{output}: cannot write ({exc.strerror or exc})") from None


def _exit_code(report: Report, fail_on: FailOn | None) -> int:
    if fail_on is None:
        return EXIT_OK
    kinds = {"spike", "divergence", "nonfinite"} if fail_on is FailOn.any else {fail_on.value}
    for rr in report.runs:
        if fail_on is FailOn.insufficient_data and rr.verdict == "insufficient_data":
            return EXIT_FINDINGS
        for f in rr.findings:
            on_loss = f.event.metric == "loss" or f.event.kind == "overfitting"
            if on_loss and any(f.event.counts_as(k) for k in kinds):
                return EXIT_FINDINGS
    return EXIT_OK


@app.command()
@_one_line_errors
def inspect(
    logs: LogsArg,
    format: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
    metric: MetricOpt = None,
    log_format: LogFormatOpt = None,
    no_color: Annotated[bool, typer.Option("--no-color", help="Plain text output.")] = False,
    run: RunOpt = None,
) -> None:
    """Show how a log was read: format, steps, the role of each metric, restarts, warnings."""
    import json

    from spikelens.describe import describe, describe_text

    if format not in ("text", "json"):
        raise ConfigError(f"--format must be text or json, got {format!r}")
    runs = _read_all(expand_sources(logs), log_format, metric, run)
    if format == "json":
        objs = [describe(r) for r in runs]
        _write(json.dumps(objs[0] if len(objs) == 1 else objs, indent=2), None)
    else:
        _write("\n".join(describe_text(r, color=_color(no_color)) for r in runs), None)


def _analyse(
    logs: list[str], log_format: str | None, metric: list[str] | None,
    run: list[str] | None = None,
) -> tuple[Report, list[Run]]:
    from spikelens.fleet import preload_analysis

    runs = _read_all(expand_sources(logs), log_format, metric, run, preload_analysis)
    from spikelens.analyze import analyze as run_analysis

    return run_analysis(runs), runs


def _analyse_fleet(
    logs: list[str], log_format: str | None, metric: list[str] | None, jobs: int | None,
    dask: str | None, no_cache: bool, cache_dir: Path | None,
) -> Any:
    """Many logs: one task per log on a process pool or a Dask cluster, through the result
    cache, with a progress bar on a terminal (`spikelens.fleet`)."""
    import gc

    from spikelens.cache import ResultCache
    from spikelens.fleet import analyze_sources
    from spikelens.metrics import parse_overrides
    from spikelens.paths import expand_candidates

    overrides = parse_overrides(metric or [])
    found = expand_candidates(logs)  # files in directories are sniffed by the workers
    sources = [s for s, _ in found]
    if len(sources) > 1 or dask is not None:
        # thousands of logs, or a Dask client's event loop, can keep this process for
        # long: its cycles are collected (`_no_cycle_collector`)
        gc.enable()
    cache = None if no_cache else ResultCache(cache_dir)
    kwargs: dict[str, Any] = dict(format=log_format, metrics=overrides, jobs=jobs, dask=dask,
                                  cache=cache, found_in=[w for _, w in found])
    if sys.stderr.isatty() and len(sources) > 1:
        from rich.progress import Progress

        with Progress(transient=True, console=_stderr_console()) as progress:
            task = progress.add_task("analysing logs", total=0)
            fleet = analyze_sources(
                sources, **kwargs,
                progress=lambda n: progress.advance(task, n),
                total=lambda n: progress.update(
                    task, total=(progress.tasks[0].total or 0) + n),
            )
    else:
        fleet = analyze_sources(sources, **kwargs)
    for w in fleet.warnings:
        typer.echo(f"Warning: {w}", err=True)
    return fleet


@app.command()
@_one_line_errors
def analyze(
    logs: LogsArg,
    format: Annotated[
        str, typer.Option("--format", "-f",
                          help=f"One of: {', '.join(OUTPUT_FORMATS + TABLE_FORMATS)}.")
    ] = "terminal",
    metric: MetricOpt = None,
    log_format: LogFormatOpt = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show every cause's evidence and the "
                           "causes that could not be judged.")
    ] = False,
    fail_on: Annotated[
        Optional[FailOn],  # noqa: UP045
        typer.Option("--fail-on", help="Exit 1 when such loss incidents are found."),
    ] = None,
    summary: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--summary", metavar="PATH",
                     help="Also write the Markdown report here (e.g. $GITHUB_STEP_SUMMARY)."),
    ] = None,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", metavar="PATH", help="Write the report here."),
    ] = None,
    no_color: Annotated[bool, typer.Option("--no-color", help="Plain text output.")] = False,
    run: RunOpt = None,
    jobs: JobsOpt = None,
    dask: DaskOpt = None,
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    top: Annotated[
        int, typer.Option("--top", metavar="N",
                          help="Fleet summary: show the N worst runs, count the rest.")
    ] = 20,
) -> None:
    """Find loss incidents, classify them, rank their causes. Exit 0 = analysed, 1 =
    findings matched --fail-on, 2 = bad input or usage."""
    from spikelens.report import render

    if format not in OUTPUT_FORMATS + TABLE_FORMATS:
        raise ConfigError(f"unknown output format {format!r} (known: "
                          f"{', '.join(OUTPUT_FORMATS + TABLE_FORMATS)}; for HTML use "
                          "`spikelens report LOG --html out.html`)")
    if format in TABLE_FORMATS:
        from spikelens.report.parquet import check_target

        check_target(output)
        _check_writable(summary)
    else:
        for target in (output, summary):
            _check_writable(target)
    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    if run and format in TABLE_FORMATS:
        raise ConfigError("--run picks runs for the text reports; the parquet tables hold "
                          "every run (filter them by the `run` column)")
    if run:  # runs picked inside multi-run stores: read here, analyse the picked ones
        report, _ = _analyse(logs, log_format, metric, run)
        fleet = None
    else:
        fleet = _analyse_fleet(logs, log_format, metric, jobs, dask, no_cache, cache_dir)
        report = fleet.report
    if format in TABLE_FORMATS:
        from spikelens.report.parquet import TABLE_WRITERS

        assert output is not None and fleet is not None  # check_target refused None
        written = TABLE_WRITERS.get(format)(fleet, output)
        typer.echo(f"wrote {', '.join(str(p) for p in written)} "
                   f"({len(report.runs)} runs)", err=True)
    else:
        text = render(report, [], format, verbose=verbose,
                      color=_color(no_color) if output is None else False, top=top)
        if format == "terminal" and fleet is not None and len(report.runs) > 1:
            from spikelens.fleet import suspects_text

            text = text + suspects_text(fleet)
        _write(text, output)
    if summary is not None:
        _append(render(report, [], "markdown", verbose=verbose, top=top), summary)
    raise typer.Exit(_exit_code(report, fail_on))


def _check_writable(path: Path | None) -> None:
    """Refuse an output path before the analysis, so a bad one cannot hide its result."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a file to write")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: no such directory {path.parent}")


def _append(text: str, path: Path) -> None:
    # $GITHUB_STEP_SUMMARY is shared by every step of a job: append, never truncate
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write ({exc.strerror or exc})") from None


@app.command()
@_one_line_errors
def report(
    logs: LogsArg,
    html: Annotated[
        Path, typer.Option("--html", metavar="PATH", help="Write the HTML page here.")
    ],
    plotlyjs: Annotated[
        PlotlyJs, typer.Option("--plotlyjs", help="inline: works offline (about 4.7 MB); "
                               "cdn: a small file that loads plotly.js from a CDN.")
    ] = PlotlyJs.inline,
    metric: MetricOpt = None,
    log_format: LogFormatOpt = None,
    fail_on: Annotated[
        Optional[FailOn],  # noqa: UP045
        typer.Option("--fail-on", help="Exit 1 when such loss incidents are found."),
    ] = None,
    run: RunOpt = None,
    jobs: JobsOpt = None,
    dask: DaskOpt = None,
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Write one self-contained HTML page (plotly) with the curves, the incidents and their
    causes."""
    from spikelens.report import render

    _check_writable(html)
    if run or _read_here(logs):  # picked runs, one file, or input that reads only once
        report_, runs = _analyse(logs, log_format, metric, run)
    else:  # many logs: analysed as `analyze` does (process pool, cache), curves read here
        from spikelens.fleet import runs_of
        from spikelens.metrics import parse_overrides

        fleet = _analyse_fleet(logs, log_format, metric, jobs, dask, no_cache, cache_dir)
        report_ = fleet.report
        runs = runs_of(fleet, log_format, parse_overrides(metric or []))
    _write(render(report_, runs, "html", plotlyjs=plotlyjs.value), html)
    verdicts = ", ".join(r.verdict for r in report_.runs)
    typer.echo(f"wrote {html} ({verdicts})", err=True)
    raise typer.Exit(_exit_code(report_, fail_on))


def _read_here(logs: list[str]) -> bool:
    """Whether `report` reads and analyses in this process: a single plain file (nothing to
    parallelise, and the curves need it read anyway), or standard input or a pipe among the
    logs (which cannot be read a second time for the curves)."""
    from spikelens.opener import is_url

    def once(item: str) -> bool:
        return item == "-" or (os.path.exists(item) and not os.path.isfile(item)
                               and not os.path.isdir(item))

    if any(once(x) for x in logs):
        return True
    return len(logs) == 1 and not is_url(logs[0]) and os.path.isfile(logs[0])


@app.command()
@_one_line_errors
def watch(
    logs: Annotated[list[str], typer.Argument(
        help="Logs still being written: JSONL/CSV/text files, a TensorBoard directory, a W&B "
        "run (directory or .wandb file).", show_default=False)],
    interval: Annotated[
        float, typer.Option("--interval", metavar="SECONDS", help="Seconds between polls.")
    ] = 2.0,
    fail_on: Annotated[
        Optional[list[FailOn]],  # noqa: UP045
        typer.Option("--fail-on", help="Exit 1 as soon as such a loss incident is confirmed "
                      "(repeatable)."),
    ] = None,
    webhook: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--webhook", metavar="URL", help="POST each incident as JSON (a `text` "
                     "field for Slack/Mattermost incoming webhooks, plus the event)."),
    ] = None,
    metric: MetricOpt = None,
) -> None:
    """Follow growing logs and report each loss incident once, when it is confirmed. Exit 0
    on Ctrl-C (SIGINT) or SIGTERM, 1 when an incident matched --fail-on, 2 on bad input."""
    import gc

    from spikelens.metrics import parse_overrides
    from spikelens.watch import Watcher

    gc.enable()  # a watch runs for days: its cycles are collected (`_no_cycle_collector`)
    paths = [Path(x) for x in logs]
    kinds = [f.value for f in fail_on or []]
    watcher = Watcher(paths, interval=interval, fail_on=kinds, webhook=webhook,
                      metrics=dict(parse_overrides(metric or [])) or None)
    _stop_on_signals()
    raise typer.Exit(watcher.run().exit_code)


def _stop_on_signals() -> None:
    """Make SIGINT and SIGTERM end `watch` with its summary. A process started as a
    background job of a script (`cmd &`, nohup in a CI step) inherits SIGINT ignored, and
    Python then leaves it ignored: `kill -INT` did nothing and the watch ran on. SIGTERM is
    what a CI runner sends when it cancels a job; its default would end the process
    without the summary."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)


@app.command()
def formats() -> None:
    """List the log formats spikelens reads."""
    from spikelens.readers import READERS, format_names

    format_names()
    for name, reader in READERS.items():
        typer.echo(f"{name:18} {reader.description}")


def main() -> None:
    """Console entry point. typer turns usage errors into exit 2 itself; the commands turn
    library errors into one line and exit 2."""
    _no_cycle_collector()
    _one_blas_thread()
    _no_numpy_hugepages()
    from spikelens import malloc

    malloc.tune()
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = _status(exc.code)
    _leave(code)


def _no_cycle_collector() -> None:
    """Turn Python's cyclic garbage collector off for the command's process (`watch` turns
    it back on). A command lives for seconds and leaves almost no cyclic garbage: 0 objects
    collected over `inspect` or `analyze` of the 1M-step CSV, 734 over the analysis of 100
    logs in one process. The collector still ran about 180 times while pandas, pyarrow and
    typer were imported, each pass walking the objects the imports had made: 0.03 s of
    collections, and `inspect` of the 1M-step CSV 0.79-0.88 -> 0.70-0.79 s (medians of 9
    alternated fresh runs, docs/performance.md). Reference counting still frees
    everything that is not in a cycle, as soon as it is dropped. The runs that can keep
    the process for long turn it back on: `watch`, and any command given several logs (or
    a Dask cluster)."""
    import gc

    gc.disable()


def _one_blas_thread() -> None:
    """Run OpenBLAS on one thread in the command's process (and the fleet's workers, which
    inherit it) unless the user chose otherwise. numpy and scipy each load their own
    OpenBLAS, and each starts a server thread that busy-waits about 0.1 s after the library
    loads and after every threaded call (a long dot product in the detector): on a 2-core
    machine that spinning takes the second core from pyarrow's parse threads. spikelens does
    no linear algebra large enough to gain from a second BLAS thread. Measured on `analyze` of
    the 1M-step CSV (docs/performance.md): 0.3-0.7 CPU-s less, no spinning thread left in a
    `perf` profile. Set here, before numpy is imported: OpenBLAS reads it when it loads."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _no_numpy_hugepages() -> None:
    """Turn off numpy's request for transparent huge pages on its large arrays (numpy's
    documented `NUMPY_MADVISE_HUGEPAGE`) in the command's process, unless the user chose.
    Where the kernel's THP `defrag` setting is `madvise` (a common default), a fault in
    such an array compacts memory first, and on a machine whose page cache holds the logs
    being read that stalls: a 200 MB array took 0.27-0.51 s to fill on first touch, 0.08 s
    without the request. `analyze` of the 1M-step CSV 2.83 -> 2.71 s and `inspect` 1.20 ->
    1.05 s, medians of 5-6 alternated runs (docs/performance.md). Set before numpy is
    imported: numpy reads it once, then."""
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")


def _status(code: object) -> int:
    """The status `SystemExit(code)` gives: None is 0, a message is printed and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _leave(code: int) -> NoReturn:
    """End the process once the command is done: the exit handlers run and the output is
    flushed, then `os._exit` skips the interpreter's teardown of pandas, pyarrow and the
    analysed run, which buys nothing at exit (0.1-0.25 s of a fresh `inspect` or
    `analyze` of a 1M-step log, docs/performance.md). With a thread of ours still running
    (none should be) the ordinary exit waits for it instead."""
    import atexit
    import threading

    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive()
           for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # what the interpreter runs at exit: pools, temp dirs, logging
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more to say
            pass
    os._exit(code)

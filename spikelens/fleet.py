"""Many logs at once: a sweep folder, a glob on S3, every run of a quarter. The unit of work is one
log: `open -> read -> detect -> explain` as a pure function of (source, config) that returns
each run's `RunReport` plus the compact facts cross-run alignment needs: the run's one-point
outlier candidates (`detect.joint.Candidates`: steps and z at or above the joint bar, not the
series) and a thin stand-in `Run` holding only the rows of its consumed-tokens/samples counters
that the alignment reads (its first and last point and the two points around each incident's
peak), with its name, interval and params. The same function runs in this process, in a process
pool (`jobs`) or as one Dask task per log on an existing cluster, where the workers read the log
from where it is; only these compact results travel back. The reduce runs where the results come
back and gives the very report `analyze(all runs)` gives: (1) one-point outliers that coincide
across runs (`find_coincidences` on the candidates); the few logs that have such steps are
analysed again with the lowered bar there, unless their first pass shows that bar cannot change
their detection (`_changes`); (2) incidents that recur at the same point of the
data stream (`find_recurrences` on the thin runs); the logs whose incidents recur are explained
again with the recurrence as evidence. Each pass is cached like the first (`spikelens.cache`),
keyed also on the cross-run facts it used. On one machine the first pass keeps the parsed runs
and detections of the logs that can take part in the later ones in a private temporary
directory, so those passes neither read nor parse a log again (a cluster's workers share no
disk: there they read it again). Results keep the order of the sources whatever the
backend, and the first bad log in that order is the error raised (one line, as everywhere)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spikelens.cores import default_jobs
from spikelens.errors import ConfigError, SpikelensError
from spikelens.model import (
    INCIDENT_KINDS,
    Config,
    Event,
    Recurrence,
    Report,
    Run,
    RunReport,
)

if TYPE_CHECKING:
    from spikelens.cache import ResultCache
    from spikelens.detect.joint import Candidates

ENV_SCHEDULER = "SPIKELENS_DASK_SCHEDULER"

Progress = Callable[[int], None]


@dataclass(frozen=True)
class RunPart:
    """One run's result: its report, the events it was built from, and what the cross-run
    passes need of it."""

    report: RunReport
    events: tuple[Event, ...]
    thin: Run  # alignment stand-in: counters at the rows the alignment reads, no loss
    candidates: Candidates | None  # None in the second and third passes
    #: per event (same order): consumed tokens and samples at its peak, when logged
    positions: tuple[tuple[float | None, float | None], ...] = ()
    #: first pass only: the steps where a lowered cross-run bar could change the detection
    #: (`Detection.near_bar`); None: any step (not known, or a later pass)
    near: tuple[int, ...] | None = None


@dataclass(frozen=True)
class LogResult:
    source: str
    parts: tuple[RunPart, ...]
    skipped: bool = False  # a file found in a directory that no reader claims


@dataclass(frozen=True)
class Task:
    """One log to analyse, and the cross-run facts known so far (empty in the first pass)."""

    source: str
    config: Config
    format: str | None = None
    metrics: tuple[tuple[str, str], ...] = ()
    #: per run of this log (index in the file): steps with a coinciding outlier elsewhere
    recurrent: tuple[tuple[int, tuple[int, ...]], ...] = ()
    #: recurrences that involve this log's runs (third pass), else None
    recurrences: tuple[Recurrence, ...] | None = None
    candidates: bool = True
    #: the directory (as the user named it) this file was found in, unsniffed: the task
    #: checks that it is a log first, and skips it otherwise
    found_in: str | None = None
    #: a local directory where the first pass keeps the parsed runs (and detections) of a
    #: log that may take part in the cross-run passes, so that those passes neither read nor
    #: parse it again; None on a cluster, whose workers share no disk with each other
    spill: str | None = None


@dataclass(frozen=True)
class Fleet:
    """The fleet's report, and per report run (same order) its compact part: events,
    positions on the data stream and params, for the fleet outputs."""

    report: Report
    parts: tuple[RunPart, ...]
    cache_hits: int = 0
    cache_misses: int = 0
    warnings: tuple[str, ...] = field(default=())


# --- the unit of work -------------------------------------------------------------------

#: The modules the analysis of a read log needs, beyond the readers (which the forkserver
#: also preloads). Their imports (scipy.ndimage above all) are about 0.4 s of a fresh process.
ANALYSIS_MODULES = ("spikelens.detect", "spikelens.detect.joint", "spikelens.causes",
                    "spikelens.analyze", "spikelens.align")
#: Imported inside functions of the detector, so `import spikelens.detect` does not load them.
_LAZY_ANALYSIS_MODULES = ("scipy.special", "scipy.fft")


def _import_quietly(names: Sequence[str]) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the analysis imports it again and reports it
            return


def preload_analysis(fmt: str) -> None:
    """Import the analysis modules on a daemon thread when a log of format `fmt` is about to
    be read by a reader whose read leaves a core idle (`idle_core_while_reading`): the
    `before_read` of `readers.read_runs`. The imports are pure Python; done while the read
    waits on its parse threads, they stop costing wall time. Only modules that no reader
    imports are preloaded, and only once `spikelens.readers` is loaded (as it is when
    `read_runs` calls this), so the two threads never wait on each other's module locks in
    a cycle; the cause rules are left to `causes._register_builtin`, whose registry must
    fill in one go. A failed import is dropped here and raised where the analysis imports
    the module; an unknown format is left to the read to report."""
    import sys
    import threading

    from spikelens.readers import READERS

    todo = [m for m in ANALYSIS_MODULES + _LAZY_ANALYSIS_MODULES if m not in sys.modules]
    if todo and fmt in READERS.names() \
            and getattr(READERS.get(fmt), "idle_core_while_reading", False):
        threading.Thread(target=_import_quietly, args=(todo,), name="spikelens-preload",
                         daemon=True).start()


def run_task(task: Task) -> LogResult:
    """Read one log and analyse each of its runs. Pure: the same task gives the same result
    in any process."""
    from spikelens.readers import read_runs

    cfg = task.config
    fmt = task.format
    kept = _unspill(task)
    if kept is not None:
        runs, dets = kept
    else:
        if task.found_in is not None:
            from spikelens.paths import claim

            ok, sniffed = claim(task.source, keep=True)
            if not ok:
                return LogResult(source=task.source, parts=(), skipped=True)
            fmt = fmt or sniffed
        runs = read_runs(task.source, format=fmt, metrics=dict(task.metrics) or None,
                         before_read=preload_analysis)
        dets = []
    from spikelens.analyze import report_of
    from spikelens.detect import detect, point_z
    from spikelens.detect.joint import candidates

    recurrent = dict(task.recurrent)
    parts: list[RunPart] = []
    for i, run in enumerate(runs):
        det = dets[i] if i < len(dets) else detect(run, cfg, recurrent.get(i, ()),
                                                     near_bar=task.candidates)
        rep = report_of(run, det, cfg, task.recurrences or ())
        cand = candidates(det.point_z if det.point_z is not None else point_z(run, cfg),
                          cfg.joint_min_z) if task.candidates else None
        counters = _counters(run)
        parts.append(RunPart(report=rep, events=det.events,
                             thin=thin_run(run, det.events, counters), candidates=cand,
                             positions=_positions(det.events, counters),
                             near=det.near_bar if task.candidates else None))
        if i == len(dets):
            dets.append(det)
    _spill(task, runs, dets, parts)
    return LogResult(source=task.source, parts=tuple(parts))


# --- keeping parsed runs between the passes ---------------------------------------------

def _spill_path(task: Task) -> str:
    import hashlib

    assert task.spill is not None
    return os.path.join(task.spill, hashlib.sha256(task.source.encode()).hexdigest()[:40])


def _spill(task: Task, runs: Sequence[Run], dets: Sequence[Any],
           parts: Sequence[RunPart]) -> None:
    """Keep the parsed runs, and the detections with the cross-run steps they used, of a
    log that can take part in a later pass: one with a one-point outlier that may coincide
    with other runs' (pass 2) or with events that may recur (pass 3). The file is the
    worker's own pickle in the fleet's private temporary directory; one that cannot be
    written only costs the later pass a read."""
    if task.spill is None:
        return
    if task.candidates and not any(p.events or (p.candidates is not None
                                                and len(p.candidates.steps))
                                   for p in parts):
        return  # neither pass can pick this log
    if task.recurrences is not None:
        return  # the last pass: nothing comes after it
    import pickle
    import tempfile

    target = _spill_path(task)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=task.spill, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump((task.recurrent, tuple(runs), tuple(dets)), fh,
                        protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)
    except Exception:  # noqa: BLE001 - a full disk, an unpicklable param: the pass reads
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)


def _unspill(task: Task) -> tuple[list[Run], list[Any]] | None:
    """What an earlier pass kept of this log: its runs, and their detections when they
    were made with the very cross-run steps this task brings (else they are detected
    again). None when nothing was kept (a cached first pass, a cluster, a full disk)."""
    if task.spill is None or task.candidates:
        return None
    import pickle

    try:
        with open(_spill_path(task), "rb") as fh:
            recurrent, runs, dets = pickle.load(fh)
    except Exception:  # noqa: BLE001 - missing or damaged: read the log as usual
        return None
    return list(runs), list(dets) if recurrent == task.recurrent else []


def _usable_counter(run: Run, role: str) -> tuple[Any, Any] | None:
    # the alignment's own reading of a counter, so the stand-in agrees with it
    from spikelens.align import _counter

    return _counter(run, role)


def _counters(run: Run) -> dict[str, tuple[Any, Any] | None]:
    """The usable tokens and samples counters of `run`, read once for the stand-in and the
    events' positions."""
    return {role: _usable_counter(run, role) for role in ("tokens", "samples")}


def thin_run(run: Run, events: Sequence[Event],
             counters: Mapping[str, tuple[Any, Any] | None] | None = None) -> Run:
    """A stand-in for `run` that `align.find_recurrences` reads exactly as it reads the
    whole run: the logged step range, and of each usable tokens/samples counter the first and
    last points and the two points at or before each event's peak. A few rows, not the
    series, so thousands of them fit in the process that aligns them."""
    import numpy as np
    import pandas as pd

    steps = run.steps
    keep: set[int] = set()
    if len(steps):
        keep.update((int(steps[0]), int(steps[-1])))
    cols: dict[str, dict[int, float]] = {}
    roles: dict[str, str] = {}
    counters = _counters(run) if counters is None else counters
    for role in ("tokens", "samples"):
        cnt = counters[role]
        if cnt is None:
            continue
        csteps, cvals = cnt
        rows = {0, len(csteps) - 1}
        for ev in events:
            k = int(np.searchsorted(csteps, ev.peak_step, side="right")) - 1
            rows.update(r for r in (k - 1, k) if 0 <= r < len(csteps))
        name = run.roles[role]
        roles[role] = name
        cols[name] = {int(csteps[r]): float(cvals[r]) for r in sorted(rows)}
        keep.update(cols[name])
    index = pd.Index(sorted(keep), dtype=np.int64, name=run.frame.index.name)
    frame = pd.DataFrame({name: pd.Series(vals, dtype=np.float64).reindex(index)
                          for name, vals in cols.items()}, index=index)
    return Run(source=run.source, format=run.format, frame=frame, roles=roles,
               interval=run.interval, averaged=run.averaged, name=run.name,
               params=dict(run.params))


def _positions(events: Sequence[Event], counters: Mapping[str, tuple[Any, Any] | None]
               ) -> tuple[tuple[float | None, float | None], ...]:
    import numpy as np

    out: list[tuple[float | None, float | None]] = []
    for ev in events:
        pos: list[float | None] = []
        for cnt in (counters["tokens"], counters["samples"]):
            if cnt is None:
                pos.append(None)
                continue
            k = int(np.searchsorted(cnt[0], ev.peak_step, side="right")) - 1
            pos.append(float(cnt[1][k]) if k >= 0 else None)
        out.append((pos[0], pos[1]))
    return tuple(out)


# --- backends ---------------------------------------------------------------------------

class Backend:
    """Runs tasks, results in task order; the first failing task in that order raises."""

    name = "serial"

    def map(self, tasks: Sequence[Task], progress: Progress | None) -> list[LogResult]:
        out = []
        for t in tasks:
            out.append(run_task(t))
            if progress:
                progress(1)
        return out

    def close(self) -> None:
        return None


class PoolBackend(Backend):
    """A local process pool. Workers start from a forkserver that has the analysis modules
    loaded (fork from a parent that runs a progress thread is unsafe; spawn would pay the
    imports once per worker and per pass)."""

    name = "pool"

    def __init__(self, jobs: int) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        methods = mp.get_all_start_methods()
        ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            ctx.set_forkserver_preload(["spikelens.fleet", "spikelens.readers",
                                        "spikelens.paths", "spikelens.opener",
                                        *ANALYSIS_MODULES])
        self.jobs = jobs
        # forkserver children inherit the server's environment, which may be older than
        # ours (credentials, AWS_ENDPOINT_URL set since): each worker takes ours first
        self._pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                                         initializer=_adopt_environment,
                                         initargs=(dict(os.environ),))

    def map(self, tasks: Sequence[Task], progress: Progress | None) -> list[LogResult]:
        from concurrent.futures import as_completed

        futures = [self._pool.submit(run_task, t) for t in tasks]
        return _in_order(futures, as_completed(futures), progress)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _adopt_environment(env: dict[str, str]) -> None:
    """A pool worker's start: the caller's environment, then the malloc settings of a
    process spikelens owns (`malloc.tune`: freed memory reused, not faulted in again; a
    directory of 100 runs x 100k steps 13.3 -> 11.8 s), unless that environment sets
    glibc's own."""
    os.environ.clear()
    os.environ.update(env)
    from spikelens import malloc

    malloc.tune()


class DaskBackend(Backend):
    """One task per log on an existing Dask cluster. The workers read the logs themselves
    (so they need spikelens, and the protocol packages and credentials of the store)."""

    name = "dask"

    def __init__(self, address: str) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError("--dask needs dask.distributed: pip install 'spikelens[dask]'") \
                from None
        try:
            # the connect timeout is dask's own (distributed.comm.timeouts.connect)
            self._client = Client(address)  # type: ignore[no-untyped-call]
        except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError...
            raise ConfigError(f"{address}: cannot connect to the Dask scheduler "
                              f"({type(exc).__name__}: {exc})") from None

    def map(self, tasks: Sequence[Task], progress: Progress | None) -> list[LogResult]:
        from distributed import as_completed

        futures = self._client.map(run_task, list(tasks), pure=False)
        return _in_order(futures, as_completed(futures),  # type: ignore[no-untyped-call]
                         progress)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


def _in_order(futures: Sequence[Any], done: Iterator[Any],
              progress: Progress | None) -> list[LogResult]:
    for _ in done:
        if progress:
            progress(1)
    out: list[LogResult] = []
    for f in futures:
        exc = f.exception()
        if exc is not None:
            if isinstance(exc, SpikelensError):
                raise exc
            raise SpikelensError(f"a worker failed ({type(exc).__name__}: {exc})") from None
        out.append(f.result())
    return out


def make_backend(jobs: int | None, dask: str | None, n_tasks: int) -> Backend:
    address = dask or os.environ.get(ENV_SCHEDULER) or None
    if address:
        return DaskBackend(address)
    n = default_jobs() if jobs is None else jobs
    if n < 1:
        raise ConfigError(f"--jobs must be >= 1, got {n}")
    if n == 1 or n_tasks <= 1:
        return Backend()
    return PoolBackend(min(n, n_tasks))


# --- the fleet --------------------------------------------------------------------------

def analyze_sources(
    sources: Sequence[str],
    config: Config | None = None,
    *,
    format: str | None = None,
    metrics: Mapping[str, str] | None = None,
    jobs: int | None = 1,
    dask: str | None = None,
    cache: ResultCache | None = None,
    progress: Progress | None = None,
    total: Callable[[int], None] | None = None,
    found_in: Sequence[str | None] | None = None,
) -> Fleet:
    """Analyse every log in `sources` (as `paths.expand_sources` gives them) and align the
    runs across logs: the report `analyze([every run])` would give. `jobs` processes (None:
    one per core), or the Dask scheduler at `dask` (or `$SPIKELENS_DASK_SCHEDULER`).
    `progress(n)` is called as logs finish; `total(n)` when the count of work grows.
    `found_in[i]`: the directory item source i was found in unsniffed
    (`paths.expand_candidates`); it is skipped if no reader claims it."""
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    cfg = config or Config()
    mets = tuple(sorted((metrics or {}).items()))
    where = list(found_in) if found_in is not None else [None] * len(sources)
    spill = _spill_dir(sources, dask)
    base = [Task(source=s, config=cfg, format=format, metrics=mets, found_in=w, spill=spill)
            for s, w in zip(sources, where, strict=True)]
    ids = _identities(sources, cache)
    if total:
        total(len(base))
    runner = _Runner(lambda n: make_backend(jobs, dask, n), cache, ids, progress)
    try:
        results = runner.run(base)
        _no_empty_directories(results, where)
        kept = [i for i, r in enumerate(results) if not r.skipped]
        runner.ids = {k: runner.ids[i] for k, i in enumerate(kept)}
        results, recs = _cross_run([results[i] for i in kept], [base[i] for i in kept],
                                   runner, total)
    finally:
        runner.close()
        if spill is not None:
            import shutil

            shutil.rmtree(spill, ignore_errors=True)
    parts = tuple(p for r in results for p in r.parts)
    warnings = (cache.write_error,) if cache is not None and cache.write_error else ()
    return Fleet(report=Report(runs=tuple(p.report for p in parts), recurrences=recs),
                 parts=parts,
                 cache_hits=cache.hits if cache else 0,
                 cache_misses=cache.misses if cache else 0,
                 warnings=warnings)


def _spill_dir(sources: Sequence[str], dask: str | None) -> str | None:
    """A private temporary directory for the parsed runs the cross-run passes reuse
    (`_spill`), when there are such passes (several logs) and the workers share this
    machine's disk (not on a Dask cluster)."""
    if len(sources) < 2 or dask or os.environ.get(ENV_SCHEDULER):
        return None
    import tempfile

    try:
        return tempfile.mkdtemp(prefix="spikelens-fleet-")
    except OSError:
        return None


def _no_empty_directories(results: Sequence[LogResult], where: Sequence[str | None]) -> None:
    """A directory named by the user in which no file is a log is an error, as before the
    sniffing moved into the workers."""
    seen: dict[str, bool] = {}
    for res, item in zip(results, where, strict=True):
        if item is not None:
            seen[item] = seen.get(item, False) or not res.skipped
    for item, any_log in seen.items():
        if not any_log:
            raise ConfigError(f"{item}: directory with no logs in it")


def _identities(sources: Sequence[str], cache: ResultCache | None) -> list[str | None]:
    if cache is None:
        return [None] * len(sources)
    from spikelens.opener import identity

    return [identity(s) for s in sources]


class _Runner:
    """Tasks through the cache, the misses through the backend."""

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()

    def __init__(self, make: Callable[[int], Backend], cache: ResultCache | None,
                 ids: list[str | None], progress: Progress | None) -> None:
        # the backend starts at the first miss: a warm sweep starts no pool, dials no cluster
        self.make, self.cache, self.progress = make, cache, progress
        self.backend: Backend | None = None
        self.ids = {i: ident for i, ident in enumerate(ids)}

    def run(self, tasks: Sequence[Task], index: Sequence[int] | None = None) -> list[LogResult]:
        idx = list(range(len(tasks))) if index is None else list(index)
        out: list[LogResult | None] = [None] * len(tasks)
        keys: list[str | None] = [None] * len(tasks)
        todo: list[int] = []
        for k, t in enumerate(tasks):
            ident = self.ids.get(idx[k])
            if self.cache is not None and ident is not None:
                keys[k] = self.cache.key(ident, t.config, t.format, t.metrics, t.recurrent,
                                         t.recurrences, t.candidates)
                hit = self.cache.get(keys[k] or "")
                if isinstance(hit, LogResult) and hit.source == t.source:
                    out[k] = hit
                    if self.progress:
                        self.progress(1)
                    continue
            todo.append(k)
        if todo:
            if self.backend is None:
                self.backend = self.make(len(todo))
            fresh = self.backend.map([tasks[k] for k in todo], self.progress)
            for k, res in zip(todo, fresh, strict=True):
                out[k] = res
                key = keys[k]
                if self.cache is not None and key is not None:
                    self.cache.put(key, res)
        return [r for r in out if r is not None]


def _cross_run(results: list[LogResult], tasks: list[Task], runner: _Runner,
               total: Callable[[int], None] | None
               ) -> tuple[list[LogResult], tuple[Recurrence, ...]]:
    """The two cross-run passes of `analyze`, on the compact results; and the fleet's
    recurrences."""
    from spikelens.detect.joint import find_coincidences

    flat = [(li, ri) for li, r in enumerate(results) for ri in range(len(r.parts))]
    if len(flat) < 2:
        return results, _recurrences([p for r in results for p in r.parts])
    cfg = tasks[0].config
    cands = [results[li].parts[ri].candidates for li, ri in flat]
    found = find_coincidences([c for c in cands if c is not None], cfg.joint_min_z,
                              cfg.joint_alpha, cfg.joint_tolerance)
    recurrent: dict[int, dict[int, set[int]]] = {}
    for c in found:
        for gi, step in c.members:
            li, ri = flat[gi]
            recurrent.setdefault(li, {}).setdefault(ri, set()).add(step)
    rec_t = {li: tuple(sorted((ri, tuple(sorted(st))) for ri, st in per.items()))
             for li, per in recurrent.items()}
    # pass 2: the logs with coinciding outliers, detected again with the lowered bar there;
    # only those where the lower bar can change the detection (`_changes`): the others'
    # second pass would return their first pass as it is, so that one is kept, and the
    # third pass treats them as logs with no coinciding steps (the same detection)
    if SKIP_UNCHANGED_SECOND_PASS:
        rec_t = {li: rt for li, rt in rec_t.items() if _changes(results[li], rt)}
    if rec_t:
        redo = sorted(rec_t)
        if total:
            total(len(redo))
        again = runner.run([_with(tasks[li], recurrent=rec_t[li]) for li in redo], redo)
        for li, res in zip(redo, again, strict=True):
            results[li] = _keep_candidates(res, results[li])
    parts = [p for r in results for p in r.parts]
    recs = _recurrences(tuple(parts))
    # pass 3: the logs whose incidents recur, explained again with the recurrence
    keys_of = {li: {_key(p.thin) for p in r.parts} for li, r in enumerate(results)}
    involved: dict[int, tuple[Recurrence, ...]] = {}
    for li, keys in keys_of.items():
        mine = tuple(rc for rc in recs if any(k in keys for k, _ in rc.members))
        if mine:
            involved[li] = mine
    if involved:
        redo = sorted(involved)
        if total:
            total(len(redo))
        again = runner.run([_with(tasks[li], recurrent=rec_t.get(li, ()),
                                  recurrences=involved[li]) for li in redo], redo)
        same = True
        for li, res in zip(redo, again, strict=True):
            same = same and _same_alignment(res, results[li])
            results[li] = _keep_candidates(res, results[li])
        # the third pass explains again with the very detections of the second (the same
        # log, the same cross-run steps), so the alignment on its events and stand-ins is
        # the one just made: not redone (a second or two of the reduce for 1,000 runs),
        # unless a log changed in between
        if not same:
            recs = _recurrences([p for r in results for p in r.parts])
    return results, recs


#: Skip the second pass of a log that it cannot change (`_changes`); False forces it for
#: every log with coinciding steps (the tests compare both ways).
SKIP_UNCHANGED_SECOND_PASS = True


def _changes(first: LogResult, recurrent: tuple[tuple[int, tuple[int, ...]], ...]) -> bool:
    """Whether detecting `first`'s log again with the lowered bar at these coinciding steps
    (per run: index in the log, steps) can give anything but its first pass.

    The second pass differs from the first in one thing only: `detect` gets the run's
    coinciding steps, which lower the point test's bar there to `joint_min_z`; the report,
    the stand-in and the positions are made from that detection as in the first pass
    (pass 2 brings no recurrences), and the candidates are the first pass's anyway. The
    coinciding steps are each run's own steps (`Coincidence.members`), matched exactly,
    so the tolerance of the coincidence plays no part here. A lowered bar can only make the
    point test fire at a step where the first pass's z was in [joint_min_z, bar), which is
    the run's `near` set (`detect._rises_and_near` proves it, scan by scan); with no
    coinciding step in it, the detection, and so the whole part, is the first pass's. A run
    whose `near` is unknown (None: a result cached by an older version) is always detected
    again."""
    for ri, steps in recurrent:
        near = first.parts[ri].near if ri < len(first.parts) else None
        if near is None or not set(steps).isdisjoint(near):
            return True
    return False


def _same_alignment(new: LogResult, old: LogResult) -> bool:
    """Whether `find_recurrences` reads the same of `new` as of `old`: the same events
    and the same stand-in runs (rows, interval, params)."""
    return len(new.parts) == len(old.parts) and all(
        n.events == o.events and n.thin.interval == o.thin.interval
        and n.thin.params == o.thin.params and n.thin.roles == o.thin.roles
        and n.thin.frame.equals(o.thin.frame)
        for n, o in zip(new.parts, old.parts, strict=True))


def _with(task: Task, **changes: Any) -> Task:
    import dataclasses

    return dataclasses.replace(task, candidates=False, **changes)


def _keep_candidates(new: LogResult, old: LogResult) -> LogResult:
    import dataclasses

    return dataclasses.replace(new, parts=tuple(
        dataclasses.replace(n, candidates=o.candidates)
        for n, o in zip(new.parts, old.parts, strict=True)))


def _key(run: Run) -> str:
    from spikelens.align import run_key

    return run_key(run)


def _recurrences(parts: Sequence[RunPart]) -> tuple[Recurrence, ...]:
    from spikelens.align import find_recurrences

    if len(parts) < 2:
        return ()
    return tuple(find_recurrences([p.thin for p in parts], [p.events for p in parts]))


def runs_of(fleet: Fleet, format: str | None = None,
            metrics: Mapping[str, str] | None = None) -> list[Run]:
    """The whole runs behind a fleet's report, in its order, read again from their logs
    (each log once) for what needs the series, such as the HTML page's curves. A log that
    changed since its analysis so that it no longer holds the same runs is a one-line
    error rather than curves that do not match the report."""
    from spikelens.readers import read_runs

    sources = list(dict.fromkeys(p.thin.source for p in fleet.parts))
    runs = [r for s in sources for r in read_runs(s, format=format, metrics=metrics)]
    if [(r.source, r.name) for r in runs] != [(p.thin.source, p.thin.name)
                                              for p in fleet.parts]:
        raise SpikelensError(f"{sources[0] if len(sources) == 1 else 'the logs'}: changed "
                             "while being analysed; run the command again")
    return runs


# --- fleet summaries --------------------------------------------------------------------

@dataclass(frozen=True)
class SummaryRow:
    """One run of the fleet summary."""

    run: str  # run key (source, plus #name inside a multi-run file)
    short: str  # the shortest path suffix that tells it from the other runs
    verdict: str
    counts: Mapping[str, int]  # incidents by kind
    worst: str  # worst incident, e.g. "spike at 1,234 (z 14, x2.1)", or ""
    top_cause: str  # "bad_batch 0.82", or ""


def summary_rows(fleet: Fleet) -> list[SummaryRow]:
    """One row per run, worst first: by verdict, then number of loss incidents, then the
    size of the worst one."""
    from spikelens.report._common import verdict_rank

    keys = [_key(p.thin) for p in fleet.parts]
    shorts = short_names(keys)
    rows: list[tuple[tuple[int, int, float, int], SummaryRow]] = []
    for i, (part, key, short) in enumerate(zip(fleet.parts, keys, shorts, strict=True)):
        incidents = [f for f in part.report.findings
                     if f.event.metric == "loss" and f.event.kind in INCIDENT_KINDS]
        counts = {k: sum(1 for f in incidents if f.event.kind == k) for k in INCIDENT_KINDS}
        worst_f = max(incidents, key=_severity, default=None)
        worst = ""
        top = ""
        if worst_f is not None:
            ev = worst_f.event
            worst = f"{ev.kind} at {ev.peak_step:,} (z {ev.size.z:.3g}, x{ev.size.ratio:.3g})"
            if worst_f.causes:
                best = max(worst_f.causes, key=lambda c: c.score)
                top = f"{best.cause} {best.score:.2f}"
        size = _severity(worst_f) if worst_f is not None else (0, 0.0)
        rows.append(((verdict_rank(part.report.verdict), -len(incidents), -size[1], i),
                     SummaryRow(run=key, short=short, verdict=part.report.verdict,
                                counts=counts, worst=worst, top_cause=top)))
    rows.sort(key=lambda t: t[0])
    return [r for _, r in rows]


def _severity(f: Any) -> tuple[int, float]:
    import math

    ev = f.event
    order = {"nonfinite": 3, "divergence": 2, "spike": 1}
    z = ev.size.z if math.isfinite(ev.size.z) else 1e300
    return (order.get(ev.kind, 0), z)


def short_names(keys: Sequence[str]) -> list[str]:
    """The shortest trailing path parts that still tell the runs apart
    (`sweep/run-17/metrics.jsonl` -> `run-17/metrics.jsonl`)."""
    split = [k.rstrip("/").split("/") for k in keys]
    out = []
    for parts in split:
        for n in range(1, len(parts) + 1):
            tail = parts[-n:]
            if sum(1 for o in split if o[-n:] == tail) == 1:
                break
        out.append("/".join(tail))
    return out


def summary_text(fleet: Fleet, top: int = 20) -> str:
    """The fleet summary for a terminal: the `top` worst runs, then a count of the rest."""
    rows = summary_rows(fleet)
    if not rows:
        return ""
    from collections import Counter

    verdicts = Counter(r.verdict for r in rows)
    head = ", ".join(f"{n} {v}" for v, n in verdicts.most_common())
    lines = [f"Fleet: {len(rows)} runs ({head})", ""]
    width = min(48, max(len(r.short) for r in rows[:top]))
    lines.append(f"{'run':<{width}}  {'verdict':<11} {'spk':>4} {'div':>4} {'nf':>4}  "
                 "worst incident / top cause")
    for r in rows[:top]:
        name = r.short if len(r.short) <= width else "..." + r.short[-(width - 3):]
        tail = r.worst + (f"  [{r.top_cause}]" if r.top_cause else "")
        lines.append(f"{name:<{width}}  {r.verdict:<11} {r.counts['spike']:>4} "
                     f"{r.counts['divergence']:>4} {r.counts['nonfinite']:>4}  {tail}")
    if len(rows) > top:
        rest = Counter(r.verdict for r in rows[top:])
        lines.append(f"... and {len(rows) - top} more runs ("
                     + ", ".join(f"{n} {v}" for v, n in rest.most_common()) + ")")
    return "\n".join(lines) + "\n" + suspects_text(fleet)


def suspects_text(fleet: Fleet) -> str:
    """The suspect data ranges for a terminal ("" when there are none)."""
    suspects = suspect_ranges(fleet)
    if not suspects:
        return ""
    lines = ["", "Suspect data ranges (incidents recurring in >= "
             f"{SUSPECT_MIN_RUNS} runs that differ in seed or config):"]
    for s in suspects:
        lines.append(f"  {s.axis} {s.position:,.0f}: {len(s.runs)} runs: "
                     + ", ".join(short_names(list(s.runs))))
    return "\n".join(lines) + "\n"


# --- suspect data ranges ----------------------------------------------------------------

#: A data range is suspect when incidents recur there in at least this many runs.
SUSPECT_MIN_RUNS = 3


@dataclass(frozen=True)
class SuspectRange:
    axis: str  # "tokens", "samples" or "step"
    position: float
    runs: tuple[str, ...]  # run keys
    distinct_configs: int  # how many distinct (seed, config) among them
    unknown_configs: int  # runs whose log carries no params


def suspect_ranges(fleet: Fleet) -> list[SuspectRange]:
    """Recurrences in >= SUSPECT_MIN_RUNS runs that differ in seed or config: the same data
    hurting differently set-up runs points at the data, not the run. Runs with identical
    params (a re-run of the same seed and config) count once, since a deterministic re-run
    repeats its own spikes; a run whose log carries no params counts as its own config."""
    params = {_key(p.thin): p.thin.params for p in fleet.parts}
    out: list[SuspectRange] = []
    for rec in fleet.report.recurrences:
        runs = tuple(dict.fromkeys(k for k, _ in rec.members))
        sigs: set[tuple[object, ...]] = set()
        unknown = 0
        for k in runs:
            prm = params.get(k) or {}
            if not prm:
                unknown += 1
                sigs.add(("?", k))
            else:
                sigs.add(tuple(sorted((str(a), repr(b)) for a, b in prm.items())))
        if len(sigs) >= SUSPECT_MIN_RUNS:
            out.append(SuspectRange(axis=rec.axis, position=rec.position, runs=runs,
                                    distinct_configs=len(sigs), unknown_configs=unknown))
    return out

"""MLflow tracking stores, read without the mlflow package: the file store (`mlruns/`, an
experiment directory in it, or one run directory) and the SQLite tracking database
(`mlflow.db`, any SQLite file with MLflow's `runs` and `metrics` tables), through the standard
library's sqlite3 opened read-only. Each MLflow run is one spikelens run, named by its run name
(`Run.params` holds `run_id` and `experiment`); runs in the deleted lifecycle stage (and
`.trash/`) are left out. A metric is a series of `(timestamp, value, step)`: the file store
writes one line `timestamp value step` per point in `metrics/<key>` (keys with `/` are
subdirectories), the database one row in `metrics` (a NaN as `is_nan = 1`, an infinity as
the largest double, which is read back as infinity). Points are put in the order they were
logged (timestamp, then file order) and points with the same step in a row of that order
become one table row, so a resumed run that logs steps again shows up as a restart. Params
(`params/<key>`, the `params` table) go to `Run.params` under canonical keys
(`readers/_params.py`); user tags (not `mlflow.*`) under `params["tags"]`."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spikelens.errors import LogFormatError
from spikelens.readers import READERS
from spikelens.readers._base import RawLog
from spikelens.readers._params import canonical_params

_SQLITE_MAGIC = b"SQLite format 3\x00"
_DBL_MAX = np.finfo(np.float64).max


@dataclass
class _Points:
    """The points of one run, long form, in the order they were read."""

    keys: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    times: list[np.ndarray] = field(default_factory=list)
    steps: list[np.ndarray] = field(default_factory=list)
    nans: list[np.ndarray] = field(default_factory=list)


def _table(points: _Points) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Long points -> one row per run of equal steps in logging order, a column per key
    (the last write wins inside a row), and the logged-NaN masks."""
    if not points.keys:
        return pd.DataFrame({"step": np.empty(0, np.int64)}), {}
    key = np.concatenate(points.keys)
    val = np.concatenate(points.values)
    ts = np.concatenate(points.times)
    st = np.concatenate(points.steps)
    nan = np.concatenate(points.nans)
    order = np.lexsort((np.arange(len(ts)), ts))  # timestamp, then read order
    key, val, ts, st, nan = key[order], val[order], ts[order], st[order], nan[order]
    # points of one log call share a step; several keys logged at one step at slightly
    # different times still form one row as long as no other step comes between them
    new = np.ones(len(st), dtype=bool)
    new[1:] = st[1:] != st[:-1]
    row = np.cumsum(new) - 1
    nrows = int(row[-1]) + 1 if len(row) else 0
    codes, names = pd.factorize(key)
    data: dict[str, np.ndarray] = {"step": st[new].astype(np.int64)}
    masks: dict[str, np.ndarray] = {}
    for c, name in enumerate(names):
        m = codes == c
        col = np.full(nrows, np.nan)
        col[row[m]] = val[m]  # later points of a row overwrite earlier ones
        data[str(name)] = col
        nm = m & nan
        if nm.any():
            mask = np.zeros(nrows, dtype=bool)
            mask[row[nm]] = True
            # a later finite write in the same row wins over the NaN
            mask &= np.isnan(col)
            if mask.any():
                masks[str(name)] = mask
    return pd.DataFrame(data, copy=False), masks


def _from_db_value(val: np.ndarray) -> np.ndarray:
    # MLflow's SQL store writes +-inf as +-DBL_MAX (SQL has no infinity)
    out = val.astype(np.float64, copy=True)
    out[out == _DBL_MAX] = np.inf
    out[out == -_DBL_MAX] = -np.inf
    return out


def _params(params: dict[str, str], tags: dict[str, str], run_id: str,
            experiment: str | None) -> dict[str, Any]:
    out = canonical_params(params)
    user_tags = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
    if user_tags:
        out["tags"] = user_tags
    out["run_id"] = run_id
    if experiment is not None:
        out["experiment"] = experiment
    return out


# ---------------------------------------------------------------------------------------------
# file store


def _meta(path: Path) -> dict[str, str]:
    """The flat `key: value` lines of an MLflow meta.yaml (no YAML library needed)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if not line or line[0] in " -#" or ":" not in line:
            continue
        k, _, v = line.partition(":")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def _is_run_dir(p: Path) -> bool:
    return (p / "meta.yaml").is_file() and (p / "metrics").is_dir()


def _is_experiment_dir(p: Path) -> bool:
    if not (p / "meta.yaml").is_file() or (p / "metrics").is_dir():
        return False
    try:
        return any(_is_run_dir(c) for c in p.iterdir() if c.is_dir())
    except OSError:
        return False


def run_dirs(path: Path) -> list[Path]:
    """The run directories `path` stands for: a run, an experiment, or a whole `mlruns/`."""
    if _is_run_dir(path):
        return [path]
    exps = [path] if _is_experiment_dir(path) else sorted(
        c for c in _children(path) if c.name != ".trash" and _is_experiment_dir(c))
    out: list[Path] = []
    for e in exps:
        out.extend(sorted(c for c in _children(e) if _is_run_dir(c)))
    return out


def _children(p: Path) -> list[Path]:
    try:
        return [c for c in p.iterdir() if c.is_dir()]
    except OSError:
        return []


def _small_files(d: Path) -> dict[str, str]:
    """`params/` or `tags/`: file name (keys with `/` are subdirectories) -> content."""
    out: dict[str, str] = {}
    if not d.is_dir():
        return out
    for f in sorted(d.rglob("*")):
        if f.is_file():
            try:
                out[f.relative_to(d).as_posix()] = f.read_text(encoding="utf-8",
                                                               errors="replace")
            except OSError:
                continue
    return out


def _metric_file(f: Path, key: str, pts: _Points, warnings: list[str]) -> None:
    try:
        text = f.read_bytes()
    except OSError as exc:
        raise LogFormatError(f"{f}: cannot read ({exc.strerror or exc})") from None
    lines = text.splitlines()
    ts: list[float] = []
    vals: list[float] = []
    steps: list[float] = []
    bad: list[int] = []
    for i, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            t = float(parts[0])
            v = float(parts[1])
            s = float(parts[2]) if len(parts) > 2 else 0.0
        except (ValueError, IndexError):
            bad.append(i)
            continue
        ts.append(t)
        vals.append(v)
        steps.append(s)
    if bad:
        shown = ", ".join(map(str, bad[:3])) + (", ..." if len(bad) > 3 else "")
        warnings.append(f"{f}: skipped {len(bad)} line(s) that are not `timestamp value step` "
                        f"(line{'s' if len(bad) > 1 else ''} {shown})")
    arr = np.asarray(vals, dtype=np.float64)
    pts.keys.append(np.full(len(arr), key, dtype=object))
    pts.values.append(arr)
    pts.times.append(np.asarray(ts, dtype=np.float64))
    pts.steps.append(np.asarray(steps, dtype=np.float64))
    pts.nans.append(np.isnan(arr))


def _read_run_dir(d: Path) -> RawLog | None:
    meta = _meta(d / "meta.yaml")
    if meta.get("lifecycle_stage") == "deleted":
        return None
    exp_meta = _meta(d.parent / "meta.yaml")
    run_id = meta.get("run_id") or d.name
    tags = _small_files(d / "tags")
    name = meta.get("run_name") or tags.get("mlflow.runName") or run_id
    warnings: list[str] = []
    pts = _Points()
    mdir = d / "metrics"
    for f in sorted(mdir.rglob("*")):
        if f.is_file():
            _metric_file(f, f.relative_to(mdir).as_posix(), pts, warnings)
    frame, masks = _table(pts)
    params = _params(_small_files(d / "params"), tags, run_id, exp_meta.get("name"))
    return RawLog(frame=frame, step_column="step", nan_mask=masks, warnings=warnings,
                  name=name, params=params, row_lines=np.arange(1, len(frame) + 1),
                  row_unit="row")


# ---------------------------------------------------------------------------------------------
# SQLite tracking database


def _connect(path: Path) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        con.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise LogFormatError(f"{path}: cannot open as an SQLite database ({exc})") from None
    return con


def _has_mlflow_tables(path: Path) -> bool:
    try:
        con = _connect(path)
    except LogFormatError:
        return False
    try:
        names = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    except sqlite3.Error:
        return False
    finally:
        con.close()
    return {"runs", "metrics", "params"} <= names


def _read_db(path: Path) -> list[RawLog]:
    con = _connect(path)
    try:
        return _db_runs(con, path)
    except sqlite3.Error as exc:
        raise LogFormatError(f"{path}: not a readable MLflow database ({exc})") from None
    finally:
        con.close()


def _db_runs(con: sqlite3.Connection, path: Path) -> list[RawLog]:
    runs = con.execute(
        "select r.run_uuid, r.name, e.name from runs r left join experiments e "
        "on r.experiment_id = e.experiment_id where r.lifecycle_stage != 'deleted' "
        "order by r.start_time, r.run_uuid").fetchall()
    if not runs:
        raise LogFormatError(f"{path}: MLflow database with no runs in it")
    out: list[RawLog] = []
    for run_id, name, exp in runs:
        rows = con.execute(
            "select key, value, timestamp, step, is_nan from metrics where run_uuid = ?",
            (run_id,)).fetchall()
        pts = _Points()
        if rows:
            arr = list(zip(*rows, strict=True))
            is_nan = np.asarray(arr[4], dtype=bool)
            val = _from_db_value(np.asarray(arr[1], dtype=np.float64))
            val[is_nan] = np.nan
            pts.keys.append(np.asarray(arr[0], dtype=object))
            pts.values.append(val)
            pts.times.append(np.asarray(arr[2], dtype=np.float64))
            pts.steps.append(np.asarray(arr[3], dtype=np.float64))
            pts.nans.append(is_nan)
        params = dict(con.execute("select key, value from params where run_uuid = ?",
                                  (run_id,)).fetchall())
        tags = dict(con.execute("select key, value from tags where run_uuid = ?",
                                (run_id,)).fetchall())
        frame, masks = _table(pts)
        out.append(RawLog(frame=frame, step_column="step", nan_mask=masks,
                          name=name or tags.get("mlflow.runName") or run_id,
                          params=_params(params, tags, run_id, exp),
                          row_lines=np.arange(1, len(frame) + 1), row_unit="row"))
    return out


# ---------------------------------------------------------------------------------------------


class MlflowReader:
    """MLflow's file store (`mlruns/`) and SQLite tracking database (`mlflow.db`)."""

    name = "mlflow"
    description = "MLflow tracking: file store (mlruns/, an experiment or a run) or mlflow.db"
    reads_directories = True

    def sniff(self, path: Path, head: bytes) -> float:
        if path.is_dir():
            try:
                return 0.96 if run_dirs(path) else 0.0
            except OSError:
                return 0.0
        if head.startswith(_SQLITE_MAGIC):
            return 1.0 if _has_mlflow_tables(path) else 0.0
        return 0.0

    def read(self, path: Path) -> list[RawLog]:
        if path.is_dir():
            dirs = run_dirs(path)
            if not dirs:
                raise LogFormatError(f"{path}: no MLflow runs (run directories with "
                                     "meta.yaml and metrics/) in this directory")
            raws = [r for r in (_read_run_dir(d) for d in dirs) if r is not None]
            if not raws:
                raise LogFormatError(f"{path}: every MLflow run here is deleted")
            empty = [r for r in raws if len(r.frame) == 0]
            out = [r for r in raws if len(r.frame)]
            if not out:
                raise LogFormatError(f"{path}: no metrics logged in any MLflow run")
            if empty:
                out[0].warnings.append(f"{path}: {len(empty)} run(s) without any metric left "
                                       f"out ({', '.join(str(r.name) for r in empty[:3])})")
            return out
        with open(path, "rb") as fh:
            if not fh.read(16).startswith(_SQLITE_MAGIC):
                raise LogFormatError(f"{path}: not an SQLite database")
        raws = _read_db(path)
        out = [r for r in raws if len(r.frame)]
        if not out:
            raise LogFormatError(f"{path}: no metrics logged in any MLflow run")
        skipped = len(raws) - len(out)
        if skipped:
            out[0].warnings.append(f"{path}: {skipped} run(s) without any metric left out")
        return out


READERS.add("mlflow", MlflowReader())

__all__ = ["MlflowReader", "run_dirs"]

"""Parquet tables of a fleet, for pandas, DuckDB or a warehouse: `incidents` (one row per event
of every run), `runs` (one row per run, with the columns of the fleet summary) and `suspects`
(data ranges where incidents recur in several runs that differ in seed or config). Parquet is
binary and holds several tables, so this is not a text `Renderer`: it registers a table writer
under `parquet` in `TABLE_WRITERS`, which the CLI adds to its `--format` choices; the writer
takes a target that is a directory (the three tables as `incidents.parquet`, `runs.parquet`,
`suspects.parquet` in it) or a `.parquet` file (the incidents there, `runs.parquet` and
`suspects.parquet` beside it). The schemas are fixed (typed even when a table is empty) and
documented in docs/scale.md; floats are not rounded, non-finite sizes stay +inf."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from spikelens.errors import ConfigError
from spikelens.model import INCIDENT_KINDS
from spikelens.registry import Registry

if TYPE_CHECKING:
    import pyarrow as pa

    from spikelens.fleet import Fleet


class TableWriter(Protocol):
    def __call__(self, fleet: Fleet, target: Path) -> list[Path]: ...


TABLE_WRITERS: Registry[TableWriter] = Registry("table format")


def _schemas() -> dict[str, pa.Schema]:
    import pyarrow as pa

    f64, i64, s, b = pa.float64(), pa.int64(), pa.string(), pa.bool_()
    return {
        "incidents": pa.schema([
            ("run", s), ("source", s), ("name", s), ("verdict", s), ("kind", s),
            ("metric", s), ("incident", b), ("start_step", i64), ("peak_step", i64),
            ("end_step", i64), ("peak_tokens", f64), ("peak_samples", f64), ("z", f64),
            ("ratio", f64), ("baseline", f64), ("recovered", b), ("recovery_steps", i64),
            ("top_cause", s), ("top_score", f64), ("causes", s), ("recurs_in_runs", i64),
            ("diverged", b),
        ]),
        "runs": pa.schema([
            ("run", s), ("short_name", s), ("source", s), ("name", s), ("format", s),
            ("verdict", s), ("first_step", i64), ("last_step", i64), ("logged_steps", i64),
            ("interval", i64), ("spikes", i64), ("divergences", i64), ("nonfinite", i64),
            ("oscillations", i64), ("worst_kind", s), ("worst_peak_step", i64),
            ("worst_z", f64), ("worst_ratio", f64), ("top_cause", s), ("top_score", f64),
            ("warnings", i64), ("seed", s), ("params", s), ("rank", i64),
        ]),
        "suspects": pa.schema([
            ("axis", s), ("position", f64), ("runs", pa.list_(s)), ("n_runs", i64),
            ("distinct_configs", i64), ("unknown_configs", i64),
        ]),
    }


def tables(fleet: Fleet) -> dict[str, pa.Table]:
    """The three tables (pyarrow), schemas as documented."""
    import pyarrow as pa

    from spikelens.fleet import _key, short_names, summary_rows, suspect_ranges

    schemas = _schemas()
    keys = [_key(p.thin) for p in fleet.parts]
    recur_count: dict[tuple[str, int], int] = {}
    for rec in fleet.report.recurrences:
        for k, step in rec.members:
            recur_count[(k, step)] = len(rec.members)
    inc: list[dict[str, Any]] = []
    for part, key in zip(fleet.parts, keys, strict=True):
        rep = part.report
        positions = part.positions or ((None, None),) * len(rep.findings)
        for f, (tok, smp) in zip(rep.findings, positions, strict=True):
            ev = f.event
            causes = sorted(f.causes, key=lambda c: -c.score)
            inc.append({
                "run": key, "source": rep.source, "name": rep.name, "verdict": rep.verdict,
                "kind": ev.kind, "metric": ev.metric,
                "incident": ev.metric == "loss" and ev.kind in INCIDENT_KINDS,
                "start_step": ev.start_step, "peak_step": ev.peak_step,
                "end_step": ev.end_step, "peak_tokens": tok, "peak_samples": smp,
                "z": float(ev.size.z), "ratio": float(ev.size.ratio),
                "baseline": ev.baseline, "recovered": ev.recovered,
                "recovery_steps": ev.recovery_steps,
                "top_cause": causes[0].cause if causes else None,
                "top_score": float(causes[0].score) if causes else None,
                "causes": json.dumps({c.cause: round(float(c.score), 4) for c in causes}),
                "recurs_in_runs": recur_count.get((key, ev.peak_step), 0) or None,
                "diverged": ev.diverged,
            })
    rank = {r.run: i + 1 for i, r in enumerate(summary_rows(fleet))}
    shorts = dict(zip(keys, short_names(keys), strict=True))
    runs: list[dict[str, Any]] = []
    for part, key in zip(fleet.parts, keys, strict=True):
        rep = part.report
        incidents = [f for f in rep.findings
                     if f.event.metric == "loss" and f.event.kind in INCIDENT_KINDS]
        order = {"nonfinite": 3, "divergence": 2, "spike": 1}
        worst = max(incidents, key=lambda f: (order.get(f.event.kind, 0),
                                              _finite(f.event.size.z)), default=None)
        top = max(worst.causes, key=lambda c: c.score) if worst and worst.causes else None
        prm = dict(part.thin.params)
        runs.append({
            "run": key, "short_name": shorts[key], "source": rep.source, "name": rep.name,
            "format": rep.format, "verdict": rep.verdict, "first_step": rep.steps.first,
            "last_step": rep.steps.last, "logged_steps": rep.steps.count,
            "interval": rep.steps.interval,
            "spikes": sum(1 for f in incidents if f.event.kind == "spike"),
            "divergences": sum(1 for f in incidents if f.event.kind == "divergence"),
            "nonfinite": sum(1 for f in incidents if f.event.kind == "nonfinite"),
            "oscillations": sum(1 for f in rep.findings if f.event.kind == "oscillation"
                                and f.event.metric == "loss"),
            "worst_kind": worst.event.kind if worst else None,
            "worst_peak_step": worst.event.peak_step if worst else None,
            "worst_z": float(worst.event.size.z) if worst else None,
            "worst_ratio": float(worst.event.size.ratio) if worst else None,
            "top_cause": top.cause if top else None,
            "top_score": float(top.score) if top else None,
            "warnings": len(rep.warnings),
            "seed": None if prm.get("seed") is None else str(prm["seed"]),
            "params": json.dumps(prm, default=str, sort_keys=True) if prm else None,
            "rank": rank.get(key),
        })
    sus = [{"axis": s.axis, "position": s.position, "runs": list(s.runs),
            "n_runs": len(s.runs), "distinct_configs": s.distinct_configs,
            "unknown_configs": s.unknown_configs} for s in suspect_ranges(fleet)]
    return {name: pa.Table.from_pylist(rows, schema=schemas[name])
            for name, rows in (("incidents", inc), ("runs", runs), ("suspects", sus))}


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 1e300


def targets(target: Path) -> dict[str, Path]:
    """Where each table goes for `--output target`."""
    if target.suffix.lower() == ".parquet" and not target.is_dir():
        if target.stem in ("runs", "suspects"):
            raise ConfigError(f"{target}: name the incidents file (e.g. incidents.parquet) "
                              "or a directory; runs.parquet and suspects.parquet go beside it")
        return {"incidents": target, "runs": target.with_name("runs.parquet"),
                "suspects": target.with_name("suspects.parquet")}
    return {name: target / f"{name}.parquet" for name in ("incidents", "runs", "suspects")}


def check_target(target: Path | None) -> None:
    """Refuse a bad target before the analysis."""
    if target is None:
        raise ConfigError("--format parquet writes files: give --output DIR or "
                          "--output incidents.parquet")
    paths = targets(target)
    parent = paths["incidents"].parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{parent}: not a directory")
    if not parent.exists() and not parent.parent.is_dir():
        raise ConfigError(f"{target}: no such directory {parent.parent}")


@TABLE_WRITERS.register("parquet")
def write(fleet: Fleet, target: Path) -> list[Path]:
    import pyarrow.parquet as pq

    paths = targets(target)
    written: list[Path] = []
    try:
        paths["incidents"].parent.mkdir(parents=True, exist_ok=True)
        for name, table in tables(fleet).items():
            pq.write_table(table, paths[name])
            written.append(paths[name])
    except OSError as exc:
        raise ConfigError(f"{target}: cannot write ({exc.strerror or exc})") from None
    return written


def names() -> Sequence[str]:
    return TABLE_WRITERS.names()

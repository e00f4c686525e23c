"""The JSON report: the machine contract that downstream tools gate on, described by
`docs/report.schema.json`. Key order is fixed (the contract's keys first, then the optional
extras, always present and null when they do not apply), numbers are written at full
precision (a loss scale of 1048576 is 1048576, a token offset is exact: rounding is for the
text outputs only), and non-finite floats (the infinite z of a non-finite event) are null,
because JSON has no Infinity and a string would break every consumer that reads the field
as a number."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from spikelens.model import Event, Finding, Recurrence, Report, Run, RunReport
from spikelens.report._common import RENDERERS, RenderOptions, full_float, jsonable, ranked_causes


def _event(finding: Finding) -> dict[str, Any]:
    ev: Event = finding.event
    return {
        "kind": ev.kind,
        "metric": ev.metric,
        "start_step": int(ev.start_step),
        "peak_step": int(ev.peak_step),
        "end_step": int(ev.end_step),
        "recovered": bool(ev.recovered),
        "size": {"z": full_float(ev.size.z), "ratio": full_float(ev.size.ratio)},
        "causes": [
            {
                "cause": c.cause,
                "score": full_float(c.score),
                "summary": c.summary,
                "evidence": jsonable(c.evidence),
                "remedy": c.remedy,
            }
            for c in ranked_causes(finding)
        ],
        # extras after the contract's keys
        "recovery_steps": None if ev.recovery_steps is None else int(ev.recovery_steps),
        "segment": int(ev.segment),
        "baseline": full_float(ev.baseline),
        "period": full_float(ev.period),
        "amplitude": full_float(ev.amplitude),
        "first_nonfinite": ev.first_nonfinite,
        "diverged": bool(ev.diverged),
        "rolled_back_at": None if ev.rolled_back_at is None else int(ev.rolled_back_at),
        "lr_corr": full_float(ev.lr_corr),
        "batch_size": full_float(ev.batch_size),
        "source": ev.source,
        "detail": ev.detail,
        "skipped_causes": [{"cause": s.cause, "reason": s.reason} for s in finding.skipped],
    }


def _run(run: RunReport) -> dict[str, Any]:
    return {
        "source": run.source,
        "format": run.format,
        "verdict": run.verdict,
        "steps": {
            "first": int(run.steps.first),
            "last": int(run.steps.last),
            "count": int(run.steps.count),
            "interval": int(run.steps.interval),
        },
        "metrics": {str(k): str(v) for k, v in run.metrics.items()},
        "events": [_event(f) for f in run.findings],
        "warnings": [str(w) for w in run.warnings],
        "name": run.name,
    }


def _position(x: float) -> float | int | None:
    # a step or token offset is an integer: write it as one, exactly
    xf = full_float(x)
    return int(xf) if xf is not None and xf.is_integer() and abs(xf) < 2**63 else xf


def _recurrence(rec: Recurrence) -> dict[str, Any]:
    return {
        "axis": rec.axis,
        "position": _position(rec.position),
        "members": [{"source": src, "peak_step": int(step)} for src, step in rec.members],
        "differ": list(rec.differ),
    }


def report_dict(report: Report) -> dict[str, Any]:
    """The report as the plain dict that the JSON output dumps (key order included)."""
    return {
        "schema_version": int(report.schema_version),
        "runs": [_run(r) for r in report.runs],
        "recurrences": [_recurrence(r) for r in report.recurrences],
    }


@RENDERERS.register("json")
def render(report: Report, runs: Sequence[Run | None], options: RenderOptions) -> str:
    # allow_nan=False: a non-finite float that slipped past rounding is a bug, not output
    return json.dumps(report_dict(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

"""The JSON report: the machine contract that downstream tools gate on, described by
`docs/report.schema.json`. Key order is fixed (the contract's keys first, then the optional
extras, always present and null when they do not apply), floats are rounded to six
significant digits so two runs of the tool diff cleanly, and non-finite floats (the infinite
z of a non-finite event) are written as null, because JSON has no Infinity and a string
would break every consumer that reads the field as a number."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from spikelens.model import Event, Finding, Recurrence, Report, Run, RunReport
from spikelens.report._common import RENDERERS, RenderOptions, jsonable, ranked_causes, round_sig


def _event(finding: Finding) -> dict[str, Any]:
    ev: Event = finding.event
    return {
        "kind": ev.kind,
        "metric": ev.metric,
        "start_step": int(ev.start_step),
        "peak_step": int(ev.peak_step),
        "end_step": int(ev.end_step),
        "recovered": bool(ev.recovered),
        "size": {"z": round_sig(ev.size.z), "ratio": round_sig(ev.size.ratio)},
        "causes": [
            {
                "cause": c.cause,
                "score": round_sig(c.score, 3),
                "summary": c.summary,
                "evidence": jsonable(c.evidence),
                "remedy": c.remedy,
            }
            for c in ranked_causes(finding)
        ],
        # extras after the contract's keys
        "recovery_steps": None if ev.recovery_steps is None else int(ev.recovery_steps),
        "segment": int(ev.segment),
        "baseline": None if ev.baseline is None else round_sig(ev.baseline),
        "period": None if ev.period is None else round_sig(ev.period),
        "amplitude": None if ev.amplitude is None else round_sig(ev.amplitude),
        "first_nonfinite": ev.first_nonfinite,
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


def _recurrence(rec: Recurrence) -> dict[str, Any]:
    return {
        "axis": rec.axis,
        "position": round_sig(rec.position),
        "members": [{"source": src, "peak_step": int(step)} for src, step in rec.members],
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

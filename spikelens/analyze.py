"""Run -> Report: the analysis pipeline in one place. For each run the detector finds the
incidents and the verdict; across runs, events that recur at the same point of the data
stream are aligned (a recurrence is evidence for a bad batch); then every incident gets its
causes ranked. The result holds no DataFrame, so it can be rendered or dumped as JSON."""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING

from spikelens.model import Config, Finding, Recurrence, Report, Run, RunReport, StepInfo

if TYPE_CHECKING:
    from spikelens.detect import Detection


def _step_info(run: Run) -> StepInfo:
    steps = run.steps
    if len(steps) == 0:
        return StepInfo(first=0, last=0, count=0, interval=run.interval)
    return StepInfo(first=int(steps[0]), last=int(steps[-1]), count=int(len(steps)),
                    interval=run.interval)


def _recurrent_outliers(runs: Sequence[Run], cfg: Config,
                        detections: Sequence[Detection] | None = None) -> dict[int, set[int]]:
    """Per run, the steps of one-point outliers that coincide with other runs' beyond chance
    (a batch that every run read at the same step). `detections`: the runs' detections
    without recurrent steps, whose point z is reused."""
    if len(runs) < 2:
        return {}
    from spikelens.detect import point_z
    from spikelens.detect.joint import find_coincidences

    pzs = []
    for i, r in enumerate(runs):
        kept = detections[i].point_z if detections is not None else None
        pzs.append(kept if kept is not None else point_z(r, cfg))
    found = find_coincidences(pzs, cfg.joint_min_z, cfg.joint_alpha, cfg.joint_tolerance)
    out: dict[int, set[int]] = {}
    for c in found:
        for i, step in c.members:
            out.setdefault(i, set()).add(step)
    return out


def report_of(run: Run, detection: Detection, cfg: Config,
              recurrences: Sequence[Recurrence] = ()) -> RunReport:
    """One run's report: every loss incident of `detection` explained, with the recurrence
    that holds it (if any) as evidence for a bad batch."""
    from spikelens.align import recurrence_for
    from spikelens.causes import explain

    findings: list[Finding] = []
    for ev in detection.events:
        if ev.kind == "stall" or ev.metric != "loss":
            findings.append(Finding(event=ev))
            continue
        findings.append(
            explain(run, ev, detection.events, cfg, recurrence_for(recurrences, run, ev))
        )
    return RunReport(
        source=run.source,
        format=run.format,
        verdict=detection.verdict,
        steps=_step_info(run),
        metrics=dict(run.roles),
        findings=tuple(findings),
        warnings=tuple(run.warnings) + tuple(detection.notes),
        name=run.name,
    )


def analyze(runs: Run | Sequence[Run], config: Config | None = None) -> Report:
    """Detect, align across runs and explain. Pure and deterministic. (`spikelens.fleet`
    computes the same report from many logs without holding them all in one process.)"""
    from spikelens.align import find_recurrences
    from spikelens.detect import detect

    cfg = config or Config()
    run_list = [runs] if isinstance(runs, Run) else list(runs)
    # detect every run once; the few whose outliers coincide with other runs' are detected
    # again with the lowered bar at those steps (the first detection's point z finds them)
    detections = [detect(run, cfg) for run in run_list]
    recurrent = _recurrent_outliers(run_list, cfg, detections)
    detections = [detect(run, cfg, recurrent[i]) if recurrent.get(i) else det
                  for i, (run, det) in enumerate(zip(run_list, detections, strict=True))]
    recs = find_recurrences(run_list, [d.events for d in detections]) if len(run_list) > 1 \
        else ()
    reports = [report_of(run, det, cfg, recs) for run, det in zip(run_list, detections,
                                                                   strict=True)]
    return Report(runs=tuple(reports), recurrences=tuple(recs))


class _CallableModule(types.ModuleType):
    """This module, callable as its `analyze`. The package exposes the function as
    `spikelens.analyze` (lazily, `spikelens/__init__.py`), but importing this module first
    (`import spikelens.analyze`, or anything that does, such as `spikelens.cli` or the fleet)
    makes the package's attribute of that name the module, and `spikelens.analyze(run)` then
    failed with "'module' object is not callable". Calling the module runs the function, so
    the documented call works whichever of the two the name holds."""

    def __call__(self, runs: Run | Sequence[Run], config: Config | None = None) -> Report:
        return analyze(runs, config)


sys.modules[__name__].__class__ = _CallableModule

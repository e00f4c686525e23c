"""A loss that climbs and goes non-finite at the top of its climb blew up once: one incident
(non-finite, so the verdict and a `--fail-on nonfinite` gate still say NaN), starting where
the climb started, with its causes read from before the climb; a divergence that had
levelled off before the loss went NaN keeps two incidents. Seeded signals with
known answers (realruns-v3's v3gx00 is the real case: docs/detection.md, seventh pass)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
from typer.testing import CliRunner

from spikelens.analyze import analyze
from spikelens.cli import app
from spikelens.detect import detect
from spikelens.model import INCIDENT_KINDS, Config, Run
from spikelens.readers._base import RawLog, build_run
from spikelens.watch import Watcher


def _run(seed: int, plateau: bool, n: int = 1600, at: int = 800, nan_from: int = 1500) -> Run:
    """A loss settling at 2 in 4 % noise; from `at` the LR grows e-fold every 80 steps and
    the loss with it (or, with `plateau`, climbs x3 in 100 steps and holds there); from
    `nan_from` the loss is NaN to the end."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    lr = np.where(t < at, 1e-3, 1e-3 * np.exp(np.clip((t - at) / 80, 0, None)))
    if plateau:
        lift = np.exp(np.clip((t - at) / 100, 0, 1) * np.log(3.0))
    else:
        lift = np.exp(np.clip((t - at) / 80, 0, None) * 0.5)
    loss = (2.0 + 3.0 * np.exp(-t / 150)) * lift * np.exp(rng.normal(0, 0.04, n))
    loss[nan_from:] = np.nan
    frame = pd.DataFrame({"step": np.arange(1, n + 1), "loss": loss, "lr": lr})
    # a logged NaN (the word in the file), not an empty cell
    logged = {"loss": np.arange(n) >= nan_from}
    return build_run(RawLog(frame=frame, nan_mask=logged), Path("climb.csv"), "csv")


def _incidents(run: Run) -> list[tuple[str, int, int]]:
    det = detect(run, Config())
    return [(e.kind, e.start_step, e.end_step) for e in det.events
            if e.metric == "loss" and e.kind in INCIDENT_KINDS]


def test_a_climb_into_nan_is_one_nonfinite_incident_from_the_climb() -> None:
    for seed in range(4):
        found = _incidents(_run(seed, plateau=False))
        assert len(found) == 1, (seed, found)
        kind, start, end = found[0]
        assert kind == "nonfinite" and 790 <= start <= 900 and end == 1600, (seed, found)


def test_its_report_names_the_nan_and_the_climb_cause_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy warning would reach the user's stderr
        rep = analyze(_run(0, plateau=False)).runs[0]
    assert rep.verdict == "nonfinite"
    (finding,) = [f for f in rep.findings if f.event.kind in INCIDENT_KINDS]
    assert finding.causes[0].cause == "lr_schedule"
    # the bad-batch reading says where the climb began, not "went NaN (from <that level>)"
    (bad,) = [c for c in finding.causes if c.cause == "bad_batch"]
    assert bad.summary.startswith("Loss climbed from 2.17 at step 819 and went NaN at step "
                                  "1501")
    assert any("and went non-finite at step 1501, at the top of its climb: one incident" in w
               for w in rep.warnings)


def test_a_divergence_that_levelled_off_before_the_nan_keeps_two_incidents() -> None:
    for seed in range(4):
        kinds = [k for k, _, _ in _incidents(_run(seed, plateau=True))]
        assert kinds == ["divergence", "nonfinite"], (seed, kinds)


def test_ci_gates_on_divergence_and_on_nonfinite_both_fail_and_the_json_says_diverged(
        tmp_path: Path) -> None:
    """A CI job gating on divergence must still fail on a run that diverged into NaN, now
    reported as one non-finite incident."""
    frame = _run(1, plateau=False).frame
    log = tmp_path / "climb.csv"
    log.write_text("step,loss,lr\n" + "".join(
        f"{s},{'nan' if np.isnan(v) else repr(float(v))},{lr!r}\n"
        for s, v, lr in zip(frame.index, frame["loss"], frame["lr"], strict=True)))
    runner = CliRunner()
    for gate in ("divergence", "nonfinite", "any"):
        done = runner.invoke(app, ["analyze", "--no-cache", str(log), "--fail-on", gate])
        assert done.exit_code == 1, (gate, done.output)
    assert runner.invoke(app, ["analyze", "--no-cache", str(log), "--fail-on",
                               "spike"]).exit_code == 0
    done = runner.invoke(app, ["analyze", "--no-cache", str(log), "--format", "json"])
    doc = json.loads(done.stdout)
    schema = json.loads((Path(__file__).resolve().parents[1] / "docs" /
                         "report.schema.json").read_text("utf-8"))
    jsonschema.Draft202012Validator(schema).validate(doc)
    (ev,) = doc["runs"][0]["events"]
    assert (ev["kind"], ev["diverged"], ev["end_step"]) == ("nonfinite", True, 1600)
    assert ev["detail"].endswith("went non-finite at step 1501, at the top of its climb: "
                                 "one incident")


def _csv_lines(run: Run) -> list[str]:
    frame = run.frame
    return [f"{s},{'nan' if np.isnan(v) else repr(float(v))},{lr!r}\n"
            for s, v, lr in zip(frame.index, frame["loss"], frame["lr"], strict=True)]


def test_watch_reports_the_climb_once_and_the_nan_at_its_step(tmp_path: Path) -> None:
    """`watch` on the log as it is written, 50 rows a poll: the divergence once (not again
    at every poll while its peak climbs), then the NaN at the step it happened, with the
    climb it ended; a --fail-on divergence gate stops on the first."""
    lines = _csv_lines(_run(0, plateau=False))
    log = tmp_path / "climb.csv"
    log.write_text("step,loss,lr\n")
    out = io.StringIO()
    w = Watcher([log], interval=1, out=out, err=io.StringIO(), fail_on=())
    w.poll_once()
    for i in range(0, len(lines), 50):
        with log.open("a") as fh:
            fh.write("".join(lines[i:i + 50]))
        w.poll_once()
    said = [line for line in out.getvalue().splitlines() if line.startswith("[")]
    assert [line.split("] ")[1].split(":")[0] for line in said] == ["divergence", "nonfinite"]
    assert "non-finite loss at step 1501 (after a climb from step " in said[1]
    assert "confirmed at step 1501, 0 logged point(s) after the peak" in said[1]
    assert "-" not in said[0].split("confirmed at step ")[1].split(" logged")[0]


def test_a_rolled_back_climb_into_nan_is_reported_at_the_nan(tmp_path: Path) -> None:
    """The run climbed into NaN and was resumed from a checkpoint inside the climb (step
    1401) with a healthy loss: the rolled-back segment's incident is the NaN at 1501, not
    dropped because the climb began in the history the replay kept."""
    first = _run(0, plateau=False).frame
    rng = np.random.default_rng(5)
    t2 = np.arange(1400, 2400, dtype=np.float64)
    replay = pd.DataFrame({"step": (t2 + 1).astype(np.int64),
                           "loss": (2.0 + 3.0 * np.exp(-t2 / 150)) *
                           np.exp(rng.normal(0, 0.04, len(t2))),
                           "lr": np.full(len(t2), 1e-3)})
    frame = pd.concat([first.reset_index(), replay], ignore_index=True)
    logged = {"loss": np.concatenate([np.isnan(first["loss"].to_numpy()),
                                      np.zeros(len(replay), dtype=bool)])}
    run = build_run(RawLog(frame=frame, nan_mask=logged), Path("resumed.csv"), "csv")
    assert [(s.resumed_at, s.last_step) for s in run.superseded] == [(1401, 1600)]
    det = detect(run, Config())
    nan = [e for e in det.events if e.kind == "nonfinite"]
    assert [(e.start_step, e.peak_step, e.rolled_back_at, e.diverged) for e in nan] == \
        [(1501, 1501, 1600, False)]
    assert det.verdict == "nonfinite"

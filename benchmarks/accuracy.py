"""Accuracy of the spikelens detector on labelled runs, side by side with the anchor rules.

    .venv/bin/python benchmarks/accuracy.py                 # tables
    .venv/bin/python benchmarks/accuracy.py --json          # machine-readable
    .venv/bin/python benchmarks/accuracy.py --calibrate     # where the thresholds come from
    .venv/bin/python benchmarks/accuracy.py --bench DIR --real DIR
    .venv/bin/python benchmarks/accuracy.py --cv --bench ../shared/bench --bench MORE_RUNS

The bench (default `../shared/bench` next to the repository) holds runs with injected faults
and `labels.json`. Every run is read with `spikelens.read_log` and scored:

* events: a detected loss incident (spike, divergence or non-finite on the loss; oscillation
  and grad-norm events are not incidents) matches a labelled event when their step windows
  overlap, one-to-one, in order; precision, recall and F1 over all runs;
* false incidents on the negative runs (no labelled event: clean, oscillating, benign fp16,
  clean resume);
* verdicts: a label verdict "none" expects "oscillating" for an oscillating run and "healthy"
  otherwise; a cause verdict expects an incident verdict (spiky, diverged or nonfinite); and
  how many oscillating runs came out "oscillating".

The anchor rules (`anchors.py`) run on the same loss series; their flagged steps, merged when
consecutive, are scored the same way. A second table checks the documented incidents in the
real logs (`../shared/real_logs`: found, and at which step) and counts incidents on the benign
look-alikes; on the modded-nanogpt logs, the consensus outliers a log owes (where it reads the
data in the consensus order) and how far each reported outlier stands above its
neighbourhood. `cause_accuracy` is the hook where the cause ranking (issue 4) is scored.
`--cv` cross-validates over every `--bench` given and the generated runs, with OLMo-core's
6-sigma rule as a comparison row and each labelled set scored on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from anchors import ANCHORS, flagged_spans  # noqa: E402

from spikelens import read_log  # noqa: E402
from spikelens.detect import Detection, detect, rise_statistics  # noqa: E402
from spikelens.detect.gradnorm import confirmed as grad_confirmed  # noqa: E402
from spikelens.model import INCIDENT_KINDS, Config, Run  # noqa: E402

SPIKELENS = "spikelens"
INCIDENT_VERDICTS = ("spiky", "diverged", "nonfinite")
Span = tuple[int, int]


# ---------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------
@dataclass
class Scores:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    negative_events: int = 0  # detected incidents on runs with no labelled event

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall,
                "f1": self.f1}


def match(detected: Sequence[Span], labelled: Sequence[Span]) -> int:
    """One-to-one matches between overlapping windows, labelled events taken in order."""
    used: set[int] = set()
    hits = 0
    for a, b in labelled:
        for j, (s, e) in enumerate(detected):
            if j not in used and s <= b and a <= e:
                used.add(j)
                hits += 1
                break
    return hits


def expected_verdict(label: dict[str, Any]) -> str:
    if label.get("expected_verdict"):  # generated runs: e.g. insufficient_data
        return str(label["expected_verdict"])
    if label["verdict"] == "none":
        return "oscillating" if label.get("oscillating") else "healthy"
    return "incident"


def verdict_ok(expected: str, got: str) -> bool:
    return got in INCIDENT_VERDICTS if expected == "incident" else got == expected


# ---------------------------------------------------------------------------------------
# the bench
# ---------------------------------------------------------------------------------------
@dataclass
class RunResult:
    run: str
    scenario: str
    labelled: list[Span]
    verdict: str
    expected: str
    incidents: list[dict[str, Any]]
    oscillations: list[dict[str, Any]]
    anchors: dict[str, list[Span]] = field(default_factory=dict)
    error: str | None = None


def run_path(bench: Path, label: dict[str, Any]) -> Path:
    """A resumed TensorBoard run is its folder; anything else is its file."""
    files: list[str] = label.get("files", [])
    if len(files) > 1:
        return (bench / str(files[0])).parent
    return bench / str(label["file"])


def incident_spans(det: Detection) -> list[Span]:
    return [(e.start_step, e.end_step) for e in det.events
            if e.metric == "loss" and e.kind in INCIDENT_KINDS]


def loss_array(run: Run) -> tuple[np.ndarray, np.ndarray]:
    s = run.series("loss")
    if s is None:
        return np.empty(0, np.int64), np.empty(0)
    return s.index.to_numpy().astype(np.int64), s.to_numpy(dtype=np.float64, na_value=np.nan)


def evaluate_bench(bench: Path, config: Config) -> tuple[list[RunResult], dict[str, Scores]]:
    labels: dict[str, dict[str, Any]] = json.loads((bench / "labels.json").read_text())
    results: list[RunResult] = []
    scores = {name: Scores() for name in (SPIKELENS, *ANCHORS)}
    for name, label in labels.items():
        labelled = [(int(e["start"]), int(e["end"])) for e in label["events"]]
        try:
            run = read_log(run_path(bench, label))
        except Exception as exc:  # a reader failure is a result too: every event missed
            results.append(RunResult(name, label.get("scenario", ""), labelled, "unread",
                                     expected_verdict(label), [], [], error=str(exc)))
            for sc in scores.values():
                sc.fn += len(labelled)
            continue
        det = detect(run, config)
        spans = {SPIKELENS: incident_spans(det)}
        steps, loss = loss_array(run)
        for aname, rule in ANCHORS.items():
            spans[aname] = flagged_spans(steps, rule(loss))
        for mname, found in spans.items():
            hit = match(found, labelled)
            sc = scores[mname]
            sc.tp += hit
            sc.fp += len(found) - hit
            sc.fn += len(labelled) - hit
            if not labelled:
                sc.negative_events += len(found)
        results.append(RunResult(
            run=name, scenario=label.get("scenario", ""), labelled=labelled,
            verdict=det.verdict, expected=expected_verdict(label),
            incidents=[_event_dict(e) for e in det.events
                       if e.metric == "loss" and e.kind in INCIDENT_KINDS],
            oscillations=[_event_dict(e) for e in det.events if e.kind == "oscillation"],
            anchors={k: v for k, v in spans.items() if k != SPIKELENS},
        ))
    return results, scores


def _event_dict(e: Any) -> dict[str, Any]:
    d = {"kind": e.kind, "start": e.start_step, "peak": e.peak_step, "end": e.end_step,
         "recovered": e.recovered, "ratio": e.size.ratio, "z": e.size.z}
    if e.period is not None:
        d["period"] = e.period
    if e.amplitude is not None:
        d["amplitude"] = e.amplitude
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}


# ---------------------------------------------------------------------------------------
# cause accuracy (issue 4)
# ---------------------------------------------------------------------------------------
#: Label causes that the tool names differently.
CAUSE_ALIASES = {"optimizer_eps": "optimizer_state", "numerical_nan": "numerical"}


def cause_accuracy(bench: Path, config: Config) -> dict[str, Any] | None:
    """Top-1 / top-2 accuracy of the ranked causes per labelled cause, and the confusion
    matrix (label cause -> top-1 cause), over labelled events that the detector found.

    This is the place where issue 4 is scored. It runs `spikelens.analyze(run)` on every
    positive run, pairs each labelled event with the finding whose window overlaps it
    (one-to-one), and compares the label's cause with the finding's ranked causes.
    """
    from spikelens.analyze import analyze

    labels: dict[str, dict[str, Any]] = json.loads((bench / "labels.json").read_text())
    per: dict[str, Counter[str]] = {}
    confusion: dict[str, Counter[str]] = {}
    for label in labels.values():
        if not label["events"]:
            continue
        try:
            report = analyze(read_log(run_path(bench, label)), config)
        except Exception as exc:  # noqa: BLE001 - report the failure, keep scoring
            return {"error": f"{label['file']}: {exc}"}
        findings = [f for f in report.runs[0].findings
                    if f.event.metric == "loss" and f.event.kind in INCIDENT_KINDS]
        used: set[int] = set()
        for ev in label["events"]:
            want = CAUSE_ALIASES.get(ev["cause"], ev["cause"])
            c = per.setdefault(want, Counter())
            c["events"] += 1
            for j, f in enumerate(findings):
                if j in used or not (f.event.start_step <= ev["end"]
                                     and ev["start"] <= f.event.end_step):
                    continue
                used.add(j)
                ranked = [e.cause for e in sorted(f.causes, key=lambda e: -e.score)]
                top = ranked[0] if ranked else "unknown"
                c["found"] += 1
                c["top1"] += int(top == want)
                c["top2"] += int(want in ranked[:2])
                confusion.setdefault(want, Counter())[top] += 1
                break
    found = sum(c["found"] for c in per.values())
    return {"per_cause": {k: dict(v) for k, v in sorted(per.items())},
            "confusion": {k: dict(v) for k, v in sorted(confusion.items())},
            "top1": sum(c["top1"] for c in per.values()) / found if found else 0.0,
            "top2": sum(c["top2"] for c in per.values()) / found if found else 0.0,
            "found": found}


#: Documented real incidents and the cause the issue says must rank first.
REAL_CAUSES = (
    ("megatron_deepspeed_text/bigscience_tr11-176B_first_lm_loss_spike_31214-31251.log",
     "BLOOM-176B 31219", 31219, 2, "grad_explosion"),
    ("megatron_deepspeed_text/bigscience_tr1-13B_spike_29020-29090.log",
     "tr1-13B ~29050", 29050, 20, "amp_overflow"),
    ("megatron_deepspeed_text/bigscience_tr8-104B_exp11_spike_11446-11448.log",
     "tr8-104B exp11 11448", 11448, 1, "grad_explosion"),
    ("megatron_deepspeed_text/bigscience_tr8-104B_exp1_glitch_7000-7220.log",
     "tr8-104B exp1 7010", 7010, 10, None),
)


def real_causes(real: Path, config: Config) -> list[dict[str, Any]]:
    """The top cause of each documented real incident, and the cause it must be."""
    from spikelens.analyze import analyze

    rows: list[dict[str, Any]] = []
    for rel, what, step, tol, want in REAL_CAUSES:
        path = real / rel
        if not path.exists():
            continue
        report = analyze(read_log(path), config)
        hits = [f for f in report.runs[0].findings if f.event.metric == "loss"
                and f.event.kind in INCIDENT_KINDS
                and f.event.start_step - tol <= step <= f.event.end_step + tol]
        ranked = [(e.cause, round(e.score, 2)) for e in hits[0].causes] if hits else []
        top = ranked[0][0] if ranked else "missed"
        rows.append({"incident": what, "required": want, "top": top, "ranked": ranked[:3],
                     "ok": want is None or top == want})
    return rows


def crossrun_check(real: Path, config: Config) -> dict[str, Any] | None:
    """The modded-nanogpt 124M records analysed together: the replicated outliers at 918 and
    946 (one step either way) must come out in every run as incidents led by bad_batch."""
    from spikelens.analyze import analyze

    logs = sorted((real / "modded_nanogpt").glob("124M*.log"))
    if len(logs) < 2:
        return None
    report = analyze([read_log(p) for p in logs], config)
    per_run = []
    for rr in report.runs:
        tops = {f.event.peak_step: (f.causes[0].cause if f.causes else "unknown")
                for f in rr.findings if f.event.metric == "loss"
                and f.event.kind in INCIDENT_KINDS}
        got = {}
        for documented in (918, 946):
            near = [s for s in tops if abs(s - documented) <= 1]
            got[documented] = tops[near[0]] if near else "missed"
        per_run.append({"run": Path(rr.source).name, "at_918": got[918], "at_946": got[946]})
    ok = all(r["at_918"] == "bad_batch" and r["at_946"] == "bad_batch" for r in per_run)
    return {"runs": per_run, "recurrences": [int(r.position) for r in report.recurrences],
            "ok": ok}


# ---------------------------------------------------------------------------------------
# real logs
# ---------------------------------------------------------------------------------------
#: Documented incidents: (file under real_logs, the step the authors name, tolerance in steps)
INCIDENTS = (
    ("megatron_deepspeed_text/bigscience_tr11-176B_first_lm_loss_spike_31214-31251.log",
     "BLOOM-176B first spike", 31219, 2),
    ("megatron_deepspeed_text/bigscience_tr1-13B_spike_29020-29090.log",
     "tr1-13B spike", 29050, 20),
    ("megatron_deepspeed_text/bigscience_tr8-104B_exp11_spike_11446-11448.log",
     "tr8-104B exp11 spike", 11448, 1),
    ("megatron_deepspeed_text/bigscience_tr8-104B_exp1_glitch_7000-7220.log",
     "tr8-104B exp1 glitch", 7010, 10),
)
#: Benign look-alikes: (file or glob, what it is). Expected: no incident.
BENIGN = (
    ("megatron_deepspeed_text/bigscience_gpt2_perf_n4_fp16_lossscale_calibration_1-200.log",
     "gpt2 fp16 loss-scale calibration"),
    ("megatron_deepspeed_text/deepspeed_chat_step1_sft_opt-1.3b_fp16.log",
     "DeepSpeed-Chat routine overflows"),
    ("hf_trainer_state/qlora_25epochs_10000steps_trainer_state.json",
     "QLoRA epoch sawtooth"),
    ("hf_trainer_state/metamath_sft_128steps_logging1_trainer_state.json",
     "MetaMath SFT (control)"),
    ("modded_nanogpt/*.log", "modded-nanogpt micro-batch noise"),
)


@dataclass
class RealRow:
    what: str
    file: str
    expected: str
    spikelens: str
    ok: bool
    anchors: dict[str, str]
    verdict: str = ""


def _consensus(real: Path) -> np.ndarray:
    path = real / "modded_nanogpt" / "consensus_outlier_steps.csv"
    if not path.exists():
        return np.empty(0, np.int64)
    rows = path.read_text().splitlines()[1:]
    return np.array([int(r.split(",")[0]) for r in rows if r.strip()], dtype=np.int64)


def _due_outliers(steps: np.ndarray, loss: np.ndarray, cons: np.ndarray) -> list[int]:
    """Consensus outlier steps (one step either way) where this log's loss is at least
    1.3x the median of the 10 logged losses on either side."""
    out = []
    for c in cons:
        for s in (c - 1, c, c + 1):
            i = int(np.searchsorted(steps, s))
            if i >= len(steps) or steps[i] != s or i < 10:
                continue
            around = np.r_[loss[i - 10:i], loss[i + 1:i + 11]]
            if np.isfinite(loss[i]) and loss[i] >= 1.3 * float(np.nanmedian(around)):
                out.append(int(s))
                break
    return out


def _neighbourhood_ratio(loss: np.ndarray, i: int) -> float:
    """loss[i] over the median of the 10 logged losses either side (the point left out)."""
    around = np.r_[loss[max(0, i - 10):i], loss[i + 1:i + 11]]
    around = around[np.isfinite(around)]
    if not len(around) or not np.isfinite(loss[i]):
        return math.nan
    return float(loss[i] / np.median(around))


def same_data_order(steps: np.ndarray, loss: np.ndarray, cons: np.ndarray,
                    bump: float = 1.2) -> tuple[int, int, float]:
    """Does this log read its data in the consensus runs' order? The consensus steps are
    bad batches only for runs that see the same batch at the same step (the README: runs
    "that read the data in the same order"). Count the consensus steps where the log has a
    point >= `bump` x its neighbourhood (one step either way) and compare with the chance
    that a random step of this log does (the share of its +-1 windows with such a point):
    (hits, steps checked, binomial p of at least that many hits by chance)."""
    from scipy.stats import binom

    r = np.array([_neighbourhood_ratio(loss, i) for i in range(len(loss))])
    w = np.fmax(np.fmax(r[:-2], r[1:-1]), r[2:])  # the +-1 window around each point
    base = float(np.mean(w[100:] >= bump)) if len(w) > 100 else 1.0
    hits = checked = 0
    for c in cons:
        i = int(np.searchsorted(steps, c))
        if i < 101 or i >= len(loss) - 11:
            continue
        checked += 1
        hits += int(np.nanmax(r[i - 1:i + 2]) >= bump)
    p = float(binom.sf(hits - 1, checked, base)) if checked else 1.0
    return hits, checked, p


def real_checks(real: Path, config: Config) -> list[RealRow]:
    rows: list[RealRow] = []
    for rel, what, step, tol in INCIDENTS:
        path = real / rel
        if not path.exists():
            continue
        run = read_log(path)
        det = detect(run, config)
        hits = [e for e in det.events if e.metric == "loss" and e.kind in INCIDENT_KINDS
                and (e.start_step - tol <= step <= e.end_step + tol)]
        found = ", ".join(f"{e.kind} {e.start_step}-{e.end_step} (peak {e.peak_step}, "
                          f"x{e.size.ratio:.2f})" for e in hits) or "missed"
        steps, loss = loss_array(run)
        anchors = {}
        for aname, rule in ANCHORS.items():
            spans = flagged_spans(steps, rule(loss))
            near = [s for s in spans if s[0] - tol <= step <= s[1] + tol]
            anchors[aname] = f"{near[0][0]}" if near else "missed"
        rows.append(RealRow(what, Path(rel).name, f"incident at {step}", found, bool(hits),
                            anchors, det.verdict))
    cons = _consensus(real)
    for pattern, what in BENIGN:
        for path in sorted(real.glob(pattern)):
            run = read_log(path)
            det = detect(run, config)
            inc = [e for e in det.events if e.metric == "loss" and e.kind in INCIDENT_KINDS]
            osc = [e for e in det.events if e.kind == "oscillation"]
            steps, loss = loss_array(run)
            if "modded_nanogpt" in pattern:
                at = [e for e in inc if len(cons) and np.min(np.abs(cons - e.peak_step)) <= 1]
                # issue 8: every consensus outlier that is >= 1.3x its neighbourhood in this
                # log (the median of the 10 logged losses either side) must be found
                due = _due_outliers(steps, loss, cons)
                # ... in a log that reads the data in the consensus order: in one that does
                # not, a consensus step is an ordinary step and a 1.3x point there is chance
                hits, checked, p_order = same_data_order(steps, loss, cons)
                shared_order = p_order < 0.01
                missed = [c for c in due if not any(abs(e.peak_step - c) <= 1 for e in inc)]
                text = (f"{len(inc)} incident(s): {len(at)} at consensus outlier steps "
                        f"({len(due) - len(missed)}/{len(due)} of those >= 1.3x found"
                        + (f", missed {', '.join(map(str, missed))}" if missed else "") + ")")
                if not shared_order:
                    text += (f"; not the consensus data order ({hits}/{checked} consensus "
                             f"steps >= 1.2x, p = {p_order:.2g} by chance): none due")
                ok = not missed or not shared_order
                ratios = [_neighbourhood_ratio(loss, int(np.searchsorted(steps, e.peak_step)))
                          for e in inc]
                if ratios:
                    text += (f"; reported: {min(ratios):.2f}-{max(ratios):.2f}x their "
                             "neighbourhood")
                expected = "consensus outliers >= 1.3x found"
                if len(inc) > len(at):
                    text += ", others at " + ", ".join(
                        str(e.peak_step) for e in inc if e not in at)
                anchors = {}
                for aname, rule in ANCHORS.items():
                    spans = flagged_spans(steps, rule(loss))
                    on = sum(1 for a, b in spans if len(cons) and
                             np.min(np.abs(cons - a)) <= 1)
                    anchors[aname] = f"{len(spans)} ({on} cons.)"
            else:
                text = f"{len(inc)} incident(s)"
                if osc:
                    o = osc[0]
                    per = f", period {o.period:g} steps" if o.period else ""
                    text += f", {len(osc)} oscillation ({o.start_step}-{o.end_step}{per})"
                ok = not inc
                expected = "no incident"
                anchors = {a: str(len(flagged_spans(steps, r(loss)))) for a, r in ANCHORS.items()}
            label = f"modded-nanogpt {path.stem[:30]}" if "*" in pattern else what
            rows.append(RealRow(label, path.name, expected, text, ok, anchors, det.verdict))
    return rows


# ---------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------
def negative_maxima(run: Run, rs: Any, config: Config) -> dict[str, tuple[float, int]]:
    """On a run with no labelled event: the largest point and shift z outside the detector's
    oscillations, with its step (what a bar must clear to raise no false incident)."""
    inside = _in_oscillations(run, rs.steps, config)
    out: dict[str, tuple[float, int]] = {}
    for test, z in rs.z.items():
        key = "point" if test == "point" else "shift"
        zz = np.where(inside, np.nan, z)
        if np.isfinite(zz).any():
            i = int(np.nanargmax(zz))
            if key not in out or zz[i] > out[key][0]:
                out[key] = (float(zz[i]), int(rs.steps[i]))
    return out


def confirmed_maximum(run: Run, rs: Any, config: Config) -> tuple[float, int] | None:
    """On a run with no labelled event: the largest point z at a point the grad norm
    confirms (`gradnorm.confirmed`, the points where the point bar is
    `grad_confirmed_point_z`), outside the detector's oscillations, with its step; None when
    the run has no such point."""
    gn = run.series("grad_norm")
    s = run.series("loss")
    if gn is None or s is None or "point" not in rs.z or len(rs.steps) <= config.window:
        return None
    v = s.loc[rs.steps].to_numpy(dtype=np.float64)
    if not (v > 0).all():
        return None  # the loss is not judged in log units: no confirmed points
    ok = grad_confirmed(np.log(v), rs.steps, gn.to_numpy(dtype=np.float64, na_value=np.nan),
                        gn.index.to_numpy().astype(np.int64), config.grad_confirm_z,
                        math.log(config.grad_confirmed_ratio), config.window)
    ok &= ~_in_oscillations(run, rs.steps, config) & np.isfinite(rs.z["point"])
    if not ok.any():
        return None
    i = int(np.flatnonzero(ok)[np.argmax(rs.z["point"][ok])])
    return float(rs.z["point"][i]), int(rs.steps[i])


def calibrate(bench: Path, config: Config) -> dict[str, Any]:
    """Where the two z thresholds come from.

    Two numbers per labelled event with a finite rise: its best point z and its best shift z
    (the largest over the shift windows) in its first 30 logged steps (from 10 before its
    start, so a window that opens just before the rise counts); and per test the largest z
    anywhere on the negative runs. An event is caught when either of its numbers clears its
    threshold. The thresholds (Zp, Zs) are chosen to maximise the smallest margin, in log
    space, between any threshold and the values on either side of it: above every negative
    by a factor m, below the caught test of every event by m. The shift threshold is pinned
    by its tightest pair; the point threshold then has a whole interval of thresholds with at
    least that margin, and its centre (geometric mean of the ends) is reported.
    """
    labels: dict[str, dict[str, Any]] = json.loads((bench / "labels.json").read_text())
    neg: dict[str, tuple[float, str, int]] = {}
    events: list[dict[str, Any]] = []
    for name, label in labels.items():
        run = read_log(run_path(bench, label))
        rs = rise_statistics(run, config)
        shift_tests = [t for t in rs.z if t.startswith("shift")]
        if not label["events"]:
            for key, (z, step) in negative_maxima(run, rs, config).items():
                if key not in neg or z > neg[key][0]:
                    neg[key] = (z, name, step)
            conf = confirmed_maximum(run, rs, config)
            if conf is not None and ("confirmed" not in neg or conf[0] > neg["confirmed"][0]):
                neg["confirmed"] = (conf[0], name, conf[1])
            continue
        for ev in label["events"]:
            if ev.get("nonfinite_steps"):
                continue  # the non-finite detector's, not a z test's
            m = (rs.steps >= ev["start"] - 10) & (rs.steps <= ev["start"] + 30)

            def best(zz: np.ndarray) -> float:
                return float(np.nanmax(zz)) if np.isfinite(zz).any() else 0.0

            events.append({"run": name, "start": int(ev["start"]),
                           "point": best(rs.z["point"][m]),
                           "shift": max(best(rs.z[t][m]) for t in shift_tests)})
    npt, nsh = neg["point"][0], neg["shift"][0]
    grid = np.exp(np.linspace(np.log(1.0), np.log(200.0), 600))
    best_m, best_pair = -np.inf, (0.0, 0.0)
    for zs in grid:
        for zp in grid:
            m = min(np.log(zp / npt), np.log(zs / nsh))
            for e in events:
                m = min(m, max(np.log(max(e["point"], 1e-9) / zp),
                               np.log(max(e["shift"], 1e-9) / zs)))
            if m > best_m:
                best_m, best_pair = m, (float(zp), float(zs))
    margin = float(np.exp(best_m))
    zs = best_pair[1]
    # every point threshold that keeps the same margin, given the shift threshold
    ok = []
    for zp in grid:
        m = np.log(zp / npt)
        for e in events:
            m = min(m, max(np.log(max(e["point"], 1e-9) / zp),
                           np.log(max(e["shift"], 1e-9) / zs)))
        if m >= best_m - 1e-9:
            ok.append(float(zp))
    return {
        "negatives": {k: {"z": v[0], "run": v[1], "step": v[2]} for k, v in neg.items()},
        "events": sorted(events, key=lambda e: (e["run"], e["start"])),
        "margin": margin,
        "shift_threshold": zs,
        "point_interval": [min(ok), max(ok)] if ok else None,
        "point_threshold": math.sqrt(min(ok) * max(ok)) if ok else None,
        "configured": {"point": config.z_threshold, "shift": config.shift_z_threshold,
                       "grad_confirmed_point": config.grad_confirmed_point_z},
        # the point bar at grad-confirmed points: CV_NEG_MARGIN above the largest point z at
        # a confirmed point of the negative runs (docs/detection.md, "Fifth pass")
        "grad_confirmed_point_threshold": CV_NEG_MARGIN * neg["confirmed"][0]
        if "confirmed" in neg else None,
    }


# ---------------------------------------------------------------------------------------
# cross-validation (issue 8)
# ---------------------------------------------------------------------------------------
#: A negative run held out can be noisier than the noisiest one calibrated on: the bars
#: must sit at least this factor above the largest z on the calibration negatives (the
#: bench's own calibration keeps 1.67x; 1.5x is what is asked of any fold).
CV_NEG_MARGIN = 1.5


@dataclass
class CvRun:
    """One labelled run, read once, with what calibration needs from it."""

    name: str
    family: str
    label: dict[str, Any]
    run: Run | None
    neg: dict[str, float]  # negative run: the largest z per test ("point", "shift")
    events: list[dict[str, float]]  # positive run: best point / shift z per event
    labelled_set: str = ""  # the --bench / --extra directory it came from


def family_of(label: dict[str, Any]) -> str:
    """The scenario family: the label's `family`, else the scenario's first word
    (bb_mlp_shuffled -> bb, osc_cnn_cyclic -> osc)."""
    return str(label.get("family") or str(label.get("scenario", "")).split("_")[0])


def _in_oscillations(run: Any, steps: np.ndarray, config: Config) -> np.ndarray:
    """The points inside an oscillation the detector finds: rises there are judged by the
    oscillation rules (its envelope, the LR's peaks), not by the bars being calibrated."""
    inside = np.zeros(len(steps), dtype=bool)
    for e in detect(run, config).events:
        if e.kind == "oscillation":
            inside |= (steps >= e.start_step) & (steps <= e.end_step)
    return inside


def load_cv_runs(benches: Sequence[Path], config: Config) -> list[CvRun]:
    out: list[CvRun] = []
    for bench in benches:
        labels: dict[str, dict[str, Any]] = json.loads((bench / "labels.json").read_text())
        for name, label in labels.items():
            try:
                run = read_log(run_path(bench, label))
            except Exception:  # noqa: BLE001 - an unread run scores as missed, below
                out.append(CvRun(f"{bench.name}/{name}", family_of(label), label, None, {}, [],
                                 str(bench)))
                continue
            rs = rise_statistics(run, config)
            neg: dict[str, float] = {}
            events: list[dict[str, float]] = []
            if not label["events"]:
                neg = {key: max(z, 0.0)
                       for key, (z, _) in negative_maxima(run, rs, config).items()}
                conf = confirmed_maximum(run, rs, config)
                if conf is not None:
                    neg["confirmed"] = max(conf[0], 0.0)
            for ev in label["events"]:
                if ev.get("nonfinite_steps") or ev.get("superseded"):
                    continue  # judged by the non-finite detector / in a superseded segment
                m = (rs.steps >= ev["start"] - 10) & (rs.steps <= ev["start"] + 30)

                def best(zz: np.ndarray) -> float:
                    return float(np.nanmax(zz)) if np.isfinite(zz).any() else 0.0

                events.append({
                    "point": best(rs.z["point"][m]) if "point" in rs.z else 0.0,
                    "shift": max((best(rs.z[t][m]) for t in rs.z if t.startswith("shift")),
                                 default=0.0)})
            out.append(CvRun(f"{bench.name}/{name}", family_of(label), label, run, neg, events,
                             str(bench)))
    return out


def place_thresholds(train: Sequence[CvRun]) -> tuple[float, float]:
    """(point, shift) bars from calibration runs only. Both bars sit at least CV_NEG_MARGIN
    above the largest z of their test on the negative runs; among those, the pair that
    catches the most events (an event is caught when either of its z clears its bar), then
    the one with the largest smallest margin (log space) to the negatives and to the events
    it catches. The point bar is the low end of the interval that keeps that margin, as the
    configured bar is placed."""
    npt = max([r.neg.get("point", 0.0) for r in train] + [1.0])
    nsh = max([r.neg.get("shift", 0.0) for r in train] + [1.0])
    evs = [e for r in train for e in r.events]
    grid = np.exp(np.linspace(np.log(1.0), np.log(200.0), 240))
    pe = np.log(np.maximum([e["point"] for e in evs], 1e-9)) if evs else np.empty(0)
    se = np.log(np.maximum([e["shift"] for e in evs], 1e-9)) if evs else np.empty(0)
    lg = np.log(grid)

    def score(lzp: float, lzs: float) -> tuple[int, float]:
        m_neg = min(lzp - math.log(npt), lzs - math.log(nsh))
        if m_neg < math.log(CV_NEG_MARGIN):
            return (-1, -math.inf)
        caught = np.maximum(pe - lzp, se - lzs)
        ok = caught >= 0
        m = min([m_neg, *caught[ok].tolist()]) if ok.any() else m_neg
        return (int(ok.sum()), float(m))

    best: tuple[int, float] = (-2, -math.inf)
    pair = (grid[-1], grid[-1])
    for lzs in lg:
        for lzp in lg:
            sc = score(float(lzp), float(lzs))
            if sc > best:
                best, pair = sc, (float(math.exp(lzp)), float(math.exp(lzs)))
    zs = pair[1]
    ok_p = [float(g) for g in grid if score(math.log(g), math.log(zs)) >= (best[0], best[1] - 1e-9)]
    # the low end of that interval, as the configured bar is placed (`calibrate`, docs): with
    # a family held out that alone pinned the bar's upper side (the bad batches), the
    # interval is wide open above and its centre floats far above anything the negatives
    # need (15.6 without the bb family, which then missed every held-out bad batch)
    zp = min(ok_p) if ok_p else pair[0]
    return zp, zs


def place_confirmed_bar(train: Sequence[CvRun], zp: float) -> float:
    """The point bar at grad-confirmed points from calibration runs only, as the configured
    `grad_confirmed_point_z` is placed (docs/detection.md, *Fifth pass*): CV_NEG_MARGIN above
    the largest point z at a confirmed point of the negative runs, never above the point
    bar itself."""
    neg = max([r.neg.get("confirmed", 0.0) for r in train] + [1.0])
    return min(zp, CV_NEG_MARGIN * neg)


@dataclass
class CvScores:
    events: Scores = field(default_factory=Scores)
    verdicts: int = 0
    runs: int = 0
    osc_called: int = 0  # oscillating runs called oscillating
    osc_runs: int = 0
    osc_false: int = 0  # non-oscillating quiet runs called oscillating
    misses: list[str] = field(default_factory=list)

    def row(self, name: str) -> list[str]:
        e = self.events
        return [name, str(e.tp), str(e.fp), str(e.fn), f"{e.precision:.3f}", f"{e.recall:.3f}",
                f"{e.f1:.3f}", str(e.negative_events), f"{self.verdicts}/{self.runs}",
                f"{self.verdicts / self.runs:.3f}" if self.runs else "-",
                f"{self.osc_called}/{self.osc_runs}", str(self.osc_false)]


def _count_run(r: CvRun, sc: CvScores) -> tuple[list[tuple[int, int]], str]:
    """Count one labelled run in `sc` (its labelled events are all missed if it was not
    read): (its labelled spans, its expected verdict)."""
    labelled = [(int(e["start"]), int(e["end"])) for e in r.label["events"]]
    expected = expected_verdict(r.label)
    sc.runs += 1
    if expected == "oscillating":
        sc.osc_runs += 1
    if r.run is None:
        sc.events.fn += len(labelled)
    return labelled, expected


def _count_events(found: Sequence[Span], labelled: Sequence[Span], sc: CvScores) -> int:
    """Score found spans against labelled ones in `sc`; the number matched."""
    hit = match(found, labelled)
    sc.events.tp += hit
    sc.events.fp += len(found) - hit
    sc.events.fn += len(labelled) - hit
    if not labelled:
        sc.events.negative_events += len(found)
    return hit


def score_run(r: CvRun, config: Config, sc: CvScores) -> None:
    label = r.label
    labelled, expected = _count_run(r, sc)
    if r.run is None:
        sc.misses.append(f"{r.name}: unread")
        return
    det = detect(r.run, config)
    found = incident_spans(det)
    hit = _count_events(found, labelled, sc)
    ok = verdict_ok(expected, det.verdict)
    sc.verdicts += int(ok)
    if expected == "oscillating" and det.verdict == "oscillating":
        sc.osc_called += 1
    if expected == "healthy" and det.verdict == "oscillating":
        sc.osc_false += 1
    if not ok or hit != len(labelled) or len(found) != hit:
        sc.misses.append(f"{r.name} ({label.get('scenario', '')}): expected {expected}, got "
                         f"{det.verdict}; labelled {labelled}, found {found}")


#: The plain rule spikelens is compared with in the cross-validation: OLMo-core's
#: StabilityMonitor (mean + 6 sigma over the 128 steps before, `anchors.olmo_core`). It has no
#: threshold to place, so its figures are the same in every fold.
SIX_SIGMA = "OLMo-core StabilityMonitor"


def score_anchor(r: CvRun, rule: str, sc: CvScores) -> None:
    """Score an anchor rule on one run as `score_run` scores spikelens: its flagged steps,
    merged when consecutive, are its incidents. It has no verdict of its own: a run with a
    flag is an incident verdict, any other run healthy (it can never say oscillating or
    insufficient_data)."""
    labelled, expected = _count_run(r, sc)
    if r.run is None:
        return
    steps, loss = loss_array(r.run)
    found = flagged_spans(steps, ANCHORS[rule](loss)) if len(loss) else []
    _count_events(found, labelled, sc)
    sc.verdicts += int(verdict_ok(expected, "spiky" if found else "healthy"))


def cross_validate(benches: Sequence[Path], config: Config) -> dict[str, Any]:
    """In-sample (the configured thresholds on every run), leave-one-run-out and
    leave-one-family-out: in each fold the two z bars are placed on the other runs by
    `place_thresholds` and the held-out run(s) are detected with them."""
    runs = load_cv_runs(benches, config)
    out: dict[str, Any] = {"runs": len(runs), "families": sorted({r.family for r in runs})}
    insample = CvScores()
    for r in runs:
        score_run(r, config, insample)
    zp_all, zs_all = place_thresholds(runs)
    pooled = CvScores()
    cfg_all = dataclasses.replace(config, z_threshold=zp_all, shift_z_threshold=zs_all,
                                  grad_confirmed_point_z=place_confirmed_bar(runs, zp_all))
    out["confirmed_pooled"] = cfg_all.grad_confirmed_point_z
    for r in runs:
        score_run(r, cfg_all, pooled)
    loro = CvScores()
    bars: list[tuple[float, float]] = []
    confirmed_bars: list[float] = []
    for i, r in enumerate(runs):
        zp, zs = place_thresholds(runs[:i] + runs[i + 1:])
        bars.append((zp, zs))
        zc = place_confirmed_bar(runs[:i] + runs[i + 1:], zp)
        confirmed_bars.append(zc)
        score_run(r, dataclasses.replace(config, z_threshold=zp, shift_z_threshold=zs,
                                         grad_confirmed_point_z=zc), loro)
    lofo = CvScores()
    fam_bars = {}
    for fam in out["families"]:
        zp, zs = place_thresholds([r for r in runs if r.family != fam])
        fam_bars[fam] = (zp, zs)
        zc = place_confirmed_bar([r for r in runs if r.family != fam], zp)
        confirmed_bars.append(zc)
        cfg = dataclasses.replace(config, z_threshold=zp, shift_z_threshold=zs,
                                  grad_confirmed_point_z=zc)
        for r in runs:
            if r.family == fam:
                score_run(r, cfg, lofo)
    six = CvScores()
    for r in runs:
        score_anchor(r, SIX_SIGMA, six)
    # every labelled set on its own: spikelens (configured bars) and the 6-sigma rule
    per_set: dict[str, tuple[CvScores, CvScores]] = {}
    for r in runs:
        mine, theirs = per_set.setdefault(r.labelled_set, (CvScores(), CvScores()))
        score_run(r, config, mine)
        score_anchor(r, SIX_SIGMA, theirs)
    out["insample"] = insample
    out["six_sigma"] = six
    out["per_set"] = per_set
    out["pooled"] = (pooled, (zp_all, zs_all))
    out["loro"] = loro
    out["loro_bars"] = (min(b[0] for b in bars), max(b[0] for b in bars),
                        min(b[1] for b in bars), max(b[1] for b in bars))
    out["lofo"] = lofo
    # the grad-confirmed point bar of every fold (leave one run out, then one family out)
    out["confirmed_bars"] = (min(confirmed_bars), max(confirmed_bars))
    out["lofo_bars"] = fam_bars
    return out


def _set_name(path: str) -> str:
    """A labelled set's name for the tables: its directory's name."""
    return Path(path).name


def print_cv(cv: dict[str, Any], config: Config) -> None:
    header = ["", "TP", "FP", "FN", "precision", "recall", "event F1",
              "incidents on negative runs", "verdicts", "verdict acc.", "osc. called",
              "quiet runs called osc."]
    zp, zs = cv["pooled"][1]
    lb = cv["loro_bars"]
    rows = [cv["insample"].row(f"in-sample (configured bars {config.z_threshold:g} / "
                               f"{config.shift_z_threshold:g})"),
            cv["pooled"][0].row(f"in-sample (bars placed on all runs: {zp:.1f} / {zs:.1f})"),
            cv["loro"].row(f"leave one run out (bars {lb[0]:.1f}-{lb[1]:.1f} / "
                           f"{lb[2]:.1f}-{lb[3]:.1f})"),
            cv["lofo"].row("leave one scenario family out"),
            cv["six_sigma"].row("OLMo-core mean + 6 sigma of 128 (fixed rule, every fold)")]
    print(f"Cross-validation on {cv['runs']} labelled runs, families: "
          f"{', '.join(cv['families'])}\n")
    print(_table(rows, header))
    print("\nEach labelled set on its own (spikelens with the configured bars; the 6-sigma "
          "rule has no verdict of its own: flagged = incident, else healthy)\n")
    set_rows = []
    for name, (mine, theirs) in cv["per_set"].items():
        short = _set_name(name)
        set_rows.append(mine.row(f"{short}: spikelens ({mine.runs} runs)"))
        set_rows.append(theirs.row(f"{short}: OLMo-core 6 sigma"))
    print(_table(set_rows, header))
    print("\nbars placed without each family (point / shift): " + ", ".join(
        f"{f} {p:.1f}/{s:.1f}" for f, (p, s) in cv["lofo_bars"].items()))
    if "confirmed_bars" in cv:
        lo, hi = cv["confirmed_bars"]
        print(f"point bar at grad-confirmed points, every fold: {lo:.1f}-{hi:.1f} (configured "
              f"{config.grad_confirmed_point_z:g}, placed on all runs "
              f"{cv['confirmed_pooled']:.1f})")
    for title, key in (("leave one run out", "loro"), ("leave one family out", "lofo")):
        misses = cv[key].misses
        if misses:
            print(f"\n{title}: {len(misses)} run(s) not fully right")
            for m in misses:
                print(f"  {m}")


# ---------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------
def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def bench_table(scores: dict[str, Scores]) -> str:
    rows = [[name, str(s.tp), str(s.fp), str(s.fn), f"{s.precision:.3f}", f"{s.recall:.3f}",
             f"{s.f1:.3f}", str(s.negative_events)] for name, s in scores.items()]
    return _table(rows, ["method", "TP", "FP", "FN", "precision", "recall", "F1",
                         "incidents on negative runs"])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, action="append", default=None,
                    help="a directory of labelled runs with labels.json (default: "
                         "../shared/bench). May be given several times: --cv pools them all "
                         "(with the generated runs); the in-sample tables and --calibrate use "
                         "the first")
    ap.add_argument("--real", type=Path, default=REPO.parent / "shared" / "real_logs")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--calibrate", action="store_true",
                    help="print the test statistics the thresholds are placed in")
    ap.add_argument("--cv", action="store_true",
                    help="cross-validate: leave one run out and leave one scenario family "
                         "out, over the bench and the generated runs (--extra)")
    ap.add_argument("--extra", type=Path, action="append", default=None,
                    help="more labelled runs for --cv (default: generate them with "
                         "benchmarks/labelled.py, seed 1000, into a temporary directory)")
    args = ap.parse_args(argv)
    benches: list[Path] = args.bench or [REPO.parent / "shared" / "bench"]
    for b in benches:
        if not (b / "labels.json").exists():
            print(f"accuracy: no labelled bench at {b} (expected labels.json there); "
                  "pass --bench DIR", file=sys.stderr)
            return 2
    args.bench = benches[0]
    config = Config()
    if args.calibrate:
        print(json.dumps(calibrate(args.bench, config), indent=2))
        return 0
    if args.cv:
        return _run_cv(benches, args.extra, config, args.json)
    results, scores = evaluate_bench(args.bench, config)
    real = real_checks(args.real, config) if args.real.exists() else []
    causes = cause_accuracy(args.bench, config)
    causes_real = real_causes(args.real, config) if args.real.exists() else []
    crossrun = crossrun_check(args.real, config) if args.real.exists() else None
    verdict_hits = sum(verdict_ok(r.expected, r.verdict) for r in results)
    osc = [r for r in results if r.expected == "oscillating"]
    osc_hits = sum(r.verdict == "oscillating" for r in osc)
    if args.json:
        print(json.dumps({
            "bench": str(args.bench),
            "methods": {k: v.as_dict() for k, v in scores.items()},
            "verdict_accuracy": {"correct": verdict_hits, "runs": len(results)},
            "oscillating_runs": {"classified_oscillating": osc_hits, "runs": len(osc)},
            "runs": [asdict(r) for r in results],
            "real_logs": [asdict(r) for r in real],
            "causes": causes,
            "real_causes": causes_real,
            "crossrun": crossrun,
        }, indent=2))
        return 0
    print(f"Event detection on {len(results)} labelled runs ({args.bench})\n")
    print(bench_table(scores))
    print(f"\nspikelens verdicts: {verdict_hits}/{len(results)} correct; oscillating runs "
          f"classified oscillating: {osc_hits}/{len(osc)}")
    misses = [r for r in results if not verdict_ok(r.expected, r.verdict) or r.error]
    for r in misses:
        print(f"  {r.run} ({r.scenario}): expected {r.expected}, got {r.verdict}"
              + (f" [{r.error}]" if r.error else ""))
    if real:
        print(f"\nReal logs ({args.real})\n")
        names = list(ANCHORS)
        rows = [[r.what, r.expected, r.spikelens, "yes" if r.ok else "NO",
                 *[r.anchors.get(a, "") for a in names]] for r in real]
        short = [a.split()[0] for a in names]
        print(_table(rows, ["log", "expected", "spikelens", "ok", *short]))
    if causes and "error" not in causes:
        print(f"\nCause ranking on the {causes['found']} labelled events the detector found: "
              f"top-1 {causes['top1']:.2f}, top-2 {causes['top2']:.2f}\n")
        rows = [[cause, str(c.get("events", 0)), str(c.get("found", 0)), str(c.get("top1", 0)),
                 str(c.get("top2", 0))] for cause, c in causes["per_cause"].items()]
        print(_table(rows, ["labelled cause", "events", "found", "top-1", "top-2"]))
        predicted = sorted({p for row in causes["confusion"].values() for p in row})
        print("\nConfusion (rows: labelled cause; columns: top-1 cause)\n")
        conf = [[want, *[str(row.get(p, 0)) for p in predicted]]
                for want, row in causes["confusion"].items()]
        print(_table(conf, ["", *predicted]))
    elif causes:
        print(f"\nCause ranking unavailable: {causes['error']}")
    if causes_real:
        print("\nDocumented real incidents: top cause\n")
        rows = [[r["incident"], r["required"] or "(none documented)", r["top"],
                 ", ".join(f"{c} {s:.2f}" for c, s in r["ranked"]),
                 "yes" if r["ok"] else "NO"] for r in causes_real]
        print(_table(rows, ["incident", "must rank first", "top cause", "ranked", "ok"]))
    if crossrun is not None:
        print("\nmodded-nanogpt 124M records analysed together (918 and 946, one step either "
              "way, must be bad_batch)\n")
        rows = [[r["run"][:40], r["at_918"], r["at_946"]] for r in crossrun["runs"]]
        print(_table(rows, ["run", "918", "946"]))
        print(f"recurring outliers: {', '.join(map(str, crossrun['recurrences']))}; "
              f"{'ok' if crossrun['ok'] else 'NOT ok'}")
    return 0


def _run_cv(benches: list[Path], extra: list[Path] | None, config: Config,
            as_json: bool) -> int:
    import tempfile

    from labelled import generate

    with tempfile.TemporaryDirectory() as tmp:
        if extra is None:
            gen = Path(tmp) / f"generated-seed{GEN_SEED}"
            generate(gen, GEN_SEED, GEN_PER_FAMILY)
            extra = [gen]
        cv = cross_validate([*benches, *extra], config)
    if as_json:
        def dump(s: CvScores) -> dict[str, Any]:
            return {"events": s.events.as_dict(), "verdicts": s.verdicts, "runs": s.runs,
                    "oscillating_called": s.osc_called, "oscillating_runs": s.osc_runs,
                    "quiet_called_oscillating": s.osc_false, "misses": s.misses}
        print(json.dumps({"runs": cv["runs"], "families": cv["families"],
                          "insample": dump(cv["insample"]),
                          "pooled": {**dump(cv["pooled"][0]), "bars": cv["pooled"][1]},
                          "leave_one_run_out": {**dump(cv["loro"]), "bars": cv["loro_bars"]},
                          "leave_one_family_out": {**dump(cv["lofo"]),
                                                   "bars": cv["lofo_bars"]},
                          "six_sigma": dump(cv["six_sigma"]),
                          "grad_confirmed_bars": {"folds": cv["confirmed_bars"],
                                                  "pooled": cv["confirmed_pooled"]},
                          "per_set": {_set_name(k): {"spikelens": dump(a), "six_sigma": dump(b)}
                                      for k, (a, b) in cv["per_set"].items()}}, indent=2))
        return 0
    print_cv(cv, config)
    return 0


#: The generated runs --cv adds to the bench by default (benchmarks/labelled.py).
GEN_SEED = 1000
GEN_PER_FAMILY = 8


if __name__ == "__main__":
    raise SystemExit(main())

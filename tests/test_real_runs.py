"""The committed real training runs (`benchmarks/real_runs/`, made by
`benchmarks/real_runs.py` with torch, which the suite does not need): their labels are
well-formed, every run reads with spikelens, each labelled event lies inside the steps the
log holds and is where the bench's labelling rule puts it on the loss as read, and the
detector gives the verdicts a user would expect on the runs it is known to get right
(docs/labelled-runs.md lists the runs it does not)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spikelens.detect import detect
from spikelens.model import INCIDENT_KINDS, Config
from spikelens.readers import read_runs

ROOT = Path(__file__).resolve().parents[1]
SETS = ROOT / "benchmarks" / "real_runs"
sys.path.insert(0, str(ROOT / "benchmarks"))
from labelled import label_event  # noqa: E402

CAUSES = {"bad_batch", "lr_schedule", "grad_explosion", "amp_overflow", "numerical_nan"}
FAMILIES = {"clean", "osc", "bb", "lr", "gx", "nan", "amp", "stall", "resume"}
FORMATS = {"csv", "jsonl", "megatron_log", "hf_trainer_state"}
FIELDS = {"file", "format", "segments", "scenario", "family", "seed", "events", "causes",
          "verdict", "oscillating", "oscillation_cause", "notes", "last_step",
          "steps_logged", "amp", "has_nonfinite_loss", "real_training"}


def _runs() -> list[tuple[Path, str, dict[str, Any]]]:
    out = []
    for labels in sorted(SETS.glob("*/labels.json")):
        for rid, lab in json.loads(labels.read_text()).items():
            out.append((labels.parent, rid, lab))
    return out


RUNS = _runs()
IDS = [f"{d.name}/{rid}" for d, rid, _ in RUNS]


def test_the_committed_sets_cover_every_family() -> None:
    assert len(RUNS) >= 20
    assert {lab["family"] for _, _, lab in RUNS} == FAMILIES
    assert {lab["format"] for _, _, lab in RUNS} == FORMATS
    positives = [lab for _, _, lab in RUNS if lab["events"]]
    negatives = [lab for _, _, lab in RUNS if not lab["events"]]
    assert len(positives) >= 10 and len(negatives) >= 8


@pytest.mark.parametrize(("bench", "rid", "lab"), RUNS, ids=IDS)
def test_label_is_well_formed(bench: Path, rid: str, lab: dict[str, Any]) -> None:
    assert FIELDS <= set(lab), f"{rid}: missing {FIELDS - set(lab)}"
    assert lab["format"] in FORMATS and lab["family"] in FAMILIES
    assert (bench / lab["file"]).is_file()
    assert lab["scenario"].startswith(lab["family"] + "_")
    assert isinstance(lab["seed"], int) and lab["real_training"]["torch"]
    if lab["events"]:
        assert lab["verdict"] == lab["events"][0]["cause"] and lab["causes"] != ["none"]
        assert not lab["oscillating"]
    else:
        assert lab["verdict"] == "none" and lab["causes"] == ["none"]
    assert lab["oscillating"] == (lab["oscillation_cause"] is not None)
    for ev in lab["events"]:
        assert ev["cause"] in CAUSES
        assert ev["fault_step"] <= ev["start"] <= ev["peak_step"] <= ev["end"]
        if lab["family"] != "gx":
            # the rule's reach; a climb to the end (gx, `for_good`) is reached from the
            # last in-band stretch instead, which a slow climb can hold for longer
            # (v3gx01: an LM under AdamW leaves the band for good 321 steps after its
            # LR ramp starts)
            assert ev["start"] - ev["fault_step"] <= 200
        assert isinstance(ev["recovered"], bool) and ev["nonfinite_steps"] >= 0
        assert ev.get("superseded", False) == (lab["segments"] == 2)


@pytest.mark.parametrize(("bench", "rid", "lab"), RUNS, ids=IDS)
def test_run_reads_and_its_event_is_in_the_log(bench: Path, rid: str,
                                               lab: dict[str, Any]) -> None:
    runs = read_runs(bench / lab["file"])
    assert len(runs) == 1
    run = runs[0]
    loss = run.series("loss")
    assert loss is not None and len(loss) > 100
    steps = loss.index.to_numpy().astype(np.int64)
    assert int(steps.max()) == lab["last_step"]
    for ev in lab["events"]:
        assert steps.min() <= ev["start"] <= ev["end"] <= lab["last_step"]
        vals = loss.to_numpy(dtype=np.float64, na_value=np.nan)
        at = vals[steps == ev["start"]]
        assert len(at) >= 1
        if ev["nonfinite_steps"]:
            assert not np.isfinite(vals[(steps >= ev["start"]) & (steps <= ev["end"])]).all()
    if lab["segments"] == 1:
        # the rule, re-applied to the loss as spikelens reads it, gives the same event
        for ev in lab["events"]:
            vals = loss.to_numpy(dtype=np.float64, na_value=np.nan)
            again = label_event(steps, vals, ev["fault_step"],
                                for_good=ev["cause"] == "grad_explosion")
            assert again is not None
            assert (again["start"], again["end"]) == (ev["start"], ev["end"]), rid
    else:
        # a resumed log: one restart, and the abandoned segment kept as superseded rows
        # that hold the labelled event
        assert len(run.restarts) == 1 and len(run.superseded) == 1
        sup = run.superseded[0]
        for ev in lab["events"]:
            assert sup.resumed_at <= ev["start"] <= ev["end"] <= sup.last_step


#: runs the current detector gets right, with the verdict a user expects from each
#: (docs/labelled-runs.md lists the runs it gets wrong, and why)
EXPECTED = {
    "v1/v1bb01": "spiky",  # a batch of random tokens in a transformer run
    "v1/v1bb02": "spiky",  # a 12-step shard with shuffled labels
    "v1/v1lr01": "spiky",  # SGD warm restart at the peak LR
    "v1/v1amp01": "nonfinite",  # an fp16 overflow storm with NaN losses
    "v1/v1osc00": "oscillating",  # a triangular cyclic LR
    "v1/v1osc01": "oscillating",  # CosineAnnealingLR stepped every batch
    "v1/v1osc02": "oscillating",  # sorted by class, never shuffled: 71-step epochs
    "v1/v1osc03": "oscillating",  # a batch of 4
    "v1/v1clean00": "healthy",  # batch 8: the noise of a mini-batch, not a tiny one
    "v1/v1clean01": "healthy",  # a clean transformer run with eval loss
    "v1/v1clean02": "healthy",  # a clean resume from a checkpoint
    "v1/v1stall00": "healthy",  # LR 1e-7: a stall is informational
    "v1/v1stall01": "healthy",  # vanishing gradients
    "v2/v2amp00": "healthy",  # the routine fp16 loss-scale sawtooth
    "v2/v2amp01": "nonfinite",  # an fp16 overflow storm
    "v2/v2bb00": "spiky",  # shuffled labels: x6.4 for one step in a 24 %-noise loss
    "v2/v2bb01": "spiky",  # a batch of random tokens (HF state, 4 decimals)
    "v2/v2bb04": "spiky",  # a 33-step shard, half of each batch random tokens
    "v2/v2clean00": "healthy",  # batch 128, constant LR
    "v2/v2clean02": "healthy",  # a transformer trained with SGD
    "v2/v2clean04": "healthy",  # a transformer, AdamW, eval every 100
    "v2/v2gx00": "diverged",  # a transformer whose LR grows until it blows up
    "v2/v2lr00": "spiky",  # LR x27.8 from a step on
    "v2/v2lr01": "spiky",  # SGD warm restart: x1.16 for hundreds of steps at the LR jump
    "v2/v2nan01": "nonfinite",  # one NaN in an input, the step skipped (Megatron log)
    "v2/v2osc02": "oscillating",  # a dataset sorted by class, never shuffled
    "v2/v2osc04": "oscillating",  # an LM on 896 windows in a fixed order: 56-step epochs
    "v2/v2resume00": "spiky",  # random tokens in a segment the rollback superseded
    "v2/v2stall00": "healthy",  # dead ReLUs
    "v4/v4clean00": "healthy",  # batch 8, SGD + momentum: its swing is mini-batch noise
    "v4/v4gx00": "diverged",  # the LR grows until the MLP sits at a new level, one outlier on it
    "v4/v4osc03": "oscillating",  # a batch of 3
    "v5/v5clean00": "healthy",  # batch 8 (labelled clean; made after tiny_batch moved)
    "v5/v5gx01": "diverged",  # AdamW, the LR climbing e-fold: the loss drifts up x1.1
    "v4/v4gx03": "diverged",  # SGD, the LR e-fold every 142 steps: one divergence from 1193
    "v6/v6gx00": "diverged",  # the same every 80 steps: the crossing at 767 is in the climb
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_detector_verdict_on_real_runs(key: str) -> None:
    set_name, rid = key.split("/")
    bench = SETS / set_name
    lab = json.loads((bench / "labels.json").read_text())[rid]
    det = detect(read_runs(bench / lab["file"])[0], Config())
    assert det.verdict == EXPECTED[key], f"{key} ({lab['notes']}): {det.verdict}"
    incidents = [(e.start_step, e.end_step) for e in det.events
                 if e.metric == "loss" and e.kind in INCIDENT_KINDS]
    if lab["events"]:
        ev = lab["events"][0]
        assert len(incidents) == 1, incidents
        assert any(s <= ev["end"] and ev["start"] <= e for s, e in incidents)
    else:
        assert incidents == []

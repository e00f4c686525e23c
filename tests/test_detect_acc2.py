"""Second round of issue 8 on the real CPU runs: the oscillation period limit that follows
the log, and the other rules of docs/detection.md's "second round" section. Each rule has a
known-answer test and a clean run of the same shape that must stay quiet."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spikelens.detect import Detection, detect
from spikelens.model import INCIDENT_KINDS, Config, Run

CFG = Config()


def make_run(loss: np.ndarray, **cols: np.ndarray) -> Run:
    st = np.arange(1, len(loss) + 1, dtype=np.int64)
    data = {"loss": loss, **cols}
    frame = pd.DataFrame(data, index=pd.Index(st, name="step"))
    return Run(source="synthetic.csv", format="csv", frame=frame,
               roles={k: k for k in data}, interval=1)


def incidents(det: Detection) -> list[tuple[str, int, int]]:
    return [(e.kind, e.start_step, e.peak_step) for e in det.events
            if e.metric == "loss" and e.kind in INCIDENT_KINDS]


def _epoch_run(epoch: int, jump: float, seed: int, n: int = 2000) -> Run:
    """A descending loss with 6 % batch noise and, when jump > 0, a sawtooth that restarts
    at every epoch boundary (a dataset iterated in a fixed order)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    trend = 1.0 + 1.5 * (1 + t / 150) ** -1.0
    phase = (t % epoch) / epoch
    saw = np.exp(jump * (1 - phase))  # high at the boundary, decaying through the epoch
    loss = trend * saw * np.exp(0.06 * rng.standard_normal(n))
    return make_run(loss, samples=(32.0 * (t + 1)))


def test_an_epoch_sawtooth_longer_than_50_steps_is_an_oscillation_at_its_period() -> None:
    # the epochs of the two real runs the fixed 50-point limit missed (v2osc04, v1osc02)
    for epoch in (56, 71):
        det = detect(_epoch_run(epoch, jump=0.25, seed=epoch), CFG)
        assert det.verdict == "oscillating", (epoch, det.verdict)
        [osc] = [e for e in det.events if e.kind == "oscillation"]
        assert osc.period is not None and abs(osc.period - epoch) <= max(2, epoch // 10)
        assert incidents(det) == []


def test_the_same_noise_without_an_epoch_sawtooth_stays_quiet() -> None:
    for seed in (56, 71, 72):
        det = detect(_epoch_run(71, jump=0.0, seed=seed), CFG)
        assert det.verdict == "healthy", (seed, det.verdict)
        assert [e for e in det.events if e.kind == "oscillation"] == []

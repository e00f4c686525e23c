"""A loss that follows a cyclic learning rate oscillates by design, whatever the cycle's
length: a scheduler stepped per sample can cycle every 2-3 logged steps. The loss is tied to
the LR by correlation (|r| sqrt(n)), so even a swing smaller than the noise is a finding, and
an ordinary schedule is never mistaken for one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens import analyze
from spikelens.readers._base import RawLog, build_run


def _run(lr: np.ndarray, swing: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    steps = np.arange(1, len(lr) + 1)
    rel = lr / lr.max()
    loss = np.exp(np.log(1 + 2 * np.exp(-steps / 300)) + swing * (rel - rel.mean())
                  + 0.02 * rng.standard_normal(len(lr)))
    return pd.DataFrame({"step": steps, "loss": loss, "lr": lr})


@pytest.mark.parametrize("period", [2, 3, 7, 50])
def test_loss_locked_to_a_cyclic_lr_is_oscillating(period: int) -> None:
    steps = np.arange(1, 2001)
    phase = (steps % period) / period
    lr = 1e-3 * (0.2 + 0.8 * np.abs(2 * phase - 1))
    run = build_run(RawLog(frame=_run(lr, 0.03)), Path("cyclic.csv"), "csv")
    rr = analyze(run).runs[0]
    assert rr.verdict == "oscillating"
    [f] = rr.findings
    assert f.event.kind == "oscillation" and f.event.period == pytest.approx(period, abs=0.5)


def test_warmup_cosine_schedule_is_not_a_cycle() -> None:
    steps = np.arange(1, 2001)
    lr = np.where(steps < 200, steps / 200, 0.5 * (1 + np.cos(np.pi * (steps - 200) / 1800)))
    run = build_run(RawLog(frame=_run(1e-3 * lr, 0.03)), Path("cosine.csv"), "csv")
    assert analyze(run).runs[0].verdict == "healthy"

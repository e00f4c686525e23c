"""The published in-loop loss-spike rules of other tools, replayed offline on a logged loss.

Each rule is written as its source code runs it, step by step, on the values in log order,
so that `benchmarks/accuracy.py` can score it on the same runs as spikelens. Every function
takes the loss as a float array (one value per logged step, NaN/Inf kept) and returns a
boolean array: True where the rule flags that step. Consecutive flagged steps are merged
into one event by the caller.

One convention is shared by all rules: a non-finite loss is flagged and is not fed to the
rule's running statistics. Lightning does exactly that (`finite_only=True`); every other
trainer stops or skips on a NaN loss before its spike rule would see it (metaseq raises on a
non-finite grad norm, llm.c and Megatron check for NaN), and feeding a NaN into a running mean
would blind the rule for a whole window, which is not what any of them does in practice.

Sources (read from the projects' code; thresholds are their defaults unless stated):

* Lightning `SpikeDetection` (lightning/fabric/utilities/spike.py): running mean of the last
  `window=10` accepted values, `warmup=1`, `rtol=2.0`, `atol=None`, mode "min": a step is a
  spike when the loss did not improve on the last accepted value and
  |loss - mean| >= 2 * |mean|. Spikes are not added to the running mean.
* llm-foundry `KillLossSpike` (llmfoundry/callbacks/kill_loss_spike_callback.py):
  `window_size=100`, `outlier_multiplier=2`, `patience=4`: once the window is full, a loss
  >= 2 * mean(window) is an outlier, and the fifth outlier in a row (counter > patience)
  declares a spike. Every loss enters the window. (Its separate "loss cap" check for a run
  that never leaves a high loss is not a spike rule and is not replayed.)
* OLMo-core `StabilityMonitorCallback` (olmo_core/train/callbacks/stability_monitor.py):
  `window_size=128`, `threshold_std=6.0`: with a full window, a value > mean + 6 * std
  (population std of the window before it; never when std < 1e-10). Every value enters.
* metaseq `Trainer.skip_spike` (metaseq/trainer.py, PRs #521/#542/#546): ratio of the loss to
  an exponentially weighted mean of span 9 (alpha = 0.2) seeded with the first loss; the mean
  is not updated on a spike step. metaseq ships the rule switched off
  (`ewm_ratio_to_skip_batch = -1`) and publishes no default ratio; we replay it at 1.5
  (`METASEQ_RATIO`), a rise of half the loss, stated here as our choice.
* llm.c `OutlierDetector` (llmc/outlier_detector.h): the z-score of the new value against a
  window that already contains it (the oldest value is replaced, then mean and population
  std are taken). The issue specifies a 64-step window (the current header uses 128). llm.c's
  `-sl` (skip update if the loss z-score exceeds it) defaults to 0, i.e. off; we replay it at
  z > 5 (`LLMC_Z`), our choice, the usual "five sigma".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

METASEQ_RATIO = 1.5
LLMC_WINDOW = 64
LLMC_Z = 5.0


def lightning(loss: FloatArray, window: int = 10, warmup: int = 1, rtol: float = 2.0
              ) -> BoolArray:
    flags = np.zeros(len(loss), dtype=bool)
    hist: deque[float] = deque(maxlen=window)
    last = 0.0
    for i, v in enumerate(loss.tolist()):
        if not np.isfinite(v):
            flags[i] = i >= warmup
            continue
        spike = False
        if i >= warmup and hist:
            mean = sum(hist) / len(hist)
            improved = v - last <= 0.0
            spike = not improved and abs(v - mean) >= abs(rtol * mean)
        if spike:
            flags[i] = True
        else:
            hist.append(v)
            last = v
    return flags


def llm_foundry(loss: FloatArray, window: int = 100, multiplier: float = 2.0,
                patience: int = 4) -> BoolArray:
    flags = np.zeros(len(loss), dtype=bool)
    hist: deque[float] = deque(maxlen=window)
    counter = 0
    for i, v in enumerate(loss.tolist()):
        if not np.isfinite(v):
            flags[i] = True
            continue
        if len(hist) == window:
            mean = sum(hist) / window
            if v >= mean * multiplier:
                counter += 1
                flags[i] = counter > patience
            else:
                counter = 0
        hist.append(v)
    return flags


def olmo_core(loss: FloatArray, window: int = 128, threshold_std: float = 6.0) -> BoolArray:
    flags = np.zeros(len(loss), dtype=bool)
    hist: deque[float] = deque(maxlen=window)
    for i, v in enumerate(loss.tolist()):
        if not np.isfinite(v):
            flags[i] = True
            continue
        if len(hist) == window:
            arr = np.fromiter(hist, dtype=np.float64, count=window)
            mean = float(arr.mean())
            std = float(np.sqrt(((arr - mean) ** 2).mean()))
            flags[i] = std >= 1e-10 and v > mean + threshold_std * std
        hist.append(v)
    return flags


def metaseq(loss: FloatArray, ratio: float = METASEQ_RATIO, span: int = 9) -> BoolArray:
    flags = np.zeros(len(loss), dtype=bool)
    alpha = 2.0 / (span + 1)
    ewm: float | None = None
    for i, v in enumerate(loss.tolist()):
        if not np.isfinite(v):
            flags[i] = True
            continue
        if ewm is None:
            ewm = v
        if ewm != 0 and v / ewm > ratio:
            flags[i] = True
        else:
            ewm = (1 - alpha) * ewm + alpha * v
    return flags


def llmc(loss: FloatArray, window: int = LLMC_WINDOW, z_max: float = LLMC_Z) -> BoolArray:
    flags = np.zeros(len(loss), dtype=bool)
    buf: deque[float] = deque(maxlen=window)
    for i, v in enumerate(loss.tolist()):
        if not np.isfinite(v):
            flags[i] = True
            continue
        full = len(buf) == window
        buf.append(v)  # the new value replaces the oldest before the statistics are taken
        if not full:
            continue
        arr = np.fromiter(buf, dtype=np.float64, count=window)
        mean = float(arr.mean())
        var = float((arr * arr).mean() - mean * mean)
        std = float(np.sqrt(var)) if var > 0 else 0.0
        flags[i] = std > 0 and (v - mean) / std > z_max
    return flags


#: One row per rule in the accuracy table, in this order.
ANCHORS: dict[str, Callable[[FloatArray], BoolArray]] = {
    "Lightning SpikeDetection": lightning,
    "llm-foundry KillLossSpike": llm_foundry,
    "OLMo-core StabilityMonitor": olmo_core,
    f"metaseq ewm ratio > {METASEQ_RATIO:g}": metaseq,
    f"llm.c z > {LLMC_Z:g} ({LLMC_WINDOW} steps)": llmc,
}


def flagged_spans(steps: NDArray[np.int64], flags: BoolArray) -> list[tuple[int, int]]:
    """Runs of consecutive flagged logged steps as (first step, last step)."""
    if not flags.any():
        return []
    d = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1) - 1
    return [(int(steps[a]), int(steps[b])) for a, b in zip(starts, ends, strict=True)]

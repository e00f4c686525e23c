"""A seeded generator of labelled training logs, for cross-validating the detector.

    python benchmarks/labelled.py OUT_DIR [--seed 1000] [--per-family 6]

writes OUT_DIR/runs/<id>/<file> and OUT_DIR/labels.json in the schema of the shared bench
(`../shared/bench/labels.json`), so `benchmarks/accuracy.py --bench OUT_DIR` and `--cv`
read them like the bench. Every run is a scripted curve, not a training run: a loss that
falls as a power law towards a floor, per-step noise drawn the way a mini-batch draws it
(the mean of B per-sample losses from a gamma law, so the batch size sets the noise and a
batch of 2 is as ragged as it is in real logs), optionally autocorrelated (a smoothed
loss), with an LR schedule, a grad norm that follows the loss and, for some families, a
fault injected at a recorded step. The scenario families are the bench's:

* `clean`  quiet runs, from calm (B = 256) to ragged (B = 24, heavy-tailed per-sample losses,
  AR(1) noise, 4-decimal rounding, logged every 5 or 10 steps, a long flat tail);
* `osc`    swings that are a condition, not incidents: tiny batches (B = 2..4), a cyclic LR
  the loss follows (triangular, or a cosine scheduler stepped per sample), a zig-zag between
  two data sources, an epoch sawtooth (labelled oscillating only when its periodic part
  carries at least 30 % of the variance around the trend, `OSC_MIN_SHARE`: a weaker one is a
  swing under the noise floor, and the run is a quiet negative);
* `bb`     bad batches: one step x1.6-5, or a shard of 5-40 steps x1.3-2;
* `lr`     LR events: an LR xk jump that the loss answers over tens of steps, a cosine
  restart at its peak;
* `gx`     gradient explosion: the loss climbs exponentially to the end of the log;
* `nan`    non-finite losses (one step, or a stretch);
* `amp`    fp16: benign loss-scale sawtooth with routine skips (negative), or an overflow
  storm with NaN losses and a collapsing scale;
* `resume` a rollback: the segment that held a spike is replayed clean from an earlier
  checkpoint (the event is in the superseded segment), or a clean resume;
* `short`  excerpts: 5 Megatron lines climbing with the grad norm (divergence), a 3-line
  jump, a 1-point log and a flat 6-line excerpt (`insufficient_data`);
* `stall`  a loss that never leaves its starting level (informational stall, verdict healthy).

Labels follow the bench's rule: the band is the 100 logged steps before the fault; an event
starts at the first step at or after the fault whose loss is above the band's maximum (or
non-finite) and ends at the first step from which 10 losses in a row are back inside the band
(else at the last step, not recovered). A draw whose fault never leaves the band is redrawn
with the next seed (the seed used is recorded). `expected_verdict` is set where the bench's
`verdict`/`oscillating` pair cannot say it (`insufficient_data`)."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Rng = np.random.Generator


@dataclass
class Curve:
    """One generated run before it is written."""

    steps: np.ndarray
    loss: np.ndarray
    lr: np.ndarray
    grad_norm: np.ndarray
    batch: int
    fault: int | None = None  # the step the fault was injected at
    fault_end: int | None = None  # last faulty step (None: to the end)
    cause: str | None = None
    oscillating: bool = False
    osc_cause: str | None = None
    osc_share: float | None = None  # an epoch sawtooth's share of the variance (its label)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    segments: list[tuple[np.ndarray, np.ndarray]] | None = None  # resumed: (steps, rows)
    expected: str | None = None
    notes: str = ""


# ---------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------
def _trend(rng: Rng, n: int, l0: float | None = None) -> np.ndarray:
    l0 = l0 if l0 is not None else float(rng.choice([2.3, 3.3, 4.3, 1.8]))
    floor = l0 * float(rng.uniform(0.15, 0.75))
    tau = float(rng.uniform(30, 300))
    alpha = float(rng.uniform(0.5, 1.5))
    t = np.arange(n, dtype=np.float64)
    return floor + (l0 - floor) * (1 + t / tau) ** (-alpha)


def _noise(rng: Rng, trend: np.ndarray, batch: int, shape: float, rho: float) -> np.ndarray:
    """The mean of `batch` per-sample losses drawn from a gamma law of mean `trend` and
    shape `shape` (1 = exponential, a cross-entropy's typical spread), with AR(1) smoothing
    of the relative noise when rho > 0."""
    n = len(trend)
    draws = rng.gamma(shape * batch, 1.0 / (shape * batch), n)  # mean 1: a batch mean
    rel = np.log(draws)
    if rho > 0:
        out = np.empty(n)
        acc = 0.0
        for i in range(n):
            acc = rho * acc + math.sqrt(1 - rho * rho) * rel[i]
            out[i] = acc
        rel = out
    return np.asarray(trend * np.exp(rel), dtype=np.float64)


def _lr(n: int, peak: float, warmup: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float64)
    warm = np.minimum(1.0, (t + 1) / max(1, warmup))
    cos = 0.5 * (1 + np.cos(np.pi * np.clip((t - warmup) / max(1, n - warmup), 0, 1)))
    return np.asarray(peak * warm * (0.1 + 0.9 * cos), dtype=np.float64)


def _grad(rng: Rng, loss: np.ndarray, trend: np.ndarray) -> np.ndarray:
    g0 = float(rng.uniform(0.3, 3.0))
    with np.errstate(invalid="ignore"):
        g = g0 * np.sqrt(np.abs(loss) / trend[0]) * np.exp(0.15 * rng.standard_normal(len(loss)))
    return np.asarray(g, dtype=np.float64)


def _base(rng: Rng, n: int, batch: int | None = None, shape: float | None = None,
          rho: float | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    batch = batch if batch is not None else int(rng.choice([16, 32, 64, 128, 256]))
    # per-sample spread: a classifier's cross-entropy (shape ~1.5-3) to an LM's per-sequence
    # mean over many tokens (shape ~20): log-uniform between them
    shape = shape if shape is not None else float(np.exp(rng.uniform(np.log(1.5), np.log(20))))
    rho = rho if rho is not None else float(rng.choice([0.0, 0.0, 0.3, 0.6]))
    trend = _trend(rng, n)
    return _noise(rng, trend, batch, shape, rho), trend, batch


# ---------------------------------------------------------------------------------------
# families
# ---------------------------------------------------------------------------------------
def clean(rng: Rng) -> Curve:
    n = int(rng.integers(1500, 3001))
    kind = rng.integers(0, 4)
    batch = int(rng.choice([24, 32])) if kind == 0 else None
    shape = 0.5 if kind == 0 else None
    loss, trend, b = _base(rng, n, batch=batch, shape=shape)
    lr = _lr(n, float(rng.uniform(1e-4, 3e-3)), int(rng.integers(0, 200)))
    c = Curve(np.arange(1, n + 1), loss, lr, _grad(rng, loss, trend), b,
              notes=f"clean, batch {b}" + (", heavy per-sample tail" if kind == 0 else ""))
    if kind == 1:
        c.loss = np.round(c.loss, 4)
        c.notes += ", rounded to 4 decimals"
    return c


def osc(rng: Rng) -> Curve:
    n = int(rng.integers(1500, 3001))
    kind = int(rng.integers(0, 5))
    lr = _lr(n, float(rng.uniform(1e-4, 3e-3)), int(rng.integers(0, 100)))
    t = np.arange(n, dtype=np.float64)
    if kind == 0:  # tiny batch
        b = int(rng.choice([2, 3, 4]))
        loss, trend, _ = _base(rng, n, batch=b, shape=float(rng.uniform(0.8, 1.5)), rho=0.0)
        c = Curve(np.arange(1, n + 1), loss, lr, _grad(rng, loss, trend), b, oscillating=True,
                  osc_cause="batch_noise", notes=f"batch of {b}: very noisy loss")
        return c
    if kind in (1, 2):  # cyclic LR (triangular) or a per-sample cosine scheduler
        per = int(rng.integers(120, 320))
        phase = (t % per) / per
        cyc = 1 - np.abs(2 * phase - 1) if kind == 1 else 0.5 * (1 + np.cos(2 * np.pi * phase))
        peak = float(rng.uniform(1e-3, 1e-2))
        lr = peak * (0.1 + 0.9 * cyc)
        loss, trend, b = _base(rng, n)
        amp = float(rng.uniform(0.08, 0.3))
        # the loss answers the LR with a short lag
        lag = int(rng.integers(2, max(3, per // 10)))
        resp = np.roll(cyc, lag)
        loss = loss * (1 + amp * resp)
        return Curve(np.arange(1, n + 1), loss, lr, _grad(rng, loss, trend), b,
                     oscillating=True, osc_cause="cyclic_lr",
                     notes=("triangular cyclic LR" if kind == 1 else
                            "cosine scheduler stepped per sample") + f", period {per}")
    if kind == 3:  # zig-zag between two sources
        loss, trend, b = _base(rng, n, rho=0.0)
        f = float(rng.uniform(1.15, 1.4))
        loss = loss * np.where(np.arange(n) % 2 == 0, math.sqrt(f), 1 / math.sqrt(f))
        return Curve(np.arange(1, n + 1), loss, lr, _grad(rng, loss, trend), b,
                     oscillating=True, osc_cause="data_mixture",
                     notes=f"round-robin over two sources, x{f:.2f} apart")
    # epoch sawtooth: the loss jumps at each epoch boundary and falls within the epoch
    per = int(rng.integers(20, 48))
    loss, trend, b = _base(rng, n, rho=0.0)
    jump = float(rng.uniform(0.15, 0.5))
    saw = np.log1p(jump * np.exp(-(t % per) / (per / 4)))
    share = periodic_share(saw, np.log(loss / trend))
    loss = loss * np.exp(saw)
    strong = share >= OSC_MIN_SHARE
    return Curve(np.arange(1, n + 1), loss, lr, _grad(rng, loss, trend), b,
                 oscillating=strong, osc_cause="data_order", osc_share=share,
                 notes=f"epoch sawtooth, {per}-step epochs, +{100 * jump:.0f}% at each boundary, "
                       f"{100 * share:.0f}% of the variance around the trend"
                       + ("" if strong else ": a swing under the noise floor, not an "
                          "oscillation"))


#: An epoch sawtooth is an oscillation (issue 8: "a swing larger than the run's own noise
#: floor predicts") when its periodic part carries at least this share of the variance of
#: the log loss around its trend, i.e. when the autocorrelation of that residual at the
#: period is at least 0.3. White noise gives 0 +- 0.05 over a 400-point block, so 0.3 is six
#: standard errors above what the noise floor predicts. The generator knows the share
#: exactly (its own sawtooth and its own noise); the detector estimates the same quantity
#: from the log (`osc_min_acf`), so the label and the detector share a definition, not a fit.
OSC_MIN_SHARE = 0.3


def periodic_share(periodic: np.ndarray, noise: np.ndarray) -> float:
    """var(periodic) / (var(periodic) + var(noise)): the population autocorrelation, at
    the period, of a periodic component plus independent noise."""
    vp, vn = float(np.var(periodic)), float(np.var(noise))
    return vp / (vp + vn) if vp + vn > 0 else 0.0


def bb(rng: Rng) -> Curve:
    n = int(rng.integers(1200, 2501))
    loss, trend, b = _base(rng, n)
    f = int(rng.integers(400, n - 300))
    if rng.random() < 0.5:
        r = float(rng.uniform(1.6, 5.0))
        loss[f] *= r
        end = f
        what = f"step {f + 1}: one bad batch x{r:.2f}"
    else:
        m = int(rng.integers(5, 41))
        r = float(rng.uniform(1.3, 2.0))
        loss[f:f + m] *= r
        end = f + m - 1
        what = f"steps {f + 1}-{f + m}: a bad shard x{r:.2f}"
    g = _grad(rng, loss, trend)
    return Curve(np.arange(1, n + 1), loss, _lr(n, 1e-3, 100), g, b, fault=f + 1,
                 fault_end=end + 1, cause="bad_batch", notes=what)


def lr(rng: Rng) -> Curve:
    n = int(rng.integers(1500, 2501))
    loss, trend, b = _base(rng, n)
    f = int(rng.integers(500, n - 500))
    sched = _lr(n, float(rng.uniform(3e-4, 2e-3)), 100)
    t = np.arange(n, dtype=np.float64)
    d = np.clip(t - f, 0, None)
    if rng.random() < 0.5:
        k = float(rng.uniform(3, 10))
        sched[f:] *= k
        rise = float(rng.uniform(0.3, 1.2))
        tau_up, tau_down = float(rng.uniform(3, 15)), float(rng.uniform(40, 150))
        bump = rise * (1 - np.exp(-d / tau_up)) * np.exp(-d / tau_down)
        what = f"from step {f + 1} the LR is x{k:.1f}"
    else:
        sched[f:] = sched[f:] * 0 + sched.max()
        rise = float(rng.uniform(0.25, 0.5))
        tau_up, tau_down = float(rng.uniform(5, 20)), float(rng.uniform(40, 100))
        bump = rise * (1 - np.exp(-d / tau_up)) * np.exp(-d / tau_down)
        what = f"at step {f + 1} the cosine schedule restarts at its peak"
    loss = loss * (1 + np.where(t >= f, bump, 0.0))
    return Curve(np.arange(1, n + 1), loss, sched, _grad(rng, loss, trend), b, fault=f + 1,
                 cause="lr_schedule", notes=what)


def gx(rng: Rng) -> Curve:
    n = int(rng.integers(1200, 2001))
    loss, trend, b = _base(rng, n)
    f = int(rng.integers(500, n - 200))
    t = np.arange(n, dtype=np.float64)
    tau = float(rng.uniform(20, 120))
    grow = np.exp(np.clip((t - f) / tau, 0, 8))
    loss = np.minimum(loss * grow, 50 * trend[0])
    g = _grad(rng, loss, trend) * grow ** 2
    return Curve(np.arange(1, n + 1), loss, _lr(n, 1e-3, 100), g, b, fault=f + 1,
                 cause="grad_explosion", notes=f"from step {f + 1} the loss grows e-fold every "
                 f"{tau:.0f} steps until the log ends")


def nan(rng: Rng) -> Curve:
    n = int(rng.integers(1200, 2001))
    loss, trend, b = _base(rng, n)
    f = int(rng.integers(400, n - 300))
    m = 1 if rng.random() < 0.5 else int(rng.integers(2, 30))
    loss[f:f + m] = np.nan if rng.random() < 0.7 else np.inf
    return Curve(np.arange(1, n + 1), loss, _lr(n, 1e-3, 100), _grad(rng, loss, trend), b,
                 fault=f + 1, fault_end=f + m, cause="numerical_nan",
                 notes=f"steps {f + 1}-{f + m}: non-finite loss")


def amp(rng: Rng) -> Curve:
    n = int(rng.integers(1500, 2501))
    loss, trend, b = _base(rng, n)
    scale = np.empty(n)
    skipped = np.zeros(n)
    s = 2.0 ** 16
    good = 0
    for i in range(n):
        if good >= 200 and rng.random() < 0.3:
            s /= 2
            skipped[i] = 1
            good = 0
        else:
            good += 1
            if good % 200 == 0:
                s *= 2
        scale[i] = s
    c = Curve(np.arange(1, n + 1), loss, _lr(n, 1e-3, 100), _grad(rng, loss, trend), b,
              extra={"loss_scale": scale, "skipped_step": skipped},
              notes="fp16 with dynamic loss scaling: routine growth and overflow skips")
    if rng.random() < 0.5:
        f = int(rng.integers(500, n - 300))
        m = int(rng.integers(10, 40))
        c.loss[f:f + m] = np.nan
        scale[f:] = scale[f:] / 2.0 ** np.minimum(np.arange(n - f) + 1, m)
        skipped[f:f + m] = 1
        c.fault, c.fault_end, c.cause = f + 1, f + m, "amp_overflow"
        c.notes = f"fp16: steps {f + 1}-{f + m} overflow, the scale collapses"
    return c


def resume(rng: Rng) -> Curve:
    n = int(rng.integers(1500, 2201))
    shape = float(np.exp(rng.uniform(np.log(1.5), np.log(20))))
    loss, trend, b = _base(rng, n, shape=shape, rho=0.0)
    back = int(rng.integers(600, n - 400))  # the checkpoint the run is rolled back to
    kill = back + int(rng.integers(100, 300))  # the last step of the abandoned segment
    sup = _noise(rng, trend[back:kill], b, shape, 0.0)  # the same data, other batches
    c = Curve(np.arange(1, n + 1), loss, _lr(n, 1e-3, 100), _grad(rng, loss, trend), b,
              notes=f"killed after step {kill}, resumed from the step-{back} checkpoint")
    if rng.random() < 0.6:
        f = kill - int(rng.integers(5, 40))
        r = float(rng.uniform(1.8, 5.0))
        sup[f - back:f - back + 3] *= r
        c.fault, c.fault_end, c.cause = f + 1, f + 3, "bad_batch"
        c.notes += f"; the abandoned segment spiked x{r:.1f} at step {f + 1}"
    c.segments = [(np.arange(1, kill + 1), np.concatenate([loss[:back], sup])),
                  (np.arange(back + 1, n + 1), loss[back:])]
    return c


def short(rng: Rng) -> Curve:
    kind = int(rng.integers(0, 4))
    every = int(rng.choice([1, 10]))
    start = int(rng.integers(1000, 30000)) // 10 * 10
    level = float(rng.uniform(2.0, 3.5))
    if kind == 0:  # climbing excerpt
        k = int(rng.integers(5, 8))
        total = float(rng.uniform(1.5, 2.5))
        steps_up = np.sort(rng.uniform(0.3, 1.0, k - 1))
        x = np.concatenate([[0.0], np.cumsum(steps_up / steps_up.sum() * math.log(total))])
        loss = level * np.exp(x)
        g = float(rng.uniform(0.5, 3)) * np.exp(x * float(rng.uniform(1.5, 3)))
        st = start + every * np.arange(k)
        return Curve(st, loss, np.full(k, 3e-5), g, 432, fault=int(st[1]), cause="grad_explosion",
                     notes=f"{k}-line excerpt, the loss climbs x{total:.2f} with the grad norm")
    if kind == 1:  # 3-line jump
        st = start + every * np.arange(3)
        loss = np.array([level, level * 1.02, level * float(rng.uniform(2.2, 3.0))])
        return Curve(st, loss, np.full(3, 3e-5), np.array([1.0, 1.1, 8.0]), 432,
                     fault=int(st[2]), cause="grad_explosion", notes="3-line excerpt with a jump")
    if kind == 2:  # one point
        return Curve(np.array([start]), np.array([level]), np.array([3e-5]), np.array([1.0]),
                     432, expected="insufficient_data", notes="a log with one loss")
    k = int(rng.integers(3, 7))
    st = start + every * np.arange(k)
    loss = level * np.exp(0.01 * rng.standard_normal(k))
    return Curve(st, loss, np.full(k, 3e-5), np.ones(k), 432, expected="insufficient_data",
                 notes=f"a flat {k}-line excerpt")


def stall(rng: Rng) -> Curve:
    n = int(rng.integers(1500, 3001))
    l0 = float(rng.uniform(2.0, 8.0))
    trend = np.full(n, l0)
    b = int(rng.choice([16, 32, 64]))
    loss = _noise(rng, trend, b, float(rng.uniform(1.0, 3.0)), float(rng.choice([0.0, 0.5])))
    return Curve(np.arange(1, n + 1), loss, _lr(n, 1e-3, 100), _grad(rng, loss, trend) * 0.01, b,
                 notes=f"the loss never leaves {l0:.2f}: a run that does not learn")


FAMILIES: dict[str, Callable[[Rng], Curve]] = {
    "clean": clean, "osc": osc, "bb": bb, "lr": lr, "gx": gx, "nan": nan, "amp": amp,
    "resume": resume, "short": short, "stall": stall,
}


# ---------------------------------------------------------------------------------------
# labels and writing
# ---------------------------------------------------------------------------------------
def label_event(steps: np.ndarray, loss: np.ndarray, fault: int,
                for_good: bool = False) -> dict[str, Any] | None:
    """The bench's rule: the band is the 100 logged steps before the fault. `for_good`
    (a climb to the end of the log): the event starts where the loss leaves the band for
    good, i.e. after the last stretch of 10 in-band losses."""
    i = int(np.searchsorted(steps, fault))
    band = loss[max(0, i - 100):i]
    band = band[np.isfinite(band)]
    hi = float(band.max()) if len(band) else -math.inf
    if for_good:
        inb = np.isfinite(loss) & (loss <= hi)
        last_ok = i
        for j in range(i, len(loss) - 9):
            if inb[j:j + 10].all():
                last_ok = j + 10
        i = max(i, last_ok)
    above = [j for j in range(i, len(loss)) if not np.isfinite(loss[j]) or loss[j] > hi]
    if not above:
        return None
    s = above[0]
    if s > i + 200:
        return None
    inband = np.isfinite(loss) & (loss <= hi)
    end, rec = len(loss) - 1, False
    for j in range(s + 1, len(loss)):
        w = inband[j:j + 10]
        if len(w) == 10 and w.all():
            end, rec = j, True
            break
    fin = np.where(np.isfinite(loss), loss, -np.inf)
    peak = s + int(np.argmax(fin[s:end + 1])) if np.isfinite(loss[s:end + 1]).any() else s
    return {"start": int(steps[s]), "end": int(steps[end]), "peak_step": int(steps[peak]),
            "fault_step": int(fault), "recovered": rec, "segment": 0,
            "nonfinite_steps": int((~np.isfinite(loss[s:end + 1])).sum())}


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(float(v))


def write_run(out: Path, rid: str, c: Curve, rng: Rng) -> dict[str, Any]:
    d = out / "runs" / rid
    d.mkdir(parents=True, exist_ok=True)
    n = len(c.steps)
    samples = c.batch * c.steps
    with_samples = rng.random() < 0.7
    if c.segments is not None:
        # a resumed CSV: the abandoned segment's rows, then the replay from the checkpoint
        rows = []
        for st, vals in c.segments:
            for s, v in zip(st, vals, strict=True):
                rows.append(f"{int(s)},{_fmt(v)},{_fmt(c.lr[int(s) - 1])},"
                            f"{_fmt(c.grad_norm[int(s) - 1])},{int(c.batch * s)}")
        (d / "train_log.csv").write_text("step,loss,lr,grad_norm,samples\n" + "\n".join(rows)
                                         + "\n")
        return {"file": f"runs/{rid}/train_log.csv", "format": "csv", "segments": 2}
    fmt = "megatron_log" if c.steps[0] > 1 and n < 20 else str(rng.choice(["csv", "jsonl"]))
    if fmt == "megatron_log":
        lines = []
        for i in range(n):
            lines.append(
                f" iteration {int(c.steps[i]):8d}/  200000 | consumed samples: "
                f"{int(samples[i]):12d} | learning rate: {c.lr[i]:.3E} | global batch size: "
                f"{c.batch:5d} | lm loss: {c.loss[i]:.6E} | loss scale: 65536.0 | grad norm: "
                f"{c.grad_norm[i]:.3f} | number of skipped iterations:   0 | number of nan "
                "iterations:   0 |")
        (d / "train.log").write_text("\n".join(lines) + "\n")
        return {"file": f"runs/{rid}/train.log", "format": "megatron_log", "segments": 1}
    cols: dict[str, np.ndarray] = {"step": c.steps.astype(np.float64), "loss": c.loss,
                                   "lr": c.lr, "grad_norm": c.grad_norm}
    if with_samples:
        cols["samples"] = samples.astype(np.float64)
    for k, v in c.extra.items():
        cols[k] = v
    names = list(cols)
    if fmt == "csv":
        body = [",".join(names)]
        for i in range(n):
            body.append(",".join(str(int(cols[k][i])) if k in ("step", "samples")
                                 else _fmt(cols[k][i]) for k in names))
        (d / "train_log.csv").write_text("\n".join(body) + "\n")
        return {"file": f"runs/{rid}/train_log.csv", "format": "csv", "segments": 1}
    with (d / "metrics.jsonl").open("w") as fh:
        for i in range(n):
            rec = {k: (int(cols[k][i]) if k in ("step", "samples") else _fmt(cols[k][i])
                       if not math.isfinite(cols[k][i]) else float(cols[k][i])) for k in names}
            fh.write(json.dumps(rec) + "\n")
    return {"file": f"runs/{rid}/metrics.jsonl", "format": "jsonl", "segments": 1}


def generate(out: Path, seed: int, per_family: int) -> dict[str, Any]:
    labels: dict[str, Any] = {}
    for fi, (fam, make) in enumerate(FAMILIES.items()):
        made = 0
        s = seed + 1000 * fi
        while made < per_family:
            s += 1
            rng = np.random.default_rng(s)
            c = make(rng)
            events = []
            if c.fault is not None:
                if c.segments is not None:
                    st, vals = c.segments[0]
                    ev = label_event(st, vals, c.fault)
                else:
                    ev = label_event(c.steps, c.loss, c.fault, for_good=c.fault_end is None
                                     and c.cause == "grad_explosion")
                if ev is None:
                    continue  # the fault never left the band: redraw
                ev["cause"] = c.cause
                if c.segments is not None:
                    # the event lives in the abandoned segment, which ends at its last step
                    last = int(c.segments[0][0][-1])
                    ev["end"] = min(ev["end"], last)
                    ev["superseded"] = True
                    ev["recovered"] = ev["recovered"] and ev["end"] < last
                events.append(ev)
            rid = f"g{fam}{made:02d}"
            info = write_run(out, rid, c, rng)
            label = {
                **info, "scenario": f"{fam}_{c.osc_cause or c.cause or 'none'}",
                "family": fam, "seed": s, "events": events,
                "causes": [c.cause] if c.cause else ["none"],
                "verdict": c.cause if events else "none",
                "oscillating": c.oscillating, "oscillation_cause": c.osc_cause,
                "notes": c.notes, "last_step": int(c.steps[-1]), "steps_logged": len(c.steps),
            }
            if c.expected:
                label["expected_verdict"] = c.expected
            labels[rid] = label
            made += 1
    (out / "labels.json").write_text(json.dumps(labels, indent=1))
    return labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--per-family", type=int, default=6)
    args = ap.parse_args()
    labels = generate(args.out, args.seed, args.per_family)
    print(f"{len(labels)} labelled runs in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cause `model_stats`: the model's own statistics moved before the loss did. Two signatures:

- the update-to-parameter ratio (the logged `update_ratio`, else `update_norm / param_norm`)
  rising before the rise: the optimizer taking steps too large for the weights; where only
  the parameter norm is logged (Megatron `params norm`), a jump of the norm over the
  precursor window far beyond its usual drift over as many points;
- per-layer weight, activation, attention-logit or output-logit statistics (max, RMS, norm;
  TensorBoard histograms give min/max/mean/RMS): the layer whose statistic left its own
  baseline first is named, as `grad_explosion` does for per-layer grad norms. Attention-logit
  growth before a spike is the mechanism QK-layernorm was introduced against (Dehghani et al.
  2023, Wortsman et al. 2023), output-logit growth the one z-loss counters (PaLM); the remedy
  says which.

A statistic leaves its baseline when it is `LEAVE_RATIO` times the median of the `window`
points before the precursor window and `LEAVE_Z` robust scales (MAD of its log) above it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from spikelens.causes import CAUSES
from spikelens.causes._window import (
    PRECURSOR_POINTS,
    Context,
    arrays,
    evidence,
    fmt,
    fmt_ratio,
    mag,
    median_of,
    sentence,
)
from spikelens.metrics import normalise
from spikelens.model import Event, Evidence, Run, Skipped
from spikelens.readers._ranks import is_rank_column

CAUSE = "model_stats"
#: The update/param ratio this many times its baseline before the rise is a precursor.
RATIO_PRECURSOR = 2.0
#: A per-layer statistic leaves its baseline at this ratio...
LEAVE_RATIO = 1.5
#: ...and this robust z (log space).
LEAVE_Z = 8.0
#: Floor of a statistic's log scale: 0.5% (printed digits, slow drift).
SCALE_FLOOR = math.log(1.005)
#: A parameter-norm jump over the precursor window must be this many robust scales beyond
#: its usual change over as many points, and at least this relative size.
PNORM_Z = 8.0
PNORM_MIN = 0.01
#: Fewest baseline points.
MIN_BASE = 5

_ATTN = re.compile(r"(?:attn|attention|self_attn)\w{0,20}[/_]{0,2}(?:logit|score)|qk_?logit|"
                   r"qk_?max|attn_?max|max_?attn_?logit")
_OUTPUT = re.compile(r"output_?logit|lm_?head.*logit|logits?_?(?:max|rms|norm|mean)|z_?loss|"
                     r"^logits?$|/logits?(?:/|$)")
_ACT = re.compile(r"activation|act_?(?:rms|max|norm|mean)|hidden_?states?|residual|"
                  r"(?:^|[/_])(?:out|output)_?(?:rms|max|norm)")
_WEIGHT = re.compile(r"weight|(?:^|[/_])param_?(?:rms|max|norm)|(?:^|[/_])w_?(?:rms|max|norm)")
_STAT = re.compile(r"(?:^|[/_])(?:hist_)?(max|min|rms|mean|norm|std|absmax|amax)(?:$|[/_])")
_LAYER = re.compile(r"(?:layers?|blocks?|h)[/_.]?(\d+)|(\d+)")


@dataclass(frozen=True)
class Departure:
    column: str
    kind: str  # "attention logits", "output logits", "activations", "weights"
    step: int
    ratio: float  # value / baseline at the departure (inf for a non-finite value)
    z: float
    before_rise: bool
    peak_ratio: float  # the highest value / baseline from the departure to the rise


def _kind(col: str) -> str | None:
    if is_rank_column(col):
        return None
    n = normalise(col)
    if "grad" in n or ("loss" in n and "z_loss" not in n and "zloss" not in n):
        return None
    if _ATTN.search(n):
        return "attention logits"
    if _OUTPUT.search(n):
        return "output logits"
    if _STAT.search(n) is None:
        return None
    if _ACT.search(n):
        return "activations"
    if _WEIGHT.search(n):
        return "weights"
    return None


def _departure(steps: np.ndarray, vals: np.ndarray, event: Event,
               window: int) -> tuple[int, float, float, float] | None:
    """(step, ratio, z, peak ratio) where the statistic first left its baseline, between
    the precursor window and the peak, or None. The peak ratio is the highest it reached
    from there to the start of the rise (the departure's own ratio if that is later)."""
    vals = np.abs(vals)
    start = int(np.searchsorted(steps, event.start_step))
    lo = max(0, start - PRECURSOR_POINTS)
    base = vals[max(0, lo - window):lo]
    base = base[np.isfinite(base) & (base > 0)]
    if len(base) < MIN_BASE:
        return None
    lb = np.log(base)
    med = median_of(lb)
    scale = max(1.4826 * median_of(np.abs(lb - med)), SCALE_FLOOR)
    hi = int(np.searchsorted(steps, max(event.peak_step, event.start_step), side="right"))
    for i in range(lo, hi):
        v = float(vals[i])
        if not math.isfinite(v):
            return int(steps[i]), math.inf, math.inf, math.inf
        if v <= 0:
            continue
        x = math.log(v)
        if x - med >= max(math.log(LEAVE_RATIO), LEAVE_Z * scale):
            upto = vals[i:max(i + 1, start + 1)]
            peak = float(np.max(upto)) if np.all(np.isfinite(upto)) else math.inf
            return int(steps[i]), math.exp(x - med), (x - med) / scale, \
                max(peak / math.exp(med), math.exp(x - med))
    return None


def _layer_columns(run: Run) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(column, kind, steps, values) of the per-layer statistics with enough logged points,
    in the order of `run.extras`: prepared once per run (the kinds are regex matches on the
    names, the logged points a mask over the whole column), not once per event."""
    a = arrays(run)
    if "model_stats_layers" not in a.misc:
        out: list[tuple[str, str, np.ndarray, np.ndarray]] = []
        for col in a.frame_extras():
            kind = _kind(col)
            if kind is None:
                continue
            s = run.frame[col]
            keep = s.notna().to_numpy()
            nan_at = run.nan_steps.get(col)
            if nan_at is not None and len(nan_at):
                # not `|=`: pandas may hand out a read-only mask (a logged NaN in a
                # per-layer statistic crashed the rule on main: "output array is read-only")
                keep = keep | np.isin(s.index.to_numpy(), nan_at)
            if keep.sum() < MIN_BASE + 1:
                continue
            out.append((col, kind, s.index.to_numpy()[keep],
                        s.to_numpy(dtype=np.float64)[keep]))
        a.misc["model_stats_layers"] = out
    got: list[tuple[str, str, np.ndarray, np.ndarray]] = a.misc["model_stats_layers"]
    return got


def _first_layer(run: Run, event: Event, window: int) -> tuple[Departure | None, int]:
    """The per-layer statistic that left its baseline first, and how many were looked at."""
    best: Departure | None = None
    looked = 0
    for col, kind, steps, vals in _layer_columns(run):
        looked += 1
        d = _departure(steps, vals, event, window)
        if d is None:
            continue
        cand = Departure(col, kind, d[0], d[1], d[2], d[0] < event.start_step, d[3])
        if best is None or cand.step < best.step or (
                cand.step == best.step and cand.ratio > best.ratio):
            best = cand
    return best, looked


@dataclass(frozen=True)
class RatioRise:
    what: str  # "update/param ratio" or "param norm"
    step: int
    ratio: float  # precursor over baseline (ratio), or the relative jump (param norm)
    base: float
    z: float


def _aligned(run: Run, a: str, b: str) -> tuple[np.ndarray, np.ndarray] | None:
    ca, cb = run.column(a), run.column(b)
    if ca is None or cb is None or ca not in run.frame.columns or cb not in run.frame.columns:
        return None
    f = run.frame[[ca, cb]].dropna()
    va, vb = f[ca].to_numpy(dtype=np.float64), f[cb].to_numpy(dtype=np.float64)
    ok = np.isfinite(va) & np.isfinite(vb) & (vb > 0) & (va >= 0)
    return f.index.to_numpy()[ok], va[ok] / vb[ok]


def _ratio_rise(run: Run, event: Event, window: int) -> RatioRise | None:
    got: tuple[np.ndarray, np.ndarray] | None = None
    s = run.series("update_ratio")
    if s is not None and len(s):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isfinite(v) & (v > 0)
        got = s.index.to_numpy()[ok], v[ok]
    else:
        got = _aligned(run, "update_norm", "param_norm")
    if got is not None and len(got[0]) > MIN_BASE:
        steps, vals = got
        start = int(np.searchsorted(steps, event.start_step))
        lo = max(0, start - PRECURSOR_POINTS)
        base = vals[max(0, lo - window):lo]
        base = base[base > 0]
        # the precursor: the points before the loss rose (the rise's own step included)
        pre = vals[lo:min(len(vals), start + 1)]
        if len(base) >= MIN_BASE and len(pre):
            b = median_of(base)
            k = int(np.argmax(pre))
            r = float(pre[k]) / b
            if r >= RATIO_PRECURSOR:
                lb = np.log(base)
                sc = max(1.4826 * median_of(np.abs(lb - np.median(lb))), SCALE_FLOOR)
                return RatioRise("update/param ratio", int(steps[lo + k]), r, b,
                                 math.log(r) / sc)
        return None
    p = run.series("param_norm")
    if p is None or len(p) <= MIN_BASE + PRECURSOR_POINTS:
        return None
    v = p.to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(v) & (v > 0)
    steps, vals = p.index.to_numpy()[ok], v[ok]
    start = int(np.searchsorted(steps, event.start_step))
    k = PRECURSOR_POINTS
    lo = max(0, start - k)
    if start - lo < 2:
        return None
    x = np.log(vals)
    jump = float(x[min(start, len(x) - 1)] - x[lo])
    # the usual change over as many points, before the precursor window
    hist = x[max(0, lo - window):lo + 1]
    d = hist[k:] - hist[:-k] if len(hist) > k else np.empty(0)
    if len(d) < MIN_BASE:
        return None
    med = median_of(d)
    sc = max(1.4826 * median_of(np.abs(d - med)), SCALE_FLOOR / 5)
    z = (jump - med) / sc
    if z >= PNORM_Z and jump >= math.log1p(PNORM_MIN):
        return RatioRise("param norm", int(steps[min(start, len(steps) - 1)]),
                         math.exp(jump), float(vals[lo]), z)
    return None


_REMEDY = {
    "attention logits": "QK-layernorm (normalise queries and keys before their dot product), "
                        "or cap the attention logits; attention-logit growth is the known "
                        "mechanism behind such spikes (Dehghani et al. 2023, Wortsman et al. "
                        "2023); a lower LR or longer warmup also delays it",
    "output logits": "a z-loss on the output softmax (1e-4 x log^2 Z, as in PaLM) keeps the "
                     "output logits from drifting; or lower the LR of the output layer",
    "activations": "check the normalisation around that layer (pre-LN, an extra norm after "
                   "the block) and lower its LR; activations that grow before a spike feed "
                   "the attention and output logits",
    "weights": "more weight decay or a lower LR for that layer; weights that grow before a "
               "spike are the optimizer taking steps too large for them",
}


def rule(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    window = ctx.config.window
    has_ratio = run.has("update_ratio") or run.has("param_norm")
    layer, looked = _first_layer(run, event, window)
    if not has_ratio and looked == 0:
        return Skipped(CAUSE, "needs param_norm, an update/param ratio or per-layer weight, "
                              "activation or attention-logit statistics; none in this log")
    parts: list[str] = []
    remedy: list[str] = []
    score = 0.0
    rr = _ratio_rise(run, event, window)
    if rr is not None and rr.step <= event.start_step:
        if rr.what == "param norm":
            parts.append(f"the param norm jumped {100 * (rr.ratio - 1):.1f}% (from "
                         f"{fmt(rr.base)}) over the {PRECURSOR_POINTS} logged points before "
                         f"the loss rose at step {event.start_step}, {rr.z:.0f} robust scales "
                         "beyond its usual drift")
            score = max(score, 0.45 + 0.35 * mag(rr.z, PNORM_Z, 100.0))
        else:
            parts.append(f"the update/param ratio reached {fmt_ratio(rr.ratio)} its "
                         f"{fmt(rr.base)} baseline at step {rr.step}, before the loss rose at "
                         f"step {event.start_step}")
            score = max(score, 0.7 + 0.25 * mag(rr.ratio, RATIO_PRECURSOR, 30.0))
        remedy.append("lower the LR (or its peak), raise Adam's epsilon or clip the update "
                      "(per-parameter update clipping, as in Adafactor/StableAdamW); the "
                      "optimizer's steps were too large for the weights")
    if layer is not None:
        when = "before the loss rose" if layer.before_rise else "with the rise"
        reached = (f", and was {fmt_ratio(layer.peak_ratio)} it" if layer.before_rise and
                   layer.peak_ratio > layer.ratio * 1.05 else "")
        parts.append(f"the {layer.kind} statistic {layer.column} left its baseline first, at step "
                     f"{layer.step} ({fmt_ratio(layer.ratio)} its level{reached}), {when}"
                     + (f" at step {event.start_step}" if layer.before_rise else ""))
        if layer.before_rise:
            # a precursor with the right timing, like grad_explosion's: strength by how far
            # the statistic had gone by the time the loss rose
            s = 0.65 + 0.25 * mag(layer.peak_ratio, LEAVE_RATIO, 30.0)
            if layer.kind in ("attention logits", "output logits"):
                s += 0.1  # the known mechanism of logit-driven spikes
        else:
            s = 0.3  # a bad batch raises activations and logits on the same step
        score = max(score, s)
        remedy.append(f"look at {layer.column} first: {_REMEDY[layer.kind]}")
    if score <= 0:
        return None
    facts: dict[str, object] = {
        "ratio_signal": rr.what if rr else None,
        "ratio_step": rr.step if rr else None,
        "ratio_over_baseline": rr.ratio if rr else None,
        "first_layer": layer.column if layer else None,
        "first_layer_kind": layer.kind if layer else None,
        "first_layer_step": layer.step if layer else None,
        "first_layer_ratio": layer.ratio if layer else None,
        "first_layer_peak_ratio": layer.peak_ratio if layer else None,
        "layer_statistics": looked,
    }
    return evidence(CAUSE, min(score, 0.95), sentence(parts), facts, sentence(remedy))


CAUSES.add(CAUSE, rule)

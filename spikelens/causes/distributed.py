"""Cause `distributed`: the cluster, not the model. Three signatures, each judged against the
log's own noise:

- a desynchronised replica: where the log keeps every rank's series (`rank<N>/<metric>`, from
  rank-prefixed lines or one file per rank), ranks whose loss or grad norm leave the others
  at the rise by far more than the ranks ever disagreed before (robust z of each rank's log
  deviation from the cross-rank median, against the pooled deviations before the event);
- a resume (or a batch ramp) with a different global batch size or world size shortly before
  the rise: the loss level moves with the batch (and with the LR the schedule gives it), not
  with the data;
- error lines (NCCL errors and watchdog timeouts, CUDA/ECC errors, OOM, failed ranks, SLURM
  node messages) or a step-time slowdown (a straggler) coinciding with the rise:
  circumstantial on their own.

The messages the log printed near the incident are attached as the `environment` evidence
(step, rank, level, text), so every renderer shows them beside the cause."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spikelens.causes import CAUSES
from spikelens.causes._window import Context, arrays, evidence, fmt, fmt_ratio, mag, sentence
from spikelens.metrics import role_of
from spikelens.model import Event, Evidence, LogMessage, Run, Skipped
from spikelens.readers._ranks import message_kind, rank_column

CAUSE = "distributed"
#: Logged points before the rise in which a change counts as "just before" (as for the LR).
NEAR_POINTS = 20
#: A rank disagrees when its log deviation from the cross-rank median is this many robust
#: scales of the pre-event deviations...
RANK_Z = 8.0
#: ...and at least this ratio (the rank's value over the median of all ranks).
RANK_RATIO = 1.2
#: Floor of the deviation scale: ranks that print the same all-reduced value agree to the
#: printed digits, so a 0.1% difference is already a disagreement.
RANK_FLOOR = math.log(1.001)
#: Logged points after the peak over which a desynchronised rank must stay away (after
#: skipping AFTER_SKIP points of the event's own decay).
AFTER_POINTS = 10
AFTER_SKIP = 5
#: A global batch size or world size change of at least this ratio is worth reporting.
BATCH_RATIO = 1.1
#: Messages shown in the `environment` evidence.
MAX_LINES = 8


@dataclass(frozen=True)
class Desync:
    metric: str  # role: loss or grad_norm
    ranks: tuple[int, ...]  # the ranks that left the others
    step: int  # where the first of them was furthest out
    ratio: float  # its value over the cross-rank median there (or the inverse, if below)
    z: float
    nranks: int
    lasting: bool  # still away RECOVER points after the peak, or away before the rise


@dataclass(frozen=True)
class BatchChange:
    what: str  # "global batch size" or "world size"
    before: float
    after: float
    step: int  # first step logged with the new value
    at_restart: bool
    lr_before: float | None
    lr_after: float | None


def _per_rank(run: Run, role: str) -> dict[int, str]:
    # a function of the run's columns alone, asked for by every event: parsed once per run
    misc = arrays(run).misc
    key = f"per_rank:{role}"
    if key not in misc:
        misc[key] = _parse_per_rank(run, role)
    return dict(misc[key])


def _parse_per_rank(run: Run, role: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for col in run.frame.columns:
        rc = rank_column(str(col))
        if rc is None:
            continue
        hit = role_of(rc[1])
        if hit is not None and hit[0] == role:
            out.setdefault(rc[0], str(col))
    return out


def _desync(run: Run, event: Event, config_window: int) -> list[Desync]:
    out: list[Desync] = []
    for role in ("loss", "grad_norm"):
        cols = _per_rank(run, role)
        if len(cols) < 2:
            continue
        ranks = sorted(cols)
        mat = run.frame[[cols[r] for r in ranks]].to_numpy(dtype=np.float64)
        steps = run.frame.index.to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(mat > 0, np.log(mat), np.nan)
        rows = np.sum(np.isfinite(x), axis=1) >= 2
        x, st = x[rows], steps[rows]
        if len(st) == 0:
            continue
        med = np.nanmedian(x, axis=1)
        dev = x - med[:, None]
        start = int(np.searchsorted(st, event.start_step))
        lo = max(0, start - NEAR_POINTS)
        base = dev[max(0, lo - config_window):lo]
        base = base[np.isfinite(base)]
        if len(base) < 4:
            continue
        scale = max(1.4826 * float(np.median(np.abs(base - np.median(base)))), RANK_FLOOR)
        hi = int(np.searchsorted(st, max(event.peak_step, event.start_step), side="right"))
        win = dev[lo:hi]
        if len(win) == 0:
            continue
        bar = max(RANK_Z * scale, math.log(RANK_RATIO))
        away = np.abs(np.nan_to_num(win, nan=0.0)) >= bar
        bad = [ranks[j] for j in np.flatnonzero(away.any(axis=0))]
        # a majority moving together is the run moving, not a replica leaving it
        if not bad or len(bad) * 2 >= len(ranks):
            continue
        j = ranks.index(bad[0])
        k = int(np.argmax(np.abs(np.nan_to_num(win[:, j], nan=0.0))))
        d = float(win[k, j])
        # a replica that left the others stays away; one rank's bad micro-batch is a blip
        after = dev[hi + AFTER_SKIP:hi + AFTER_SKIP + AFTER_POINTS, j]
        after = after[np.isfinite(after)]
        early = bool(away[: max(0, start - lo), j].any())
        lasting = (len(after) >= AFTER_POINTS // 2 and
                   float(np.mean(np.abs(after) >= bar)) >= 0.5) or early
        out.append(Desync(role, tuple(bad), int(st[lo + k]), float(math.exp(abs(d))),
                          abs(d) / scale, len(ranks), lasting))
    return out


def _series(run: Run, role: str) -> tuple[np.ndarray, np.ndarray] | None:
    s = run.series(role)
    if s is None or len(s) == 0:
        return None
    v = s.to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(v) & (v > 0)
    if not ok.any():
        return None
    return s.index.to_numpy().astype(np.int64)[ok], v[ok]


def _per_step(run: Run, role: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Consumed samples or tokens per step, from the counter's increments (a resume that
    replays steps gives no increment there)."""
    s = _series(run, role)
    if s is None or len(s[0]) < 3:
        return None
    ds, dv = np.diff(s[0]), np.diff(s[1])
    ok = (ds > 0) & (dv > 0)
    if ok.sum() < 2:
        return None
    return s[0][1:][ok], dv[ok] / ds[ok]


def _batch_change(run: Run, event: Event) -> BatchChange | None:
    restarts = {r.resumed_at for r in run.restarts}
    lr = _series(run, "lr")
    best: BatchChange | None = None
    sources: list[tuple[str, tuple[np.ndarray, np.ndarray] | None]] = [
        ("global batch size", _series(run, "global_batch_size")),
        ("world size", _series(run, "world_size"))]
    if sources[0][1] is None:
        # no batch size printed: the consumed samples (else tokens) per step say the same
        derived = _per_step(run, "samples")
        sources.append(("samples per step", derived) if derived is not None
                       else ("tokens per step", _per_step(run, "tokens")))
    for what, s in sources:
        if s is None or len(s[0]) < 2:
            continue
        steps, vals = s
        start = int(np.searchsorted(steps, event.start_step, side="right"))
        lo = max(1, start - NEAR_POINTS)
        for i in range(lo, min(start + 1, len(vals))):
            if steps[i] > max(event.peak_step, event.start_step):
                break
            a, b = float(vals[i - 1]), float(vals[i])
            if max(a, b) / min(a, b) < BATCH_RATIO:
                continue
            step = int(steps[i])
            at_restart = any(int(steps[i - 1]) < r <= step for r in restarts) or step in restarts
            lb = la = None
            if lr is not None:
                lb = _value_before(lr, step)
                la = _value_at(lr, step)
            cand = BatchChange(what, a, b, step, at_restart, lb, la)
            if best is None or (cand.at_restart, max(b / a, a / b)) > \
                    (best.at_restart, max(best.after / best.before, best.before / best.after)):
                best = cand
    return best


def _value_before(s: tuple[np.ndarray, np.ndarray], step: int) -> float | None:
    i = int(np.searchsorted(s[0], step)) - 1
    return float(s[1][i]) if i >= 0 else None


def _value_at(s: tuple[np.ndarray, np.ndarray], step: int) -> float | None:
    i = int(np.searchsorted(s[0], step))
    return float(s[1][i]) if i < len(s[0]) else None


def _near(run: Run, event: Event) -> list[LogMessage]:
    """Messages printed from NEAR_POINTS logged intervals before the rise to its end."""
    lo = event.start_step - NEAR_POINTS * max(1, run.interval)
    hi = max(event.end_step, event.peak_step)
    return [m for m in run.messages if m.step is not None and lo <= m.step <= hi]


def _slow(run: Run, event: Event, ctx: Context) -> Event | None:
    from spikelens.detect.ops import slowdowns

    lo = event.start_step - NEAR_POINTS * max(1, run.interval)
    hi = max(event.peak_step, event.start_step)
    for ev in slowdowns(run, ctx.config):
        if ev.start_step <= hi and ev.end_step >= lo:
            return ev
    return None


def _line(m: LogMessage) -> str:
    where = f"step {m.step}" if m.step is not None else "step ?"
    rank = f", rank {m.rank}" if m.rank is not None else ""
    return f"[{m.level} {where}{rank}] {m.text}"


def rule(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    has_ranks = bool(_per_rank(run, "loss") or _per_rank(run, "grad_norm"))
    judgeable = has_ranks or run.has("global_batch_size") or run.has("world_size") or \
        run.has("samples") or run.has("tokens") or \
        bool(run.messages) or run.has("step_time") or run.has("tflops")
    if not judgeable:
        return Skipped(CAUSE, "needs per-rank series, a global batch size or world size, "
                              "error lines or a step time; none in this log")
    parts: list[str] = []
    remedy: list[str] = []
    scores: list[float] = []
    facts: dict[str, object] = {}

    for d in _desync(run, event, ctx.config.window):
        word = "loss" if d.metric == "loss" else "grad norm"
        named = ", ".join(str(r) for r in d.ranks)
        clause = (f"rank{'s' if len(d.ranks) > 1 else ''} {named} of {d.nranks} left the "
                  f"others' {word}: {fmt_ratio(d.ratio)} the cross-rank median at step "
                  f"{d.step} (z {d.z:.0f} against how far ranks had disagreed before)")
        if d.metric == "grad_norm":
            # the grad norm is all-reduced: replicas in step print the same number
            s = 0.6 + 0.35 * mag(d.ratio, RANK_RATIO, 10.0)
        elif d.lasting:
            clause += ", and stayed away"
            s = 0.55 + 0.4 * mag(d.ratio, RANK_RATIO, 10.0)
        else:
            # one rank's loss is its own micro-batch's: a bad sample on that shard does this
            clause += ", then rejoined them (that rank's micro-batch can explain it)"
            s = 0.35 + 0.1 * mag(d.ratio, RANK_RATIO, 10.0)
        parts.append(clause)
        scores.append(s)
        facts.setdefault("desync_metric", d.metric)
        facts.setdefault("desync_ranks", named)
        facts.setdefault("desync_step", d.step)
        facts.setdefault("desync_ratio", d.ratio)
        facts.setdefault("desync_z", d.z)
        facts.setdefault("ranks", d.nranks)
        facts.setdefault("desync_lasting", d.lasting)
        if not remedy:
            remedy.append(
                f"check rank{'s' if len(d.ranks) > 1 else ''} {named}: a replica whose "
                "weights or optimizer state left the others (a missed all-reduce, a "
                "non-deterministic kernel, a bad GPU); restart from a checkpoint before step "
                f"{event.start_step} and compare the ranks' parameter checksums")

    bc = _batch_change(run, event)
    if bc is not None:
        r = bc.after / bc.before
        where = "at the resume" if bc.at_restart else "just before the rise"
        clause = (f"the {bc.what} changed {fmt(bc.before)} -> {fmt(bc.after)} "
                  f"({fmt_ratio(max(r, 1 / r))}) {where} at step {bc.step}")
        if bc.lr_before is not None and bc.lr_after is not None:
            clause += f", the LR going {fmt(bc.lr_before)} -> {fmt(bc.lr_after)}"
        parts.append(clause)
        scores.append(0.45 + 0.35 * mag(max(r, 1 / r), BATCH_RATIO, 8.0)
                      + (0.1 if bc.at_restart else 0.0))
        facts.update({"batch_what": bc.what, "batch_before": bc.before,
                      "batch_after": bc.after, "batch_step": bc.step,
                      "batch_at_restart": bc.at_restart})
        remedy.append(
            f"resume with the same {bc.what} ({fmt(bc.before)}), or scale the LR with the "
            f"batch (linear for SGD, about square-root for Adam) and expect the loss level "
            f"to move with a changed batch")

    near = _near(run, event)
    errors = [m for m in near if m.level == "error"]
    if errors:
        kinds = sorted({message_kind(m) for m in errors})
        parts.append(f"{len(errors)} error line(s) ({', '.join(kinds)}) from step "
                     f"{errors[0].step}: {errors[0].text[:120]}")
        scores.append(0.3)
        facts["error_lines"] = len(errors)
        remedy.append("look at the error lines: a failed or restarted rank, a NCCL timeout "
                      "or an ECC error can corrupt one replica's step")

    slow = _slow(run, event, ctx)
    if slow is not None:
        parts.append(f"the step time rose {fmt_ratio(slow.size.ratio)} from step "
                     f"{slow.start_step} (a straggler), together with the rise")
        scores.append(0.3)
        facts["slowdown_start"] = slow.start_step
        facts["slowdown_ratio"] = slow.size.ratio
        remedy.append("find the slow node (per-rank step times, nvidia-smi clocks and Xid "
                      "errors) and take it out of the job")

    if not scores:
        return None
    scores.sort(reverse=True)
    # a second independent signature adds, but never to certainty
    score = min(0.95, scores[0] + 0.05 * (len(scores) - 1))
    ev = evidence(CAUSE, score, sentence(parts), facts, sentence(remedy))
    shown = [m for m in near if m.level in ("error", "warning")] or near
    if shown:
        lines = [_line(m) for m in shown[:MAX_LINES]]
        if len(shown) > MAX_LINES:
            lines.append(f"... {len(shown) - MAX_LINES} more")
        ev = Evidence(cause=ev.cause, score=ev.score, summary=ev.summary,
                      evidence={**ev.evidence, "environment": lines}, remedy=ev.remedy)
    return ev


CAUSES.add(CAUSE, rule)

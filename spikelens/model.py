"""Frozen data model shared by every stage. A `Run` is what readers produce: one per-step
table plus the facts needed to interpret it (roles, restarts, logging interval, warnings).
Results (`Event`, `Evidence`, `Skipped`, `Finding`, `RunReport`, `Report`) hold no DataFrame,
so the JSON report is a straight dump of them. `Config` carries every tunable in one
validated place, with defaults that were calibrated on labelled runs (docs/detection.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spikelens.errors import ConfigError

if TYPE_CHECKING:  # pandas/numpy load lazily so that `spikelens --help` stays fast
    import numpy as np
    import pandas as pd


def _empty_frame() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame()

SCHEMA_VERSION = 1

#: `slowdown` and `hang` are informational operations events (issue 14): a sustained step-time
#: rise and a log that stops mid-run, on the `step_time` metric; they never change the verdict.
EVENT_KINDS = ("spike", "divergence", "nonfinite", "oscillation", "stall", "overfitting",
               "slowdown", "hang")
#: Kinds that are incidents (oscillation is a condition, not an incident; stall and
#: overfitting are informational and never change the verdict).
INCIDENT_KINDS = ("spike", "divergence", "nonfinite")
VERDICTS = ("healthy", "spiky", "oscillating", "diverged", "nonfinite", "insufficient_data")


@dataclass(frozen=True)
class LogMessage:
    """A line of the log that is not a metric row but may explain an incident: an error or
    warning (NCCL, CUDA, OOM, traceback, SLURM), a checkpoint save or an eval, with the step it
    was printed at (the last logged step before it) and the rank that printed it, if known."""

    step: int | None
    text: str
    level: str = "info"  # "error", "warning" or "info"
    rank: int | None = None
    line: int | None = None  # line (or record) number in the source file


@dataclass(frozen=True)
class Restart:
    """A resume from checkpoint: the step counter went backwards at `row` (file order)."""

    row: int
    resumed_at: int  # first step logged by the new segment
    previous_last: int  # last step logged before the restart
    segment: int  # index of the segment that starts here (the first segment is 0)

    @property
    def replayed(self) -> tuple[int, int] | None:
        """Steps logged twice (the new segment's values win), or None for a jump forward."""
        if self.resumed_at > self.previous_last:
            return None
        return (self.resumed_at, self.previous_last)


@dataclass(frozen=True, eq=False)
class Superseded:
    """The values one segment logged for steps that a later segment logged again: the run
    was rolled back after `last_step` and resumed at `resumed_at` (<= last_step)."""

    segment: int
    resumed_at: int
    last_step: int
    frame: pd.DataFrame  # indexed by step (int64, increasing), the same columns as Run.frame
    nan_steps: Mapping[str, np.ndarray] = field(default_factory=dict)  # logged NaN, per column


@dataclass(frozen=True, eq=False)
class Run:
    """One training run in canonical form.

    `frame` is indexed by step (int64, increasing, unique) with one float64 column per source
    metric; NaN where the metric was not logged at that step *or* where the log said NaN.
    `nan_steps` keeps the second case apart: per column, the steps whose logged value was NaN
    (non-finite values are evidence, never dropped). `eval_frame` holds evaluation rows so an
    eval loss can never leak into the train loss.
    """

    source: str
    format: str
    frame: pd.DataFrame
    roles: Mapping[str, str]
    eval_frame: pd.DataFrame = field(default_factory=_empty_frame)
    nan_steps: Mapping[str, np.ndarray] = field(default_factory=dict)
    restarts: tuple[Restart, ...] = ()
    interval: int = 1
    averaged: bool = False  # values are means over the logging interval (Megatron)
    segment_of_step: np.ndarray | None = None  # segment index of each row in `frame`
    warnings: tuple[str, ...] = ()
    name: str | None = None  # run name inside a multi-run file (W&B panel export)
    #: Run configuration from the log or tracker (W&B config, MLflow params, Megatron args),
    #: under canonical keys where known: clip_grad, lr, warmup_steps, global_batch_size,
    #: micro_batch_size, seq_length, precision ("fp16"/"bf16"/"fp32"), world_size, seed,
    #: vocab_size, adam_beta1, adam_beta2, adam_eps, weight_decay; other keys kept as written.
    params: Mapping[str, Any] = field(default_factory=dict)
    #: Non-metric lines kept by the reader (errors, warnings, checkpoints), in file order.
    messages: tuple[LogMessage, ...] = ()
    #: Rows that a later segment replaced (a rollback to an earlier checkpoint), kept so the
    #: incident that caused the rollback can still be found; one entry per superseded segment.
    superseded: tuple[Superseded, ...] = ()

    def column(self, role: str) -> str | None:
        return self.roles.get(role)

    def has(self, role: str) -> bool:
        return role in self.roles

    def series(self, role: str) -> pd.Series | None:
        """The role's values at the steps where it was logged (logged NaN kept as NaN)."""
        import numpy as np

        col = self.roles.get(role)
        if col is None:
            return None
        s = self.frame[col] if col in self.frame.columns else self.eval_frame[col]
        nan_at = self.nan_steps.get(col)
        if nan_at is not None and len(nan_at):
            keep = s.notna().to_numpy() | np.isin(s.index.to_numpy(), nan_at)
            return s[keep]
        return s.dropna()

    @property
    def steps(self) -> np.ndarray:
        return self.frame.index.to_numpy()

    @property
    def extras(self) -> list[str]:
        used = set(self.roles.values())
        cols = list(self.frame.columns) + list(self.eval_frame.columns)
        return [c for c in cols if c not in used]

    def nonfinite_count(self, col: str) -> int:
        import numpy as np

        s = self.frame[col] if col in self.frame.columns else self.eval_frame[col]
        inf = int(np.count_nonzero(np.isinf(s.to_numpy())))
        return inf + len(self.nan_steps.get(col, ()))


@dataclass(frozen=True)
class Size:
    z: float  # robust z of the peak against the trailing baseline (log space)
    ratio: float  # peak / baseline level (in the loss's own units)


@dataclass(frozen=True)
class Event:
    """An incident (or a condition, for oscillation) found on one metric."""

    kind: str
    metric: str  # role: "loss" for incidents, "grad_norm" for informational surges
    start_step: int
    peak_step: int
    end_step: int
    recovered: bool
    size: Size
    recovery_steps: int | None = None
    segment: int = 0
    period: float | None = None  # oscillation only
    amplitude: float | None = None  # oscillation only: relative peak-to-trough
    first_nonfinite: str | None = None  # nonfinite only: which series went first
    baseline: float | None = None  # the loss level before the event
    #: Incident in a superseded segment: the last step that segment logged before the run
    #: was rolled back to an earlier checkpoint (its values were replaced by the replay).
    rolled_back_at: int | None = None
    #: Oscillation only: correlation of the loss residual with a cyclic LR (None: no cyclic
    #: LR in the log), and the samples per optimizer step read from the log (None: unknown).
    lr_corr: float | None = None
    batch_size: float | None = None
    #: Oscillation only: what found it, "periodic", "lr" or "erratic".
    source: str | None = None
    #: Informational events (stall, overfitting): one sentence with the numbers.
    detail: str | None = None
    #: Nonfinite only: the loss climbed without recovering into the non-finite values, and
    #: the event starts where the climb did (`--fail-on divergence` counts it too).
    diverged: bool = False

    @property
    def anchor_step(self) -> int:
        """The step the incident is placed at and told apart by: its start, except for a
        non-finite event, which is placed at its first non-finite step (its peak; the same
        as its start unless it took in the climb that led to it, `diverged`)."""
        return self.peak_step if self.kind == "nonfinite" else self.start_step

    def counts_as(self, kind: str) -> bool:
        """Whether a `--fail-on KIND` gate counts this event: its own kind, and a loss
        that climbed into NaN (`diverged`) as a divergence too."""
        return kind == self.kind or (kind == "divergence" and self.diverged)


@dataclass(frozen=True)
class Evidence:
    """One candidate cause of an event, scored in [0, 1]."""

    cause: str
    score: float
    summary: str
    evidence: Mapping[str, Any]
    remedy: str


@dataclass(frozen=True)
class Skipped:
    """A cause rule that could not judge this run, and why."""

    cause: str
    reason: str


@dataclass(frozen=True)
class Finding:
    event: Event
    causes: tuple[Evidence, ...] = ()
    skipped: tuple[Skipped, ...] = ()


@dataclass(frozen=True)
class Recurrence:
    """An incident seen in several runs at the same point of the data stream."""

    axis: str  # "step", "tokens" or "samples": what the runs were aligned on
    position: float  # where on that axis (the first run's peak)
    members: tuple[tuple[str, int], ...]  # (run source, peak step) for each run involved
    #: What the member runs differ in ("seed", "lr", "architecture"), from their params or
    #: logged LR; empty when the logs show no difference (then coinciding cannot tell a bad
    #: batch from a shared schedule).
    differ: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepInfo:
    first: int
    last: int
    count: int
    interval: int


@dataclass(frozen=True)
class RunReport:
    source: str
    format: str
    verdict: str
    steps: StepInfo
    metrics: Mapping[str, str]
    findings: tuple[Finding, ...]
    warnings: tuple[str, ...]
    name: str | None = None


@dataclass(frozen=True)
class Report:
    runs: tuple[RunReport, ...]
    recurrences: tuple[Recurrence, ...] = ()
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class Config:
    """Every tunable of the analysis. Defaults are calibrated (see docs/detection.md).

    Lengths named `*_steps` are training steps; the others count logged points."""

    window: int = 100  # trailing baseline length, in logged points
    min_window: int = 8  # fewest baseline points for the z tests (fewer: ratio rules)
    z_threshold: float = 9.3  # robust z (log space) of a one-point rise
    shift_z_threshold: float = 5.5  # z of a sustained rise (median of k points)
    shift_windows: tuple[int, ...] = (5, 20, 80)  # the k of the sustained-rise test
    min_ratio: float = 1.10  # a rise must also exceed this ratio to the baseline
    short_ratio: float = 1.5  # ratio that makes a spike when the baseline is too short
    start_ratio: float = 2.0  # the same in the first points of a run logged from step 0
    band_z: float = 3.0  # the pre-event band reaches band_z scales above the baseline
    quantum: float | None = None  # loss rounding step; None = infer from the data
    divergence_steps: int = 200  # a rise that lasts this long without recovery is a new level
    recover_run: int = 10  # consecutive in-band points that end an event
    osc_block: int = 400  # points per oscillation analysis block
    # longest loss period looked for, in points; None: the longest a block holds
    # min_cycles times (osc_block // 3), so the limit follows the log, not a constant
    osc_max_period: int | None = None
    osc_min_acf: float = 0.3  # autocorrelation at the period
    osc_spread: float = 2.0  # q90/q10 ratio around the trend of an erratic swing
    osc_lr_z: float = 4.0  # |r| sqrt(n) between the loss and a cyclic LR
    grad_min_ratio: float = 2.0  # a grad-norm surge must at least reach this ratio
    # several runs analysed together: one-point outliers that coincide across runs
    joint_min_z: float = 8.0  # point z a run needs where its outlier recurs in other runs
    joint_alpha: float = 0.01  # expected chance coincidences allowed over the whole log
    joint_tolerance: int = 1  # logged steps by which the same batch may be numbered apart
    # short logs, batch noise, stall (issue 8; docs/detection.md)
    climb_rises: int = 3  # consecutive rises that make a climb on a short log
    # samples per step at or below which batch noise is expected: the geometric midpoint of
    # the largest batch labelled oscillating (4) and the smallest labelled clean (8)
    tiny_batch: float = 5.66
    stall_blocks: int = 5  # baseline windows without progress that make a stall
    stall_grad_drop: float = 10.0  # a grad norm that falls this much during a plateau
    overfit_points: int = 3  # consecutive eval rises (above the eval minimum) that count
    # shift z bar where the logged LR jumps up (x1.2 or more in one logged step, 10x its own
    # typical change): the clean runs' 99.5th percentile of the shift z at one location
    lr_jump_shift_z: float = 3.0
    # the ratio a sustained rise must reach at the same places (min_ratio elsewhere)
    lr_jump_min_ratio: float = 1.05
    # z bar of the loss's answer to an upward LR jump over the window after it (the largest
    # 20-point median against the window before, detect/lr_lift.py): the 99.5th percentile
    # of the same statistic at every 25th point of the 614 negative runs of the 23 labelled
    # sets (43,192 places: 5.83, benchmarks/calibrate_lr_lift.py)
    lr_lift_z: float = 5.8
    # a one-point jump this many times its 21-point neighbourhood's median needs only
    # big_jump_z (6 sigma) in the point test (bad batches in a 25 %-noise loss)
    big_jump_ratio: float = 3.0
    big_jump_z: float = 6.0
    # a one-point rise the grad norm confirms (its robust z >= grad_confirm_z at the same
    # step or the grad-norm point before) and at least grad_confirmed_ratio x its 21-point
    # neighbourhood needs only grad_confirmed_point_z in the point test, once the loss has a
    # full trailing window: 1.5x the largest such loss z on the labelled negatives (5.27
    # since the isolated-outlier noise is steadied, docs/detection.md sixth pass; 7.5 of
    # 5.0 before)
    grad_confirm_z: float = 3.0
    grad_confirmed_point_z: float = 7.9
    grad_confirmed_ratio: float = 1.3

    def __post_init__(self) -> None:
        if self.window < 4:
            raise ConfigError(f"window must be >= 4, got {self.window}")
        if not 1 <= self.min_window <= self.window:
            raise ConfigError(f"min_window must be in [1, window], got {self.min_window}")
        if not 0 < self.joint_alpha < 1:
            raise ConfigError(f"joint_alpha must be in (0, 1), got {self.joint_alpha}")
        if self.joint_tolerance < 0:
            raise ConfigError(f"joint_tolerance must be >= 0, got {self.joint_tolerance}")
        for name in ("z_threshold", "shift_z_threshold", "band_z", "osc_lr_z", "joint_min_z",
                     "lr_jump_shift_z", "big_jump_z", "lr_lift_z"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.shift_windows or any(k < 2 for k in self.shift_windows):
            raise ConfigError(
                f"shift_windows must be one or more lengths >= 2, got {self.shift_windows}"
            )
        for name in ("min_ratio", "short_ratio", "start_ratio", "grad_min_ratio",
                     "big_jump_ratio", "lr_jump_min_ratio"):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.grad_confirm_z > 0 and self.grad_confirmed_point_z > 0
                and self.grad_confirmed_ratio >= 1):
            raise ConfigError("grad_confirm_z and grad_confirmed_point_z must be > 0 and "
                              f"grad_confirmed_ratio >= 1, got {self.grad_confirm_z}, "
                              f"{self.grad_confirmed_point_z}, {self.grad_confirmed_ratio}")
        if self.quantum is not None and not self.quantum >= 0:
            raise ConfigError(f"quantum must be >= 0, got {self.quantum}")
        if self.divergence_steps < 1:
            raise ConfigError(f"divergence_steps must be >= 1, got {self.divergence_steps}")
        if self.recover_run < 1:
            raise ConfigError(f"recover_run must be >= 1, got {self.recover_run}")
        if self.osc_block < 16:
            raise ConfigError(f"osc_block must be >= 16, got {self.osc_block}")
        if self.osc_max_period is not None and self.osc_max_period < 2:
            raise ConfigError(f"osc_max_period must be >= 2, got {self.osc_max_period}")
        if not 0 < self.osc_min_acf < 1:
            raise ConfigError(f"osc_min_acf must be in (0, 1), got {self.osc_min_acf}")
        if not self.osc_spread > 1:
            raise ConfigError(f"osc_spread must be > 1, got {self.osc_spread}")

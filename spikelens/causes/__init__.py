"""Cause rules: why an incident happened. Each module in this package is one cause, a pure
function `(run, event, ctx) -> Evidence | Skipped | None` that registers itself in `CAUSES` by
its cause id. `explain` runs every rule on one event and ranks what they found.

Scores are on one scale for every cause (docs/causes.md): about 0.9 means the log shows the
cause's own signature with the right timing and nothing else explains it; 0.7 a clear signature
that another cause could also produce; 0.5 evidence consistent with the cause but not specific
to it; 0.3 circumstantial; below `FLOOR` (0.25) nothing is worth naming, and the event's top
cause is `unknown`. A rule whose metric the log lacks is listed as `Skipped` with the reason."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

from spikelens.align import run_key

# the protocol lives in _window so rule modules can import it without a cycle
from spikelens.causes._window import CauseRule, Context, sentence, usable
from spikelens.model import (
    INCIDENT_KINDS,
    Config,
    Event,
    Evidence,
    Finding,
    Recurrence,
    Run,
    Skipped,
)
from spikelens.registry import Registry

CAUSES: Registry[CauseRule] = Registry("cause")

#: Evidence below this score does not name a cause: the top cause becomes `unknown`.
FLOOR = 0.25
UNKNOWN = "unknown"
#: Evidence below this score is not listed at all (a change 900 steps before the rise).
NEGLIGIBLE = 0.05
#: Order used to break exact ties (the order the issue lists the causes in).
ORDER = ("lr_schedule", "grad_explosion", "amp_overflow", "bad_batch", "optimizer_state",
         "numerical", "distributed", "model_stats", "lr_too_high", "batch_noise", "data_order")
#: The causes of an oscillation; the others explain incidents. `lr_schedule` and
#: `optimizer_state` judge both, each with the mechanism that fits the event.
OSCILLATION_CAUSES = ("lr_schedule", "lr_too_high", "batch_noise", "optimizer_state",
                      "data_order")
#: Causes that only an oscillation can have.
OSCILLATION_ONLY = ("lr_too_high", "batch_noise", "data_order")


def _register_builtin() -> None:
    # every public module here is a cause that registers itself on import
    if len(CAUSES):
        return
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
        importlib.import_module(f"{__name__}.{mod}")


def _involves(rec: Recurrence | None, run: Run, event: Event) -> Recurrence | None:
    """The recurrence if it really holds this event of this run, else None."""
    if rec is None:
        return None
    key = run_key(run)
    for src, step in rec.members:
        if src == key and event.start_step <= step <= max(event.end_step, event.peak_step):
            return rec
    return None


def _missing(run: Run) -> list[str]:
    """The signals whose absence most limits the diagnosis, in the order to add them."""
    out = [r for r in ("lr", "grad_norm") if usable(run, r)[0] is None]
    if not run.has("loss_scale") and not run.has("skipped"):
        out.append("loss_scale (for fp16 runs)")
    return out


def _unknown(run: Run, causes: Sequence[Evidence], damage: str | None = None,
             osc: bool = False, climb: str | None = None) -> Evidence:
    """`damage`: the signs one oversized update leaves (`LossShape.jump_damage`); `climb`:
    a compounding climb (`LossShape.climb`), which says the model got worse, not why."""
    parts = [f"no cause reached {FLOOR}"]
    if causes:
        parts.append(f"the strongest was {causes[0].cause} ({causes[0].score:.2f})")
    if damage is not None:
        parts.append(f"{damage}: weight damage from an oversized update (grad_explosion, "
                     f"lr_schedule or optimizer_state), not one bad batch")
    elif climb is not None:
        parts.append(f"{climb} (an LR too high, an oversized update or data that keeps getting "
                     f"worse), not one bad batch")
    missing = _missing(run)
    if osc:
        missing = [m for m in missing if not m.startswith("loss_scale")]
        if not run.has("samples") and not run.has("tokens") and "global_batch_size" not in (
                run.params or {}):
            missing.append("samples or tokens per step")
    listed = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + (
        missing[-1] if missing else "")
    if missing:
        parts.append(f"not logged: {listed}")
    remedy = ["restart from a checkpoint before the rise if the run did not recover"
              + (", with a lower LR (an oversized update did the damage)" if damage else
                 ", with a lower LR, and check the data of the climb" if climb else "")]
    if osc:
        remedy = ["if the swing matters, try a lower LR or a larger batch first"]
    if missing:
        remedy.append(f"log {listed} so the next incident can be explained")
    return Evidence(
        cause=UNKNOWN,
        score=FLOOR,
        summary=sentence(parts),
        evidence={"floor": FLOOR, "best_cause": causes[0].cause if causes else None,
                  "best_score": causes[0].score if causes else None},
        remedy=sentence(remedy),
    )


def explain(
    run: Run,
    event: Event,
    events: Sequence[Event],
    config: Config,
    recurrence: Recurrence | None = None,
) -> Finding:
    """Rank the causes of one incident or oscillation of the loss. Informational events
    (grad-norm surges, stall, overfitting) get no causes."""
    _register_builtin()
    osc = event.kind == "oscillation"
    if (event.kind not in INCIDENT_KINDS and not osc) or event.metric != "loss":
        return Finding(event=event)
    ctx = Context(run=run, event=event, events=tuple(events), config=config,
                  recurrence=_involves(recurrence, run, event))
    found: list[Evidence] = []
    skipped: list[Skipped] = []
    for name, rule in CAUSES.items():
        if (name not in OSCILLATION_CAUSES) if osc else (name in OSCILLATION_ONLY):
            continue
        res = rule(run, event, ctx)
        if isinstance(res, Skipped):
            skipped.append(res)
        elif isinstance(res, Evidence) and res.score >= NEGLIGIBLE:
            found.append(res)
    rank = {c: i for i, c in enumerate(ORDER)}
    found.sort(key=lambda e: (-e.score, rank.get(e.cause, len(rank)), e.cause))
    if not found or found[0].score < FLOOR:
        shape = None if osc else ctx.shape
        found.insert(0, _unknown(run, found, shape.jump_damage if shape else None, osc,
                                 shape.climb if shape else None))
    return Finding(event=event, causes=tuple(found), skipped=tuple(skipped))


_register_builtin()

__all__ = ["CAUSES", "FLOOR", "OSCILLATION_CAUSES", "OSCILLATION_ONLY", "UNKNOWN", "CauseRule",
           "Context", "explain"]

"""`--run NAME_OR_ID`: pick runs out of a store that holds several (an MLflow database or
`mlruns/`, a `wandb/` directory, a W&B panel export). A run matches by its name or by the run
id its tracker gave it (`Run.params["run_id"]`), which may be shortened to a prefix of at
least 6 characters, as in git."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from spikelens.errors import ConfigError
from spikelens.model import Run

MIN_PREFIX = 6


def matches(run: Run, wanted: str) -> bool:
    if wanted == run.name:
        return True
    rid = str(run.params.get("run_id", "") or "")
    return bool(rid) and (wanted == rid or (len(wanted) >= MIN_PREFIX
                                            and rid.startswith(wanted)))


def select_runs(runs: Sequence[Run], wanted: Iterable[str]) -> list[Run]:
    """The runs matching any of `wanted`, in their order; every name must match something."""
    want = list(wanted)
    if not want:
        return list(runs)
    missing = [w for w in want if not any(matches(r, w) for r in runs)]
    if missing:
        names = ", ".join(f"{r.name} ({r.params['run_id']})" if r.params.get("run_id")
                          else str(r.name) for r in runs[:20])
        raise ConfigError(f"no run named {', '.join(map(repr, missing))} "
                          f"(runs: {names}{', ...' if len(runs) > 20 else ''})")
    return [r for r in runs if any(matches(r, w) for w in want)]


__all__ = ["select_runs"]

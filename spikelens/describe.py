"""What `spikelens inspect` shows: how a log was understood. `describe(run)` returns a plain
JSON-able dict (format, steps, role -> source name, extras, restarts, non-finite counts,
warnings) and `describe_text` lays the same out for a terminal. It lets a user check the
roles spikelens found before trusting an analysis, and fix them with `--metric ROLE=NAME`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from spikelens.model import Run


def describe(run: Run) -> dict[str, Any]:
    steps = run.steps
    nonfinite = {}
    for col in list(run.frame.columns) + list(run.eval_frame.columns):
        n = run.nonfinite_count(col)
        if n:
            nonfinite[col] = n
    return {
        "source": run.source,
        "name": run.name,
        "format": run.format,
        "steps": {
            "first": int(steps[0]) if len(steps) else None,
            "last": int(steps[-1]) if len(steps) else None,
            "count": int(len(steps)),
            "interval": run.interval,
            "averaged": run.averaged,
        },
        "metrics": dict(run.roles),
        "extras": run.extras,
        "restarts": [
            {
                "resumed_at": r.resumed_at,
                "previous_last": r.previous_last,
                "replayed": list(r.replayed) if r.replayed else None,
            }
            for r in run.restarts
        ],
        "nonfinite": nonfinite,
        "eval_rows": int(len(run.eval_frame)),
        "warnings": list(run.warnings),
        **_ops(run),
    }


#: Messages listed by `inspect` (errors first, then warnings, then the last info lines).
_SHOWN = 12


def _ops(run: Run) -> dict[str, Any]:
    """Messages and ranks (issue 14): counts by level, the lines worth reading first, the
    ranks whose series the log keeps and the run's stated params."""
    from spikelens.readers._ranks import rank_column

    counts: dict[str, int] = {}
    for m in run.messages:
        counts[m.level] = counts.get(m.level, 0) + 1
    errs = [m for m in run.messages if m.level == "error"]
    warns = [m for m in run.messages if m.level == "warning"]
    infos = [m for m in run.messages if m.level == "info"]
    shown = (errs + warns)[:_SHOWN]
    shown += infos[-max(0, _SHOWN - len(shown)):] if len(shown) < _SHOWN else []
    shown.sort(key=lambda m: (m.line if m.line is not None else -1))
    ranks = sorted({rc[0] for c in run.frame.columns
                    if (rc := rank_column(str(c))) is not None})
    return {
        "messages": {
            "counts": counts,
            "shown": [{"step": m.step, "rank": m.rank, "level": m.level, "line": m.line,
                       "text": m.text} for m in shown],
        },
        "ranks": ranks,
        "reporting_rank": run.params.get("reporting_rank") if ranks else None,
        # JSON-able scalars only (JSON has no NaN or Infinity)
        "params": {k: v for k, v in run.params.items()
                   if v is None or isinstance(v, (str, int, bool))
                   or (isinstance(v, float) and math.isfinite(v))},
    }


def _logged(run: Run, col: str) -> int:
    frame = run.frame if col in run.frame.columns else run.eval_frame
    return int(np.count_nonzero(frame[col].notna().to_numpy())) + len(run.nan_steps.get(col, ()))


def _print_params(console: Any, params: dict[str, Any]) -> None:
    """Run config (tracker config, MLflow params): canonical keys first, nested dicts (a W&B
    summary, MLflow tags) on their own lines."""
    from rich.markup import escape

    flat = {k: v for k, v in params.items() if not isinstance(v, dict)}
    if flat:
        text = ", ".join(f"{k}={v}" for k, v in flat.items())
        console.print(escape(f"params: {text}"), highlight=False, soft_wrap=True)
    for k, v in params.items():
        if isinstance(v, dict) and v:
            text = ", ".join(f"{k2}={v2}" for k2, v2 in v.items())
            console.print(escape(f"{k}: {text}"), highlight=False, soft_wrap=True)


def describe_text(run: Run, color: bool | None = None) -> str:
    from rich.console import Console
    from rich.table import Table

    d = describe(run)
    import io

    console = Console(file=io.StringIO(), record=True, width=100, no_color=not color,
                      force_terminal=bool(color), color_system="auto" if color else None)
    st = d["steps"]
    title = f"{d['source']}" + (f" [{d['name']}]" if d["name"] else "")
    from rich.markup import escape

    console.print(f"[bold]{escape(title)}[/bold]", highlight=False)  # `[name]` is not markup
    console.print(f"format: {d['format']}", highlight=False)
    if st["count"]:
        avg = ", values averaged over the interval" if st["averaged"] else ""
        console.print(
            f"steps: {st['first']}..{st['last']} ({st['count']} logged, every {st['interval']}"
            f"{avg})",
            highlight=False,
        )
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("role")
    table.add_column("metric")
    table.add_column("logged", justify="right")
    table.add_column("non-finite", justify="right")
    for role, col in d["metrics"].items():
        table.add_row(role, col, str(_logged(run, col)), str(d["nonfinite"].get(col, 0)))
    console.print(table)
    if d["extras"]:
        console.print("extras: " + ", ".join(d["extras"]), highlight=False, soft_wrap=True)
    for r in d["restarts"]:
        what = (f"steps {r['replayed'][0]}-{r['replayed'][1]} replayed" if r["replayed"]
                else "jumped forward")
        console.print(f"restart: resumed at step {r['resumed_at']} after step "
                      f"{r['previous_last']} ({what})", highlight=False)
    _print_params(console, d["params"])
    for w in d["warnings"]:
        console.print(f"warning: {w}", highlight=False, soft_wrap=True)
    if d["ranks"]:
        main = f"main series from rank {d['reporting_rank']}; " \
            if d["reporting_rank"] is not None else ""
        console.print(f"ranks: {', '.join(map(str, d['ranks']))} ({main}each as "
                      "rank<N>/<metric>)", highlight=False)
    if d["messages"]["counts"]:
        c = d["messages"]["counts"]
        console.print("messages: " + ", ".join(f"{c[k]} {k}" for k in ("error", "warning", "info")
                                               if k in c), highlight=False)
        for m in d["messages"]["shown"]:
            where = f"step {m['step']}" if m["step"] is not None else "step ?"
            rank = f" rank {m['rank']}" if m["rank"] is not None else ""
            line = f" line {m['line']}" if m["line"] is not None else ""
            console.print(f"  [{m['level']} {where}{rank}{line}] {m['text']}", highlight=False,
                          soft_wrap=True, markup=False)
    out = console.export_text(styles=bool(color))
    return out

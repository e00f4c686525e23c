"""W&B CSV exports. Two shapes exist: a run's history export (`_step` or `Step`, quoted
headers, `_runtime`/`_timestamp`, sparse eval columns) and a chart-panel export whose
columns are `"<run> - <metric>"` with `__MIN`/`__MAX` companions, possibly for several runs in
one file. The panel shape is split into one run per prefix (the plain column is the value;
the MIN/MAX companions only bound W&B's bucketing and are dropped), named by the run. Column
names are kept as written (`"run-1 - train/loss"`): roles see through the run prefix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spikelens.readers import READERS
from spikelens.readers._base import RawLog
from spikelens.readers.csv import header_cells, load_csv, refuse_runs_table

_SEP = " - "


def _panel_run(col: str) -> tuple[str, str] | None:
    """`"run-1 - train/loss"` -> ("run-1", "train/loss")."""
    if _SEP not in col:
        return None
    run, _, metric = col.partition(_SEP)
    return (run.strip(), metric.strip()) if run.strip() and metric.strip() else None


class WandbCsvReader:
    name = "wandb_csv"
    description = "W&B CSV export (run history or chart panel, several runs per file)"

    def sniff(self, path: Path, head: bytes) -> float:
        cells = header_cells(path, head)
        if not cells:
            return 0.0
        if cells[0] in ("_step", "Step") and (
            any(_panel_run(c) for c in cells[1:]) or any(c.endswith("__MIN") for c in cells)
        ):
            return 0.95
        if "_step" in cells and ("_runtime" in cells or "_timestamp" in cells):
            return 0.9
        if cells[0] in ("_step", "Step"):
            return 0.7
        return 0.0

    def read(self, path: Path) -> list[RawLog]:
        t = load_csv(path)
        frame = t.frame
        refuse_runs_table(path, frame)
        step_col = "_step" if "_step" in frame.columns else "Step"
        if step_col not in frame.columns:
            return [RawLog(frame=frame, nan_mask=t.nan_mask, warnings=t.warnings)]
        runs: dict[str, list[tuple[str, str]]] = {}
        for col in frame.columns:
            if col == step_col or col.endswith(("__MIN", "__MAX")):
                continue
            hit = _panel_run(col)
            if hit is None:
                runs = {}
                break
            runs.setdefault(hit[0], []).append((col, hit[1]))
        if not runs:
            return [RawLog(frame=frame, step_column=step_col, nan_mask=t.nan_mask,
                           warnings=t.warnings)]
        out: list[RawLog] = []
        for run, cols in runs.items():
            names = [c for c, _ in cols]
            sub = frame[[step_col] + names]
            # a shorter run has empty cells past its end: not rows of that run; a cell the
            # log wrote as NaN is a value of the run (evidence), not an empty cell
            present = sub[names].notna().to_numpy().copy()
            for j, c in enumerate(names):
                if c in t.nan_mask:
                    present[:, j] |= t.nan_mask[c]
            sub = sub.iloc[np.flatnonzero(present.any(axis=1))]
            mask = {c: t.nan_mask[c][sub.index.to_numpy()] for c, _ in cols if c in t.nan_mask}
            out.append(RawLog(frame=sub.reset_index(drop=True), step_column=step_col,
                              nan_mask=mask, warnings=list(t.warnings), name=run))
        return out


READERS.add("wandb_csv", WandbCsvReader())

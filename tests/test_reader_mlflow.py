"""The MLflow reader on real stores written by the `mlflow` package (file store and SQLite
tracking database, no server, no network), and on the committed fixtures, which need no
mlflow at all."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import DATA, SAMPLES
from typer.testing import CliRunner

from spikelens import read_log
from spikelens.cli import app
from spikelens.errors import SpikelensError
from spikelens.readers import detect_format, read_runs


def _log_runs(uri: str) -> dict[str, str]:
    """Three runs in one experiment (one deleted afterwards); returns name -> run id."""
    mlflow = pytest.importorskip("mlflow", reason="the mlflow package (dev extra) is missing")
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("forensics")
    ids: dict[str, str] = {}
    t0 = int(time.time() * 1000)
    for name in ("smooth", "spiky", "deleted"):
        rid = client.create_run(exp, run_name=name).info.run_id
        ids[name] = rid
        client.log_batch(rid, params=[Param("max_grad_norm", "0.5"),
                                      Param("learning_rate", "1e-3"),
                                      Param("fp16", "true"), Param("my_flag", "abc")])
        client.set_tag(rid, "team", "pretraining")
        pts = []
        for s in range(200):
            loss = 3.0 - 0.004 * s + (5.0 if name == "spiky" and s == 150 else 0.0)
            if name == "spiky" and s == 170:
                loss = math.nan
            if name == "spiky" and s == 180:
                loss = math.inf
            pts += [Metric("train/loss", loss, t0 + 10 * s, s),
                    Metric("lr", 1e-3, t0 + 10 * s, s)]
        if name == "spiky":  # a resume from the checkpoint of step 189: steps 190-199 again
            pts += [Metric("train/loss", 2.2, t0 + 5000 + s, s) for s in range(190, 200)]
        for i in range(0, len(pts), 900):
            client.log_batch(rid, metrics=pts[i:i + 900])
        client.set_terminated(rid)
    client.delete_run(ids["deleted"])
    return ids


@pytest.fixture(scope="module")
def file_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("mlf") / "mlruns"
    return root, _log_runs(root.resolve().as_uri())


@pytest.fixture(scope="module")
def db_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    db = tmp_path_factory.mktemp("mldb") / "mlflow.db"
    return db, _log_runs(f"sqlite:///{db}")


@pytest.fixture(params=["file", "db"])
def store(request: pytest.FixtureRequest) -> tuple[Path, dict[str, str]]:
    out: tuple[Path, dict[str, str]] = request.getfixturevalue(
        "file_store" if request.param == "file" else "db_store")
    return out


def _by_name(path: Path) -> dict[str, Any]:
    return {r.name: r for r in read_runs(path)}


def test_one_run_per_mlflow_run_deleted_left_out(store: tuple[Path, dict[str, str]]) -> None:
    path, ids = store
    assert detect_format(path) == "mlflow"
    runs = _by_name(path)
    assert sorted(runs) == ["smooth", "spiky"]
    assert runs["spiky"].params["run_id"] == ids["spiky"]
    assert runs["spiky"].params["experiment"] == "forensics"


def test_values_nan_inf_and_resume(store: tuple[Path, dict[str, str]]) -> None:
    path, _ = store
    run = _by_name(path)["spiky"]
    loss = run.frame[run.roles["loss"]]
    assert loss[0] == 3.0 and loss[150] == pytest.approx(3.0 - 0.6 + 5.0)
    assert list(run.nan_steps[run.roles["loss"]]) == [170]  # a logged NaN is evidence
    assert loss[180] == math.inf  # the SQL store's DBL_MAX is read back as infinity
    # the resumed steps: later values win, and the restart is kept
    assert loss[195] == 2.2
    assert [(r.resumed_at, r.previous_last) for r in run.restarts] == [(190, 199)]
    assert run.roles["lr"] == "lr"


def test_params_are_canonical(store: tuple[Path, dict[str, str]]) -> None:
    path, _ = store
    p = _by_name(path)["smooth"].params
    assert p["clip_grad"] == 0.5 and p["lr"] == 1e-3 and p["precision"] == "fp16"
    assert p["my_flag"] == "abc" and p["tags"] == {"team": "pretraining"}


def test_cli_analyses_every_run_and_run_picks_by_name_or_id(
        store: tuple[Path, dict[str, str]]) -> None:
    path, ids = store
    res = CliRunner().invoke(app, ["analyze", str(path), "--format", "json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert sorted(r["name"] for r in rep["runs"]) == ["smooth", "spiky"]
    res = CliRunner().invoke(app, ["analyze", str(path), "-f", "json", "--run", "spiky"])
    rep = json.loads(res.stdout)
    assert [r["name"] for r in rep["runs"]] == ["spiky"]
    peaks = [e["peak_step"] for e in rep["runs"][0]["events"] if e["kind"] == "spike"]
    assert 150 in peaks
    res = CliRunner().invoke(app, ["inspect", str(path), "--run", ids["smooth"][:8]])
    assert res.exit_code == 0 and "[smooth]" in res.stdout and "clip_grad=0.5" in res.stdout
    res = CliRunner().invoke(app, ["analyze", str(path), "--run", "nope"])
    assert res.exit_code == 2
    assert res.stderr.startswith("Error: no run named 'nope' (runs: ")
    assert "spiky" in res.stderr


def test_committed_file_store_needs_no_mlflow() -> None:
    runs = _by_name(DATA / "mlflow" / "mlruns")
    assert sorted(runs) == ["baseline", "lr-too-high"]
    run = runs["lr-too-high"]
    assert list(run.steps) == list(range(300))
    assert list(run.nan_steps["train/loss"]) == [280]
    assert run.params["clip_grad"] == 1.0 and run.params["precision"] == "bf16"
    assert run.params["warmup_steps"] == 30 and run.params["micro_batch_size"] == 16


def test_committed_database_matches_committed_file_store() -> None:
    db = read_log(SAMPLES / "mlflow" / "mlflow.db")
    fs = _by_name(DATA / "mlflow" / "mlruns")["lr-too-high"]
    assert db.name == "lr-too-high"
    for col in ("train/loss", "train/grad_norm", "train/learning_rate"):
        a, b = db.frame[col].to_numpy(), fs.frame[col].to_numpy()
        assert np.array_equal(a, b, equal_nan=True)


def test_bad_metric_line_is_skipped_with_file_and_line(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "mlruns"
    shutil.copytree(DATA / "mlflow" / "mlruns", root)
    f = next(root.rglob("metrics/train/loss"))
    lines = f.read_text().splitlines()
    lines.insert(4, "1700000000000 2.5")  # an old two-field line is fine (step 0)...
    lines.insert(10, "garbage here")  # ...this is not
    f.write_text("\n".join(lines) + "\n")
    runs = read_runs(root)
    warned = [w for r in runs for w in r.warnings if str(f) in w]
    assert any("skipped 1 line(s)" in w and "line 11" in w for w in warned)


def test_sqlite_file_without_mlflow_tables_is_not_mlflow(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("create table t (a int)")
    con.commit()
    con.close()
    with pytest.raises(SpikelensError, match="other.db: binary data of no known format"):
        read_log(db)

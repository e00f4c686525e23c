"""The W&B transaction-log reader on real stores: runs written by the `wandb` package in
offline mode (no network), checked value by value against what was logged and against
wandb's own protobuf classes; torn and split records; a `wandb/` directory of several runs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES
from typer.testing import CliRunner

from spikelens import read_log
from spikelens.cli import app
from spikelens.errors import LogFormatError
from spikelens.readers import detect_format, read_runs
from spikelens.readers.wandb_run import (
    BLOCK,
    LogWriter,
    frame_records,
    history_record,
    load,
    run_record,
)

_SCRIPT = r'''
import math, os, sys
import wandb
name, steps, spike = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = wandb.init(project="spikelens-test", name=name, config={
    "max_grad_norm": 1.0, "learning_rate": 3e-4, "warmup_steps": 100, "bf16": True,
    "per_device_train_batch_size": 8, "optim": {"beta2": 0.95}, "note": "x"})
for s in range(steps):
    d = {"train/loss": 3.0 - 0.001 * s + (4.0 if s == spike else 0.0),
         "train/learning_rate": 3e-4, "train/grad_norm": 0.5 + 0.001 * (s % 7),
         "tag": "text"}
    if s == 100:
        d["train/loss"] = float("nan")
    if s % 50 == 0:
        d["eval/loss"] = 2.5
    wandb.log(d, step=s)
run.summary["best_eval"] = 1.25
run.finish()
'''


def _wandb_run(root: Path, name: str, steps: int = 300, spike: int = 200) -> Path:
    pytest.importorskip("wandb", reason="the wandb package (dev extra) is not installed")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(root),
           "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true", "WANDB_CONSOLE": "off"}
    subprocess.run([sys.executable, "-c", _SCRIPT, name, str(steps), str(spike)], env=env,
                   check=True, timeout=120)
    runs = sorted((root / "wandb").glob("offline-run-*"))
    return runs[-1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wb")
    _wandb_run(root, "first")
    # a run directory is named `offline-run-<YYYYmmdd_HHMMSS>-<random id>`: two runs started
    # in the same second sort by their random ids, and the tests take the first run to be
    # the one sorted first
    time.sleep(1.1)
    _wandb_run(root, "second", steps=120, spike=60)
    return root


def _file(run_dir: Path) -> Path:
    return next(run_dir.glob("*.wandb"))


def _expected_loss(s: int, spike: int) -> float:
    return 3.0 - 0.001 * s + (4.0 if s == spike else 0.0)


def test_offline_run_is_read_value_by_value(store: Path) -> None:
    run_dir = sorted((store / "wandb").glob("offline-run-*"))[0]
    run = read_log(run_dir)
    assert run.format == "wandb_run" and run.name == "first"
    assert list(run.steps) == list(range(300))
    loss = run.frame[run.roles["loss"]]
    for s in (0, 1, 99, 101, 199, 200, 299):
        assert loss[s] == pytest.approx(_expected_loss(s, 200), abs=1e-12)
    assert list(run.nan_steps[run.roles["loss"]]) == [100]  # a logged NaN is kept as evidence
    assert run.roles["lr"] == "train/learning_rate"
    assert run.roles["grad_norm"] == "train/grad_norm"
    assert run.roles["eval_loss"] == "eval/loss"
    assert run.frame["eval/loss"].dropna().index.tolist() == list(range(0, 300, 50))
    # the text column is not a metric, and says so
    assert "tag" not in run.frame.columns


def test_config_becomes_canonical_params_and_summary_is_kept(store: Path) -> None:
    run = read_log(sorted((store / "wandb").glob("offline-run-*"))[0])
    p = run.params
    assert p["clip_grad"] == 1.0 and p["lr"] == 3e-4 and p["warmup_steps"] == 100
    assert p["micro_batch_size"] == 8 and p["precision"] == "bf16"
    assert p["adam_beta2"] == 0.95 and p["note"] == "x"
    assert "max_grad_norm" not in p and "bf16" not in p
    assert p["summary"]["best_eval"] == 1.25
    assert p["summary"]["train/loss"] == pytest.approx(_expected_loss(299, 200))


def test_agrees_with_wandbs_own_protobuf_classes(store: Path) -> None:
    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
    path = _file(sorted((store / "wandb").glob("offline-run-*"))[0])
    fr = frame_records(load(path), path)
    seen: dict[int, float] = {}
    for s, ln in zip(fr.starts, fr.lengths, strict=True):
        rec = pb.Record.FromString(bytes(fr.buf[s:s + ln]))
        if rec.WhichOneof("record_type") != "history":
            continue
        items = {"/".join(i.nested_key) or i.key: i.value_json for i in rec.history.item}
        seen[int(items["_step"])] = float(items["train/loss"])
    run = read_log(path)
    col = run.frame[run.roles["loss"]]
    assert len(seen) == 300
    for step, v in seen.items():
        got = col[step]
        assert (math.isnan(v) and math.isnan(got)) or got == v


def test_directory_of_runs_gives_one_run_each_and_cli_analyses_them(store: Path) -> None:
    wdir = store / "wandb"
    latest = wdir / "latest-run"
    if not latest.exists():
        latest.symlink_to(sorted(wdir.glob("offline-run-*"))[-1])
    assert detect_format(wdir) == "wandb_run"
    runs = read_runs(wdir)
    assert sorted(r.name or "" for r in runs) == ["first", "second"]  # latest-run not twice
    res = CliRunner().invoke(app, ["analyze", str(wdir), "--format", "json"])
    assert res.exit_code == 0, res.output
    import json

    rep = json.loads(res.stdout)
    by_name = {r["name"]: r for r in rep["runs"]}
    spikes = {n: [e["peak_step"] for e in r["events"]
                  if e["kind"] == "spike" and e["metric"] == "loss"]
              for n, r in by_name.items()}
    assert spikes["first"] == [200] and spikes["second"] == [60]


def test_torn_last_record_is_read_up_to_the_damage(store: Path, tmp_path: Path) -> None:
    src = _file(sorted((store / "wandb").glob("offline-run-*"))[0])
    data = src.read_bytes()
    fr = frame_records(load(src), src)
    # cut the file in the middle of the last history record's data
    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
    last_hist = max(i for i, (s, ln) in enumerate(zip(fr.starts, fr.lengths, strict=True))
                    if pb.Record.FromString(bytes(fr.buf[s:s + ln])).HasField("history"))
    cut = int(fr.starts[last_hist]) + int(fr.lengths[last_hist]) // 2
    torn = tmp_path / "run-torn.wandb"
    torn.write_bytes(data[:cut])
    run = read_log(torn)
    assert list(run.steps) == list(range(299))  # step 299 was in the torn record
    assert any("torn last record" in w and f"byte {int(fr.starts[last_hist]) - 7}" in w
               for w in run.warnings)


def test_records_split_across_blocks_are_joined(tmp_path: Path) -> None:
    path = tmp_path / "run-split.wandb"
    w = LogWriter(path)
    w.write(run_record(1, "abc", "wide", {"clip_grad": 0.5}))
    wide = {f"layer_{i:03d}/grad_norm_with_a_long_name": float(i) for i in range(700)}
    for s in range(40):  # each record is about 40 KB: every one spans two blocks
        w.write(history_record(s + 2, s, {"loss": 2.0 + s, **wide}))
    w.close()
    assert path.stat().st_size > 20 * BLOCK
    run = read_log(path)
    assert run.name == "wide" and run.params["clip_grad"] == 0.5
    assert list(run.frame["loss"]) == [2.0 + s for s in range(40)]
    assert run.frame["layer_699/grad_norm_with_a_long_name"].tolist() == [699.0] * 40
    assert not run.warnings


def test_a_damaged_block_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "run-bad.wandb"
    w = LogWriter(path)
    for s in range(3000):
        w.write(history_record(s + 1, s, {"loss": 1.0 + (s % 5) * 0.01}))
    w.close()
    data = bytearray(path.read_bytes())
    # break a record header in the third block: its type byte
    fr = frame_records(load(path), path)
    i = int(np.searchsorted(fr.starts, 2 * BLOCK + 1000))
    data[int(fr.starts[i]) - 1] = 0x77
    path.write_bytes(bytes(data))
    run = read_log(path)
    assert 2000 < len(run.steps) < 3000
    assert any("damaged bytes" in w for w in run.warnings)


def test_not_a_wandb_log_is_one_line_error(tmp_path: Path) -> None:
    p = tmp_path / "run-x.wandb"
    p.write_bytes(b":W&B\x01\x02\x00" + b"\x00" * 40)
    with pytest.raises(LogFormatError, match=r"run-x.wandb: unknown W&B log version"):
        read_log(p, format="wandb_run")
    res = CliRunner().invoke(app, ["analyze", str(p)])
    assert res.exit_code == 2 and res.stderr.startswith("Error: ") and "Traceback" not in \
        res.output


def test_committed_fixture_is_a_real_wandb_run() -> None:
    files = sorted((SAMPLES / "wandb").rglob("*.wandb"))
    assert files, "sample_logs/wandb holds a run written by wandb"
    run = read_log(files[0])
    assert run.format == "wandb_run" and run.params.get("clip_grad") == 1.0


def test_many_batches_decoded_in_threads_keep_every_value(tmp_path: Path) -> None:
    # more records than one decoding batch (16 384), keys in a different order per record
    # (wandb-core writes Go map order), a NaN, an infinity, a string, a replayed step
    path = tmp_path / "run-big.wandb"
    w = LogWriter(path)
    n = 40_000
    for s in range(n):
        vals: dict[str, object] = {"train/loss": 1.0 + s / n, "train/lr": s * 1e-7,
                                   "train/grad_norm": float(s % 97)}
        if s == 30_000:
            vals["train/loss"] = float("nan")
        if s == 31_000:
            vals["train/grad_norm"] = float("inf")
        if s == 32_000:
            vals["status"] = "checkpoint"
        order = list(vals.items())
        if s % 2:
            order.reverse()
        w.write(history_record(s + 1, s, dict(order)), flush=False)
    w.write(history_record(n + 1, 100, {"train/loss": 9.0}), flush=False)  # a resume
    w.close()
    run = read_log(path)
    loss = run.frame["train/loss"].to_numpy().copy()
    expect = 1.0 + np.arange(n) / n
    expect[100] = 9.0  # the replayed step's later value wins
    assert np.isnan(loss[30_000]) and list(run.nan_steps["train/loss"]) == [30_000]
    loss[30_000] = expect[30_000] = 0.0
    assert np.array_equal(loss, expect)
    assert np.array_equal(run.frame["train/lr"].to_numpy(), np.arange(n) * 1e-7)
    gn = run.frame["train/grad_norm"].to_numpy()
    assert gn[31_000] == np.inf and gn[31_001] == 31_001 % 97
    assert [(r.resumed_at, r.previous_last) for r in run.restarts] == [(100, n - 1)]
    assert "status" not in run.frame.columns


def test_a_runs_table_is_refused_with_what_to_export(tmp_path: Path) -> None:
    # the W&B UI's run list exported as CSV: one row per run, last values, no history
    p = tmp_path / "wandb_export.csv"
    p.write_text('"Name","State","Notes","User","Tags","Created","Runtime","Sweep",'
                 '"learning_rate","train/loss"\n'
                 + "".join(f'"run-{i}","finished","-","me","","2024-10-0{i + 1}T10:00:00.000Z",'
                           f'"{300 + i}","",0.001,{2 + i / 10}\n' for i in range(5)))
    with pytest.raises(LogFormatError) as exc:
        read_log(p)
    assert str(exc.value) == (
        f"{p}: a W&B runs table (5 rows, one per run: Name, Created, Notes, Runtime, State, "
        "Sweep, Tags, User), not a history; export each run's history (the run page's CSV, "
        "or run.history())")


def test_an_api_runs_summary_table_is_refused(tmp_path: Path) -> None:
    # `api.runs()` summaries written as CSV: `_step` and `_runtime` are each run's last,
    # and every row has its own run id
    p = tmp_path / "runs.csv"
    p.write_text("lr,_runtime,_step,_timestamp,_wandb,train_loss,val_loss,name,id\n"
                 + "".join(f"0.001,{350 + i},{30 + i},{1.7e9 + i},\"{{'runtime': {350 + i}}}\","
                           f"{0.05 + i / 100},{0.12 + i / 100},run{i},id{i:04d}\n"
                           for i in range(6)))
    with pytest.raises(LogFormatError, match=r"a W&B runs table \(6 rows, one per run: name, "
                                             r"id, _wandb\), not a history"):
        read_log(p)

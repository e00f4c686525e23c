"""Inputs found by review that once crashed or misled: repeated column names, a log with a
header and no rows, steps too large to be steps, a gzip file, the same log named twice, a
column that is NaN throughout, and a loss rounded to one or two grid steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from conftest import SAMPLES
from typer.testing import CliRunner

from spikelens import analyze, read_log
from spikelens.cli import app
from spikelens.detect.baseline import infer_quantum

runner = CliRunner()
BLOOM = SAMPLES / "megatron" / "bigscience_tr11-176B_first_lm_loss_spike_31214-31251.log"


def _run(*args: object) -> tuple[int, str, str]:
    r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def test_repeated_column_names_are_kept_apart(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("step,loss,loss\n1,2,20\n2,3,30\n")
    run = read_log(p)
    assert run.roles["loss"] == "loss"
    assert run.frame["loss.1"].tolist() == [20.0, 30.0]
    assert f"{p}: repeated column name(s) loss: later ones renamed with a .1, .2 suffix" \
        in run.warnings


def test_header_without_rows_is_bad_input(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_text("step,loss\n")
    assert _run("analyze", p, "--fail-on", "any") == (
        2, "", f"Error: {p}: no data rows (a header, or nothing with a valid step)\n")


def test_steps_beyond_2_53_are_not_steps(tmp_path: Path) -> None:
    p = tmp_path / "b.csv"
    p.write_text("step,loss\n1,2\n2,3\n1e30,4\n")
    run = read_log(p)
    assert run.steps.tolist() == [1, 2]
    assert any("skipped 1 row(s) without a step (line 4)" in w for w in run.warnings)


def test_gzip_is_read_directly_a_cut_one_up_to_the_cut(tmp_path: Path) -> None:
    # issue 12: compressed logs are read directly (this test used to expect a refusal)
    import gzip

    rows = "".join(f"{i},{2 + 0.001 * (i % 7)}\n" for i in range(1, 20001))
    p = tmp_path / "log.csv.gz"
    p.write_bytes(gzip.compress(("step,loss\n" + rows).encode()))
    code, out, _ = _run("inspect", p)
    assert code == 0 and "format: csv" in out and "steps: 1..20000" in out
    # a gzip stream cut short (a log still being written): read up to the cut, with a warning
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    run = read_log(cut)
    assert 1000 < len(run.steps) < 20000
    assert any(w.startswith(f"{cut}: the gzip stream is cut short") for w in run.warnings)
    # damaged data is one line and exit 2
    bad = tmp_path / "bad.csv.gz"
    data = bytearray(p.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    bad.write_bytes(bytes(data))
    code, _, err = _run("inspect", bad)
    assert code == 2
    assert err.startswith(f"Error: {bad}: corrupt gzip data (") and err.count("\n") == 1


def test_the_same_log_named_twice_is_read_once(tmp_path: Path) -> None:
    shutil.copy(BLOOM, tmp_path / "bloom.log")
    code, out, _ = _run("analyze", tmp_path / "bloom.log", tmp_path, "--format", "json")
    doc = json.loads(out)
    assert code == 0 and len(doc["runs"]) == 1 and doc["recurrences"] == []


def test_a_column_nan_throughout_is_not_the_cause(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    p = tmp_path / "m.jsonl"
    rows = []
    for s in range(1, 301):
        loss = 2.0 - s / 600 + 0.01 * rng.standard_normal()
        rows.append(json.dumps({"step": s, "loss": loss * (2.5 if s == 150 else 1.0),
                                "mfu": float("nan")}))
    p.write_text("\n".join(rows) + "\n")
    [f] = [f for f in analyze(read_log(p)).runs[0].findings if f.event.metric == "loss"]
    assert f.event.peak_step == 150
    assert f.causes[0].cause != "numerical"


def test_a_loss_on_one_or_two_grid_steps_is_rounded() -> None:
    assert infer_quantum(np.array([0.0001, 0.0002] * 50)) == 0.0001
    assert infer_quantum(np.array([0.0, 0.0001, 0.0002] * 50)) == 0.0001
    # two levels far apart are not a grid
    assert infer_quantum(np.array([1.0, 2.7] * 50)) == 0.0


def test_hf_style_rounding_noise_is_not_a_spike(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    p = tmp_path / "r.csv"
    vals = rng.choice([0.0001, 0.0002], size=300)
    p.write_text("step,loss\n" + "".join(f"{i},{v:.4f}\n" for i, v in enumerate(vals, 1)))
    rr = analyze(read_log(p)).runs[0]
    assert [f for f in rr.findings if f.event.metric == "loss"] == []


def test_warmup_from_lr_zero_is_measured_from_its_first_positive_lr(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    p = tmp_path / "w.csv"
    rows = []
    for s in range(0, 401):
        lr = min(s, 100) * 1e-5
        loss = (3.0 - s / 400 + 0.02 * rng.standard_normal()) * (2.5 if s == 103 else 1.0)
        rows.append(f"{s},{loss:.5f},{lr:g}\n")
    p.write_text("step,loss,lr\n" + "".join(rows))
    [f] = [f for f in analyze(read_log(p)).runs[0].findings if f.event.metric == "loss"]
    lr = next(c for c in f.causes if c.cause == "lr_schedule")
    assert lr.summary.startswith("The warmup ended: LR reached its peak 1.0e-3 at step 100")
    assert lr.evidence["lr_ratio"] == 100
    bad = next(c for c in f.causes if c.cause == "bad_batch")
    assert "1.0x" not in bad.summary


def test_a_log_piped_on_standard_input() -> None:
    import subprocess
    import sys

    text = BLOOM.read_bytes()
    r = subprocess.run([sys.executable, "-m", "spikelens", "analyze", "-", "--format", "json"],
                       input=text, capture_output=True, check=False)
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)["runs"][0]
    assert run["source"] == "/dev/stdin" and run["verdict"] == "spiky"
    r = subprocess.run([sys.executable, "-m", "spikelens", "analyze", "-"],
                       input=b"just some words\n", capture_output=True, check=False)
    assert r.returncode == 2
    assert r.stderr.decode().startswith("Error: /dev/stdin: unknown log format (known: ")


def test_two_points_far_apart_are_not_an_averaging_interval(tmp_path: Path) -> None:
    # issue 9: no warning invented from a gap; two points 749 steps apart are an excerpt,
    # not "an average over 749 steps"
    state = {"log_history": [{"step": 1, "loss": 2.5, "learning_rate": 1e-4},
                             {"step": 750, "loss": 2.4, "learning_rate": 1e-4}],
             "global_step": 750}
    p = tmp_path / "trainer_state.json"
    p.write_text(json.dumps(state))
    run = read_log(p)
    assert run.interval == 1 and not run.averaged
    rr = analyze(run).runs[0]
    assert not any("average over" in w for w in rr.warnings)

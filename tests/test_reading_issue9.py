"""Reading bugs from the issue 9 review: series that count steps differently (TensorBoard
tags, DeepSpeed next to DeepSpeed-Chat lines) are not restarts; any series a log holds can
take a role; the step axis can be named and can be a date or a timestamp; two runs with
coinciding outliers and an empty loss cell analyse; a symlink loop and a lone UTF-16
surrogate are handled; a cell equal to its column name is data."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA
from typer.testing import CliRunner

from spikelens.cli import app
from spikelens.errors import ConfigError, LogFormatError
from spikelens.readers import read_log
from spikelens.readers._tfrecord import write_scalar_events

runner = CliRunner()


# -- TensorBoard tags with their own step conventions --------------------------------------

def _tb(path: Path, records: list[tuple[int, str, float, float]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_scalar_events(path, records)
    return path


def _per_epoch_and_per_iteration(resume: bool) -> list[tuple[int, str, float, float]]:
    """`train/loss` every 10 iterations and `epoch/accuracy` once per epoch (its step is
    the epoch number), written in time order: the two interleave."""
    recs: list[tuple[int, str, float, float]] = []
    t = 1_700_000_000.0
    for it in range(0, 1000, 10):
        t += 1.0
        recs.append((it, "train/loss", 3.0 - it / 1000, t))
        if it % 100 == 90:
            t += 1.0
            recs.append((it // 100, "epoch/accuracy", 0.5 + it / 5000, t))
    if resume:  # the job died at 990 and resumed from its checkpoint at 500
        for it in range(500, 700, 10):
            t += 1.0
            recs.append((it, "train/loss", 2.0 - it / 2000, t))
            if it % 100 == 90:
                t += 1.0
                recs.append((it // 100, "epoch/accuracy", 0.9, t))
    return recs


def test_tags_with_different_step_conventions_are_not_restarts(tmp_path: Path) -> None:
    path = _tb(tmp_path / "events.out.tfevents.1700000000.host.1.0",
               _per_epoch_and_per_iteration(resume=False))
    run = read_log(path)
    assert run.restarts == ()
    assert not [w for w in run.warnings if "restart" in w]
    loss = run.series("loss")
    assert loss is not None and len(loss) == 100
    assert loss.loc[500] == pytest.approx(2.5)
    acc = run.frame["epoch/accuracy"].dropna()
    assert list(acc.index) == list(range(10))


def test_a_real_restart_among_such_tags_is_one_restart(tmp_path: Path) -> None:
    path = _tb(tmp_path / "events.out.tfevents.1700000000.host.1.0",
               _per_epoch_and_per_iteration(resume=True))
    run = read_log(path)
    assert len(run.restarts) == 1
    assert [w for w in run.warnings if "restart" in w]
    loss = run.series("loss")
    assert loss is not None
    # the resumed values win over the first pass's
    assert loss.loc[600] == pytest.approx(2.0 - 600 / 2000)
    assert loss.loc[800] == pytest.approx(3.0 - 800 / 1000)


# -- any numeric series can take a role ----------------------------------------------------

def _rlhf_log(path: Path) -> Path:
    """DeepSpeed-Chat step 3 (RLHF) stdout: DeepSpeed's own `step=` lines, which the
    Megatron/DeepSpeed reader claims, and the script's `act_loss`/`cri_loss` lines."""
    rng = np.random.default_rng(1)
    lines = ["cmd = deepspeed main.py --actor_model_name_or_path facebook/opt-1.3b "
             "--critic_model_name_or_path facebook/opt-350m --deepspeed",
             "***** Running training *****",
             "Beginning of Epoch 1/1, Total Generation Batches 954"]
    for step in range(80):
        if step % 10 == 0 and step:
            lines.append(f"[2023-04-18 02:00:{step % 60:02d},554] [INFO] [logging.py:96:log_dist]"
                         f" [Rank 0] step={step}, skipped=0, lr=[9.65e-06, 9.65e-06], "
                         "mom=[(0.9, 0.95), (0.9, 0.95)]")
        act = 0.02 + 0.002 * rng.standard_normal() + (0.9 if step == 50 else 0.0)
        cri = 0.23 + 0.01 * rng.standard_normal()
        lines.append(f"epoch: 0|step: {step}|ppo_ep: 1|act_loss: {act:.6f}|"
                     f"cri_loss: {cri:.6f}|unsuper_loss: 0.0")
        lines.append(f"average reward score: {rng.normal(0.1, 0.3):.4f}")
        lines.append("-" * 85)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_metric_names_a_series_only_another_reader_parses(tmp_path: Path) -> None:
    path = _rlhf_log(tmp_path / "step3_rlhf.log")
    run = read_log(path, metrics={"loss": "act_loss"})
    assert run.roles["loss"] == "act_loss"
    loss = run.series("loss")
    assert loss is not None and len(loss) == 80
    assert loss.loc[50] > 0.9
    assert "cri_loss" in run.frame.columns
    assert any("the megatron reader does not read act_loss" in w for w in run.warnings)
    # DeepSpeed's `step=` lines next to the `step:` lines are not restarts
    assert run.restarts == ()
    res = runner.invoke(app, ["analyze", str(path), "--metric", "loss=act_loss"])
    assert res.exit_code == 0, res.output
    assert "spike" in res.output


def test_metric_naming_nothing_any_reader_reads_is_still_refused(tmp_path: Path) -> None:
    path = _rlhf_log(tmp_path / "step3_rlhf.log")
    with pytest.raises(ConfigError, match="no such metric"):
        read_log(path, metrics={"loss": "reward_loss"})
    res = runner.invoke(app, ["analyze", str(path), "--metric", "loss=reward_loss"])
    assert res.exit_code == 2
    assert "Traceback" not in res.output


# -- the step axis ---------------------------------------------------------------------------

def _logbook(path: Path, n: int = 90) -> Path:
    rng = np.random.default_rng(3)
    rows = ["date,loss (begin),loss (end),mean grad norm"]
    loss = 3.2
    day0 = dt.date(2024, 3, 1)
    for i in range(n):
        begin = loss
        loss = loss * 0.995 + 0.005 * rng.standard_normal()
        if i == 60:
            loss *= 1.8
        rows.append(f"{day0 + dt.timedelta(days=i)},{begin:.4f},{loss:.4f},"
                    f"{0.4 + 0.1 * rng.random():.3f}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_daily_logbook_is_read_by_date(tmp_path: Path) -> None:
    path = _logbook(tmp_path / "logbook.csv")
    run = read_log(path)
    assert list(run.steps[:3]) == [0, 1, 2] and int(run.steps[-1]) == 89
    assert run.roles["grad_norm"] == "mean grad norm"
    assert run.roles["loss"] in ("loss (end)", "loss (begin)")
    assert any("steps are days since 2024-03-01 (from the 'date' column)" in w
               for w in run.warnings)
    assert not any("non-numeric" in w for w in run.warnings)
    named = read_log(path, metrics={"step": "date", "loss": "loss (end)"})
    assert list(named.steps) == list(run.steps)
    res = runner.invoke(app, ["analyze", str(path), "--metric", "step=date"])
    assert res.exit_code == 0, res.output
    assert "spike at step 60" in res.output  # day 60: 2024-04-30


def test_gaps_in_the_dates_stay_gaps(tmp_path: Path) -> None:
    path = tmp_path / "weekly.csv"
    path.write_text("date,loss\n2024-01-01,3.0\n2024-01-08,2.9\n2024-01-15,2.8\n"
                    "2024-01-29,2.7\n")
    run = read_log(path)
    assert list(run.steps) == [0, 7, 14, 28]
    assert run.interval == 7


def test_a_timestamp_column_counts_seconds(tmp_path: Path) -> None:
    t0 = dt.datetime(2024, 3, 1, 12, 0, 0)
    rows = ["timestamp,loss"] + [f"{(t0 + dt.timedelta(seconds=30 * i)).isoformat()},"
                                 f"{3 - 0.01 * i:.3f}" for i in range(40)]
    path = tmp_path / "monitor.csv"
    path.write_text("\n".join(rows) + "\n")
    run = read_log(path)
    assert list(run.steps[:3]) == [0, 30, 60]
    assert run.interval == 30
    assert any("seconds since 2024-03-01T12:00:00" in w for w in run.warnings)


def test_metric_step_names_the_step_column(tmp_path: Path) -> None:
    path = tmp_path / "two_counters.csv"
    path.write_text("step,tokens,loss\n" + "".join(
        f"{i},{i * 4096},{3 - i * 0.01:.3f}\n" for i in range(1, 30)))
    assert int(read_log(path).steps[-1]) == 29
    run = read_log(path, metrics={"step": "tokens"})
    assert int(run.steps[-1]) == 29 * 4096
    assert "tokens" not in run.frame.columns
    with pytest.raises(ConfigError, match=r"--metric step=nope: no such column"):
        read_log(path, metrics={"step": "nope"})
    res = runner.invoke(app, ["inspect", str(path), "--metric", "step=nope"])
    assert res.exit_code == 2
    assert res.output.count("\n") == 1


def test_a_step_column_of_words_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "words.csv"
    path.write_text("phase,loss\ntrain,3.0\ntrain,2.9\neval,2.8\n")
    with pytest.raises(LogFormatError, match="neither numbers nor dates"):
        read_log(path, metrics={"step": "phase"})


# -- two runs, coinciding outliers, an empty loss cell ---------------------------------------

def _csv_run(path: Path, seed: int, missing: tuple[int, ...] = ()) -> Path:
    rng = np.random.default_rng(seed)
    n = 3000
    loss = 2.0 * np.exp(rng.normal(0, 0.01, n))
    grad = 0.5 * np.exp(rng.normal(0, 0.05, n))
    for s in (1000, 2000):  # a bad batch both runs read: one point, z below the single bar
        loss[s - 1] *= 1.1
    rows = ["step,loss,grad_norm"]
    for i in range(n):
        cell = "" if i + 1 in missing else f"{loss[i]:.6f}"
        rows.append(f"{i + 1},{cell},{grad[i]:.5f}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_two_runs_with_shared_outliers_and_an_empty_loss_cell(tmp_path: Path) -> None:
    a = _csv_run(tmp_path / "a.csv", 0)
    b = _csv_run(tmp_path / "b.csv", 1, missing=(500,))
    res = runner.invoke(app, ["analyze", str(a), str(b), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output

    report = json.loads(res.stdout)
    assert sorted(r["position"] for r in report["recurrences"]) == [1000.0, 2000.0]
    for run in report["runs"]:
        peaks = [e["peak_step"] for e in run["events"] if e["metric"] == "loss"]
        assert 1000 in peaks and 2000 in peaks


# -- a symlink loop ----------------------------------------------------------------------------

def test_a_symlink_to_itself_is_one_line_and_exit_2(tmp_path: Path) -> None:
    loop = tmp_path / "loop.csv"
    os.symlink(loop, loop)
    res = runner.invoke(app, ["analyze", str(loop)])
    assert res.exit_code == 2
    assert "symbolic link loop" in res.output
    assert "Traceback" not in res.output and res.output.count("\n") == 1
    with pytest.raises(LogFormatError, match="symbolic link"):
        read_log(loop)


# -- a lone surrogate in JSONL -------------------------------------------------------------

def test_a_lone_surrogate_is_replaced_and_the_row_kept(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n'
                    '{"step": 2, "loss": 2.1, "\\ud800": 1}\n'
                    '{"step": 3, "loss": 2.2, "note": "x\\udc00y"}\n'
                    '{"step": 4, "loss": 2.0, "emoji \\ud83d\\ude00": 5}\n')
    run = read_log(path)
    assert list(run.steps) == [1, 2, 3, 4]
    assert run.frame.loc[2, "\ufffd"] == 1.0
    assert run.frame.loc[4, "emoji \U0001F600"] == 5.0  # a proper pair stays a character
    assert any("surrogate" in w and "lines 2, 3" in w for w in run.warnings)


# -- repeated headers ------------------------------------------------------------------------

def test_a_cell_equal_to_its_column_name_is_data(tmp_path: Path) -> None:
    csv = tmp_path / "log.csv"
    csv.write_text("step,loss,phase\n1,2.0,train\n2,2.1,phase\n3,2.2,train\n")
    run = read_log(csv)
    assert list(run.steps) == [1, 2, 3]
    assert not any("header" in w for w in run.warnings)
    jl = tmp_path / "log.jsonl"
    jl.write_text('{"step": 1, "loss": 2.0, "tag": "a"}\n'
                  '{"step": 2, "loss": 2.1, "tag": "tag"}\n'
                  '{"step": 3, "loss": 2.2, "tag": "b"}\n')
    run = read_log(jl)
    assert list(run.steps) == [1, 2, 3]
    assert run.frame.loc[2, "loss"] == 2.1


def test_a_row_repeating_the_whole_header_is_dropped(tmp_path: Path) -> None:
    jl = tmp_path / "log.jsonl"
    jl.write_text('{"step": 1, "loss": 2.0}\n'
                  '{"step": "step", "loss": "loss"}\n'
                  '{"step": 2, "loss": 2.1}\n')
    run = read_log(jl)
    assert list(run.steps) == [1, 2]
    assert any("skipped 1 repeated header line(s) (line 2)" in w for w in run.warnings)


def test_a_log_whose_sniffed_reader_finds_no_loss_is_read_by_one_that_does(
        tmp_path: Path) -> None:
    # without --metric: DeepSpeed's `step=` lines make the DeepSpeed reader claim the file,
    # but it holds no loss there; the text reader, which reads act_loss, reads it instead
    path = _rlhf_log(tmp_path / "step3_rlhf.log")
    run = read_log(path)
    assert run.format == "text" and run.roles["loss"] == "act_loss"
    assert run.warnings[0] == (f"{path}: read as text: the megatron reader finds no train "
                               "loss in it, the text reader finds act_loss")
    res = runner.invoke(app, ["analyze", str(path)])
    assert res.exit_code == 0 and "spike at step 50" in res.output, res.output


def test_the_real_deepspeed_chat_rlhf_log_reads_its_actor_loss() -> None:
    # microsoft/DeepSpeedExamples' own step-3 log (tests/data/text/SOURCES.md): 65 PPO steps
    path = DATA / "text" / "deepspeed_chat_step3_rlhf_first65steps.log"
    run = read_log(path)
    assert run.format == "text" and run.roles["loss"] == "act_loss"
    loss = run.series("loss")
    assert loss is not None and len(loss) == 65 and loss.index[0] == 0 and loss.index[-1] == 64
    assert "cri_loss" in run.frame.columns


def test_a_format_forced_by_the_user_is_not_second_guessed(tmp_path: Path) -> None:
    path = _rlhf_log(tmp_path / "step3_rlhf.log")
    run = read_log(path, format="megatron")
    assert run.format == "megatron" and "loss" not in run.roles

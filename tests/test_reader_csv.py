"""CSV, TSV, Lightning and W&B CSV exports, read through the public `read_log`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

from spikelens import ConfigError, LogFormatError, MissingMetricError, read_log, read_runs


def test_amp_storm_csv_keeps_nan_loss_as_evidence() -> None:
    run = read_log(DATA / "csv" / "r05_amp_storm.csv")
    assert run.format == "csv"
    assert dict(run.roles) == {
        "loss": "loss", "lr": "lr", "grad_norm": "grad_norm", "loss_scale": "loss_scale",
        "skipped": "skipped_step", "samples": "samples", "wall_time": "wall_time",
    }
    assert run.frame.loc[799, "loss"] == pytest.approx(1.628465175628662)
    assert math.isnan(run.frame.loc[800, "loss"])
    assert 800 in run.nan_steps["loss"] and len(run.nan_steps["loss"]) == 40
    loss = run.series("loss")
    assert loss is not None and len(loss) == 2000  # logged NaN kept, not dropped
    assert run.frame.loc[801, "loss_scale"] == 65536.0
    assert run.interval == 1 and not run.restarts


def test_wandb_history_keeps_sparse_eval_out_of_train_loss() -> None:
    run = read_log(DATA / "csv" / "r01_wandb_history.csv")
    assert run.format == "wandb_csv"
    assert run.roles["loss"] == "train/loss" and run.roles["eval_loss"] == "eval/loss"
    assert run.frame.loc[800, "train/loss"] == pytest.approx(3.171416997909546)
    assert run.frame.loc[800, "eval/loss"] == pytest.approx(1.728078007698059)
    ev = run.series("eval_loss")
    assert ev is not None and 0 < len(ev) < 100
    assert run.nan_steps == {}


def test_wandb_panel_export_strips_run_prefix_and_min_max() -> None:
    run = read_log(DATA / "csv" / "r04_wandb_panel.csv")
    assert run.name == "mlp-sweep-113"
    assert list(run.frame.columns) == ["mlp-sweep-113 - train/loss"]
    assert run.roles == {"loss": "mlp-sweep-113 - train/loss"}
    assert run.frame.loc[2, "mlp-sweep-113 - train/loss"] == pytest.approx(2.265634059906006)


def test_wandb_panel_with_two_runs(tmp_path: Path) -> None:
    p = tmp_path / "panel.csv"
    p.write_text(
        '"Step","a - train/loss","a - train/loss__MIN","a - train/loss__MAX",'
        '"b - train/loss","b - train/loss__MIN","b - train/loss__MAX"\n'
        '"1","2.0","2.0","2.0","3.0","3.0","3.0"\n'
        '"2","1.5","1.5","1.5","2.5","2.5","2.5"\n'
        '"3","1.2","1.2","1.2","","",""\n'
    )
    runs = read_runs(p)
    assert [r.name for r in runs] == ["a", "b"]
    assert runs[0].frame["a - train/loss"].tolist() == [2.0, 1.5, 1.2]
    assert runs[1].roles == {"loss": "b - train/loss"}
    assert runs[1].steps.tolist() == [1, 2]
    with pytest.raises(ConfigError, match=r"holds 2 runs \(a, b\)"):
        read_log(p)
    assert read_log(p, run="b").frame.loc[2, "b - train/loss"] == 2.5


def test_lightning_metrics_csv_sparse_rows(tmp_path: Path) -> None:
    p = tmp_path / "metrics.csv"
    p.write_text(
        "epoch,step,train_loss_step,lr-AdamW,val_loss,train_loss_epoch\n"
        "0,49,2.31,0.001,,\n"
        "0,99,2.10,0.001,,\n"
        "0,99,,,2.05,\n"
        "0,99,,,,2.2\n"
        "1,149,1.90,0.001,,\n"
    )
    run = read_log(p)
    assert run.roles["loss"] == "train_loss_step"
    assert run.roles["eval_loss"] == "val_loss"
    assert run.roles["lr"] == "lr-AdamW"
    # the val row at step 99 shares the step with a train row: both survive, no restart
    assert run.frame.loc[99, "train_loss_step"] == 2.10
    assert run.frame.loc[99, "val_loss"] == 2.05
    assert run.restarts == ()
    assert run.interval == 50


def test_resumed_csv_repeats_header_and_replays_steps(tmp_path: Path) -> None:
    p = tmp_path / "train_log.csv"
    p.write_text(
        "step,loss,lr\n1,3.0,0.1\n2,2.9,0.1\n3,2.8,0.1\n4,2.7,0.1\n"
        "step,loss,lr\n3,2.75,0.1\n4,2.65,0.1\n5,2.6,0.1\n"
    )
    run = read_log(p)
    assert run.steps.tolist() == [1, 2, 3, 4, 5]
    assert run.frame.loc[3, "loss"] == 2.75  # last write wins
    assert len(run.restarts) == 1
    r = run.restarts[0]
    assert (r.resumed_at, r.previous_last, r.replayed) == (3, 4, (3, 4))
    assert any("skipped 1 repeated header line(s) (line 6)" in w for w in run.warnings)
    assert f"{p}: restart at line 7: steps 3-4 were logged again; the later values win" \
        in run.warnings
    assert run.segment_of_step is not None
    assert run.segment_of_step.tolist() == [0, 0, 1, 1, 1]


def test_torn_last_line_is_skipped_with_warning(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("step,loss,lr\n1,3.0,0.1\n2,2.9,0.1\n3,2.8")
    run = read_log(p)
    assert run.steps.tolist() == [1, 2]
    assert run.warnings == (f"{p}: skipped 1 malformed row(s) (line 4)",)


def test_tsv_and_nonfinite_spellings(tmp_path: Path) -> None:
    p = tmp_path / "log.tsv"
    p.write_text("step\tloss\n1\t2.0\n2\tNaN\n3\tInfinity\n4\t-inf\n5\t\"3.5\"\n6\t1.#INF\n")
    run = read_log(p)
    col = run.frame["loss"]
    assert col[1] == 2.0 and math.isnan(col[2]) and col[3] == np.inf and col[4] == -np.inf
    assert col[5] == 3.5 and col[6] == np.inf
    assert run.nan_steps["loss"].tolist() == [2]


def test_metric_override(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("step,my_objective,other\n1,2.0,1\n2,1.9,1\n")
    with pytest.raises(MissingMetricError, match="no loss-like metric"):
        read_log(p)
    run = read_log(p, metrics={"loss": "my_objective"})
    assert run.roles == {"loss": "my_objective"}
    with pytest.raises(ConfigError, match=r"--metric loss=nope: no such metric \(found: "):
        read_log(p, metrics={"loss": "nope"})


def test_lr_only_export_loads_without_loss() -> None:
    # OLMo 2's LR-schedule export has no loss at all; it still loads (lr is analysable)
    run = read_log(DATA / "csv" / "olmo2-peteish1_lr_schedule_wandb_export.csv")
    assert run.roles["lr"] == "optim/learning_rate_group0"
    assert "loss" not in run.roles
    assert run.frame.loc[4000, "optim/learning_rate_group0"] == pytest.approx(0.0004)


def test_binary_csv_named_file(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(LogFormatError):
        read_log(p, format="csv")


def test_wandb_panel_keeps_rows_whose_value_is_a_logged_nan(tmp_path: Path) -> None:
    p = tmp_path / "panel.csv"
    p.write_text(
        '"Step","a - train/loss","a - train/loss__MIN","a - train/loss__MAX"\n'
        '"1","2.0","2.0","2.0"\n"2","NaN","NaN","NaN"\n"3","1.9","1.9","1.9"\n'
    )
    run = read_log(p)
    assert run.steps.tolist() == [1, 2, 3]
    assert run.nan_steps["a - train/loss"].tolist() == [2]


def test_malformed_rows_are_numbered_where_they_are(tmp_path: Path) -> None:
    # the same traceback line three times, and a short row that is also the start of the
    # row it was cut from: each is found as a whole line, after the previous match
    trace = "Traceback (most recent call last): RuntimeError: CUDA error: out of memory"
    lines = ["step,loss,lr"]
    for s in range(1, 13):
        lines.append(f"{s},{3 - s * 0.01:.2f},0.001")
        if s in (3, 6, 9):
            lines.append(trace)
        if s == 11:
            lines.append(f"{s},{3 - s * 0.01:.2f}")
    p = tmp_path / "log.csv"
    p.write_text("\n".join(lines) + "\n")
    run = read_log(p)
    assert len(run.frame) == 12
    assert run.warnings == (f"{p}: skipped 4 malformed row(s) (lines 5, 9, 13, ...)",)
    lines.pop(12)  # the third traceback: the short row is now among the first three
    p.write_text("\n".join(lines) + "\n")
    assert read_log(p).warnings == (f"{p}: skipped 3 malformed row(s) (lines 5, 9, 15)",)


def test_lines_ended_by_a_lone_cr_are_numbered(tmp_path: Path) -> None:
    """A file whose lines end in a lone CR (Excel's "CSV (Macintosh)") is read row by row
    by pyarrow; its repeated header and its malformed rows are named by the lines a user
    counts, as in the same file with LF endings (the malformed rows had no line number,
    and the header line was taken to be the whole file)."""
    lines = ["step,loss,lr", "1,3.0,0.1", "2,2.9,0.1", "step,loss,lr", "3,2.8,0.1",
             "Traceback (most recent call last): oops", "4,2.7,0.1", "5,2.6"]
    runs = {}
    for name, eol in (("lf", "\n"), ("cr", "\r")):
        p = tmp_path / f"{name}.csv"
        p.write_bytes(eol.join(lines).encode())
        runs[name] = read_log(p)
        assert runs[name].warnings == (
            f"{p}: skipped 1 repeated header line(s) (line 4)",
            f"{p}: skipped 2 malformed row(s) (lines 6, 8)",
        )
    assert runs["cr"].steps.tolist() == runs["lf"].steps.tolist() == [1, 2, 3, 4]
    assert runs["cr"].frame["lr"].tolist() == [0.1] * 4


def test_big_csv_columns_convert_straight_from_arrow(tmp_path: Path) -> None:
    """A file of several parser blocks (4 MiB each), so every column arrives in chunks: the
    numeric columns become float64 arrays directly, an empty cell stays apart from a logged
    NaN, an integer column with empty cells and a true/false column still read as numbers,
    and a text column is set aside with a warning."""
    n = 300_000
    step = np.arange(n)
    nan_at = {7, 150_001, n - 1}
    lines = ["step,loss,val_loss,tokens,skipped,phase"]
    for i in range(n):
        loss = "NaN" if i in nan_at else f"{2 + 1 / (i + 1):.9f}"
        val = "nan" if i == 250_000 else (f"{1.5:.3f}" if i % 1000 == 0 else "")
        tokens = "" if i % 7 == 3 else str(512 * i)
        lines.append(f"{i},{loss},{val},{tokens},{'true' if i % 5 == 0 else 'false'},train")
    p = tmp_path / "big.csv"
    p.write_text("\n".join(lines) + "\n")
    assert p.stat().st_size > 2 * (1 << 22)
    run = read_log(p)
    f = run.frame
    assert list(f.columns) == ["loss", "val_loss", "tokens", "skipped"]
    assert all(f[c].dtype == np.float64 for c in f.columns)
    assert list(run.nan_steps["loss"]) == sorted(nan_at)
    assert list(run.nan_steps["val_loss"]) == [250_000]  # the empty cells are not NaN
    assert int(f["val_loss"].notna().sum()) == 299  # 300 logged values, one of them NaN
    tokens = f["tokens"].to_numpy()
    empty = step % 7 == 3
    assert np.isnan(tokens[empty]).all()
    np.testing.assert_array_equal(tokens[~empty], 512.0 * step[~empty])
    np.testing.assert_array_equal(f["skipped"].to_numpy(), (step % 5 == 0).astype(float))
    assert f["loss"].iloc[1] == pytest.approx(2.5)
    assert run.warnings == (f"{p}: ignored non-numeric column(s): phase",)


def test_csv_types_that_change_after_the_first_block(tmp_path: Path) -> None:
    """The numeric types are taken from the first 4 MiB block and stated to the parser; a
    column that changes type further down (integers that turn into floats, numbers that turn
    into words, a column empty at first) must still read as the whole file says, not fail
    and not be cut to the first block's type."""
    n = 400_000
    lines = ["step,loss,tokens,note,late"]
    for i in range(n):
        tokens = str(512 * i) if i < 200_000 else f"{512 * i + 0.5}"
        note = "1.5" if i < 130_000 else "diverged"  # mostly words: a text column
        late = "" if i < 200_000 else f"{i / 10:.1f}"
        lines.append(f"{i},{2 + 1 / (i + 1):.9f},{tokens},{note},{late}")
    p = tmp_path / "drift.csv"
    p.write_text("\n".join(lines) + "\n")
    assert p.stat().st_size > 2 * (1 << 22)
    run = read_log(p)
    f = run.frame
    assert list(f.columns) == ["loss", "tokens", "late"]
    assert f["tokens"].iloc[10] == 5120.0
    assert f["tokens"].iloc[n - 1] == 512 * (n - 1) + 0.5
    assert f["late"].iloc[:200_000].isna().all()
    assert f["late"].iloc[n - 1] == pytest.approx((n - 1) / 10)
    assert run.warnings == (f"{p}: ignored non-numeric column(s): note",)


def test_cells_that_are_not_numbers_are_read_as_missing_and_said(tmp_path: Path) -> None:
    # `abc` in the loss and a sentence in the lr are typos or a writer's placeholders: the rows
    # stay (their other cells are good), the cells become missing, and the warning names
    # the column, the first such value and the lines, so nothing is dropped unsaid
    p = tmp_path / "log.csv"
    rows = [f"{i},{2.0 - i / 1000},0.001" for i in range(1, 41)]
    rows[2] = "3,abc,0.001"
    rows[4] = "5,2.0,this is not a learning rate"
    rows[9] = "10,-,0.001"
    rows[19] = "20,1.2.3,0.001"
    rows[29] = "30, 'a very long placeholder text',0.001"
    p.write_text("step,loss,lr\n" + "\n".join(rows) + "\n")
    run = read_log(p)
    assert run.steps.tolist() == list(range(1, 41))
    loss = run.frame["loss"]
    assert [s for s in run.steps if math.isnan(loss[s])] == [3, 10, 20, 30]
    assert math.isnan(run.frame["lr"][5]) and run.frame["lr"][6] == 0.001
    assert "loss" not in run.nan_steps  # a typo is not a NaN the run logged
    assert run.warnings == (
        f"{p}: 4 value(s) of column 'loss' are not numbers (first 'abc'), read as missing "
        "(lines 4, 11, 21, ...)",
        f"{p}: 1 value(s) of column 'lr' are not numbers (first 'this is not a learni'...), "
        "read as missing (line 6)",
    )


def test_odd_cells_of_a_long_column_with_few_values_are_said(tmp_path: Path) -> None:
    # past 4096 rows a column with few distinct values (a constant lr here) is parsed by
    # its distinct values: its odd cells must still reach the warning, with their lines
    p = tmp_path / "log.csv"
    lines = ["step,loss,lr"]
    for i in range(1, 6001):
        lines.append(f"{i},{2.0 - i / 10000:.4f},{'warmup' if i % 1000 == 0 else '0.001'}")
    p.write_text("\n".join(lines) + "\n")
    run = read_log(p)
    assert "lr" in run.frame.columns and int(run.frame["lr"].isna().sum()) == 6
    assert run.warnings == (
        f"{p}: 6 value(s) of column 'lr' are not numbers (first 'warmup'), read as missing "
        "(lines 1001, 2001, 3001, ...)",
    )


def test_a_text_column_is_ignored_not_reported_cell_by_cell(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("step,loss,note\n" + "".join(f"{i},{2 - i / 100},ok{i}\n" for i in range(1, 30)))
    assert read_log(p).warnings == (f"{p}: ignored non-numeric column(s): note",)


def test_keras_csvlogger_reads_on_its_epoch(tmp_path: Path) -> None:
    # Keras' CSVLogger writes `training.log` with no step column: one row per epoch
    p = tmp_path / "training.log"
    rows = [f"{e},{0.3 + e / 100},{2.0 - e / 50},{0.25 + e / 110},{2.1 - e / 55}"
            for e in range(40)]
    p.write_text("epoch,accuracy,loss,val_accuracy,val_loss\n" + "\n".join(rows) + "\n")
    run = read_log(p)
    assert run.format == "csv" and run.steps.tolist() == list(range(40))
    assert run.roles["loss"] == "loss" and run.roles["eval_loss"] == "val_loss"
    assert run.warnings == (f"{p}: no step column: the 'epoch' column, whole numbers, is the "
                            "step (one row per epoch)",)


def test_a_fractional_epoch_is_not_a_step(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("epoch,loss\n" + "".join(f"{e / 4},{2 - e / 100}\n" for e in range(30)))
    with pytest.raises(MissingMetricError, match="no step column in the log"):
        read_log(p)


def test_two_values_of_a_metric_at_one_step_are_said(tmp_path: Path) -> None:
    # a W&B runs table exported as CSV: one row per run, all at the last step; the last row
    # wins as for a resume, but here nothing else would say that values were dropped
    p = tmp_path / "runs.csv"
    p.write_text("iter,train/loss,val/loss,lr\n"
                 + "".join(f"5000,{2 + i / 10},{2.1 + i / 10},0.001\n" for i in range(4)))
    run = read_log(p)
    assert run.steps.tolist() == [5000] and run.frame["train/loss"][5000] == 2.3
    assert run.warnings == (
        f"{p}: 1 step(s) hold two or more different values of the same metric (train/loss, "
        "val/loss; steps 5000): the last written is kept (several runs or writers in one "
        "table?)",)


def test_rows_that_fill_different_columns_of_a_step_are_no_conflict(tmp_path: Path) -> None:
    # Lightning's metrics.csv: a train row and a val row at the same step, each with its own
    # columns, and the epoch written on both
    p = tmp_path / "metrics.csv"
    rows = []
    for s in range(0, 300, 10):
        rows.append(f"{s // 100},{s},{2 - s / 1000},")
        if s % 100 == 90:
            rows.append(f"{s // 100},{s},,{2.1 - s / 1000}")
    p.write_text("epoch,step,train_loss,val_loss\n" + "\n".join(rows) + "\n")
    assert read_log(p).warnings == ()


def test_a_headerless_table_is_named_as_such(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("".join(f"{0.4 - i / 1000:.6f},{i / 10:.6f},{0.3 + i / 500:.6f}\n"
                         for i in range(20)))
    with pytest.raises(MissingMetricError) as exc:
        read_log(p)
    assert str(exc.value) == (f"{p}: no header line: the first line (0.400000, 0.000000, "
                              "0.300000) is data; add a line naming the columns (step, "
                              "loss, ...)")


def test_header_cells_with_spaces_keep_their_nan_steps(tmp_path: Path) -> None:
    """`step, loss` (a space after each comma, as hand-written loggers print): the column is
    `loss`, and the NaN the log wrote at step 2 is a logged NaN of `loss`, not of ` loss`."""
    p = tmp_path / "spaced.csv"
    p.write_text("step, loss, grad_norm\n" + "".join(
        f"{i}, {'NaN' if i == 2 else 2 - i / 100}, {'nan' if i == 5 else 1.0}\n"
        for i in range(20)))
    run = read_log(p)
    assert list(run.frame.columns[:2]) == ["loss", "grad_norm"]
    assert list(run.nan_steps) == ["loss", "grad_norm"]
    assert run.nan_steps["loss"].tolist() == [2]
    assert run.nan_steps["grad_norm"].tolist() == [5]


"""The generic key-value text reader: modded-nanogpt, llm.c, nanoGPT and mmengine dialects,
values at named steps, eval lines kept out of the train loss, roles, warnings, errors, and
property tests (random frames written as `step:N key:value` lines read back equal;
arbitrary bytes only ever raise a SpikelensError)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, SAMPLES, SHARED, isnan, registered_reader
from hypothesis import given, settings
from hypothesis import strategies as st

from spikelens import LogFormatError, MissingMetricError, SpikelensError, read_log

TXT = DATA / "text"
MODDED = SAMPLES / "text" / "modded_nanogpt_124M_2024-11-06_ShortcutsTweaks.log"
LLMC = TXT / "llmc_124M_steps0-1000.log"
NANOGPT = TXT / "nanogpt_shakespeare_char.log"
MMENGINE = TXT / "mmengine_epoch_based.log"




def test_modded_nanogpt_replicated_outlier_and_val_lines_apart() -> None:
    run = read_log(MODDED)
    assert run.format == "text"
    assert dict(run.roles) == {"loss": "train_loss", "eval_loss": "val_loss",
                               "step_time": "step_avg", "wall_time": "train_time"}
    loss = run.frame["train_loss"]
    # the one-step outlier seen at the same batch in dozens of runs
    assert (loss[918], loss[919], loss[920]) == (3.7449, 4.9638, 3.6604)
    assert run.eval_frame.loc[125, "val_loss"] == 4.7597
    assert run.eval_frame.loc[3200, "val_loss"] == 3.3151
    # the val line at step 125 repeats train_time; it must not overwrite the train row's
    assert run.frame.loc[125, "train_time"] == 16426.0  # `ms` stripped
    assert run.eval_frame.loc[125, "eval/train_time"] == 16482.0
    series = run.series("loss")
    assert series is not None and len(series) == 3200 and series.index[0] == 1
    assert isnan(run.frame.loc[12, "step_avg"]) and run.frame.loc[13, "step_avg"] == 123.92
    assert run.warnings == () and run.restarts == () and run.interval == 1


def test_modded_nanogpt_shared_124m_runs_spike_at_919(shared: Path) -> None:
    for name, peak in [("124M_2024-10-09_SOAP_5bdc3988.log", 5.0667),
                       ("124M_2024-10-10_Muon_eb5659d0.log", 5.0597)]:
        run = read_log(shared / "real_logs" / "modded_nanogpt" / name)
        loss = run.frame["train_loss"]
        assert loss[919] == peak and loss[918] < 3.9 and loss[920] < 3.8


def test_llmc_train_and_eval_lines() -> None:
    run = read_log(LLMC)
    assert dict(run.roles) == {"loss": "trl", "eval_loss": "tel", "lr": "lr",
                               "grad_norm": "norm"}
    assert run.frame.loc[919, "trl"] == 4.4642 and run.frame.loc[919, "norm"] == 0.47
    assert run.frame.loc[250, "lr"] == 0.000215
    assert run.eval_frame.loc[250, "tel"] == 6.1710
    assert "tel" not in run.frame.columns and len(run.eval_frame) == 5
    loss = run.series("loss")
    assert loss is not None and len(loss) == 1001 and loss[250] == 6.1818


def test_every_line_with_its_validation_loss_is_a_train_row_too(tmp_path: Path) -> None:
    # a script that prints its last validation on every line has no train lines to keep
    # its numbers apart from: the other keys are the train row, val_loss an eval row
    p = tmp_path / "train.log"
    loss = [2.0 + math.exp(-i / 30) + (3.0 if i == 150 else 0.0) for i in range(1, 301)]
    p.write_text("".join(f"epoch 0 step {i} train_loss {x:.4f} val_loss {2.5 - i / 1000:.4f}\n"
                         for i, x in enumerate(loss, start=1)))
    run = read_log(p)
    assert dict(run.roles) == {"loss": "train_loss", "eval_loss": "val_loss", "epoch": "epoch"}
    assert list(run.steps) == list(range(1, 301))
    assert run.frame.loc[150, "train_loss"] == round(loss[149], 4)
    assert list(run.eval_frame.index) == list(range(1, 301))


def test_evaluation_lines_alone_are_insufficient_data_not_an_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from spikelens.cli import app

    p = tmp_path / "eval.log"
    p.write_text("step 100 val_loss 2.5\nstep 200 val_loss 2.4\nstep 300 val_loss 2.3\n")
    res = CliRunner().invoke(app, ["analyze", str(p)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"insufficient_data: {p}")
    assert "no train loss: nothing to detect on (the log has eval_loss)" in res.output
    res = CliRunner().invoke(app, ["analyze", str(p), "--fail-on", "insufficient_data"])
    assert res.exit_code == 1


def test_steps_with_thousands_separators(tmp_path: Path) -> None:
    # `Iteration 1,001 |`: the step was read as 1, and every step past 999 as a restart
    p = tmp_path / "train.log"
    p.write_text("".join(f"Iteration {i:,} | loss {2.0 + 1 / i:.4f} | tokens/sec 1,234,567\n"
                         for i in range(1, 3001, 10)))
    run = read_log(p)
    assert list(run.steps) == list(range(1, 3001, 10)) and not run.restarts
    assert run.frame.loc[2991, "tokens/sec"] == 1234567.0


def test_nanogpt_iter_lines_and_step_eval_lines() -> None:
    run = read_log(NANOGPT)
    # `time 52.79ms` is the iteration's duration (it falls as often as it rises), not a clock
    assert dict(run.roles) == {"loss": "loss", "eval_loss": "val loss", "step_time": "time"}
    f = run.frame
    assert f.loc[310, "loss"] == 3.9012 and f.loc[300, "loss"] == 1.6014
    assert f.loc[0, "time"] == 29978.56 and f.loc[0, "mfu"] == -100.0
    assert list(f.columns) == ["loss", "time", "mfu"]
    # `step N: train loss X, val loss Y` is an evaluation: the whole line goes to eval
    assert list(run.eval_frame.index) == [0, 250, 500]
    assert run.eval_frame.loc[250, "train loss"] == 1.8102
    assert run.eval_frame.loc[250, "val loss"] == 1.8558
    assert run.interval == 10
    assert run.warnings == ()  # `num decayed parameter tensors: 26, ...` is not a metric line


def test_mmengine_epoch_iter_to_global_step_and_val_at_the_train_step() -> None:
    run = read_log(MMENGINE)
    # mmengine's `time: 0.5012` is seconds per iteration: a value that never moves is no clock
    assert dict(run.roles) == {"loss": "loss", "lr": "lr", "grad_norm": "grad_norm",
                               "step_time": "time"}
    f = run.frame
    assert f.loc[550, "loss"] == 1.1344  # Epoch(train) [2][ 50/500]
    assert f.loc[500, "lr"] == 5.0e-05 and f.loc[500, "memory"] == 3456
    assert "eta" not in f.columns  # `0:08:20` is a duration, not a number
    assert list(run.nan_steps["loss"]) == [650] and list(run.nan_steps["grad_norm"]) == [650]
    assert list(run.eval_frame.index) == [500, 1000]
    assert run.eval_frame.loc[1000, "accuracy/top1"] == 80.0
    assert run.interval == 50 and run.warnings == ()


def test_eval_nan_is_a_logged_nan_and_tel_stays_out_of_the_loss(tmp_path: Path) -> None:
    p = tmp_path / "main.log"
    p.write_text("s:5 tel:nan\ns:5 trl:2.0 lr:0.1\ns:6 trl:nan lr:0.1\ns:10 tel:1.5\n")
    run = read_log(p)
    assert list(run.nan_steps["tel"]) == [5] and list(run.nan_steps["trl"]) == [6]
    loss = run.series("loss")
    assert loss is not None and list(loss.index) == [5, 6]


def test_restart_is_found_by_the_shared_code(tmp_path: Path) -> None:
    p = tmp_path / "train.log"
    p.write_text("".join(f"iter {i}: loss {3 - i / 10:.2f}\n" for i in (0, 1, 2, 3, 4))
                 + "".join(f"iter {i}: loss {9 - i:.2f}\n" for i in (3, 4, 5)))
    run = read_log(p)
    assert len(run.restarts) == 1 and run.restarts[0].replayed == (3, 4)
    assert run.frame.loc[3, "loss"] == 6.0 and run.frame.loc[5, "loss"] == 4.0


def test_stepless_metric_lines_are_counted_in_a_warning(tmp_path: Path) -> None:
    p = tmp_path / "stdout.log"
    p.write_text(
        "{'loss': 2.31, 'grad_norm': 1.2, 'learning_rate': 5e-05, 'epoch': 0.1}\n"
        "optimizer = dict(type='SGD', lr=0.01, momentum=0.9)\n"
        "step 5: loss 2.0\n"
        "{'loss': 2.2, 'grad_norm': 1.1, 'learning_rate': 4e-05, 'epoch': 0.2}\n"
    )
    # (the two Trainer dicts make the hf_stdout reader the surer one: the text reader is
    # asked for by name)
    run = read_log(p, format="text")
    assert run.warnings == (f"{p}: skipped 2 line(s) with metrics but no step (lines 1, 4)",)


def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    p = tmp_path / "train.log"
    p.write_text("step:1/9 train_loss:2.5 train_time:10ms\nstep:2/9 train_loss:2.4 "
                 "train_time:20ms\nstep:3/9 train_loss:2.3")
    run = read_log(p)
    assert list(run.steps) == [1, 2]
    assert run.warnings == (f"{p}: skipped 1 truncated line(s) (line 3)",)


@pytest.mark.parametrize(("line", "pairs"), [
    ("iter 100: loss 4.2012, time 33.21ms, mfu 12.3%",
     {"loss": 4.2012, "time": 33.21, "mfu": 12.3}),
    ("step:1/20 train_loss:22.6211 train_time:81991ms step_avg:nanms",
     {"train_loss": 22.6211, "train_time": 81991.0, "step_avg": math.nan}),
    ("INFO - train loss: 2.5 val loss: 2.7 | grad norm 1.5e+00",
     {"train loss": 2.5, "val loss": 2.7, "grad norm": 1.5}),
    ("lr: 1.0000e-04  eta: 0:10:00  time: 0.5  loss: -inf  mode: info",
     {"lr": 1e-4, "time": 0.5, "loss": -math.inf}),
    # Python's `{:,}` (torchtitan's `tps: 1,234`) is a number; `1,2` (a list) is not one
    ("total 1,234 items", {"total": 1234.0}),
    ("tps: 1,234,567  tflops: 56.78  x 1,2", {"tps": 1234567.0, "tflops": 56.78}),
])
def test_pairs(line: str, pairs: dict[str, float]) -> None:
    registered_reader("text")
    from spikelens.readers.text import parse_pairs

    got = parse_pairs(line)
    assert got.keys() == pairs.keys()
    for k, v in pairs.items():
        assert (math.isnan(got[k]) and math.isnan(v)) or got[k] == v


def test_sniff_is_a_low_fallback_score() -> None:
    reader = registered_reader("text")
    assert reader.sniff(MODDED, MODDED.read_bytes()[:65536]) == 0.2
    assert reader.sniff(MMENGINE, MMENGINE.read_bytes()) == 0.2
    prose = DATA / "invalid" / "prose.txt"
    assert reader.sniff(prose, b"Dear diary,\nToday the model trained for a while.\n") == 0.0
    assert reader.sniff(Path("m.csv"), b"step,loss\n1,2.0\n2,1.9\n") == 0.0
    assert reader.sniff(Path("m.jsonl"), b'{"step": 1, "loss": 2.0}\n') == 0.0
    assert reader.sniff(Path("x.bin"), bytes(range(256)) * 8) == 0.0
    # a Megatron log is also text, but the Megatron reader is surer
    meg = SAMPLES / "megatron" / "bigscience_tr1-13B_spike_29020-29090.log"
    assert reader.sniff(meg, meg.read_bytes()) == 0.2
    assert read_log(meg).format == "megatron"


def test_errors_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "notes.log"
    p.write_text("step 1 went fine\nstep 2: nothing to report\n")
    with pytest.raises(LogFormatError) as e1:
        read_log(p, format="text")
    assert str(e1.value) == f"{p}: no lines with a step number and key: value metrics found"
    no_loss = TXT.parent / "invalid" / "text_no_loss.log"
    with pytest.raises(MissingMetricError) as e2:
        read_log(no_loss)
    assert str(e2.value) == f"{no_loss}: no loss-like metric (found: accuracy, top5)"


@pytest.mark.parametrize("name", sorted(p.name for p in (SHARED / "real_logs" /
                                                         "modded_nanogpt").glob("*.log")))
def test_every_shared_modded_nanogpt_log_loads(name: str, shared: Path) -> None:
    run = read_log(shared / "real_logs" / "modded_nanogpt" / name)
    assert run.format == "text" and run.roles["loss"] in ("train_loss", "trl")
    assert run.roles["eval_loss"] in ("val_loss", "tel") and run.warnings == ()


# --- property tests -------------------------------------------------------------------------

KEYS = ["train_loss", "grad_norm", "lr", "tokens_seen", "z-loss"]
values = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def text_logs(draw: st.DrawFn) -> tuple[list[int], dict[str, list[float]], str]:
    n = draw(st.integers(1, 20))
    steps = sorted(draw(st.sets(st.integers(0, 10**12), min_size=n, max_size=n)))
    cols = ["train_loss", *draw(st.lists(st.sampled_from(KEYS[1:]), unique=True))]
    data = {c: draw(st.lists(values, min_size=n, max_size=n)) for c in cols}
    sep = draw(st.sampled_from([":", "=", ": "]))
    lines = [
        f"step:{s}/{10**13} " + " ".join(
            f"{c}{sep}{'nan' if math.isnan(data[c][i]) else repr(data[c][i])}" for c in cols)
        for i, s in enumerate(steps)
    ]
    return steps, data, "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None)
@given(text_logs())
def test_random_frames_written_as_key_value_lines_read_back_equal(
    case: tuple[list[int], dict[str, list[float]], str],
) -> None:
    steps, data, text = case
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "train.log"
        p.write_text(text)
        run = read_log(p)
    assert run.format == "text" and list(run.steps) == steps
    for col, vals in data.items():
        assert np.array_equal(run.frame[col].to_numpy(), np.asarray(vals), equal_nan=True)
        nan_at = [s for s, v in zip(steps, vals, strict=True) if math.isnan(v)]
        assert list(run.nan_steps.get(col, [])) == nan_at


FRAGMENTS = [b"step:1/20 ", b"s:3 ", b"iter 5: ", b"Epoch(train) [1][50/500] ",
             b"Epoch(val) [2][1/1] ", b"Iter(test) [3/9] ", b"loss 2.0", b"val_loss:nan",
             b"tel:1.0", b"train loss ", b"x=1e999", b"step 999999999999999999 ", b", ",
             b"\n", b"nanms", b"%", b"'loss': 3", b"\xff\xfe\x00"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=24), max_size=40))
def test_arbitrary_bytes_raise_only_spikelens_errors(parts: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "train.log"
        p.write_bytes(b"".join(parts))
        try:
            registered_reader("text").read(p)
        except SpikelensError:
            pass
        try:
            read_log(p, format="text")
        except SpikelensError:
            pass

"""HuggingFace Trainer `trainer_state.json`: train, eval and summary records of `log_history`
kept apart (bench run r16, real QLoRA and MetaMath states), `logging_steps` as the interval,
torn writes read up to the damage, the exact errors for broken inputs, and properties: random
log histories round-trip, arbitrary bytes only ever raise a SpikelensError."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, SAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st

from spikelens import LogFormatError, SpikelensError, read_log
from spikelens.readers import detect_format
from spikelens.readers.hf_trainer_state import HfTrainerStateReader

H = DATA / "hf"
R16 = H / "r16_trainer_state.json"


def test_r16_train_eval_and_summary_kept_apart() -> None:
    run = read_log(R16)
    assert run.format == "hf_trainer_state"
    assert dict(run.roles) == {
        "loss": "loss", "eval_loss": "eval_loss", "lr": "learning_rate",
        "grad_norm": "grad_norm", "epoch": "epoch",
    }
    assert list(run.steps[[0, -1]]) == [1, 1500] and len(run.steps) == 1500
    # the injected bad batch at step 1000 (raw 0-255 pixels)
    assert run.frame.loc[999, "loss"] == 0.6038
    assert run.frame.loc[1000, "loss"] == 3166.4216
    assert run.frame.loc[1000, "grad_norm"] == pytest.approx(9989.1630859375)
    # eval records: their own frame, never the train loss
    assert run.eval_frame.loc[1000, "eval_loss"] == pytest.approx(0.47918230295181274)
    assert run.eval_frame.loc[1500, "eval_loss"] == pytest.approx(0.45035552978515625)
    assert len(run.eval_frame) == 15 and "eval_loss" not in run.frame.columns
    assert run.frame.loc[1500, "loss"] == 0.2946
    # the summary record's run-average train_loss (2.738...) is nowhere
    assert "train_loss" not in run.frame.columns and "train_runtime" not in run.extras
    assert run.interval == 1 and not run.averaged and run.warnings == ()


def test_qlora_real_state_without_logging_steps() -> None:
    run = read_log(SAMPLES / "hf" / "qlora_25epochs_10000steps_trainer_state.json")
    assert len(run.steps) == 1000  # 1001 records, the last one the run summary
    assert run.frame.loc[10, "loss"] == 5.4962
    assert run.frame.loc[10000, "loss"] == 0.0886
    assert run.frame.loc[20, "learning_rate"] == 0.0002
    assert run.interval == 10 and run.averaged  # a mean over 10 steps per record
    assert dict(run.roles) == {"loss": "loss", "lr": "learning_rate", "epoch": "epoch"}


def test_metamath_logging_every_step() -> None:
    run = read_log(H / "metamath_sft_128steps_logging1_trainer_state.json")
    assert list(run.steps) == list(range(1, 129))
    assert run.frame.loc[1, "loss"] == 1.0372 and run.frame.loc[128, "loss"] == 0.5728
    assert run.frame.loc[1, "grad_norm"] == pytest.approx(27.43350583982404)
    assert run.interval == 1  # "logging_steps": 1.0


def test_detected_by_content_under_any_name(tmp_path: Path) -> None:
    p = tmp_path / "state_backup.json"
    p.write_bytes(R16.read_bytes())
    assert detect_format(p) == "hf_trainer_state"
    r = HfTrainerStateReader()
    assert r.sniff(Path("trainer_state.json"), R16.read_bytes()[:65536]) == 1.0
    assert r.sniff(Path("metrics.jsonl"), b'{"step": 1, "loss": 2.0}\n') == 0.0


def _torn(tmp_path: Path, marker: str, cut: int) -> tuple[Path, str]:
    text = R16.read_text()
    p = tmp_path / "trainer_state.json"
    at = text.index(marker) + cut
    p.write_text(text[:at])
    return p, text[:at]


def test_torn_mid_record_reads_complete_records(tmp_path: Path) -> None:
    # cut inside the step-1001 train record, just after the step-1000 eval record
    p, text = _torn(tmp_path, '"loss": 0.4422', 10)
    run = read_log(p)
    line = text.count("\n") + 1
    assert run.warnings == (
        f"{p}: truncated or damaged at line {line} (log_history record 1011); "
        f"read the 1010 complete record(s) before it",
    )
    assert list(run.steps[[0, -1]]) == [1, 1000]
    assert run.frame.loc[1000, "loss"] == 3166.4216
    assert run.eval_frame.loc[1000, "eval_loss"] == pytest.approx(0.47918230295181274)


def test_torn_after_log_history(tmp_path: Path) -> None:
    p, text = _torn(tmp_path, '"logging_steps"', 8)
    run = read_log(p)
    line = text.count("\n") + 1
    assert run.warnings == (
        f"{p}: truncated or damaged at line {line}, after log_history; all 1516 record(s) read",
    )
    assert len(run.steps) == 1500 and run.interval == 1  # learnt from the steps


def test_nan_loss_kept_as_evidence(tmp_path: Path) -> None:
    state = {"log_history": [
        {"epoch": 0.1, "learning_rate": 1e-4, "loss": 2.5, "step": 10},
        {"epoch": 0.2, "learning_rate": 1e-4, "loss": float("nan"), "step": 20},
        {"epoch": 0.2, "eval_loss": float("nan"), "step": 20},
        {"epoch": 0.3, "learning_rate": 1e-4, "loss": float("inf"), "step": 30},
        {"epoch": 0.3, "step": 30, "train_loss": 1.0, "train_runtime": 5.0, "total_flos": 1.0},
    ], "logging_steps": 10}
    p = tmp_path / "trainer_state.json"
    p.write_text(json.dumps(state, indent=2))
    run = read_log(p)
    assert list(run.nan_steps["loss"]) == [20] and list(run.nan_steps["eval_loss"]) == [20]
    assert run.frame.loc[30, "loss"] == math.inf and run.frame.loc[10, "loss"] == 2.5
    assert run.interval == 10 and run.averaged


def test_evaluate_only_state(tmp_path: Path) -> None:
    p = tmp_path / "trainer_state.json"
    p.write_text(json.dumps({"log_history": [
        {"epoch": 1.0, "eval_loss": 0.61, "eval_runtime": 2.0, "step": 100},
        {"epoch": 2.0, "eval_loss": 0.55, "eval_runtime": 2.0, "step": 200},
    ]}))
    run = read_log(p)
    assert run.roles["eval_loss"] == "eval_loss" and "loss" not in run.roles
    assert list(run.steps) == [100, 200] and run.eval_frame.loc[200, "eval_loss"] == 0.55


def test_records_that_are_not_objects(tmp_path: Path) -> None:
    p = tmp_path / "trainer_state.json"
    p.write_text('{"log_history": [\n{"loss": 1.0, "step": 1},\n3,\n{"loss": 0.9, "step": 2}\n]}')
    run = read_log(p)
    assert list(run.frame["loss"]) == [1.0, 0.9]
    assert run.warnings == (f"{p}: skipped 1 log_history record(s) that are not objects (line 3)",)


@pytest.mark.parametrize(("body", "message"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a trainer_state.json (not a JSON object)"),
    (b'{"global_step": 10, "max_steps": 10}', "not a trainer_state.json (no log_history list)"),
    (b'{"global_step": 10,\n  "max_steps" 10}',
     "not a trainer_state.json (invalid JSON at line 2, column 15)"),
    (b'{"log_history": []}', "log_history is empty (no training records)"),
    (b'{"log_history": [{"step": 1, "train_runtime": 3.0, "train_loss": 1.0}]}',
     "log_history holds no train or eval records"),
    (b"   ", "empty file"),
])
def test_broken_states(tmp_path: Path, body: bytes, message: str) -> None:
    p = tmp_path / "trainer_state.json"
    p.write_bytes(body)
    with pytest.raises(LogFormatError) as exc:
        HfTrainerStateReader().read(p)
    assert str(exc.value) == f"{p}: {message}"


@pytest.mark.parametrize(("name", "message"), [
    ("hf_trainer_state_torn_first_record.json",
     "truncated or damaged at line 10, column 16, before the first complete log_history record"),
    ("hf_trainer_state_empty_history.json", "log_history is empty (no training records)"),
])
def test_invalid_corpus_files(name: str, message: str) -> None:
    p = DATA / "invalid" / name
    with pytest.raises(LogFormatError) as exc:
        read_log(p)
    assert str(exc.value) == f"{p}: {message}"


_LOSS = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=40, deadline=None)
@given(
    losses=st.lists(_LOSS, min_size=1, max_size=30),
    every=st.integers(min_value=1, max_value=50),
    eval_every=st.integers(min_value=1, max_value=10),
)
def test_random_histories_round_trip(losses: list[float], every: int, eval_every: int) -> None:
    history: list[dict[str, Any]] = []
    for i, loss in enumerate(losses, start=1):
        history.append({"epoch": i / 10, "loss": loss, "step": i * every})
        if i % eval_every == 0:
            history.append({"epoch": i / 10, "eval_loss": 1.0 + i, "step": i * every})
    history.append({"step": len(losses) * every, "train_loss": 9.0, "train_runtime": 1.0})
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "trainer_state.json"
        p.write_text(json.dumps({"log_history": history, "logging_steps": every}, indent=2))
        run = read_log(p)
    assert list(run.steps) == [i * every for i in range(1, len(losses) + 1)]
    got = run.frame["loss"].tolist()
    for g, want in zip(got, losses, strict=True):
        assert (math.isnan(g) and math.isnan(want)) or g == want
    assert list(run.nan_steps.get("loss", [])) == \
        [i * every for i, v in enumerate(losses, start=1) if math.isnan(v)]
    evals = run.eval_frame.get("eval_loss", [])
    assert list(evals) == [1.0 + i for i in range(1, len(losses) + 1) if i % eval_every == 0]
    assert run.interval == every


@settings(max_examples=150, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=400),
    st.text(alphabet='{}[]":,. \nlog_histry0123456789NaI-', max_size=200).map(str.encode),
))
def test_arbitrary_bytes_raise_only_spikelens_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "trainer_state.json"
        p.write_bytes(b'{"log_history": [' + data)
        for body in (data, b'{"log_history": [' + data):
            p.write_bytes(body)
            try:
                read_log(p, format="hf_trainer_state")
            except SpikelensError:
                pass


def test_an_eval_value_that_is_not_a_number_is_said_by_its_step(tmp_path: Path) -> None:
    # eval rows carry no source line in trainer_state.json: the warning names their steps
    hist: list[dict[str, Any]] = []
    for i in range(1, 101):
        hist.append({"step": i, "loss": 2.0 - i / 1000, "learning_rate": 1e-3, "epoch": i / 100})
        if i % 25 == 0:
            hist.append({"step": i, "eval_loss": "oops" if i == 50 else 1.9, "epoch": i / 100})
    p = tmp_path / "trainer_state.json"
    p.write_text(json.dumps({"log_history": hist, "global_step": 100}))
    run = read_log(p)
    assert run.eval_frame["eval_loss"].tolist()[0] == 1.9
    assert math.isnan(run.eval_frame["eval_loss"][50])
    assert run.warnings == (
        f"{p}: 1 value(s) of eval column 'eval_loss' are not numbers (first 'oops'), read "
        "as missing (steps 50)",
    )

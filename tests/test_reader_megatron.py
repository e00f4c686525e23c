"""Megatron-LM / Megatron-DeepSpeed / GPT-NeoX / DeepSpeed text logs: values at named steps
of the real BigScience and DeepSpeed-Chat logs, skipped-iteration flags, DeepSpeed overflow
placement, eval kept apart, restarts, torn lines, the errors for broken input, and property
tests (random frames written as Megatron lines read back equal; arbitrary bytes only ever
raise a SpikelensError)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, SAMPLES, SHARED, isnan, registered_reader
from hypothesis import given, settings
from hypothesis import strategies as st

from spikelens import LogFormatError, MissingMetricError, SpikelensError, read_log

MEG = SAMPLES / "megatron"
DATA_MEG = DATA / "megatron"
BLOOM = MEG / "bigscience_tr11-176B_first_lm_loss_spike_31214-31251.log"
TR1 = MEG / "bigscience_tr1-13B_spike_29020-29090.log"
TR8_EXP11 = MEG / "bigscience_tr8-104B_exp11_spike_11446-11448.log"
TR8_EXP1 = MEG / "bigscience_tr8-104B_exp1_glitch_7000-7220.log"
GPT2 = MEG / "bigscience_gpt2_perf_n4_fp16_lossscale_calibration_1-200.log"
DSCHAT = MEG / "deepspeed_chat_step1_sft_opt-1.3b_fp16_epochs0-4.log"
NEOX = DATA_MEG / "neox_deepspeed_resumed.log"
R24 = DATA_MEG / "r24_amp_benign_iter1-450.log"



MEGATRON_ROLES = {
    "loss": "lm loss", "lr": "learning rate", "grad_norm": "grad norm",
    "loss_scale": "loss scale", "skipped": "number of skipped iterations",
    "nan_count": "number of nan iterations", "samples": "consumed samples",
    "step_time": "elapsed time per iteration (ms)",
    "global_batch_size": "global batch size",  # issue 14: printed on every line
}


def test_bloom_rank_prefixed_grad_norm_climbs_before_the_loss_spike() -> None:
    run = read_log(BLOOM)
    assert run.format == "megatron"
    assert run.roles["loss"] == "lm loss" and run.roles["grad_norm"] == "grad norm"
    assert run.roles["tokens"] == "consumed tokens"
    assert run.roles["step_time"] == "elapsed time per iteration (s)"
    gn = run.frame["grad norm"]
    assert [gn[s] for s in range(31214, 31220)] == [0.242, 0.947, 2.39, 15.886, 145.119, 960.351]
    assert run.frame.loc[31219, "lm loss"] == pytest.approx(5.098124)
    assert run.frame.loc[31218, "lm loss"] == pytest.approx(2.345279)
    assert run.frame.loc[31214, "consumed tokens"] == 97829879808
    # the `[...]` cut is just a gap; the LR stays flat and nothing was skipped
    assert list(run.steps) == [*range(31214, 31223), 31250, 31251]
    assert run.frame["learning rate"].max() == pytest.approx(5.279e-05)
    assert run.frame["number of skipped iterations"].max() == 0
    assert run.interval == 1 and run.averaged
    assert run.warnings == () and run.restarts == ()


def test_tr1_13b_loss_scale_falls_and_constant_zero_grad_norm_is_kept() -> None:
    run = read_log(TR1)
    assert dict(run.roles) == MEGATRON_ROLES
    scale = run.frame["loss scale"]
    assert scale[29040] == 65536.0 and scale[29050] == 8192.0 and scale[29060] == 4096.0
    assert run.frame.loc[29050, "lm loss"] == pytest.approx(7.343709)
    assert run.frame.loc[29060, "lm loss"] == pytest.approx(8.715872)
    assert (run.frame["grad norm"] == 0.0).all() and len(run.frame) == 8
    assert run.interval == 10  # from the step spacing: this excerpt has no arguments dump
    assert run.warnings == ()  # the `time (ms)` lines between iterations are not data


def test_tr8_exp11_grad_norm_jumps_a_step_before_the_loss() -> None:
    run = read_log(TR8_EXP11)
    assert run.frame.loc[11446, "grad norm"] == pytest.approx(12952.562)
    assert run.frame.loc[11447, "grad norm"] == pytest.approx(262623.331)
    assert run.frame.loc[11447, "lm loss"] == pytest.approx(3.114286)
    assert run.frame.loc[11448, "lm loss"] == pytest.approx(7.712340)


def test_tr8_exp1_validation_line_goes_to_eval_not_to_the_train_loss() -> None:
    run = read_log(TR8_EXP1)
    assert run.roles["eval_loss"] == "lm loss value"
    assert run.eval_frame.loc[7000, "lm loss value"] == pytest.approx(7.1742)
    assert run.eval_frame.loc[7000, "lm loss PPL"] == pytest.approx(1305.315)
    loss = run.series("loss")
    assert loss is not None
    assert list(loss.index) == [7000, 7010, 7220]
    assert loss[7000] == pytest.approx(6.444662) and loss[7010] == pytest.approx(11.42026)
    assert "lm loss value" not in run.frame.columns


def test_gpt2_fp16_calibration_first_interval_is_skipped_with_no_loss() -> None:
    run = read_log(GPT2)
    f = run.frame
    # iteration 10: all ten iterations skipped, no `lm loss` printed -> missing, not NaN
    assert isnan(f.loc[10, "lm loss"]) and "lm loss" not in run.nan_steps
    assert f.loc[10, "number of skipped iterations"] == 10
    assert f.loc[20, "number of skipped iterations"] == 8
    assert f.loc[30, "number of skipped iterations"] == 1
    assert list(f.loc[[10, 20, 30], "loss scale"]) == [8388608.0, 32768.0, 16384.0]
    assert isnan(f.loc[10, "grad norm"]) and isnan(f.loc[20, "grad norm"])
    loss = run.series("loss")
    assert loss is not None and loss.index[0] == 20 and loss[20] == pytest.approx(12.03115)
    assert list(run.eval_frame.index) == [100, 200]
    assert run.eval_frame.loc[200, "lm loss value"] == pytest.approx(7.487306)
    assert run.interval == 10 and run.averaged


def test_iteration_without_loss_is_flagged_skipped_even_if_its_counter_says_0(
    tmp_path: Path,
) -> None:
    p = tmp_path / "train.log"
    line = (" iteration {:8d}/     100 | learning rate: 1.000E-04 |{} loss scale: {} |"
            " number of skipped iterations:   0 | number of nan iterations:   0 |\n")
    p.write_text(
        line.format(1, " lm loss: 2.500000E+00 |", "65536.0")
        + line.format(2, "", "32768.0")
        + line.format(3, " lm loss: 2.400000E+00 |", "32768.0")
    )
    run = read_log(p)
    assert list(run.frame["number of skipped iterations"]) == [0.0, 1.0, 0.0]
    assert isnan(run.frame.loc[2, "lm loss"]) and run.nan_steps == {}
    assert run.frame.loc[2, "loss scale"] == 32768.0


def test_logged_nan_and_inf_are_kept_as_evidence(tmp_path: Path) -> None:
    p = tmp_path / "train.log"
    rows = [(1, "2.5", "1.0"), (2, "nan", "inf"), (3, "NaN", "-inf"), (4, "2.4", "1.1")]
    p.write_text("".join(
        f"[default0]: iteration {s:8d}/ 10 | lm loss: {lv} | grad norm: {gv} |\n"
        for s, lv, gv in rows
    ))
    run = read_log(p)
    assert list(run.nan_steps["lm loss"]) == [2, 3]
    assert run.frame.loc[2, "grad norm"] == math.inf
    assert run.frame.loc[3, "grad norm"] == -math.inf
    assert run.nonfinite_count("lm loss") == 2 and run.nonfinite_count("grad norm") == 2
    loss = run.series("loss")
    assert loss is not None and len(loss) == 4


def test_r24_excerpt_skipped_overflow_iterations_and_log_interval_argument() -> None:
    run = read_log(R24)
    assert dict(run.roles) == {**MEGATRON_ROLES, "eval_loss": "lm loss value"}
    f = run.frame
    assert list(f.index[f["number of skipped iterations"] > 0]) == [401, 434]
    assert isnan(f.loc[401, "lm loss"]) and isnan(f.loc[401, "grad norm"])
    assert f.loc[400, "loss scale"] == 1048576.0 and f.loc[401, "loss scale"] == 524288.0
    assert f.loc[434, "loss scale"] == 262144.0
    assert f.loc[402, "lm loss"] == pytest.approx(1.365265)
    assert run.interval == 1  # `log_interval .... 1` in the arguments dump
    assert list(run.eval_frame.index) == [100, 200, 300, 400]
    assert run.eval_frame.loc[400, "lm loss value"] == pytest.approx(1.570247)


def test_deepspeed_chat_overflows_placed_by_timestamp_with_the_new_scale() -> None:
    run = read_log(DSCHAT)
    assert run.format == "megatron"
    assert dict(run.roles) == {
        "eval_loss": "ppl", "lr": "lr (group 0)", "loss_scale": "loss scale",
        "skipped": "overflow", "epoch": "epoch",
    }
    f = run.frame
    ovf = f["overflow"]
    # six start-up overflows before `step=10, skipped=6`, placed by their timestamps
    assert list(ovf.index[ovf > 0][:6]) == [1, 2, 3, 4, 5, 8]
    assert list(f.loc[[1, 2, 3, 4, 5, 8], "loss scale"]) == [
        65536.0, 32768.0, 16384.0, 8192.0, 4096.0, 2048.0]  # hysteresis first, then halving
    assert f.loc[10, "overflow"] == 0 and f.loc[10, "skipped (cumulative)"] == 6
    assert f.loc[10, "lr (group 0)"] == pytest.approx(9.649992967150629e-06)
    # routine ceiling overflows come in pairs (hysteresis, then a cut), ~100 steps apart;
    # one sits on a printed step and is folded into that `step=` row
    assert f.loc[509, "overflow"] == 1 and f.loc[509, "loss scale"] == 65536.0
    assert f.loc[510, "overflow"] == 1 and f.loc[510, "loss scale"] == 32768.0
    assert f.loc[510, "skipped (cumulative)"] == 8
    assert ovf.sum() == f["skipped (cumulative)"].max() == 34  # the 34 OVERFLOW lines
    assert run.restarts == ()
    assert run.interval == 10 and not run.averaged
    assert list(run.eval_frame.index) == [0, 460, 920, 1380, 1840]
    assert run.eval_frame.loc[460, "ppl"] == pytest.approx(2.0179834365844727)
    assert run.warnings == (
        f"{DSCHAT}: 5 perplexity line(s) carry no step; each is placed at the last step "
        "logged before it (lines 4, 105, 210, ...)",
    )


def test_deepspeed_chat_full_log_every_overflow_is_counted(shared: Path) -> None:
    path = shared / "real_logs" / "megatron_deepspeed_text" / \
        "deepspeed_chat_step1_sft_opt-1.3b_fp16.log"
    run = read_log(path)
    f = run.frame
    assert f["overflow"].sum() == 139 == f["skipped (cumulative)"].iloc[-1]
    assert (f["overflow"].dropna() <= 1).all() and run.restarts == ()
    assert len(run.eval_frame) == 17 and run.eval_frame.index[-1] == 7360


def test_neox_deepspeed_resume_torn_line_and_overflows() -> None:
    run = read_log(NEOX)
    assert run.roles["loss"] == "lm_loss" and run.roles["eval_loss"] == "lm_loss value"
    assert run.roles["skipped"] == "number of skipped iterations"  # Megatron's wins
    assert run.roles["lr"] == "learning rate"  # over DeepSpeed's every-N-steps `lr=[..]`
    f = run.frame
    assert list(f.index) == [5, 6, 10, 20, 25, 30, 40]
    # timestamps 10:00:05 and :06 with step=10 at :10, one second a step
    assert list(f.loc[[5, 6, 25], "overflow"]) == [1.0, 1.0, 1.0]
    assert list(f.loc[[5, 6, 25], "loss scale"]) == [32768.0, 16384.0, 16384.0]
    assert f.loc[10, "approx flops per GPU"] == pytest.approx(81.5e12)
    assert f.loc[20, "approx flops per GPU"] == pytest.approx(950e9)
    assert f.loc[10, "samples/sec"] == 16.0  # a field printed before `iteration`
    # the resumed job replays 30 and 40: the later values win, the first pass is a segment
    assert len(run.restarts) == 1 and run.restarts[0].replayed == (30, 40)
    assert f.loc[30, "lm_loss"] == 8.0 and run.nan_steps == {}
    assert run.segment_of_step is not None and list(run.segment_of_step) == [0] * 5 + [1, 1]
    # the resumed 40 prints no loss: skipped; the torn first-pass 40 only lent its LR
    assert isnan(f.loc[40, "lm_loss"]) and f.loc[40, "number of skipped iterations"] == 1
    assert run.eval_frame.loc[20, "lm_loss value"] == pytest.approx(9.1)
    assert run.eval_frame.loc[40, "test lm_loss value"] == pytest.approx(7.4)
    assert run.interval == 10
    assert run.warnings == (
        f"{NEOX}: 1 truncated line(s) read up to the cut (line 17)",
        f"{NEOX}: restart at line 24: steps 30-40 were logged again; the later values win",
    )


def test_torn_last_line_keeps_complete_fields_and_is_not_called_skipped(
    tmp_path: Path,
) -> None:
    p = tmp_path / "train.log"
    full = (" iteration {:8d}/     100 | learning rate: 1.000E-04 | lm loss: {} |"
            " loss scale: 1024.0 | number of skipped iterations:   0 |\n")
    p.write_text(full.format(1, "2.5") + full.format(2, "2.4")
                 + " iteration        3/     100 | learning rate: 9.000E-05 | lm loss: 2.3")
    run = read_log(p)
    assert run.frame.loc[3, "learning rate"] == pytest.approx(9e-05)
    assert isnan(run.frame.loc[3, "lm loss"])  # `2.3` may be the start of `2.31..`
    assert isnan(run.frame.loc[3, "number of skipped iterations"])
    assert run.warnings == (f"{p}: 1 truncated line(s) read up to the cut (line 3)",)


def test_non_numeric_fields_are_reported_once(tmp_path: Path) -> None:
    p = tmp_path / "train.log"
    p.write_text("".join(
        f" iteration {s:8d}/ 10 | lm loss: 2.{s} | eta: 0:0{s}:00 |\n" for s in range(1, 5)
    ))
    run = read_log(p)
    assert "eta" not in run.frame.columns
    assert run.warnings == (f"{p}: skipped 4 non-numeric value(s) of 'eta' (lines 1, 2, 3, ...)",)


def test_sniff_scores() -> None:
    reader = registered_reader("megatron")
    assert reader.sniff(BLOOM, BLOOM.read_bytes()[:65536]) == 0.95
    assert reader.sniff(DSCHAT, DSCHAT.read_bytes()[:65536]) == 0.9
    args = DATA_MEG.parent / "invalid" / "megatron_args_only.log"
    assert reader.sniff(args, args.read_bytes()) == 0.5
    assert reader.sniff(Path("x.log"), b"step:1/20 train_loss:2.0\n") == 0.0
    assert reader.sniff(Path("x.log"), b"\x00\x01\x02" * 100) == 0.0


def test_invalid_inputs_exact_messages() -> None:
    args = DATA_MEG.parent / "invalid" / "megatron_args_only.log"
    with pytest.raises(LogFormatError) as e1:
        read_log(args)
    assert str(e1.value) == (
        f"{args}: no Megatron `iteration N/ M |` lines, DeepSpeed `step=N, skipped=K` "
        "lines or OVERFLOW lines found"
    )
    no_loss = DATA_MEG.parent / "invalid" / "megatron_no_loss.log"
    with pytest.raises(MissingMetricError) as e2:
        read_log(no_loss)
    assert str(e2.value) == (
        f"{no_loss}: no loss-like metric (found: consumed samples, "
        "elapsed time per iteration (ms), global batch size)"
    )


@pytest.mark.parametrize("run_id", ["r02", "r12", "r22", "r24"])
def test_bench_megatron_runs_load_with_labelled_roles(run_id: str, shared: Path) -> None:
    label = json.loads((shared / "bench" / "labels.json").read_text())[run_id]
    run = read_log(shared / "bench" / label["file"])
    expected = {("nan_count" if k == "nan" else k): v
                for k, v in label["metrics"].items() if k != "step"}
    assert {r: run.roles.get(r) for r in expected} == expected
    assert int(run.steps[-1]) == label["last_step"] and run.restarts == ()


@pytest.mark.parametrize("name", [
    "bigscience_gpt2_perf_n4_fp16_lossscale_calibration_1-200.log",
    "bigscience_tr1-13B_spike_29020-29090.log",
    "bigscience_tr11-176B_first_lm_loss_spike_31214-31251.log",
    "bigscience_tr8-104B_exp11_spike_11446-11448.log",
    "bigscience_tr8-104B_exp1_glitch_7000-7220.log",
    "deepspeed_chat_step1_sft_opt-1.3b_fp16.log",
])
def test_every_shared_real_log_loads(name: str) -> None:
    path = SHARED / "real_logs" / "megatron_deepspeed_text" / name
    if not path.exists():
        pytest.skip("../shared is not beside this checkout")
    run = read_log(path)
    assert run.format == "megatron" and len(run.frame) > 0


# --- property tests -------------------------------------------------------------------------

KEYS = ["grad norm", "learning rate", "loss scale", "consumed samples",
        "number of nan iterations"]
PREFIXES = ["", "[default7]: ", "0: ", "[2024-05-03 08:00:00] "]
NOISE = ["time (ms)", "[...]", "NCCL INFO Channel 00/02 :    0   1", "-" * 40,
         "> building GPT2BPETokenizer tokenizer ..."]
values = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else repr(v)


@st.composite
def megatron_logs(draw: st.DrawFn) -> tuple[list[int], dict[str, list[float]], str]:
    n = draw(st.integers(1, 20))
    steps = sorted(draw(st.sets(st.integers(0, 10**12), min_size=n, max_size=n)))
    cols = ["lm loss", *draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=5))]
    data = {c: draw(st.lists(values, min_size=n, max_size=n)) for c in cols}
    prefix = draw(st.sampled_from(PREFIXES))
    lines = []
    for i, s in enumerate(steps):
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(NOISE)))
        fields = "".join(f" {c}: {_fmt(data[c][i])} |" for c in cols)
        lines.append(f"{prefix} iteration {s:8d}/ {10**13:8d} |{fields}")
    return steps, data, "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None)
@given(megatron_logs())
def test_random_frames_written_as_megatron_lines_read_back_equal(
    case: tuple[list[int], dict[str, list[float]], str],
) -> None:
    steps, data, text = case
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "train.log"
        p.write_text(text)
        run = read_log(p)
    assert run.format == "megatron"
    assert list(run.steps) == steps
    for col, vals in data.items():
        got = run.frame[col].to_numpy()
        want = np.asarray(vals)
        assert np.array_equal(got, want, equal_nan=True)
        nan_at = [s for s, v in zip(steps, vals, strict=True) if math.isnan(v)]
        assert list(run.nan_steps.get(col, [])) == nan_at


FRAGMENTS = [b"iteration 12/ 100 |", b" lm loss: ", b"2.5", b"nan", b"inf", b" |", b"\n",
             b"validation loss at iteration ", b"step=10, skipped=3, lr=[1e-3, 1e-3]",
             b"OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 4, reducing to 2",
             b"[2023-04-18 01:46:52,554] ", b"[2024-13-45 99:99:99] ", b"99999999999999999999",
             b"epoch=0/micro_step=10/global_step=10, MemAllocated=3.96GB", b"ppl: 3.2",
             b"log_interval ........ 0", b"\xff\xfe\x00", b"samples/sec: 1.0 | "]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=24), max_size=40))
def test_arbitrary_bytes_raise_only_spikelens_errors(parts: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "train.log"
        p.write_bytes(b"".join(parts))
        try:
            registered_reader("megatron").read(p)
        except SpikelensError:
            pass
        try:
            read_log(p, format="megatron")
        except SpikelensError:
            pass

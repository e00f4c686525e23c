"""Operations events (issue 14): a sustained step-time rise or TFLOPs drop is an informational
`slowdown` on `step_time`; a log that stops mid-run after an eval, a checkpoint or an error is
a `hang`, reported as "log ends mid-run at step N after <last message>". Neither changes the
verdict, and healthy real logs get neither."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from _ops_logs import megatron_log, noisy_loss
from conftest import SAMPLES

from spikelens import analyze, read_log
from spikelens.detect import detect
from spikelens.model import Config, Event


def _ops(path: Path) -> tuple[list[Event], str, tuple[str, ...]]:
    run = read_log(path)
    d = detect(run, Config())
    return [e for e in d.events if e.kind in ("slowdown", "hang")], d.verdict, d.notes


def _times(n: int, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1000.0 * np.exp(0.01 * rng.standard_normal(n))


def test_straggler_is_a_slowdown_on_step_time(tmp_path: Path) -> None:
    n = 300
    st = _times(n)
    st[200:240] *= 1.6  # one slow GPU for 40 iterations
    p = tmp_path / "slow.log"
    p.write_text("\n".join(megatron_log(range(1, n + 1), noisy_loss(n), step_time=list(st)))
                 + "\n")
    ops, verdict, _ = _ops(p)
    (ev,) = ops
    assert (ev.kind, ev.metric, ev.start_step, ev.recovered) == ("slowdown", "step_time", 201,
                                                                 True)
    assert 201 <= ev.peak_step <= 240 and 243 <= ev.end_step <= 245
    assert 1.55 < ev.size.ratio < 1.65 and ev.baseline is not None
    assert abs(ev.baseline - 1000) < 10
    assert verdict == "healthy"


def test_tflops_drop_is_a_slowdown(tmp_path: Path) -> None:
    n = 200
    tf = 150.0 * np.exp(0.005 * np.random.default_rng(4).standard_normal(n))
    tf[120:] /= 1.5  # and it never comes back: a degraded node stays in the job
    p = tmp_path / "tflops.log"
    lines = megatron_log(range(1, n + 1), noisy_loss(n), tflops=list(tf))
    # no step time printed: the TFLOPs alone carry the signal
    lines = [ln.replace(" elapsed time per iteration (ms): 1000.0 |", "") for ln in lines]
    p.write_text("\n".join(lines) + "\n")
    run = read_log(p)
    assert not run.has("step_time") and run.has("tflops")
    ops, _, _ = _ops(p)
    (ev,) = ops
    assert (ev.kind, ev.metric, ev.start_step, ev.recovered) == ("slowdown", "tflops", 121,
                                                                 False)
    assert abs(ev.size.ratio - 1.5) < 0.05 and abs((ev.baseline or 0) - 150) < 2


def test_a_slow_step_after_an_eval_is_not_a_slowdown(tmp_path: Path) -> None:
    n = 300
    st = _times(n)
    st[100::100] *= 3.0  # the iteration after each evaluation pays for it
    st[201] *= 2.0  # and a checkpoint save the one after
    p = tmp_path / "evals.log"
    p.write_text("\n".join(megatron_log(range(1, n + 1), noisy_loss(n), step_time=list(st)))
                 + "\n")
    ops, _, _ = _ops(p)
    assert ops == []


def test_healthy_real_logs_have_no_slowdown_and_bloom_no_hang() -> None:
    for p in sorted((SAMPLES / "megatron").glob("*.log")):
        ops, _, _ = _ops(p)
        assert [e for e in ops if e.kind == "slowdown"] == [], p.name
        if "gpt2_perf" not in p.name:
            assert ops == [], p.name


def test_real_excerpt_that_stops_after_an_eval_is_reported() -> None:
    # the gpt2 calibration excerpt is iterations 1-200 of a 1000-iteration run and its last
    # line is the validation at 200: as a log, it ends mid-run after an eval
    ops, verdict, notes = _ops(
        SAMPLES / "megatron" / "bigscience_gpt2_perf_n4_fp16_lossscale_calibration_1-200.log")
    (ev,) = ops
    assert (ev.kind, ev.start_step, ev.recovered) == ("hang", 200, False)
    assert math.isinf(ev.size.ratio)
    assert "log ends mid-run at step 200 of 1,000 after `validation loss at iteration 200 |" \
        in "\n".join(notes)
    assert verdict == "healthy"


def _hang_log(tmp_path: Path, tail: list[str], total: int = 1000) -> Path:
    n = 50
    lines = megatron_log([10 * (i + 1) for i in range(n)], noisy_loss(n), total=total)
    p = tmp_path / "hang.log"
    p.write_text("\n".join(lines + tail) + "\n")
    return p


def test_log_that_stops_after_a_checkpoint_is_a_hang(tmp_path: Path) -> None:
    p = _hang_log(tmp_path, [" saving checkpoint at iteration     500 to /ckpt/run"])
    ops, verdict, notes = _ops(p)
    (ev,) = ops
    assert (ev.kind, ev.metric, ev.start_step) == ("hang", "step_time", 500)
    assert ("log ends mid-run at step 500 of 1,000 after `saving checkpoint at iteration     "
            "500 to /ckpt/run`, line 51") in notes
    assert verdict == "healthy"
    # and the JSON report carries it
    rep = analyze(read_log(p))
    assert [f.event.kind for f in rep.runs[0].findings] == ["hang"]
    assert any(w.startswith("log ends mid-run at step 500") for w in rep.runs[0].warnings)


def test_log_that_stops_after_an_error_names_the_first_error(tmp_path: Path) -> None:
    p = _hang_log(tmp_path, [
        "[rank5]: [E ProcessGroupNCCL.cpp:563] Watchdog caught collective operation timeout",
        "[rank5]: RuntimeError: NCCL communicator was aborted",
    ])
    ops, _, notes = _ops(p)
    (ev,) = ops
    assert ev.kind == "hang"
    (note,) = [n for n in notes if "mid-run" in n]
    assert note == ("log ends mid-run at step 500 of 1,000 after `[E ProcessGroupNCCL.cpp:563] "
                    "Watchdog caught collective operation timeout` (rank 5), line 51")


def test_finished_runs_are_not_hangs(tmp_path: Path) -> None:
    # the run reached its last iteration and saved: the end of training
    p = _hang_log(tmp_path, [" saving checkpoint at iteration     500 to /ckpt/run"], total=500)
    assert _ops(p)[0] == []
    # an end-of-training line after the last save
    p = _hang_log(tmp_path, [" saving checkpoint at iteration     500 to /ckpt/run",
                             "[after training is done] datetime: 2024-01-01 00:00:00"])
    assert _ops(p)[0] == []
    # a log that simply ends on an iteration line: nothing to say
    p = _hang_log(tmp_path, [])
    assert _ops(p)[0] == []

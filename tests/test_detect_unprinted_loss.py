"""Megatron prints no `lm loss` on an iteration whose loss was NaN or that was skipped on
overflow. Those steps are evidence, not gaps: NaN-counted iterations and overflow storms that
collapse the loss scale are non-finite incidents; routine skips and the fp16 start-up
calibration are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spikelens import analyze, read_log


def _megatron(path: Path, n: int, skipped: set[int], nan: set[int],
              scale_of: dict[int, float]) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    scale = 65536.0
    for it in range(1, n + 1):
        scale = scale_of.get(it, scale)
        parts = [f" iteration {it:8d}/{n:8d}", "learning rate: 1.000000E-04"]
        if it not in skipped and it not in nan:
            parts.append(f"lm loss: {3.0 - it / n + 0.02 * rng.standard_normal():.6E}")
        parts += [f"loss scale: {scale:.1f}",
                  f"number of skipped iterations: {int(it in skipped):3d}",
                  f"number of nan iterations: {int(it in nan):3d}"]
        lines.append(" | ".join(parts) + " |\n")
    path.write_text("".join(lines))
    return path


def _incidents(path: Path) -> list[tuple[str, int, str]]:
    rr = analyze(read_log(path)).runs[0]
    return [(f.event.kind, f.event.start_step, f.causes[0].cause if f.causes else "-")
            for f in rr.findings if f.event.metric == "loss"]


def test_nan_iterations_without_a_printed_loss_are_nonfinite(tmp_path: Path) -> None:
    log = _megatron(tmp_path / "nan.log", 600, set(), set(range(400, 601)), {})
    rr = analyze(read_log(log)).runs[0]
    assert rr.verdict == "nonfinite"
    [f] = [f for f in rr.findings if f.event.metric == "loss"]
    assert (f.event.kind, f.event.start_step, f.event.recovered) == ("nonfinite", 400, False)


def test_overflow_storm_collapsing_the_scale_is_an_amp_incident(tmp_path: Path) -> None:
    storm = set(range(300, 330))
    scales = {it: 65536.0 / 2 ** (it - 299) for it in storm} | {330: 65536.0 / 2**30}
    log = _megatron(tmp_path / "storm.log", 600, storm, set(), scales)
    assert _incidents(log) == [("nonfinite", 300, "amp_overflow")]


def test_routine_skips_and_startup_calibration_are_not_incidents(tmp_path: Path) -> None:
    # the first 10 iterations calibrate the scale (no loss yet), then an overflow every
    # 100 steps halves it once at its ceiling and it grows back
    calib = set(range(1, 11))
    routine = {150, 250, 350, 450}
    scales = {it: 2.0**33 / 2**it for it in calib}
    for it in routine:
        scales[it], scales[it + 50] = 32768.0, 65536.0
    scales[11] = 65536.0
    log = _megatron(tmp_path / "routine.log", 600, calib | routine, set(), scales)
    assert _incidents(log) == []

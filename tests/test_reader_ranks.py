"""Ranks and messages in the readers (issue 14): rank-prefixed lines (`[rank3]:`,
`[default7]:`, srun's `3: `) give one series per rank, a torchrun `--log-dir` directory is one
run with every rank's series, and the lines that can explain an incident (NCCL, CUDA, OOM,
tracebacks, SLURM, checkpoints, evaluations) are kept with their step, rank and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _ops_logs import megatron_line, noisy_loss
from conftest import SAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from spikelens import read_log
from spikelens.cli import app
from spikelens.paths import expand_paths
from spikelens.readers import detect_format
from spikelens.readers._ranks import classify, rank_of

BLOOM = SAMPLES / "megatron" / "bigscience_tr11-176B_first_lm_loss_spike_31214-31251.log"


def _ranked_lines(prefix: str, ranks: range, n: int = 30) -> list[str]:
    loss = noisy_loss(n, 3)
    out = []
    for i in range(n):
        for r in ranks:
            out.append(megatron_line(i + 1, 1000, [("lm loss", loss[i] * (1 + 0.01 * r), ".6E"),
                                                   ("grad norm", 1.0 + r, ".3f")],
                                     prefix=prefix.format(r=r)))
    return out


def test_rank_prefixes_are_recognised() -> None:
    assert rank_of("[rank3]: iteration 1/ 10 |") == 3
    assert rank_of("[default7]: iteration 1/ 10 |") == 7
    assert rank_of("node-12 [default5]: iteration 1/ 10 |") == 5
    assert rank_of("3: iteration 1/ 10 |") == 3
    assert rank_of(" iteration 1/ 10 |") is None
    assert rank_of("time (ms)") is None


def test_rank_prefixed_megatron_log_keeps_one_series_per_rank(tmp_path: Path) -> None:
    p = tmp_path / "ranks.log"
    p.write_text("\n".join(_ranked_lines("[rank{r}]: ", range(4))) + "\n")
    run = read_log(p)
    # the main series is one rank's (the highest of those printing the most rows), not a mix
    assert run.params["reporting_rank"] == 3 and run.params["ranks"] == 4
    loss = noisy_loss(30, 3)
    assert np.allclose(run.frame["lm loss"].to_numpy(), loss * 1.03, rtol=1e-6)
    for r in range(4):
        assert np.allclose(run.frame[f"rank{r}/grad norm"].to_numpy(), 1.0 + r)
        assert np.allclose(run.frame[f"rank{r}/lm loss"].to_numpy(), loss * (1 + 0.01 * r),
                           rtol=1e-6)
    # interleaved ranks are not restarts, and per-rank columns take no role
    assert run.restarts == ()
    assert run.roles["loss"] == "lm loss" and run.roles["grad_norm"] == "grad norm"
    assert len(run.steps) == 30
    assert any("4 ranks print metrics (0, 1, 2, 3); rank 3 gives the main series" in w
               for w in run.warnings)


def test_srun_labels_are_ranks(tmp_path: Path) -> None:
    p = tmp_path / "srun.log"
    p.write_text("\n".join(_ranked_lines("{r}: ", range(2))) + "\n")
    run = read_log(p)
    assert run.params["ranks"] == 2
    assert "rank0/lm loss" in run.frame.columns and "rank1/lm loss" in run.frame.columns


def test_one_rank_prefix_changes_nothing() -> None:
    # BLOOM's excerpt is all `[default7]:`: one rank, no per-rank columns
    run = read_log(BLOOM)
    assert not [c for c in run.frame.columns if c.startswith("rank")]
    assert "reporting_rank" not in run.params
    assert run.params["global_batch_size"] == 2048 and run.params["train_iters"] == 115311
    assert run.roles["tflops"] == "TFLOPs" and run.roles["global_batch_size"] == \
        "global batch size"


ERRORS = [
    "[rank2]:[E ProcessGroupNCCL.cpp:563] [Rank 2] Watchdog caught collective operation "
    "timeout: WorkNCCL(SeqNum=1234, OpType=ALLREDUCE, Timeout(ms)=600000) ran for 600042 "
    "milliseconds before timing out.",
    "[rank1]: RuntimeError: CUDA error: an illegal memory access was encountered",
    "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "srun: error: node-017: task 5: Exited with exit code 1",
    "slurmstepd: error: *** STEP 4242.0 ON node-017 CANCELLED AT 2024-01-02T03:04:05 ***",
    "[rank3]: Traceback (most recent call last):",
]


def test_messages_are_kept_with_step_rank_and_line(tmp_path: Path) -> None:
    loss = noisy_loss(20, 1)
    lines = []
    for i in range(20):
        lines.append(megatron_line((i + 1) * 10, 1000, [("lm loss", loss[i], ".6E")]))
        if i == 9:
            lines.append(" saving checkpoint at iteration     100 to /ckpt")
            lines.append("NCCL INFO Channel 00/02 :    0   1   2   3")  # chatter: not kept
        if i == 14:
            lines += ERRORS
    p = tmp_path / "errors.log"
    p.write_text("\n".join(lines) + "\n")
    run = read_log(p)
    msgs = run.messages
    assert [m.text for m in msgs][0] == "saving checkpoint at iteration     100 to /ckpt"
    assert msgs[0].step == 100 and msgs[0].level == "info" and msgs[0].line == 11
    errs = [m for m in msgs if m.level == "error"]
    assert len(errs) == len(ERRORS)
    assert {m.step for m in errs} == {150}
    assert [m.rank for m in errs] == [2, 1, 0, None, None, 3]
    assert errs[0].text.startswith("[E ProcessGroupNCCL.cpp:563] [Rank 2] Watchdog")
    assert errs[0].line == 18
    assert not any("NCCL INFO" in m.text for m in msgs)


def test_message_kinds() -> None:
    kinds = [classify(t) for t in (
        "Watchdog caught collective operation timeout", "NCCL WARN Call to connect failed",
        "CUDA error: uncorrectable ECC error encountered", "CUDA out of memory",
        "RuntimeError: NCCL communicator was aborted", "rank 3 failed with exit code 1",
        "exitcode  : -6 (pid: 1234)", "saving checkpoint at iteration 100",
        "validation loss at iteration 100 | lm loss value: 2.0 |",
        "Process 73593 exits successfully.", "UserWarning: this is deprecated",
        "Beginning of Epoch 1/16")]
    assert kinds == [("nccl", "error"), ("nccl", "warning"), ("cuda", "error"),
                     ("oom", "error"), ("nccl", "error"), ("rank_failed", "error"),
                     ("rank_failed", "error"), ("checkpoint", "info"), ("eval", "info"),
                     ("final", "info"), ("warning", "warning"), None]


def test_text_reader_keeps_messages(tmp_path: Path) -> None:
    p = tmp_path / "nanogpt.log"
    p.write_text("iter 0: loss 4.2012, time 33.21ms\niter 1: loss 4.1, time 33.0ms\n"
                 "[rank1]: RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1191\n"
                 "iter 2: loss 4.0, time 33.0ms\n")
    run = read_log(p)
    assert run.format == "text"
    (m,) = run.messages
    assert (m.step, m.rank, m.level, m.line) == (1, 1, "error", 3)
    assert m.text == "RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1191"


def test_text_reader_keeps_one_series_per_rank(tmp_path: Path) -> None:
    p = tmp_path / "tee.log"
    p.write_text("".join(f"[rank{r}]: iter {i}: loss {2.0 + 0.1 * r + 0.01 * i:.4f}, "
                         f"time 33.0ms\n" for i in range(20) for r in range(2)))
    run = read_log(p)
    assert run.format == "text" and run.restarts == ()
    assert run.frame["loss"].tolist() == pytest.approx([2.1 + 0.01 * i for i in range(20)])
    assert run.frame["rank0/loss"].tolist() == pytest.approx([2.0 + 0.01 * i
                                                              for i in range(20)])
    assert any("2 ranks print metrics (0, 1); rank 1 gives the main series" in w
               for w in run.warnings)


def _torchrun_dir(root: Path) -> Path:
    """torchrun --log-dir layout: <root>/<run id>/attempt_<n>/<rank>/{stdout,stderr}.log."""
    loss = noisy_loss(40, 7)
    for attempt, (a, b) in enumerate(((0, 25), (20, 40))):  # attempt 1 resumes at step 21
        for r in range(2):
            d = root / "run-1" / f"attempt_{attempt}" / str(r)
            d.mkdir(parents=True)
            lines = [megatron_line(i + 1, 1000, [("lm loss", loss[i] * (1 + 0.5 * r), ".6E")])
                     for i in range(a, b)]
            # only rank 1 prints the loss every step; rank 0 every other step
            if r == 0:
                lines = lines[::2]
            (d / "stdout.log").write_text("\n".join(lines) + "\n")
            err = "" if attempt else "[E ProcessGroupNCCL.cpp:1] NCCL error: unhandled system " \
                                     "error\n"
            (d / "stderr.log").write_text(err)
    return root


def test_torchrun_log_dir_is_one_run_with_every_rank(tmp_path: Path) -> None:
    root = _torchrun_dir(tmp_path / "logs")
    assert detect_format(root) == "ranks"
    assert expand_paths([str(root)]) == [root]
    run = read_log(root)
    assert run.format == "ranks"
    assert run.params["reporting_rank"] == 1 and run.params["ranks"] == 2
    assert list(run.steps) == list(range(1, 41))
    # the second attempt replays steps 21-25: a restart, seen once per rank
    assert [(r.resumed_at, r.previous_last) for r in run.restarts] == [(21, 25)]
    loss = noisy_loss(40, 7)
    assert np.allclose(run.frame["lm loss"].to_numpy(), loss * 1.5, rtol=1e-6)
    r0 = run.frame["rank0/lm loss"].dropna()
    assert len(r0) > 10 and np.allclose(r0.to_numpy(), loss[r0.index.to_numpy() - 1],
                                        rtol=1e-6)
    errs = [m for m in run.messages if m.level == "error"]
    assert sorted(m.rank for m in errs) == [0, 1]
    assert all("NCCL error" in m.text for m in errs)


def test_inspect_shows_messages_and_ranks(tmp_path: Path) -> None:
    p = tmp_path / "ranks.log"
    lines = _ranked_lines("[rank{r}]: ", range(2))
    lines.insert(10, "[rank1]: RuntimeError: CUDA error: an illegal memory access")
    p.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(app, ["inspect", str(p), "--no-color"])
    assert res.exit_code == 0, res.output
    assert "ranks: 0, 1 (main series from rank 1; each as rank<N>/<metric>)" in res.output
    assert "messages: 1 error" in res.output
    assert "[error step 5 rank 1 line 11] RuntimeError: CUDA error: an illegal memory access" \
        in res.output
    res = CliRunner().invoke(app, ["inspect", str(p), "--format", "json"])
    assert res.exit_code == 0
    assert '"reporting_rank": 1' in res.output and '"counts": {' in res.output


def test_a_rank_log_no_reader_claims_is_skipped_with_a_warning(tmp_path: Path) -> None:
    root = _torchrun_dir(tmp_path / "logs")
    bad = root / "run-1" / "attempt_0" / "0" / "stdout.log"
    bad.write_bytes(bytes(range(256)) * 4)  # binary garbage in place of rank 0's first log
    run = read_log(root)
    (w,) = [w for w in run.warnings if "rank 0 not read" in w]
    assert w == (f"{root}: rank 0 not read: {bad} (+1 later attempt(s)): no reader recognises "
                 "this rank's log")
    assert run.params["reporting_rank"] == 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.permutations([0, 1, 2]), min_size=12, max_size=12))
def test_rank_order_within_a_step_does_not_matter(tmp_path_factory: pytest.TempPathFactory,
                                                 orders: list[list[int]]) -> None:
    # ranks print in whatever order they reach the log; the series per rank are the same
    loss = noisy_loss(12, 11)
    lines = [megatron_line(i + 1, 100, [("lm loss", loss[i] * (1 + 0.1 * r), ".6E")],
                           prefix=f"[rank{r}]: ") for i, order in enumerate(orders) for r in order]
    p = tmp_path_factory.mktemp("order") / "r.log"
    p.write_text("\n".join(lines) + "\n")
    run = read_log(p)
    assert run.restarts == () and list(run.steps) == list(range(1, 13))
    for r in range(3):
        assert np.allclose(run.frame[f"rank{r}/lm loss"].to_numpy(), loss * (1 + 0.1 * r),
                           rtol=1e-6)


def test_megatron_arguments_give_the_run_params() -> None:
    # the bench r24 excerpt in Megatron's own print format (tests/data/README.md)
    run = read_log(SAMPLES.parent / "tests" / "data" / "megatron" /
                   "r24_amp_benign_iter1-450.log")
    assert dict(run.params) == {"world_size": 1, "global_batch_size": 16, "log_interval": 1,
                                "lr": 0.002, "train_iters": 1500, "fp16": True,
                                "precision": "fp16"}
    assert run.interval == 1
    evals = [m for m in run.messages if m.text.startswith("validation loss at iteration")]
    assert [m.step for m in evals] == [100, 200, 300, 400]


def test_numbers_opening_every_line_are_not_ranks(tmp_path: Path) -> None:
    # `<n>: ...` on every line with a new n each time is a script's own numbering, not srun
    p = tmp_path / "numbered.log"
    p.write_text("".join(f"{i}: step {i} loss {2.0 + 0.01 * i:.3f}\n" for i in range(1, 30)))
    run = read_log(p)
    assert not [c for c in run.frame.columns if c.startswith("rank")]
    assert len(run.steps) == 29


def test_messages_of_a_later_attempt_keep_their_own_line(tmp_path: Path) -> None:
    root = _torchrun_dir(tmp_path / "logs")
    f = root / "run-1" / "attempt_1" / "1" / "stdout.log"
    lines = f.read_text().split("\n")
    lines.insert(2, "RuntimeError: CUDA error: an illegal memory access was encountered")
    f.write_text("\n".join(lines))
    run = read_log(root)
    (m,) = [m for m in run.messages if m.step is not None]
    # line 3 of attempt_1's file (after the rows of steps 21 and 22), not of the attempts joined
    assert (m.rank, m.step, m.line, m.level) == (1, 22, 3, "error")

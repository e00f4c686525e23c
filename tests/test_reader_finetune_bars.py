"""The console output of two fine-tuning libraries, whose tqdm bar carries the step and loss.
llama-recipes' `Training Epoch: E/N, step S/M completed (loss: X)` restarts its step every
epoch: read as (E - 1) x M + S (llama-recipes' own W&B `train/step`), an epoch boundary is
not a resume; its `eval_epoch_loss=tensor(..)` lines are eval rows. The sample is a real CPU
run of that loop (benchmarks/llama_recipes_sample.py). torchtune's recipes print
`{epoch}|{global_step}|Loss: {loss}` (constructed here in tqdm's own layout)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spikelens import read_log
from spikelens.cli import app

SAMPLE = Path(__file__).resolve().parent.parent / "sample_logs" / "text" / \
    "llama_recipes_tiny_gpt2_stdout.log"


def _bar(epoch: int, epochs: int, step: int, per_epoch: int, loss: float) -> str:
    # one step as tqdm writes it to a file: a carriage return, the description, the bar
    done = step + 1
    return (f"\rTraining Epoch: {epoch}/{epochs}, step {step}/{per_epoch} completed "
            f"(loss: {loss}): {100 * done // per_epoch:3d}%|\x1b[34m#   \x1b[0m| "
            f"{done}/{per_epoch} [00:01<00:02,  3.74it/s]")


def _log(first_epoch: int, epochs: int, per_epoch: int, losses: list[float]) -> str:
    out, k = [], 0
    for e in range(first_epoch, first_epoch + epochs):
        line = f"\rTraining Epoch: {e}:   0%|          | 0/{per_epoch} [00:00<?, ?it/s]"
        for s in range(per_epoch):
            line += _bar(e, first_epoch + epochs - 1, s, per_epoch, losses[k])
            k += 1
        out.append(line)
        out.append(f" eval_ppl=tensor({np.exp(losses[k - 1]):.4f}, device='cuda:0') "
                   f"eval_epoch_loss=tensor({losses[k - 1]:.4f}, device='cuda:0')")
        out.append(f"Epoch {e}: train_perplexity=3.1000, train_epoch_loss=1.1300, "
                   "epoch time 12.5s")
    return "\n".join(out) + "\n"


def test_the_real_sample_is_one_run_with_the_bad_batch_at_its_step() -> None:
    run = read_log(SAMPLE)
    assert run.format == "text"
    assert run.steps[0] == 0 and run.steps[-1] == 374 and len(run.steps) == 375
    assert not run.restarts and not run.warnings  # three epochs of 125 steps, no resume
    assert run.roles["loss"] == "loss" and run.roles["eval_loss"] == "eval_epoch_loss"
    assert list(run.eval_frame.index) == [124, 249, 374]
    res = CliRunner().invoke(app, ["analyze", str(SAMPLE), "--format", "json"])
    assert res.exit_code == 0, res.output
    [r] = json.loads(res.stdout)["runs"]
    spikes = [e for e in r["events"] if e["kind"] == "spike"]
    # the batch of epoch 2, step 60 was random tokens: step (2 - 1) x 125 + 60
    assert [e["peak_step"] for e in spikes] == [185]
    assert spikes[0]["causes"][0]["cause"] == "bad_batch"


@pytest.mark.parametrize("first_epoch", [1, 0])
def test_epochs_follow_each_other(tmp_path: Path, first_epoch: int) -> None:
    # llama-recipes prints the epoch from 1; older versions printed it from 0
    losses = list(np.linspace(3.0, 2.0, 12))
    p = tmp_path / "stdout.log"
    p.write_text(_log(first_epoch, 3, 4, losses))
    run = read_log(p)
    assert list(run.steps) == list(range(12))
    assert np.allclose(run.series("loss").to_numpy(), losses)
    assert not run.restarts
    assert list(run.eval_frame.index) == [3, 7, 11]


def test_an_excerpt_from_a_later_epoch_keeps_the_run_steps(tmp_path: Path) -> None:
    p = tmp_path / "stdout.log"
    p.write_text(_log(3, 2, 5, list(np.linspace(2.0, 1.5, 10))))
    assert list(read_log(p).steps) == list(range(10, 20))


def _torchtune(losses: list[float], per_epoch: int) -> str:
    # `pbar.set_description(f"{curr_epoch + 1}|{self.global_step}|Loss: {loss_to_log}")`
    # after `pbar.update(1)`, one bar per epoch closed with a newline
    out = ["INFO:torchtune.utils._logging:Running FullFinetuneRecipeSingleDevice with resolved "
           "config:", "batch_size: 2", "epochs: 3"]
    line = ""
    for i, loss in enumerate(losses, start=1):
        e, k = 1 + (i - 1) // per_epoch, 1 + (i - 1) % per_epoch
        # update() redraws first with the description of the step before (none on a
        # fresh bar), then set_description() redraws with this step's
        desc = f"{e}|{i - 1}|Loss: {losses[i - 2]}: " if k > 1 else ""
        line += f"\r{desc}{100 * (k - 1) // per_epoch}%|#   | {k - 1}/{per_epoch} [00:01<00:30]"
        line += (f"\r{e}|{i}|Loss: {loss}: {100 * k // per_epoch}%|##  | {k}/{per_epoch} "
                 f"[00:01<00:30,  3.10it/s]")
        if k == per_epoch:
            out.append(line)
            line = ""
    return "\n".join(out) + "\n"


def test_torchtune_bar_reads_the_global_step_and_finds_a_bad_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    losses = [float(1.2 + 1.5 * np.exp(-i / 40) + rng.normal(0, 0.01)) for i in range(300)]
    losses[149] *= 3.0  # global step 150
    p = tmp_path / "finetune.log"
    p.write_text(_torchtune(losses, 100))
    run = read_log(p)
    assert run.format == "text"
    assert list(run.steps) == list(range(1, 301))
    assert np.allclose(run.series("loss").to_numpy(), losses)
    assert list(run.series("epoch").to_numpy()[[0, 99, 100, 299]]) == [1, 1, 2, 3]
    res = CliRunner().invoke(app, ["analyze", str(p), "--format", "json"])
    assert res.exit_code == 0, res.output
    [r] = json.loads(res.stdout)["runs"]
    assert [(e["kind"], e["peak_step"]) for e in r["events"] if e["metric"] == "loss"] == \
        [("spike", 150)]

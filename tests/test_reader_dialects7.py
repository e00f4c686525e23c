"""Four stdout dialects read since reader round 7, each on data written in the framework's own
print format (constructed here): DeepSpeed's pipeline engine `steps: N loss: X` lines next to
its `step=N, skipped=K` lines, NeMo/Lightning progress bars (`global_step=188.0`, carriage-
return redraws), build-nanogpt's `log.txt` and pytorch/examples word_language_model. For each:
steps, roles (the loss is the train loss, evaluation apart), a 3x one-step loss jump found by
`spikelens analyze` at its step, and prose of a similar look that no reader claims."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spikelens import UnknownFormatError, read_log
from spikelens.cli import app

SPIKE = 200  # the step (or logged point) of the 3x jump


def _losses(n: int, spike: int, seed: int = 7) -> list[float]:
    """A decaying noisy loss with a 3x jump at point `spike` (0-based), back the next point."""
    rng = np.random.default_rng(seed)
    out = [3.0 + 4.0 * math.exp(-i / 60) + rng.normal(0, 0.02) for i in range(n)]
    out[spike] *= 3.0
    return out


def _peak(path: Path) -> list[tuple[str, int]]:
    """(kind, peak step) of the loss events `spikelens analyze --format json` finds."""
    res = CliRunner().invoke(app, ["analyze", str(path), "--format", "json"])
    assert res.exit_code == 0, res.output
    [run] = json.loads(res.stdout)["runs"]
    return [(e["kind"], e["peak_step"]) for e in run["events"] if e["metric"] == "loss"]


# --- DeepSpeed pipeline engine (deepspeed/runtime/pipe/engine.py, PipelineEngine.train_batch:
# f'steps: {self.global_steps} loss: {self.agg_train_loss:0.4f} iter time (s): {iter_time:0.3f}
# samples/sec: {tput:0.3f}'), after the engine's own `[Rank 0] step=N, skipped=K, lr=[..]` line

def _ds_pipe_log(path: Path, n: int = 300, extra: str = "") -> list[float]:
    losses = _losses(n, (SPIKE if n > SPIKE else n // 2) - 1)  # steps count from 1
    lines = ["training ..."]
    for i, loss in enumerate(losses, start=1):
        lr = 1e-5 * min(1.0, i / 20)
        lines.append(
            f"[2026-04-09 02:30:{i % 60:02d},424] [INFO] [logging.py:96:log_dist] [Rank 0] "
            f"step={i}, skipped=0, lr=[{lr}, {lr}], mom=[(0.9, 0.95), (0.9, 0.95)]")
        lines.append(f"steps: {i} loss: {loss:0.4f} {extra}iter time (s): {10.5:0.3f} "
                     f"samples/sec: {0.381:0.3f}")
    path.write_text("\n".join(lines) + "\n")
    return losses


def test_deepspeed_pipeline_steps_lines_are_the_train_loss(tmp_path: Path) -> None:
    log = tmp_path / "pp.log"
    losses = _ds_pipe_log(log)
    run = read_log(log)
    assert run.format == "megatron"
    assert run.roles["loss"] == "loss" and run.roles["lr"] == "lr (group 0)"
    assert list(run.frame.index) == list(range(1, 301))
    # one row per step: the `steps:` line merged with the `step=` line of that step
    assert run.frame.loc[5, "loss"] == round(losses[4], 4)
    assert run.frame.loc[5, "lr (group 0)"] == pytest.approx(2.5e-6)
    assert run.frame.loc[5, "iter time (s)"] == 10.5
    assert run.frame.loc[5, "samples/sec"] == 0.381
    assert run.restarts == () and run.warnings == () and run.interval == 1
    assert run.eval_frame is None or "loss" not in run.eval_frame
    assert _peak(log) == [("spike", SPIKE)]


def test_deepspeed_pipeline_extra_losses_are_extras(tmp_path: Path) -> None:
    # newer DeepSpeed prints `agg_additional_losses` between the loss and the time
    log = tmp_path / "pp_moe.log"
    _ds_pipe_log(log, n=30, extra="moe_loss: 0.0123 ")
    run = read_log(log)
    assert run.roles["loss"] == "loss"
    assert run.frame.loc[30, "moe_loss"] == 0.0123 and run.frame.loc[30, "samples/sec"] == 0.381


# --- NeMo / PyTorch Lightning progress bar (tqdm): the step is `global_step=188.0`

def _bar(step: int, total: int, loss: float, mean: float) -> str:
    pct = int(100 * (step + 1) / total)
    return (f"Epoch 0: {pct:3d}%|▏         | {step + 1}/{total} [05:06<4:26:30, 1.63s/it, "
            f"loss={mean:.3g}, v_num=3-16, reduced_train_loss={loss:.3f}, "
            f"global_step={float(step)}, consumed_samples={128.0 * (step + 1)}]")


def test_nemo_progress_bar_whole_float_step_and_redraws(tmp_path: Path) -> None:
    log = tmp_path / "nemo.log"
    losses = _losses(300, SPIKE)
    lines = []
    for s, loss in enumerate(losses):
        mean = float(np.mean(losses[max(0, s - 19): s + 1]))
        stale = _bar(s, 10000, loss + 1.0, mean)  # an earlier redraw of the same step
        if s % 2:  # tqdm redraws with carriage returns, in one line of the file
            lines.append(stale + "\r" + _bar(s, 10000, loss, mean))
        else:  # or a log that keeps every redraw as a line of its own
            lines += [stale, _bar(s, 10000, loss, mean)]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = read_log(log)
    assert run.format == "text"
    assert list(run.frame.index) == list(range(300))
    # the step's own loss is the train loss, not Lightning's 20-batch running mean
    assert run.roles["loss"] == "reduced_train_loss"
    assert "loss (running mean)" in run.frame and run.roles["samples"] == "consumed_samples"
    # the last redraw of a step wins, and redraws are not restarts
    assert run.frame.loc[7, "reduced_train_loss"] == round(losses[7], 3)
    assert run.frame.loc[8, "reduced_train_loss"] == round(losses[8], 3)
    assert run.frame.loc[8, "epoch"] == 0.0
    assert run.restarts == () and run.warnings == ()
    assert _peak(log) == [("spike", SPIKE)]


def test_nemo_progress_bar_val_loss_is_an_eval_row_where_it_changes(tmp_path: Path) -> None:
    # after each validation, the train bar keeps showing `val_loss=` on every step
    log = tmp_path / "nemo_val.log"
    lines = []
    for s in range(30):
        line = _bar(s, 10000, 5.0 - s / 100, 5.0)
        if s >= 10:
            line = line[:-1] + f", val_loss={4.8 if s < 20 else 4.5:.3f}]"
        lines.append(line)
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = read_log(log)
    assert run.roles["loss"] == "reduced_train_loss" and run.roles["eval_loss"] == "val_loss"
    assert list(run.frame.index) == list(range(30)) and "val_loss" not in run.frame
    assert run.frame.loc[25, "reduced_train_loss"] == 4.75
    assert run.eval_frame is not None and list(run.eval_frame.index) == [10, 20]
    assert list(run.eval_frame["val_loss"]) == [4.8, 4.5]


def test_plain_lightning_bar_steps_from_epoch_and_count(tmp_path: Path) -> None:
    # Lightning's own bar has no global_step: `Epoch 1:  40%|...| 40/100 [.., v_num=0,
    # train_loss=..]`, the epoch from 0, redrawn with carriage returns, one line an epoch
    # (`0/100` at an epoch's start shows the metrics of the step before); after each
    # epoch's validation it shows `val_loss=`
    log = tmp_path / "lightning.log"
    losses = _losses(300, SPIKE - 1)  # global step SPIKE (the count is 1-based)
    lines = []
    for e in range(3):
        line = f"Epoch {e}:   0%|          | 0/100 [00:00<?, ?it/s]"
        for b in range(1, 101):
            k = e * 100 + b
            val = f", val_loss={2.0 - e / 10:.3f}" if e else ""
            line += (f"\rEpoch {e}:  {b}%|#         | {b}/100 [00:05<00:01, 18.20it/s, "
                     f"v_num=0, train_loss={losses[k - 1]:.3f}{val}]")
        lines.append(line)
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = read_log(log)
    assert run.format == "text"
    assert list(run.frame.index) == list(range(1, 301))
    assert run.roles["loss"] == "train_loss" and run.restarts == ()
    assert run.frame.loc[101, "train_loss"] == round(losses[100], 3)
    assert run.frame.loc[101, "epoch"] == 1.0
    assert run.eval_frame is not None and list(run.eval_frame.index) == [101, 201]
    assert _peak(log) == [("spike", SPIKE)]


def test_tqdm_bar_described_epoch_e_of_n(tmp_path: Path) -> None:
    # ColossalAI's examples: `tqdm(desc=f"Epoch [{epoch + 1}/{num_epochs}]")` with a
    # `loss=` postfix; every redraw read at (E - 1) x batches + batch, not all at step E
    log = tmp_path / "colossal.log"
    losses = _losses(200, 129)  # step 130, in the second epoch
    lines = []
    for e in (1, 2):
        lines.append("".join(
            f"\rEpoch [{e}/2]: {b}%|#   | {b}/100 [00:01<00:09,  9.50it/s, "
            f"loss={losses[(e - 1) * 100 + b - 1]:.4f}]" for b in range(1, 101)))
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = read_log(log)
    assert list(run.frame.index) == list(range(1, 201)) and run.restarts == ()
    assert run.frame.loc[101, "loss"] == round(losses[100], 4)
    assert _peak(log) == [("spike", 130)]


def test_pytorch_examples_mnist_lines_step_in_samples(tmp_path: Path) -> None:
    # pytorch/examples mnist/main.py: 'Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}' every
    # 10 batches of 64, its count in samples restarting every epoch, and the test set's
    # 'Test set: Average loss: ..' after each epoch
    log = tmp_path / "mnist.log"
    losses = _losses(282, 140)
    lines, k = [], 0
    for e in (1, 2, 3):
        for b in range(0, 938, 10):
            lines.append(f"Train Epoch: {e} [{b * 64}/60000 ({100.0 * b / 938:.0f}%)]\t"
                         f"Loss: {losses[k]:.6f}")
            k += 1
        lines.append(f"\nTest set: Average loss: {0.1 / e:.4f}, Accuracy: 9{e}00/10000 "
                     f"(9{e}%)\n")
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = read_log(log)
    seen = [(e - 1) * 60000 + b * 64 for e in (1, 2, 3) for b in range(0, 938, 10)]
    assert list(run.frame.index) == seen and run.restarts == ()
    assert run.roles["loss"] == "Loss" and run.roles["eval_loss"] == "test loss"
    assert list(run.eval_frame.index) == [seen[93], seen[187], seen[281]]
    assert _peak(log) == [("spike", seen[140])]


def test_pytorch_cifar10_tutorial_lines(tmp_path: Path) -> None:
    # the CIFAR-10 tutorial: f'[{epoch + 1}, {i + 1:5d}] loss: {running_loss / 2000:.3f}';
    # the epoch's length is not printed: the largest count stands for it
    log = tmp_path / "cifar.log"
    lines = [f"[{e}, {i:5d}] loss: {2.3 - 0.1 * e - i / 100000:.3f}"
             for e in (1, 2) for i in range(2000, 12001, 2000)] + ["Finished Training"]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = read_log(log)
    assert list(run.frame.index) == [(e - 1) * 12000 + i for e in (1, 2)
                                     for i in range(2000, 12001, 2000)]
    assert run.restarts == ()


def test_epoch_and_batch_counters(tmp_path: Path) -> None:
    # `Epoch 2/3, Batch 40/500`: the batch restarts every epoch; `Epoch 2 | Step 1040/1500`
    # counts on across epochs and is the step as printed
    per_epoch = tmp_path / "per_epoch.log"
    per_epoch.write_text("".join(f"Epoch {e}/3, Batch {b}/500, Loss: {2.0 - e / 10:.4f}\n"
                                 for e in (1, 2, 3) for b in range(10, 501, 10)))
    assert list(read_log(per_epoch).frame.index) == [(e - 1) * 500 + b for e in (1, 2, 3)
                                                     for b in range(10, 501, 10)]
    run_long = tmp_path / "global.log"
    run_long.write_text("".join(f"Epoch {1 + (s - 1) // 500} | Step {s}/1500 | loss {2.0:.4f}\n"
                                for s in range(10, 1501, 10)))
    assert list(read_log(run_long).frame.index) == list(range(10, 1501, 10))


# --- build-nanogpt log/log.txt: f"{step} train {loss_accum.item():.6f}\n",
# f"{step} val {val_loss_accum.item():.4f}\n", f"{step} hella {acc_norm:.4f}\n"

def test_build_nanogpt_log_txt(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    losses = _losses(300, SPIKE)
    lines = []
    for s, loss in enumerate(losses):
        if s % 50 == 0:
            lines += [f"{s} val {loss + 0.1:.4f}", f"{s} hella {0.25 + s / 10000:.4f}"]
        lines.append(f"{s} train {loss:.6f}")
    log.write_text("\n".join(lines) + "\n")
    run = read_log(log)
    assert run.format == "text"
    assert run.roles["loss"] == "train loss" and run.roles["eval_loss"] == "val loss"
    assert list(run.frame.index) == list(range(300))
    assert list(run.frame.columns) == ["train loss"]  # val and hella are evaluation rows
    assert run.frame.loc[3, "train loss"] == round(losses[3], 6)
    assert run.eval_frame is not None
    assert list(run.eval_frame.index) == [0, 50, 100, 150, 200, 250]
    assert run.eval_frame.loc[50, "val loss"] == round(losses[50] + 0.1, 4)
    assert run.eval_frame.loc[250, "hella acc"] == 0.275
    assert run.restarts == () and run.warnings == ()
    assert _peak(log) == [("spike", SPIKE)]


# --- pytorch/examples word_language_model/main.py

def test_word_language_model_epochs_and_valid_lines(tmp_path: Path) -> None:
    log = tmp_path / "wordlm.log"
    per_epoch, interval = 109, 10  # prints at batches 10..100 of each epoch
    losses = _losses(300, SPIKE)
    lines = ["Namespace(batch_size=20, bptt=35, epochs=30, log_interval=10, lr=20)"]
    k = 0
    for epoch in range(1, 31):
        for batch in range(interval, per_epoch, interval):
            loss = losses[k]
            k += 1
            lines.append(f"| epoch {epoch:3d} | {batch:5d}/{per_epoch:5d} batches | "
                         f"lr {20.0:02.2f} | ms/batch {7.45:5.2f} | loss {loss:5.2f} | "
                         f"ppl {math.exp(loss):8.2f}")
        lines.append("-" * 89)
        valid = 4.0 + epoch / 100
        lines.append(f"| end of epoch {epoch:3d} | time: {23.24:5.2f}s | valid loss "
                     f"{valid:5.2f} | valid ppl {math.exp(valid):8.2f}")
        lines.append("-" * 89)
    lines += ["=" * 89,
              f"| End of training | test loss {4.5:5.2f} | test ppl {math.exp(4.5):8.2f}",
              "=" * 89]
    log.write_text("\n".join(lines) + "\n")
    run = read_log(log)
    assert run.format == "text"
    assert run.roles["loss"] == "loss" and run.roles["eval_loss"] == "valid loss"
    assert run.roles["lr"] == "lr"
    steps = [(e - 1) * per_epoch + b for e in range(1, 31) for b in range(10, 101, 10)]
    assert list(run.frame.index) == steps
    assert run.frame.loc[per_epoch + 20, "loss"] == round(losses[11], 2)  # epoch 2, batch 20
    assert "valid loss" not in run.frame and "ppl" in run.frame  # a train perplexity
    assert run.eval_frame is not None
    # each end-of-epoch evaluation at the last train step of its epoch
    assert run.eval_frame.loc[100, "valid loss"] == 4.01
    assert run.eval_frame.loc[per_epoch + 100, "valid loss"] == 4.02
    assert run.eval_frame.loc[29 * per_epoch + 100, "test loss"] == 4.5
    assert run.averaged and run.interval == interval and run.restarts == ()
    assert _peak(log) == [("spike", steps[SPIKE])]


# --- old fairseq's simple progress bar (fairseq/progress_bar.py, simple_progress_bar):
# '{}:  {:5d} / {:d} {}'.format(prefix, i, size, 'k=v, ...'), prefix '| epoch {:03d}';
# end of epoch '{} | {}'.format(prefix, 'k v | ...'), the validation's prefix adding
# "| valid on 'valid' subset"

# fairseq >= 0.10 prints the same lines through `logging` (fairseq_cli/train.py, log format
# '%(asctime)s | %(levelname)s | %(name)s | %(message)s'), the bar's prefix without its '|':
# `2025-10-15 11:33:32 | INFO | train_inner | epoch 001:    100 / 487 loss=4.655, ...`, the
# epoch summary under `| train |` and the validation under `| valid |`
FAIRSEQ_LOGGING = {"": ("", "", ""),
                   "logging": ("2025-10-15 11:33:32 | INFO | train_inner | ",
                               "2025-10-15 11:33:44 | INFO | train | ",
                               "2025-10-15 11:33:44 | INFO | valid | ")}


@pytest.mark.parametrize("style", sorted(FAIRSEQ_LOGGING))
def test_old_fairseq_progress_lines(tmp_path: Path, style: str) -> None:
    inner, train, valid = FAIRSEQ_LOGGING[style]
    log = tmp_path / "fairseq.log"
    size, interval = 1102, 100  # 11 prints an epoch
    losses = _losses(308, SPIKE)
    lines, k, updates = [], 0, 0
    for epoch in range(1, 29):
        for i in range(interval, size, interval):
            stats = {"loss": f"{losses[k]:.3f}", "nll_loss": f"{losses[k] - 0.1:.3f}",
                     "ppl": f"{2 ** losses[k]:.2f}", "wps": "15230", "num_updates":
                     str(updates + i), "lr": "0.0005", "gnorm": "1.532", "oom": "0.000"}
            k += 1
            postfix = ", ".join(key + "=" + v.strip() for key, v in stats.items())
            bar = f"epoch {epoch:03d}:  {i:5d} / {size:d} {postfix}"
            lines.append(inner + bar if inner else "| " + bar)
        updates += size
        lines.append(f"{train or '| '}epoch {epoch:03d} | loss 9.999 | nll_loss 9.9 | "
                     f"ppl 1000.0 | num_updates {updates} | lr 0.0005")
        lines.append(f"{valid or '| '}epoch {epoch:03d} | valid on 'valid' subset | loss "
                     f"{4 + epoch / 100} | nll_loss 3.9 | ppl 16.5 | num_updates {updates}")
    log.write_text("\n".join(lines) + "\n")
    run = read_log(log)
    assert run.format == "text"
    # since 0.10 each print is the mean over the log interval (the meters restart); before,
    # over the epoch so far, which no interval describes
    assert run.averaged is (style == "logging")
    assert run.roles["loss"] == "loss" and run.roles["eval_loss"] == "valid loss"
    assert run.roles["grad_norm"] == "gnorm" and "num_updates" not in run.frame
    steps = [(e - 1) * size + i for e in range(1, 29) for i in range(interval, size, interval)]
    assert list(run.frame.index) == steps
    assert run.frame.loc[size + 100, "loss"] == round(losses[11], 3)
    assert 9.999 not in set(run.frame["loss"])  # the epoch means are not a step's loss
    assert run.eval_frame is not None and run.eval_frame.loc[size, "valid loss"] == 4.01
    assert run.warnings == (
        f"{log}: skipped 28 fairseq end-of-epoch summary line(s) (means over the epoch, not "
        "one step's values) (lines 12, 25, 38, ...)",)
    assert _peak(log) == [("spike", steps[SPIKE])]


# --- look-alikes that are not logs

@pytest.mark.parametrize("text", [
    # number-word-number lines among prose are not a build-nanogpt log.txt
    "Shopping list for the week\n2 apples 0.5\nWe need milk and bread too.\n3 train 1.5\n"
    "The train leaves at 9 and the bus at 10.\nCall Anna about the 2 tickets.\n",
    "12 apples 3.5\n4 pears 1.25\n7 plums 0.75\n",
    # a recipe's step with a whole float is not a step (only `step=188.0` is)
    "The recipe: step 3.0 of the method, add 2 cups of flour and 1.5 cups of water.\n",
    "We set step=2.5 and global_step=3.5 with loss=1.0 in the notes.\n",
    # a markdown table about epochs is not word_language_model output
    "Our notes: | epoch 1 | 200/ 300 laps | the loss 2.5 was fine |\n",
    "| end of the story | it rained 3 days |\n",
    "| epoch 1:  5 / 10 of us agreed, num_updates were late\n",
    # `steps: N loss:` in prose, without a number for the loss
    "It took 12 steps: 1 loss: none of them mattered.\n",
])
def test_prose_with_numbers_is_not_claimed(tmp_path: Path, text: str) -> None:
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises(UnknownFormatError, match="unknown log format"):
        read_log(path)


@pytest.mark.parametrize("make", [
    lambda p: p.write_text("step 1: loss 2.0\nstep 2: loss 2.1\n0 train 3.0\n"),
])
def test_a_stray_nanogpt_line_in_another_log_is_not_read(
        tmp_path: Path, make: Callable[[Path], None]) -> None:
    path = tmp_path / "mixed.log"
    make(path)
    run = read_log(path)
    assert list(run.frame.index) == [1, 2] and list(run.frame.columns) == ["loss"]


# --- LitGPT's pretrain/finetune prints (lit-gpt: `iter {i} step {s}: loss ..`; LitGPT since
# 0.4: `Epoch {e} | iter {i} step {s} | loss train: .., val: n/a | iter time: .. ms`): with
# gradient accumulation `iter` counts micro-batches and `step` optimizer steps, which name
# the checkpoints (`step-00000100`), so the run's step is `step` and `iter` an extra column

@pytest.mark.parametrize("style", ["lit-gpt", "litgpt"])
def test_litgpt_lines_read_on_the_optimizer_step(tmp_path: Path, style: str) -> None:
    log = tmp_path / "pretrain.log"
    losses = _losses(300, SPIKE)
    accum = 4
    lines = []
    for k, loss in enumerate(losses):
        it, st = (k + 1) * accum, k + 1
        if style == "lit-gpt":
            lines.append(f"iter {it} step {st}: loss {loss:.4f}, iter time: 120.00ms "
                         f"(optimizer.step)")
        else:
            lines.append(f"Epoch 1 | iter {it} step {st} | loss train: {loss:.3f}, val: n/a | "
                         f"iter time: 120.00 ms (step) remaining time: 0:10:00")
    log.write_text("\n".join(lines) + "\n")
    run = read_log(log)
    assert run.format == "text"
    assert list(run.frame.index) == list(range(1, 301))
    assert "iter" in run.frame and run.frame.loc[7, "iter"] == 7 * accum
    assert _peak(log) == [("spike", SPIKE + 1)]

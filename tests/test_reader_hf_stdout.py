"""HuggingFace Trainer stdout (`hf_stdout`): the printed log dicts, with their steps taken
from a step key, from the epoch scaled by TrainOutput's global_step, or from the order
written, and a warning saying which; eval dicts apart, the summary dropped, one run per
`train()` call; ms-swift's quoted values."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from spikelens import SpikelensError, read_log, read_runs
from spikelens.cli import app
from spikelens.readers import detect_format

runner = CliRunner()


def _trainer_stdout(path: Path, steps: int = 4000, every: int = 10, spike: int | None = 2600,
                    train_output: bool = True, epochs: int = 4) -> Path:
    """What `trainer.train()` prints: tqdm bars, a dict every `every` steps with the epoch to
    2 decimals, an eval dict per epoch, the summary dict and TrainOutput."""
    rng = np.random.default_rng(5)
    per_epoch = steps / epochs
    lines = ["***** Running training *****", f"  Num Epochs = {epochs}",
             f"  Total optimization steps = {steps}"]
    for s in range(every, steps + 1, every):
        loss = 2.0 + 3.0 * math.exp(-s / 200) + 0.02 * rng.standard_normal()
        if s == spike:
            loss *= 2.5
        bar = f"{100 * s // steps:3d}%|####      | {s}/{steps} [00:{s % 60:02d}<00:10, 9.8it/s]"
        lines.append(f"{bar}{{'loss': {loss:.4f}, 'grad_norm': {1 + rng.random():.4f}, "
                     f"'learning_rate': {5e-5 * (1 - s / steps):.4e}, "
                     f"'epoch': {round(s / per_epoch, 2)}}}")
        if s * epochs // steps > (s - every) * epochs // steps:  # an epoch ended
            lines.append(f"{{'eval_loss': {2.1 + 3 * math.exp(-s / 200):.4f}, "
                         f"'eval_runtime': 3.1, 'epoch': {s * epochs // steps:.1f}}}")
    lines.append(f"{{'train_runtime': 123.4, 'train_samples_per_second': 64.8, "
                 f"'train_steps_per_second': 8.1, 'train_loss': 2.7, 'epoch': {epochs:.1f}}}")
    if train_output:
        lines.append(f"TrainOutput(global_step={steps}, training_loss=2.7, metrics="
                     "{'train_runtime': 123.4, 'train_loss': 2.7, 'epoch': 4.0})")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_steps_from_trainoutput_and_the_epochs(tmp_path: Path) -> None:
    # 4000 steps in 3 epochs: 1333.3 steps per epoch, so an epoch printed to 2 decimals only
    # places a log to within 7 steps (0.01 x 1333 = 13 for the true 10); 400 logs over 4000
    # steps say logging_steps is 10, and every printed epoch agrees with 10, 20, 30, ...
    path = _trainer_stdout(tmp_path / "train.log", epochs=3)
    assert detect_format(path) == "hf_stdout"
    run = read_log(path)
    assert run.steps.tolist() == list(range(10, 4001, 10))
    assert run.roles["loss"] == "loss" and run.roles["lr"] == "learning_rate"
    assert run.roles["grad_norm"] == "grad_norm" and run.averaged
    assert "train_loss" not in run.frame.columns  # the whole-run mean never enters
    assert run.eval_frame.index.tolist() == [1333, 2667, 4000]
    assert run.warnings == (
        f"{path}: the Trainer's printed logs hold no step: each log's step is its rank x 10 "
        "steps (400 logs over TrainOutput's global_step 4000), which every printed epoch "
        "confirms",)
    res = runner.invoke(app, ["analyze", str(path)])
    assert res.exit_code == 0 and "spike at step 2600" in res.output, res.output


def test_logs_off_the_grid_take_the_scaled_epoch(tmp_path: Path) -> None:
    # a first-step log (logging_first_step) puts the logs off the i x logging_steps grid:
    # the steps are the epochs scaled, as exact as they were printed
    path = _trainer_stdout(tmp_path / "train.log")
    text = path.read_text().replace("{'loss'", "{'loss': 5.1, 'epoch': 0.0}\n{'loss'", 1)
    path.write_text(text)
    run = read_log(path)
    assert run.steps.tolist()[:4] == [1, 10, 20, 30] and run.steps[-1] == 4000
    assert run.warnings == (
        f"{path}: the Trainer's printed logs hold no step: each log's step is the epoch x "
        "1000 steps per epoch (TrainOutput's global_step 4000 over 4 epochs), as exact as "
        "the printed epoch",)


def test_without_trainoutput_the_logs_are_numbered_in_order(tmp_path: Path) -> None:
    path = _trainer_stdout(tmp_path / "train.log", train_output=False, spike=None)
    run = read_log(path)
    assert run.steps.tolist() == list(range(1, 401))
    assert run.eval_frame.index.tolist() == [100, 200, 300, 400]  # after the 100th dict
    assert run.warnings == (
        f"{path}: the Trainer's printed logs hold no step and no TrainOutput(global_step=...) "
        "line to scale their epochs: the 400 train logs are numbered 1..400 in the order "
        "written (one per logging_steps)",)


def test_ms_swift_quoted_values_state_their_step(tmp_path: Path) -> None:
    lines = []
    for s in range(1, 61):
        gn = 199.0 if s == 40 else 5.0 + 0.1 * (s % 3)
        lines.append(f"Train:  52%|#####     | {s}/2353 [38:22<40:00,  2.12s/it]" + " " * 20
                     + f"{{'loss': '{0.9 + 0.01 * (s % 4):.4g}', 'grad_norm': '{gn:.4g}', "
                     f"'learning_rate': '5.52e-06', 'epoch': '{s / 9000:.4f}', "
                     f"'global_step/max_steps': '{s}/2353', 'elapsed_time': '38m 24s', "
                     f"'tokens_this_step': 9489, 'memory(GiB)': '76.61'}}")
    path = tmp_path / "stdout.log"
    path.write_text("\n".join(lines) + "\n")
    run = read_log(path)
    assert run.format == "hf_stdout" and run.warnings == ()
    assert run.steps.tolist() == list(range(1, 61))
    assert run.frame["grad_norm"][40] == 199.0 and run.roles["grad_norm"] == "grad_norm"
    assert "elapsed_time" not in run.frame.columns  # text, not a metric
    assert "global_step/max_steps" not in run.frame.columns


def test_each_train_call_is_its_own_run(tmp_path: Path) -> None:
    a = _trainer_stdout(tmp_path / "a.log", spike=None).read_text()
    b = _trainer_stdout(tmp_path / "b.log", steps=400, every=20, spike=None).read_text()
    path = tmp_path / "two.log"
    path.write_text(a + "Now fine-tuning the classifier\n" + b)
    runs = read_runs(path)
    assert [r.name for r in runs] == ["train() call 1", "train() call 2"]
    assert runs[0].steps[-1] == 4000 and runs[1].steps.tolist() == list(range(20, 401, 20))


def test_one_dict_in_a_text_log_does_not_claim_it(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    path.write_text("config: {'loss': 'ce', 'lr': 0.1}\n"
                    + "".join(f"step {s}: loss {3 - s / 100:.3f}\n" for s in range(50)))
    assert detect_format(path) == "text"


_PIECES = ["{'loss': ", "'epoch': ", "'eval_loss': ", "'global_step/max_steps': '",
           "{'train_runtime': 1.0, 'epoch': 3.0}", "TrainOutput(global_step=", "1.5", "'nan'",
           "'x'", "}", ", ", "\n", "/", "12", "-3e-2", "'", "{", "inf", "1e400", "99999999999"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=60))
def test_any_text_gives_a_run_or_a_one_line_error(pieces: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "stdout.log"
        path.write_text("".join(pieces))
        try:
            runs = read_runs(path, format="hf_stdout")
        except SpikelensError as exc:
            assert "\n" not in str(exc)
        else:
            assert all(len(r.steps) for r in runs)


def test_absurd_epochs_fall_back_to_the_order_written(tmp_path: Path) -> None:
    # a summary epoch of 1e-300 would scale the epochs past any step a float holds; an eval
    # dict's epoch of 1e300 likewise: no overflow, the order written instead
    p = tmp_path / "stdout.log"
    p.write_text("{'loss': 1.0, 'epoch': 0.5}\n{'loss': 2.0, 'epoch': 1.0}\n"
                 "{'train_runtime': 1.0, 'epoch': 1e-300}\n"
                 "TrainOutput(global_step=999999999999999, training_loss=1.5)\n")
    assert read_log(p).steps.tolist() == [1, 2]
    q = tmp_path / "stdout2.log"
    q.write_text("{'loss': 1.0, 'epoch': 0.5}\n{'loss': 2.0, 'epoch': 1.0}\n"
                 "{'eval_loss': 1.0, 'epoch': 1e300}\n{'train_runtime': 1.0, 'epoch': 1.0}\n"
                 "TrainOutput(global_step=10, training_loss=1.5)\n")
    run = read_log(q)
    assert run.steps.tolist() == [5, 10] and run.eval_frame.index.tolist() == [10]

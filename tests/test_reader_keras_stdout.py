"""Keras `model.fit` stdout, written here in Keras 2's and Keras 3's layouts: `Epoch E/N`,
then the epoch's progress line with ` - loss: .. - val_loss: ..`. A row per epoch (the step is
the epoch, as for Keras's CSVLogger file), the val_ values an eval row at the same epoch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spikelens import read_log
from spikelens.cli import app

BARS = {
    "keras2": "100/100 [==============================] - 2s 19ms/step - loss: {l:.4f} - "
              "accuracy: 0.8100 - val_loss: {v:.4f} - val_accuracy: 0.7900",
    "keras3": "100/100 ━━━━━━━━━━━━━━━━━━━━ 2s 19ms/step - accuracy: 0.8100 - loss: {l:.4f} - "
              "val_accuracy: 0.7900 - val_loss: {v:.4f}",
}


def _fit(layout: str, losses: list[float]) -> str:
    out = ["Model: \"sequential\"", "Total params: 101,770 (397.54 KB)"]
    for e, loss in enumerate(losses, start=1):
        out.append(f"Epoch {e}/{len(losses)}")
        out.append(BARS[layout].format(l=loss, v=loss + 0.05))
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("layout", sorted(BARS))
def test_one_row_per_epoch_and_val_apart(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(4)
    losses = [0.3 + 1.5 * math.exp(-e / 8) + rng.normal(0, 0.003) for e in range(60)]
    losses[39] *= 3.0  # epoch 40: a corrupt shard in the epoch
    p = tmp_path / "fit.log"
    p.write_text(_fit(layout, losses))
    run = read_log(p)
    assert run.format == "text"
    assert list(run.steps) == list(range(1, 61))
    assert run.roles["loss"] == "loss" and run.roles["eval_loss"] == "val_loss"
    assert np.allclose(run.series("loss").to_numpy(), np.round(losses, 4))
    assert list(run.eval_frame.index) == list(range(1, 61))
    res = CliRunner().invoke(app, ["analyze", str(p), "--format", "json"])
    assert res.exit_code == 0, res.output
    [r] = json.loads(res.stdout)["runs"]
    assert [(e["kind"], e["peak_step"]) for e in r["events"] if e["metric"] == "loss"] == \
        [("spike", 40)]


def test_a_progress_line_without_an_epoch_line_is_not_read(tmp_path: Path) -> None:
    # the same line in another log (no `Epoch E/N` before it) is not a Keras row
    p = tmp_path / "notes.log"
    p.write_text("step 1 loss 2.0\nstep 2 loss 1.9\n"
                 + BARS["keras2"].format(l=0.5, v=0.6) + "\nstep 3 loss 1.8\n")
    run = read_log(p)
    assert list(run.steps) == [1, 2, 3]
    assert run.eval_frame.empty

"""Composer / llm-foundry console output, written here in `ConsoleLogger.log_to_console`'s
layout: `[batch=N/M]:` records of `\\t Train name: value` lines, eval records, the
`[epoch=E][batch=b/B]:` and `[token=N/M]:` headers, an srun `0: ` prefix, a torn last line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spikelens import read_log
from spikelens.cli import app
from spikelens.readers import detect_format

SAMPLE = Path(__file__).resolve().parent.parent / "sample_logs" / "composer" / \
    "llm_foundry_console_constructed.log"
B, T = 8, 1024  # samples and tokens per batch


def _losses(n: int, bad: int | None = None) -> list[float]:
    rng = np.random.default_rng(5)
    out = [float(2.5 + 6 * math.exp(-i / 30) + rng.normal(0, 0.02)) for i in range(1, n + 1)]
    if bad is not None:
        out[bad - 1] *= 3.0
    return out


def _log(losses: list[float], header: str = "batch", prefix: str = "",
         per_epoch: int = 50, evals: tuple[int, ...] = ()) -> str:
    out = [f"{prefix}******************************", f"{prefix}Config:",
           f"{prefix}num_gpus_per_node: 1"]
    for n, loss in enumerate(losses, start=1):
        if header == "batch":
            out.append(f"{prefix}[batch={n}/{len(losses)}]:")
        elif header == "epoch":
            e, b = 1 + (n - 1) // per_epoch, 1 + (n - 1) % per_epoch
            out.append(f"{prefix}[epoch={e}][batch={b}/{per_epoch}]:")
        else:
            out.append(f"{prefix}[token={n * B * T}/{len(losses) * B * T}]:")
        for k, v in [("time/batch", str(n - 1)), ("time/sample", str((n - 1) * B)),
                     ("time/token", str((n - 1) * B * T)), ("loss/train/total", f"{loss:.4f}"),
                     ("metrics/train/LanguageCrossEntropy", f"{loss:.4f}"),
                     ("lr-DecoupledAdamW/group0", "0.0006"),
                     ("l2_norm/grad/global", "0.5000"),
                     ("expert_selection/ffn_layer",
                      "<wandb.sdk.data_types.image.Image object at 0x711e4ce7f800>")]:
            out.append(f"{prefix}\t Train {k}: {v}")
        if n in evals:
            out.append(f"{prefix}[Eval batch=1/4] Eval on eval data")
            out.append(f"{prefix}[Eval batch=4/4] Eval on eval data:")
            out.append(f"{prefix}\t Eval metrics/eval/LanguageCrossEntropy: {loss + 0.1:.4f}")
    return "\n".join(out) + "\n"


def test_records_read_at_their_batch_with_roles_and_evals(tmp_path: Path) -> None:
    losses = _losses(120)
    p = tmp_path / "train.log"
    p.write_text(_log(losses, evals=(60, 120)))
    assert detect_format(p) == "composer"
    run = read_log(p)
    assert list(run.steps) == list(range(1, 121))
    assert run.roles["loss"] == "loss/train/total"
    assert run.roles["lr"] == "lr-DecoupledAdamW/group0"
    assert run.roles["grad_norm"] == "grad_norm"  # Composer's l2_norm/grad/global
    assert run.roles["eval_loss"] == "metrics/eval/LanguageCrossEntropy"
    assert np.allclose(run.series("loss").to_numpy(), np.round(losses, 4))
    assert list(run.eval_frame.index) == [60, 120]
    # the counters count what was consumed before the batch; samples and tokens count it too
    assert run.series("samples").to_numpy()[[0, 59]].tolist() == [B, 60 * B]
    assert run.series("tokens").to_numpy()[-1] == 120 * B * T
    assert "expert_selection/ffn_layer" not in run.frame.columns  # an image, not a number


@pytest.mark.parametrize("header", ["epoch", "token"])
def test_epoch_and_token_headers_read_at_the_global_batch(tmp_path: Path, header: str) -> None:
    p = tmp_path / "train.log"
    p.write_text(_log(_losses(120), header=header, per_epoch=50))
    assert list(read_log(p).steps) == list(range(1, 121))


def test_a_bad_batch_is_found_with_the_tokens_it_read(tmp_path: Path) -> None:
    p = tmp_path / "train.log"
    p.write_text(_log(_losses(200, bad=150), prefix="0: "))  # srun --label
    res = CliRunner().invoke(app, ["analyze", str(p), "--format", "json"])
    assert res.exit_code == 0, res.output
    [r] = json.loads(res.stdout)["runs"]
    [ev] = [e for e in r["events"] if e["metric"] == "loss"]
    assert (ev["kind"], ev["peak_step"]) == ("spike", 150)
    top = ev["causes"][0]
    assert top["cause"] == "bad_batch"
    assert f"consumed tokens {149 * B * T:,}-{150 * B * T:,}" in top["summary"]


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path: Path) -> None:
    p = tmp_path / "train.log"
    text = _log(_losses(30))
    torn = text[: text.rindex("\t Train l2_norm") + len("\t Train l2_norm/gr")]
    p.write_text(torn)
    run = read_log(p)
    assert len(run.steps) == 30
    assert run.series("grad_norm").notna().sum() == 29  # the torn record lost only that line
    assert f"{p}: the last record is torn at the end of the file: line " \
        f"{torn.count(chr(10)) + 1} dropped (no final newline)" in run.warnings


def test_the_sample_is_read_and_its_bad_batch_found() -> None:
    res = CliRunner().invoke(app, ["analyze", str(SAMPLE), "--format", "json"])
    assert res.exit_code == 0, res.output
    [r] = json.loads(res.stdout)["runs"]
    assert r["format"] == "composer"
    assert [(e["kind"], e["peak_step"]) for e in r["events"] if e["metric"] == "loss"] == \
        [("spike", 120)]


def test_olmo_and_megatron_logs_are_not_claimed() -> None:
    data = Path(__file__).resolve().parent.parent / "sample_logs"
    assert detect_format(data / "olmo" / "olmo_train_stdout_constructed.log") == "olmo"
    assert detect_format(
        data / "megatron" / "bigscience_tr11-176B_first_lm_loss_spike_31214-31251.log") \
        == "megatron"

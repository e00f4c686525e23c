"""OLMo / OLMo-core trainer stdout (`olmo`): `[step=N/M]` headers over indented `name=value`
lines, thousands separators, eval blocks kept apart from the train loss, a torn last block,
and the sniff leaving other text logs alone. The data under tests/data/olmo/ is constructed
in the trainers' exact print formats (see its SOURCES.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from spikelens import read_log
from spikelens.cli import app
from spikelens.readers import detect_format

runner = CliRunner()
DATA = Path(__file__).parent / "data" / "olmo"


def _olmo_float(v: float) -> str:
    """OLMo's `format_float` (olmo/train.py): how every value reaches the console."""
    if v < 0.0001:
        return str(v)
    if v > 1000:
        return f"{int(v):,d}"
    if v > 100:
        return f"{v:.1f}"
    if v > 10:
        return f"{v:.2f}"
    if v > 1:
        return f"{v:.3f}"
    return f"{v:.4f}"


def _olmo_log(path: Path, steps: int, spike: int | None = None) -> Path:
    rng = np.random.default_rng(3)
    lines = []
    for s in range(1, steps + 1):
        loss = 3.0 + 6.0 * math.exp(-s / 40) + 0.02 * rng.standard_normal()
        if s == spike:
            loss *= 3
        lines.append(f"[2024-04-17 09:42:26] INFO     [olmo.train:816, rank=0] "
                     f"[step={s}/739328]")
        lines.append(f"    train/CrossEntropyLoss={_olmo_float(loss)}")
        lines.append(f"    train/Perplexity={_olmo_float(math.exp(loss))}")
        lines.append(f"    optim/total_grad_norm={_olmo_float(0.5 + 0.05 * rng.random())}")
        lines.append(f"    throughput/total_tokens={_olmo_float(s * 4194304)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_olmo_blocks_with_thousands_separators() -> None:
    path = DATA / "olmo_train_stdout.log"
    assert detect_format(path) == "olmo"
    run = read_log(path)
    assert run.format == "olmo"
    assert run.steps.tolist() == list(range(1, 21))
    assert run.roles["loss"] == "train/CrossEntropyLoss"
    assert run.roles["grad_norm"] == "optim/total_grad_norm"
    assert run.roles["tokens"] == "throughput/total_tokens"
    f = run.frame
    assert f.loc[1, "train/CrossEntropyLoss"] == 11.25
    assert f.loc[1, "train/Perplexity"] == 76879  # printed `76,879`
    assert f.loc[20, "throughput/total_tokens"] == 20 * 4194304  # `83,886,080`
    assert f.loc[1, "System/Peak GPU Memory (MB)"] == 43309
    assert math.isnan(f.loc[3, "System/Peak GPU Memory (MB)"])  # logged at 1, 2, 10, 20
    # the "Pre-train system metrics" record has no step: its 31,207 is nowhere
    assert (f["System/Peak GPU Memory (MB)"] != 31207).all()
    assert run.warnings == ()


def test_olmo_eval_blocks_go_to_the_eval_table() -> None:
    run = read_log(DATA / "olmo_train_stdout.log")
    assert run.eval_frame is not None
    assert run.eval_frame.index.tolist() == [10, 20]  # the step each eval ran after
    assert run.eval_frame.loc[10, "eval/v3-small-c4_en-validation/CrossEntropyLoss"] == 5.812
    assert not any(c.startswith("eval/") for c in run.frame.columns)
    assert run.roles["loss"] == "train/CrossEntropyLoss"
    assert run.roles["eval_loss"].startswith("eval/v3-small-c4_en-validation/")
    # the warning and checkpoint lines between blocks are kept as messages, at their step
    kept = [(m.level, m.step, m.line) for m in run.messages]
    assert kept == [("warning", None, 3), ("info", 10, 85), ("info", 10, 86),
                    ("info", 20, 174), ("info", 20, 175)]


def test_olmo_core_blocks() -> None:
    path = DATA / "olmo_core_stdout.log"
    assert detect_format(path) == "olmo"
    run = read_log(path)
    # metrics at step 1 and every 2nd step; the bare progress markers (3, 5, ...) add nothing
    assert run.steps.tolist() == [1, 2, 4, 6, 8, 10, 12]
    assert run.roles["loss"] == "train/CE loss"
    assert run.roles["lr"] == "optim/LR (group 0)"
    assert run.roles["grad_norm"] == "optim/total grad norm"
    assert run.roles["tokens"] == "throughput/total tokens"
    f = run.frame
    assert f.loc[1, "train/CE loss"] == 10.54
    assert f.loc[1, "optim/LR (group 0)"] == 4.00e-05  # OLMo-core writes `4.00E-05`
    assert f.loc[1, "train/PPL"] == 37797
    assert f.loc[1, "gpu_memory/GPU active mem (%)"] == 64.90
    assert f.loc[2, "throughput/device/TPS"] == 24312
    # `Finished lm evals ... Metrics:` keys get the eval/lm/ prefix their W&B keys have; the
    # `[eval=lm,step=5/10]` progress lines are not train steps
    assert run.eval_frame is not None
    assert run.eval_frame.index.tolist() == [6]
    assert run.eval_frame.loc[6, "eval/lm/c4_en-validation/CE loss"] == 8.356
    assert [(m.level, m.step, m.line) for m in run.messages] == [("warning", 9, 72)]


def test_olmo_core_header_with_a_space_and_eval_keys_inside_a_train_block(
        tmp_path: Path) -> None:
    path = tmp_path / "core.log"
    path.write_text(
        "[2025-01-08 10:00:03] INFO     [olmo_core.train.callbacks.console_logger:85, rank=0] "
        "[step=10/100, epoch=1]\n"
        "    train/CE loss=10.54\n"
        "    eval/lm/c4_en-validation/CE loss=10.91\n"
        "    optim/total grad norm=0.7311\n"
        "[2025-01-08 10:00:06] INFO     [olmo_core.train.callbacks.console_logger:85, rank=0] "
        "[step=20/???,epoch=1,eta=1d2h3m]\n"
        "    train/CE loss=9.120\n"
        "    optim/total grad norm=0.6104\n")
    assert detect_format(path) == "olmo"
    run = read_log(path)
    assert run.steps.tolist() == [10, 20]
    assert run.frame["train/CE loss"].tolist() == [10.54, 9.12]
    assert run.eval_frame is not None and run.eval_frame.index.tolist() == [10]
    assert run.roles["eval_loss"] == "eval/lm/c4_en-validation/CE loss"


def test_olmo_core_one_line_form(tmp_path: Path) -> None:
    # ConsoleLoggerCallback(use_tqdm=True) without a terminal: one line per step
    path = tmp_path / "tqdm.log"
    path.write_text("".join(
        f"2025-01-08 10:00:0{s}.000\thost:0\tolmo_core.train.callbacks.console_logger:99\tINFO\t"
        f"[step={s}/100,epoch=1,eta=1h2m] epoch=1 loss={10 - s:.3f} ppl={math.exp(10 - s):,.0f}"
        f" lr=4.00E-04 mem=51.37GiB tps=24,312 mfu=38.20% grad=0.{s}000\n" for s in (1, 2, 3)))
    assert detect_format(path) == "olmo"
    run = read_log(path)
    assert run.steps.tolist() == [1, 2, 3]
    assert run.roles["loss"] == "train/CE loss"
    assert run.roles["lr"] == "optim/LR (group 0)"
    assert run.roles["grad_norm"] == "optim/total grad norm"
    assert run.frame.loc[2, "throughput/device/MFU (actual avg)"] == 38.2
    assert run.frame.loc[2, "gpu_memory/GPU active mem (GiB)"] == 51.37
    assert run.frame.loc[1, "train/PPL"] == 8103


def test_a_torn_last_block_is_read_up_to_the_cut(tmp_path: Path) -> None:
    path = _olmo_log(tmp_path / "torn.log", steps=6)
    text = path.read_text()
    path.write_text(text[: text.rindex("optim/total_grad_norm=") + len("optim/tot")])
    run = read_log(path)
    assert run.steps.tolist() == [1, 2, 3, 4, 5, 6]
    assert not math.isnan(run.frame.loc[6, "train/Perplexity"])  # read up to the cut
    assert math.isnan(run.frame.loc[6, "optim/total_grad_norm"])
    assert math.isnan(run.frame.loc[6, "throughput/total_tokens"])
    assert run.warnings == (f"{path}: the last block (line 26) is torn at the end of the file: "
                            "read up to line 28, line 29 dropped (no final newline)",)
    # a value cut mid-number is not read as a smaller number
    cut = text.rindex("train/CrossEntropyLoss=") + len("train/CrossEntropyLoss=3")
    path.write_text(text[:cut])
    run = read_log(path)
    assert run.steps.tolist() == [1, 2, 3, 4, 5]
    assert run.warnings == (f"{path}: the last block (line 26) is torn at the end of the file: "
                            "read up to line 26, line 27 dropped (no final newline)",)


def test_a_spike_at_a_known_step_is_found(tmp_path: Path) -> None:
    path = _olmo_log(tmp_path / "spike.log", steps=300, spike=200)
    res = runner.invoke(app, ["analyze", str(path), "--format", "json"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.output)["runs"]
    assert run["format"] == "olmo" and run["metrics"]["loss"] == "train/CrossEntropyLoss"
    spikes = [e for e in run["events"] if e["kind"] == "spike"]
    assert [(e["metric"], e["peak_step"]) for e in spikes] == [("loss", 200)]


def test_the_sniff_leaves_other_text_logs_alone(tmp_path: Path) -> None:
    plain = tmp_path / "nanogpt.log"
    plain.write_text("".join(f"step {s}: loss {4 - s / 100:.4f}, time 33.2ms\n"
                             for s in range(1, 50)))
    assert detect_format(plain) == "text"
    # a step marker with no indented metric lines under it is not OLMo's either
    marker = tmp_path / "marker.log"
    marker.write_text("".join(f"[step={s}/100] loss={4 - s / 100:.4f}\n" for s in range(1, 9)))
    assert detect_format(marker) == "text"
    # nor is an indented `key=value` dump under an unrelated header
    dump = tmp_path / "cfg.log"
    dump.write_text("config:\n    lr=0.001\n    batch_size=64\nstep 1: loss 4.0\n")
    assert detect_format(dump) == "text"


def test_the_probe_excerpt_shape_reads(tmp_path: Path) -> None:
    # the shape of the real OLMo 1B excerpt (a header, 4-6 metric lines; GPU memory on steps
    # 1, 2 and 10 only), written here: that excerpt's repository and licence are unknown
    path = tmp_path / "olmo_1b.log"
    lines = []
    for s in range(1, 11):
        lines.append(f"[2024-04-17 09:42:{s + 10}] INFO     [olmo.train:816, rank=0] "
                     f"[step={s}/739328]")
        loss = 11.25 - 0.2 * s
        lines += [f"    train/CrossEntropyLoss={_olmo_float(loss)}",
                  f"    train/Perplexity={_olmo_float(math.exp(loss))}",
                  f"    throughput/total_tokens={_olmo_float(s * 4194304)}"]
        if s > 1:
            lines += ["    throughput/device/tokens_per_second=45,538",
                      "    throughput/device/batches_per_second=0.0869"]
        if s in (1, 2, 10):
            lines.append("    System/Peak GPU Memory (MB)=42,133")
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(path) == "olmo"
    run = read_log(path)
    assert run.steps.tolist() == list(range(1, 11))
    assert run.roles["loss"] == "train/CrossEntropyLoss"
    assert run.roles["tokens"] == "throughput/total_tokens"
    assert run.frame["System/Peak GPU Memory (MB)"].notna().sum() == 3

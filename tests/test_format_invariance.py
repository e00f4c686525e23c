"""The same run, written in every format spikelens reads, gives the same analysis: the same
events at the same steps with the same top causes. The reader is a detail; the verdict must
not depend on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLES

from spikelens import analyze, read_log
from spikelens.readers._tfrecord import write_scalar_events

SOURCE = SAMPLES / "jsonl" / "r18_bad_batch_lr_metrics.jsonl"


def _table() -> pd.DataFrame:
    run = read_log(SOURCE)
    cols = {"loss": run.roles["loss"], "lr": run.roles["lr"], "grad_norm": run.roles["grad_norm"],
            "tokens": run.roles["tokens"]}
    frame = run.frame[list(cols.values())].rename(columns={v: k for k, v in cols.items()})
    return frame.reset_index()


def _write(fmt: str, frame: pd.DataFrame, d: Path) -> Path:
    if fmt == "csv":
        p = d / "log.csv"
        frame.to_csv(p, index=False, float_format="%.17g")
    elif fmt == "jsonl":
        p = d / "metrics.jsonl"
        p.write_text("".join(json.dumps({k: (int(v) if k == "step" else float(v))
                                         for k, v in row.items()}) + "\n"
                             for row in frame.to_dict("records")))
    elif fmt == "tensorboard":
        p = d / "events.out.tfevents.1700000000.host.1.0"
        tb = frame.rename(columns={c: f"train/{c}" for c in frame.columns if c != "step"})
        write_scalar_events(p, tb.astype({"step": np.int64}))
    elif fmt == "hf_trainer_state":
        p = d / "trainer_state.json"
        hist = [{"step": int(r["step"]), "loss": r["loss"], "learning_rate": r["lr"],
                 "grad_norm": r["grad_norm"], "num_input_tokens_seen": int(r["tokens"])}
                for r in frame.to_dict("records")]
        p.write_text(json.dumps({"global_step": int(frame["step"].iloc[-1]), "logging_steps": 1,
                                 "log_history": hist}))
    elif fmt == "megatron":
        p = d / "train.log"
        n = int(frame["step"].iloc[-1])
        p.write_text("".join(
            f" iteration {int(r['step']):8d}/{n:8d} | consumed tokens: {int(r['tokens'])} | "
            f"learning rate: {r['lr']:.6E} | lm loss: {r['loss']:.6E} | "
            f"grad norm: {r['grad_norm']:.6f} | number of skipped iterations:   0 | "
            "number of nan iterations:   0 |\n" for r in frame.to_dict("records")))
    else:
        raise AssertionError(fmt)
    return p


def _signature(path: Path) -> list[tuple[str, int, int, str]]:
    rr = analyze(read_log(path)).runs[0]
    return [(f.event.kind, f.event.start_step, f.event.peak_step,
             f.causes[0].cause if f.causes else "-")
            for f in rr.findings if f.event.metric == "loss"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "tensorboard", "hf_trainer_state", "megatron"])
def test_same_run_every_format_same_analysis(fmt: str, tmp_path: Path) -> None:
    expected = _signature(SOURCE)
    assert [(k, p, c) for k, _, p, c in expected] == [("spike", 600, "bad_batch"),
                                                      ("spike", 1241, "lr_schedule")]
    path = _write(fmt, _table(), tmp_path)
    assert read_log(path).format == fmt
    assert _signature(path) == expected

"""Cause `model_stats` (issue 14): the update/param ratio or the parameter norm moving before
the loss, and the per-layer weight/activation/attention-logit statistic that left its baseline
first (from CSV columns or TensorBoard histograms), with the QK-layernorm / z-loss remedy.
Each on a constructed log with the known answer, and the same log without the signature
keeps its cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from _ops_logs import megatron_log, spike_loss
from conftest import SAMPLES

from spikelens import analyze, read_log
from spikelens.model import INCIDENT_KINDS, Finding
from spikelens.readers._tfrecord import encode_event, encode_field, encode_record

N = 400
AT = 300  # index of the loss spike: step 301


def _incident(path: Path) -> Finding:
    rep = analyze(read_log(path))
    # incidents only: the constructed losses make no progress, which is also a stall
    found = [f for f in rep.runs[0].findings
             if f.event.metric == "loss" and f.event.kind in INCIDENT_KINDS]
    assert len(found) == 1, [(f.event.kind, f.event.start_step) for f in found]
    return found[0]


def _ms(f: Finding) -> tuple[float, str, str, dict[str, object]] | None:
    for c in f.causes:
        if c.cause == "model_stats":
            return c.score, c.summary, c.remedy, dict(c.evidence)
    return None


def _noise(seed: int, n: int = N, sigma: float = 0.02) -> np.ndarray:
    return np.exp(sigma * np.random.default_rng(seed).standard_normal(n))


def _csv(tmp_path: Path, cols: dict[str, np.ndarray], name: str = "run.csv") -> Path:
    df = pd.DataFrame({"step": np.arange(1, N + 1), "loss": spike_loss(N, AT),
                       "lr": np.full(N, 3e-4), "grad_norm": _noise(9) * 0.8, **cols})
    p = tmp_path / name
    df.to_csv(p, index=False)
    return p


def _ramp(base: np.ndarray, start: int, factor: float, length: int = 8) -> np.ndarray:
    out = base.copy()
    out[start:start + length] *= np.geomspace(1.0, factor, length)
    out[start + length:] *= factor
    return out


def test_update_ratio_rising_before_the_rise(tmp_path: Path) -> None:
    ratio = _ramp(1e-3 * _noise(1), AT - 8, 6.0)
    f = _incident(_csv(tmp_path, {"update_to_param_ratio": ratio}))
    assert f.event.start_step == AT + 1
    assert f.causes[0].cause == "model_stats"
    score, summary, remedy, ev = _ms(f) or (0, "", "", {})
    assert summary.startswith("The update/param ratio reached ")
    assert ev["ratio_signal"] == "update/param ratio" and ev["ratio_step"] <= AT + 1
    assert 4.5 < float(ev["ratio_over_baseline"]) < 7.5  # type: ignore[arg-type]
    assert remedy.startswith("Lower the LR (or its peak)")
    assert score >= 0.6


def test_update_and_param_norms_give_the_ratio(tmp_path: Path) -> None:
    upd = _ramp(0.05 * _noise(2), AT - 6, 5.0)
    f = _incident(_csv(tmp_path, {"update_norm": upd, "param_norm": 50.0 * _noise(3, sigma=1e-4)}))
    got = _ms(f)
    assert got is not None and got[3]["ratio_signal"] == "update/param ratio"


def test_a_flat_ratio_keeps_the_cause(tmp_path: Path) -> None:
    f = _incident(_csv(tmp_path, {"update_to_param_ratio": 1e-3 * _noise(1)}))
    assert f.causes[0].cause == "bad_batch"
    assert _ms(f) is None
    assert "model_stats" not in {s.cause for s in f.skipped}


def _layers(kind: str, which: int | None, lead: int = 10) -> dict[str, np.ndarray]:
    cols = {}
    for layer in range(6):
        base = 40.0 * _noise(20 + layer, sigma=0.01)
        if layer == which:
            base = _ramp(base, AT - lead, 8.0, length=lead)
        cols[f"layer{layer}/{kind}"] = base
    return cols


def test_attention_logits_of_one_layer_name_it_and_qk_layernorm(tmp_path: Path) -> None:
    f = _incident(_csv(tmp_path, _layers("attn_logits_max", 4)))
    top = f.causes[0]
    assert top.cause == "model_stats"
    assert top.summary.startswith("The attention logits statistic layer4/attn_logits_max left "
                                  "its baseline first, at step 293 (1.6x its level, and was "
                                  "8.0x it)")
    assert "before the loss rose at step 301" in top.summary
    assert "QK-layernorm" in top.remedy
    assert top.evidence["first_layer"] == "layer4/attn_logits_max"
    assert top.evidence["layer_statistics"] == 6


def test_activations_name_the_layer_with_their_own_remedy(tmp_path: Path) -> None:
    f = _incident(_csv(tmp_path, _layers("act_rms", 2)))
    got = _ms(f)
    assert got is not None
    assert got[3]["first_layer"] == "layer2/act_rms"
    assert got[3]["first_layer_kind"] == "activations"
    assert "normalisation around that layer" in got[2]


def test_flat_layer_statistics_keep_the_cause(tmp_path: Path) -> None:
    f = _incident(_csv(tmp_path, _layers("attn_logits_max", None)))
    assert f.causes[0].cause == "bad_batch"
    assert _ms(f) is None


def _histo(values: np.ndarray) -> bytes:
    return b"".join([encode_field(1, float(values.min()), 1),
                     encode_field(2, float(values.max()), 1),
                     encode_field(3, float(len(values)), 1),
                     encode_field(4, float(values.sum()), 1),
                     encode_field(5, float((values ** 2).sum()), 1)])


def test_tensorboard_histograms_find_the_layer(tmp_path: Path) -> None:
    run_dir = tmp_path / "tb"
    run_dir.mkdir()
    loss = spike_loss(N, AT)
    rng = np.random.default_rng(0)
    grow = _ramp(np.ones(N), AT - 10, 10.0, length=10)
    records = [encode_record(encode_event(step=0, wall_time=1.0))]
    for i in range(N):
        values = [encode_field(1, b"train/loss") + encode_field(2, float(loss[i]), 5)]
        for layer in range(3):
            logits = rng.standard_normal(64) * 5.0 * (grow[i] if layer == 1 else 1.0)
            values.append(encode_field(1, f"layers.{layer}.attn/logits".encode())
                          + encode_field(5, _histo(logits)))
        records.append(encode_record(encode_event(step=i + 1, wall_time=2.0 + i,
                                                  values=values)))
    (run_dir / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"".join(records))
    run = read_log(run_dir)
    assert {"layers.1.attn/logits/hist_max", "layers.1.attn/logits/hist_rms",
            "layers.1.attn/logits/hist_min", "layers.1.attn/logits/hist_mean"} <= \
        set(run.frame.columns)
    f = _incident(run_dir)
    got = _ms(f)
    assert got is not None
    assert str(got[3]["first_layer"]).startswith("layers.1.attn/logits/hist_")
    assert got[3]["first_layer_kind"] == "attention logits"
    assert f.causes[0].cause == "model_stats"


def _pnorm_log(tmp_path: Path, jump: bool) -> Path:
    steps = list(range(1, N + 1))
    pn = 300.0 * np.exp(np.arange(N) * 2e-5) * _noise(5, sigma=2e-5)
    if jump:
        pn[AT - 6:] *= np.concatenate([np.geomspace(1.0, 1.06, 6), np.full(N - AT, 1.06)])
    p = tmp_path / f"pnorm_{jump}.log"
    p.write_text("\n".join(megatron_log(steps, list(spike_loss(N, AT)), params_norm=list(pn)))
                 + "\n")
    return p


def test_megatron_params_norm_jump_before_the_rise(tmp_path: Path) -> None:
    run = read_log(_pnorm_log(tmp_path, True))
    assert run.roles["param_norm"] == "params norm"
    f = _incident(_pnorm_log(tmp_path, True))
    got = _ms(f)
    assert got is not None and got[3]["ratio_signal"] == "param norm"
    assert got[1].startswith("The param norm jumped 6.0% (from 302) over the 10 logged points "
                             "before the loss rose at step 301")


def test_megatron_params_norm_drift_keeps_the_cause(tmp_path: Path) -> None:
    f = _incident(_pnorm_log(tmp_path, False))
    assert f.causes[0].cause == "bad_batch"
    assert _ms(f) is None


def test_real_logs_without_model_statistics_say_so() -> None:
    f = _incident(SAMPLES / "megatron" / "bigscience_tr11-176B_first_lm_loss_spike_31214-"
                  "31251.log")
    assert [c.cause for c in f.causes][:2] == ["grad_explosion", "bad_batch"]
    assert _ms(f) is None
    skipped = {s.cause: s.reason for s in f.skipped}
    assert skipped["model_stats"] == ("needs param_norm, an update/param ratio or per-layer "
                                      "weight, activation or attention-logit statistics; none "
                                      "in this log")

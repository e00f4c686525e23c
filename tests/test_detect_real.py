"""The detector on real logs: the documented incidents of BigScience's large runs, the benign
look-alikes that must stay quiet (fp16 loss-scale calibration, DeepSpeed-Chat overflows,
the QLoRA epoch sawtooth, modded-nanogpt micro-batch noise), and bench runs with injected
faults. The copies bundled in `sample_logs/` and `tests/data/` are always tested; the whole
labelled bench and the full real logs are tested when `../shared` is beside the checkout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from spikelens.detect import Detection, detect
from spikelens.model import INCIDENT_KINDS, Config
from spikelens.readers import read_log

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_logs"
DATA = ROOT / "tests" / "data"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CFG = Config()


def run_on(path: Path) -> Detection:
    return detect(read_log(path), CFG)


def incidents(det: Detection) -> list[tuple[str, int, int, int, bool]]:
    return [(e.kind, e.start_step, e.peak_step, e.end_step, e.recovered) for e in det.events
            if e.metric == "loss" and e.kind in INCIDENT_KINDS]


def test_bloom_176b_first_spike_at_31219() -> None:
    det = run_on(SAMPLES / "megatron" / "bigscience_tr11-176B_first_lm_loss_spike_31214-31251.log")
    assert incidents(det) == [("spike", 31219, 31219, 31222, True)]
    assert det.events[0].size.ratio == pytest.approx(5.098124 / 2.241558, rel=1e-6)
    assert det.verdict == "spiky"


def test_tr1_13b_spike_near_29050_not_recovered_in_the_excerpt() -> None:
    det = run_on(SAMPLES / "megatron" / "bigscience_tr1-13B_spike_29020-29090.log")
    assert incidents(det) == [("spike", 29050, 29060, 29090, False)]
    assert "grad norm not analysed: grad_norm is constant (0): not computed by this run" \
        in det.notes


def test_tr8_104b_exp11_three_lines_3_1_to_7_7() -> None:
    det = run_on(SAMPLES / "megatron" / "bigscience_tr8-104B_exp11_spike_11446-11448.log")
    assert incidents(det) == [("spike", 11448, 11448, 11448, False)]
    assert det.events[0].size.ratio == pytest.approx(7.712340 / 3.114286, rel=1e-6)


def test_tr8_104b_exp1_glitch_at_7010() -> None:
    det = run_on(SAMPLES / "megatron" / "bigscience_tr8-104B_exp1_glitch_7000-7220.log")
    assert incidents(det) == [("spike", 7010, 7010, 7220, False)]


def test_gpt2_fp16_loss_scale_calibration_is_healthy() -> None:
    det = run_on(SAMPLES / "megatron" /
                 "bigscience_gpt2_perf_n4_fp16_lossscale_calibration_1-200.log")
    # no incident; the excerpt (iterations 1-200 of 1000) ends after the eval at 200, which
    # is reported as an informational hang (issue 14)
    assert [(e.kind, e.start_step) for e in det.events] == [("hang", 200)]
    assert det.verdict == "healthy"


def test_deepspeed_chat_overflows_are_quiet_and_not_called_healthy() -> None:
    # the log prints no train loss (only LR and overflow lines): no incident, and the
    # verdict says there was not enough to judge rather than "healthy" (issue 8)
    det = run_on(SAMPLES / "megatron" / "deepspeed_chat_step1_sft_opt-1.3b_fp16_epochs0-4.log")
    assert [e for e in det.events if e.kind in INCIDENT_KINDS] == []
    assert det.verdict == "insufficient_data"
    assert det.notes[0].startswith("no train loss: nothing to detect on")


def test_qlora_epoch_sawtooth_is_one_periodic_finding() -> None:
    det = run_on(SAMPLES / "hf" / "qlora_25epochs_10000steps_trainer_state.json")
    [osc] = det.events
    assert (osc.kind, osc.start_step, osc.end_step, osc.period) == \
        ("oscillation", 10, 10000, 50.0)
    assert osc.amplitude is not None and osc.amplitude > 0.5
    assert det.verdict == "oscillating"


@pytest.mark.parametrize(("path", "outliers"), [
    (SAMPLES / "text" / "modded_nanogpt_124M_2024-11-06_ShortcutsTweaks.log",
     [919, 947, 1760, 3194]),
    (DATA / "causes" / "modded_nanogpt_124M_2024-10-10_Muon_eb5659d0_steps0-1200.log",
     [919, 947]),
    (DATA / "causes" / "modded_nanogpt_124M_2024-10-14_ModernArch_dabaaddd_steps0-1200.log",
     [919, 947]),
], ids=["ShortcutsTweaks", "Muon", "ModernArch"])
def test_modded_nanogpt_only_the_replicated_outliers(path: Path, outliers: list[int]) -> None:
    # one log on its own finds the one-step outliers that 78 runs replicate (919/947/1760
    # are 1.32-1.44x their neighbourhood, 3194 1.27x; consensus_outlier_steps.csv), and
    # nothing else
    det = run_on(path)
    assert incidents(det) == [("spike", s, s, s + 1, True) for s in outliers]


def test_metamath_sft_noise_is_healthy() -> None:
    det = run_on(DATA / "hf" / "metamath_sft_128steps_logging1_trainer_state.json")
    assert (det.events, det.verdict) == ((), "healthy")


def test_bench_fp16_overflow_storm_is_nonfinite_from_800_to_840() -> None:
    det = run_on(SAMPLES / "csv" / "bench_r05_fp16_overflow_storm.csv")
    [ev] = det.events
    assert (ev.kind, ev.start_step, ev.end_step, ev.first_nonfinite) == \
        ("nonfinite", 800, 840, "loss")
    assert math.isinf(ev.size.z)
    assert "5 non-finite grad norm(s) under a finite loss (steps 301, 406, 508, 610, 711): " \
           "overflow steps the optimizer skipped, not incidents" in det.notes
    assert det.verdict == "nonfinite"


def test_bench_bad_batch_then_lr_jump() -> None:
    det = run_on(SAMPLES / "jsonl" / "r18_bad_batch_lr_metrics.jsonl")
    got = incidents(det)
    assert got[0] == ("spike", 600, 600, 601, True)
    kind, start, peak, end, recovered = got[1]
    assert (kind, peak, recovered) == ("spike", 1241, True)
    assert 1200 <= start <= 1210 and 1330 <= end <= 1350
    assert len(got) == 2


def test_bench_tiny_batch_noise_is_oscillating_not_spiky() -> None:
    det = run_on(DATA / "csv" / "r04_wandb_panel.csv")
    assert [e.kind for e in det.events] == ["oscillation"]
    assert det.events[0].period is None
    assert det.verdict == "oscillating"


# --------------------------------------------------------------------- with ../shared
def _shared_bench() -> Path:
    bench = SHARED / "bench"
    if not (bench / "labels.json").exists():
        pytest.skip("../shared/bench is not beside this checkout")
    return bench


def _bench_runs() -> list[str]:
    path = SHARED / "bench" / "labels.json"
    return sorted(json.loads(path.read_text())) if path.exists() else ["absent"]


@pytest.mark.parametrize("name", _bench_runs())
def test_every_bench_run(name: str) -> None:
    bench = _shared_bench()
    label = json.loads((bench / "labels.json").read_text())[name]
    files = label.get("files", [label["file"]])
    path = (bench / files[0]).parent if len(files) > 1 else bench / label["file"]
    det = run_on(path)
    found = [(e.start_step, e.end_step) for e in det.events
             if e.metric == "loss" and e.kind in INCIDENT_KINDS]
    wanted = [(ev["start"], ev["end"]) for ev in label["events"]]
    # one-to-one: every labelled event overlaps its own detected incident, nothing extra
    assert len(found) == len(wanted)
    for (a, b), (s, e) in zip(sorted(wanted), sorted(found), strict=True):
        assert s <= b and a <= e, f"{name}: labelled {a}-{b}, found {s}-{e}"
    if label["verdict"] == "none":
        assert det.verdict == ("oscillating" if label["oscillating"] else "healthy")
    else:
        assert det.verdict in ("spiky", "diverged", "nonfinite")


def test_full_modded_nanogpt_1_5b_reports_only_isolated_outliers() -> None:
    path = SHARED / "real_logs" / "modded_nanogpt" / "1.5B-52L_2024-10-20_ScaleUp1B_87bd51fd.log"
    if not path.exists():
        pytest.skip("../shared/real_logs is not beside this checkout")
    det = run_on(path)
    # 20k steps of one micro-batch's loss: only isolated one-step outliers over the point
    # bar of the one noise estimate, each at least 1.3x its neighbourhood (the 1.5B reads
    # its data in another order than the consensus runs: nothing in one log says which are
    # bad batches). 17992 (1.85x, issue 8) is found since the short noise estimate gives
    # way to the long one where they agree (docs/detection.md, sixth pass)
    events = [e for e in det.events if e.kind in INCIDENT_KINDS]
    assert [e.peak_step for e in events] == \
        [428, 607, 1120, 1788, 3962, 5964, 7799, 8246, 9435, 10664, 10989, 11607, 13144, 14515,
         14675, 14738, 17992, 20133]
    loss = read_log(path).series("loss")
    assert loss is not None
    for e in events:
        i = int(np.searchsorted(loss.index.to_numpy(), e.peak_step))
        around = np.r_[loss.to_numpy()[i - 10:i], loss.to_numpy()[i + 1:i + 11]]
        assert loss.to_numpy()[i] >= 1.3 * float(np.median(around))
        assert e.start_step == e.peak_step

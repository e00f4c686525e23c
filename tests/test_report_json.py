"""The JSON report: the contract's exact shape and key order, full precision, non-finite numbers,
and validation of real outputs against docs/report.schema.json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from test_report_common import (
    BLOOM_REMEDY,
    BLOOM_SOURCE,
    BLOOM_SUMMARY,
    bloom_report,
    empty_report,
    healthy_report,
    long_report,
    long_run,
    multi_report,
)

from spikelens.model import Event, Evidence, Finding, Recurrence, Report, RunReport, Size, StepInfo
from spikelens.report import render

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[1] / "docs" / "report.schema.json").read_text("utf-8")
)


def strict_loads(text: str) -> Any:
    def no_constant(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=no_constant)


def validate(doc: Any) -> None:
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_bloom_report_exactly() -> None:
    doc = strict_loads(render(bloom_report(), [], "json"))
    assert doc == {
        "schema_version": 1,
        "runs": [{
            "source": BLOOM_SOURCE,
            "format": "megatron",
            "verdict": "spiky",
            "steps": {"first": 31214, "last": 31251, "count": 11, "interval": 1},
            "metrics": {"loss": "lm loss", "lr": "learning rate", "grad_norm": "grad norm",
                        "skipped": "number of skipped iterations",
                        "nan_count": "number of nan iterations",
                        "samples": "consumed samples", "tokens": "consumed tokens"},
            "events": [{
                "kind": "spike", "metric": "loss",
                "start_step": 31216, "peak_step": 31219, "end_step": 31250,
                "recovered": True,
                "size": {"z": 14.234712, "ratio": 2.3185712345},
                "causes": [
                    {"cause": "grad_explosion", "score": 0.93, "summary": BLOOM_SUMMARY,
                     "evidence": {"grad_norm_before": 0.242, "grad_norm_peak": 960.351,
                                  "growth": 3968.392561983471, "lead_steps": 5, "lr_ratio": 1.0},
                     "remedy": BLOOM_REMEDY},
                    {"cause": "bad_batch", "score": 0.2,
                     "summary": "The loss rose 2.32× in one step and was back near 2.2 within "
                                "31 steps.",
                     "evidence": {"rise_steps": 1, "recurs_in_runs": 0},
                     "remedy": "Inspect consumed samples 47776688–47778736."},
                ],
                "recovery_steps": 34, "segment": 0, "baseline": 2.198845, "period": None,
                "amplitude": None, "first_nonfinite": None, "diverged": False,
                "rolled_back_at": None,
                "lr_corr": None, "batch_size": None, "source": None, "detail": None,
                "skipped_causes": [{"cause": "amp_overflow",
                                    "reason": "needs loss_scale, not in this log"}],
            }],
            "warnings": [f"{BLOOM_SOURCE}: steps 31223-31249 are not in the log"],
            "name": None,
        }],
        "recurrences": [],
    }
    validate(doc)


def test_key_order_is_the_contracts() -> None:
    doc = json.loads(render(bloom_report(), [], "json"))
    assert list(doc) == ["schema_version", "runs", "recurrences"]
    run = doc["runs"][0]
    assert list(run) == ["source", "format", "verdict", "steps", "metrics", "events",
                         "warnings", "name"]
    assert list(run["steps"]) == ["first", "last", "count", "interval"]
    ev = run["events"][0]
    assert list(ev)[:8] == ["kind", "metric", "start_step", "peak_step", "end_step",
                            "recovered", "size", "causes"]
    assert list(ev["size"]) == ["z", "ratio"]
    assert list(ev["causes"][0]) == ["cause", "score", "summary", "evidence", "remedy"]
    # evidence keeps the order the cause rule wrote it in
    assert list(ev["causes"][0]["evidence"]) == ["grad_norm_before", "grad_norm_peak", "growth",
                                                 "lead_steps", "lr_ratio"]


def test_output_is_stable_and_ends_with_a_newline() -> None:
    a = render(bloom_report(), [], "json")
    assert a == render(bloom_report(), [], "json")
    assert a.endswith("}\n") and a.startswith('{\n  "schema_version": 1,')


def test_non_finite_numbers_are_null_and_the_json_is_valid() -> None:
    run = long_run()
    text = render(long_report(run), [run], "json")
    doc = strict_loads(text)  # no NaN / Infinity tokens
    nonfinite = doc["runs"][0]["events"][3]
    assert nonfinite["kind"] == "nonfinite"
    assert nonfinite["size"] == {"z": None, "ratio": None}
    assert nonfinite["first_nonfinite"] == "grad_norm"
    assert nonfinite["causes"][0]["evidence"] == {"scale_cuts": 1, "factor": 0.5,
                                                  "skipped_steps": 1, "loss": None}
    osc = doc["runs"][0]["events"][0]
    assert (osc["period"], osc["amplitude"], osc["causes"]) == (20.0, 0.153, [])
    validate(doc)


def test_causes_are_sorted_by_score_and_numpy_evidence_is_plain() -> None:
    ev = Event("spike", "loss", 10, 11, 12, False, Size(np.float64(7.123456789), 1.5))
    causes = (
        Evidence("lr_schedule", 0.3, "s1", {"ratio": np.float32(10.0), "lag": np.int64(1)},
                 "r1"),
        Evidence("grad_explosion", 0.6666666, "s2",
                 {"steps": (np.int64(3), 4), "per_layer": {"h.0": math.nan}}, "r2"),
    )
    rr = RunReport("x.csv", "csv", "diverged", StepInfo(0, 20, 21, 1), {"loss": "loss"},
                   (Finding(ev, causes),), (), name="run-7")
    doc = strict_loads(render(Report(runs=(rr,)), [], "json"))
    got = doc["runs"][0]["events"][0]
    assert [c["cause"] for c in got["causes"]] == ["grad_explosion", "lr_schedule"]
    assert got["causes"][0]["score"] == 0.6666666
    assert got["causes"][0]["evidence"] == {"steps": [3, 4], "per_layer": {"h.0": None}}
    assert got["causes"][1]["evidence"] == {"ratio": 10.0, "lag": 1}
    assert got["size"]["z"] == 7.123456789
    assert doc["runs"][0]["name"] == "run-7"
    validate(doc)


def test_numbers_are_written_at_full_precision() -> None:
    # six significant digits would write 1048580 and shift a token offset by thousands
    ev = Event("spike", "loss", 10, 11, 12, True, Size(12.3456789, 1.000123456), baseline=
               2.1988451234)
    cause = Evidence("amp_overflow", 0.75, "s", {"loss_scale_before": 1048576.0,
                                                 "tokens_at_peak": 123456789012,
                                                 "tokens_float": 123456789012.0,
                                                 "lr": 5.279999e-05}, "r")
    rr = RunReport("x.csv", "csv", "spiky", StepInfo(0, 20, 21, 1), {"loss": "loss"},
                   (Finding(ev, (cause,)),), ())
    rec = Recurrence(axis="tokens", position=123456789012.0, members=(("x.csv", 11),))
    text = render(Report(runs=(rr,), recurrences=(rec,)), [], "json")
    assert '"loss_scale_before": 1048576.0' in text
    assert '"tokens_at_peak": 123456789012,' in text
    assert '"position": 123456789012,' in text
    doc = strict_loads(text)
    got = doc["runs"][0]["events"][0]
    assert got["causes"][0]["evidence"]["tokens_float"] == 123456789012
    assert got["causes"][0]["evidence"]["lr"] == 5.279999e-05
    assert got["size"] == {"z": 12.3456789, "ratio": 1.000123456}
    assert got["baseline"] == 2.1988451234


@pytest.mark.parametrize("report", [empty_report(), healthy_report(), multi_report()],
                         ids=["empty", "no-events", "two-runs"])
def test_empty_eventless_and_multi_run_reports_validate(report: Report) -> None:
    doc = strict_loads(render(report, [], "json"))
    validate(doc)
    assert doc["schema_version"] == 1


def test_multi_run_report_has_the_recurrences() -> None:
    doc = strict_loads(render(multi_report(), [], "json"))
    assert [r["verdict"] for r in doc["runs"]] == ["healthy", "spiky"]
    assert doc["runs"][0]["events"] == []
    assert doc["recurrences"] == [{"axis": "step", "position": 918, "members": [
        {"source": "a.log", "peak_step": 918}, {"source": "b.log", "peak_step": 919}],
        "differ": []}]


def test_schema_rejects_what_the_contract_forbids() -> None:
    doc = strict_loads(render(bloom_report(), [], "json"))
    bad = json.loads(json.dumps(doc))
    bad["runs"][0]["events"][0]["kind"] = "blip"
    with pytest.raises(jsonschema.ValidationError, match="'blip' is not one of"):
        validate(bad)
    bad = json.loads(json.dumps(doc))
    del bad["runs"][0]["events"][0]["causes"]
    with pytest.raises(jsonschema.ValidationError, match="'causes' is a required property"):
        validate(bad)
    bad = json.loads(json.dumps(doc))
    bad["runs"][0]["events"][0]["causes"][0]["score"] = 1.5
    with pytest.raises(jsonschema.ValidationError, match="1.5 is greater than the maximum"):
        validate(bad)

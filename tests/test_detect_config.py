"""The detection part of `Config`: validated once, with messages that name the field, and
defaults equal to the calibrated values documented in docs/detection.md. Also the
accuracy benchmark's refusal to run without its labelled bench."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from spikelens.detect.baseline import infer_quantum, rank_index, trailing_quantiles
from spikelens.errors import ConfigError
from spikelens.model import Config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"z_threshold": 0}, "z_threshold must be > 0, got 0"),
    ({"shift_z_threshold": -1.0}, "shift_z_threshold must be > 0, got -1.0"),
    ({"shift_windows": ()}, "shift_windows must be one or more lengths >= 2, got ()"),
    ({"shift_windows": (1, 20)}, "shift_windows must be one or more lengths >= 2, got (1, 20)"),
    ({"short_ratio": 0.9}, "short_ratio must be >= 1, got 0.9"),
    ({"grad_min_ratio": 0.5}, "grad_min_ratio must be >= 1, got 0.5"),
    ({"divergence_steps": 0}, "divergence_steps must be >= 1, got 0"),
    ({"osc_block": 8}, "osc_block must be >= 16, got 8"),
    ({"osc_min_acf": 1.0}, "osc_min_acf must be in (0, 1), got 1.0"),
    ({"osc_spread": 1.0}, "osc_spread must be > 1, got 1.0"),
    ({"window": 3}, "window must be >= 4, got 3"),
])
def test_invalid_config_is_refused_with_the_field_named(kwargs: dict[str, object],
                                                        message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config(**kwargs)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_calibrated_defaults() -> None:
    cfg = Config()
    assert (cfg.z_threshold, cfg.shift_z_threshold, cfg.shift_windows) == (9.3, 5.5, (5, 20, 80))
    assert (cfg.window, cfg.min_window, cfg.recover_run, cfg.band_z) == (100, 8, 10, 3.0)
    assert (cfg.min_ratio, cfg.short_ratio, cfg.start_ratio) == (1.10, 1.5, 2.0)


@pytest.mark.parametrize("stride", [1, 3, 5])
def test_trailing_quantiles_never_see_the_point_under_test(stride: int) -> None:
    x = np.random.default_rng(0).standard_normal(400)
    q = trailing_quantiles(x, 50, (0.25, 0.5, 0.9), stride)
    assert np.isnan(q[0]).all()
    for i in range(1, 400):
        start = 0 if i < 50 else ((i - 50) // stride) * stride
        win = np.sort(x[start:i] if i < 50 else x[start:start + 50])
        assert start + len(win) <= i
        assert list(q[i]) == [win[rank_index(len(win), p)] for p in (0.25, 0.5, 0.9)]


def test_quantum_is_inferred_and_scales_with_the_loss() -> None:
    rounded = np.round(np.random.default_rng(1).uniform(0.1, 2.0, 500), 4)
    assert infer_quantum(rounded) == 1e-4
    assert infer_quantum(rounded * 1e-10) == pytest.approx(1e-14)
    assert infer_quantum(np.random.default_rng(1).uniform(0.1, 2.0, 500)) == 0.0


def test_accuracy_benchmark_needs_its_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("accuracy", ROOT / "benchmarks" / "accuracy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being built
    monkeypatch.setitem(sys.modules, "accuracy", module)
    spec.loader.exec_module(module)
    assert module.main(["--bench", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == (
        f"accuracy: no labelled bench at {tmp_path / 'nowhere'} (expected labels.json there);"
        " pass --bench DIR\n"
    )

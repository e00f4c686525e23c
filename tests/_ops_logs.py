"""Constructed logs for the operations and model-statistics tests, written in the exact print
format of Megatron-LM's `training_log` (`iteration N/ M | key: value | ... |`), with a seeded
noisy loss so that the detector sees a real baseline. Each builder returns the text; the
tests write it to a temporary file and state the known answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Field = Callable[[int], float | None]


def megatron_line(it: int, total: int, fields: Sequence[tuple[str, float | None, str]],
                  prefix: str = " ") -> str:
    """One iteration line; `fields` are (key, value, printf format), None values left out."""
    parts = [f"{prefix}iteration {it:8d}/ {total:8d} |"]
    for key, val, fmt in fields:
        if val is not None:
            parts.append(f" {key}: {format(val, fmt)} |")
    return "".join(parts)


def noisy_loss(n: int, seed: int = 0, level: float = 2.5, sigma: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return level * np.exp(sigma * rng.standard_normal(n))


def megatron_log(
    steps: Sequence[int],
    loss: Sequence[float],
    total: int = 100_000,
    grad_norm: Sequence[float] | None = None,
    gbs: Sequence[int] | int = 512,
    step_time: Sequence[float] | float = 1000.0,
    lr: float = 1e-4,
    tflops: Sequence[float] | None = None,
    params_norm: Sequence[float] | None = None,
    extra: dict[int, list[str]] | None = None,
    prefix: str = " ",
) -> list[str]:
    """Lines of a Megatron log; `extra[i]` are lines printed after the i-th iteration line."""
    out: list[str] = []
    for i, it in enumerate(steps):
        g = gbs if isinstance(gbs, int) else gbs[i]
        st = step_time if isinstance(step_time, float) else step_time[i]
        fields: list[tuple[str, float | None, str]] = [
            ("consumed samples", float(it * g), ".0f"),
            ("elapsed time per iteration (ms)", st, ".1f"),
            ("learning rate", lr, ".3E"),
            ("global batch size", float(g), ".0f"),
            ("lm loss", loss[i], ".6E"),
            ("grad norm", grad_norm[i] if grad_norm is not None else None, ".3f"),
            ("params norm", params_norm[i] if params_norm is not None else None, ".3f"),
            ("number of skipped iterations", 0.0, ".0f"),
            ("number of nan iterations", 0.0, ".0f"),
            ("TFLOPs", tflops[i] if tflops is not None else None, ".2f"),
        ]
        out.append(megatron_line(it, total, fields, prefix))
        for line in (extra or {}).get(i, []):
            out.append(line)
    return out


def spike_loss(n: int, at: int, seed: int = 0, height: float = 2.0, width: int = 3) -> np.ndarray:
    """A noisy flat loss with a spike of `height`x at index `at` that decays over `width`."""
    y = noisy_loss(n, seed)
    for k in range(width):
        if at + k < n:
            y[at + k] *= 1 + (height - 1) / (k + 1)
    return y

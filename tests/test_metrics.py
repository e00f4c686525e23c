"""Metric roles from the names frameworks write: the train loss is found whatever its
spelling, eval losses never become it, and per-layer metrics never become the totals."""

from __future__ import annotations

import pytest

from spikelens.errors import ConfigError
from spikelens.metrics import assign_roles, find_step_column, parse_overrides


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["_step", "train/loss", "eval/loss", "train/lr", "train/grad_norm"],
         {"loss": "train/loss", "eval_loss": "eval/loss", "lr": "train/lr",
          "grad_norm": "train/grad_norm"}),
        (["iteration", "lm loss", "learning rate", "grad norm", "loss scale",
          "number of skipped iterations", "number of nan iterations"],
         {"loss": "lm loss", "lr": "learning rate", "grad_norm": "grad norm",
          "loss_scale": "loss scale", "skipped": "number of skipped iterations",
          "nan_count": "number of nan iterations"}),
        (["step", "train_loss_step", "train_loss_epoch", "val_loss", "lr-AdamW"],
         {"loss": "train_loss_step", "eval_loss": "val_loss", "lr": "lr-AdamW"}),
        (["s", "trl", "tel", "lr", "norm"],
         {"loss": "trl", "eval_loss": "tel", "lr": "lr", "grad_norm": "norm"}),
        (["step", "loss/train", "loss/val", "optim/LR (group 0)"],
         {"loss": "loss/train", "eval_loss": "loss/val", "lr": "optim/LR (group 0)"}),
        (["step", "metrics/loss", "scaler/scale", "found_inf", "num_tokens"],
         {"loss": "metrics/loss", "loss_scale": "scaler/scale", "skipped": "found_inf",
          "tokens": "num_tokens"}),
        (["step", "loss/train/total", "loss/val/total", "grad_norm/total", "lr-Adam/pg1"],
         {"loss": "loss/train/total", "eval_loss": "loss/val/total",
          "grad_norm": "grad_norm/total", "lr": "lr-Adam/pg1"}),
        (["step", "param_groups/0/lr", "mse", "layers/3/grad_norm"],
         {"lr": "param_groups/0/lr", "loss": "mse", "grad_norm": None}),
        (["step", "mlp-sweep-113 - train/loss", "mlp-sweep-113 - train/loss__MIN"],
         {"loss": "mlp-sweep-113 - train/loss"}),
    ],
)
def test_roles_from_framework_names(columns: list[str],
                                    expected: dict[str, str | None]) -> None:
    roles = assign_roles(columns)
    assert {k: roles.get(k) for k in expected} == expected


def test_per_layer_norms_are_extras_not_the_total() -> None:
    roles = assign_roles(["step", "loss", "layer3/grad_norm", "h.11/grad_norm",
                          "grad_norm/blocks_2"])
    assert "grad_norm" not in roles
    roles = assign_roles(["step", "loss", "layer3/grad_norm", "optim/grad_norm"])
    assert roles["grad_norm"] == "optim/grad_norm"


def test_eval_rows_only_take_eval_roles() -> None:
    roles = assign_roles(["step", "loss", "ppl"], eval_columns=["ppl"])
    assert roles == {"loss": "loss", "eval_loss": "ppl"}
    # a train perplexity is not an eval loss
    assert "eval_loss" not in assign_roles(["step", "loss", "ppl"])


def test_step_column_and_overrides() -> None:
    assert find_step_column(["Step", "loss"]) == "Step"
    assert find_step_column(["loss", "_step", "iteration"]) == "_step"
    assert find_step_column(["loss", "epoch"]) is None
    assert parse_overrides(["loss=my/loss", "lr = opt/lr"]) == {"loss": "my/loss",
                                                                  "lr": "opt/lr"}
    with pytest.raises(ConfigError, match="unknown metric role 'los'"):
        parse_overrides(["los=x"])
    assert assign_roles(["step", "a", "b"], {"loss": "b"}) == {"loss": "b"}


def test_an_eval_sets_loss_wins_over_its_perplexity() -> None:
    # OLMo prints both for every eval set: the loss is the eval loss, exp of it an extra
    cols = ["train/CrossEntropyLoss", "eval/v3-small-c4_en-validation/Perplexity",
            "eval/v3-small-c4_en-validation/CrossEntropyLoss"]
    assert assign_roles(cols)["eval_loss"] == "eval/v3-small-c4_en-validation/CrossEntropyLoss"
    # ... and a perplexity alone still is one
    assert assign_roles(["loss", "eval/PPL"])["eval_loss"] == "eval/PPL"

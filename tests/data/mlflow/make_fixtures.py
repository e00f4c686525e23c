"""How the committed MLflow fixtures were made (run once by hand, with the `mlflow` package of
the dev extra): `sample_logs/mlflow/mlflow.db` (SQLite tracking store, compacted with VACUUM
at a 512-byte page size) and `tests/data/mlflow/mlruns/` (file store). They hold runs of a
small synthetic loss curve: `lr-too-high` (a 3x loss spike at step 240 after a grad-norm
surge, a NaN loss at step 280; in both) and `baseline` (smooth; in the file store only),
with HuggingFace-style params.

    MLFLOW_ALLOW_FILE_STORE=true python tests/data/mlflow/make_fixtures.py OUTDIR
"""

from __future__ import annotations

import math
import sqlite3
import sys
import time
from pathlib import Path


def curves(spiky: bool) -> list[tuple[int, dict[str, float]]]:
    out = []
    for s in range(300):
        loss = 2.0 + 4.0 * math.exp(-s / 50) + 0.02 * math.sin(1.7 * s)
        gn = 0.5 + 0.05 * math.cos(0.9 * s)
        if spiky and s == 239:
            gn *= 12
        if spiky and 240 <= s < 243:
            loss *= (3.0, 1.6, 1.1)[s - 240]
        if spiky and s == 280:
            loss = float("nan")
        out.append((s, {"train/loss": loss, "train/grad_norm": gn,
                        "train/learning_rate": 3e-4 * min(1.0, (s + 1) / 30)}))
    return out


def make(uri: str, runs: tuple[tuple[str, bool], ...]) -> None:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.create_experiment("spikelens-sample")
    for name, spiky in runs:
        run = client.create_run(exp, run_name=name)
        rid = run.info.run_id
        client.log_batch(rid, params=[
            mlflow.entities.Param("learning_rate", "0.0003"),
            mlflow.entities.Param("max_grad_norm", "1.0"),
            mlflow.entities.Param("per_device_train_batch_size", "16"),
            mlflow.entities.Param("warmup_steps", "30"),
            mlflow.entities.Param("bf16", "True"),
        ])
        t0 = int(time.time() * 1000)
        metrics = [Metric(k, v, t0 + 10 * s, s) for s, vals in curves(spiky)
                   for k, v in vals.items()]
        for i in range(0, len(metrics), 900):
            client.log_batch(rid, metrics=metrics[i:i + 900])
        client.set_terminated(rid)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    make(f"sqlite:///{out / 'mlflow.db'}", (("lr-too-high", True),))
    con = sqlite3.connect(out / "mlflow.db")
    con.execute("PRAGMA page_size = 512")  # the empty tables of the schema stay small
    con.execute("VACUUM")
    con.close()
    make(f"file://{(out / 'mlruns').resolve()}", (("baseline", False), ("lr-too-high", True)))


if __name__ == "__main__":
    main()

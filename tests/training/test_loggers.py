"""Training curves reach TensorBoard and MLflow (when installed and MLFLOW_TRACKING_URI is set), beside the CSV log."""

from __future__ import annotations

import pytest

from medlens.training.config import TrainConfig
from medlens.training.run import train
from medlens.training.trainer import TENSORBOARD_DIR


def _train(tmp_path):
    config = TrainConfig(
        source="synthetic:chest2d@32",
        model="cnn-small",
        out=str(tmp_path / "run"),
        epochs=2,
        max_samples=32,
        threads=1,
        progress=False,
        accelerator="cpu",
    )
    return train(config).model("cnn-small")


def test_training_curves_reach_tensorboard_and_mlflow(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database; alembic is not installed
    model = _train(tmp_path)

    (events,) = (model.root / TENSORBOARD_DIR).glob("version_0/events.out.tfevents.*")
    board = EventAccumulator(str(events))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"train_loss", "val_loss", "val_auc"} <= tags
    assert len(board.Scalars("val_auc")) == 2  # one per epoch

    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("medlens").experiment_id])
    assert run.info.run_name == "cnn-small"
    assert len(client.get_metric_history(run.info.run_id, "val_auc")) == 2
    assert run.data.params["model_name"] == "cnn-small"

"""The model registry and the checkpoint store over HTTP, on a copy of the trained `overfit` run."""

from __future__ import annotations

import shutil
import time

import pytest
import torch

from asrlib.client import ApiError, AsrClient
from asrlib.training.runs import RunPaths, write_status


def test_register_list_rename_delete(client: AsrClient, served_run: str):
    before = time.time()
    model = client.register_model(served_run, name="api-model")
    assert model.run_id == served_run
    assert model.checkpoint == "ckpt-0000300.pt"  # no WER was measured, so the final checkpoint
    assert model.step == 300
    assert model.model_type == "conformer"
    assert model.preset == "tiny"
    assert model.run_status == "completed"
    assert model.parameters and model.parameters > 1_000_000
    assert model.size and model.size > 0
    assert model.lineage[0]["checkpoint"] == "ckpt-0000300.pt"

    names = [m.name for m in client.list_models()]
    assert "api-model" in names
    assert [m.name for m in client.list_models(name_contains="API-MOD")] == ["api-model"]
    assert client.list_models(type="realtime") == []
    assert [m.name for m in client.list_models(status="completed", created_after=before)] == ["api-model"]
    assert client.list_models(created_before=before - 3600) == []
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before - 1))
    assert "api-model" in [m.name for m in client.list_models(created_after=iso)]
    assert client.list_models(wer_max=1.0) == []  # a WER filter leaves out models without a WER

    with pytest.raises(ApiError) as error:
        client.register_model(served_run, name="api-model")
    assert error.value.status == 409

    renamed = client.rename_model("api-model", "api-model-2")
    assert renamed.name == "api-model-2"
    with pytest.raises(ApiError) as error:
        client.get_model("api-model")
    assert error.value.status == 404
    with pytest.raises(ApiError) as error:
        client.rename_model("api-model-2", "../x")
    assert error.value.status == 400

    client.delete_model("api-model-2")
    assert "api-model-2" not in [m.name for m in client.list_models()]


def test_list_models_bad_query_400(client: AsrClient):
    for params in ({"sort": "colour"}, {"created_after": "yesterday"}):
        with pytest.raises(ApiError) as error:
            client._request("GET", "/api/models", params=params)
        assert error.value.status == 400, params


def test_register_running_run_409(client: AsrClient, served_run: str, api_server):
    run_id = "half-done"
    paths = RunPaths(api_server.checkpoints / run_id)
    paths.root.mkdir()
    write_status(paths, "running", step=10)
    try:
        with pytest.raises(ApiError) as error:
            client.register_model(run_id)
        assert error.value.status == 409
        assert "running" in error.value.detail
    finally:
        shutil.rmtree(paths.root)


def test_export_torchscript_download(client: AsrClient, served_run: str, tmp_path):
    client.register_model(served_run, name="export-me")
    try:
        export = client.export_model("export-me", "torchscript")
        assert export.format == "torchscript"
        assert export.max_abs_difference is not None and export.max_abs_difference < 1e-3
        assert "torchscript" in client.get_model("export-me").exports
        saved = client.download_export("export-me", "torchscript", tmp_path / "model.pt")
        scripted = torch.jit.load(str(saved))
        log_probs, lengths = scripted(torch.randn(1, 120, 80), torch.tensor([120]))
        assert log_probs.shape[0] == 1
        assert int(lengths[0]) == log_probs.shape[1]
        with pytest.raises(ApiError) as error:
            client.download_export("export-me", "onnx", tmp_path / "model.onnx")
        assert error.value.status == 404
        with pytest.raises(ApiError) as error:
            client._request("POST", "/api/models/export-me/export", json={"format": "tflite"})
        assert error.value.status == 422
    finally:
        client.delete_model("export-me")


def test_checkpoints_list_get_delete(client: AsrClient, served_run: str):
    listed = client.list_checkpoints(served_run)
    names = [c.name for c in listed]
    assert names == ["ckpt-0000100.pt", "ckpt-0000200.pt", "ckpt-0000300.pt"]
    assert all(c.valid and c.resumable and not c.averaged and not c.in_use for c in listed)
    detail = client.get_checkpoint(served_run, "ckpt-0000100.pt")
    assert detail.step == 100
    assert detail.sha256 and detail.size

    with pytest.raises(ApiError) as error:
        client.get_checkpoint(served_run, "ckpt-9999999.pt")
    assert error.value.status == 404
    with pytest.raises(ApiError) as error:
        client.get_checkpoint(served_run, "status.json")
    assert error.value.status == 400


def test_average_then_delete(client: AsrClient, served_run: str):
    averaged = client.average_checkpoints(served_run, last=2)
    assert averaged.name == "avg-0000200-0000300-2.pt"
    assert averaged.valid and averaged.averaged
    assert not averaged.resumable
    assert averaged.name in [c.name for c in client.list_checkpoints(served_run)]

    with pytest.raises(ApiError) as error:
        client.average_checkpoints(served_run, last=2)
    assert error.value.status == 409
    with pytest.raises(ApiError) as error:
        client.average_checkpoints(served_run, checkpoints=["ckpt-0000100.pt", "ckpt-0000150.pt"])
    assert error.value.status == 404
    with pytest.raises(ApiError) as error:
        client.average_checkpoints(served_run, checkpoints=["ckpt-0000100.pt", "ckpt-0000200.pt"], name="mean.pt")
    assert error.value.status == 400

    with pytest.raises(ApiError) as error:
        client.start_run(resume_from={"run_id": served_run, "checkpoint": averaged.name})
    assert error.value.status == 400
    assert "optimizer" in error.value.detail

    model = client.register_model(served_run, checkpoint=averaged.name, name="averaged-model")
    assert model.averaged_from == ["ckpt-0000200.pt", "ckpt-0000300.pt"]
    assert [e["checkpoint"] for e in model.lineage][:2] == [averaged.name, "ckpt-0000300.pt"]
    client.delete_model("averaged-model")

    client.delete_checkpoint(served_run, averaged.name)
    assert averaged.name not in [c.name for c in client.list_checkpoints(served_run)]
    with pytest.raises(ApiError) as error:
        client.delete_checkpoint(served_run, averaged.name)
    assert error.value.status == 404

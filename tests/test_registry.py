"""The model registry, checkpoint averaging and the TorchScript/ONNX exports, on the trained `overfit` run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from asrlib import checkpoints as ckpt
from asrlib.decoding import greedy_ctc_decode
from asrlib.export import ExportError, export_model
from asrlib.inference import Recognizer
from asrlib.registry import InvalidModelRequest, ModelConflict, ModelNotFound, ModelRegistry
from asrlib.training.runs import RunPaths, read_status, write_status

CLIP = "LJ001-0002.wav"


def _copy_run(source: Path, root: Path, run_id: str, *, wer: float | None = None, state: str = "completed") -> Path:
    """A run folder `run_id` whose final checkpoint is the overfit run's last one, with a chosen WER."""
    run = RunPaths(root / run_id)
    run.root.mkdir(parents=True)
    final = source / "ckpt-0000300.pt"
    (run.root / final.name).hardlink_to(final)
    sidecar = json.loads(ckpt.sidecar_path(final).read_text())
    if wer is not None:
        sidecar["metrics"] = {**sidecar["metrics"], "wer": wer, "cer": wer / 3, "valid_loss": 1.0}
    sidecar["run_id"] = run_id
    ckpt.sidecar_path(run.root / final.name).write_text(json.dumps(sidecar))
    write_status(run, state, step=300, checkpoint=str(run.root / final.name))
    return run.root


@pytest.fixture
def registry(tmp_path: Path, overfit_run) -> ModelRegistry:
    run_dir, _ = overfit_run
    root = tmp_path / "checkpoints"
    shutil.copytree(run_dir, root / "overfit", copy_function=lambda s, d: Path(d).hardlink_to(s))
    return ModelRegistry(root)


def test_register_default_checkpoint(registry: ModelRegistry, overfit_run):
    model = registry.register("overfit")
    assert model.name == "overfit"
    assert model.checkpoint == "ckpt-0000300.pt"
    assert model.run_status == "completed"
    assert Path(model.path) == registry.root / "models" / "overfit.pt"
    assert ckpt.read_info(model.path).valid

    payload = ckpt.load_checkpoint(model.path)
    for training_state in ("optimizer", "rng", "sampler", "scaler"):
        assert training_state not in payload, training_state
    assert set(payload) >= {"model", "config", "tokenizer", "metrics", "split"}
    assert payload["registry"]["run_id"] == "overfit"
    assert not ckpt.is_resumable(model.path)
    assert model.size < (registry.root / "overfit" / "ckpt-0000300.pt").stat().st_size


def test_registered_model_transcribes_like_checkpoint(registry: ModelRegistry, ljspeech_mini: Path):
    model = registry.register("overfit", name="copy")
    clip = ljspeech_mini / "wavs" / CLIP
    from_model = Recognizer.from_checkpoint(model.path).transcribe([clip])[0].text
    from_run = Recognizer.from_checkpoint(registry.root / "overfit").transcribe([clip])[0].text
    assert from_model == from_run
    assert from_model


def test_register_chosen_checkpoint_and_conflicts(registry: ModelRegistry):
    model = registry.register("overfit", checkpoint="ckpt-0000100.pt", name="early")
    assert model.step == 100
    with pytest.raises(ModelConflict):
        registry.register("overfit", name="early")
    with pytest.raises(ModelNotFound):
        registry.register("overfit", checkpoint="ckpt-0000150.pt")
    with pytest.raises(ModelNotFound):
        registry.register("no-such-run")
    for bad in ("../ckpt-0000100.pt", "a/b.pt", "status.json"):
        with pytest.raises(InvalidModelRequest):
            registry.register("overfit", checkpoint=bad)


@pytest.mark.parametrize("name", ["../x", "a/b", "", "..", ".hidden", "x" * 129])
def test_invalid_model_names(registry: ModelRegistry, name: str):
    with pytest.raises(InvalidModelRequest):
        registry.register("overfit", name=name)
    with pytest.raises(InvalidModelRequest):
        registry.get(name)


def test_unfinished_run_not_registered(registry: ModelRegistry, overfit_run):
    run_dir, _ = overfit_run
    for state in ("running", "queued", "failed"):
        root = _copy_run(run_dir, registry.root, f"run-{state}", state=state)
        with pytest.raises(ModelConflict, match=state):
            registry.register(root.name)


def test_list_filters_and_sorting(registry: ModelRegistry, overfit_run):
    run_dir, _ = overfit_run
    for run_id, wer in (("good", 0.1), ("bad", 0.6), ("middle", 0.3)):
        registry.register(_copy_run(run_dir, registry.root, run_id, wer=wer).name)
    registry.register("overfit", name="no-wer")

    assert [m.name for m in registry.list(sort="wer")] == ["good", "middle", "bad", "no-wer"]
    assert [m.name for m in registry.list(sort="wer", descending=True)] == ["bad", "middle", "good", "no-wer"]
    assert [m.name for m in registry.list(sort="name")] == ["bad", "good", "middle", "no-wer"]
    assert [m.name for m in registry.list(wer_min=0.2, wer_max=0.5)] == ["middle"]
    assert [m.name for m in registry.list(name_contains="OO")] == ["good"]
    assert registry.list(type="realtime") == []
    assert len(registry.list(type="conformer", status="completed")) == 4
    assert registry.list(dataset="somewhere-else") == []
    created = [m.created for m in registry.list(sort="created")]
    assert created == sorted(created)
    assert registry.list(created_after=created[-1]) == registry.list(sort="created")[-1:]
    good = registry.get("good")
    assert good.wer == pytest.approx(0.1)
    assert good.cer == pytest.approx(0.1 / 3)
    assert good.valid_loss == pytest.approx(1.0)
    with pytest.raises(InvalidModelRequest):
        registry.list(sort="colour")


def test_rename_and_delete(registry: ModelRegistry):
    registry.register("overfit", name="first")
    registry.register("overfit", name="second")
    with pytest.raises(ModelConflict):
        registry.rename("first", "second")
    renamed = registry.rename("first", "third")
    assert renamed.name == "third"
    assert ckpt.read_info(renamed.path).valid
    assert sorted(m.name for m in registry.list()) == ["second", "third"]
    assert not (registry.root / "models" / "first.json").exists()
    with pytest.raises(InvalidModelRequest):
        registry.rename("third", "../escape")

    with pytest.raises(ModelConflict):
        registry.delete("third", in_use={"third"})
    with pytest.raises(ModelConflict):
        registry.delete("third", in_use={Path(renamed.path)})
    registry.delete("third", in_use={"second"})
    with pytest.raises(ModelNotFound):
        registry.get("third")
    assert not Path(renamed.path).exists()


def test_lineage_follows_resumed_runs(registry: ModelRegistry, overfit_run):
    """parent -> child -> grandchild, where the child's checkpoint was pruned after the resume."""
    run_dir, _ = overfit_run
    parent = registry.root / "overfit" / "ckpt-0000200.pt"
    child = _copy_run(run_dir, registry.root, "child")
    grandchild = _copy_run(run_dir, registry.root, "grandchild")
    child_ckpt = child / "ckpt-0000300.pt"
    _set_parent(child_ckpt, parent)
    write_status(RunPaths(child), "completed", parent=str(parent))
    _set_parent(grandchild / "ckpt-0000300.pt", child_ckpt)
    ckpt.delete_checkpoint(child_ckpt)

    model = registry.register("grandchild")
    chain = [(e["run_id"], e["checkpoint"], e["exists"]) for e in model.lineage]
    assert chain == [("grandchild", "ckpt-0000300.pt", True), ("child", "ckpt-0000300.pt", False),
                     ("overfit", "ckpt-0000200.pt", True)]


def _set_parent(path: Path, parent: Path) -> None:
    sidecar = json.loads(ckpt.sidecar_path(path).read_text())
    sidecar["parent"] = str(parent)
    ckpt.sidecar_path(path).unlink()  # a hard link: replace, never write through to the original
    ckpt.sidecar_path(path).write_text(json.dumps(sidecar))


# --------------------------------------------------------------------- averaging


def test_average_is_mean_of_weights(registry: ModelRegistry):
    run = registry.root / "overfit"
    sources = [run / "ckpt-0000100.pt", run / "ckpt-0000200.pt", run / "ckpt-0000300.pt"]
    info = ckpt.average_checkpoints(sources, run / "avg-test.pt", run_id="overfit")
    assert info.valid and ckpt.read_info(info.path).valid
    averaged = ckpt.load_checkpoint(info.path)
    states = [ckpt.load_checkpoint(p)["model"] for p in sources]
    for key, value in averaged["model"].items():
        if value.is_floating_point():
            expected = sum(s[key].double() for s in states) / 3
            assert torch.allclose(value.double(), expected, atol=1e-6), key
        else:
            assert torch.equal(value, states[-1][key]), key
    assert averaged["averaged_from"] == [p.name for p in sources]
    assert averaged["step"] == 300
    assert "optimizer" not in averaged
    assert not ckpt.is_resumable(info.path)
    assert [i.path.name for i in ckpt.list_run_checkpoints(run)][-1] == "avg-test.pt"
    # Pruning looks at training checkpoints only, so it never removes an average.
    ckpt.prune_checkpoints(run, keep_last=1)
    assert (run / "avg-test.pt").exists()


def test_average_rejects_mismatch(registry: ModelRegistry, tmp_path: Path):
    run = registry.root / "overfit"
    with pytest.raises(ValueError, match="at least 2"):
        ckpt.average_checkpoints([run / "ckpt-0000100.pt"], tmp_path / "avg.pt")
    payload = ckpt.load_checkpoint(run / "ckpt-0000100.pt")
    payload["config"]["model"]["d_model"] = 288
    ckpt.save_checkpoint(tmp_path / "other.pt", payload, step=1, epoch=0)
    with pytest.raises(ckpt.CheckpointError, match=r"model\.d_model"):
        ckpt.average_checkpoints([run / "ckpt-0000100.pt", tmp_path / "other.pt"], tmp_path / "avg.pt")
    assert not (tmp_path / "avg.pt").exists()


def test_delete_checkpoint_in_use(registry: ModelRegistry):
    path = registry.root / "overfit" / "ckpt-0000100.pt"
    with pytest.raises(ckpt.CheckpointInUse):
        ckpt.delete_checkpoint(path, in_use={path.resolve()})
    ckpt.delete_checkpoint(path)
    assert not path.exists()
    assert not ckpt.sidecar_path(path).exists()
    with pytest.raises(FileNotFoundError):
        ckpt.delete_checkpoint(path)


# --------------------------------------------------------------------- export


def _real_features(recognizer: Recognizer, clip: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from asrlib.audio import load_audio

    waveform = load_audio(clip, recognizer.sample_rate)
    features = recognizer.extractor(waveform)
    return features.unsqueeze(0), torch.tensor([features.shape[0]])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_decodes_like_recognizer(registry: ModelRegistry, ljspeech_mini: Path, fmt: str):
    model = registry.register("overfit", name="exported")
    path = registry.export("exported", fmt)
    assert path.is_file()
    meta = json.loads((path.parent / f"{fmt}.json").read_text())
    assert meta["format"] == fmt
    assert meta["max_abs_difference"] < 1e-3
    assert meta["tokenizer"] == ckpt.load_checkpoint(model.path)["tokenizer"]
    assert registry.get("exported").exports[fmt]["path"] == str(path)

    recognizer = Recognizer.from_checkpoint(model.path)
    clip = ljspeech_mini / "wavs" / CLIP
    features, lengths = _real_features(recognizer, clip)
    if fmt == "torchscript":
        with torch.no_grad():
            log_probs, out_lengths = torch.jit.load(str(path))(features, lengths)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"features": features.numpy(), "lengths": lengths.numpy()})
        log_probs, out_lengths = torch.from_numpy(outputs[0]), torch.from_numpy(np.asarray(outputs[1]))
    hypothesis = greedy_ctc_decode(log_probs, out_lengths, recognizer.tokenizer.blank_id)[0]
    assert recognizer.tokenizer.decode(hypothesis.tokens) == recognizer.transcribe([clip])[0].text

    renamed = registry.rename("exported", "exported-2")
    assert fmt in renamed.exports
    registry.delete("exported-2")
    assert not (registry.root / "models" / "exports" / "exported-2").exists()


def test_export_invalid_format(registry: ModelRegistry):
    registry.register("overfit", name="m")
    with pytest.raises(InvalidModelRequest):
        registry.export("m", "tflite")


def test_export_reports_script_failure(tmp_path: Path):
    class Unscriptable(torch.nn.Module):
        def forward(self, features, lengths):
            try:  # TorchScript has no try blocks
                return features.log_softmax(-1), lengths
            finally:
                pass

    with pytest.raises(ExportError, match=r"torch\.jit\.script failed"):
        export_model(Unscriptable(), "torchscript", tmp_path, metadata={"config": {"features": {"num_mel_bins": 80}}})


def test_status_untouched_by_register(registry: ModelRegistry):
    before = read_status(RunPaths(registry.root / "overfit"))
    registry.register("overfit")
    assert read_status(RunPaths(registry.root / "overfit")) == before


@pytest.mark.parametrize("conv_norm", ["layer", "batch"])
def test_torchscript_export_both_conv_norms(tmp_path: Path, conv_norm: str):
    from asrlib.config import load_settings, resolve_run_config
    from asrlib.models import build_model
    from tests.conftest import REPO_ROOT

    config = resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), preset="tiny",
                                overrides={"model": {"conv_norm": conv_norm, "num_layers": 2}})
    torch.manual_seed(0)
    model = build_model(config, vocab_size=30).eval()
    info = export_model(model, "torchscript", tmp_path, metadata={"config": config.to_dict()})
    assert info["max_abs_difference"] < 1e-3

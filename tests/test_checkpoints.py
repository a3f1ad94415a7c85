"""Checkpoint files: atomic writes, sidecar verification, listing, pruning and loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asrlib.atomic import TEMP_PREFIX, atomic_open
from asrlib.checkpoints import (
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_name,
    file_sha256,
    latest_valid,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    sidecar_path,
)
from asrlib.config import RunConfig


def _payload(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return {
        "model": torch.nn.Linear(4, 3).state_dict(),
        "config": RunConfig().to_dict(),
        "tokenizer": {"type": "char", "symbols": list("ab")},
        "sampler": {"epoch": 1, "position": 2, "seed": 0, "world_size": 1},
        "rng": {"torch": torch.get_rng_state(), "python": [1, 2, 3]},
        "step": seed,
    }


def _save(run_dir: Path, step: int, **kwargs) -> Path:
    path = run_dir / checkpoint_name(step)
    save_checkpoint(path, _payload(step), step=step, epoch=0, **kwargs)
    return path


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_save_load_round_trip(tmp_path):
    payload = _payload(3)
    path = tmp_path / checkpoint_name(3)
    save_checkpoint(path, payload, step=3, epoch=1, metrics={"wer": 0.5})
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == FORMAT_VERSION
    assert loaded["config"] == payload["config"]
    assert loaded["sampler"] == payload["sampler"]
    for key, tensor in payload["model"].items():
        assert torch.equal(loaded["model"][key], tensor), key


def test_file_loads_weights_only(tmp_path):
    path = _save(tmp_path, 1)
    payload = torch.load(path, weights_only=True)
    assert payload["step"] == 1


def test_load_rejects_pickled_objects(tmp_path):
    """weights_only loading refuses arbitrary pickled classes, even with a matching sidecar."""
    path = tmp_path / checkpoint_name(1)
    save_checkpoint(path, {**_payload(), "extra": Path("/etc")}, step=1, epoch=0)
    with pytest.raises(CheckpointError, match=checkpoint_name(1)):
        load_checkpoint(path)


def test_sidecar_contents(tmp_path):
    path = _save(tmp_path, 7, metrics={"cer": 0.1}, parent="/runs/a/ckpt-0000005.pt", run_id="run-a")
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["path"] == path.name
    assert sidecar["step"] == 7
    assert sidecar["sha256"] == file_sha256(path)
    assert sidecar["size"] == path.stat().st_size
    assert sidecar["metrics"] == {"cer": 0.1}
    assert sidecar["parent"] == "/runs/a/ckpt-0000005.pt"
    assert sidecar["run_id"] == "run-a"


def test_save_leaves_no_temp_files(tmp_path):
    _save(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000001.json", "ckpt-0000001.pt"]


def test_flipped_byte_listed_corrupt(tmp_path):
    path = _save(tmp_path, 1)
    _flip_byte(path, path.stat().st_size // 2)
    [info] = list_checkpoints(tmp_path)
    assert not info.valid
    assert "sha256" in info.problem


def test_flipped_byte_load_raises(tmp_path):
    path = _save(tmp_path, 1)
    _flip_byte(path, 100)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_truncated_file_listed_corrupt(tmp_path):
    path = _save(tmp_path, 1)
    path.write_bytes(path.read_bytes()[:-10])
    [info] = list_checkpoints(tmp_path, verify=False)
    assert not info.valid
    assert "size" in info.problem


def test_orphan_checkpoint_listed_invalid(tmp_path):
    path = _save(tmp_path, 2)
    sidecar_path(path).unlink()
    [info] = list_checkpoints(tmp_path)
    assert not info.valid
    assert "sidecar missing" in info.problem


def test_orphan_checkpoint_load_raises(tmp_path):
    path = _save(tmp_path, 2)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match=path.name):
        load_checkpoint(path)


def test_temp_file_listed_invalid(tmp_path):
    _save(tmp_path, 1)
    leftover = tmp_path / f"{TEMP_PREFIX}ckpt-0000002.pt.k3j2h1"
    leftover.write_bytes(b"partial")
    infos = list_checkpoints(tmp_path)
    assert [i.path.name for i in infos] == ["ckpt-0000001.pt", leftover.name]
    assert infos[0].valid
    assert not infos[1].valid
    assert "temporary" in infos[1].problem


def test_interrupted_write_leaves_target(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(target, "wb") as handle:
        handle.write(b"new")
        raise RuntimeError("crash during the write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_unreadable_sidecar_listed_invalid(tmp_path):
    path = _save(tmp_path, 1)
    sidecar_path(path).write_text("{not json", encoding="utf-8")
    [info] = list_checkpoints(tmp_path)
    assert not info.valid
    assert "sidecar unreadable" in info.problem


@pytest.mark.parametrize("text", ["null", "[1, 2]", '"ckpt"'])
def test_non_object_sidecar_listed_invalid(tmp_path, text):
    path = _save(tmp_path, 1)
    sidecar_path(path).write_text(text, encoding="utf-8")
    [info] = list_checkpoints(tmp_path)
    assert not info.valid
    assert "expected a JSON object" in info.problem


def test_listing_sorted_by_step(tmp_path):
    for step in (30, 4, 100):
        _save(tmp_path, step)
    assert [i.step for i in list_checkpoints(tmp_path)] == [4, 30, 100]


def test_prune_keeps_last_and_kept(tmp_path):
    paths = [_save(tmp_path, step) for step in (1, 2, 3, 4, 5)]
    removed = prune_checkpoints(tmp_path, keep_last=2, keep={paths[0]})
    assert removed == [paths[1], paths[2]]
    assert [i.step for i in list_checkpoints(tmp_path)] == [1, 4, 5]
    assert not sidecar_path(paths[1]).exists()
    assert all(i.valid for i in list_checkpoints(tmp_path))


def test_prune_zero_keeps_all(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    assert prune_checkpoints(tmp_path, keep_last=0) == []
    assert len(list_checkpoints(tmp_path)) == 3


def test_prune_ignores_invalid(tmp_path):
    orphan = _save(tmp_path, 1)
    sidecar_path(orphan).unlink()
    _save(tmp_path, 2)
    _save(tmp_path, 3)
    prune_checkpoints(tmp_path, keep_last=1)
    assert orphan.exists()
    assert [i.step for i in list_checkpoints(tmp_path) if i.valid] == [3]


def test_latest_valid_skips_corrupt(tmp_path):
    for step in (10, 20, 30):
        _save(tmp_path, step)
    _flip_byte(tmp_path / checkpoint_name(30), 200)
    latest = latest_valid(tmp_path)
    assert latest is not None
    assert latest.step == 20


def test_latest_valid_empty_is_none(tmp_path):
    assert latest_valid(tmp_path) is None


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / checkpoint_name(1))


def test_load_foreign_payload_rejected(tmp_path):
    path = tmp_path / checkpoint_name(1)
    save_checkpoint(path, {"weights": torch.zeros(2)}, step=1, epoch=0)
    with pytest.raises(CheckpointError, match="not an asrlib checkpoint"):
        load_checkpoint(path)


def test_load_newer_format_rejected(tmp_path):
    path = tmp_path / checkpoint_name(1)
    torch.save({**_payload(), "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="upgrade asrlib"):
        load_checkpoint(path, verify=False)

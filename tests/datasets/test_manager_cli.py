"""The catalog, imports, listing and the `asr dataset` subcommands."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from asrlib.config import REPO_ROOT, load_settings
from asrlib.datasets.catalog import load_catalog, resolve_dataset_path
from asrlib.datasets.cli import add_dataset_parser
from asrlib.datasets.manager import DatasetManager


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="asr")
    parser.add_argument("--config")
    add_dataset_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def write_config(tmp_path: Path, settings: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_repository_catalog_entries() -> None:
    catalog = load_catalog(load_settings(REPO_ROOT / "config.yaml"))

    ljspeech = catalog["ljspeech"]
    assert ljspeech.url == "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"
    assert ljspeech.size_bytes == 2748572632
    assert ljspeech.sha256 == "be1a30453f28eb8dd26af4101ae40cbf2c50413b1bb21936cbcdc6fae3de8aa5"
    assert ljspeech.archive_root == "LJSpeech-1.1"
    assert ljspeech.path == REPO_ROOT / "data" / "ljspeech"
    assert ljspeech.path_env == "ASR_LJSPEECH_PATH"
    assert ljspeech.archive_name == "LJSpeech-1.1.tar.bz2"
    assert not ljspeech.synthetic
    assert catalog["demo"].synthetic
    assert not catalog["demo"].downloadable


def test_catalog_path_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_LJSPEECH_PATH", str(tmp_path / "elsewhere"))

    catalog = load_catalog(load_settings(REPO_ROOT / "config.yaml"))

    assert catalog["ljspeech"].path == tmp_path / "elsewhere"


@pytest.mark.parametrize(("entry", "message"), [
    ({"sha256": "abc"}, "sha256: expected 64 hexadecimal digits"),
    ({"size_bytes": -1}, "size_bytes: expected a positive integer"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"mirrors": "http://x"}, "mirrors: expected a list of URLs"),
])
def test_catalog_invalid_entry_rejected(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_catalog({"datasets": {"x": entry}})


def test_resolve_dataset_path_cases(tmp_path: Path) -> None:
    settings = {"paths": {"data": str(tmp_path)}, "datasets": {"lj": {"path": str(tmp_path / "lj")}}}
    (tmp_path / "mine").mkdir()

    assert resolve_dataset_path("lj", settings) == tmp_path / "lj"
    assert resolve_dataset_path(str(tmp_path / "mine"), settings) == (tmp_path / "mine").resolve()
    assert resolve_dataset_path("mine", settings) == tmp_path / "mine"
    with pytest.raises(ValueError, match=r"dataset 'nope' not found.*catalog: lj"):
        resolve_dataset_path("nope", settings)


def test_import_folder_copy_and_symlink(
    tmp_path: Path, downloaded_ljspeech_subset: Path, make_catalog_settings: Any, ljspeech_archive: Any
) -> None:
    source = tmp_path / "source"
    shutil.copytree(downloaded_ljspeech_subset, source / "LJSpeech-1.1")
    manager = DatasetManager(make_catalog_settings(tmp_path, "http://127.0.0.1:9/unused", ljspeech_archive))

    copied = manager.import_("mycopy", source)
    linked = manager.import_("ljspeech", source, mode="symlink", validate=False)

    assert copied == tmp_path / "data" / "mycopy"
    assert not copied.is_symlink()
    assert (copied / "validation.json").is_file()
    assert linked.is_symlink()
    assert os.readlink(linked) == str((source / "LJSpeech-1.1").resolve())
    names = {status.name: status for status in manager.list()}
    assert names["mycopy"].present
    assert not names["mycopy"].in_catalog
    assert names["mycopy"].clips == len(ljspeech_archive.clip_ids)
    assert names["ljspeech"].present
    with pytest.raises(FileExistsError, match="already exists"):
        manager.import_("mycopy", source)


def test_import_archive_extracts(tmp_path: Path, make_catalog_settings: Any, ljspeech_archive: Any) -> None:
    manager = DatasetManager(make_catalog_settings(tmp_path, "http://127.0.0.1:9/unused", ljspeech_archive))

    path = manager.import_("ljspeech", ljspeech_archive.path, validate=False)

    assert (path / "metadata.csv").is_file()
    assert len(list((path / "wavs").iterdir())) == len(ljspeech_archive.clip_ids)


def test_import_rejects_non_dataset_folder(tmp_path: Path, make_catalog_settings: Any, ljspeech_archive: Any) -> None:
    manager = DatasetManager(make_catalog_settings(tmp_path, "http://127.0.0.1:9/unused", ljspeech_archive))
    (tmp_path / "empty").mkdir()

    with pytest.raises(ValueError, match="not an LJSpeech-format folder"):
        manager.import_("other", tmp_path / "empty")


def test_cli_download_list_validate(
    tmp_path: Path, archive_server: Any, make_catalog_settings: Any, ljspeech_archive: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, make_catalog_settings(tmp_path, archive_server.url(), ljspeech_archive))

    assert run_cli(["--config", str(config), "dataset", "list", "--json"]) == 0
    before = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert run_cli(["--config", str(config), "dataset", "download", "ljspeech", "--retries", "1"]) == 0
    downloaded = capsys.readouterr().out
    assert run_cli(["--config", str(config), "dataset", "list"]) == 0
    table = capsys.readouterr().out
    assert run_cli(["--config", str(config), "dataset", "validate", "ljspeech"]) == 0
    summary = capsys.readouterr().out

    assert not before["ljspeech"]["present"]
    assert before["demo"]["synthetic"]
    assert f"{len(ljspeech_archive.clip_ids)} usable clips" in downloaded
    ljspeech_row = next(line for line in table.splitlines() if line.startswith("ljspeech"))
    assert "present" in ljspeech_row
    assert "recorded" in ljspeech_row
    assert str(len(ljspeech_archive.clip_ids)) in ljspeech_row
    demo_row = next(line for line in table.splitlines() if line.startswith("demo"))
    assert "synthetic" in demo_row
    assert "split: train 16, valid 2, test 2" in summary


def test_cli_error_is_one_line_exit_2(
    tmp_path: Path, make_catalog_settings: Any, ljspeech_archive: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, make_catalog_settings(tmp_path, "http://127.0.0.1:9/unused", ljspeech_archive))

    code = run_cli(["--config", str(config), "dataset", "validate", "ljspeech"])

    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: dataset 'ljspeech' is not present")
    assert "asr dataset download ljspeech" in err
    assert len(err.splitlines()) == 1


def test_cli_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["dataset", "--help"])

    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for command in ("list", "download", "import", "validate", "demo"):
        assert command in out

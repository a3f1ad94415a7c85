"""Pack the files that bench/gpu_device_check.sh needs on a GPU machine that has no network.

The H200 machines this check was written for run Python 3.12 with torch and torchaudio
installed, reach no package index, and receive only the repository (at most 64 MiB with carried
folders). So two things travel in build/device-carry/, which .gitignore already ignores:

- wheels/: the packages that asrlib's training code imports and that machine's image lacks, at
  the versions installed here, built for its Python.
- ljspeech-mini-flac/: the benchmark clips as FLAC, about 58 % of the WAV size, with the SHA-256
  of each original WAV. `unpack` decodes them back and checks that every WAV is byte-identical.

Here, from the repository root:     .venv/bin/python bench/device_files.py pack
There, after installing the wheels: python3 bench/device_files.py unpack SRC DEST
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CARRY = REPO_ROOT / "build" / "device-carry"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "ljspeech-mini"
MANIFEST = "wav-sha256.json"
CARRY_LIMIT_BYTES = 64 * 2**20  # the most the copy to the GPU machine takes: working tree plus carried folders

# Imported on the training path (asrlib.audio: av and soundfile; asrlib.decoding: jiwer) and not
# in the H200 machines' image as of 2026-11. cffi and pycparser are soundfile's dependencies, and
# rapidfuzz is jiwer's.
CARRIED_PACKAGES = ("av", "soundfile", "cffi", "pycparser", "jiwer", "rapidfuzz")
# The manylinux tags pip must accept for an x86-64 Linux wheel; pip matches each tag exactly.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def pack_data(data: Path, target: Path) -> None:
    """Encode every WAV of `data` as FLAC under `target`, checking that it decodes to the same bytes."""
    import soundfile as sf

    if target.exists():
        shutil.rmtree(target)
    (target / "wavs").mkdir(parents=True)
    for path in data.iterdir():
        if path.is_file():
            shutil.copy2(path, target / path.name)
    hashes: dict[str, str] = {}
    for wav in sorted((data / "wavs").glob("*.wav")):
        original = wav.read_bytes()
        if sf.info(io.BytesIO(original)).subtype != "PCM_16":
            raise ValueError(f"{wav}: only 16-bit PCM WAV files are packed, because unpack writes PCM_16")
        samples, rate = sf.read(io.BytesIO(original), dtype="int16")
        flac = target / "wavs" / f"{wav.stem}.flac"
        sf.write(flac, samples, rate, format="FLAC", subtype="PCM_16")
        decoded, _ = sf.read(flac, dtype="int16")
        if wav_bytes(decoded, rate) != original:
            raise ValueError(f"{wav}: its WAV header is not the one soundfile writes, so unpack could "
                             "not restore the file byte for byte; carry the WAV files instead")
        hashes[f"wavs/{wav.name}"] = sha256(original)
    (target / MANIFEST).write_text(json.dumps(hashes, indent=1) + "\n", encoding="utf-8")
    print(f"packed {len(hashes)} clips into {target}")


def download_wheels(target: Path, python_version: str) -> None:
    """Download the wheels of CARRIED_PACKAGES, at the versions installed here, for `python_version`."""
    if target.exists():
        shutil.rmtree(target)
    specs = [f"{name}=={version(name)}" for name in CARRIED_PACKAGES]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", "--dest", str(target)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, *specs], check=True)
    print(f"downloaded {', '.join(specs)} into {target}")


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def working_tree_bytes() -> int:
    """Sum the sizes of the tracked and the untracked, not ignored files, which always go to the GPU machine."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO_ROOT, check=True, capture_output=True).stdout
    paths = [REPO_ROOT / name for name in listing.decode().split("\0") if name]
    return sum(path.stat().st_size for path in paths if path.is_file())


def pack(args: argparse.Namespace) -> int:
    if not (args.data / "metadata.csv").is_file():
        raise FileNotFoundError(f"no metadata.csv in {args.data}; pass --data with an LJSpeech-format folder")
    pack_data(args.data, args.carry / "ljspeech-mini-flac")
    if not args.no_wheels:
        download_wheels(args.carry / "wheels", args.python_version)
    carried, tree = folder_bytes(args.carry), working_tree_bytes()
    total = carried + tree
    print(f"{args.carry}: {carried / 2**20:.1f} MiB; working tree {tree / 2**20:.1f} MiB; "
          f"together {total / 2**20:.1f} MiB of the {CARRY_LIMIT_BYTES / 2**20:.0f} MiB limit")
    if total > CARRY_LIMIT_BYTES:
        print("error: too large to travel to the device machine", file=sys.stderr)
        return 1
    print(f'carry: ["{args.carry.relative_to(REPO_ROOT)}"]')
    return 0


def unpack(args: argparse.Namespace) -> int:
    """Decode the FLAC clips of `source` into WAV files under `dest` and check each one's SHA-256."""
    import soundfile as sf

    hashes: dict[str, str] = json.loads((args.source / MANIFEST).read_text(encoding="utf-8"))
    (args.dest / "wavs").mkdir(parents=True, exist_ok=True)
    for path in args.source.iterdir():
        if path.is_file() and path.name != MANIFEST:
            shutil.copy2(path, args.dest / path.name)
    mismatched = []
    for name, expected in hashes.items():
        flac = args.source / Path(name).with_suffix(".flac")
        samples, rate = sf.read(flac, dtype="int16")
        data = wav_bytes(samples, rate)
        (args.dest / name).write_bytes(data)
        if sha256(data) != expected:
            mismatched.append(name)
    if mismatched:
        print(f"error: {len(mismatched)} restored WAV files differ from the originals, e.g. {mismatched[0]}",
              file=sys.stderr)
        return 1
    print(f"restored {len(hashes)} clips into {args.dest}, each byte-identical to its original")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pack_parser = commands.add_parser("pack", help="fill build/device-carry here (needs pip's network access)")
    pack_parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                             help=f"LJSpeech-format folder to pack (default: {DEFAULT_DATA})")
    pack_parser.add_argument("--carry", type=Path, default=DEFAULT_CARRY,
                             help=f"folder to fill (default: {DEFAULT_CARRY})")
    pack_parser.add_argument("--python-version", default="3.12",
                             help="Python of the device machine's image, for the wheels (default: 3.12)")
    pack_parser.add_argument("--no-wheels", action="store_true", help="pack the clips only")
    pack_parser.set_defaults(func=pack)
    unpack_parser = commands.add_parser("unpack", help="restore the WAV files on the device machine")
    unpack_parser.add_argument("source", type=Path, help="the packed ljspeech-mini-flac folder")
    unpack_parser.add_argument("dest", type=Path, help="folder to write the LJSpeech-format copy into")
    unpack_parser.set_defaults(func=unpack)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

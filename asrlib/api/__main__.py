"""Serve the API with the host and port of config.yaml: `python -m asrlib.api [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import os

import uvicorn

from asrlib.api.settings import ApiSettings
from asrlib.config import load_settings
from asrlib.logs import setup_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m asrlib.api", description="Serve the workbench API.")
    parser.add_argument("--config", help="config.yaml to read (default: $ASR_CONFIG, ./config.yaml, the repository's)")
    parser.add_argument("--host", help="interface to listen on (default: api.host; 0.0.0.0 inside a container)")
    parser.add_argument("--port", type=int, help="TCP port (default: api.port)")
    args = parser.parse_args(argv)
    if args.config:
        os.environ["ASR_CONFIG"] = args.config  # asrlib.api.app reads it when uvicorn imports the app
    api = ApiSettings.from_settings(load_settings(args.config))
    setup_logging()
    uvicorn.run("asrlib.api.app:app", host=args.host or api.host, port=args.port or api.port)


if __name__ == "__main__":
    main()

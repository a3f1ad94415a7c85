"""The `api:` section of config.yaml as a typed, validated object."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

DEFAULT_CORS_ORIGINS = ("http://localhost:58080", "http://127.0.0.1:58080")


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"  # the container overrides it with --host 0.0.0.0
    port: int = 58081
    upload_max_bytes: int = 50 * 1024 * 1024  # largest audio file POST /api/transcribe accepts
    json_max_bytes: int = 1024 * 1024  # largest body of every other request
    cors_origins: tuple[str, ...] = DEFAULT_CORS_ORIGINS  # the dashboard's origins
    max_loaded_models: int = 2  # recognizers kept in memory for /api/transcribe (least recently used out)
    inference_device: str = "cpu"  # torch device of the loaded recognizers
    event_history: int = 200  # events kept per channel and replayed to a new WebSocket subscriber
    event_poll_s: float = 0.2  # seconds between reads of the active runs' metrics.jsonl

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> ApiSettings:
        raw = settings.get("api") or {}
        if not isinstance(raw, dict):
            raise ValueError(f"api: expected a mapping, got {type(raw).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"unknown config key api.{unknown[0]}; valid keys: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            default = getattr(cls, name)
            if name == "cors_origins":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"api.cors_origins: expected a list of origins, got {value!r}")
                values[name] = tuple(value)
            elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                values[name] = float(value)
            elif not isinstance(value, type(default)) or isinstance(value, bool):
                raise ValueError(f"api.{name}: expected {type(default).__name__}, got {value!r}")
            else:
                values[name] = value
        api = cls(**values)
        for name in ("upload_max_bytes", "json_max_bytes", "max_loaded_models", "event_history"):
            if getattr(api, name) < 1:
                raise ValueError(f"api.{name} must be at least 1, got {getattr(api, name)}")
        if api.event_poll_s <= 0:
            raise ValueError(f"api.event_poll_s must be positive, got {api.event_poll_s}")
        return api

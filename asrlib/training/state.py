"""Checkpoint contents beyond the weights that an exact resume needs: RNG states and compatibility checks."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

# Sections that define the network and its inputs: a resumed run must not change them.
FROZEN_SECTIONS = ("model", "features", "text")
# Data settings that change neither which clips are used nor their order.
ORDER_NEUTRAL_DATA_KEYS = ("num_workers", "prefetch_factor", "cache_features", "feature_cache_dir")


def config_differences(old: dict[str, Any], new: dict[str, Any], sections=FROZEN_SECTIONS) -> list[str]:
    """Dotted keys whose values differ between two config dicts, within `sections`."""
    diffs = []
    for section in sections:
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if key != "preset" and a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def same_data_order(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when two data sections select the same clips in the same order."""
    def strip(section: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in section.items() if k not in ORDER_NEUTRAL_DATA_KEYS}

    return strip(old) == strip(new)


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, Python and NumPy generator states, in types `torch.load(weights_only=True)` accepts."""
    version, internal, gauss = random.getstate()
    _, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)

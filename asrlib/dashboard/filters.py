"""The Models tab's filter form as a value, and its translation into `/api/models` query parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from asrlib.dashboard.errors import FormError

ALL = ""  # the "any" choice of a filter dropdown
SORT_KEYS = ("created", "wer", "name", "size")  # as asrlib.registry.SORT_KEYS; the API rejects others


@dataclass(frozen=True)
class ModelFilter:
    """The filter fields as the form has them; WER bounds are percentages, None when the box is empty."""

    model_type: str = ALL
    dataset: str = ALL
    status: str = ALL
    name_contains: str = ""
    wer_min_percent: float | None = None
    wer_max_percent: float | None = None
    sort: str = "created"
    descending: bool = True

    def to_params(self) -> dict[str, Any]:
        """Return the keyword arguments of `AsrClient.list_models`; FormError for an impossible range."""
        wer_min = _fraction(self.wer_min_percent, "wer_min")
        wer_max = _fraction(self.wer_max_percent, "wer_max")
        if wer_min is not None and wer_max is not None and wer_min > wer_max:
            raise FormError("models.filter.wer_range_invalid", low=self.wer_min_percent, high=self.wer_max_percent)
        if self.sort not in SORT_KEYS:
            raise FormError("models.filter.sort_invalid", sort=self.sort, choices=", ".join(SORT_KEYS))
        name = self.name_contains.strip()
        return {
            "type": self.model_type or None,
            "dataset": self.dataset or None,
            "status": self.status or None,
            "name_contains": name or None,
            "wer_min": wer_min,
            "wer_max": wer_max,
            "sort": self.sort,
            "descending": self.descending,
        }

    def toggled_sort(self, key: str) -> ModelFilter:
        """Return the filter after a click on a column header: the same column flips the order."""
        if key == self.sort:
            return replace(self, descending=not self.descending)
        # Names read best A to Z and error rates best first; times and sizes newest or largest first.
        return replace(self, sort=key, descending=key in ("created", "size"))


def _fraction(percent: float | None, field: str) -> float | None:
    if percent is None:
        return None
    if not math.isfinite(percent) or percent < 0:
        raise FormError("models.filter.wer_invalid", field=field, value=percent)
    return percent / 100


def parse_percent(text: str, field: str) -> float | None:
    """Read a WER bound typed as a percentage ("12.5" or "12.5 %"); None for an empty box."""
    cleaned = text.strip().rstrip("%").strip().replace(",", ".")
    if not cleaned:
        return None
    try:
        value = float(cleaned)
    except ValueError:
        raise FormError("models.filter.wer_invalid", field=field, value=text.strip()) from None
    if not math.isfinite(value) or value < 0:
        raise FormError("models.filter.wer_invalid", field=field, value=text.strip())
    return value

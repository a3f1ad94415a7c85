"""Errors of the dashboard's own forms, carried as catalog keys so they are shown in the page's language."""

from __future__ import annotations

from typing import Any


class FormError(ValueError):
    """An invalid form field; `key` is the catalog message and `params` its fields."""

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params

"""Replacing the options of a selection widget without losing the user's choice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets


def replace_options(widget: widgets.widget_selection._Selection, options: Sequence[Any],
                    preferred: Any = None) -> None:
    """Set the options of a Dropdown, Select or ToggleButtons: keep the current value if it is still
    offered, else take `preferred` if offered, else the first option (None when there is none).

    ipywidgets 8 leaves `value` at None when options are assigned to a widget that had none, so a
    new list always needs an explicit choice.
    """
    values = [option[1] if isinstance(option, tuple) else option for option in options]
    current = widget.value
    widget.options = list(options)
    for candidate in (current, preferred):
        if candidate is not None and candidate in values:
            widget.value = candidate
            return
    widget.value = values[0] if values else None

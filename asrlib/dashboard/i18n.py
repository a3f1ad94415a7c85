"""Translation of the dashboard's texts, with widgets that follow the chosen language.

Every text the dashboard shows comes from `CATALOG` in `asrlib.dashboard.messages` through
`Messages.t`. A widget attribute bound with `Messages.bind` is rewritten whenever the language
changes, so the page switches language in place without losing its state (live curves, uploads).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import traitlets

from asrlib.dashboard.messages import CATALOG
from asrlib.dashboard.selection import replace_options

log = logging.getLogger(__name__)

LANGUAGES = ("ja", "en")
DEFAULT_LANGUAGE = "ja"
LANGUAGE_NAMES = {"ja": "日本語", "en": "English"}


def normalize_language(value: object) -> str:
    """Map a config value such as "ja", "JA" or "en-US" to a supported language; Japanese otherwise."""
    if isinstance(value, str):
        code = value.strip().lower().replace("_", "-").split("-")[0]
        if code in LANGUAGES:
            return code
    return DEFAULT_LANGUAGE


@dataclass(frozen=True)
class Lazy:
    """A message parameter that is itself a catalog key, translated each time the message renders."""

    key: str


def placeholders(template: str) -> set[str]:
    """Names of the `{name}` fields of a format string, used to check both languages take the same ones."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


class Messages(traitlets.HasTraits):
    """The message catalog in the current language; observers re-render when `language` changes."""

    language = traitlets.Unicode(DEFAULT_LANGUAGE)

    def __init__(self, language: str = DEFAULT_LANGUAGE, catalog: dict[str, dict[str, str]] | None = None) -> None:
        super().__init__(language=normalize_language(language))
        self.catalog = CATALOG if catalog is None else catalog
        self._listeners: list[Callable[[], None]] = []
        self.observe(self._notify, names="language")

    @traitlets.validate("language")
    def _validate_language(self, proposal: dict[str, Any]) -> str:
        return normalize_language(proposal["value"])

    def t(self, key: str, **params: Any) -> str:
        """Return the text of `key` in the current language, formatted with `params`.

        A missing key or a missing parameter shows the key itself instead of raising, so a gap in
        the catalog never takes a tab down. The catalog test catches such gaps.
        """
        entry = self.catalog.get(key)
        if entry is None:
            log.warning("message key %r is not in the catalog", key)
            return key
        template = entry.get(self.language) or entry.get(DEFAULT_LANGUAGE) or key
        values = {name: self.t(value.key) if isinstance(value, Lazy) else value for name, value in params.items()}
        try:
            return template.format(**values)
        except (KeyError, IndexError, ValueError) as err:
            log.warning("message %r in %s: cannot format with %s (%s)", key, self.language, sorted(params), err)
            return template

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after every language change."""
        self._listeners.append(callback)

    def bind(self, widget: traitlets.HasTraits, attribute: str, key: str, **params: Any) -> None:
        """Set `widget.attribute` to the text of `key` now and after every language change."""

        def apply() -> None:
            setattr(widget, attribute, self.t(key, **params))

        apply()
        self.on_change(apply)

    def bind_options(self, widget: traitlets.HasTraits, choices: Iterable[tuple[str, Any]]) -> None:
        """Give a Dropdown, ToggleButtons or Select translated labels: `choices` are (key, value) pairs.

        The selected value is kept across language changes.
        """
        pairs = list(choices)

        def apply() -> None:
            replace_options(widget, [(self.t(key), value) for key, value in pairs])

        apply()
        self.on_change(apply)

    def _notify(self, _change: dict[str, Any]) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:  # one broken view must not keep the others in the old language
                log.exception("re-rendering after the language change failed")

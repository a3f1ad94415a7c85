"""Driving the dashboard page in Chromium the way a person would: tabs, fields, uploads, screenshots."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, Page

TAB_ORDER = ("training", "inference", "realtime", "models", "checkpoints", "datasets")
WIDGET_ERROR = "Error displaying widget"
LANGUAGE_BUTTONS = {"ja": "日本語", "en": "English"}


def wait_until(condition: Callable[[], Any], timeout_s: float, description: str, interval_s: float = 0.25) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `description` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {description}")
        time.sleep(interval_s)


class DashboardPage:
    def __init__(self, page: Page) -> None:
        self.page = page
        self.console_errors: list[str] = []
        page.on("console", lambda message: self.console_errors.append(message.text)
                if message.type == "error" else None)

    @classmethod
    def open(cls, context: BrowserContext, url: str, timeout_s: float) -> DashboardPage:
        page = context.new_page()
        dashboard = cls(page)
        page.goto(url, timeout=timeout_s * 1000)
        page.wait_for_selector(".asr-app", timeout=timeout_s * 1000)
        page.wait_for_selector(".asr-connection [data-connected='True']", timeout=timeout_s * 1000)
        return dashboard

    def close(self) -> None:
        self.page.close()

    def switch_language(self, language: str) -> None:
        self.page.click(f".asr-language button:has-text('{LANGUAGE_BUTTONS[language]}')")
        expected = {"ja": "学習制御", "en": "Training"}[language]
        self.page.wait_for_selector(f".asr-tabs .lm-TabBar-tab:has-text('{expected}')")

    def open_tab(self, name: str) -> None:
        self.page.click(f".asr-tabs .lm-TabBar-tab >> nth={TAB_ORDER.index(name)}")
        self.page.wait_for_selector(f".asr-tab-{name}", state="visible")
        time.sleep(0.5)  # bqplot sizes its figures once they become visible

    def tab_titles(self) -> list[str]:
        return [t.strip() for t in self.page.locator(".asr-tabs .lm-TabBar-tab").all_inner_texts()]

    def text(self, selector: str) -> str:
        locator = self.page.locator(selector)
        return locator.first.inner_text() if locator.count() else ""

    def body_text(self) -> str:
        return self.page.locator("body").inner_text()

    def fill_number(self, widget_class: str, value: float | int) -> None:
        field = self.page.locator(f".{widget_class} input")
        field.fill(str(value))
        field.press("Tab")  # ipywidgets sends the value on change, i.e. when the field loses focus

    def choose(self, widget_class: str, prefix: str, timeout_s: float = 60) -> str:
        """Select the dropdown option whose label starts with `prefix` (labels add details to names)."""
        select = self.page.locator(f".{widget_class} select")

        def find_label() -> str | None:
            labels = select.locator("option").all_inner_texts()
            return next((label for label in labels if label.startswith(prefix)), None)

        label = wait_until(find_label, timeout_s, f"an option {prefix!r} in .{widget_class}")
        select.select_option(label=label)
        return label

    def upload(self, widget_class: str, path: Path) -> None:
        # FileUpload's <input type=file> is never attached to the page; Playwright catches its chooser.
        with self.page.expect_file_chooser() as chooser:
            self.page.click(f".{widget_class}")
        chooser.value.set_files(str(path))

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path

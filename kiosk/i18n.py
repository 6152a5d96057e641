"""UI strings, one JSON catalog per language in `kiosk/locale/`.

Strings live in data files, not in .kv or .py, so a shop (or a translator) can change
wording without touching code. A key missing from a catalog falls back to the default
language, then to the key itself: a kiosk at a shop door must never crash over a word.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCALE_DIR = Path(__file__).with_name("locale")
DEFAULT_LANGUAGE = "zh_CN"
#: The languages the start screen's toggle cycles through, in order.
LANGUAGES: tuple[str, ...] = ("zh_CN", "en")


@cache
def load_catalog(language: str, locale_dir: Path = LOCALE_DIR) -> Mapping[str, str]:
    """The strings of one language; an unknown or broken catalog is empty, and logged."""
    path = locale_dir / f"{language}.json"
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("no usable UI strings for %r (%s): %s", language, path, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("%s: expected a JSON object of key -> text", path)
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}


def next_language(language: str) -> str:
    """The language the toggle switches to from `language`."""
    try:
        return LANGUAGES[(LANGUAGES.index(language) + 1) % len(LANGUAGES)]
    except ValueError:
        return DEFAULT_LANGUAGE


class Messages:
    """The UI strings of one language: `get("result.checkin.title", name="Li")`."""

    def __init__(self, language: str = DEFAULT_LANGUAGE, *, locale_dir: Path = LOCALE_DIR) -> None:
        self.language = language
        self.locale_dir = locale_dir
        self._strings = load_catalog(language, locale_dir)
        self._fallback = load_catalog(DEFAULT_LANGUAGE, locale_dir)

    def __contains__(self, key: object) -> bool:
        return key in self._strings or key in self._fallback

    def get(self, key: str, **fields: Any) -> str:
        """The text for `key`, with `{field}` placeholders filled in."""
        template = self._strings.get(key)
        if template is None:
            template = self._fallback.get(key)
            if template is None:
                log.warning("UI string %r is missing (language %s)", key, self.language)
                return key
        if not fields:
            return template
        try:
            return template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            log.warning("UI string %r cannot be filled in (%s): %r", key, exc, template)
            return template

    def switched(self, language: str) -> Messages:
        return Messages(language, locale_dir=self.locale_dir)

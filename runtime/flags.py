"""Yes/no words typed by people (command lines, form fields): the one list of what counts as true or false."""

from __future__ import annotations

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_flag(text: str) -> bool | None:
    """True or False for one of TRUE_WORDS / FALSE_WORDS (any case, surrounding spaces ignored); None otherwise, so
    that each caller words its own error."""
    word = text.strip().lower()
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None

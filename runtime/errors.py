"""Exceptions the runtime raises, with messages written for the person who has to fix them."""

from __future__ import annotations


class BackdropError(Exception):
    """Base class for every error the runtime raises on purpose."""


class MissingModelError(BackdropError, FileNotFoundError):
    """A model file or folder the user asked for is not in any model folder."""


class InvalidModelError(BackdropError, ValueError):
    """A model file exists but is corrupt, of the wrong kind or of an unknown architecture."""


class InvalidInputError(BackdropError, ValueError):
    """An image, mask or option cannot be processed as given."""


class Interrupted(BackdropError):
    """Raised from a progress callback to stop a long loop cleanly."""

"""Imported as ``preload`` by the tests; its presence in ``sys.modules`` is the check."""

from __future__ import annotations

LOADED_IN = "preload"

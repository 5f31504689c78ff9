"""Imported as a zygote ``preload``: leaves a thread running, as OpenBLAS would."""

from __future__ import annotations

from tests.workerfns import start_thread

start_thread()

"""Worker ``main`` for examples/child_processes.py: adds the numbers it receives."""

from __future__ import annotations

from typing import Any


def main(channel: Any) -> None:
    """Reply to each list of numbers with its sum, until the parent closes the channel."""
    for numbers in channel:
        channel.send(sum(numbers))

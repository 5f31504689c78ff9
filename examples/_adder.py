"""Worker ``main`` for examples/child_processes.py: adds the numbers it receives."""

from __future__ import annotations

from typing import Any


def main(channel: Any) -> None:
    """Reply to each list of numbers with its sum, until the parent closes."""
    while True:
        try:
            numbers = channel.receive()
        except EOFError:
            return
        channel.send(sum(numbers))

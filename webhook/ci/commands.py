"""Sub-commands of the ci face (registered by ``webhook.cli``)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    """Add this face's sub-commands to the ``portcullis`` parser."""

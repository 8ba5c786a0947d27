"""Generative-model metrics (FID, KID, IS, precision/recall) and feature extraction. Work in progress."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Adds ``fid`` and ``features`` to the ``inceptionv3`` command (none yet)."""


__all__ = ["add_commands"]

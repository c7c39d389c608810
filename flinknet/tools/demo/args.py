"""Argument parsers shared by ``flinknet demo`` and ``flinknet demo --checkpointing`` (no
``rich``, no job: the checkpointed job's task processes import the module that uses them)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["float_in", "int_in"]


def int_in(name: str, lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a base-10 integer in ``[lo, hi]`` (``hi`` None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"{name} must be {bound}, got {value}")
        return value
    return parse


def float_in(name: str, lo: float, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number ``>= lo`` (``> lo`` when ``lo_open``), ``<= hi``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if (not math.isfinite(value) or value < lo or (lo_open and value == lo)
                or (hi is not None and value > hi)):
            low = f"> {lo}" if lo_open else f">= {lo}"
            bound = low if hi is None else f"{low} and <= {hi}"
            raise argparse.ArgumentTypeError(f"{name} must be {bound}, got {text}")
        return value
    return parse

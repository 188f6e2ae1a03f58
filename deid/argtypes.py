"""Argument types shared by the command-line parsers."""

from __future__ import annotations

import argparse


def fraction(text: str) -> float:
    """``0.063`` or ``16/255`` -> float (what people write for 8-bit budgets).

    Raises:
        argparse.ArgumentTypeError: not a number or a fraction.
    """
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"expected a number such as 0.063 or 16/255, got {text!r}"
        ) from None

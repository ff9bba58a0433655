"""Argument types for the CLI: a bad number is refused by argparse with a message that says why."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", int, float)


def checked(convert: Callable[[str], T], holds: Callable[[T], bool], requirement: str,
            kind: str = "a number") -> Callable[[str], T]:
    """An argparse ``type=`` that converts with ``convert`` and accepts only values for which ``holds``.

    ``kind`` names what an unconvertible text is not ("a whole number"); ``requirement`` what
    a converted value must be ("> 0").
    """
    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not holds(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = f"{kind} {requirement}"  # argparse names the type in some messages
    return parse


positive_int = checked(int, lambda v: v >= 1, ">= 1", "a whole number")
positive_float = checked(float, lambda v: v > 0, "> 0")
non_negative_float = checked(float, lambda v: v >= 0, ">= 0")
open_fraction = checked(float, lambda v: 0 < v < 1, "in (0, 1)")


def _is_delta(value: float) -> bool:
    from privfl.privacy.budget import check_delta  # the one home of 0 < delta < 1

    try:
        check_delta(value)
    except ValueError:
        return False
    return True


delta = checked(float, _is_delta, "in (0, 1)")
tcp_port = checked(int, lambda v: 1 <= v <= 65535, "a TCP port (1-65535)", "a port number")

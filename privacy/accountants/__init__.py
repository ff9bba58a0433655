"""Accountants by name; every one implements :class:`~privfl.privacy.accountants.base.Accountant`.

Implementations are imported on first use, so reading the list of names (config
validation, ``--help``) does not pay for importing Opacus.
"""

from __future__ import annotations

import importlib

from privfl.privacy.accountants.adaptive_clipping import accounted_noise_multiplier, adaptive_clipping_noise
from privfl.privacy.accountants.base import Accountant, Composition
from privfl.privacy.events import NotComposable

_ACCOUNTANTS: dict[str, str] = {
    "rdp": "privfl.privacy.accountants.opacus_backed:RdpAccountant",
    "prv": "privfl.privacy.accountants.opacus_backed:PrvAccountant",
    "pld": "privfl.privacy.accountants.pld:PldAccountant",
}
ACCOUNTANT_NAMES = tuple(_ACCOUNTANTS)


def get_accountant(name: str) -> Accountant:
    try:
        module_name, _, class_name = _ACCOUNTANTS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown accountant '{name}'; choose one of {', '.join(ACCOUNTANT_NAMES)}") from None
    return getattr(importlib.import_module(module_name), class_name)()


__all__ = ["ACCOUNTANT_NAMES", "Accountant", "Composition", "NotComposable", "accounted_noise_multiplier",
           "adaptive_clipping_noise", "get_accountant"]

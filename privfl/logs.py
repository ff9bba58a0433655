"""privfl's log messages travel with Flower's, so they appear in ``flwr log`` and the run log."""

from __future__ import annotations

import logging


def get_logger(part: str) -> logging.Logger:
    """A child of Flower's ``flwr`` logger: it uses the handlers Flower sets up in every
    ServerApp and ClientApp process (console and the SuperLink's log stream)."""
    return logging.getLogger(f"flwr.privfl.{part}")

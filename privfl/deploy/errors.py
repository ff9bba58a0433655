"""The one error type of ``privfl deploy``: a request it cannot carry out, said plainly."""

from __future__ import annotations


class DeployError(ValueError):
    """A deployment folder, key or option that cannot be used; the message says what and how to mend it."""

"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import pytest
from hypothesis import settings

from privfl.simulations.processes import processes_mentioning

# Property tests check behaviour, not speed: on a loaded 2-core CI machine a per-example
# deadline only produces flaky failures.
settings.register_profile("privfl", deadline=None)
settings.load_profile("privfl")

__all__ = ["processes_mentioning"]


@pytest.fixture
def flower_task_identity():
    """Flower's runtime sets who is sending before a Message can be built; here the test
    plays the ServerApp of run 7 (a Message built outside that runtime needs this)."""
    from flwr.supercore.task_identity import TaskIdentity

    previous = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous


@pytest.fixture
def fresh_owner_ledgers():
    """The node keeps its owners' ledgers open between rounds (client/owner_ledger.py): each test starts and
    ends with none open, as a restarted node would, so no test reads another's open ledger."""
    from privfl.client.owner_ledger import close_owner_ledgers

    close_owner_ledgers()
    yield
    close_owner_ledgers()


@pytest.fixture(autouse=True)
def _environment_restored():
    """A test that runs the CLI in this process may change ``os.environ`` (``privfl simulate`` puts the folder
    of a user's model module on ``PYTHONPATH`` for Flower's processes): no test sees another's changes."""
    import os

    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)

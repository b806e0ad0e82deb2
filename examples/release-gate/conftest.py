"""A model author's release gate: one in-house task with its own grader, registered through qtests' hook.

``--tasks ledger`` then runs it exactly like a built-in task (report, baselines, fingerprint), and the
tests in ``test_release.py`` use it through the ``qt_model`` fixture.
"""

from ledger import LEDGER


def pytest_qtests_register_tasks(register):
    register(LEDGER)

"""The gate: one test per variant x task x check, and one per variant x checkpoint policy.

Every test reads the same lazily evaluated runs (see ``pytest_qtests.session``); a failure message
states what moved, by how much, against which tolerance and reference.
"""

from pytest_qtests.plugin import check_case, check_parity, check_policy


def test_degenerate(qt_session, qt_case, qt_run, record_property):
    """Output is not gibberish: the canary and the degenerate-output rate against the reference."""
    check_case(qt_session, qt_case, "degenerate", record_property)


def test_accuracy(qt_session, qt_case, qt_run, record_property):
    """Accuracy is not worse than the reference by more than the tolerance (paired, item by item)."""
    check_case(qt_session, qt_case, "accuracy", record_property)


def test_truncation(qt_session, qt_case, qt_run, record_property):
    """The share of answers cut off at the output cap has not grown beyond the tolerance."""
    check_case(qt_session, qt_case, "truncation", record_property)


def test_length(qt_session, qt_case, qt_run, record_property):
    """Output length has not inflated beyond the tolerated ratio of medians."""
    check_case(qt_session, qt_case, "length", record_property)


def test_policy(qt_session, qt_policy_case, record_property):
    """The checkpoint keeps the layers the policy says in the format it says (static audit)."""
    check_policy(qt_session, qt_policy_case, record_property)


def test_parity(qt_session, qt_parity_case, record_property):
    """With --parity A,B: engines A and B score the model's own greedy texts alike (an engine bug is not a quantization loss)."""
    check_parity(qt_session, qt_parity_case, record_property)

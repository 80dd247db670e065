"""The AI node's window of finished tasks."""

from __future__ import annotations

from mesh.dedup import DedupWindow


def succeeded(outcome: str) -> bool:
    return outcome == "done"


def test_a_success_answers_any_later_delivery() -> None:
    w = DedupWindow(10)
    w.remember("t1", 1, "done")
    assert w.lookup("t1", 1, succeeded) == "done"
    assert w.lookup("t1", 2, succeeded) == "done"


def test_a_failure_answers_only_the_same_attempt() -> None:
    w = DedupWindow(10)
    w.remember("t1", 1, "failed")
    assert w.lookup("t1", 1, succeeded) == "failed"
    assert w.lookup("t1", 2, succeeded) is None


def test_a_replayed_attempt_is_not_answered_by_the_failure_before_the_replay() -> None:
    """A dead letter replayed by an operator starts again at attempt 1, with one more replay:
    the node runs it; a redelivery within that replay is answered by its own outcome."""
    w = DedupWindow(10)
    w.remember("t1", 1, "failed")  # died at attempt 1 (fatal, or max_attempts 1)
    assert w.lookup("t1", 1, succeeded, replays=1) is None
    w.remember("t1", 1, "failed again", replays=1)
    assert w.lookup("t1", 1, succeeded, replays=1) == "failed again"
    assert w.lookup("t1", 1, succeeded) is None


def test_window_is_bounded_oldest_first() -> None:
    w = DedupWindow(3)
    for i in range(5):
        w.remember(f"t{i}", 1, "done")
    assert len(w) == 3
    assert w.lookup("t0", 1, succeeded) is None and w.lookup("t4", 1, succeeded) == "done"

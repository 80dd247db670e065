"""mesh/failure_log.py: every failure a line; one traceback per signature and interval;
the held-back count; a bounded set of signatures; signatures from a child's traceback text."""

from __future__ import annotations

import logging

from mesh.failure_log import FailureLog, signature_of, signature_of_text


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _raise(kind: int) -> BaseException:
    try:
        if kind == 1:
            raise ValueError("one")
        raise ValueError("two")
    except ValueError as exc:
        return exc


def test_the_same_signature_shows_its_traceback_once_per_interval_and_counts_the_rest(caplog) -> None:  # noqa: ANN001
    clock = Clock()
    failures = FailureLog(logging.getLogger("t.failures"), interval_s=60.0, clock=clock)
    exc = _raise(1)
    sig = signature_of("k", exc)
    with caplog.at_level(logging.ERROR, logger="t.failures"):
        assert failures.log_failure("task %s failed", ("a",), sig, exc=exc)
        assert not failures.log_failure("task %s failed", ("b",), sig, exc=exc)
        assert not failures.log_failure("task %s failed", ("c",), sig, exc=exc)
        clock.now += 61
        assert failures.log_failure("task %s failed", ("d",), sig, exc=exc)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "task a failed" and caplog.records[0].exc_info
    assert messages[1].startswith("task b failed (traceback as logged at ")
    assert not caplog.records[1].exc_info and not caplog.records[2].exc_info
    assert messages[3] == "task d failed (2 more with this traceback held back in the last 60s)"
    assert caplog.records[3].exc_info


def test_another_line_or_type_or_kind_is_another_signature() -> None:
    one, two = _raise(1), _raise(2)
    assert signature_of("k", one) != signature_of("k", two)         # another line
    assert signature_of("k", one) != signature_of("other", one)     # another kind
    assert signature_of("k", one)[1] == "ValueError"


def test_signatures_are_bounded_and_a_forgotten_one_shows_again(caplog) -> None:  # noqa: ANN001
    failures = FailureLog(logging.getLogger("t.bounded"), max_keys=3, clock=Clock())
    with caplog.at_level(logging.ERROR, logger="t.bounded"):
        for n in range(10):
            assert failures.log_failure("x", (), ("k", "E", f"f.py:{n}"), traceback_text="tb")
        assert len(failures._shown) == 3 and not failures._held
        assert failures.log_failure("x", (), ("k", "E", "f.py:0"), traceback_text="tb")
        assert not failures.log_failure("x", (), ("k", "E", "f.py:0"), traceback_text="tb")
    assert len(failures._shown) == 3


def test_a_childs_traceback_text_gives_its_innermost_frame() -> None:
    text = ('Traceback (most recent call last):\n'
            '  File "/srv/app/outer.py", line 10, in run\n    inner()\n'
            '  File "/srv/app/tasks.py", line 42, in boom\n    raise ValueError("bad")\n'
            'ValueError: bad\n')
    assert signature_of_text("k", "ValueError", text) == ("k", "ValueError", "/srv/app/tasks.py:42")
    assert signature_of_text("k", "ValueError", "") == ("k", "ValueError", "")


def test_a_traceback_from_a_child_is_appended_to_the_line_when_shown(caplog) -> None:  # noqa: ANN001
    failures = FailureLog(logging.getLogger("t.child"), clock=Clock())
    with caplog.at_level(logging.ERROR, logger="t.child"):
        failures.log_failure("task %s failed", ("a",), ("k", "E", "x:1"),
                             traceback_text="Traceback ...\nE: bad")
        failures.log_failure("task %s failed", ("b",), ("k", "E", "x:1"),
                             traceback_text="Traceback ...\nE: bad")
    assert caplog.records[0].getMessage() == "task a failed\nTraceback ...\nE: bad"
    assert "Traceback" not in caplog.records[1].getMessage()

"""Admission checks, the dead-letter bound and the long-poll bounds: pure bookkeeping, no sockets."""

from __future__ import annotations

import pytest

from mesh import wire
from mesh.admission import TaskLimits, check_task, journal_record_limit
from mesh.deadletter import DeadLetterBook
from mesh.errors import InvalidTask, PayloadTooLarge
from mesh.longpoll import ResultWaiters
from mesh.settings import HelperSettings

SETTINGS = HelperSettings(helper_id="h", data_dir="/nonexistent")
LIMITS = TaskLimits.of(SETTINGS)


def _task(**fields) -> object:  # noqa: ANN003
    headers = fields.pop("headers", None)
    task = wire.Task(**{"task_id": "t1", "kind": "echo", **fields})
    if headers:
        task.headers.update(headers)
    return task


def test_a_task_id_of_200_characters_but_over_255_utf8_bytes_is_invalid() -> None:
    with pytest.raises(InvalidTask, match=r"task_id of 200 characters \(600 UTF-8 bytes\) "
                                          r"exceeds .* 255 bytes"):
        check_task(_task(task_id="€" * 200), LIMITS)
    check_task(_task(task_id="€" * 85), LIMITS)  # 255 bytes: fits the journal key


def test_every_field_is_checked_in_bytes_and_named() -> None:
    cases = [
        (_task(task_id=""), InvalidTask, "task_id is empty"),
        (_task(kind=""), InvalidTask, "empty kind"),
        (_task(kind="ü" * 128), InvalidTask, "kind of 256 UTF-8 bytes exceeds the limit of 255"),
        (_task(idempotency_key="k" * 1025), InvalidTask, "idempotency_key of 1025"),
        (_task(priority=1001), InvalidTask, "priority 1001 is outside -1000..1000"),
        (_task(headers={f"h{i}": "" for i in range(65)}), InvalidTask, "65 headers exceed"),
        (_task(headers={"h": "x" * 70_000}), InvalidTask, "headers of 70001 UTF-8 bytes"),
        (_task(payload=b"x" * (2**20 + 1)), PayloadTooLarge, "payload of 1048577 bytes"),
    ]
    for task, error, text in cases:
        with pytest.raises(error, match=text):
            check_task(task, LIMITS)


def test_a_task_at_every_limit_fits_the_journal_record_and_a_smaller_record_limit_refuses_it() -> None:
    task = _task(task_id="i" * 200, kind="k" * 255, idempotency_key="d" * 1024,
                 payload=b"p" * 2**20, headers={f"{i:02}": "v" * 1000 for i in range(64)})
    encoded = check_task(task, LIMITS)
    assert encoded == task.SerializeToString()
    assert LIMITS.max_record_bytes == journal_record_limit(SETTINGS)
    small = TaskLimits.of(SETTINGS, max_record_bytes=2**20)
    with pytest.raises(PayloadTooLarge, match=r"journal record of \d+ bytes .* exceeds the "
                                              r"journal's record limit of 1048576 bytes"):
        check_task(task, small)


def test_dead_letter_book_evicts_oldest_past_count_or_bytes_and_keeps_the_newest() -> None:
    book = DeadLetterBook(max_count=3, max_bytes=100)
    for i in range(3):
        book.add(f"t{i}", 10)
    assert book.overflow() == []
    book.add("t3", 10)
    assert book.overflow() == ["t0"]
    book.remove("t2")  # replayed or purged
    book.add("t4", 85)
    assert book.overflow() == ["t1"]  # 10 + 10 + 85 > 100: the oldest goes
    assert list(book) == ["t3", "t4"] and book.size_bytes == 95
    book.add("big", 500)
    assert book.overflow() == ["t3", "t4"]
    assert list(book) == ["big"]  # alone above the byte bound, the newest stays


def test_long_polls_are_bounded_in_all_and_per_client_and_leave_with_their_client() -> None:
    waiters = ResultWaiters(max_total=5, max_per_client=3)
    for i in range(3):
        assert waiters.refusal(b"a") is None
        waiters.add(b"a", i, "t1", deadline=10.0 + i)
    assert "this client holds 3 result waits" in waiters.refusal(b"a")
    waiters.add(b"b", 9, "t2", deadline=5.0)
    waiters.add(b"c", 9, "t2", deadline=50.0)
    assert "the Helper holds 5 result waits" in waiters.refusal(b"d")
    assert [w.request_id for w in waiters.expired(10.5)] == [9, 0]
    assert len(waiters) == 3 and waiters.has_task("t2")
    assert sorted(w.request_id for w in waiters.drop_client(b"a")) == [1, 2]
    assert not waiters.has_task("t1") and waiters.clients() == [b"c"]
    assert [w.identity for w in waiters.take_task("t2")] == [b"c"]
    assert len(waiters) == 0 and waiters.expired(100.0) == []

"""The retained-results store (mesh/retained.py): the on-disk store behaves as an ordered dict."""

from __future__ import annotations

import collections

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.retained import RetainedStore

_IDS = st.sampled_from([f"task-{i}" for i in range(40)] + ["ü-∂", "x" * 300])
_OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), _IDS, st.binary(max_size=300)),
    st.tuples(st.just("remove"), _IDS, st.just(b"")),
    st.tuples(st.just("pop"), st.just(""), st.just(b"")),
), max_size=200)


@settings(max_examples=60, deadline=None)
@given(_OPS)
def test_the_store_on_disk_answers_as_an_ordered_dict(tmp_path_factory, ops) -> None:  # noqa: ANN001
    store = RetainedStore(tmp_path_factory.mktemp("r") / "retained", segment_bytes=700)
    model: collections.OrderedDict[str, bytes] = collections.OrderedDict()
    try:
        for op, task_id, record in ops:
            if op == "put":
                store.put(task_id, record)
                model.pop(task_id, None)
                model[task_id] = record
            elif op == "remove":
                assert store.remove(task_id) == (model.pop(task_id, None) is not None)
            else:
                expected = model.popitem(last=False)[0] if model else None
                popped = store.pop_oldest()
                assert (popped[0] if popped else None) == expected
            assert len(store) == len(model)
        for task_id in {i for _, i, _ in ops if i}:
            assert store.get(task_id) == model.get(task_id)
            assert (task_id in store) == (task_id in model)
        assert list(store.task_ids()) == list(model)
    finally:
        store.close()


def test_many_results_grow_the_table_and_fully_evicted_segments_are_deleted(tmp_path) -> None:  # noqa: ANN001
    directory = tmp_path / "retained"
    store = RetainedStore(directory, segment_bytes=64 * 1024)
    for i in range(20_000):
        store.put(f"{i:032x}", b"result %d" % i)
    assert len(store) == 20_000
    assert store.get(f"{12345:032x}") == b"result 12345"
    assert store.get("missing") is None
    for i in range(15_000):
        assert store.pop_oldest() == (f"{i:032x}", 0)
    files = sorted(directory.iterdir())
    assert len(files) < 12, f"{len(files)} spill files left for 5,000 records"
    assert store.get(f"{19_999:032x}") == b"result 19999"
    store.close()
    assert not directory.exists()


def test_a_new_store_starts_empty_over_an_old_directory(tmp_path) -> None:  # noqa: ANN001
    store = RetainedStore(tmp_path / "retained")
    store.put("a", b"1")
    store._flush()
    again = RetainedStore(tmp_path / "retained")  # the journal rebuilds it: nothing carries over
    assert len(again) == 0 and again.get("a") is None
    again.close()


def test_without_a_directory_the_store_is_in_memory() -> None:
    store = RetainedStore()
    store.put("a", b"1")
    store.put("b", b"2")
    store.put("a", b"3")
    assert store.pop_oldest() == ("b", 0) and store.get("a") == b"3" and len(store) == 1

"""share_credit: deliveries go to the least loaded node, ties in turn, never beyond credit."""

from __future__ import annotations

from mesh.choose import share_credit


def test_equal_nodes_split_a_short_queue_evenly() -> None:
    assert share_credit([(20, 4), (20, 4)], 24) == [12, 12]
    assert share_credit([(8, 4), (8, 4)], 7) in ([4, 3], [3, 4])


def test_the_node_with_most_free_slots_relative_to_concurrency_goes_first() -> None:
    # node 0: 2 of 4 free (50 %); node 1: 6 of 8 free (75 %)
    assert share_credit([(2, 4), (6, 8)], 2) == [0, 2]
    assert share_credit([(2, 4), (6, 8)], 4) == [1, 3]


def test_a_share_never_exceeds_the_nodes_credit() -> None:
    assert share_credit([(1, 4), (3, 4)], 100) == [1, 3]
    assert share_credit([(0, 4), (5, 4)], 3) == [0, 3]


def test_ties_take_turns_across_calls() -> None:
    winners = [share_credit([(4, 4), (4, 4), (4, 4)], 1, turn).index(1) for turn in range(6)]
    assert sorted(winners[:3]) == [0, 1, 2]
    assert winners[:3] == winners[3:]


def test_nothing_to_share() -> None:
    assert share_credit([], 5) == []
    assert share_credit([(4, 4)], 0) == [0]

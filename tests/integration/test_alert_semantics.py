"""What an operator is paged for (issue 13): a Helper that dies is a critical alert within
15 s and its return is announced; a drained AI node is news, not a fault; alerts are logged at
their own severity; a Helper's crash and restart cause no false "lost alerts" warnings."""

from __future__ import annotations

import re

import pytest

from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

#: the requirement: every fault reaches a person within 15 s
FAULT_DEADLINE_S = 15


def start_notifier(cluster):  # noqa: ANN001, ANN201
    return cluster._start(["notifier", "--discovery", cluster.discovery, "--state-file",
                           str(cluster.workdir / "alert-positions.json")], "notifier")


def alert_lines(notifier, kind: str) -> list[str]:  # noqa: ANN001
    return [line for line in notifier.log_path.read_text().splitlines()
            if "ALERT " in line and f" {kind} " in line]


def level_of(line: str) -> str:
    """The logging level of a line of runtime.setup_logging's format."""
    match = re.search(r" (DEBUG|INFO|WARNING|ERROR|CRITICAL) mesh\.alert\[", line)
    assert match, line
    return match.group(1)


def test_helper_sigkill_raises_helper_down_within_15s_and_helper_up_after_restart(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    notifier = start_notifier(cluster)
    cluster.start_ai()
    wait_until(lambda: alert_lines(notifier, "mesh.node.up"), 20, what="the node up alert")
    cluster.helper.kill()
    wait_until(lambda: alert_lines(notifier, "mesh.helper.down"), FAULT_DEADLINE_S,
               what="mesh.helper.down after the Helper's SIGKILL")
    down = alert_lines(notifier, "mesh.helper.down")
    assert len(down) == 1, down
    assert level_of(down[0]) == "CRITICAL" and "ALERT CRITICAL" in down[0]
    assert "publisher=helper-1-alerts" in down[0]
    cluster.start_helper()
    wait_until(lambda: alert_lines(notifier, "mesh.helper.up"), 30,
               what="mesh.helper.up after the restart")
    # the AI node joins the restarted Helper: a new alert of the new run reaches the notifier
    wait_until(lambda: len(alert_lines(notifier, "mesh.node.up")) >= 2, 30,
               what="an alert of the restarted Helper")
    assert len(alert_lines(notifier, "mesh.helper.down")) == 1  # once per outage
    assert level_of(alert_lines(notifier, "mesh.helper.up")[0]) == "INFO"


def test_no_lost_alert_warning_after_a_helper_sigkill_and_restart(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    notifier = start_notifier(cluster)
    cluster.start_ai()
    wait_until(lambda: alert_lines(notifier, "mesh.node.up"), 20, what="the node up alert")
    cluster.restart_helper()  # SIGKILL, then the same id and data dir
    wait_until(lambda: len(alert_lines(notifier, "mesh.node.up")) >= 2, 30,
               what="an alert of the restarted Helper")
    # the restarted Helper beats its new state for a few seconds: long enough for a
    # subscriber to have asked for the reserved seqs between the two runs
    wait_until(lambda: "restarted with a new epoch" in notifier.log_path.read_text(), 10,
               what="the notifier saw the new epoch of the same history")
    log = notifier.log_path.read_text()
    assert "not in the publisher's history" not in log
    assert "are lost" not in log
    assert "without its history" not in log


def test_ai_node_sigterm_drain_is_an_info_node_left_not_a_node_down(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    notifier = start_notifier(cluster)
    ai = cluster.start_ai()
    wait_until(lambda: alert_lines(notifier, "mesh.node.up"), 20, what="the node up alert")
    assert ai.stop() == 0  # SIGTERM: a clean drain
    wait_until(lambda: alert_lines(notifier, "mesh.node.left"), FAULT_DEADLINE_S,
               what="mesh.node.left after the drain")
    left = alert_lines(notifier, "mesh.node.left")
    assert level_of(left[0]) == "INFO" and "ALERT INFO" in left[0]
    # the Helper raises one or the other for a node's departure, never both
    assert not alert_lines(notifier, "mesh.node.down")


def test_alerts_are_logged_at_their_own_severity(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    notifier = start_notifier(cluster)
    ai = cluster.start_ai()
    wait_until(lambda: alert_lines(notifier, "mesh.node.up"), 20, what="the node up alert")
    assert level_of(alert_lines(notifier, "mesh.node.up")[0]) == "INFO"
    ai.kill()  # a fault: ERROR mesh.node.down
    wait_until(lambda: alert_lines(notifier, "mesh.node.down"), FAULT_DEADLINE_S,
               what="mesh.node.down after the node's SIGKILL")
    assert level_of(alert_lines(notifier, "mesh.node.down")[0]) == "ERROR"

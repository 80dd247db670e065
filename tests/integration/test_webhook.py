"""`mesh notifier --webhook URL`: each alert is POSTed as JSON; failed POSTs are retried with
backoff until the webhook takes them, and counted in mesh_alert_webhook_failures_total."""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

FAIL_FIRST = 3


class FlakyWebhook:
    """An HTTP server on 127.0.0.1 that answers 503 to its first `fail_first` POSTs."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.requests = 0
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests += 1
                if outer.requests <= outer.fail_first:
                    self.send_response(503)
                else:
                    outer.bodies.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():  # noqa: ANN201
    hook = FlakyWebhook(FAIL_FIRST)
    yield hook
    hook.close()


def test_webhook_gets_every_alert_after_failed_posts_and_counts_the_failures(cluster, webhook) -> None:  # noqa: ANN001
    cluster.start_helper()
    notifier = cluster._start(["notifier", "--discovery", cluster.discovery, "--state-file",
                               str(cluster.workdir / "alert-positions.json"), "--metrics-port",
                               "0", "--webhook", webhook.url, "--retry-cap", "0.5"], "notifier")
    ai = cluster.start_ai()
    wait_until(lambda: any(b["kind"] == "mesh.node.up" for b in webhook.bodies), 30,
               what="the node up alert posted after the failures")
    ai.kill()
    wait_until(lambda: any(b["kind"] == "mesh.node.down" for b in webhook.bodies), 30,
               what="the node down alert posted")
    assert webhook.requests >= FAIL_FIRST + 2
    kinds = [b["kind"] for b in webhook.bodies]
    assert kinds.index("mesh.node.up") < kinds.index("mesh.node.down")  # in order
    up = next(b for b in webhook.bodies if b["kind"] == "mesh.node.up")
    assert up["severity"] == "info" and up["publisher_id"] == "helper-1-alerts"
    assert json.loads(up["payload"])["node_id"] == "ai-1"
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{notifier.ready['metrics_port']}/metrics", timeout=5).read().decode()
    assert f"mesh_alert_webhook_failures_total {FAIL_FIRST}.0" in metrics
    assert "mesh_alert_webhook_posted_total" in metrics

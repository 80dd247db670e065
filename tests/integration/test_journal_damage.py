"""A Helper whose journal was damaged on disk replays every task the damage did not touch, and
says so: an error log, the `mesh_journal_damaged_*` metrics and a `mesh.journal.damaged` alert."""

from __future__ import annotations

import asyncio

from mesh.helper import Helper
from mesh.journal.segment import list_segments
from mesh.settings import HelperSettings


class _Alerts:
    def __init__(self) -> None:
        self.published: list[tuple[str, str, str]] = []

    def publish(self, kind: str, severity: str, source: str, payload: bytes) -> int:
        self.published.append((kind, severity, payload.decode()))
        return len(self.published)


def test_a_flipped_byte_mid_segment_loses_one_task_and_is_alerted(tmp_path) -> None:  # noqa: ANN001
    settings = HelperSettings(helper_id="h", data_dir=str(tmp_path / "h"))

    async def scenario() -> None:
        helper = Helper(settings)
        await helper.start()
        try:
            ids = [await helper.submit("k", b"p" * 200) for _ in range(400)]
        finally:
            await helper.stop()
        segments = list_segments(tmp_path / "h" / "journal")
        path = segments[-1][1]
        data = bytearray(path.read_bytes())
        end = len(data.rstrip(b"\0"))
        data[end // 2] ^= 0xFF  # one flipped bit pattern in the middle of the records
        path.write_bytes(bytes(data))

        alerts = _Alerts()
        again = Helper(settings, alerts=alerts)
        await again.start()
        try:
            kept = [t for t in ids if t in again.dispatcher.tasks]
            # The damaged record held one task (or straddled two); every other one is back.
            assert len(ids) - 2 <= len(kept) < len(ids)
            assert again.metrics.journal_damaged_bytes._value.get() > 0
            assert again.metrics.journal_damaged_records._value.get() >= 1
            kinds = [(k, s) for k, s, _ in alerts.published]
            assert ("mesh.journal.damaged", "critical") in kinds
            assert again.recovered["damaged_bytes"] > 0
        finally:
            await again.stop()

    asyncio.run(scenario())


def test_a_clean_restart_reports_no_damage(tmp_path) -> None:  # noqa: ANN001
    settings = HelperSettings(helper_id="h", data_dir=str(tmp_path / "h"))

    async def scenario() -> None:
        helper = Helper(settings)
        await helper.start()
        await helper.submit("k", b"x")
        await helper.stop()
        assert (tmp_path / "h").stat().st_mode & 0o777 == 0o700
        alerts = _Alerts()
        again = Helper(settings, alerts=alerts)
        await again.start()
        try:
            assert again.metrics.journal_damaged_bytes._value.get() == 0
            assert not [k for k, _, _ in alerts.published if k == "mesh.journal.damaged"]
        finally:
            await again.stop()

    asyncio.run(scenario())

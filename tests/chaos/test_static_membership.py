"""Static membership: a detector SIGKILLed and restarted under the same instance gets its
partitions back at once, not after the dead member's session times out (60 s here), and
still decides every record exactly once."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from fraudstream.config import Settings
from fraudstream.generator import generate
from fraudstream.stream import committed_progress
from tests.chaos.test_faults import Detectors, wait_committed, wait_done
from tests.chaos.verify import verify
from tests.conftest import REPO

pytestmark = pytest.mark.chaos


def test_a_killed_static_member_is_back_before_its_session_ends(
    settings: Settings, tmp_path: Path
) -> None:
    n = 60_000
    generate(settings, rate=math.inf, count=n, seed=61, progress=None)
    d = Detectors(
        settings,
        tmp_path,
        rules=str(REPO / "rules" / "tutorial.yaml"),
        DETECTOR_STATIC_MEMBERSHIP="true",
        KAFKA_SESSION_TIMEOUT_MS="60000",  # the restart must not wait for this
    )
    try:
        proc = d.start()
        wait_committed(settings, n // 4, d=d)
        d.kill(proc)
        before = committed_progress(settings)
        proc = d.start()
        # Well inside the 60 s session: only a member that reclaimed its partitions commits.
        wait_committed(settings, before + 1, timeout=40, d=d)
        group = settings.detector_group
        admin = AdminClient({"bootstrap.servers": settings.kafka_broker_url})
        members = admin.describe_consumer_groups([group])[group].result(timeout=10).members
        assert [m.group_instance_id for m in members] == [f"{group}-0"]
        wait_done(settings, n, d=d)
        d.stop(proc)
    finally:
        d.cleanup()
    v = verify(settings)
    assert (v.valid, v.decided) == (n, n)

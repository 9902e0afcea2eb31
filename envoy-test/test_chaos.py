"""The chaos benchmark's short run (`bench/chaos.py --short`, < 60 s) meets every
goal: client aborts, upstream resets and a replica killed and restarted behind
the real Envoy (embedded state); Redis killed, paused past its timeout and
restarted with another password behind the test host (Redis state)."""

import shutil

import pytest

import envoy_harness as harness
from bench import chaos


@pytest.fixture(scope="module")
def rows(production_wasm, tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server)")
    return chaos.run(short=True, envoy_wasm=production_wasm,
                     higress_wasm=harness.build_plugin(target="higress"),
                     workdir=str(tmp_path_factory.mktemp("chaos")))


def test_the_chaos_happened(rows):
    """Every scenario sent its requests, some aborted, some while r0 was down
    or Redis was unusable: the goals below are not met vacuously."""
    assert len(rows) == 2 + 3 * 2
    for row in rows:
        assert row["sent"] >= 300 and row["aborted"] > 0, row
        if row["state"] == "embedded":
            assert row["down_requests"] > 0 and row["envoy"]["upstream_rq_retry"] > 0, row
        else:
            assert row["decided_embedded"] > 0 and row["decided_in_redis"] > 0, row


@pytest.mark.parametrize("column, key", chaos.GOALS, ids=[key for _, key in chaos.GOALS])
def test_goal(rows, column, key):
    missed = [m for m in chaos.missed_goals(rows) if m[1] == column]
    assert not missed, "\n" + chaos.describe(missed)


def test_every_replicas_count_was_read_back(rows):
    unread = {row["policy"]: row["inflight_unread"] for row in rows if row.get("inflight_unread")}
    assert not unread

"""bench/report.py's count of conversations that changed replica between turns."""

from bench.loadgen import Record
from bench.report import conversation_moves


def turn(session, k, replica, status=200):
    return Record(session, k, float(k), status=status, replica=replica)


def test_counts_the_turns_another_replica_served():
    records = [turn("a", 0, "r0"), turn("a", 1, "r0"), turn("a", 2, "r1"),
               turn("b", 3, "r1"), turn("b", 4, "r1"), turn("c", 0, "r0")]
    assert conversation_moves(list(reversed(records))) == (1, 3)


def test_a_failed_turn_breaks_the_chain_and_unknown_replicas_count_nothing():
    records = [turn("a", 0, "r0"), turn("a", 1, "r1", status=503), turn("a", 2, "r1")]
    assert conversation_moves(records) is None
    assert conversation_moves([turn("a", 0, None), turn("a", 1, None)]) is None

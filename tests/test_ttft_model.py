"""The TTFT model prefix_cache learns its cost weights and replica speeds from."""

import random

from ai_load_balancer.ttft_model import MIN_ANSWERS, TtftModel


def teach(model, answers, slow=(), seed=1, loads=range(0, 9), queues=range(0, 400)):
    """Answers whose TTFT is 20 ms + 2 ms per block of their own + 0.5 ms per
    block queued before them + 50 ms per request in flight (+-10%), twice that
    on the `slow` replicas."""
    rng = random.Random(seed)
    for i in range(answers):
        address = f"10.0.0.{i % 4}:8000"
        own, queued, in_flight = rng.randint(0, 300), rng.choice(queues), rng.choice(loads)
        ttft = (20 + 2 * own + 0.5 * queued + 50 * in_flight) * rng.uniform(0.9, 1.1)
        model.observe(address, own, queued, in_flight, ttft * (2 if address in slow else 1))


def test_the_weights_are_what_queued_blocks_and_requests_cost_in_own_blocks():
    model = TtftModel(16)
    teach(model, 600)
    assert 0.2 <= model.queue_weight() <= 0.3  # 0.5 ms / 2 ms per block
    assert 22 <= model.decode_cost() <= 28  # 50 ms / 2 ms per block
    assert all(0.9 <= model.speed(f"10.0.0.{i}:8000") <= 1.1 for i in range(4))


def test_the_priors_hold_until_the_answers_tell():
    model = TtftModel(16)
    teach(model, MIN_ANSWERS - 1)
    assert (model.queue_weight(), model.decode_cost(), model.speed("10.0.0.1:8000")) == \
        (1.0, 16, 1.0)
    one_at_a_time = TtftModel(16)  # never a queue, never a load: only speeds can be told
    teach(one_at_a_time, 400, loads=[0], queues=[0], slow={"10.0.0.1:8000"})
    assert (one_at_a_time.queue_weight(), one_at_a_time.decode_cost()) == (1.0, 16)
    assert one_at_a_time.speed("10.0.0.1:8000") > 1.5 * one_at_a_time.speed("10.0.0.2:8000")
    no_queue = TtftModel(16)  # load varied, queues never: the decode cost is told alone
    teach(no_queue, 400, queues=[0])
    assert no_queue.queue_weight() == 1.0 and 22 <= no_queue.decode_cost() <= 28


def test_a_replica_twice_as_slow_costs_twice_as_much():
    model = TtftModel(16)
    teach(model, 800, slow={"10.0.0.1:8000"})
    ratio = model.speed("10.0.0.1:8000") / model.speed("10.0.0.2:8000")
    assert 1.7 <= ratio <= 2.3


def test_recent_answers_weigh_most():
    model = TtftModel(16)
    teach(model, 400)
    rng = random.Random(3)
    for _ in range(2000):  # the replicas got busier: 200 ms per request in flight now
        own, queued, in_flight = rng.randint(0, 300), rng.randint(0, 400), rng.randint(0, 8)
        model.observe("10.0.0.1:8000", own, queued, in_flight,
                      20 + 2 * own + 0.5 * queued + 200 * in_flight)
    assert 90 <= model.decode_cost() <= 110

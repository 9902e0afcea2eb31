"""The TTFT model prefix_cache learns its decodeCost and replica speeds from."""

import random

from ai_load_balancer.ttft_model import MIN_ANSWERS, TtftModel


def teach(model, answers, slow=(), seed=1, loads=range(0, 9)):
    """Answers whose TTFT is 20 ms + 2 ms per backlog block + 50 ms per request
    in flight (+-10%), twice that on the `slow` replicas."""
    rng = random.Random(seed)
    for i in range(answers):
        address = f"10.0.0.{i % 4}:8000"
        backlog, in_flight = rng.randint(0, 300), rng.choice(loads)
        ttft = (20 + 2 * backlog + 50 * in_flight) * rng.uniform(0.9, 1.1)
        model.observe(address, backlog, in_flight, ttft * (2 if address in slow else 1))


def test_the_decode_cost_is_what_a_request_in_flight_costs_in_blocks():
    model = TtftModel(16)
    teach(model, 400)
    assert 22 <= model.decode_cost() <= 28  # 50 ms / 2 ms per block
    assert all(0.9 <= model.speed(f"10.0.0.{i}:8000") <= 1.1 for i in range(4))


def test_the_configured_cost_holds_until_the_answers_tell():
    model = TtftModel(16)
    teach(model, MIN_ANSWERS - 1)
    assert model.decode_cost() == 16 and model.speed("10.0.0.1:8000") == 1.0
    one_at_a_time = TtftModel(16)  # no load ever: a request's cost cannot be told
    teach(one_at_a_time, 400, loads=[0], slow={"10.0.0.1:8000"})
    assert one_at_a_time.decode_cost() == 16
    assert one_at_a_time.speed("10.0.0.1:8000") > 1.5 * one_at_a_time.speed("10.0.0.2:8000")


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
        backlog, in_flight = rng.randint(0, 300), rng.randint(0, 8)
        model.observe("10.0.0.1:8000", backlog, in_flight, 20 + 2 * backlog + 200 * in_flight)
    assert 90 <= model.decode_cost() <= 110

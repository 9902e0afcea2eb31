"""bench/calibrate.py's sizing (pure): whatever the replicas' speed, the
real-vLLM workload offers the same share of their prefill capacity, lets
every user reach the turns where a prefix is reused, and holds more than one
replica's KV cache."""

import pytest

from bench import calibrate
from bench.workloads import WORKLOADS

DEMO = WORKLOADS["demo-real"].params


def replicas(cold_s, count=2, tokens=2000):
    return [calibrate.Rates(f"r{i}", tokens, cold_s, cold_s / 10, 0.02) for i in range(count)]


@pytest.mark.parametrize("cold_s", [0.19, 0.45, 1.0, 1.73, 3.0])
def test_every_speed_gets_the_same_share_of_the_fleet(cold_s):
    sized = calibrate.size(replicas(cold_s), DEMO, 40, 128, 256)
    assert abs(sized.load - calibrate.LOAD) < 0.02, sized
    assert sized.turns_per_user >= calibrate.TURNS * 0.85, sized
    assert calibrate.PRESSURE * 0.95 <= sized.pressure < 2, sized  # over one cache, within two
    assert sized.num_blocks * 128 >= calibrate.MODEL_LEN
    assert sized.params["num_users"] >= calibrate.MIN_USERS


def test_a_fast_machine_keeps_the_replicas_and_the_workload_as_committed():
    sized = calibrate.size(replicas(0.45), DEMO, 40, 128, 256)
    assert (sized.restart, sized.num_blocks) == (False, 256)
    assert sized.params["user_history_prompt"] == DEMO["user_history_prompt"]
    assert sized.params["num_users"] == DEMO["num_users"]


def test_a_slow_machine_gets_smaller_caches_fewer_users_and_a_lower_rate():
    fast = calibrate.size(replicas(0.45), DEMO, 40, 128, 256)
    slow = calibrate.size(replicas(1.73), DEMO, 40, 128, 256)  # AMD EPYC, float32
    assert slow.restart and slow.num_blocks < 256 * calibrate.RESTART_BELOW
    assert slow.params["qps"] < fast.params["qps"] / 2
    assert slow.params["num_users"] < fast.params["num_users"]


def test_parameters_the_user_gave_are_kept():
    sized = calibrate.size(replicas(1.73), DEMO, 40, 128, 256,
                           fixed={"qps": "0.3", "num_users": "9"})
    assert (sized.params["qps"], sized.params["num_users"]) == (DEMO["qps"], DEMO["num_users"])

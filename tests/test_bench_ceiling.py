"""bench/oracle.py's hit-rate ceilings: unbounded, and with the fleet's cache sizes."""

from bench.oracle import CacheModel, FleetCeiling


def conversations(ceiling, users, turns, tokens_per_turn):
    """Each user's prompts grow by `tokens_per_turn` distinct tokens a turn."""
    for t in range(turns):
        for u in range(users):
            prompt = [1000 * u + i for i in range((t + 1) * tokens_per_turn)]
            ceiling.observe("m", prompt)
            ceiling.computed("m", prompt)


def test_caches_that_hold_every_conversation_reach_the_unbounded_ceiling():
    ceiling = FleetCeiling(["a", "b"], block_size=4, num_blocks=1000)
    conversations(ceiling, users=4, turns=3, tokens_per_turn=16)
    # Turns of 16, 32 and 48 tokens: the second reuses 16, the third 32.
    assert ceiling.rate == (16 + 32) / (16 + 32 + 48)
    assert ceiling.fleet_rate == ceiling.rate


def test_small_caches_lose_the_hits_they_cannot_hold():
    # 4 conversations of up to 12 blocks on 2 replicas of 10 blocks: each
    # replica holds less than its two conversations, so later turns miss.
    ceiling = FleetCeiling(["a", "b"], block_size=4, num_blocks=10)
    conversations(ceiling, users=4, turns=3, tokens_per_turn=16)
    assert ceiling.fleet_rate < ceiling.rate / 2


def test_a_prompt_counts_as_cached_only_once_computed_as_in_the_unbounded_ceiling():
    ceiling = FleetCeiling(["a", "b"], block_size=4, num_blocks=1000)
    prompt = list(range(40))
    ceiling.observe("m", prompt)
    ceiling.observe("m", prompt)  # sent again before the first answer's prefill
    assert ceiling.fleet_hit_tokens == ceiling.hit_tokens == 0
    ceiling.computed("m", prompt)
    ceiling.observe("m", prompt)
    assert ceiling.fleet_hit_tokens == ceiling.hit_tokens > 0


def test_an_evicted_conversation_loses_its_last_blocks_first_as_in_vllm():
    cache = CacheModel(num_blocks=10)
    cache.insert(list(range(8)))           # a conversation's 8 blocks
    cache.insert([100, 101, 102, 103])     # another request's: 2 blocks must go
    assert cache.match(list(range(8))) == 6

"""The pure parts of model selection: settings, split, bandits, combining, rewards, the cache,
and what the state store keeps of them."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from schooner.frontend.cache import ENTRY_OVERHEAD, PredictionCache
from schooner.frontend.selection import (
    MAX_MEMBERS,
    EpsilonGreedy,
    Exp3,
    SelectionError,
    WeightedSplit,
    combine,
    normalize,
    reward,
)
from schooner.frontend.state import App, Invalid, Model, NotFound, StateStore
from schooner.runtime.wire import InputType

D = InputType.DOUBLES


# --------------------------------------------------------------------------- split


def test_a_split_is_exact_and_interleaved() -> None:
    split = WeightedSplit([90, 10])
    picks = [split.pick() for _ in range(1000)]
    assert Counter(picks) == {0: 900, 1: 100}
    # every window of 10 consecutive picks holds exactly one of the 10% member
    assert all(picks[i : i + 10].count(1) == 1 for i in range(0, 1000, 10))
    odd = WeightedSplit([1, 2, 3.5])
    assert Counter(odd.pick() for _ in range(650)) == {0: 100, 1: 200, 2: 350}


def test_sticky_keys_keep_their_member_and_follow_the_weights() -> None:
    split = WeightedSplit([90, 10])
    members = {user: split.pick_sticky(user) for user in range(10_000)}
    assert all(split.pick_sticky(user) == m for user, m in list(members.items())[:500])
    assert split.pick_sticky("alice") == split.pick_sticky("alice")
    assert split.pick_sticky(b"bytes") == split.pick_sticky(b"bytes")
    tens = sum(members.values())
    # binomial(10000, 0.1): sd 30; 5 sd either side
    assert 850 <= tens <= 1150
    # growing a member's weight only moves keys towards it
    wider = WeightedSplit([80, 20])
    assert all(wider.pick_sticky(u) == 1 for u, m in members.items() if m == 1)


def test_a_split_needs_positive_weights() -> None:
    with pytest.raises(ValueError):
        WeightedSplit([])
    with pytest.raises(ValueError):
        WeightedSplit([1, 0])


# --------------------------------------------------------------------------- bandits


def _play(bandit: EpsilonGreedy | Exp3, rates: list[float], rounds: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    picks = []
    for _ in range(rounds):
        arm, prob = bandit.pick()
        assert 0 < prob <= 1
        bandit.update(arm, 1.0 if rng.random() < rates[arm] else 0.0, prob)
        picks.append(arm)
    return picks


def test_epsilon_greedy_converges_to_the_better_member() -> None:
    bandit = EpsilonGreedy(2, 0.1, random.Random(1))
    picks = _play(bandit, [0.2, 0.9], 2000, seed=2)
    assert picks[:2] == [0, 1]  # each member tried once first
    assert picks[-500:].count(1) >= 500 * 0.85
    again = EpsilonGreedy(2, 0.1, random.Random(1))
    again.load(bandit.state())
    assert again.counts == bandit.counts and again.sums == bandit.sums


def test_exp3_converges_to_the_better_member_and_keeps_exploring() -> None:
    bandit = Exp3(3, 0.1, random.Random(3))
    picks = _play(bandit, [0.1, 0.3, 0.95], 3000, seed=4)
    assert picks[-1000:].count(2) >= 800
    probs = bandit.probabilities()
    assert abs(sum(probs) - 1) < 1e-9
    assert min(probs) >= 0.1 / 3 - 1e-12  # gamma / K: nobody is starved
    restored = Exp3(3, 0.1, random.Random(0))
    restored.load(bandit.state())
    assert restored.probabilities() == probs
    restored.load({"log_weights": [1.0]})  # the wrong shape is ignored
    assert restored.probabilities() == probs


def test_exp3_weights_stay_finite() -> None:
    bandit = Exp3(2, 1.0, random.Random(5))
    for _ in range(10_000):
        bandit.update(0, 1.0, 1e-9)
    assert all(abs(w) < 1e12 for w in bandit.log_weights)
    assert bandit.probabilities()[0] > 0.49


# --------------------------------------------------------------------------- combining


def test_combine_means_numbers_and_votes_otherwise() -> None:
    assert combine(["1", "2", "6"], "mean") == "3.0"
    assert combine(["[1, 2]", "[3, 4.5]"], "mean") == "[2.0,3.25]"
    assert combine(["[1, 2]", "[3]"], "mean") == "[1, 2]"  # unequal lists: a vote
    assert combine(["cat", "dog", "dog"], "mean") == "dog"
    assert combine(["1", "2", "2"], "vote") == "2"
    assert combine(["b", "a"], "vote") == "b"  # a tie goes to the earlier member
    assert combine(["true", "1"], "mean") == "true"  # booleans are not averaged
    with pytest.raises(ValueError):
        combine([], "mean")


def test_reward() -> None:
    assert reward("7", 7) == 1.0
    assert reward("7.0", 7) == 1.0
    assert reward("7.000000000001", 7) == 1.0
    assert reward("7.1", 7) == 0.0
    assert reward("cat", "cat") == 1.0
    assert reward('"cat"', "cat") == 1.0
    assert reward("[1, 2]", [1, 2]) == 1.0
    assert reward("dog", "cat") == 0.0


# --------------------------------------------------------------------------- settings


def test_normalize_fills_in_and_checks_settings() -> None:
    assert normalize({}) is None
    assert normalize({"policy": "fixed"}) is None
    s = normalize({"policy": "split", "models": {"m:1": 90, "m:2": 10}})
    assert s is not None and s["models"] == [["m:1", 90.0], ["m:2", 10.0]]
    assert s["cache_mb"] == 0 and s["shadow"] is None
    cached = normalize({"cache_mb": 64})
    assert cached is not None and cached["policy"] == "fixed"
    shadow = normalize({"shadow": {"model": "m:5"}})
    assert shadow is not None and shadow["shadow"] == {"model": "m:5", "fraction": 1.0}
    bad = [
        {"policy": "nope"},
        {"policy": "split"},
        {"policy": "exp3", "models": {"m:1": 1}},
        {"policy": "ensemble", "models": ["m:1"]},
        {"policy": "split", "models": {"m:1": 0}},
        {"policy": "split", "models": {"m:": 1}},
        {"policy": "split", "models": [["m", 1], ["m", 2]]},
        {"policy": "split", "models": {f"m:{i}": 1 for i in range(MAX_MEMBERS + 1)}},
        {"cache_mb": -1},
        {"cache_mb": True},
        {"epsilon": 2},
        {"shadow": {"model": "m:1", "fraction": 1.5}},
        {"shadow": "m:1"},
        {"sticky_field": ""},
        {"combine": "max"},
        {"extra": 1},
    ]
    for settings in bad:
        with pytest.raises(SelectionError):
            normalize(settings)


# --------------------------------------------------------------------------- cache


def test_cache_is_lru_and_bounded_by_bytes() -> None:
    entry = 8 + 3 + ENTRY_OVERHEAD  # 8 input bytes, a 3-character answer
    cache = PredictionCache(3 * entry)
    keys = [(("m", "1"), i.to_bytes(8, "little")) for i in range(5)]
    for k in keys[:3]:
        assert cache.put(k, "abc") == 0
    assert cache.bytes == 3 * entry and len(cache) == 3
    assert cache.get(keys[0]) == "abc"  # now the newest
    assert cache.put(keys[3], "abc") == 1  # evicts keys[1], the oldest
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) == "abc" and cache.get(keys[2]) == "abc"
    assert cache.bytes <= cache.max_bytes
    assert (cache.hits, cache.misses, cache.evictions) == (3, 1, 1)
    assert cache.put((("m", "1"), b"x" * 10_000), "big") == 0  # larger than the bound: not kept
    assert len(cache) == 3
    # a replaced entry is resized: one byte more no longer fits beside the two others
    assert cache.put(keys[0], "abcd") == 1
    assert cache.bytes <= cache.max_bytes and len(cache) == 2 and cache.get(keys[0]) == "abcd"
    assert cache.get((("m", "2"), keys[0][1])) is None  # another version: another entry
    assert cache.clear() == 2 and cache.bytes == 0 and len(cache) == 0
    with pytest.raises(ValueError):
        PredictionCache(0)


# --------------------------------------------------------------------------- the state store


def test_selection_and_policy_state_persist_with_the_app(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    s = StateStore.open(db)
    s.add_app(App("a", D, "0", 1000))
    s.add_app(App("b", D, "0", 1000))
    s.add_model(Model("m", "1", D))
    s.add_model(Model("m", "2", D))
    s.add_model(Model("text", "1", InputType.STRINGS))
    s.link("a", "m")
    split = normalize({"policy": "exp3", "models": {"m:1": 1, "m:2": 1}, "cache_mb": 8})
    s.set_selection("a", split)
    s.save_policy_state("a", '{"log_weights": [1.0, 0.0]}')
    with pytest.raises(NotFound):
        s.set_selection("b", normalize({"policy": "split", "models": {"m:9": 1}}))
    with pytest.raises(NotFound):
        s.set_selection("b", normalize({"shadow": {"model": "nothing"}}))
    with pytest.raises(Invalid):
        s.set_selection("b", normalize({"policy": "split", "models": {"text": 1}}))
    s.close()

    r = StateStore.open(db)
    assert r.apps["a"].selection == split
    assert r.apps["a"].to_dict()["selection"] == split
    assert r.policy_state == {"a": '{"log_weights": [1.0, 0.0]}'}
    assert r.apps["b"].selection is None
    # the cache alone changes: what the policy learned stays
    more = normalize(split | {"cache_mb": 16})  # type: ignore[operator]
    r.set_selection("a", more)
    assert "a" in r.policy_state
    # set_model_version sends all traffic to one version: the policy goes, the cache stays
    r.set_model_version("m", "2")
    kept = r.apps["a"].selection
    assert kept is not None and kept["policy"] == "fixed" and kept["cache_mb"] == 16
    assert "a" not in r.policy_state
    r.close()
    again = StateStore.open(db)
    assert again.apps["a"].selection == kept and again.policy_state == {}
    again.delete_app("a")
    again.close()
    assert StateStore.open(db).policy_state == {}

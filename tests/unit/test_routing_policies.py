"""Routing policies by name: prefix-aware and session affinity with bounded loads, round robin, the
affinity keys the ingress computes, the hash ring, and per-model policy settings (no Ray)."""

from __future__ import annotations

import random
from collections import Counter
from typing import get_args

import pytest

from crosslogic.config import AppConfig
from crosslogic.routing.affinity_keys import prefix_hashes, routing_prefix, session_hash
from crosslogic.routing.hash_ring import HashRing, capacity
from crosslogic.routing.hints import RoutingHints
from crosslogic.routing.load_table import ReplicaLoad
from crosslogic.routing.local_router import LocalRouter
from crosslogic.routing.policies import POLICIES, make_policy, queue_depth
from crosslogic.routing.policy_config import AffinityOptions, PolicyName

REPLICAS = [f"r{i:02d}" for i in range(8)]
SYSTEM = "You are the support assistant of a bicycle shop. " * 20  # ~1 000 characters


def chat(system: str, user: str, salt: str | None = "tenant-a") -> dict:
    body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    if salt:
        body["cache_salt"] = salt
    return body


def hashes(body: dict, block: int = 256) -> tuple[int, ...]:
    return prefix_hashes("chat", body, block_chars=block, max_chars=8192)


def keys(body: dict, block: int = 256) -> tuple[int, ...]:
    return routing_prefix("chat", body, block_chars=block, max_chars=8192)


def hints_for(body: dict, **kw: object) -> RoutingHints:
    return RoutingHints(prefix_hashes=keys(body), **kw)  # type: ignore[arg-type]


def next_turn(body: dict, reply: str, user: str) -> dict:
    messages = [*body["messages"], {"role": "assistant", "content": reply}, {"role": "user", "content": user}]
    return {**body, "messages": messages}


# -- affinity keys ---------------------------------------------------------------------------


def test_prefix_hashes_are_chained_over_full_blocks() -> None:
    a = hashes(chat(SYSTEM, "where is my order 123? " * 20))
    b = hashes(chat(SYSTEM, "do you sell helmets? " * 20))
    shared = len(SYSTEM) // 256  # full blocks inside the system prompt (role marker aside)
    assert a[:shared] == b[:shared]
    assert a[-1] != b[-1]
    # Only full blocks: a prompt shorter than a block has none.
    assert hashes(chat("", "hi")) == ()
    # Deterministic (ingress replicas agree) and bounded by max_chars.
    assert hashes(chat(SYSTEM, "x")) == hashes(chat(SYSTEM, "x"))
    assert len(prefix_hashes("chat", chat(SYSTEM * 20, "x"), block_chars=256, max_chars=2048)) == 8


def test_prefix_hashes_are_salted_per_tenant() -> None:
    """Tenants never share vLLM cache blocks (cache_salt), so their prefixes route independently."""
    a = hashes(chat(SYSTEM, "hi", salt="tenant-a"))
    b = hashes(chat(SYSTEM, "hi", salt="tenant-b"))
    assert not set(a) & set(b)


def test_prefix_hashes_of_completions_and_content_parts() -> None:
    prompt = "Translate to French: " * 40
    assert prefix_hashes("completions", {"prompt": prompt}, block_chars=64, max_chars=8192)
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": SYSTEM}]}]}
    plain = {"messages": [{"role": "user", "content": SYSTEM}]}
    assert hashes(parts) == hashes(plain)
    assert prefix_hashes("embeddings", {"input": SYSTEM}, block_chars=64, max_chars=8192) == ()


def test_routing_prefix_starts_with_the_conversation_anchor() -> None:
    """A chat's first key covers its instructions and first turn: every turn of a conversation has
    it, another conversation with the same system prompt does not; the keys after it reach past it."""
    turn1 = chat(SYSTEM, "which chain fits my bike? " * 20)
    turn2 = next_turn(turn1, "The 11-speed one. " * 10, "thanks, and brakes?")
    other = chat(SYSTEM, "do you sell helmets?")
    assert keys(turn1)[0] == keys(turn2)[0] != keys(other)[0]
    assert keys(turn2)[:len(keys(turn1))] == keys(turn1)  # the chain: turn 2 extends turn 1
    assert set(keys(turn1)[1:]) <= set(hashes(turn1))  # deeper keys are block hashes
    assert keys(chat("", "hi"))  # a short chat still has its anchor
    # A plain prompt has no anchor: its block hashes, first block first.
    prompt = {"prompt": "Translate to French: " * 40}
    assert routing_prefix("completions", prompt, block_chars=64, max_chars=8192) == prefix_hashes(
        "completions", prompt, block_chars=64, max_chars=8192)


def test_session_hash_header_wins_over_user_and_is_salted() -> None:
    body = {"user": "alice", "cache_salt": "tenant-a"}
    assert session_hash(body, None) == session_hash({"user": "alice", "cache_salt": "tenant-a"}, None)
    assert session_hash(body, "conv-7") != session_hash(body, None)
    assert session_hash({"user": "alice", "cache_salt": "tenant-b"}, None) != session_hash(body, None)
    assert session_hash({}, None) is None and session_hash({"user": 7}, None) is None


# -- the ring --------------------------------------------------------------------------------


def test_ring_is_the_same_whatever_the_order_and_moves_few_keys() -> None:
    ids = [f"replica-{i}" for i in range(64)]
    ring = HashRing(ids)
    shuffled = list(ids)
    random.Random(1).shuffle(shuffled)
    keys = [random.Random(2).getrandbits(64) for _ in range(2000)]
    other = HashRing(shuffled)
    assert [next(ring.walk(k)) for k in keys] == [next(other.walk(k)) for k in keys]
    # Removing one replica moves only the keys it owned.
    smaller = HashRing(ids[1:])
    moved = sum(1 for k in keys if next(ring.walk(k)) != next(smaller.walk(k)))
    owned = sum(1 for k in keys if next(ring.walk(k)) == ids[0])
    assert moved == owned
    # Homes spread: 64 virtual nodes each keep every replica within 2.5x of the mean.
    homes = Counter(next(ring.walk(random.Random(k).getrandbits(64))) for k in range(20_000))
    assert len(homes) == 64 and max(homes.values()) < 2.5 * 20_000 / 64
    assert sorted(ring.walk(keys[0])) == sorted(ids)


def test_capacity_is_ceil_of_one_plus_epsilon_times_mean() -> None:
    assert capacity(0, 8, 0.25) == 2  # the floor: near idle a home keeps a conversation's next turn
    assert capacity(79, 8, 0.25) == 13  # mean 10 with the new request
    assert capacity(10, 0, 0.25) == 0


# -- prefix_aware ----------------------------------------------------------------------------


def test_prefix_aware_keeps_a_conversation_together_and_spreads_distinct_ones() -> None:
    policy = make_policy("prefix_aware", rng=random.Random(0))
    body = chat(SYSTEM, "order 1")
    first = policy.rank(REPLICAS, {}, {}, hints_for(body))
    assert sorted(first) == sorted(REPLICAS)
    for n in range(20):  # idle fleet: every turn of the conversation goes home
        body = next_turn(body, f"answer {n} " * 20, f"question {n}")
        assert policy.rank(REPLICAS, {}, {}, hints_for(body))[0] == first[0]
    # Other ingress replicas (own policy, own random source) send it to the same home.
    assert make_policy("prefix_aware", rng=random.Random(9)).rank(REPLICAS, {}, {}, hints_for(body))[0] == first[0]
    homes = Counter(
        policy.rank(REPLICAS, {}, {}, hints_for(chat(SYSTEM, f"user {n} asks")))[0] for n in range(400))
    assert len(homes) == len(REPLICAS) and min(homes.values()) >= 20, homes


def test_prefix_aware_bound_holds_under_one_hot_prefix() -> None:
    """Every request is the same prompt and none finishes: loads never pass ceil(1.25 x mean)."""
    options = AffinityOptions(load_bound=0.25)
    policy = make_policy("prefix_aware", options, random.Random(0))
    local: Counter[str] = Counter()
    for _ in range(400):
        total = sum(local.values())
        chosen = policy.rank(REPLICAS, {}, local, hints_for(chat(SYSTEM, "the same question")))[0]
        assert local[chosen] + 1 <= capacity(total, len(REPLICAS), 0.25)
        local[chosen] += 1
    mean = sum(local.values()) / len(REPLICAS)
    assert max(local.values()) / mean <= 1.25 + 1 / mean, local


def test_prefix_aware_spills_in_ring_order_and_counts_other_ingresses() -> None:
    """A home busy with other ingresses' requests (the router's view) is passed over for the next
    replica on the ring, the same one every ingress replica would pick."""
    body = chat(SYSTEM, "hello")
    key = keys(body)[0]
    order = list(HashRing(REPLICAS).walk(key))
    view = {rid: ReplicaLoad(replica_id=rid, model="m") for rid in REPLICAS}
    view[order[0]] = ReplicaLoad(replica_id=order[0], model="m", running=6, remote_in_flight=6)
    for seed in range(5):  # other ingress replicas: own policies, own random sources, same answer
        assert make_policy("prefix_aware", rng=random.Random(seed)).rank(REPLICAS, view, {}, hints_for(body))[0] == order[1]
    assert queue_depth(order[0], view, {}) == 6


def test_prefix_aware_follows_the_longest_known_prefix() -> None:
    """A conversation whose turn went to a spill-over replica keeps going there (its cache), while
    the ring home is free again."""
    policy = make_policy("prefix_aware", rng=random.Random(0))
    turn1 = chat(SYSTEM, "I want a new chain for my bike, which one fits a 2019 model? " * 6)
    key = keys(turn1)[0]
    order = list(HashRing(REPLICAS).walk(key))
    busy = {order[0]: 3}  # home full for this one decision (cap 2 on a fleet of 8 nearly idle)
    spilled = policy.rank(REPLICAS, {}, busy, hints_for(turn1))[0]
    assert spilled == order[1]
    turn2 = next_turn(turn1, "The 11-speed. " * 30, "thanks")
    assert policy.rank(REPLICAS, {}, {}, hints_for(turn2))[0] == spilled
    # Another ingress replica never saw turn 1: the ring home, free again.
    assert make_policy("prefix_aware", rng=random.Random(3)).rank(REPLICAS, {}, {}, hints_for(turn2))[0] == order[0]


def test_prefix_aware_without_a_full_block_is_least_loaded() -> None:
    view = {rid: ReplicaLoad(replica_id=rid, model="m", running=9) for rid in REPLICAS}
    view["r05"] = ReplicaLoad(replica_id="r05", model="m")
    policy = make_policy("prefix_aware", rng=random.Random(0))
    short = RoutingHints(prefix_hashes=routing_prefix("completions", {"prompt": "hi"}, block_chars=256, max_chars=8192))
    assert short.prefix_hashes == ()
    picks = Counter(policy.rank(REPLICAS, view, {}, short)[0] for _ in range(200))
    # Two choices: the idle replica wins whenever sampled (about a quarter of decisions with 8).
    assert picks["r05"] > 30 and all(rid == "r05" or view[rid].running == 9 for rid in picks)
    assert policy.rank(REPLICAS, view, {}, None)[0] in REPLICAS


def test_prefix_aware_is_deterministic_with_a_seeded_rng() -> None:
    def run(seed: int) -> list[str]:
        policy = make_policy("prefix_aware", rng=random.Random(seed))
        local: Counter[str] = Counter()
        picks = []
        for n in range(300):
            body = chat(f"system {n % 7} " * 40, f"user {n}") if n % 3 else chat("", f"short {n}")
            chosen = policy.rank(REPLICAS, {}, local, hints_for(body))[0]
            local[chosen] += 1
            if n % 5 == 0:
                local[chosen] -= 1
            picks.append(chosen)
        return picks

    assert run(11) == run(11)


def test_prefix_aware_index_is_bounded() -> None:
    policy = make_policy("prefix_aware", AffinityOptions(index_entries=64), random.Random(0))
    for n in range(200):
        policy.rank(REPLICAS, {}, {}, hints_for(chat(f"prompt {n} " * 60, "x")))
    assert len(policy._index) == 64  # type: ignore[attr-defined]


def test_excluded_replica_is_never_chosen() -> None:
    router = LocalRouter(make_policy("prefix_aware", rng=random.Random(0)))
    body = chat(SYSTEM, "hi")
    home = router.choose(REPLICAS, hints_for(body))[0]
    hints = hints_for(body, exclude={home})
    assert router.choose(REPLICAS, hints)[0] != home
    assert router.choose(["only"], RoutingHints(exclude={"only"})) == ["only"]


# -- session_affinity and round robin --------------------------------------------------------


def _session(user: str | None, header: str | None = None) -> RoutingHints:
    body = {"user": user, "cache_salt": "tenant-a"} if user else {"cache_salt": "tenant-a"}
    return RoutingHints(session_key=header, session_hash=session_hash(body, header))


def test_session_affinity_sticks_within_the_bound() -> None:
    policy = make_policy("session_affinity", rng=random.Random(0))
    home = policy.rank(REPLICAS, {}, {}, _session("alice"))[0]
    assert all(policy.rank(REPLICAS, {}, {}, _session("alice"))[0] == home for _ in range(20))
    by_header = policy.rank(REPLICAS, {}, {}, _session("alice", header="conv-1"))[0]
    assert all(policy.rank(REPLICAS, {}, {}, _session(None, header="conv-1"))[0] == by_header for _ in range(5))
    users = Counter(policy.rank(REPLICAS, {}, {}, _session(f"user-{n}"))[0] for n in range(400))
    assert len(users) == len(REPLICAS) and min(users.values()) >= 20, users
    # Near idle, a home still counting the session's previous request (the engine's report lags,
    # or its completion is not seen yet) keeps the session.
    three = REPLICAS[:3]
    carol = policy.rank(three, {}, {}, _session("carol"))[0]
    lagging = {carol: ReplicaLoad(replica_id=carol, model="m", running=1)}
    assert policy.rank(three, lagging, {carol: 1}, _session("carol"))[0] == carol
    # One hot session: bounded like a hot prefix.
    local: Counter[str] = Counter()
    for _ in range(200):
        chosen = policy.rank(REPLICAS, {}, local, _session("hot"))[0]
        assert local[chosen] + 1 <= capacity(sum(local.values()), len(REPLICAS), 0.25)
        local[chosen] += 1
    # No session: least loaded.
    view = {rid: ReplicaLoad(replica_id=rid, model="m", running=5) for rid in REPLICAS[:-1]}
    assert Counter(policy.rank(REPLICAS[-2:], view, {}, _session(None))[0] for _ in range(10)) == {REPLICAS[-1]: 10}


def test_round_robin_cycles_blind_to_load() -> None:
    policy = make_policy("round_robin")
    view = {"r00": ReplicaLoad(replica_id="r00", model="m", running=99)}
    picks = Counter(policy.rank(REPLICAS, view, {}, None)[0] for _ in range(80))
    assert picks == {rid: 10 for rid in REPLICAS}
    assert sorted(policy.rank(REPLICAS, {}, {}, None)) == sorted(REPLICAS)


# -- wiring ----------------------------------------------------------------------------------


def test_registry_matches_config_names() -> None:
    assert set(POLICIES) == set(get_args(PolicyName))


def test_local_router_computes_only_the_keys_its_policy_uses() -> None:
    body = chat(SYSTEM, "hi")
    body["user"] = "alice"
    plain = RoutingHints()
    LocalRouter(make_policy("least_loaded_p2c")).fill_keys(plain, "chat", body)
    assert plain.prefix_hashes is None and plain.session_hash is None
    prefix = RoutingHints()
    LocalRouter(make_policy("prefix_aware")).fill_keys(prefix, "chat", body)
    assert prefix.prefix_hashes == keys(body) and prefix.session_hash is None
    session = RoutingHints(session_key="conv-9")
    LocalRouter(make_policy("session_affinity")).fill_keys(session, "chat", body)
    assert session.session_hash == session_hash(body, "conv-9") and session.prefix_hashes is None


def test_local_router_counts_reservations_once() -> None:
    router = LocalRouter(make_policy("least_loaded_p2c"))
    router.reserve("req-1", "a", now=0)
    router.routed("req-1", "b")  # Serve sent it elsewhere: the reservation moves
    assert router.local == {"b": 1}
    router.reserve("req-2", "a", now=0)
    router.drop_stale_reservations(now=31)  # never sent
    assert router.local == {"b": 1}
    router.completed("b")
    assert router.local == {}


def test_policy_per_model_falls_back_to_the_apps() -> None:
    config = AppConfig.model_validate({
        "router": {"policy": "least_loaded", "affinity": {"load_bound": 0.5}},
        "models": [
            {"served_name": "chat", "source": "x", "router": {"policy": "prefix_aware",
                                                              "affinity": {"load_bound": 0.1}}},
            {"served_name": "other", "source": "y"},
        ],
    })
    chat_router = config.router.for_model(config.models[0])
    other_router = config.router.for_model(config.models[1])
    assert (chat_router.policy, chat_router.affinity.load_bound) == ("prefix_aware", 0.1)
    assert (other_router.policy, other_router.affinity.load_bound) == ("least_loaded", 0.5)
    with pytest.raises(ValueError, match="prefix_aware"):
        AppConfig.model_validate({"models": [{"served_name": "m", "source": "x", "router": {"policy": "nope"}}]})

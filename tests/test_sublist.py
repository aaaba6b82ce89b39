"""The sublist (chapter 4), in-process, as Go's server/sublist_test.go tests it.

`*` matches exactly one token, `>` one or more tokens at the end; a published
subject with an empty token matches nothing; queue subscriptions of one group
name are merged into one group across every matching node; `remove` prunes
the trie and says False for a subscription that is not there.  A randomized
property test drives thousands of subscribe/unsubscribe/match steps over a
small token alphabet (so subjects collide) and checks every match against a
brute-force matcher written here, with the result cache on and effectively
off; the cache must stay within `cache_max` entries.
"""
from __future__ import annotations

import os
import random

import pytest

from conftest import import_gnatsd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


gnatsd = import_gnatsd()
Sublist = gnatsd.Sublist
Subscription = gnatsd.Subscription


class FakeClient:
    """Subscriptions only need an owner to point at."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return "<client %s>" % self.name


CLIENT = FakeClient("c")


def sub(subject: str, queue: str | None = None, sid: str = "1", client=CLIENT) -> Subscription:
    return Subscription(client, subject.encode(), queue.encode() if queue else None, sid.encode())


def plain(result) -> set:
    return {s.subject.decode() for s in result.psubs}


def groups(result) -> dict:
    """{queue name: sorted subjects of its members} of a match result."""
    out = {}
    for group in result.qsubs:
        names = {s.queue for s in group}
        assert len(names) == 1, "a group mixes queue names: %r" % group
        name = names.pop().decode()
        assert name not in out, "queue group %r appears twice in one result" % name
        out[name] = sorted(s.subject.decode() for s in group)
    return out


def matching(sl: Sublist, subject: str) -> set:
    return plain(sl.match(subject.encode()))


# -- wildcards, exactly as Go ---------------------------------------------------------


@pytest.mark.parametrize("pattern, yes, no", [
    ("foo", ["foo"], ["foo.bar", "fo", "foox", "bar"]),
    ("foo.*", ["foo.bar", "foo.baz", "foo.*", "foo.>"], ["foo", "foo.bar.baz", "bar.foo"]),
    ("foo.>", ["foo.bar", "foo.bar.baz", "foo.a.b.c.d"], ["foo", "bar.foo", "foox.bar"]),
    (">", ["foo", "foo.bar", "a.b.c.d.e"], []),
    ("*", ["foo", "bar"], ["foo.bar"]),
    ("*.*", ["a.b", "foo.bar"], ["a", "a.b.c"]),
    ("*.bar", ["foo.bar", "x.bar"], ["foo.baz", "bar", "foo.bar.baz"]),
    ("foo.*.baz", ["foo.bar.baz", "foo.x.baz"], ["foo.baz", "foo.bar.bar.baz", "foo.bar.baz.x"]),
    ("*.>", ["a.b", "a.b.c"], ["a"]),
    ("foo.*.>", ["foo.a.b", "foo.a.b.c"], ["foo.a", "foo"]),
    ("*.*.*", ["a.b.c"], ["a.b", "a.b.c.d"]),
])
def test_wildcards_match_exactly_as_go(pattern, yes, no):
    sl = Sublist()
    sl.insert(sub(pattern))
    for subject in yes:
        assert matching(sl, subject) == {pattern}, (pattern, subject)
    for subject in no:
        assert matching(sl, subject) == set(), (pattern, subject)


def test_wildcard_characters_inside_a_token_are_literal():
    sl = Sublist()
    for pattern in ("foo*.bar", "foo.b>", "*foo"):
        sl.insert(sub(pattern))
    assert matching(sl, "foox.bar") == set()
    assert matching(sl, "foo*.bar") == {"foo*.bar"}
    assert matching(sl, "foo.bx") == set()
    assert matching(sl, "foo.b>") == {"foo.b>"}
    assert matching(sl, "*foo") == {"*foo"}


def test_every_matching_subscription_is_returned_once():
    sl = Sublist()
    patterns = ["foo.bar", "foo.*", "*.bar", "foo.>", ">", "*.*", "*.>"]
    for i, pattern in enumerate(patterns):
        sl.insert(sub(pattern, sid=str(i)))
    result = sl.match(b"foo.bar")
    assert sorted(s.subject.decode() for s in result.psubs) == sorted(patterns)
    assert len(result) == len(patterns)
    assert matching(sl, "foo") == {">"}
    assert matching(sl, "foo.bar.baz") == {"foo.>", ">", "*.>"}


@pytest.mark.parametrize("subject", ["foo..bar", ".foo", "foo.", ".", "..", "", "foo.bar."])
def test_published_subject_with_an_empty_token_matches_nothing(subject):
    sl = Sublist()
    for pattern in (">", "*", "foo.>", "foo.*", "*.bar", "*.*", "*.*.*", "foo", "*.>"):
        sl.insert(sub(pattern))
    result = sl.match(subject.encode())
    assert result.psubs == [] and result.qsubs == [] and len(result) == 0, subject
    # Asked again (now from the cache): still nothing.
    assert len(sl.match(subject.encode())) == 0


def test_has_interest_follows_insert_and_remove():
    sl = Sublist()
    s = sub("foo.*")
    assert not sl.has_interest(b"foo.bar")
    sl.insert(s)
    assert sl.has_interest(b"foo.bar")
    assert not sl.has_interest(b"foo")
    sl.remove(s)
    assert not sl.has_interest(b"foo.bar")


# -- queue groups ------------------------------------------------------------------


def test_queue_group_of_one_name_is_merged_across_matching_nodes():
    sl = Sublist()
    sl.insert(sub("foo.*", "q", "1"))
    sl.insert(sub("foo.bar", "q", "2"))
    result = sl.match(b"foo.bar")
    assert result.psubs == []
    assert groups(result) == {"q": ["foo.*", "foo.bar"]}
    assert len(result.qsubs) == 1
    # foo.baz reaches only the wildcard member.
    assert groups(sl.match(b"foo.baz")) == {"q": ["foo.*"]}


def test_queue_groups_merge_over_literal_star_and_full_wildcard():
    sl = Sublist()
    for i, pattern in enumerate(["foo.bar", "foo.*", "foo.>", ">", "*.bar"]):
        sl.insert(sub(pattern, "workers", str(i)))
    sl.insert(sub("foo.bar", "other", "10"))
    sl.insert(sub("foo.>", "other", "11"))
    sl.insert(sub("foo.bar", None, "12"))
    result = sl.match(b"foo.bar")
    assert plain(result) == {"foo.bar"}
    assert groups(result) == {"workers": sorted(["foo.bar", "foo.*", "foo.>", ">", "*.bar"]),
                              "other": ["foo.>", "foo.bar"]}
    assert len(result) == 8


def test_queue_subs_are_not_in_plain_subs_and_vice_versa():
    sl = Sublist()
    sl.insert(sub("foo", "q", "1"))
    sl.insert(sub("foo", None, "2"))
    result = sl.match(b"foo")
    assert [s.sid for s in result.psubs] == [b"2"]
    assert [[s.sid for s in g] for g in result.qsubs] == [[b"1"]]


# -- remove ------------------------------------------------------------------------


def test_remove_returns_true_once_then_false():
    sl = Sublist()
    s = sub("foo.bar")
    sl.insert(s)
    assert sl.count == 1
    assert sl.remove(s) is True
    assert sl.count == 0
    assert sl.remove(s) is False
    assert sl.count == 0


@pytest.mark.parametrize("inserted, removed", [
    (("foo.bar", None), ("foo.baz", None)),        # other literal subject
    (("foo.bar", None), ("foo", None)),            # a prefix of the subject
    (("foo", None), ("foo.bar", None)),            # longer than the subject
    (("foo.*", None), ("foo.>", None)),            # other wildcard on the same level
    (("foo.bar", "q"), ("foo.bar", None)),         # queue sub present, plain asked
    (("foo.bar", None), ("foo.bar", "q")),         # plain present, queue asked
    (("foo.bar", "q"), ("foo.bar", "r")),          # other group name
])
def test_remove_of_an_absent_subscription_returns_false_and_changes_nothing(inserted, removed):
    sl = Sublist()
    present = sub(*inserted)
    sl.insert(present)
    assert sl.remove(sub(*removed)) is False
    assert sl.count == 1
    assert sl.all_subscriptions() == [present]


def test_remove_of_an_equal_but_different_subscription_object_returns_false():
    sl = Sublist()
    sl.insert(sub("foo", None, "1"))
    assert sl.remove(sub("foo", None, "1")) is False   # identity, as Go's pointers
    assert sl.count == 1


def test_remove_prunes_emptied_nodes_back_to_an_empty_root():
    sl = Sublist()
    subs = [sub(p, q, str(i)) for i, (p, q) in enumerate([
        ("foo.bar.baz", None), ("foo.*.baz", None), ("foo.>", "q"), (">", None),
        ("*", "q"), ("foo.bar", None), ("a.b.c.d.e", None)])]
    for s in subs:
        sl.insert(s)
    for s in subs:
        assert sl.remove(s) is True
    assert sl.root.is_empty()
    assert sl.root.nodes == {} and sl.root.pwc is None and sl.root.fwc is None
    assert sl.count == 0
    assert sl.all_subscriptions() == []


def test_remove_keeps_nodes_that_still_lead_somewhere():
    sl = Sublist()
    short, long_ = sub("foo", sid="1"), sub("foo.bar", sid="2")
    sl.insert(short)
    sl.insert(long_)
    sl.remove(short)
    assert matching(sl, "foo.bar") == {"foo.bar"}
    assert matching(sl, "foo") == set()
    sl.remove(long_)
    assert sl.root.is_empty()


def test_remove_last_member_drops_the_queue_group():
    sl = Sublist()
    a, b = sub("foo", "q", "1"), sub("foo", "q", "2")
    sl.insert(a)
    sl.insert(b)
    sl.remove(a)
    assert groups(sl.match(b"foo")) == {"q": ["foo"]}
    sl.remove(b)
    assert sl.match(b"foo").qsubs == []
    assert sl.root.is_empty()


# -- the cache -----------------------------------------------------------------------


def test_cached_result_is_dropped_by_a_matching_insert_and_remove():
    sl = Sublist()
    assert matching(sl, "foo.bar") == set()
    assert b"foo.bar" in sl.cache
    wild = sub("foo.*")
    sl.insert(wild)
    assert matching(sl, "foo.bar") == {"foo.*"}
    lit = sub("foo.bar", sid="2")
    sl.insert(lit)
    assert matching(sl, "foo.bar") == {"foo.*", "foo.bar"}
    sl.remove(wild)
    assert matching(sl, "foo.bar") == {"foo.bar"}
    sl.remove(lit)
    assert matching(sl, "foo.bar") == set()


def test_cache_hit_counts_and_unrelated_insert_keeps_entry():
    sl = Sublist()
    sl.insert(sub("foo"))
    first = sl.match(b"foo")
    assert sl.match(b"foo") is first
    assert sl.cache_hits == 1
    sl.insert(sub("bar", sid="2"))
    sl.insert(sub("bar.*", sid="3"))
    assert sl.match(b"foo") is first       # nothing that matches foo changed
    gen = sl.genid
    sl.insert(sub(">", sid="4"))
    assert sl.genid == gen + 1
    assert sl.match(b"foo") is not first


@pytest.mark.parametrize("cache_max", [1, 2, 3, 4, 5, 8, 17, 1024])
def test_cache_never_holds_more_than_cache_max_entries(cache_max):
    sl = Sublist(cache_max=cache_max)
    sl.insert(sub(">"))
    for i in range(3 * cache_max + 50):
        assert len(sl.match(b"s.%d" % i)) == 1
        assert len(sl.cache) <= cache_max, (cache_max, i, len(sl.cache))


def test_cache_evicts_oldest_entries_first():
    sl = Sublist(cache_max=8)
    for i in range(8):
        sl.match(b"s.%d" % i)
    sl.match(b"s.new")
    assert b"s.new" in sl.cache
    assert b"s.0" not in sl.cache
    assert b"s.7" in sl.cache


# -- randomized property test against a brute-force matcher -------------------------------

TOKENS = ["a", "b", "c"]


def brute_matches(pattern: str, subject: str) -> bool:
    """The NATS rule, written independently of gnatsd.py."""
    st = subject.split(".")
    if any(t == "" for t in st):
        return False
    pt = pattern.split(".")
    for i, p in enumerate(pt):
        if p == ">":
            return len(st) > i
        if i >= len(st):
            return False
        if p != "*" and p != st[i]:
            return False
    return len(st) == len(pt)


def random_pattern(rng: random.Random) -> str:
    n = rng.randint(1, 4)
    toks = [rng.choice(TOKENS + ["*", "*"]) for _ in range(n)]
    if rng.random() < 0.25:
        toks[-1] = ">"
    return ".".join(toks)


def random_subject(rng: random.Random) -> str:
    n = rng.randint(1, 4)
    subject = ".".join(rng.choice(TOKENS) for _ in range(n))
    r = rng.random()
    if r < 0.03:
        subject = subject + "."
    elif r < 0.06:
        subject = "." + subject
    elif r < 0.09:
        subject = subject.replace(".", "..", 1) if "." in subject else subject + "..x"
    return subject


def check_match(sl: Sublist, live: list, subject: str, step: int):
    result = sl.match(subject.encode())
    want_plain = sorted(id(s) for s in live if s.queue is None
                        and brute_matches(s.subject.decode(), subject))
    want_groups: dict = {}
    for s in live:
        if s.queue is not None and brute_matches(s.subject.decode(), subject):
            want_groups.setdefault(s.queue, []).append(id(s))
    got_plain = sorted(id(s) for s in result.psubs)
    assert got_plain == want_plain, "step %d: plain subs for %r differ" % (step, subject)
    got_groups = {}
    for group in result.qsubs:
        assert group, "step %d: empty queue group for %r" % (step, subject)
        name = group[0].queue
        assert all(s.queue == name for s in group)
        assert name not in got_groups, "step %d: group %r split in two" % (step, name)
        got_groups[name] = sorted(id(s) for s in group)
    assert got_groups == {k: sorted(v) for k, v in want_groups.items()}, (
        "step %d: queue groups for %r differ" % (step, subject))
    assert len(result) == len(want_plain) + sum(len(v) for v in want_groups.values())


def cache_index_keys(node: dict) -> list:
    """Every subject in a sublist's cache index (its token trie), sorted."""
    keys = []
    stack = [node]
    while stack:
        level = stack.pop()
        for token, child in level.items():
            if token is None:
                keys.append(child)
            else:
                assert child, "an empty branch was left in the cache index"
                stack.append(child)
    return sorted(keys)


def run_random(seed: int, steps: int, cache_max: int, cache_off: bool):
    rng = random.Random(seed)
    sl = Sublist(cache_max=cache_max)
    live: list = []
    removed: list = []
    clients = [FakeClient(str(i)) for i in range(3)]
    sid = 0
    for step in range(steps):
        r = rng.random()
        if r < 0.30 or not live:
            sid += 1
            queue = rng.choice([None, None, "q1", "q2"])
            s = Subscription(rng.choice(clients), random_pattern(rng).encode(),
                             queue.encode() if queue else None, b"%d" % sid)
            sl.insert(s)
            live.append(s)
        elif r < 0.50:
            s = live.pop(rng.randrange(len(live)))
            assert sl.remove(s) is True, "step %d: remove of a live sub failed" % step
            removed.append(s)
        elif r < 0.53 and removed:
            assert sl.remove(rng.choice(removed)) is False, "step %d: removed twice" % step
        else:
            if cache_off:
                sl.clear_cache()
            check_match(sl, live, random_subject(rng), step)
        assert sl.count == len(live), "step %d: count" % step
        assert sl.cache_index is None or cache_index_keys(sl.cache_index) == sorted(sl.cache), (
            "step %d: the cache's token trie and the cache differ" % step)
        assert len(sl.cache) <= cache_max, "step %d: cache has %d > %d entries" % (
            step, len(sl.cache), cache_max)
    # Every subject over the alphabet agrees at the end, then removing all prunes.
    for subject in [".".join(t) for n in (1, 2, 3, 4)
                    for t in __import__("itertools").product(TOKENS, repeat=n)]:
        check_match(sl, live, subject, steps)
    assert sorted(map(id, sl.all_subscriptions())) == sorted(map(id, live))
    for s in live:
        assert sl.remove(s) is True
    assert sl.root.is_empty() and sl.count == 0


@pytest.mark.parametrize("seed", [1, 2, 3, 42, 2024])
def test_random_churn_matches_brute_force_with_cache(seed):
    run_random(seed, 5000, cache_max=gnatsd.SUBLIST_CACHE_MAX, cache_off=False)


@pytest.mark.parametrize("seed", [7, 99])
def test_random_churn_matches_brute_force_with_small_cache(seed):
    # Eight entries: eviction runs all the time, interleaved with invalidation.
    run_random(seed, 5000, cache_max=8, cache_off=False)


@pytest.mark.parametrize("seed", [5, 1234])
def test_random_churn_matches_brute_force_without_cache(seed):
    # The cache is emptied before every match, so every answer is a fresh walk.
    run_random(seed, 5000, cache_max=gnatsd.SUBLIST_CACHE_MAX, cache_off=True)

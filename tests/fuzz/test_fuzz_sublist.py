"""Fuzz the sublist: random subscribe / unsubscribe / match sequences
against a brute-force matcher, with the default cache and with tiny ones
(cache_max 1, 2 and 5, so entries are evicted all the time).

The brute force keeps a plain list of live subscriptions and matches each
subject token by token (`*` one token, `>` one or more, last only; a
published `*` or `>` is just a token; an empty token matches nothing).
`match` must return the same subscriptions, as a multiset, with queue
subscriptions grouped by queue name (one group per name).
"""
from __future__ import annotations

from collections import Counter

from hypothesis import given, strategies as st

from conftest import import_gnatsd
from fuzzing import FUZZ_SETTINGS, run_fuzzer

g = import_gnatsd()

TOKEN = st.sampled_from([b"a", b"b", b"c", b"foo", b"*", b">"])
PUB_TOKEN = st.sampled_from([b"a", b"b", b"c", b"foo", b"d", b"*", b">", b""])


def _valid_sub_subject(tokens):
    # `>` only last (what is_valid_subject lets a client insert)
    return b">" not in tokens[:-1]


SUB_SUBJECT = st.lists(TOKEN, min_size=1, max_size=5).filter(_valid_sub_subject).map(b".".join)
PUB_SUBJECT = st.lists(PUB_TOKEN, min_size=1, max_size=6).map(b".".join)
QUEUE = st.one_of(st.none(), st.none(), st.sampled_from([b"q1", b"q2"]))

OPS = st.lists(st.one_of(
    st.tuples(st.just("sub"), SUB_SUBJECT, QUEUE),
    st.tuples(st.just("sub"), SUB_SUBJECT, QUEUE),
    st.tuples(st.just("unsub"), st.integers(0, 1000)),
    st.tuples(st.just("unsub_again"), st.integers(0, 1000)),
    st.tuples(st.just("match"), PUB_SUBJECT),
    st.tuples(st.just("match"), PUB_SUBJECT),
    st.tuples(st.just("clear"),),
), max_size=60)


def brute_matches(pattern: bytes, subject: bytes) -> bool:
    p, s = pattern.split(b"."), subject.split(b".")
    if b"" in s:
        return False
    for i, tok in enumerate(p):
        if tok == b">":
            return len(s) > i
        if i >= len(s):
            return False
        if tok != b"*" and tok != s[i]:
            return False
    return len(p) == len(s)


def check(ops, cache_max):
    sl = g.Sublist(cache_max=cache_max) if cache_max else g.Sublist()
    live = []      # inserted and not removed
    removed = []   # removed ones (removing again must say False)
    sid = 0
    for op in ops:
        kind = op[0]
        if kind == "sub":
            sid += 1
            sub = g.Subscription(None, op[1], op[2], b"%d" % sid)
            sl.insert(sub)
            live.append(sub)
        elif kind == "unsub" and live:
            sub = live.pop(op[1] % len(live))
            assert sl.remove(sub) is True
            removed.append(sub)
        elif kind == "unsub_again" and removed:
            assert sl.remove(removed[op[1] % len(removed)]) is False
        elif kind == "match":
            subject = op[1]
            result = sl.match(subject)
            want = [s for s in live if brute_matches(s.subject, subject)]
            got = list(result.psubs) + [s for grp in result.qsubs for s in grp]
            assert Counter(map(id, got)) == Counter(map(id, want)), (
                subject, [s.subject for s in got], [s.subject for s in want])
            assert all(s.queue is None for s in result.psubs)
            names = [grp[0].queue for grp in result.qsubs]
            assert len(names) == len(set(names)) and all(grp for grp in result.qsubs)
            assert all(s.queue == grp[0].queue for grp in result.qsubs for s in grp)
            assert len(result) == len(want)
        elif kind == "clear":
            sl.clear_cache()
        assert sl.count == len(live)
        assert len(sl.cache) <= max(cache_max or g.SUBLIST_CACHE_MAX, 1)
    assert Counter(map(id, sl.all_subscriptions())) == Counter(map(id, live))


def test_fuzz_sublist_matches_brute_force():
    count = [0]

    @FUZZ_SETTINGS
    @given(OPS, st.sampled_from([0, 0, 1, 2, 5]))
    def prop(ops, cache_max):
        count[0] += 1
        check(ops, cache_max)

    assert run_fuzzer("sublist", prop, count) > 0

"""The PUB hot path, exercised the way clients use it (issue 11).

Clients such as nats-py send `"pedantic":false`, and that is when
gnatsd.py's hot path takes their PUB lines: `PUB <subject>` finds the
subject's delivery plan among the lines the client sent before (each vetted
once: permissions, echo, max_control_line), the last token its size, and a
plan is retired when the sublist drops its cached result.  Every test
here connects with verbose and pedantic off, publishes lines that repeat
and lines that vary (subjects, sizes, replies), and checks the exact bytes
against Go 2.9 and 2.15 (the `start`/`kind` fixtures), so a hot path that
skipped a check the reference path makes, or kept an answer past the
moment it changed (a reload, a second CONNECT), fails here.

Facts from Go 2.9.10 and 2.15.1 (they agree unless said otherwise):

* A PUB whose subject a reload has denied gets `-ERR 'Permissions Violation
  for Publish to "SUBJ"'` at once, and the subscriber gets nothing; one a
  second CONNECT (as another user) denies, the same.
* A reload lowering max_payload applies to a connection that published
  larger messages before: `-ERR 'Maximum Payload Violation'`, closed.
* `UNSUB sid 3` ends delivery after exactly 3 messages however they vary;
  a queue group of 2 gets each message once; echo off keeps a client's
  own messages from it, not from others.
* A PUB line longer than max_control_line is refused as such even when its
  subject was published to before.
"""
from __future__ import annotations

import collections
import random
import re

import pytest

from conftest import (RawConn, go_server_path, monitor_json, t_expect, t_expect_exact,
                      t_ping_pong, t_read_until_closed, wait_mesh, write_conf)
from test_cluster import interest_barrier, raw_route, route_ops_until_pong
from test_leafnodes import (KIND_PARAMS, client_of, leafz, nodes, ops_until_pong,  # noqa: F401
                            start_hub, start_node, wait_leafs)
from test_monitor import attach_monitor
from test_reload import assert_reloaded, reload

QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'


def quiet_client(srv, connect: bytes = QUIET) -> RawConn:
    conn = RawConn(srv.host, srv.port)
    conn.read_info()
    conn.send(connect)
    t_ping_pong(conn)
    return conn


def login(user: str, password: str, echo: bool = True) -> bytes:
    return (b'CONNECT {"verbose":false,"pedantic":false,"echo":%s,"user":"%s","pass":"%s"}\r\n'
            % (b"true" if echo else b"false", user.encode(), password.encode()))


def until_pong(conn: RawConn) -> bytes:
    """Everything the connection gets before the PONG to a PING sent now."""
    conn.send(b"PING\r\n")
    return t_expect(conn, rb"(.*?)PONG\r\n").group(1)


def subscriber(srv, subject: bytes, sid: bytes = b"1", connect: bytes = QUIET) -> RawConn:
    """A client with its SUB on `subject` in place."""
    sub = quiet_client(srv, connect)
    sub.send(b"SUB %s %s\r\n" % (subject, sid))
    t_ping_pong(sub)
    return sub


def sub_and_pub(srv, subject: bytes = b"hot.>", connect: bytes = QUIET) -> tuple:
    """A subscriber on `subject` (sid 1), its SUB in place, and a publisher."""
    return subscriber(srv, subject, b"1", connect), quiet_client(srv, connect)


def publish(pub: RawConn, msgs: list):
    """Send `msgs` as PUB lines and wait for the PONG after them."""
    pub.send(pubs(msgs))
    t_ping_pong(pub)


def varied(seed: int, count: int, subjects: list, reply: bool = False) -> list:
    """(subject, reply or None, payload) with sizes that change per message."""
    rnd = random.Random(seed)
    out = []
    for k in range(count):
        size = rnd.choice([0, 1, 2, 9, 10, 99, 100, 255, 1000])
        payload = bytes(rnd.choice(b"abc\r\n .") for _ in range(size))
        out.append((rnd.choice(subjects), b"_INBOX.r.%d" % k if reply else None, payload))
    return out


def pubs(msgs: list) -> bytes:
    return b"".join(b"PUB %s %s%d\r\n%s\r\n" % (s, r + b" " if r else b"", len(p), p)
                    for s, r, p in msgs)


def msgs_for(msgs: list, sid: bytes) -> bytes:
    return b"".join(b"MSG %s %s %s%d\r\n%s\r\n" % (s, sid, r + b" " if r else b"", len(p), p)
                    for s, r, p in msgs)


# -- plain traffic: subjects, sizes and replies that change ----------------------------


@pytest.mark.parametrize("reply", [False, True], ids=["no-reply", "distinct-replies"])
def test_varying_subjects_sizes_and_replies_arrive_byte_exact_in_order(start, reply):
    srv = start()
    sub = subscriber(srv, b"hot.>", b"7")
    pub = quiet_client(srv)
    msgs = varied(1, 400, [b"hot.a", b"hot.b.c", b"hot.%d" % 7, b"hot.a"], reply)
    # Repeats too: the same line several times in a row.
    msgs += [(b"hot.same", None, b"0123456789")] * 50 + varied(2, 50, [b"hot.z"], reply)
    publish(pub, msgs)
    assert until_pong(sub) == msgs_for(msgs, b"7")


def test_odd_spacing_and_tabs_are_read_as_the_reference_path_reads_them(start):
    """Lines the hot path must leave to the reference path: tabs, doubled
    spaces, a lower-case op, a LF without CR, each right after the same
    subject took the hot path."""
    srv = start()
    sub = subscriber(srv, b"odd", b"1")
    pub = quiet_client(srv)
    pub.send(b"PUB odd 2\r\nok\r\n"
             b"PUB odd\t2\r\nt1\r\n"
             b"PUB  odd 2\r\nt2\r\n"
             b"PUB odd  2\r\nt3\r\n"
             b"pub odd 2\r\nt4\r\n"
             b"PUB odd 2\nt5\r\n"
             b"PUB odd 2\r\nok\r\n")
    t_ping_pong(pub)
    assert until_pong(sub) == b"".join(b"MSG odd 1 2\r\n%s\r\n" % p
                                       for p in (b"ok", b"t1", b"t2", b"t3", b"t4", b"t5",
                                                 b"ok"))


REPLY_LINES = [
    # (the line after three plain PUBs on hot.r, what hot.> gets; None: the
    # publisher is closed)
    (b"PUB hot.r _INBOX.a 2\r\nok\r\n", b"MSG hot.r 1 _INBOX.a 2\r\nok\r\n"),
    (b"PUB hot.r rep  2\r\nt1\r\n", b"MSG hot.r 1 rep 2\r\nt1\r\n"),
    (b"PUB hot.r  2\r\nt2\r\n", b"MSG hot.r 1 2\r\nt2\r\n"),
    (b"PUB hot.r re\rply 2\r\nt3\r\n", b"MSG hot.r 1 re\rply 2\r\nt3\r\n"),
    (b"PUB hot.r re\tply 2\r\nt4\r\n", None),
    (b"PUB hot.r a b 2\r\nt5\r\n", None),
    (b"PUB hot.r " + b"r" * 60 + b" 2\r\nt6\r\n", None),
]


def test_replies_on_a_known_subject_are_read_as_the_reference_path_reads_them(start, tmp_path):
    srv = start("-c", write_conf(tmp_path, "max_control_line: 64\n"))
    for line, delivered in REPLY_LINES:
        sub, pub = sub_and_pub(srv)
        pub.send(b"PUB hot.r 1\r\nx\r\n" * 3 + line + b"PING\r\n")
        warm = b"MSG hot.r 1 1\r\nx\r\n" * 3
        if delivered is None:
            assert b"PONG" not in t_read_until_closed(pub), line
            assert until_pong(sub) == warm, line
        else:
            t_expect_exact(pub, b"PONG\r\n")
            assert until_pong(sub) == warm + delivered, line


def test_a_reply_on_a_subject_whose_plan_a_sub_retired(start):
    srv = start()
    first, pub = sub_and_pub(srv)
    pub.send(b"PUB hot.r _INBOX.1 1\r\na\r\n" + b"PUB hot.r 1\r\nx\r\n" * 3)
    t_ping_pong(pub)
    assert until_pong(first) == b"MSG hot.r 1 _INBOX.1 1\r\na\r\n" + b"MSG hot.r 1 1\r\nx\r\n" * 3
    second, _ = sub_and_pub(srv, b"hot.r")
    pub.send(b"PUB hot.r _INBOX.2 1\r\nb\r\n")
    t_ping_pong(pub)
    assert until_pong(first) == b"MSG hot.r 1 _INBOX.2 1\r\nb\r\n"
    assert until_pong(second) == b"MSG hot.r 1 _INBOX.2 1\r\nb\r\n"


def test_an_overlong_line_on_a_known_subject_is_still_refused(start):
    srv = start()
    pub = quiet_client(srv)
    subject = b"s" * 5000
    pub.send(b"PUB %s 1\r\nx\r\n" % b"hot.long")
    t_ping_pong(pub)
    pub.send(b"PUB hot.long 1\r\nx\r\nPUB " + subject + b" 1\r\nx\r\n")
    assert t_read_until_closed(pub) == b"-ERR 'maximum control line exceeded'\r\n"


def test_a_known_subject_with_a_longer_size_token_is_still_refused(start, tmp_path):
    # `PUB <44 bytes> 1` fits max_control_line 48; the same subject with a
    # 9-digit size token does not, though the line was seen before.
    srv = start("-c", write_conf(tmp_path, "max_control_line: 48\n"))
    pub = quiet_client(srv)
    subject = b"hot." + b"s" * 40
    pub.send(b"PUB %s 1\r\nx\r\nPUB hot.x 000000001\r\nx\r\n" % subject)
    t_ping_pong(pub)      # (both the subject and the size token were seen)
    pub.send(b"PUB %s 1\r\nx\r\nPUB %s 000000001\r\nx\r\n" % (subject, subject))
    assert t_read_until_closed(pub) == b"-ERR 'maximum control line exceeded'\r\n"


# -- what the hot path must notice changing --------------------------------------------


def test_an_unsubscribe_after_the_subject_left_the_cache_is_seen(start):
    # The publisher's known line outlives the sublist's cached result for
    # its subject (1,500 other subjects make room); an UNSUB after that
    # must still stop delivery.
    srv = start()
    sub = quiet_client(srv)
    sub.send(b"SUB hot.0 1\r\nSUB other.> 2\r\n")
    t_ping_pong(sub)
    pub = quiet_client(srv)
    pub.send(b"PUB hot.0 2\r\nok\r\n")
    t_ping_pong(pub)
    assert until_pong(sub) == b"MSG hot.0 1 2\r\nok\r\n"
    pub.send(b"".join(b"PUB other.%d 1\r\nx\r\n" % k for k in range(1500)))
    t_ping_pong(pub)
    assert until_pong(sub).count(b"MSG other.") == 1500
    sub.send(b"UNSUB 1\r\n")
    t_ping_pong(sub)
    pub.send(b"PUB hot.0 3\r\nbad\r\nPUB other.x 4\r\ngood\r\n")
    t_ping_pong(pub)
    assert until_pong(sub) == b"MSG other.x 2 4\r\ngood\r\n"



PERMS = """
authorization { users = [
  { user: a, password: pa, permissions: { publish: { allow: ["hot.>"] } } }
  { user: b, password: pb, permissions: { publish: { allow: ["hot.>"], deny: ["hot.secret"] } } }
  { user: s, password: ps }
] }
"""


def test_a_publish_a_reload_denies_is_refused_at_once(start, tmp_path):
    conf = write_conf(tmp_path, PERMS)
    srv = start("-c", conf)
    sub = quiet_client(srv, login("s", "ps"))
    sub.send(b"SUB hot.> 1\r\n")
    t_ping_pong(sub)
    pub = quiet_client(srv, login("a", "pa"))
    warm = varied(3, 30, [b"hot.secret", b"hot.open"])
    publish(pub, warm)
    assert until_pong(sub) == msgs_for(warm, b"1")
    assert_reloaded(reload(srv, conf, PERMS.replace('allow: ["hot.>"] } } }\n  { user: b',
                                                    'allow: ["hot.>"], deny: ["hot.secret"] }'
                                                    ' } }\n  { user: b')))
    pub.send(b"PUB hot.secret 5\r\nhello\r\nPUB hot.open 2\r\nok\r\n")
    t_expect_exact(pub, b"-ERR 'Permissions Violation for Publish to \"hot.secret\"'\r\n")
    t_ping_pong(pub)
    assert until_pong(sub) == b"MSG hot.open 1 2\r\nok\r\n"


def test_a_publish_a_second_connect_denies_is_refused(start, tmp_path):
    srv = start("-c", write_conf(tmp_path, PERMS))
    sub = quiet_client(srv, login("s", "ps"))
    sub.send(b"SUB hot.> 1\r\n")
    t_ping_pong(sub)
    pub = quiet_client(srv, login("a", "pa"))
    warm = varied(4, 20, [b"hot.secret"])
    publish(pub, warm)
    assert until_pong(sub) == msgs_for(warm, b"1")
    pub.send(login("b", "pb") + b"PUB hot.secret 3\r\nabc\r\nPUB hot.x 1\r\ny\r\n")
    t_expect_exact(pub, b"-ERR 'Permissions Violation for Publish to \"hot.secret\"'\r\n")
    t_ping_pong(pub)
    assert until_pong(sub) == b"MSG hot.x 1 1\r\ny\r\n"


def test_max_payload_lowered_by_a_reload_applies_to_a_warm_subject(start, tmp_path):
    conf = write_conf(tmp_path, "max_payload: 2048\n")
    srv = start("-c", conf)
    pub = quiet_client(srv)
    pub.send(pubs(varied(5, 40, [b"hot.big"])) + b"PUB hot.big 1500\r\n" + b"x" * 1500 + b"\r\n")
    t_ping_pong(pub)
    assert_reloaded(reload(srv, conf, "max_payload: 1024\n"), "max_payload = 1024")
    pub.send(b"PUB hot.big 10\r\n0123456789\r\nPUB hot.big 1500\r\n" + b"x" * 1500 + b"\r\n")
    assert t_read_until_closed(pub) == b"-ERR 'Maximum Payload Violation'\r\n"


def test_unsub_max_stops_after_exactly_that_many_varying_messages(start):
    srv = start()
    sub = quiet_client(srv)
    sub.send(b"SUB hot.> 1\r\nUNSUB 1 3\r\n")
    t_ping_pong(sub)
    pub = quiet_client(srv)
    msgs = varied(6, 10, [b"hot.a", b"hot.b"])
    publish(pub, msgs)
    assert until_pong(sub) == msgs_for(msgs[:3], b"1")


def test_a_queue_group_gets_each_varying_message_once(start):
    srv = start()
    members = [quiet_client(srv) for _ in range(2)]
    for k, m in enumerate(members):
        m.send(b"SUB hot.> q %d\r\n" % (k + 1))
        t_ping_pong(m)
    pub = quiet_client(srv)
    msgs = varied(7, 200, [b"hot.a", b"hot.b", b"hot.c"])
    publish(pub, msgs)
    got = [until_pong(m) for m in members]
    frames = [re.findall(rb"MSG (\S+) (\d) (\d+)\r\n", g) for g in got]
    assert sum(len(f) for f in frames) == len(msgs)
    assert all(f for f in frames), "one member got nothing in 200 messages"


def test_echo_off_keeps_a_clients_own_varying_messages_from_it(start):
    srv = start()
    me = quiet_client(srv, b'CONNECT {"verbose":false,"pedantic":false,"echo":false}\r\n')
    me.send(b"SUB hot.> 1\r\n")
    t_ping_pong(me)
    other = subscriber(srv, b"hot.>", b"2")
    msgs = varied(8, 50, [b"hot.a", b"hot.b"])
    publish(me, msgs)
    assert until_pong(me) == b""
    assert until_pong(other) == msgs_for(msgs, b"2")
    third = quiet_client(srv)
    publish(third, msgs[:5])
    assert until_pong(me) == msgs_for(msgs[:5], b"1")


def test_headers_interleaved_with_plain_publishes_keep_their_order(start):
    srv = start()
    hdr_conn = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
    sub = quiet_client(srv, hdr_conn)
    sub.send(b"SUB hot.h 1\r\n")
    t_ping_pong(sub)
    pub = quiet_client(srv, hdr_conn)
    head = b"NATS/1.0\r\nA: b\r\n\r\n"
    out, want = b"", b""
    for k in range(30):
        body = b"m%d" % k
        if k % 3 == 0:
            out += b"HPUB hot.h %d %d\r\n%s%s\r\n" % (len(head), len(head) + len(body), head, body)
            want += b"HMSG hot.h 1 %d %d\r\n%s%s\r\n" % (len(head), len(head) + len(body), head,
                                                          body)
        else:
            out += b"PUB hot.h %d\r\n%s\r\n" % (len(body), body)
            want += b"MSG hot.h 1 %d\r\n%s\r\n" % (len(body), body)
    pub.send(out)
    t_ping_pong(pub)
    assert until_pong(sub) == want


# -- headers: HPUB lines remembered with their header size -----------------------------
#
# `HPUB <subject> <hdr>` is remembered as `PUB <subject>` is (HeaderLine), so
# these send the same HPUB lines again with other totals and check that what
# the first one settled is checked again where it may change.

HEADERS = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
BLOCKS = [b"NATS/1.0\r\n\r\n", b"NATS/1.0\r\nA: b\r\n\r\n",
          b"NATS/1.0\r\nKey: " + b"v" * 40 + b"\r\n\r\n"]


def with_headers(seed: int, count: int, subjects: list) -> list:
    """(subject, header block, payload): three header sizes, payloads that vary."""
    rnd = random.Random(seed)
    return [(rnd.choice(subjects), rnd.choice(BLOCKS),
             bytes(rnd.choice(b"ab\r\n ") for _ in range(rnd.choice([0, 1, 9, 100, 700]))))
            for _ in range(count)]


def hpubs(msgs: list) -> bytes:
    return b"".join(b"HPUB %s %d %d\r\n%s%s\r\n" % (s, len(h), len(h) + len(p), h, p)
                    for s, h, p in msgs)


def hmsgs_for(msgs: list, sid: bytes) -> bytes:
    return b"".join(b"HMSG %s %s %d %d\r\n%s%s\r\n" % (s, sid, len(h), len(h) + len(p), h, p)
                    for s, h, p in msgs)


def test_repeated_hpub_lines_reach_a_subscriber_and_a_queue_group_byte_exact(start):
    srv = start()
    sub = subscriber(srv, b"hot.>", b"7", HEADERS)
    members = [subscriber(srv, b"hot.> q", b"%d" % k, HEADERS) for k in (1, 2)]
    pub = quiet_client(srv, HEADERS)
    msgs = with_headers(1, 300, [b"hot.a", b"hot.b.c", b"hot.a"])
    pub.send(hpubs(msgs))
    t_ping_pong(pub)
    assert until_pong(sub) == hmsgs_for(msgs, b"7")
    got = [until_pong(m) for m in members]
    frames = [re.findall(rb"HMSG (\S+) \d (\d+) (\d+)\r\n", g) for g in got]
    assert sum(len(f) for f in frames) == len(msgs)
    assert sorted(f for member in frames for f in member) == sorted(
        (s, b"%d" % len(h), b"%d" % (len(h) + len(p))) for s, h, p in msgs)


def test_an_hpub_line_whose_plan_a_sub_retired_reaches_the_new_subscriber(start):
    srv = start()
    first = subscriber(srv, b"hot.>", b"1", HEADERS)
    pub = quiet_client(srv, HEADERS)
    warm = with_headers(2, 20, [b"hot.h"])
    pub.send(hpubs(warm))
    t_ping_pong(pub)
    assert until_pong(first) == hmsgs_for(warm, b"1")
    second = subscriber(srv, b"hot.h", b"2", HEADERS)
    more = with_headers(3, 20, [b"hot.h"])
    pub.send(hpubs(more))
    t_ping_pong(pub)
    assert until_pong(first) == hmsgs_for(more, b"1")
    assert until_pong(second) == hmsgs_for(more, b"2")


HPUB_REPLY_LINES = [
    # (the line after three HPUBs on hot.r with a 12-byte header, what hot.>
    # gets; None: the publisher is closed)
    (b"HPUB hot.r _INBOX.a 12 14\r\nNATS/1.0\r\n\r\nok\r\n",
     b"HMSG hot.r 1 _INBOX.a 12 14\r\nNATS/1.0\r\n\r\nok\r\n"),
    (b"HPUB hot.r rep  12 14\r\nNATS/1.0\r\n\r\nt1\r\n",
     b"HMSG hot.r 1 rep 12 14\r\nNATS/1.0\r\n\r\nt1\r\n"),
    (b"HPUB hot.r  12 14\r\nNATS/1.0\r\n\r\nt2\r\n",
     b"HMSG hot.r 1 12 14\r\nNATS/1.0\r\n\r\nt2\r\n"),
    (b"HPUB hot.r re\rply 12 14\r\nNATS/1.0\r\n\r\nt3\r\n",
     b"HMSG hot.r 1 re\rply 12 14\r\nNATS/1.0\r\n\r\nt3\r\n"),
    (b"HPUB hot.r re\tply 12 14\r\nNATS/1.0\r\n\r\nt4\r\n", None),
    (b"HPUB hot.r a b 12 14\r\nNATS/1.0\r\n\r\nt5\r\n", None),
    (b"HPUB hot.r " + b"r" * 60 + b" 12 14\r\nNATS/1.0\r\n\r\nt6\r\n", None),
    (b"HPUB hot.r _INBOX.b 12 11\r\nNATS/1.0\r\n\r\n\r\n", None),
]


def test_replies_on_a_known_hpub_line_are_read_as_the_reference_path_reads_them(start,
                                                                                tmp_path):
    srv = start("-c", write_conf(tmp_path, "max_control_line: 64\n"))
    warm_line = b"HPUB hot.r 12 13\r\nNATS/1.0\r\n\r\nx\r\n"
    warm = b"HMSG hot.r 1 12 13\r\nNATS/1.0\r\n\r\nx\r\n" * 3
    for line, delivered in HPUB_REPLY_LINES:
        sub, pub = sub_and_pub(srv, connect=HEADERS)
        pub.send(warm_line * 3 + b"PUB hot.x 11\r\n0123456789a\r\n" + line + b"PING\r\n")
        if delivered is None:
            assert b"PONG" not in t_read_until_closed(pub), line
            assert until_pong(sub) == warm + b"MSG hot.x 1 11\r\n0123456789a\r\n", line
        else:
            t_expect_exact(pub, b"PONG\r\n")
            assert until_pong(sub) == warm + b"MSG hot.x 1 11\r\n0123456789a\r\n" + \
                delivered, line


def test_requests_with_headers_on_known_lines_arrive_byte_exact(start):
    srv = start()
    sub = subscriber(srv, b"hot.>", b"7", HEADERS)
    members = [subscriber(srv, b"hot.q.> q", b"%d" % k, HEADERS) for k in (1, 2)]
    pub = quiet_client(srv, HEADERS)
    msgs = with_headers(6, 200, [b"hot.a", b"hot.q.b"])
    inboxes = [b"_INBOX.x.%d" % k for k in range(len(msgs))]
    pub.send(b"".join(b"HPUB %s %s%d %d\r\n%s%s\r\n" % (
        s, r + b" " if k % 3 else b"", len(h), len(h) + len(p), h, p)
        for k, ((s, h, p), r) in enumerate(zip(msgs, inboxes))))
    t_ping_pong(pub)
    assert until_pong(sub) == b"".join(b"HMSG %s 7 %s%d %d\r\n%s%s\r\n" % (
        s, r + b" " if k % 3 else b"", len(h), len(h) + len(p), h, p)
        for k, ((s, h, p), r) in enumerate(zip(msgs, inboxes)))
    got = b"".join(until_pong(m) for m in members)
    assert sorted(re.findall(rb"HMSG hot\.q\.b \d (\S+ )?\d+ \d+\r\n", got)) == sorted(
        r + b" " if k % 3 else b"" for k, ((s, _, _), r) in enumerate(zip(msgs, inboxes))
        if s == b"hot.q.b")


def test_a_total_below_the_header_size_on_a_known_hpub_line_closes(start):
    srv = start()
    sub = subscriber(srv, b"hot.>", b"1", HEADERS)
    pub = quiet_client(srv, HEADERS)
    head = BLOCKS[1]
    warm = [(b"hot.h", head, b"xy")] * 3
    pub.send(hpubs(warm) + b"PUB hot.x %d\r\n%s\r\n" % (len(head) - 5, head[:-5]))
    t_ping_pong(pub)        # (the line and the size token are known)
    pub.send(b"HPUB hot.h %d %d\r\n%s\r\n" % (len(head), len(head) - 5, head[:-5]))
    assert t_read_until_closed(pub) == b""
    assert until_pong(sub) == hmsgs_for(warm, b"1") + b"MSG hot.x 1 %d\r\n%s\r\n" % (
        len(head) - 5, head[:-5])


def test_a_known_hpub_line_after_a_verbose_connect_gets_its_ok(start):
    srv = start()
    sub = subscriber(srv, b"hot.>", b"1", HEADERS)
    pub = quiet_client(srv, HEADERS)
    warm = [(b"hot.h", BLOCKS[1], b"xy")] * 3
    pub.send(hpubs(warm))
    t_ping_pong(pub)
    pub.send(HEADERS.replace(b'"verbose":false', b'"verbose":true') + hpubs(warm[:2]))
    t_expect_exact(pub, b"+OK\r\n+OK\r\n+OK\r\n")
    assert until_pong(sub) == hmsgs_for(warm + warm[:2], b"1")


def test_an_hpub_a_reload_denies_is_refused_at_once(start, tmp_path):
    conf = write_conf(tmp_path, PERMS)
    srv = start("-c", conf)
    sub = subscriber(srv, b"hot.>", b"1", HEADERS[:-3] + b',"user":"s","pass":"ps"}\r\n')
    pub = quiet_client(srv, HEADERS[:-3] + b',"user":"a","pass":"pa"}\r\n')
    warm = with_headers(4, 30, [b"hot.secret", b"hot.open"])
    pub.send(hpubs(warm))
    t_ping_pong(pub)
    assert until_pong(sub) == hmsgs_for(warm, b"1")
    assert_reloaded(reload(srv, conf, PERMS.replace('allow: ["hot.>"] } } }\n  { user: b',
                                                    'allow: ["hot.>"], deny: ["hot.secret"] }'
                                                    ' } }\n  { user: b')))
    pub.send(hpubs([(b"hot.secret", BLOCKS[1], b"hello"), (b"hot.open", BLOCKS[1], b"ok")]))
    t_expect_exact(pub, b"-ERR 'Permissions Violation for Publish to \"hot.secret\"'\r\n")
    t_ping_pong(pub)
    assert until_pong(sub) == hmsgs_for([(b"hot.open", BLOCKS[1], b"ok")], b"1")


def test_max_payload_lowered_by_a_reload_applies_to_a_known_hpub_line(start, tmp_path):
    conf = write_conf(tmp_path, "max_payload: 2048\n")
    srv = start("-c", conf)
    pub = quiet_client(srv, HEADERS)
    pub.send(hpubs(with_headers(5, 40, [b"hot.big"]) + [(b"hot.big", BLOCKS[0], b"x" * 1500)]))
    t_ping_pong(pub)
    assert_reloaded(reload(srv, conf, "max_payload: 1024\n"), "max_payload = 1024")
    pub.send(hpubs([(b"hot.big", BLOCKS[0], b"x" * 10), (b"hot.big", BLOCKS[0], b"x" * 1500)]))
    assert t_read_until_closed(pub) == b"-ERR 'Maximum Payload Violation'\r\n"


def test_a_traced_message_on_a_known_hpub_line_is_traced(start, kind):
    if kind == "go2.9":
        pytest.skip("message tracing arrived in nats-server 2.11")
    srv = start()
    sub = subscriber(srv, b"hot.>", b"1", HEADERS)
    tracer = subscriber(srv, b"traces", b"9", HEADERS)
    pub = quiet_client(srv, HEADERS)
    plain = b"NATS/1.0\r\nXats-Trace-Dest: traces\r\n\r\n"     # (the same size)
    traced = b"NATS/1.0\r\nNats-Trace-Dest: traces\r\n\r\n"
    warm = [(b"hot.h", plain, b"x" * k) for k in range(5)]
    pub.send(hpubs(warm + [(b"hot.h", traced, b"t")]))
    t_ping_pong(pub)
    assert until_pong(sub) == hmsgs_for(warm + [(b"hot.h", traced, b"t")], b"1")
    event = t_expect(tracer, rb"MSG traces 9 +(\d+)\r\n").group(1)    # (Go: two spaces)
    assert int(event) > 0


# -- many subjects: plans made from a shared shape --------------------------------------
#
# A subject seen for the first time gets its delivery plan from the shape of
# another subject the same subscriptions match (shape_for); these publish to
# more subjects than the sublist caches, so plans are made from shapes again
# and again, and change the subscriptions in between.

DENY = """
authorization { users = [
  { user: d, password: pd, permissions: { subscribe: { deny: ["hot.5", "hot.7.x"] } } }
  { user: s, password: ps }
] }
"""


def many(seed: int, count: int, reply: bool = False) -> list:
    """Messages over 2,000 subjects, one and three tokens deep."""
    rnd = random.Random(seed)
    out = []
    for k in range(count):
        n = rnd.randrange(1000)
        subject = b"hot.%d" % n if rnd.random() < 0.5 else b"hot.%d.x" % n
        payload = b"p%d" % k * rnd.randrange(4)
        out.append((subject, b"_INBOX.%d" % k if reply and k % 3 == 0 else None, payload))
    return out


def test_thousands_of_subjects_reach_wildcards_queues_and_a_deny_list_byte_exact(start, tmp_path):
    srv = start("-c", write_conf(tmp_path, DENY))
    every = quiet_client(srv, login("s", "ps"))
    every.send(b"SUB hot.> 1\r\n")
    two = quiet_client(srv, login("s", "ps"))
    two.send(b"SUB hot.* 2\r\nSUB hot.*.x 3\r\n")
    denied = quiet_client(srv, login("d", "pd"))
    denied.send(b"SUB hot.> 4\r\n")
    members = [quiet_client(srv, login("s", "ps")) for _ in range(2)]
    for k, m in enumerate(members):
        m.send(b"SUB hot.> q %d\r\n" % (k + 5))
    for conn in [every, two, denied] + members:
        t_ping_pong(conn)
    pub = quiet_client(srv, login("s", "ps"))
    msgs = many(9, 3000, reply=True)
    publish(pub, msgs)
    assert until_pong(every) == msgs_for(msgs, b"1")
    assert until_pong(two) == b"".join(
        msgs_for([m], b"3" if m[0].endswith(b".x") else b"2") for m in msgs)
    assert until_pong(denied) == msgs_for(
        [m for m in msgs if m[0] not in (b"hot.5", b"hot.7.x")], b"4")
    got = [until_pong(m) for m in members]
    assert sum(g.count(b"MSG hot.") for g in got) == len(msgs)


def test_new_subjects_after_a_change_see_it(start, tmp_path):
    """A shape outlives no change to what it was built from: a second
    subscriber, an auto-unsubscribe limit set on a subscription it holds, a
    reload giving a subscriber a deny list, an unsubscribe; each applies to
    the next subjects, seen before or not."""
    conf = write_conf(tmp_path, DENY.replace("hot.5", "hot.6"))
    srv = start("-c", conf)
    first = quiet_client(srv, login("s", "ps"))
    first.send(b"SUB hot.> 1\r\n")
    t_ping_pong(first)
    pub = quiet_client(srv, login("s", "ps"))
    batches = [many(k, 300) for k in range(10, 15)]
    publish(pub, batches[0])
    assert until_pong(first) == msgs_for(batches[0], b"1")
    second = quiet_client(srv, login("s", "ps"))
    second.send(b"SUB hot.> 2\r\n")
    t_ping_pong(second)
    publish(pub, batches[1])
    assert until_pong(first) == msgs_for(batches[1], b"1")
    assert until_pong(second) == msgs_for(batches[1], b"2")
    second.send(b"UNSUB 2 307\r\n")       # 300 delivered: 7 more
    t_ping_pong(second)
    publish(pub, batches[2])
    assert until_pong(first) == msgs_for(batches[2], b"1")
    assert until_pong(second) == msgs_for(batches[2][:7], b"2")
    assert_reloaded(reload(srv, conf, DENY.replace("user: s, password: ps", "user: s, "
                                                   "password: ps, permissions: { subscribe: "
                                                   "{ deny: [\"hot.5\"] } }")))
    publish(pub, batches[3])
    assert until_pong(first) == msgs_for([m for m in batches[3] if m[0] != b"hot.5"], b"1")
    first.send(b"UNSUB 1\r\n")
    t_ping_pong(first)
    publish(pub, batches[4])
    assert until_pong(first) == b""


# -- subjects the sublist cache let go (cold lines) ------------------------------------
#
# gnatsd.py's sublist caches 1,024 subjects; a subject published again after
# the cache let it go is found by its PUB line among the account's cold
# lines, delivered from the shape of its first match.  Every test here
# publishes COLD subjects once (so most leave the cache) and then again (so
# those come back from the cold lines), and checks that what the cold lines
# hold follows every change: subscriptions, echo, permissions, a reload.

COLD = 2500


def cold(seed: int, rounds: int = 2) -> list:
    """COLD subjects under `cold.`, each published once per round, a size per message."""
    rnd = random.Random(seed)
    return [(b"cold.%d" % k, None, b"r%d.%d" % (r, k) * rnd.randrange(3))
            for r in range(rounds) for k in range(COLD)]


def test_cold_subjects_follow_every_subscription_change(start):
    srv = start()
    first, pub = sub_and_pub(srv, b"cold.>")
    warm = cold(1)
    publish(pub, warm)
    assert until_pong(first) == msgs_for(warm, b"1")
    # A new subscriber, on a wildcard and on one subject: both see the
    # subjects the cold lines held.
    second = subscriber(srv, b"cold.*", b"2")
    one = subscriber(srv, b"cold.7", b"3")
    again = cold(2, rounds=1)
    publish(pub, again)
    assert until_pong(first) == msgs_for(again, b"1")
    assert until_pong(second) == msgs_for(again, b"2")
    assert until_pong(one) == msgs_for([m for m in again if m[0] == b"cold.7"], b"3")
    # An auto-unsubscribe limit: 5 more, and no more.
    second.send(b"UNSUB 2 %d\r\n" % (COLD + 5))
    t_ping_pong(second)
    more = cold(3, rounds=1)
    publish(pub, more)
    assert until_pong(first) == msgs_for(more, b"1")
    assert until_pong(second) == msgs_for(more[:5], b"2")
    assert until_pong(one) == msgs_for([m for m in more if m[0] == b"cold.7"], b"3")
    # An unsubscribe: nothing more for it.
    first.send(b"UNSUB 1\r\n")
    t_ping_pong(first)
    publish(pub, cold(4, rounds=1))
    assert until_pong(first) == b""


def test_cold_subjects_keep_echo_off_from_a_publishers_own_messages(start):
    srv = start()
    other = subscriber(srv, b"cold.>", b"1")
    quiet = quiet_client(srv, b'CONNECT {"verbose":false,"pedantic":false,"echo":false}\r\n')
    quiet.send(b"SUB cold.> 2\r\n")
    t_ping_pong(quiet)
    warm = cold(5)
    other.send(pubs(warm))          # the cold lines now hold every subject
    assert until_pong(other) == msgs_for(warm, b"1")
    assert until_pong(quiet) == msgs_for(warm, b"2")
    msgs = cold(6)
    publish(quiet, msgs)
    assert until_pong(other) == msgs_for(msgs, b"1")
    assert until_pong(quiet) == b""


def test_cold_subjects_keep_a_publishers_permissions(start, tmp_path):
    conf = write_conf(tmp_path, PERMS.replace('deny: ["hot.secret"]', 'deny: ["cold.13"]')
                      .replace('allow: ["hot.>"]', 'allow: ["cold.>"]'))
    srv = start("-c", conf)
    sub, free = sub_and_pub(srv, b"cold.>", login("s", "ps"))
    warm = cold(7)
    publish(free, warm)
    assert until_pong(sub) == msgs_for(warm, b"1")
    bound = quiet_client(srv, login("b", "pb"))
    bound.send(b"PUB cold.12 1\r\na\r\nPUB cold.13 1\r\nb\r\nPUB cold.14 1\r\nc\r\n")
    t_expect_exact(bound, b"-ERR 'Permissions Violation for Publish to \"cold.13\"'\r\n")
    t_ping_pong(bound)
    assert until_pong(sub) == b"MSG cold.12 1 1\r\na\r\nMSG cold.14 1 1\r\nc\r\n"


def test_a_reload_lowering_max_control_line_applies_to_cold_subjects(start, tmp_path):
    # `PUB cold.<44 bytes> 1` passes max_control_line 64 and not 40.
    conf = write_conf(tmp_path, "max_control_line: 64\n")
    srv = start("-c", conf)
    sub, pub = sub_and_pub(srv, b"cold.>")
    subjects = [b"cold.%044d" % k for k in range(COLD)]
    warm = [(s, None, b"w") for s in subjects * 2]
    publish(pub, warm)
    assert until_pong(sub) == msgs_for(warm, b"1")
    assert_reloaded(reload(srv, conf, "max_control_line: 40\n"), "max_control_line = 40")
    pub.send(pubs([(subjects[3], None, b"late")]))
    assert t_read_until_closed(pub) == b"-ERR 'maximum control line exceeded'\r\n"
    assert until_pong(sub) == b""


# -- runs on one subject, sizes free (deliver_subject_run) ------------------------------
#
# gnatsd.py takes the rest of a run of PUBs on one subject at once (after 8,
# SUBJECT_RUN_MIN, in a row): it splits the bytes ahead at every CRLF and
# `PUB <subject> ` and checks each piece is a record (it starts with the one
# size its length allows).  Payloads here hold CRLFs, the subject's own PUB line,
# whole fake records; sizes change their number of digits; the run breaks
# where Go's parser would; a record that must be refused sits at several
# places in the windows gnatsd.py splits.

RUN = b"hot.run"


def run_of(seed: int, count: int) -> list:
    rnd = random.Random(seed)
    tricks = [b"PUB hot.run ", b"PUB hot.run 3\r\nabc\r\n", b"\r\n", b"PUB hot.run 03\r\n",
              b"\r\nPUB hot.run 1\r\nx\r\n"]
    out = []
    for k in range(count):
        size = rnd.choice([0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 1500])
        body = bytearray(rnd.choice(b"ab \r\n") for _ in range(size))
        if size > 25 and rnd.random() < 0.5:
            trick = rnd.choice(tricks)
            at = rnd.randrange(size - len(trick))
            body[at:at + len(trick)] = trick
        out.append((RUN, None, bytes(body)))
    return out


def test_a_run_on_one_subject_arrives_byte_exact(start):
    sub, pub = sub_and_pub(start())
    msgs = run_of(1, 600)
    data = pubs(msgs)
    # As one write, then in pieces that cut the run anywhere.
    pub.send(data)
    t_ping_pong(pub)
    assert until_pong(sub) == msgs_for(msgs, b"1")
    rnd = random.Random(2)
    at = 0
    while at < len(data):
        step = rnd.choice([1, 7, 100, 4096, 30000])
        pub.send(data[at:at + step])
        at += step
    t_ping_pong(pub)
    assert until_pong(sub) == msgs_for(msgs, b"1")


def test_a_run_breaks_for_other_lines_and_keeps_their_order(start):
    sub, pub = sub_and_pub(start())
    msgs = run_of(3, 200)
    other = [(b"hot.other", None, b"o"), (RUN, b"_INBOX.1", b"reply"), (b"hot.x", None, b"")]
    mixed = msgs[:50] + other[:1] + msgs[50:100] + other[1:2] + msgs[100:150] + other[2:] + \
        msgs[150:]
    # A size with a leading zero is read as the reference path reads it.
    data = pubs(mixed[:45]) + b"PUB hot.run 05\r\nhello\r\n" + pubs(mixed[45:])
    pub.send(data + b"PING\r\n" + pubs(msgs))
    t_expect_exact(pub, b"PONG\r\n")
    t_ping_pong(pub)
    want = msgs_for(mixed[:45], b"1") + b"MSG hot.run 1 05\r\nhello\r\n" + \
        msgs_for(mixed[45:], b"1") + msgs_for(msgs, b"1")
    assert until_pong(sub) == want


def test_a_bad_end_in_a_run_delivers_what_came_before_and_closes(start):
    sub, pub = sub_and_pub(start())
    good = [(RUN, None, b"x" * (k % 7 + 1)) for k in range(40)]
    # `abc` then `XY` where CRLF belongs, then records that look whole.
    pub.send(pubs(good) + b"PUB hot.run 3\r\nabcXYPUB hot.run 3\r\nabc\r\n" + pubs(good))
    assert t_read_until_closed(pub) == b"-ERR 'Unknown Protocol Operation'\r\n"
    assert until_pong(sub) == msgs_for(good, b"1")


def test_a_run_past_max_payload_is_refused_where_it_goes_past(start, tmp_path):
    conf = write_conf(tmp_path, "max_payload: 100\n")
    srv = start("-c", conf)
    sub, pub = sub_and_pub(srv)
    fine = [(RUN, None, b"x" * n) for n in (10, 100, 99, 5, 100)] * 10
    pub.send(pubs(fine) + pubs([(RUN, None, b"y" * 101)] + fine))
    assert t_read_until_closed(pub) == b"-ERR 'Maximum Payload Violation'\r\n"
    assert until_pong(sub) == msgs_for(fine, b"1")


def test_a_reload_lowering_max_payload_applies_to_a_run(start, tmp_path):
    conf = write_conf(tmp_path, "max_payload: 1000\n")
    srv = start("-c", conf)
    sub, pub = sub_and_pub(srv)
    warm = [(RUN, None, b"x" * n) for n in (500, 400, 500, 300, 500, 100) * 12]
    publish(pub, warm)
    assert until_pong(sub) == msgs_for(warm, b"1")
    assert_reloaded(reload(srv, conf, "max_payload: 450\n"), "max_payload = 450")
    fine = [m for m in warm if len(m[2]) < 450] * 3
    for extra in range(6):
        before = fine + fine[:extra]
        pub.send(pubs(before + warm + fine))
        assert t_read_until_closed(pub) == b"-ERR 'Maximum Payload Violation'\r\n"
        assert until_pong(sub) == msgs_for(before, b"1")
        pub = quiet_client(srv)


def test_a_runs_messages_are_counted_as_go_counts_them(start):
    srv = attach_monitor(start("-m", "-1"))
    sub, pub = sub_and_pub(srv)
    msgs = run_of(4, 300)
    publish(pub, msgs)
    assert until_pong(sub) == msgs_for(msgs, b"1")
    payload = sum(len(p) for _, _, p in msgs)
    counts = sorted((c["in_msgs"], c["in_bytes"], c["out_msgs"], c["out_bytes"])
                    for c in monitor_json(srv, "/connz")["connections"])
    assert counts == [(0, 0, 300, payload), (300, payload, 0, 0)]
    varz = monitor_json(srv, "/varz")
    assert (varz["in_msgs"], varz["out_msgs"]) == (300, 300)
    assert (varz["in_bytes"], varz["out_bytes"]) == (payload, payload)


def mixed_runs(seed: int, count: int) -> list:
    """Runs of 1..100 PUBs on one of five subjects, sizes and payloads drawn
    per message (CRLFs and PUB lines inside), a reply now and then."""
    rnd = random.Random(seed)
    out = []
    while len(out) < count:
        subject = b"hot.%d" % rnd.randrange(5)
        for _ in range(rnd.choice([1, 2, 7, 8, 9, 33, 100])):
            size = rnd.choice([0, 1, 9, 10, 99, 100, 300])
            body = bytes(rnd.choice(b"ab\r\n PUB") for _ in range(size))
            reply = b"_INBOX.%d" % len(out) if rnd.random() < 0.1 else None
            out.append((subject, reply, body))
    return out[:count]


@pytest.mark.parametrize("seed", range(5))
def test_runs_of_every_length_with_replies_arrive_byte_exact(start, seed):
    sub, pub = sub_and_pub(start())
    msgs = mixed_runs(seed, 1500)
    data = pubs(msgs)
    rnd = random.Random(seed)
    at = 0
    while at < len(data):           # writes cut anywhere
        step = rnd.choice([50, 1000, 8000, 40000])
        pub.send(data[at:at + step])
        at += step
    t_ping_pong(pub)
    assert until_pong(sub) == msgs_for(msgs, b"1")


# -- many subjects at once: a window's records together (deliver_pub_batch) -------------
#
# Real publishers spread messages over many subjects with sizes that change
# every time; parse takes a window of such records at once (12 KiB, growing
# to 64 KiB while it takes them all) when every line is one the client sent
# before (`PUB <subject> [reply] <size>`, PINGs between them) and no payload
# holds an LF.  The traffic below is made so that it does (payloads
# of letters, blanks, CRs and PUB-line look-alikes, never an LF; a warm-up
# round first), `test_the_batch_takes_such_traffic` proves it in process, and
# each test breaks a batch where the reference path must answer.

BATCH_SUBJECTS = [b"hot.%d" % n for n in range(64)]


def batch_traffic(seed: int, count: int, subjects: list = BATCH_SUBJECTS,
                  sizes: tuple = (0, 300), replies: float = 0.0) -> list:
    """(subject, reply, payload): subjects and sizes drawn per message, the
    payloads free of LF (a CR at the end now and then); a distinct reply
    subject on a `replies` share of them, else None."""
    rnd = random.Random(seed)
    out = []
    for n in range(count):
        size = rnd.randint(*sizes)
        payload = bytes(rnd.choice(b"ab \r.PUB 12") for _ in range(size))
        reply = b"_INBOX.%d.%d" % (seed, n) if rnd.random() < replies else None
        out.append((rnd.choice(subjects), reply, payload))
    return out


def warm_up(subjects: list = BATCH_SUBJECTS, sizes: tuple = (0, 300)) -> list:
    """Every subject and every size once, for the reference path to see first."""
    msgs = [(subjects[n % len(subjects)], None, b"w" * n) for n in range(sizes[0], sizes[1] + 1)]
    return msgs + [(s, None, b"") for s in subjects]


def warm(pub: RawConn, subjects: list = BATCH_SUBJECTS) -> list:
    """Publish warm_up(subjects); returns its messages."""
    msgs = warm_up(subjects)
    publish(pub, msgs)
    return msgs


def warm_then_traffic(pub: RawConn, seed: int, count: int,
                      subjects: list = BATCH_SUBJECTS) -> list:
    """Publish the warm-up, then batch_traffic(seed, count, subjects);
    returns all the messages, in order."""
    msgs = warm(pub, subjects)
    more = batch_traffic(seed, count, subjects)
    publish(pub, more)
    return msgs + more


@pytest.mark.parametrize("replies", [0.0, 0.5, 1.0])
def test_the_batch_takes_such_traffic(monkeypatch, replies):
    """In process: after the warm-up, nearly every record of batch_traffic
    goes through deliver_pub_batch (so the live tests below take it), with
    replies on none, half or all of them."""
    from test_framing import Wire, g
    taken = []
    real = g.deliver_pub_batch

    def counting(*args):
        result = real(*args)
        taken.append(result[0])
        return result

    monkeypatch.setattr(g, "deliver_pub_batch", counting)
    sub = Wire(connect=QUIET + b"SUB hot.> 1\r\n")
    pub = Wire(sub.server, QUIET)
    try:
        sub.answer()
        warm_msgs = warm_up()
        pub.feed(pubs(warm_msgs))
        assert sub.answer() == msgs_for(warm_msgs, b"1")
        taken.clear()
        msgs = batch_traffic(1, 3000, replies=replies)
        for at in range(0, len(msgs), 500):     # (within the socketpair's buffer)
            pub.feed(pubs(msgs[at:at + 500]))
            assert sub.answer() == msgs_for(msgs[at:at + 500], b"1")
        assert sum(k for k in taken if k > 0) >= 0.9 * len(msgs), taken
    finally:
        sub.close()
        pub.close()


def test_deliver_pub_batch_stops_where_a_record_is_not_one_it_may_take():
    """The batch ends before a payload holding an LF, a payload not ended by
    CRLF, a size it does not know, a reply parse would not take so, and
    leaves a window of one subject (the runs' way) and one of a few lines
    to parse."""
    from test_framing import Wire, g
    sub = Wire(connect=QUIET + b"SUB hot.> 1\r\n")
    pub = Wire(sub.server, QUIET)
    try:
        # (A subject's third PUB leaves its line in pub_lines: pub_lookup.)
        pub.feed(pubs([(s, None, b"x" * n) for n, s in enumerate(BATCH_SUBJECTS[:4])] * 3))
        pub.feed(pubs([(b"cold.1", None, b"xyz")] * 3))
        assert b"PUB cold.1" in pub.client.pub_lines
        good = pubs([(BATCH_SUBJECTS[n % 4], None, b"y" * (n % 4)) for n in range(20)])

        def batch(data: bytes) -> tuple:
            return g.deliver_pub_batch(pub.client, data, 0, g.PUB_BATCH_WINDOW, set().add)

        def taken(data: bytes) -> int:
            return batch(data)[0]

        assert taken(good + b"PING\r\n") == 20
        last = good.rindex(b"PUB ")     # (its last record: `PUB hot.3 3`, 3 bytes)
        for after, records, nbytes, at in [(b"PING\r\n" + good, 20, 30, len(good)),
                                           (b"PUB hot.1 3\r\nabcX\n" + good, 20, 30, len(good)),
                                           (good[:-1], 39, 57, len(good) + last),
                                           (good, 40, 60, 2 * len(good))]:
            # (records taken, their payload bytes, the index after them)
            assert batch(good + after) == (records, nbytes, at), after
        assert taken(good + b"PUB hot.1 3\r\na\nb\r\n" + good) == 20
        assert taken(good + b"PUB hot.1 3\r\nabcX\n" + good) == 20
        assert taken(good + b"PUB hot.1 3\r\nabc\r\r\n" + good) == 20
        assert taken(good + b"PUB hot.1 7\r\nabcdefg\r\n" + good) == 20   # (7: never seen)
        assert taken(good + b"PUB hot.1 _INBOX.1 3\r\nabc\r\n" + good) == 41  # (a reply: fine)
        for line in (b"PUB hot.1  3", b"PUB hot.1 _IN\tBOX 3", b"PUB hot.1 a b 3",
                     b"PUB hot.1 _INBOX\r 3", b"PUB cold.1 _INBOX.1 3", b"PUB hot.99 _INBOX.1 3",
                     b"PUB hot.1 " + b"r" * 4092 + b" 3"):
            # (an empty reply, a tab or CR in it, two of them, a subject nobody
            # listens to (no_responders), one never seen, a line too long)
            assert taken(good + line + b"\r\nabc\r\n" + good) == 20, line
        assert taken(good + b"PUB hot.99 3\r\nabc\r\n" + good) == 20
        assert taken(b"PUB hot.2 2\r\nab\r\n" * 30) == -1       # (one subject: not here)
        assert taken(good[:good.index(b"PUB hot.3")]) == -1       # (too few to try)
        assert taken(good[:-1]) == 19
    finally:
        sub.close()
        pub.close()


def test_deliver_pub_batch_answers_the_pings_between_its_records():
    """Past a client's first PONG, a PING between two records the batch
    takes is answered (PONG) and the records after it are taken too.  The
    batch ends at the PING before the first PONG (op_ping sends that one,
    an INFO with it at times), when the publisher gets some of the
    messages (its PONG belongs between them), and a PING after the window's
    last whole record is left to parse."""
    from test_framing import Wire, g
    sub = Wire(connect=QUIET + b"SUB hot.> 1\r\n")
    pub = Wire(sub.server, QUIET)
    me = Wire(sub.server, QUIET + b"SUB hot.> 5\r\nPING\r\n")     # (gets its own)
    try:
        warm = pubs([(s, None, b"x" * n) for n, s in enumerate(BATCH_SUBJECTS[:4])] * 3
                    + [(b"hot.1", None, b"four")])
        pub.feed(warm)
        me.feed(warm)
        sub.answer(), me.answer()
        good = pubs([(BATCH_SUBJECTS[n % 4], None, b"y" * (n % 4)) for n in range(20)])
        ping = b"PING\r\n"

        def batch(wire: Wire, data: bytes) -> tuple:
            """(records taken, payload bytes, index after them), the
            client's queued output (taken from it), and the MSGs `sub` got."""
            got = g.deliver_pub_batch(wire.client, data, 0, g.PUB_BATCH_WINDOW, set().add)
            out, msgs = b"".join(wire.client.out), b"".join(sub.client.out).count(b"MSG ")
            for each in (sub, pub, me):
                each.client.out.clear()
            return got, out, msgs

        assert not pub.client.first_pong_sent
        assert batch(pub, good + ping + good) == ((20, 30, len(good)), b"", 20)
        pub.feed(ping)
        assert pub.answer() == g.PONG
        assert batch(pub, good + ping + good + ping + ping + good) == \
            ((60, 90, 3 * len(good) + 18), 3 * g.PONG, 60)
        assert batch(pub, ping + good + ping) == ((20, 30, len(good) + 6), g.PONG, 20)
        assert batch(pub, good + ping + good + b"PING\r") == \
            ((40, 60, 2 * len(good) + 6), g.PONG, 40)       # (no LF yet: parse's)
        flood = ping.join(pubs([(BATCH_SUBJECTS[n % 4], None, b"y" * (n % 4))])
                          for n in range(20)) + ping + good     # (a PING after each record)
        assert batch(pub, flood) == ((40, 60, len(flood)), 20 * g.PONG, 40)
        four = b"PUB hot.1 4\r\nPING\r\n"      # (a payload `PING`, before a PING and after)
        assert batch(pub, good + four + ping + good + four + good) == \
            ((62, 98, 3 * len(good) + 2 * len(four) + 6), g.PONG, 62)
        assert batch(pub, good + ping + b"PUB hot.1 3\r\na\nb\r\n" + good) == \
            ((20, 30, len(good)), b"", 20)
        got, out, msgs = batch(me, good + ping + good)
        assert (got, msgs) == ((20, 30, len(good)), 20)
        assert out.count(b"MSG ") == 20 and g.PONG not in out
    finally:
        for wire in (sub, pub, me):
            wire.close()


@pytest.mark.parametrize("grow_time", [10.0, 0.0])
def test_the_batch_window_grows_while_its_batches_are_quick(monkeypatch, grow_time):
    """In one read, parse doubles the batch's window after each batch that
    took most of it in less than PUB_BATCH_GROW_TIME, up to
    PUB_BATCH_WINDOW_MAX; after a slower one it stays (a turn's budget)."""
    from test_framing import Wire, g
    widths = []
    real = g.deliver_pub_batch

    def recording(client, data, i, width, touch):
        widths.append(width)
        return real(client, data, i, width, touch)

    monkeypatch.setattr(g, "deliver_pub_batch", recording)
    monkeypatch.setattr(g, "MAX_INPUT_TIME", 10.0)      # (one parse for the read)
    monkeypatch.setattr(g, "PUB_BATCH_GROW_TIME", grow_time)
    pub = Wire(connect=QUIET + b"PING\r\n")            # (nobody listens)
    try:
        pub.feed(pubs(warm_up()))
        widths.clear()
        pub.feed(pubs(batch_traffic(7, 3000)))          # (~480 KB)
        small, large = g.PUB_BATCH_WINDOW, g.PUB_BATCH_WINDOW_MAX
        if grow_time:
            assert widths[:4] == [small, 2 * small, 4 * small, large], widths
            assert widths[3:] == [large] * (len(widths) - 3), widths
        else:
            assert widths == [small] * len(widths) and len(widths) > 20, widths
    finally:
        pub.close()


def with_pings(msgs: list, every: int) -> list:
    """`msgs` cut into parts of `every` messages (the PINGs go between them)."""
    return [msgs[at:at + every] for at in range(0, len(msgs), every)]


@pytest.mark.parametrize("every", [1, 7, 150])
def test_pings_among_many_subjects_get_their_pongs(start, every):
    """A flood with a PING every few records, in one write: each PING gets
    its PONG, the subscriber every message in order."""
    sub, pub = sub_and_pub(start())
    assert until_pong(sub) == b""
    warmed = warm(pub)
    msgs = batch_traffic(5, 3000)
    parts = with_pings(msgs, every)
    pub.send(b"PING\r\n".join(map(pubs, parts)) + b"PING\r\n")
    t_expect_exact(pub, b"PONG\r\n" * len(parts), timeout=30)
    assert until_pong(pub) == b""
    assert until_pong(sub) == msgs_for(warmed + msgs, b"1")


def test_a_publishers_own_messages_and_pongs_keep_their_order(start):
    """A publisher subscribed to the subjects it floods, PINGs among them:
    each PONG comes after the messages published before its PING and
    before the ones after it."""
    srv = start()
    pub = subscriber(srv, b"hot.>", b"1")
    warmed = warm_up()
    pub.send(pubs(warmed))
    assert until_pong(pub) == msgs_for(warmed, b"1")
    msgs = batch_traffic(6, 3000)
    parts = with_pings(msgs, 40)
    pub.send(b"PING\r\n".join(map(pubs, parts)) + b"PING\r\n")
    t_expect_exact(pub, b"PONG\r\n".join(msgs_for(part, b"1") for part in parts) + b"PONG\r\n",
                   timeout=30)


def cut_writes(conn: RawConn, data: bytes, seed: int):
    """`data` in writes cut anywhere."""
    rnd = random.Random(seed)
    at = 0
    while at < len(data):
        step = rnd.choice([1, 500, 9000, 40000, 200000])
        conn.send(data[at:at + step])
        at += step


@pytest.mark.parametrize("replies", [0.0, 0.5], ids=["no-reply", "half-replies"])
@pytest.mark.parametrize("writes", ["whole", "cut"])
def test_many_subjects_at_once_arrive_byte_exact_in_order(start, writes, replies):
    sub, pub = sub_and_pub(start())
    assert until_pong(sub) == b""
    warmed = warm(pub)
    msgs = batch_traffic(2, 4000, replies=replies)
    if writes == "whole":
        publish(pub, msgs)
    else:
        cut_writes(pub, pubs(msgs), 2)
        t_ping_pong(pub)
    assert until_pong(sub) == msgs_for(warmed + msgs, b"1")


def test_requests_nobody_listens_to_among_many_get_no_responders_in_order(start):
    """Requests over many subjects, some nobody listens to: the publisher
    (no_responders) gets a 503 for each of those, in order, the subscriber
    the others (a batch of requests ends before each unheard one)."""
    srv = start()
    sub = subscriber(srv, b"hot.>", b"1")
    pub = quiet_client(srv, b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                            b'"no_responders":true}\r\nSUB _INBOX.> 9\r\n')
    subjects = BATCH_SUBJECTS + [b"cold.%d" % n for n in range(4)]
    warmed = warm(pub, subjects)
    msgs = batch_traffic(3, 3000, subjects, replies=1.0)
    pub.send(pubs(msgs))
    unheard = [reply for subject, reply, _ in msgs if subject.startswith(b"cold.")]
    answers = until_pong(pub)
    assert re.findall(rb"HMSG (\S+) 9 ", answers) == unheard
    assert answers.count(b"NATS/1.0 503\r\n") == len(unheard)
    assert until_pong(sub) == msgs_for([m for m in warmed + msgs if m[0].startswith(b"hot.")],
                                       b"1")


def test_many_subjects_with_more_receivers_on_some_and_none_on_others(start):
    """Subjects nobody listens to among them (left out of the batch's
    chunk), and one subject with a second receiver (the batch ends there)."""
    srv = start()
    every = subscriber(srv, b"hot.>", b"1")
    one = subscriber(srv, b"hot.7", b"2")
    pub = quiet_client(srv)
    unheard = [b"cold.%d" % n for n in range(16)]
    warmed = warm(pub, BATCH_SUBJECTS + unheard)
    msgs = batch_traffic(3, 4000, BATCH_SUBJECTS + unheard)
    publish(pub, msgs)
    heard = [m for m in warmed + msgs if m[0].startswith(b"hot.")]
    assert until_pong(every) == msgs_for(heard, b"1")
    assert until_pong(one) == msgs_for([m for m in heard if m[0] == b"hot.7"], b"2")


def test_many_subjects_nobody_listens_to_are_counted(start):
    srv = attach_monitor(start("-m", "-1"))
    pub = quiet_client(srv)
    warmed = warm(pub)
    msgs = batch_traffic(4, 3000)
    publish(pub, msgs)
    payload = sum(len(p) for _, _, p in warmed + msgs)
    varz = monitor_json(srv, "/varz")
    assert (varz["in_msgs"], varz["in_bytes"]) == (len(warmed) + len(msgs), payload)
    assert (varz["out_msgs"], varz["out_bytes"]) == (0, 0)


def test_many_subjects_are_counted_as_go_counts_them(start):
    srv = attach_monitor(start("-m", "-1"))
    sub, pub = sub_and_pub(srv)
    msgs = warm_then_traffic(pub, 5, 3000)
    assert until_pong(sub) == msgs_for(msgs, b"1")
    payload = sum(len(p) for _, _, p in msgs)
    counts = sorted((c["in_msgs"], c["in_bytes"], c["out_msgs"], c["out_bytes"])
                    for c in monitor_json(srv, "/connz")["connections"])
    assert counts == [(0, 0, len(msgs), payload), (len(msgs), payload, 0, 0)]
    detail = monitor_json(srv, "/connz?subs=detail")["connections"]
    assert [s["msgs"] for c in detail for s in c.get("subscriptions_list_detail", [])] == \
        [len(msgs)]
    varz = monitor_json(srv, "/varz")
    assert (varz["in_msgs"], varz["out_msgs"]) == (len(msgs), len(msgs))
    assert (varz["in_bytes"], varz["out_bytes"]) == (payload, payload)


def test_many_subjects_with_an_lf_in_a_payload_then_a_bad_end(start):
    """An LF in a payload ends a batch (the reference path takes that
    record, the next batch goes on); a record whose payload is not ended by
    CRLF closes the connection after everything before it was delivered."""
    sub, pub = sub_and_pub(start())
    warmed = warm(pub)
    msgs = batch_traffic(6, 3000)
    msgs[1000] = (b"hot.3", None, b"two\nlines")
    msgs[1700] = (b"hot.4", None, b"\n" * 20)
    pub.send(pubs(msgs[:2500]) + b"PUB hot.5 3\r\nabcX\n" + pubs(msgs[2500:]))
    assert t_read_until_closed(pub) == b"-ERR 'Unknown Protocol Operation'\r\n"
    assert until_pong(sub) == msgs_for(warmed + msgs[:2500], b"1")


def test_many_subjects_past_max_payload_are_refused_where_they_go_past(start, tmp_path):
    sub, pub = sub_and_pub(start("-c", write_conf(tmp_path, "max_payload: 300\n")))
    warmed = warm(pub)
    msgs = batch_traffic(7, 3000)
    pub.send(pubs(msgs[:2000]) + pubs([(b"hot.9", None, b"x" * 301)] + msgs[2000:]))
    assert t_read_until_closed(pub) == b"-ERR 'Maximum Payload Violation'\r\n"
    assert until_pong(sub) == msgs_for(warmed + msgs[:2000], b"1")


def test_a_reload_lowering_max_payload_applies_to_many_subjects_at_once(start, tmp_path):
    conf = write_conf(tmp_path, "max_payload: 1000\n")
    srv = start("-c", conf)
    sub, pub = sub_and_pub(srv)
    warmed = warm(pub)
    msgs = batch_traffic(8, 2000)
    publish(pub, msgs)
    assert until_pong(sub) == msgs_for(warmed + msgs, b"1")
    assert_reloaded(reload(srv, conf, "max_payload: 200\n"), "max_payload = 200")
    fine = batch_traffic(9, 2000, sizes=(0, 200))
    big = [m for m in batch_traffic(10, 100, sizes=(201, 300))]
    pub.send(pubs(fine + big + fine))
    assert t_read_until_closed(pub) == b"-ERR 'Maximum Payload Violation'\r\n"
    assert until_pong(sub) == msgs_for(fine, b"1")


BATCH_PERMS = PERMS.replace('"hot.>"', '"hot.>", "cold.>"')


@pytest.mark.parametrize("how", ["reload", "second-connect"])
def test_one_of_many_subjects_denied_later_is_refused_at_once(start, tmp_path, how):
    """After warm traffic on many subjects, a reload (user a) or a second
    CONNECT (as user b) denies hot.secret: each PUB to it is refused, the
    others delivered."""
    conf = write_conf(tmp_path, BATCH_PERMS)
    srv = start("-c", conf)
    sub = subscriber(srv, b"hot.>", b"1", login("s", "ps"))
    pub = quiet_client(srv, login("a", "pa"))
    subjects = BATCH_SUBJECTS + [b"hot.secret"]
    warmed = warm(pub, subjects)
    msgs = batch_traffic(11, 2000, subjects)
    publish(pub, msgs)
    assert until_pong(sub) == msgs_for(warmed + msgs, b"1")
    before = b""
    if how == "reload":
        assert_reloaded(reload(srv, conf, BATCH_PERMS.replace(
            'allow: ["hot.>", "cold.>"] } } }\n  { user: b',
            'allow: ["hot.>", "cold.>"], deny: ["hot.secret"] } } }\n  { user: b')))
    else:
        before = login("b", "pb")
    msgs = batch_traffic(12, 2000, subjects)
    denied = sum(m[0] == b"hot.secret" for m in msgs)
    assert denied > 10
    pub.send(before + pubs(msgs))
    t_expect_exact(pub, b"-ERR 'Permissions Violation for Publish to \"hot.secret\"'\r\n" * denied)
    t_ping_pong(pub)
    assert until_pong(sub) == msgs_for([m for m in msgs if m[0] != b"hot.secret"], b"1")


def test_unsub_max_among_many_subjects_stops_after_exactly_that_many(start):
    srv = start()
    every = subscriber(srv, b"hot.>", b"1")
    limited = quiet_client(srv)
    limited.send(b"SUB hot.> 2\r\nUNSUB 2 1000\r\n")
    t_ping_pong(limited)
    pub = quiet_client(srv)
    msgs = warm_then_traffic(pub, 15, 3000)
    assert until_pong(every) == msgs_for(msgs, b"1")
    assert until_pong(limited) == msgs_for(msgs[:1000], b"2")


def test_a_queue_group_among_many_subjects_gets_each_of_its_messages_once(start):
    srv = start()
    every = subscriber(srv, b"hot.>", b"1")
    members = []
    for k in range(2):
        m = quiet_client(srv)
        m.send(b"SUB hot.q.* grp %d\r\n" % (k + 2))
        t_ping_pong(m)
        members.append(m)
    pub = quiet_client(srv)
    subjects = BATCH_SUBJECTS + [b"hot.q.%d" % n for n in range(4)]
    msgs = warm_then_traffic(pub, 16, 3000, subjects)
    assert until_pong(every) == msgs_for(msgs, b"1")
    got = [until_pong(m) for m in members]
    frames = [re.findall(rb"MSG (hot\.q\.\d) (\d) (\d+)\r\n", g) for g in got]
    assert sum(len(f) for f in frames) == sum(m[0].startswith(b"hot.q.") for m in msgs)
    assert all(frames), "a member got nothing"


def received(data: bytes) -> list:
    """(subject, sid, payload) of each MSG in `data`, in order."""
    frames, at = [], 0
    while at < len(data):
        m = re.compile(rb"MSG (\S+) (\d+) (\d+)\r\n").match(data, at)
        assert m, data[at:at + 100]
        end = m.end() + int(m.group(3))
        frames.append((m.group(1), m.group(2), data[m.end():end]))
        at = end + 2
    return frames


@pytest.mark.parametrize("subjects", [64, 1])
def test_a_queue_group_alone_on_many_subjects_gets_each_message_once_in_order(start, subjects):
    """A queue group with no other subscriber: each message to one member,
    picked at random (each gets a fair share), each member's in the order
    published; then two more members on one connection, which gets the
    messages meant for either in that order too.  Counted as Go counts."""
    srv = attach_monitor(start("-m", "-1"))
    single = [quiet_client(srv) for _ in range(3)]
    for k, m in enumerate(single):
        m.send(b"SUB hot.> grp %d\r\n" % (k + 3))
        t_ping_pong(m)
    pub = quiet_client(srv)
    warmed = warm(pub)
    warm_got = [received(until_pong(c)) for c in single]
    assert sum(len(g) for g in warm_got) == len(warmed)
    pair = quiet_client(srv)
    total = collections.Counter()     # (sid, "msgs"/"bytes"): what each member got
    for g in warm_got:
        for _, sid, p in g:
            total[int(sid), "msgs"] += 1
            total[int(sid), "bytes"] += len(p)
    for conns, sids, seed in ((single, [3, 4, 5], 21), ([pair] + single, [1, 2, 3, 4, 5], 22)):
        if pair in conns:
            pair.send(b"SUB hot.> grp 1\r\nSUB hot.> grp 2\r\n")
            t_ping_pong(pair)
        more = [(s, r, b"%05d" % k + p) for k, (s, r, p) in
                enumerate(batch_traffic(seed, 6000, BATCH_SUBJECTS[:subjects]))]
        publish(pub, more)
        got = [received(until_pong(c)) for c in conns]
        numbered = [[(s, int(p[:5]), p) for s, _, p in g] for g in got]
        assert sorted(m[1] for g in numbered for m in g) == list(range(len(more)))
        for g in numbered:
            assert [m[1] for m in g] == sorted(m[1] for m in g)
            assert all(more[n][0] == s and more[n][2] == p for s, n, p in g)
        by_sid = collections.Counter(sid for g in got for _, sid, _ in g)
        share = len(more) / len(sids)
        assert all(0.75 * share < by_sid[b"%d" % n] < 1.25 * share for n in sids), by_sid
        for g in got:
            for _, sid, p in g:
                total[int(sid), "msgs"] += 1
                total[int(sid), "bytes"] += len(p)
    detail = {c["cid"]: c for c in monitor_json(srv, "/connz?subs=detail")["connections"]}
    members = [c for c in detail.values() if c.get("subscriptions_list_detail")]
    assert sorted((int(d["sid"]), d["msgs"]) for c in members
                  for d in c["subscriptions_list_detail"]) == \
        [(sid, total[sid, "msgs"]) for sid in range(1, 6)]
    for c in members:
        sids = [int(d["sid"]) for d in c["subscriptions_list_detail"]]
        assert (c["out_msgs"], c["out_bytes"]) == (sum(total[n, "msgs"] for n in sids),
                                                   sum(total[n, "bytes"] for n in sids))


def test_echo_among_many_subjects_on_and_off(start):
    """Echo on: a publisher listening to its own subjects gets its messages
    in order with the PONGs to the PINGs between them; echo off: none."""
    srv = start()
    me = quiet_client(srv)
    me.send(b"SUB hot.> 1\r\n")
    t_ping_pong(me)
    quiet = quiet_client(srv, b'CONNECT {"verbose":false,"pedantic":false,"echo":false}\r\n')
    quiet.send(b"SUB hot.> 1\r\n")
    t_ping_pong(quiet)
    other = subscriber(srv, b"hot.>", b"2")
    for conn, listener in ((me, quiet), (quiet, me)):
        warmed = warm_up()
        msgs = batch_traffic(17, 3000)
        chunks = [warmed] + [msgs[k:k + 700] for k in range(0, len(msgs), 700)]
        conn.send(b"PING\r\n".join(pubs(c) for c in chunks) + b"PING\r\n")
        if conn is me:
            want = b"PONG\r\n".join(msgs_for(c, b"1") for c in chunks) + b"PONG\r\n"
        else:
            want = b"PONG\r\n" * len(chunks)
        t_expect_exact(conn, want, timeout=20)
        assert until_pong(conn) == b""
        assert until_pong(listener) == msgs_for(warmed + msgs, b"1")
        assert until_pong(other) == msgs_for(warmed + msgs, b"2")


def frames_in_sid_order(data: bytes) -> list:
    """MSG frames as (subject, sid, payload), each message's deliveries to
    one connection sorted by sid (Go sends them as its sublist walks)."""
    frames, at = [], 0
    while at < len(data):
        m = re.compile(rb"MSG (\S+) (\d+) (\d+)\r\n").match(data, at)
        assert m, data[at:at + 100]
        end = m.end() + int(m.group(3))
        frames.append((m.group(1), int(m.group(2)), data[m.end():end]))
        at = end + 2
    out, k = [], 0
    while k < len(frames):
        j = k + 1
        while j < len(frames) and frames[j][::2] == frames[k][::2] and \
                frames[j][1] != frames[j - 1][1]:
            j += 1
        out += sorted(frames[k:j])
        k = j
    return out


def test_two_subscriptions_of_one_connection_get_each_message_together(start):
    """A connection with two subscriptions a message matches gets both MSGs
    before the next message's (a plan that is not `runnable`)."""
    srv = start()
    both = quiet_client(srv)
    both.send(b"SUB hot.> 1\r\nSUB hot.7 2\r\n")
    three = quiet_client(srv)
    three.send(b"SUB hot.> 1\r\nSUB hot.* 3\r\n")
    t_ping_pong(three)
    t_ping_pong(both)
    pub = quiet_client(srv)
    msgs = warm_then_traffic(pub, 20, 3000)
    want = b"".join(msgs_for([m], b"1") + (msgs_for([m], b"2") if m[0] == b"hot.7" else b"")
                    for m in msgs)
    assert frames_in_sid_order(until_pong(both)) == frames_in_sid_order(want)
    want = b"".join(msgs_for([m], b"1") + msgs_for([m], b"3") for m in msgs)
    assert frames_in_sid_order(until_pong(three)) == frames_in_sid_order(want)

@pytest.mark.parametrize("far", ["gnatsd", "go2.15"])
def test_many_subjects_at_once_cross_a_route_byte_exact(cluster_factory, far):
    """A batch's receivers include a route: its chunk is RMSG lines."""
    if far == "go2.15" and go_server_path("2.15") is None:
        pytest.skip("Go nats-server 2.15 is not installed")
    cluster = cluster_factory("batch")
    near = cluster.start("gnatsd")
    other = cluster.start(far, routes=[near])
    wait_mesh([near, other])
    pub = quiet_client(near)
    local = subscriber(near, b"hot.>", b"1")
    remote = subscriber(other, b"hot.>", b"2")
    interest_barrier(pub, [remote])
    until_pong(remote)          # (the probe's message)
    msgs = warm_then_traffic(pub, 18, 4000)
    assert until_pong(local) == msgs_for(msgs, b"1")
    t_expect_exact(remote, msgs_for(msgs, b"2"), timeout=20)
    assert until_pong(remote) == b""


# -- the receiving end of a route: subjects past the sublist cache ----------------------
#
# A node takes RMSG lines as a client's PUBs are taken: a subject's first
# messages go out from a shared plan shape (local_plan), kept under the
# subject once the cache lets it go; these send 2,000 subjects across a
# route and change the subscriptions on the receiving node in between.


@pytest.mark.parametrize("layout", [("gnatsd", "gnatsd"), ("go2.15", "gnatsd"),
                                    ("go2.15", "go2.15")],
                         ids=["gnatsd", "go-to-gnatsd", "go-only"])
def test_a_route_carries_thousands_of_subjects_through_subscription_changes(cluster_factory,
                                                                           layout):
    if "go2.15" in layout and go_server_path("2.15") is None:
        pytest.skip("Go nats-server 2.15 is not installed")
    cluster = cluster_factory("hot")
    sender = cluster.start(layout[0], top=DENY)
    receiver = cluster.start(layout[1], routes=[sender], top=DENY)
    wait_mesh([sender, receiver])
    pub = quiet_client(sender, login("s", "ps"))
    every = subscriber(receiver, b"hot.>", b"1", login("s", "ps"))
    denied = subscriber(receiver, b"hot.>", b"4", login("d", "pd"))

    def barrier(*subs):
        interest_barrier(pub, subs)
        for sub in subs:
            until_pong(sub)       # (the probes' messages)

    def arrives(sub, want: bytes):
        t_expect_exact(sub, want, timeout=20)
        assert until_pong(sub) == b""

    def round_of(seed: int) -> list:
        msgs = many(seed, 3000, reply=True)
        publish(pub, msgs)
        return msgs

    barrier(every, denied)
    msgs = round_of(1)
    arrives(every, msgs_for(msgs, b"1"))
    arrives(denied, msgs_for([m for m in msgs if m[0] not in (b"hot.5", b"hot.7.x")], b"4"))
    # New subscribers on subjects the first round made cold, and an
    # auto-unsubscribe limit.
    wild = subscriber(receiver, b"hot.*", b"2", login("s", "ps"))
    one = subscriber(receiver, b"hot.7", b"3", login("s", "ps"))
    limited = quiet_client(receiver, login("s", "ps"))
    limited.send(b"SUB hot.> 5\r\nUNSUB 5 20\r\n")
    barrier(wild, one, limited)
    msgs = round_of(2)
    arrives(every, msgs_for(msgs, b"1"))
    arrives(wild, msgs_for([m for m in msgs if not m[0].endswith(b".x")], b"2"))
    arrives(one, msgs_for([m for m in msgs if m[0] == b"hot.7"], b"3"))
    arrives(denied, msgs_for([m for m in msgs if m[0] not in (b"hot.5", b"hot.7.x")], b"4"))
    arrives(limited, msgs_for(msgs[:20], b"5"))
    # An unsubscribe: nothing more for it, the others go on.
    every.send(b"UNSUB 1\r\n")
    t_ping_pong(every)
    barrier(wild)
    msgs = round_of(3)
    arrives(wild, msgs_for([m for m in msgs if not m[0].endswith(b".x")], b"2"))
    assert until_pong(every) == b""
    assert until_pong(limited) == b""
    # A client line that is only a subject the route made cold is no PUB.
    stray = quiet_client(receiver, login("s", "ps"))
    recent = {m[0] for m in msgs[-1500:]}
    gone = next(m[0] for m in msgs if m[0] not in recent)     # (past the cache)
    stray.send(b"%s 1\r\nx\r\n" % gone)
    assert t_read_until_closed(stray) == b"-ERR 'Unknown Protocol Operation'\r\n"


def random_route_ops(seed: int, count: int) -> bytes:
    """RMSG and HMSG lines as a route may write them: replies, queue forms,
    tabs and doubled blanks (after the op's name too), lower-case op names,
    sizes with a leading zero, payloads with CRLF."""
    rnd = random.Random(seed)
    ops = []
    for k in range(count):
        subject = rnd.choice([b"hot.a", b"hot.b.c", b"hot.q", b"hot.7", b"cold.x"])
        payload = bytes(rnd.choice(b"ab \r\n") for _ in range(rnd.choice([0, 1, 5, 40, 300])))
        reply = b"_INBOX.%d" % k
        middle = rnd.choice([[], [reply], [b"|", b"q"], [b"+", reply, b"q"], [b"+", reply, b"w"]])
        blank = b" " if rnd.random() < 0.9 else rnd.choice([b"  ", b"\t", b" \t"])
        # (One blank between account and subject: Go keys its per-route
        # results by the bytes from the account to the subject's length
        # past it, so `$G  hot.7` and `$G  hot.q` share one, a Go bug.)
        account = b"$G" + (b" " if len(blank) > 1 else blank)
        if rnd.random() < 0.2:
            hdr = b"NATS/1.0\r\nK: %d\r\n\r\n" % k
            sizes = [b"%d" % len(hdr), b"%d" % (len(hdr) + len(payload))]
            if rnd.random() < 0.1:
                sizes = [b"0" + size for size in sizes]
            op = b"HMSG" if rnd.random() < 0.9 else b"hmsg"
            ops.append(blank.join([op, account + subject] + middle + sizes) + b"\r\n" + hdr +
                       payload)
        else:
            size = b"%d" % len(payload) if rnd.random() < 0.9 else b"0%d" % len(payload)
            op = b"RMSG" if rnd.random() < 0.9 else b"rmsg"
            ops.append(blank.join([op, account + subject] + middle + [size]) + b"\r\n" + payload)
        ops[-1] += b"\r\n"
    return b"".join(ops)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("go", ["go2.9", "go2.15"])
def test_random_route_traffic_reaches_clients_as_from_go(go, seed, nodes, tmp_path):
    """The same random RMSG/HMSG stream from a raw route peer into a gnatsd.py
    node and a Go node: clients (plain, wildcard, a queue group) get the
    same bytes from both, and the route's and a client's counts are the
    same."""
    got = []
    for kind in ("gnatsd", go):
        (tmp_path / kind).mkdir()
        srv = start_node(nodes, kind, tmp_path / kind, "node",
                         'cluster {\n  name: c1\n  listen: "127.0.0.1:-1"\n}\n')
        peer = raw_route(srv)
        every = client_of(srv, b"SUB hot.> 1\r\n")
        queue = client_of(srv, b"SUB hot.q q 2\r\n")
        wild = client_of(srv, b"SUB hot.* 3\r\n")
        route_ops_until_pong(peer)
        peer.send(random_route_ops(seed, 600))
        assert route_ops_until_pong(peer) == []
        got.append([until_pong(every), until_pong(queue), until_pong(wild)])
        route, = monitor_json(srv, "/routez")["routes"]
        conns = {tuple(c.get("subscriptions_list", ())): c
                 for c in monitor_json(srv, "/connz?subs=1")["connections"]}
        got[-1].append([route["in_msgs"], route["in_bytes"], conns[("hot.>",)]["out_msgs"],
                        conns[("hot.>",)]["out_bytes"]])
    assert got[0][0] and got[0][1] and got[0][2]
    for mine, theirs, who in zip(got[0], got[1], ["hot.>", "queue", "hot.*", "counts"]):
        assert mine == theirs, who


# -- LMSGs from a leaf connection ------------------------------------------------------
#
# A leaf connection's `LMSG <subject> [reply] <size>` takes a hot path of its
# own (LeafNode.parse): a plan per subject for that connection, which never
# includes the connection itself, includes routes only on the hub side, and
# is made again after any subscription change.  Raw leaf connections to a
# hub of each kind (Go as the oracle) send varying messages; a spoke cluster
# of gnatsd.py nodes checks the other side.

def raw_leaf(hub, name: bytes) -> RawConn:
    """A leaf connection to `hub` spoken by hand, its CONNECT answered."""
    leaf = RawConn("127.0.0.1", hub.leaf_port)
    leaf.expect(rb"INFO \{[^\r\n]*\} ?\r\n")
    leaf.send(b'CONNECT {"server_id":"N%s","name":"%s","headers":true}\r\n'
              % (name.upper(), name))
    ops_until_pong(leaf)
    return leaf


def lmsgs(msgs: list) -> bytes:
    return b"".join(b"LMSG %s %s%d\r\n%s\r\n" % (s, r + b" " if r else b"", len(p), p)
                    for s, r, p in msgs)


def lmsg_ops(msgs: list) -> list:
    return [b"LMSG %s %s%d\r\n%s\r\n" % (s, r + b" " if r else b"", len(p), p)
            for s, r, p in msgs]


LEAF_SUBJECTS = [b"hot.a", b"hot.b.c", b"hot.7", b"hot.d"]


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_a_leafs_varying_messages_reach_clients_and_leaves_never_itself(kind, nodes, tmp_path):
    hub = start_hub(nodes, kind, tmp_path)
    src, other = raw_leaf(hub, b"src"), raw_leaf(hub, b"other")
    every = client_of(hub, b"SUB hot.> 1\r\n")
    one = client_of(hub, b"SUB hot.a 2\r\n")
    # Both leaves want what src sends: src must not get its own back.
    src.send(b"LS+ hot.>\r\n")
    ops_until_pong(src)
    other.send(b"LS+ hot.*\r\n")
    ops_until_pong(other)
    ops_until_pong(src)           # (the hub tells src of the others' interest)
    msgs = (varied(1, 700, LEAF_SUBJECTS) + varied(2, 700, LEAF_SUBJECTS, reply=True)
            + varied(3, 700, LEAF_SUBJECTS))
    matches = monitor_json(hub, "/subsz")["num_matches"]
    src.send(lmsgs(msgs))
    assert ops_until_pong(src) == []
    # About one sublist match per subject, not one per message: Go keeps a
    # leaf's results per subject (c.in.results), gnatsd.py its plans (Go
    # 2.15 sometimes counts one more of its own).
    assert len(LEAF_SUBJECTS) <= monitor_json(hub, "/subsz")["num_matches"] - matches <= 10
    t_expect_exact(every, msgs_for(msgs, b"1"), timeout=20)
    t_expect_exact(one, msgs_for([m for m in msgs if m[0] == b"hot.a"], b"2"), timeout=20)
    assert ops_until_pong(other) == lmsg_ops([m for m in msgs if m[0] != b"hot.b.c"])
    # Interest changes between two rounds: the plans follow them.
    one.send(b"UNSUB 2\r\nSUB hot.b.* 3\r\n")
    t_ping_pong(one)
    other.send(b"LS- hot.*\r\nLS+ hot.d\r\n")
    ops_until_pong(other)
    src.send(b"LS- hot.>\r\n")
    ops_until_pong(src)
    more = varied(4, 700, LEAF_SUBJECTS, reply=True) + varied(5, 700, LEAF_SUBJECTS)
    src.send(lmsgs(more))
    assert ops_until_pong(src) == []
    t_expect_exact(every, msgs_for(more, b"1"), timeout=20)
    t_expect_exact(one, msgs_for([m for m in more if m[0] == b"hot.b.c"], b"3"), timeout=20)
    assert ops_until_pong(other) == lmsg_ops([m for m in more if m[0] == b"hot.d"])
    assert until_pong(every) == b"" and until_pong(one) == b""
    # Counted as Go counts them: in by the leaf, out by each client.
    total = len(msgs) + len(more)
    leafs = {leaf["port"]: leaf for leaf in leafz(hub)["leafs"]}    # (Go 2.9's have no name)
    assert leafs[src.sock.getsockname()[1]]["in_msgs"] == total
    assert leafs[other.sock.getsockname()[1]]["out_msgs"] == len(msgs) - sum(m[0] == b"hot.b.c" for m in msgs) + \
        sum(m[0] == b"hot.d" for m in more)
    conns = {tuple(c.get("subscriptions_list", ())): c
             for c in monitor_json(hub, "/connz?subs=1")["connections"]}
    assert conns[("hot.>",)]["out_msgs"] == total
    assert conns[("hot.b.*",)]["out_msgs"] == sum(m[0] == b"hot.b.c" for m in more) + \
        sum(m[0] == b"hot.a" for m in msgs)


@pytest.mark.parametrize("cut", [False, True], ids=["whole", "cut-before-the-end"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_odd_lmsg_lines_are_read_as_the_reference_path_reads_them(kind, cut, nodes, tmp_path):
    """Tabs, doubled blanks, queue forms and a bad payload end, on a
    subject the hot path already knows."""
    hub = start_hub(nodes, kind, tmp_path)
    src = raw_leaf(hub, b"src")
    sub = client_of(hub, b"SUB hot.a 1\r\nSUB hot.q grp 2\r\n")
    ops_until_pong(src)
    src.send(lmsgs([(b"hot.a", None, b"warm"), (b"hot.a", b"r.1", b"warm")]))
    assert ops_until_pong(src) == []
    t_expect_exact(sub, msgs_for([(b"hot.a", None, b"warm"), (b"hot.a", b"r.1", b"warm")], b"1"))
    src.send(b"LMSG hot.a\tr.2 2\r\nab\r\nLMSG hot.a  r.3 2\r\ncd\r\n"
             b"LMSG hot.q | grp 2\r\nef\r\nLMSG hot.q + r.4 grp 2\r\ngh\r\n"
             b"LMSG hot.a 2\r\nij\r\n")
    assert ops_until_pong(src) == []
    t_expect_exact(sub, b"MSG hot.a 1 r.2 2\r\nab\r\nMSG hot.a 1 r.3 2\r\ncd\r\n"
                   b"MSG hot.q 2 2\r\nef\r\nMSG hot.q 2 r.4 2\r\ngh\r\nMSG hot.a 1 2\r\nij\r\n")
    assert until_pong(sub) == b""
    # A payload not followed by CRLF: refused (as soon as the wrong byte
    # shows), and not delivered.
    bad = b"LMSG hot.a 2\r\nkl\r\nLMSG hot.a 2\r\nmnXY"
    if cut:
        src.send(bad[:-2])
        t_expect_exact(sub, b"MSG hot.a 1 2\r\nkl\r\n")   # (the rest waits for its end)
        bad = bad[-2:-1]          # (X alone: the wrong byte is enough)
    src.send(bad)
    assert t_read_until_closed(src) == b"-ERR 'Unknown Protocol Operation'\r\n"
    if not cut:
        t_expect_exact(sub, b"MSG hot.a 1 2\r\nkl\r\n")
    assert until_pong(sub) == b""


def test_a_spoke_cluster_delivers_each_hub_message_once_per_client(cluster_factory, nodes,
                                                                   tmp_path):
    """Two gnatsd.py nodes in a cluster, each a leaf of one hub: what the hub
    sends a spoke goes to that spoke's clients, not on over its routes (the
    other node has its own leaf connection)."""
    hub = start_hub(nodes, "gnatsd", tmp_path)
    cluster = cluster_factory("spokes")
    top = 'leafnodes { remotes = [ { url: "nats-leaf://127.0.0.1:%d" } ] }\n' % hub.leaf_port
    spokes = []
    for _ in range(2):
        spokes.append(cluster.start("gnatsd", routes=spokes[-1:], top=top))
    wait_mesh(spokes)
    wait_leafs(hub, 2)
    subs = [subscriber(node, b"hot.>", b"1") for node in spokes]
    pub = quiet_client(hub)
    interest_barrier(pub, subs)
    for sub in subs:
        until_pong(sub)           # (the probes' messages)
    msgs = varied(6, 1500, LEAF_SUBJECTS) + varied(7, 1500, LEAF_SUBJECTS, reply=True)
    publish(pub, msgs)
    for sub in subs:
        t_expect_exact(sub, msgs_for(msgs, b"1"), timeout=20)
    for sub in subs:
        assert until_pong(sub) == b""


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_a_reload_turning_trace_on_traces_a_leafs_messages(kind, nodes, tmp_path):
    """A leaf connected before a reload turns tracing on: its LMSGs and
    their deliveries are traced from then on, as any connection's."""
    hub = start_hub(nodes, kind, tmp_path)
    src = raw_leaf(hub, b"src")
    sub = client_of(hub, b"SUB hot.a 1\r\n")
    ops_until_pong(src)
    src.send(lmsgs([(b"hot.a", None, b"warm")]))
    t_expect_exact(sub, b"MSG hot.a 1 4\r\nwarm\r\n")
    conf = tmp_path / "hub.conf"
    conf.write_text(conf.read_text() + "trace: true\n")
    reload(hub)
    start = len(hub.log)
    src.send(lmsgs([(b"hot.a", None, b"traced")]))
    t_expect_exact(sub, b"MSG hot.a 1 6\r\ntraced\r\n")
    hub.wait_for_log(rb"<<- \[LMSG hot\.a 6\]", start=start)
    hub.wait_for_log(rb"->> \[MSG hot\.a 1 6\]", start=start)


def random_leaf_ops(seed: int, count: int) -> bytes:
    """LMSG and HMSG lines as a leaf may write them: replies, queue forms,
    tabs and doubled blanks, sizes with a leading zero, payloads with CRLF."""
    rnd = random.Random(seed)
    ops = []
    for k in range(count):
        subject = rnd.choice([b"hot.a", b"hot.b.c", b"hot.q", b"hot.7", b"cold.x"])
        payload = bytes(rnd.choice(b"ab \r\n") for _ in range(rnd.choice([0, 1, 5, 40, 300])))
        reply = b"_INBOX.%d" % k
        form = rnd.randrange(5)
        middle = [[], [reply], [b"|", b"q"], [b"+", reply, b"q"], [reply]][form]
        header = form == 4 or rnd.random() < 0.2
        blank = b" " if rnd.random() < 0.9 else rnd.choice([b"  ", b"\t", b" \t"])
        if header:
            hdr = b"NATS/1.0\r\nK: %d\r\n\r\n" % k
            sizes = [b"%d" % len(hdr), b"%d" % (len(hdr) + len(payload))]
            if rnd.random() < 0.1:
                sizes = [b"0" + size for size in sizes]     # (Go copies them as written)
            ops.append(blank.join([b"HMSG", subject] + middle + sizes) + b"\r\n" + hdr + payload)
        else:
            size = b"%d" % len(payload) if rnd.random() < 0.9 else b"0%d" % len(payload)
            ops.append(blank.join([b"LMSG", subject] + middle + [size]) + b"\r\n" + payload)
        ops[-1] += b"\r\n"
    return b"".join(ops)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("go", ["go2.9", "go2.15"])
def test_random_leaf_traffic_reaches_everyone_as_from_go(go, seed, nodes, tmp_path):
    """The same random LMSG/HMSG stream from a raw leaf into a gnatsd.py hub
    and a Go hub: clients (plain, wildcard, a queue group) and another leaf
    get the same bytes from both, and the leaf's and a client's counts are
    the same."""
    got = []
    for kind in ("gnatsd", go):
        (tmp_path / kind).mkdir()
        hub = start_hub(nodes, kind, tmp_path / kind)
        src, other = raw_leaf(hub, b"src"), raw_leaf(hub, b"other")
        every = client_of(hub, b"SUB hot.> 1\r\n")
        queue = client_of(hub, b"SUB hot.q q 2\r\n")
        wild = client_of(hub, b"SUB hot.* 3\r\n")
        other.send(b"LS+ hot.*\r\n")
        ops_until_pong(other)
        ops_until_pong(src)
        src.send(random_leaf_ops(seed, 600))
        assert ops_until_pong(src) == []
        got.append([until_pong(every), until_pong(queue), until_pong(wild),
                    ops_until_pong(other)])
        leaf = {lf["port"]: lf for lf in leafz(hub)["leafs"]}[src.sock.getsockname()[1]]
        conns = {tuple(c.get("subscriptions_list", ())): c
                 for c in monitor_json(hub, "/connz?subs=1")["connections"]}
        got[-1].append([leaf["in_msgs"], leaf["in_bytes"], conns[("hot.>",)]["out_msgs"],
                        conns[("hot.>",)]["out_bytes"]])
    assert got[0][0] and got[0][1] and got[0][3]
    for mine, theirs, who in zip(got[0], got[1], ["hot.>", "queue", "hot.*", "leaf", "counts"]):
        assert mine == theirs, who

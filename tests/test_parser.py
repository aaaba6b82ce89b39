"""The protocol parser under split reads and the PUB-line cache, live.

A server sees whatever the kernel hands to one read: half a control line,
a payload cut before its CRLF, the CR without the LF.  These tests cut a
transcript holding every client op at every byte position into two sends
(and send it one byte at a time) and require exactly the output of the whole
transcript.  The cut is a fact, not a hope: after the first part we wait until
the server's kernel socket holds no unread byte (its rx_queue in
/proc/net/tcp is 0, and our own tx_queue is 0), so the server's next read
starts exactly at the cut.

gnatsd.py's hot path remembers PUB control lines it has seen (the PUB-line
cache) together with a ready-made delivery plan per subject; the churn tests
here change interest between repeats of one PUB line and require the message
counts to follow the interest exactly, as Go 2.9 and 2.15 do.
"""
from __future__ import annotations

import random
import re
import socket
import time

import pytest

from conftest import (RawConn, t_expect, t_expect_exact, t_ping_pong, t_read_all)

QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
MIB = 1024 * 1024


# -- waiting for the server to have read everything ------------------------------------


def _tcp_queues(local_port: int, remote_port: int):
    """(tx_queue, rx_queue) of the established TCP socket local_port->remote_port."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            f = open(path)
        except OSError:
            continue
        with f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[3] != "01":          # ESTABLISHED
                    continue
                if (int(parts[1].rsplit(":", 1)[1], 16) == local_port
                        and int(parts[2].rsplit(":", 1)[1], 16) == remote_port):
                    tx, rx = parts[4].split(":")
                    return int(tx, 16), int(rx, 16)
    return None


def wait_consumed(conn: RawConn, server_port: int, timeout: float = 5.0):
    """Wait until every byte sent on `conn` has been read by the server process:
    our send queue is acknowledged and the server socket's receive queue is empty."""
    me = conn.sock.getsockname()[1]
    deadline = time.monotonic() + timeout
    while True:
        ours = _tcp_queues(me, server_port)
        theirs = _tcp_queues(server_port, me)
        if ours is not None and theirs is not None and ours[0] == 0 and theirs[1] == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError("server did not read what we sent: ours=%r theirs=%r"
                                 % (ours, theirs))
        time.sleep(0.0005)


def nodelay(conn: RawConn) -> RawConn:
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def fresh_conn(server) -> RawConn:
    c = nodelay(RawConn(server.host, server.port))
    c.read_info()
    return c


def test_wait_consumed_sees_unread_bytes():
    """The helper's fact is real: bytes nobody reads keep it waiting."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    c = RawConn("127.0.0.1", port)
    peer, _ = lsock.accept()
    try:
        c.send(b"x" * 100)
        with pytest.raises(AssertionError):
            wait_consumed(c, port, timeout=0.2)
        assert peer.recv(1000)
        wait_consumed(c, port, timeout=2)
    finally:
        peer.close()
        c.close()
        lsock.close()


# -- a transcript with every op, cut everywhere ----------------------------------------

HDR = b"NATS/1.0\r\nA: bc\r\n\r\n"
EMPTY_HDR = b"NATS/1.0\r\n\r\n"
TRICKY = b"PUB x 1\r\n\r\nUNSUB 1\r\n"     # a payload that looks like ops


def transcript(verbose: bool) -> tuple:
    """(bytes to send, exact expected answer) covering CONNECT, SUB (plain,
    queue, wildcard), PUB with and without reply, HPUB, UNSUB with max, PING,
    PONG, and one PUB line repeated (the hot path when quiet)."""
    v = b"true" if verbose else b"false"
    ok = b"+OK\r\n" if verbose else b""
    send, want = [], []

    def op(line: bytes, answer: bytes = b""):
        send.append(line)
        want.append(ok + answer if line.split()[0] not in (b"PING", b"PONG") else answer)

    op(b'CONNECT {"verbose":' + v + b',"pedantic":false,"headers":true,"echo":true}\r\n')
    op(b"SUB foo.* 1\r\n")
    op(b"SUB foo.bar q 2\r\n")
    op(b"PUB foo.bar 5\r\nhello\r\n",
       b"MSG foo.bar 1 5\r\nhello\r\nMSG foo.bar 2 5\r\nhello\r\n")
    op(b"PUB foo.baz reply.x 3\r\nabc\r\n", b"MSG foo.baz 1 reply.x 3\r\nabc\r\n")
    op(b"HPUB foo.bar %d %d\r\n%sworld\r\n" % (len(EMPTY_HDR), len(EMPTY_HDR) + 5, EMPTY_HDR),
       b"HMSG foo.bar 1 %d %d\r\n%sworld\r\n" % (len(EMPTY_HDR), len(EMPTY_HDR) + 5, EMPTY_HDR)
       + b"HMSG foo.bar 2 %d %d\r\n%sworld\r\n" % (len(EMPTY_HDR), len(EMPTY_HDR) + 5,
                                                  EMPTY_HDR))
    op(b"HPUB foo.q rep %d %d\r\n%shi\r\n" % (len(HDR), len(HDR) + 2, HDR),
       b"HMSG foo.q 1 rep %d %d\r\n%shi\r\n" % (len(HDR), len(HDR) + 2, HDR))
    op(b"PING\r\n", b"PONG\r\n")
    op(b"PUB foo.x %d\r\n%s\r\n" % (len(TRICKY), TRICKY),
       b"MSG foo.x 1 %d\r\n%s\r\n" % (len(TRICKY), TRICKY))     # sid 1 has 5 now
    op(b"UNSUB 1 7\r\n")
    for p in (b"p1", b"p2", b"p3"):                  # the same PUB line three times
        op(b"PUB foo.bar 2\r\n%s\r\n" % p,
           (b"MSG foo.bar 1 2\r\n%s\r\n" % p if p != b"p3" else b"")
           + b"MSG foo.bar 2 2\r\n%s\r\n" % p)
    op(b"PONG\r\n")
    op(b"UNSUB 2\r\n")
    op(b"PUB foo.bar 2\r\np4\r\n")                   # nobody left
    op(b"SUB > 3\r\n")
    op(b"PUB foo.bar 2\r\np5\r\n", b"MSG foo.bar 3 2\r\np5\r\n")
    op(b"PUB a 0\r\n\r\n", b"MSG a 3 0\r\n\r\n")
    op(b"PING\r\n", b"PONG\r\n")
    return b"".join(send), b"".join(want)


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_transcript_whole_gives_the_expected_answer(any_server, verbose):
    data, want = transcript(verbose)
    c = fresh_conn(any_server)
    try:
        c.send(data)
        t_expect_exact(c, want)
        t_ping_pong(c)
    finally:
        c.close()


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_transcript_cut_in_two_at_every_byte_gives_the_same_answer(any_server, verbose):
    data, want = transcript(verbose)
    for cut in range(1, len(data)):
        c = fresh_conn(any_server)
        try:
            c.send(data[:cut])
            wait_consumed(c, any_server.port)
            c.send(data[cut:])
            got_ok = True
            try:
                t_expect_exact(c, want)
            except AssertionError as exc:
                got_ok = exc
            assert got_ok is True, "cut at %d (%r | %r): %s" % (
                cut, data[max(0, cut - 12):cut], data[cut:cut + 12], got_ok)
        finally:
            c.close()


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_transcript_one_byte_per_read_gives_the_same_answer(any_server, verbose):
    data, want = transcript(verbose)
    c = fresh_conn(any_server)
    try:
        for k in range(len(data)):
            c.send(data[k:k + 1])
            wait_consumed(c, any_server.port)
        t_expect_exact(c, want)
        t_ping_pong(c)
    finally:
        c.close()


# -- payloads straddling read boundaries -----------------------------------------------


def test_payload_of_max_minus_one_then_small_pub_in_one_send(any_server, raw_factory):
    sub = raw_factory(any_server, QUIET + b"SUB big 1\r\nSUB small 2\r\n")
    t_ping_pong(sub)
    pub = raw_factory(any_server, QUIET)
    nodelay(pub)
    payload = (bytes(range(256)) * 4096)[:MIB - 1]
    pub.send(b"PUB big %d\r\n%s\r\nPUB small 2\r\nok\r\nPING\r\n" % (len(payload), payload))
    t_expect_exact(pub, b"PONG\r\n", timeout=20)
    t_expect_exact(sub, b"MSG big 1 %d\r\n%s\r\nMSG small 2 2\r\nok\r\n" % (len(payload), payload),
                   timeout=20)
    t_ping_pong(sub)


def frame_cuts(frame: bytes, size: int) -> dict:
    """Interesting places to cut a `PUB subj size\\r\\n<payload>\\r\\n` frame."""
    line_end = frame.index(b"\r\n")
    start = line_end + 2
    return {
        "in op name": 2,
        "in subject": 5,
        "before size": line_end - len(b"%d" % size),
        "before CR of line": line_end,
        "between CR and LF of line": line_end + 1,
        "at payload start": start,
        "one into payload": start + 1,
        "mid payload": start + size // 2,
        "one before payload end": start + size - 1,
        "before payload CR": start + size,
        "between payload CR and LF": start + size + 1,
    }


@pytest.mark.parametrize("size", [MIB - 1, 70000, 5])
def test_big_payload_cut_at_every_interesting_place(any_server, raw_factory, size):
    """Each frame is sent in two parts with a server read between them; the
    first publish of a subject is a new PUB line, the second repeats the line
    (gnatsd.py's cached PUB-line path)."""
    sub = raw_factory(any_server, QUIET + b"SUB big.* 1\r\nSUB after 2\r\n")
    t_ping_pong(sub)
    pub = nodelay(raw_factory(any_server, QUIET))
    t_ping_pong(pub)
    rng = random.Random(size)
    for name, subject in (("new line", b"big.%d"), ("repeated line", b"big.same")):
        for k, (where, cut) in enumerate(frame_cuts(b"PUB big.same %d\r\n" % size, size).items()):
            subj = subject % k if b"%d" in subject else subject
            payload = bytes([rng.randrange(256)]) * size
            frame = b"PUB %s %d\r\n%s\r\n" % (subj, size, payload)
            cut = min(cut, len(frame) - 1)
            pub.send(frame[:cut])
            wait_consumed(pub, any_server.port)
            pub.send(frame[cut:] + b"PUB after 2\r\nok\r\nPING\r\n")
            t_expect_exact(pub, b"PONG\r\n", timeout=20)
            t_expect_exact(sub, b"MSG %s 1 %d\r\n%s\r\nMSG after 2 2\r\nok\r\n"
                           % (subj, size, payload), timeout=20)
    t_ping_pong(sub)
    assert t_read_all(pub, 0.05) == b""


def test_many_frames_crossing_read_boundaries_arrive_intact(any_server, raw_factory):
    """5 MB of frames of assorted sizes in one send: reads end anywhere."""
    sub = raw_factory(any_server, QUIET + b"SUB s 1\r\n")
    t_ping_pong(sub)
    pub = raw_factory(any_server, QUIET)
    rng = random.Random(7)
    frames, want = [], []
    total = 0
    i = 0
    while total < 5 * MIB:
        size = rng.choice([0, 1, 2, 15, 16, 100, 4095, 4096, 65535, 65536, 300000, MIB - 1])
        payload = (b"%08d" % i) * (size // 8) + b"z" * (size % 8)
        frames.append(b"PUB s %d\r\n%s\r\n" % (size, payload))
        want.append(b"MSG s 1 %d\r\n%s\r\n" % (size, payload))
        total += size
        i += 1
    pub.send(b"".join(frames) + b"PING\r\n")
    t_expect_exact(pub, b"PONG\r\n", timeout=30)
    t_expect_exact(sub, b"".join(want), timeout=30)
    t_ping_pong(sub)


# -- pipelining ----------------------------------------------------------------------


def test_20000_pipelined_pubs_in_one_send_arrive_all_and_in_order(any_server, raw_factory):
    sub = raw_factory(any_server, QUIET + b"SUB seq.* 1\r\n")
    t_ping_pong(sub)
    n = 20000
    frames, want = [], []
    for i in range(n):
        body = b"%d" % i                          # sizes 1 to 5: lines differ
        subj = b"seq.%d" % (i % 3)
        frames.append(b"PUB %s %d\r\n%s\r\n" % (subj, len(body), body))
        want.append(b"MSG %s 1 %d\r\n%s\r\n" % (subj, len(body), body))
    pub = raw_factory(any_server, QUIET + b"".join(frames) + b"PING\r\n")
    t_expect_exact(pub, b"PONG\r\n", timeout=30)
    t_expect_exact(sub, b"".join(want), timeout=30)
    t_ping_pong(sub)


# -- the PUB-line cache under interest churn -------------------------------------------

MSG_RE = re.compile(rb"MSG (\S+) (\S+) (?:(\S+) )?(\d+)\r\n")


def msgs_until_pong(conn: RawConn) -> list:
    """PING; every (subject, sid, payload) that arrives before the PONG."""
    conn.send(b"PING\r\n")
    out = []
    while True:
        m = t_expect(conn, rb"(PONG\r\n)|MSG (\S+) (\S+) (?:(\S+) )?(\d+)\r\n", timeout=10)
        if m.group(1):
            return out
        size = int(m.group(5))
        body = t_expect(conn, re.compile(rb"(.{%d})\r\n" % size, re.S)).group(1)
        out.append((m.group(2), m.group(3), body))


def test_repeated_pub_line_follows_interest_churn_exactly(any_server, raw_factory):
    """One PUB line repeated between random SUB/UNSUB changes on three
    connections (the publisher among them): plain subscribers get every
    message exactly once, each queue group gets each message exactly once."""
    rng = random.Random(2024)
    conns = [raw_factory(any_server, QUIET) for _ in range(3)]
    for c in conns:
        t_ping_pong(c)
    pub = conns[0]
    patterns = [b"foo.bar", b"foo.*", b"*.bar", b">", b"foo.>", b"foo.baz", b"*.*.*"]
    queues = [None, None, None, b"q1", b"q2"]
    subs = {}              # (conn index, sid) -> (pattern, queue)
    next_sid = 0
    seq = 0

    def matches(pattern: bytes, subject: bytes) -> bool:
        pt, st = pattern.split(b"."), subject.split(b".")
        for i, p in enumerate(pt):
            if p == b">":
                return len(st) > i
            if i >= len(st) or (p != b"*" and p != st[i]):
                return False
        return len(pt) == len(st)

    for phase in range(80):
        # One interest change.
        if subs and rng.random() < 0.45:
            key = rng.choice(sorted(subs))
            conns[key[0]].send(b"UNSUB %d\r\n" % key[1])
            del subs[key]
            t_ping_pong(conns[key[0]])
        else:
            ci = rng.randrange(3)
            next_sid += 1
            pattern, queue = rng.choice(patterns), rng.choice(queues)
            conns[ci].send(b"SUB %s %s%d\r\n" % (pattern, queue + b" " if queue else b"",
                                                next_sid))
            subs[(ci, next_sid)] = (pattern, queue)
            t_ping_pong(conns[ci])
        # The same PUB line a few times (its payload varies, its line does not).
        count = rng.randint(1, 4)
        sent = []
        for _ in range(count):
            seq += 1
            pub.send(b"PUB foo.bar 6\r\n%06d\r\n" % seq)
            sent.append(b"%06d" % seq)
        got = {ci: msgs_until_pong(c) for ci, c in enumerate(conns)}
        for ci in got:
            assert all(subj == b"foo.bar" for subj, _sid, _body in got[ci])
        received = {(ci, int(sid), body) for ci in got for _s, sid, body in got[ci]}
        assert sum(len(v) for v in got.values()) == len(received), "duplicate delivery"
        for (ci, sid), (pattern, queue) in subs.items():
            if queue is None:
                want = set(sent) if matches(pattern, b"foo.bar") else set()
                have = {body for c2, s2, body in received if (c2, s2) == (ci, sid)}
                assert have == want, "phase %d: %r %r sid %d got %r want %r" % (
                    phase, pattern, ci, sid, have, want)
        for queue in (b"q1", b"q2"):
            members = {k for k, (p, q) in subs.items() if q == queue and matches(p, b"foo.bar")}
            bodies = sorted(body for c2, s2, body in received if (c2, s2) in members)
            assert bodies == (sorted(sent) if members else []), (
                "phase %d: queue %r got %r, sent %r" % (phase, queue, bodies, sent))
        plain_or_queue = {k for k in subs}
        assert {(c2, s2) for c2, s2, _b in received} <= plain_or_queue, (
            "phase %d: delivery to a removed subscription" % phase)


def by_sid(msgs: list) -> dict:
    """{sid: [payload, ...]} of (subject, sid, payload) tuples, in arrival order."""
    out: dict = {}
    for _subject, sid, body in msgs:
        out.setdefault(sid, []).append(body)
    return out


def test_unsub_max_on_subject_hit_by_a_cached_pub_line(any_server, raw_factory):
    sub = raw_factory(any_server, QUIET + b"SUB foo 1\r\nSUB foo 2\r\n")
    t_ping_pong(sub)
    pub = raw_factory(any_server, QUIET)
    for i in range(3):
        pub.send(b"PUB foo 2\r\n%02d\r\n" % i)
    t_ping_pong(pub)
    first = [b"%02d" % i for i in range(3)]
    assert by_sid(msgs_until_pong(sub)) == {b"1": first, b"2": first}
    # Counts include the three already delivered: two more for sid 1.
    sub.send(b"UNSUB 1 5\r\n")
    t_ping_pong(sub)
    pub.send(b"".join(b"PUB foo 2\r\n%02d\r\n" % i for i in range(3, 13)))
    t_ping_pong(pub)
    assert by_sid(msgs_until_pong(sub)) == {b"1": [b"03", b"04"],
                                            b"2": [b"%02d" % i for i in range(3, 13)]}
    # The sid is free again: a new SUB with it gets the next message.
    sub.send(b"SUB foo 1\r\n")
    t_ping_pong(sub)
    pub.send(b"PUB foo 2\r\n99\r\n")
    t_ping_pong(pub)
    assert by_sid(msgs_until_pong(sub)) == {b"1": [b"99"], b"2": [b"99"]}


def test_each_message_reaches_every_subscription_of_a_connection_before_the_next(
        any_server, raw_factory):
    """Go delivers message by message: a connection with two matching
    subscriptions sees m1 m1 m2 m2 ..., never m1 m2 ... m1 m2 ...  (The order
    of the two copies of one message is the sublist's, not fixed.)"""
    sub = raw_factory(any_server, QUIET + b"SUB foo 1\r\nSUB foo 2\r\nSUB f* 3\r\n")
    t_ping_pong(sub)
    pub = raw_factory(any_server, QUIET + b"PUB foo 2\r\nxx\r\n")   # the line, seen once
    t_ping_pong(pub)
    assert sorted(msgs_until_pong(sub)) == [(b"foo", b"1", b"xx"), (b"foo", b"2", b"xx")]
    pub.send(b"".join(b"PUB foo 2\r\n%02d\r\n" % i for i in range(20)) + b"PING\r\n")
    t_expect_exact(pub, b"PONG\r\n")
    got = msgs_until_pong(sub)
    assert [body for _s, _sid, body in got] == [b"%02d" % (k // 2) for k in range(40)], got
    assert by_sid(got) == {b"1": [b"%02d" % i for i in range(20)],
                           b"2": [b"%02d" % i for i in range(20)]}


def test_unsub_max_then_a_burst_in_one_read_stops_at_max(any_server, raw_factory):
    sub = raw_factory(any_server, QUIET + b"SUB foo 1\r\nUNSUB 1 3\r\nSUB foo 2\r\n")
    t_ping_pong(sub)
    pub = raw_factory(any_server, QUIET + b"".join(b"PUB foo 2\r\n%02d\r\n" % i
                                                   for i in range(10)) + b"PING\r\n")
    t_expect_exact(pub, b"PONG\r\n")
    # (Go's order of two subscriptions of one node is its map's: compare per sid.)
    assert by_sid(msgs_until_pong(sub)) == {b"1": [b"00", b"01", b"02"],
                                            b"2": [b"%02d" % i for i in range(10)]}


def test_unsub_max_on_own_subscription_inside_one_pipelined_read(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\n" + b"PUB foo 1\r\na\r\n" * 2
                    + b"UNSUB 1 4\r\n" + b"PUB foo 1\r\nb\r\n" * 5 + b"SUB foo 1\r\n"
                    + b"PUB foo 1\r\nc\r\n" + b"PING\r\n")
    t_expect_exact(c, b"MSG foo 1 1\r\na\r\n" * 2 + b"MSG foo 1 1\r\nb\r\n" * 2
                   + b"MSG foo 1 1\r\nc\r\nPONG\r\n")


def test_echo_false_with_a_pub_line_seen_before(any_server, raw_factory):
    me = raw_factory(any_server, b'CONNECT {"verbose":false,"pedantic":false,"echo":false}\r\n'
                                 b"PUB foo 2\r\nh0\r\n")   # the line, before any interest
    t_ping_pong(me)
    other = raw_factory(any_server, QUIET + b"SUB foo 7\r\n")
    t_ping_pong(other)
    me.send(b"SUB foo 1\r\n")
    t_ping_pong(me)
    me.send(b"PUB foo 2\r\nh1\r\nPUB foo 2\r\nh2\r\n")
    t_ping_pong(me)
    t_expect_exact(other, b"MSG foo 7 2\r\nh1\r\nMSG foo 7 2\r\nh2\r\n")
    t_ping_pong(other)
    # Only us: nobody gets it.
    other.send(b"UNSUB 7\r\n")
    t_ping_pong(other)
    me.send(b"PUB foo 2\r\nh3\r\n")
    t_ping_pong(me)
    # Others still reach us.
    other.send(b"PUB foo 2\r\nh4\r\n")
    t_ping_pong(other)
    t_expect_exact(me, b"MSG foo 1 2\r\nh4\r\n")
    t_ping_pong(me)
    assert t_read_all(other, 0.05) == b""


def test_echo_false_queue_member_passes_own_messages_to_the_other_member(any_server,
                                                                         raw_factory):
    me = raw_factory(any_server, b'CONNECT {"verbose":false,"pedantic":false,"echo":false}\r\n'
                                 b"SUB foo q 1\r\n")
    t_ping_pong(me)
    other = raw_factory(any_server, QUIET + b"SUB foo q 2\r\n")
    t_ping_pong(other)
    me.send(b"".join(b"PUB foo 2\r\n%02d\r\n" % i for i in range(30)))
    t_ping_pong(me)
    t_expect_exact(other, b"".join(b"MSG foo 2 2\r\n%02d\r\n" % i for i in range(30)))
    t_ping_pong(other)


def test_second_connect_turning_verbose_on_acks_a_cached_pub_line(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nPUB foo 1\r\na\r\nPUB foo 1\r\nb\r\n"
                    b"PING\r\n")
    t_expect_exact(c, b"MSG foo 1 1\r\na\r\nMSG foo 1 1\r\nb\r\nPONG\r\n")
    c.send(b'CONNECT {"verbose":true}\r\nPUB foo 1\r\nc\r\nPING\r\n')
    # 2.11+ drops the subscriptions of the first CONNECT, 2.9 keeps them.
    m = t_expect(c, rb"\+OK\r\n\+OK\r\n(MSG foo 1 1\r\nc\r\n)?PONG\r\n")
    assert m


def test_pub_line_with_trailing_blank_and_bare_lf_repeat(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\n"
                    + (b"PUB foo 1 \r\na\r\n" + b"PUB foo 1\nb\r\n" + b"PUB foo 1\r\nc\r\n") * 3
                    + b"PING\r\n")
    t_expect_exact(c, (b"MSG foo 1 1\r\na\r\nMSG foo 1 1\r\nb\r\nMSG foo 1 1\r\nc\r\n") * 3
                   + b"PONG\r\n")

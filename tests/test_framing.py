"""The client parser, in-process: bytes in, bytes out, cut at every byte.

Go's parser_test.go feeds its parser byte slices directly; this module does
the same with gnatsd.py's: a Client object of a Server that never starts its
loop, wired to one end of a socketpair, gets its input through
`process_input` (what a socket read calls) and its answers are read from the
other end.  No process, no listener, no timing: each case runs in
microseconds, so every transcript is cut at every byte, and fed one byte per
read, and must give exactly the answer it gives whole.  (tests/test_parser.py
runs the same transcripts against live servers, Go's included.)
"""
from __future__ import annotations

import socket

import pytest

from conftest import import_gnatsd
from test_parser import TRICKY, transcript

g = import_gnatsd()


class Wire:
    """One in-process client of a server that is never started."""

    def __init__(self, server=None, connect: bytes = b""):
        self.server = server or g.Server(g.Options(host="127.0.0.1", port=-1))
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.peer.setblocking(False)
        self.server.next_cid += 1
        self.client = g.Client(self.server, ours, self.server.next_cid)
        self.server.clients[self.client.cid] = self.client
        if connect:
            self.feed(connect)

    def feed(self, data: bytes):
        """One read's worth of input, processed as the loop would, with any
        input the turn's time budget deferred processed too."""
        server = self.server
        self.client.process_input(data)
        while server.backlogged:
            server.run_backlog()
        server.flush_pending()

    def answer(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self.peer.recv(65536)
            except BlockingIOError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk

    @property
    def closed(self) -> bool:
        return self.client.closed

    def close(self):
        self.peer.close()
        if not self.client.closed:
            self.client.sock.close()


def answer_to(pieces) -> tuple:
    """Feed `pieces` one read each to a fresh client: (answer, closed)."""
    wire = Wire()
    try:
        for piece in pieces:
            if not wire.closed:
                wire.feed(piece)
        return wire.answer(), wire.closed
    finally:
        wire.close()


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_transcript_whole_gives_the_expected_answer(verbose):
    data, want = transcript(verbose)
    assert answer_to([data]) == (want, False)


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_transcript_cut_in_two_at_every_byte_gives_the_same_answer(verbose):
    data, want = transcript(verbose)
    for cut in range(1, len(data)):
        got = answer_to([data[:cut], data[cut:]])
        assert got == (want, False), "cut at %d (%r | %r)" % (
            cut, data[max(0, cut - 12):cut], data[cut:cut + 12])


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_transcript_one_byte_per_read_gives_the_same_answer(verbose):
    data, want = transcript(verbose)
    assert answer_to([data[k:k + 1] for k in range(len(data))]) == (want, False)


# Inputs that end the connection, as Go's parser_test.go has them: each must
# get the same answer (and be closed) whole and cut anywhere.
BAD = [
    (b"XYZ\r\n", b"-ERR 'Unknown Protocol Operation'\r\n"),
    (b"PUBX foo 1\r\n", b"-ERR 'Unknown Protocol Operation'\r\n"),
    (b"PUB foo 2\r\nokX\r\n", b"-ERR 'Unknown Protocol Operation'\r\n"),
    (b"PUB foo 2\r\nok\rX\r\n", b"-ERR 'Unknown Protocol Operation'\r\n"),
    (b"SUB foo 1\r\nPUB foo 1234567890\r\n", b""),    # a size past 9 digits: silent
    (b"PUB foo 2000000\r\n", b"-ERR 'Maximum Payload Violation'\r\n"),
    (b"-ERR 'oops'\r\n", b""),
]


@pytest.mark.parametrize("data,want", BAD, ids=["unknown-op", "op-without-space",
                                                "payload-end-cr", "payload-end-lf",
                                                "ten-digit-size", "over-max-payload",
                                                "client-err"])
def test_bad_input_gets_the_same_answer_cut_anywhere(data, want):
    quiet = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
    for cut in [None] + list(range(1, len(data))):
        pieces = [quiet + data] if cut is None else [quiet + data[:cut], data[cut:]]
        assert answer_to(pieces) == (want, True), "cut at %s" % cut


def test_a_payload_that_looks_like_ops_is_a_payload():
    quiet = b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB x 1\r\n'
    data = quiet + b"PUB x %d\r\n%s\r\nPING\r\n" % (len(TRICKY), TRICKY)
    want = b"MSG x 1 %d\r\n%s\r\nPONG\r\n" % (len(TRICKY), TRICKY)
    for cut in range(1, len(data)):
        assert answer_to([data[:cut], data[cut:]]) == (want, False), "cut at %d" % cut


def test_varying_lines_on_the_hot_path_cut_anywhere():
    """Subjects, sizes and replies that change per message (the hot path:
    pedantic off), cut at every byte of a stretch of them."""
    quiet = b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB v.> 1\r\n'
    msgs = [(b"v.a", None, b"1"), (b"v.b", b"r.1", b"22"), (b"v.a", None, b"333"),
            (b"v.a", None, b"444"), (b"v.a", None, b"444"), (b"v.c", b"r.2", b"")]
    data = quiet + b"".join(b"PUB %s %s%d\r\n%s\r\n" % (s, r + b" " if r else b"", len(p), p)
                            for s, r, p in msgs)
    want = b"".join(b"MSG %s 1 %s%d\r\n%s\r\n" % (s, r + b" " if r else b"", len(p), p)
                    for s, r, p in msgs)
    for cut in range(len(quiet), len(data)):
        assert answer_to([data[:cut], data[cut:]]) == (want, False), "cut at %d" % cut


# PUB lines the hot path must leave to the reference path, each sent right
# after a clean line on the same subject (so pub_lines knows the subject).
ODD_PUBS = [b"PUB odd re\tply 2\r\nok\r\n", b"PUB odd rep\rly 2\r\nok\r\n",
            b"PUB o\rdd 2\r\nok\r\n", b"PUB od\td 2\r\nok\r\n", b"PUB odd\t 2\r\nok\r\n",
            b"PUB odd  reply 2\r\nok\r\n", b"PUB odd reply\t 2\r\nok\r\n",
            b"PUB \todd 2\r\nok\r\n", b"PUB  odd 2\r\nok\r\n", b"PUB odd a b 2\r\nok\r\n",
            b"PUB odd reply 2\r\nok\r\n", b"HPUB odd re\tply 12 14\r\nNATS/1.0\r\n\r\nok\r\n",
            b"HPUB o\rdd 12 14\r\nNATS/1.0\r\n\r\nok\r\n"]


@pytest.mark.parametrize("line", ODD_PUBS)
def test_odd_pub_lines_give_what_the_reference_path_gives(line):
    """The same input from a client on the hot path and from one held to
    the reference path (fast_pub off) must give the same bytes."""
    quiet = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
    clean = b"PUB odd 2\r\nok\r\nPUB odd reply 2\r\nok\r\n"

    def outcome(hot: bool) -> tuple:
        sub = Wire(None, quiet + b"SUB > 1\r\n")
        pub = Wire(sub.server, quiet)
        pub.client.fast_pub = hot
        try:
            pub.feed(clean)
            assert bool(pub.client.pub_lines) == hot
            pub.feed(line + clean + b"PING\r\n")
            return sub.answer(), pub.answer(), pub.closed
        finally:
            pub.close()
            sub.close()

    assert outcome(True) == outcome(False)


def test_counts_and_bytes_of_first_and_later_pubs_to_many_subjects():
    """A subject's first PUB goes out from its PlanShape and is counted at
    once, later ones from its plan and counted when it settles: both must
    add up, and give the bytes, the reference path gives (fast_pub off)."""
    quiet = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
    msgs = [(b"n.%d" % (k % 1500 if k % 3 else k % 7), b"p" * (k % 5)) for k in range(3000)]
    data = b"".join(b"PUB %s %d\r\n%s\r\n" % (s, len(p), p) for s, p in msgs)

    def outcome(hot: bool) -> tuple:
        sub = Wire(None, quiet + b"SUB n.> 1\r\nSUB n.* 2\r\n")
        other = Wire(sub.server, quiet + b"SUB > 3\r\n")
        pub = Wire(sub.server, quiet)
        pub.client.fast_pub = hot
        try:
            for k in range(0, len(data), 4096):
                pub.feed(data[k:k + 4096])
            got = sub.answer(), other.answer()
            g.settle_all(sub.server)
            subs = sorted((s.sid, s.delivered) for w in (sub, other)
                          for s in w.client.subs.values())
            stats = [(w.client.out_msgs, w.client.out_bytes) for w in (sub, other)]
            return got, subs, stats, (pub.client.in_msgs, pub.client.in_bytes)
        finally:
            for w in (pub, sub, other):
                w.close()

    hot = outcome(True)
    assert hot == outcome(False)
    assert hot[1] == [(b"1", 3000), (b"2", 3000), (b"3", 3000)]
    assert hot[2][1] == (3000, sum(len(p) for _s, p in msgs))


def test_a_first_pub_to_a_subject_reaches_its_receiver_with_that_read():
    """The read that holds a subject's first PUB (delivered from the shape)
    marks its receivers pending and active, as a plan's delivery does."""
    quiet = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
    sub = Wire(None, quiet + b"SUB f.> 1\r\n")
    pub = Wire(sub.server, quiet)
    try:
        sub.client.last_activity = 0.0
        for k in range(3):
            pub.feed(b"PUB f.%d 2\r\nhi\r\n" % k)
            assert sub.answer() == b"MSG f.%d 1 2\r\nhi\r\n" % k
        assert sub.client.last_activity > 0.0
    finally:
        pub.close()
        sub.close()


def test_a_subject_gets_its_plan_at_its_third_pub_and_every_pub_arrives():
    """A subject's first two PUBs go out from its PlanShape (the cached
    result's slot says SEEN_ONCE, then SEEN_TWICE), the third makes its
    DeliveryPlan, which pub_lines then serves.  A subscriber that comes
    between two PUBs drops the cached result (and so starts it over) and
    gets what follows."""
    quiet = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
    sub = Wire(None, quiet + b"SUB t.> 1\r\n")
    pub = Wire(sub.server, quiet)
    late = None
    sublist = pub.client.account.sublist
    try:
        seen = []
        for k in range(6):
            if k == 4:
                late = Wire(sub.server, quiet + b"SUB t.x 9\r\n")
            pub.feed(b"PUB t.x %d\r\n%s\r\n" % (k + 1, b"z" * (k + 1)))
            assert sub.answer() == b"MSG t.x 1 %d\r\n%s\r\n" % (k + 1, b"z" * (k + 1))
            seen.append(sublist.cache[b"t.x"].plan)
        assert seen[0] is g.SEEN_ONCE and seen[1] is g.SEEN_TWICE
        assert isinstance(seen[2], g.DeliveryPlan) and seen[3] is seen[2]
        assert seen[4] is g.SEEN_ONCE and seen[5] is g.SEEN_TWICE, "started over"
        assert pub.client.pub_lines[b"PUB t.x"] is seen[2]
        assert late.answer() == b"MSG t.x 9 5\r\nzzzzz\r\nMSG t.x 9 6\r\nzzzzzz\r\n"
        g.settle_all(sub.server)
        assert [s.delivered for s in sub.client.subs.values()] == [6]
    finally:
        for w in (pub, sub, late):
            if w is not None:
                w.close()


def test_a_header_set_on_a_message_with_headers_stays_in_one_block():
    """Message.with_header (Nats-Request-Info on a service import, Nats-
    Trace-Hop on a traced message) replaces or appends inside the block:
    it once left the block's blank line in the middle of it."""
    block = b"NATS/1.0\r\nA: 1\r\nHop: old\r\n\r\n"
    msg = g.Message(b"s", None, len(block), len(block) + 2, block + b"hi")
    got = msg.with_header(b"Hop", b"1").with_header(b"B", b"2")
    assert got.payload == b"NATS/1.0\r\nA: 1\r\nHop: 1\r\nB: 2\r\n\r\nhi"
    assert (got.hdr, got.size) == (len(got.payload) - 2, len(got.payload))
    plain = g.Message(b"s", None, -1, 2, b"hi").with_header(b"X", b"y")
    assert plain.payload == b"NATS/1.0\r\nX: y\r\n\r\nhi"


# -- the framing function alone: bytes in, ops out ---------------------------------------
#
# split_ops strings together the pieces the reference path frames a
# client's input with (frame_line, frame_partial, payload_end), with no
# client and no socket: the way Go's parser_test.go drives its parser.


def ops_of(pieces, max_control_line: int = 4096) -> list:
    """The ops framed from `pieces`, each piece one read: what a read left
    unfinished is put in front of the next, as a connection keeps it."""
    ops, tail = [], b""
    for piece in pieces:
        got, tail = g.split_ops(tail + piece, max_control_line)
        ops += got
    assert tail == b"" or not pieces, "left unfinished: %r" % tail
    return ops


FRAMED = [
    (b"PING\r\n", [(b"PING", b"", None)]),
    (b"ping\r\npong\n", [(b"PING", b"", None), (b"PONG", b"", None)]),
    (b"PINGx\r\n+OK\r\n", [(b"PING", b"", None), (b"+OK", b"", None)]),
    (b"PUB foo 5\r\nhello\r\n", [(b"PUB", b"foo 5", b"hello")]),
    (b"pub foo.bar  reply\t11\r\nhello world\r\n",
     [(b"PUB", b"foo.bar  reply\t11", b"hello world")]),
    (b"PUB foo 0\r\n\r\n", [(b"PUB", b"foo 0", b"")]),
    (b"PUB foo 4\r\n\r\n\r\n\r\n", [(b"PUB", b"foo 4", b"\r\n\r\n")]),
    (b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
     [(b"HPUB", b"foo 12 14", b"NATS/1.0\r\n\r\nhi")]),
    (b"SUB foo 1\r\nSUB foo q 2\nUNSUB 1 5\r\n",
     [(b"SUB", b"foo 1", None), (b"SUB", b"foo q 2", None), (b"UNSUB", b"1 5", None)]),
    (b'CONNECT {"verbose":false}\r\n', [(b"CONNECT", b'{"verbose":false}', None)]),
    (b"CONNECTx {}\r\n", [(b"CONNECT", b"x {}", None)]),
    (b"INFO {}\r\n", [(b"INFO", b"{}", None)]),
    (b"-ERR 'oops'\r\n", [(b"-ERR", b"'oops'", None)]),
    # Go's argument may start after a bare LF.
    (b"PUB \nfoo 2\r\nhi\r\n", [(b"PUB", b"\nfoo 2", b"hi")]),
    # Go drops the byte before the LF when a CR came earlier in the argument.
    (b"SUB a\rb 1\n", [(b"SUB", b"a\rb ", None)]),
]


@pytest.mark.parametrize("data,want", FRAMED, ids=[repr(d[:12])[2:-1] for d, _ in FRAMED])
def test_split_ops_frames_each_op(data, want):
    assert ops_of([data]) == want


@pytest.mark.parametrize("data,want", FRAMED, ids=[repr(d[:12])[2:-1] for d, _ in FRAMED])
def test_split_ops_frames_the_same_cut_anywhere_and_byte_by_byte(data, want):
    for cut in range(1, len(data)):
        assert ops_of([data[:cut], data[cut:]]) == want, "cut at %d" % cut
    assert ops_of([data[k:k + 1] for k in range(len(data))]) == want


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_split_ops_frames_the_transcript_cut_anywhere(verbose):
    data, _want = transcript(verbose)
    whole = ops_of([data])
    assert [op for op, _, _ in whole].count(b"PUB") >= 3
    assert (b"PUB", b"foo.x %d" % len(TRICKY), TRICKY) in whole    # a payload is no op
    for cut in range(1, len(data)):
        assert ops_of([data[:cut], data[cut:]]) == whole, "cut at %d" % cut


def test_split_ops_keeps_an_unfinished_op_for_the_next_read():
    assert g.split_ops(b"PUB foo 5\r\nhel") == ([], b"PUB foo 5\r\nhel")
    assert g.split_ops(b"PING\r\nSUB fo") == ([(b"PING", b"", None)], b"SUB fo")
    assert g.split_ops(b"PUB \n") == ([], b"PUB \n")       # the argument still to come
    # Past max_control_line Go holds no more than the op and its argument.
    assert g.split_ops(b"PING" + b"x" * 100, 64) == ([], b"PINGx")


REFUSED = [
    (b"XYZ\r\n", "Unknown Protocol Operation", "state=0, i=0"),
    (b"PUBX foo 1\r\n", "Unknown Protocol Operation", "state=31, i=3"),
    (b"PUB foo 2\r\nokX\r\n", "Unknown Protocol Operation", "state=41, i=13"),
    (b"PUB foo 2\r\nok\rX\r\n", "Unknown Protocol Operation", "state=42, i=14"),
    (b"SUB " + b"x" * 70 + b" 1\r\n", "maximum control line exceeded", "line 72"),
]


@pytest.mark.parametrize("data,err,log", REFUSED,
                         ids=["unknown", "op-without-space", "payload-end-cr",
                              "payload-end-lf", "control-line"])
def test_split_ops_refuses_what_go_refuses_as_soon_as_it_shows(data, err, log):
    with pytest.raises(g.ProtocolError) as whole:
        g.split_ops(data, 64)
    assert whole.value.err == err and log in str(whole.value)
    # Cut anywhere, the error comes with the read that holds the bad byte
    # (or, for an overlong line, the one that makes it too long).
    for cut in range(1, len(data)):
        try:
            _ops, tail = g.split_ops(data[:cut], 64)
        except g.ProtocolError as early:
            assert early.err == err
            continue
        with pytest.raises(g.ProtocolError) as late:
            g.split_ops(tail + data[cut:], 64)
        assert late.value.err == err, "cut at %d" % cut


def test_split_ops_refuses_an_unknown_op_before_its_newline():
    with pytest.raises(g.ProtocolError):
        g.split_ops(b"PING\r\nX")
    assert g.split_ops(b"PING\r\nUNSU") == ([(b"PING", b"", None)], b"UNSU")

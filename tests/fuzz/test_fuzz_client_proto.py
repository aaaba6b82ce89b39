"""Fuzz the client protocol parser: a byte stream split at arbitrary points
must get exactly the answer the same bytes get in one piece.

A live in-process server (`Server(Options(port=-1)).start()`) accepts two
real TCP connections per input.  The input (a mix of valid ops, broken
ops and junk) goes to the server's `Client.process_input` on the loop
thread, all at once on one connection and chunk by chunk on the other,
exactly as `read_ready` hands over what one recv returned (and with the
loop's own catch-all around it), each chunk followed by the loop's flush.
Then the server closes both connections and we compare everything each
one received after INFO: the same MSGs, the same -ERRs, the same close.
Queue-group picks are random, so the module RNG is seeded alike for both.
Nothing may be logged as an unexpected error (a Python exception).
"""
from __future__ import annotations

import random
import socket

import pytest
from hypothesis import given, strategies as st

from conftest import import_gnatsd
from fuzzing import (FUZZ_SETTINGS, capture_errors, even_out, feed_on_loop, read_to_close,
                     release_errors, run_fuzzer)

g = import_gnatsd()

# -- input generator ------------------------------------------------------------

TOKENS = st.sampled_from([b"foo", b"bar", b"a", b"b", b"*", b">", b"", b"_INBOX", b"x y"])
SUBJECTS = st.lists(TOKENS, min_size=1, max_size=4).map(b".".join)
SIDS = st.sampled_from([b"1", b"2", b"3", b"10", b"x"])
QUEUES = st.sampled_from([b"q", b"q2", b"w"])
SPACES = st.sampled_from([b" ", b"  ", b"\t", b" \t"])
EOLS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""])
OPNAMES = st.sampled_from([b"PUB", b"pub", b"Pub", b"HPUB", b"hpub", b"SUB", b"sub",
                           b"UNSUB", b"unsub", b"PING", b"ping", b"PONG", b"pong",
                           b"CONNECT", b"connect", b"INFO", b"+OK", b"-ERR", b"MSG",
                           b"PINGX", b"PUBX", b"SUBB", b"P", b"PU", b"CONN", b"X"])
CONNECT_VALUES = st.one_of(st.booleans(), st.none(), st.integers(-2, 3), st.text(max_size=4),
                           st.lists(st.booleans(), max_size=2))
CONNECT_KEYS = st.sampled_from(["verbose", "pedantic", "echo", "headers", "no_responders",
                                "protocol", "name", "lang", "version", "tls_required",
                                "user", "pass", "auth_token", "sig", "jwt", "other"])


def _json(value) -> bytes:
    import json
    return json.dumps(value).encode()


@st.composite
def connect_op(draw):
    # Mostly well-typed flags (so sessions stay open), sometimes junk types.
    flags = draw(st.dictionaries(st.sampled_from(["verbose", "pedantic", "echo", "headers",
                                                  "no_responders"]),
                                 st.booleans(), max_size=5))
    flags.setdefault("verbose", False)
    flags.setdefault("pedantic", False)
    if draw(st.integers(0, 5)) == 0:
        flags.update(draw(st.dictionaries(CONNECT_KEYS, CONNECT_VALUES, max_size=3)))
    body = _json(flags)
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.sampled_from([b"{", b"[]", b"null", b"1", b'"x"', b"{\"verbose\":",
                                     b"[" * 3000, b"{\"a\":" * 1500, b"{}{}", b""]))
    return b"CONNECT " + body


@st.composite
def pub_op(draw, headers: bool = False):
    subject = draw(SUBJECTS)
    reply = draw(st.one_of(st.none(), SUBJECTS))
    if headers:
        hdr = draw(st.sampled_from([b"NATS/1.0\r\n\r\n", b"NATS/1.0\r\nA: b\r\n\r\n", b"",
                                    b"NATS/1.0 503\r\n\r\n", b"junk"]))
    else:
        hdr = b""
    payload = hdr + draw(st.binary(max_size=40))
    size = len(payload)
    hdr_size = len(hdr)
    # Sometimes a lying size, a bad size token or a missing/odd terminator.
    lie = draw(st.integers(0, 14))
    size_token = b"%d" % size
    if lie == 1:
        size_token = b"%d" % max(0, size + draw(st.integers(-3, 3)))
    elif lie == 2:
        size_token = draw(st.sampled_from([b"-1", b"x", b"1e3", b"", b"99999999999999999999",
                                           b"2000000", b"0x10", b"+3"]))
    elif lie == 3:
        size_token = b"0" + size_token
    parts = [draw(st.sampled_from([b"PUB", b"pub"]) if not headers else
                  st.sampled_from([b"HPUB", b"hpub"])), subject]
    if reply is not None:
        parts.append(reply)
    if headers:
        parts.append(b"%d" % hdr_size if lie != 4 else b"%d" % (size + 1))
    parts.append(size_token)
    sep = draw(SPACES)
    line = sep.join(parts)
    if lie == 5:
        line = line.rstrip(b"0123456789")
    tail = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"", b"XX", b"\r"])) \
        if lie in (6, 7) else b"\r\n"
    return line + draw(EOLS if lie == 8 else st.just(b"\r\n")) + payload + tail


@st.composite
def sub_op(draw):
    parts = [draw(st.sampled_from([b"SUB", b"sub"])), draw(SUBJECTS)]
    if draw(st.booleans()):
        parts.append(draw(QUEUES))
    parts.append(draw(SIDS))
    if draw(st.integers(0, 20)) == 0:
        parts = parts[:draw(st.integers(1, len(parts)))]
    return draw(SPACES).join(parts)


@st.composite
def unsub_op(draw):
    parts = [draw(st.sampled_from([b"UNSUB", b"unsub"])), draw(SIDS)]
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from([b"1", b"2", b"5", b"0", b"x", b"-1"])))
    if draw(st.integers(0, 20)) == 0:
        parts = parts[:1] or parts
    return draw(SPACES).join(parts)


def _line(op):
    """A control line op with a line ending (usually CRLF)."""
    return st.tuples(op, EOLS).map(b"".join)


JUNK = st.one_of(
    st.binary(max_size=30),
    st.tuples(OPNAMES, st.sampled_from([b"", b" ", b"\t"]), st.binary(max_size=20), EOLS)
    .map(b"".join),
    st.sampled_from([b"\r\n", b"\n", b" \r\n", b"\x00", b"\xff\xfe", b"PING", b"PO", b"NG\r\n",
                     b"INFO {}\r\n", b"INFO [\r\n", b"+OK\r\n", b"-ERR 'x'\r\n",
                     b"PUB foo 5000\r\n", b"SUB " + b"a" * 5000 + b" 1\r\n",
                     b"PUB " + b"a" * 5000 + b" 0\r\n\r\n", b"Q" * 5000 + b"\r\n",
                     b"PUB foo 1\r\nxy\r\n", b"MSG foo 1 0\r\n\r\n", b"FOO " + b"a" * 5000 + b"\r\n",
                     b"CONNECT " + b" " * 5000 + b"{}\r\n", b"UNSUB 1 " + b"9" * 5000 + b"\r\n"]),
)

OPS = st.one_of(
    pub_op(), pub_op(), pub_op(headers=True),
    _line(sub_op()), _line(sub_op()), _line(unsub_op()),
    st.sampled_from([b"PING\r\n", b"PONG\r\n", b"ping\r\n", b"PING \r\n", b"PONG\n"]),
    _line(connect_op()),
    JUNK,
)


@st.composite
def stream_and_splits(draw):
    ops = draw(st.lists(OPS, min_size=1, max_size=25))
    # Usually open with a CONNECT (so PUBs reach subscribers without +OK
    # noise); sometimes not (the default session is verbose and pedantic).
    if draw(st.integers(0, 3)):
        ops.insert(0, b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
    data = b"".join(ops)
    cuts = draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=12, unique=True))
    if draw(st.integers(0, 4)) == 0 and len(data) < 400:
        cuts = list(range(1, len(data)))   # one byte at a time
    cuts = sorted(c for c in cuts if 0 < c < len(data))
    chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    return data, chunks


# -- driving the live server ------------------------------------------------------


class Peer:
    """A real TCP client of the in-process server, and its Client object."""

    def __init__(self, server):
        self.server = server
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.buf = bytearray()
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "server closed before INFO"
            self.buf += chunk
        assert self.buf.startswith(b"INFO ")
        del self.buf[:self.buf.index(b"\r\n") + 2]
        local = self.sock.getsockname()[1]

        def find():
            for c in server.clients.values():
                if c.port == local:
                    return c
            return None
        self.client = server.call_in_loop(find)
        assert self.client is not None

    def feed(self, chunks, seed: int) -> tuple:
        """Hand `chunks` to the client as separate reads; close it. Returns
        (closed by the input, close reason)."""
        return feed_on_loop(self.server, self.client, chunks, seed)

    def output(self) -> bytes:
        return read_to_close(self.sock, self.buf)


@pytest.fixture(scope="module")
def server():
    srv = g.Server(g.Options(host="127.0.0.1", port=-1)).start()
    errors = capture_errors(g)
    srv.errors = errors
    yield srv
    release_errors(g, errors)
    srv.shutdown()
    random.seed()   # the inputs seeded the module RNG; leave it random again


def run_both(server, data: bytes, chunks: list) -> None:
    seed = random.getrandbits(32)
    whole, split = Peer(server), Peer(server)
    whole_closed = whole.feed([data], seed)
    split_closed = split.feed(chunks, seed)
    whole_out, split_out = even_out(whole.output()), even_out(split.output())
    server.errors.check()
    assert split_out == whole_out, "split %r\nwhole: %r\nsplit: %r" % (
        [bytes(c) for c in chunks][:40], whole_out[:600], split_out[:600])
    assert split_closed == whole_closed


def test_fuzz_client_parser_split_equals_whole(server):
    count = [0]

    @FUZZ_SETTINGS
    @given(stream_and_splits())
    def prop(case):
        count[0] += 1
        data, chunks = case
        run_both(server, data, chunks)

    assert run_fuzzer("client-proto", prop, count) > 0

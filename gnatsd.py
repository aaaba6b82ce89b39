#!/usr/bin/env python3
"""gnatsd.py: a NATS server in one file, standard library only.

gnatsd.py speaks the NATS client protocol as nats-server 2.x does (protocol
1: INFO, CONNECT, PUB, HPUB, SUB, UNSUB, PING, PONG, MSG, HMSG, +OK, -ERR,
with headers, no_responders and echo), accepts the command line and config
file of gnatsd 0.7.2 and of the modern nats-server, and runs on CPython 3.8
or newer with nothing but the standard library.

    python3 gnatsd.py                  # a server on 0.0.0.0:4222
    python3 gnatsd.py -p -1 -DV        # a free port, debug and protocol trace
    python3 gnatsd.py -c conf/default.conf

One thread runs an event loop on `selectors`: it accepts connections, reads
whole control lines and payloads, matches subjects in a trie with a result
cache, appends deliveries to each receiver's outbound buffer and flushes every
buffer once per loop turn::

    socket --recv--> parser --PUB--> sublist.match --> out buffers --send--> sockets
                       |                                   ^
                       +--SUB/UNSUB--> sublist             +-- flushed once per turn

With TLS, OpenSSL sits at both ends (`ssl.SSLObject` on memory BIOs, driven
by the same loop, so a slow handshake blocks no one); the middle is the same.

Contents
 Part I. The core: PUB in, MSG out
  1. Constants and errors
  2. Protocol parser
  3. Sublist
  4. Connection base
  5. Client
  6. Server and event loop
 Part II. Fidelity and the 2.x features
  7. Config-file lexer and parser
  8. Options
  9. Authentication, permissions and accounts
  10. TLS
  11. WebSocket
  12. Route
  13. Leaf nodes
  14. Monitor
  15. Logging
  16. Command line
 Part III. From Python
  17. Embedding and the pytest plugin

`grep -n '^# [0-9]*\\. ' gnatsd.py` prints the chapters with line numbers.
"""

from __future__ import annotations

import argparse
import base64
import collections
import copy
import errno
import gc
import heapq
import itertools
import json
import logging
import mmap
import operator
import os
import platform
import queue
import random
import re
import selectors
import signal
import socket
import sys
import threading
import time
import types
import urllib.parse

# `ssl` (5 MB of OpenSSL in the process), `hmac` (its hashlib, 4 MB more),
# `subprocess`, `http.server` and `ctypes` are imported where a configuration
# first needs them, so a small device running a plain server never loads
# them (chapter 10's load_ssl; tests/test_footprint.py holds the budget).
ssl = None

__version__ = "0.1.0"

__all__ = ["Server", "Options", "Sublist", "NatsError", "ConfigError", "parse_config", "main",
           "run", "run_cluster", "EmbeddedServer", "ServerCluster", "ServerError"]


# ############################################################################
# Part I. The core
# ############################################################################
#
# How a message broker works, in the order data flows: the limits and wire
# texts (1), how bytes become ops (2), how a published subject finds its
# subscribers (3), how a connection reads and writes without blocking (4),
# what a client does, PUB in to MSG out (5), and the one loop that runs it
# all (6).  Each chapter names its twin in gnatsd 0.7.2 or nats-server.


# ============================================================================
# 1. Constants and errors
# ============================================================================
#
# Every limit, default and wire literal in one place, named as in the Go
# server's const.go and errors.go, so a reader with those files open finds
# each one.  Durations are float seconds; sizes are bytes.

# The nats-server release whose core client behaviour we match.  Clients gate
# features on this string (headers arrived in 2.2), so it is the Go version,
# and gnatsd.py's own version is shown beside it in the log and by -v.
VERSION = "2.10.0"

# The account of clients that log in outside any configured account, and the
# system account's name when the config does not choose one.
GLOBAL_ACCOUNT = "$G"
SYSTEM_ACCOUNT = "$SYS"

# Client protocol level: 1 means the server may send async INFO updates.
PROTO = 1

# What INFO reports in its `go` field: the runtime that runs us.
GO_FIELD = "python%s" % platform.python_version()

# What INFO and /varz report as `git_commit` (Go: its build's commit): ours.
GIT_COMMIT = "gnatsd.py-" + __version__

# Default route port (a route URL without a port).
DEFAULT_ROUTE_PORT = 6222
DEFAULT_LEAF_PORT = 7422

# Default client port, and the value meaning "let the OS choose".
DEFAULT_PORT = 4222
RANDOM_PORT = -1

# Default bind address for clients.
DEFAULT_HOST = "0.0.0.0"

# Largest payload a client may publish (bytes).
MAX_PAYLOAD_SIZE = 1024 * 1024

# Largest control line (op and arguments, CONNECT included) (bytes).
MAX_CONTROL_LINE_SIZE = 4096

# Outbound bytes a connection may have queued before it is a slow consumer.
MAX_PENDING_SIZE = 64 * 1024 * 1024

# Connections the server accepts at once.
DEFAULT_MAX_CONNECTIONS = 64 * 1024

# Seconds between server PINGs, and unanswered PINGs before a close.
DEFAULT_PING_INTERVAL = 120.0
DEFAULT_PING_MAX_OUT = 2

# Seconds a client has to send CONNECT when authorization is required.
AUTH_TIMEOUT = 2.0

# Seconds an outbound buffer may make no progress before a slow-consumer close.
DEFAULT_WRITE_DEADLINE = 10.0

# Seconds a TLS handshake may take (Go's TLS_TIMEOUT), and how long a
# `handshake_first: auto` server waits for a ClientHello before it sends a
# plain INFO after all (Go's DEFAULT_TLS_HANDSHAKE_FIRST_FALLBACK_DELAY).
TLS_TIMEOUT = 2.0
DEFAULT_TLS_HANDSHAKE_FIRST_FALLBACK_DELAY = 0.05

# Lame duck mode: how long to spread closes over, and the grace before that.
DEFAULT_LAME_DUCK_DURATION = 120.0
DEFAULT_LAME_DUCK_GRACE_PERIOD = 10.0

# Bytes asked of the kernel per socket read (into one reused buffer).
READ_SIZE = 1024 * 1024

# Bytes sent per send() call at most; larger buffers are sent in pieces.
MAX_SEND_SIZE = 4 * 1024 * 1024

# What the kernel left of a flush, above which it is sent alone at the next
# (Connection.flush_rest) rather than joined again with what came since.
FLUSH_ALONE_SIZE = 256 * 1024

# Backpressure: a read this large means a publisher is flooding; if one of
# the connections it fed is then above 3/4 of max_pending, the publisher is
# not read again until that connection drains, or for at most MAX_STALL
# seconds (Go stalls producers at 75% of max_pending too).
FLOOD_READ_SIZE = 16 * 1024
MAX_STALL = 0.1

# Fairness: seconds of input processing one connection may take per loop
# turn.  The rest of its input waits (whole ops, in the connection's
# backlog) while every other connection with input gets its turn, so a flood
# of cheap-to-send but costly-to-process ops (new subjects, wildcard SUBs)
# delays others by one slice, not by one 1 MB read.  The clock is read after
# every slow op and every INPUT_CHECK_BYTES of fast ones.
MAX_INPUT_TIME = 0.005
INPUT_CHECK_BYTES = 16 * 1024

# Entries in the sublist's match cache before the oldest are dropped (and
# distinct subscription sets it keeps PlanShapes for).
SUBLIST_CACHE_MAX = 1024

# What a sublist keeps of dropped results (PUB lines' and routes' PlanShapes)
# at most, each kind: ~105 bytes an entry, so 100,000 subjects published at
# random take ~10 MB, not a cache miss each.
COLD_LINES_MAX = 131072

# PUB size tokens the hot path remembers the value of (Server.pub_size; and
# record lengths, Server.run_token).
PUB_SIZES_MAX = 4096

# PUBs in a row on one subject before deliver_subject_run takes the rest of
# the run (a shorter one costs more so), and the bytes it splits at most.
SUBJECT_RUN_MIN = 8
SUBJECT_RUN_WINDOW_MAX = 256 * 1024

# deliver_pub_batch's window: PUB_BATCH_WINDOW at first in a read, twice as
# wide after each batch that took most of its window, PUB_BATCH_WINDOW_MAX
# at most (its pieces and lists stay in the CPU's caches), and narrow again
# after a batch a record ended early (a line not known yet: the maps past it
# were spent for nothing).  Over TCP, 4 publishers, no subscriber: 12 KiB
# windows 1.90M msgs/s, growing to 64 KiB 2.2M; 10,000 subjects to one
# subscriber: 0.61M either way, 0.52M with 64 KiB windows from the start.
# It grows only after a batch that took less than PUB_BATCH_GROW_TIME: a
# batch takes about twice that at most, and a turn runs past MAX_INPUT_TIME
# by no more (tiny payloads to 8 subscribers took ~4 ms a 64 KiB window).
# After a batch of fewer than PUB_BATCH_RECORDS records, or one a PUB ended
# in its window's first half, parse takes the next 16 KiB its own way, twice
# that after each such batch in a row, 1 MiB at most.
PUB_BATCH_WINDOW = 12 * 1024
PUB_BATCH_WINDOW_MAX = 64 * 1024
PUB_BATCH_GROW_TIME = MAX_INPUT_TIME / 4
PUB_BATCH_RECORDS = 8
PUB_BATCH_RETRY_MIN = 16 * 1024
PUB_BATCH_RETRY_MAX = 1024 * 1024

# `PUB <subject>` lines a client's hot path remembers the delivery plan of
# (Client.pub_lines), at most; the plans themselves live in the sublist's
# cache, so a line past SUBLIST_CACHE_MAX subjects is mostly a stale one.
PUB_LINES_MAX = 1024

# Closed connections kept for /connz?state=closed (Go's DEFAULT_MAX_CLOSED_CLIENTS;
# the max_closed_clients option).
MAX_CLOSED_CLIENTS = 10000

# Allocations between the garbage collector's young collections (tune_gc).
GC_YOUNG_THRESHOLD = 20000

# Wire literals.
CR_LF = b"\r\n"
PING = b"PING\r\n"
PONG = b"PONG\r\n"
OK = b"+OK\r\n"

# -ERR texts the server sends, exactly as nats-server 2.x words them.
ERR_UNKNOWN_PROTOCOL = "Unknown Protocol Operation"
ERR_INVALID_SUBJECT = "Invalid Subject"
ERR_INVALID_PUBLISH_SUBJECT = "Invalid Publish Subject"
ERR_MAX_PAYLOAD = "Maximum Payload Violation"
ERR_MAX_CONTROL_LINE = "maximum control line exceeded"
ERR_MAX_CONNECTIONS = "maximum connections exceeded"
ERR_MAX_SUBSCRIPTIONS = "maximum subscriptions exceeded"
ERR_STALE_CONNECTION = "Stale Connection"
ERR_AUTH_VIOLATION = "Authorization Violation"
ERR_AUTH_TIMEOUT = "Authentication Timeout"
ERR_BAD_CLIENT_PROTOCOL = "invalid client protocol"
ERR_NO_RESPONDERS_REQUIRES_HEADERS = "no responders requires headers support"
ERR_USER_EXPIRED = "User Authentication Expired"
ERR_ACCOUNT_EXPIRED = "Account Authentication Expired"
ERR_MAX_ACCOUNT_CONNECTIONS = "maximum account active connections exceeded"

# The header a service import adds to a request: who is asking (Go's ClientInfoHdr).
REQUEST_INFO_HEADER = b"Nats-Request-Info"

# The status message a requester gets when nobody can answer its request
# (nats-server 2.12+ names the request's subject; 2.9 sent the status line
# alone).
NO_RESPONDERS_HEADER = b"NATS/1.0 503\r\nNats-Subject: %s\r\n\r\n"

# Why a connection was closed (Go's ClosedState strings, as /connz shows them).
CLIENT_CLOSED = "Client Closed"
AUTHENTICATION_TIMEOUT = "Authentication Timeout"
AUTHENTICATION_VIOLATION = "Authentication Failure"
AUTHENTICATION_EXPIRED = "Authentication Expired"
MAX_ACCOUNT_CONNECTIONS_EXCEEDED = "Maximum Account Connections Exceeded"
MAX_SUBSCRIPTIONS_EXCEEDED = "Maximum Subscriptions Exceeded"
SLOW_CONSUMER_PENDING_BYTES = "Slow Consumer (Pending Bytes)"
SLOW_CONSUMER_WRITE_DEADLINE = "Slow Consumer (Write Deadline)"
WRITE_ERROR = "Write Error"
READ_ERROR = "Read Error"
PARSE_ERROR = "Parse Error"
STALE_CONNECTION = "Stale Connection"
PROTOCOL_VIOLATION = "Protocol Violation"
BAD_CLIENT_PROTOCOL_VERSION = "Bad Client Protocol Version"
MAX_PAYLOAD_EXCEEDED = "Maximum Message Payload Exceeded"
MAX_CONTROL_LINE_EXCEEDED = "Maximum Control Line Exceeded"
MAX_CONNECTIONS_EXCEEDED = "Maximum Connections Exceeded"
NO_RESPONDERS_REQUIRES_HEADERS = "No Responders Requires Headers"
SERVER_SHUTDOWN = "Server Shutdown"
TLS_HANDSHAKE_ERROR = "TLS Handshake Failure"

# Log levels below DEBUG: TRACE is Go's -V protocol trace.
TRACE = 5
logging.addLevelName(TRACE, "TRACE")

# The one module logger; chapter 15 gives it handlers.  Until then (in a
# program that embeds a server, chapter 17) its records go only where the
# program's logging sends them, as a library's should.
log = logging.getLogger("gnatsd")
log.addHandler(logging.NullHandler())


class NatsError(Exception):
    """Base class of every error gnatsd.py raises on purpose."""


class ConfigError(NatsError):
    """A configuration problem, naming the file, line and column when known.
    `listed` marks one found while processing a parsed file, which Go
    prints as a list (a blank line after it)."""

    listed = False

    def __init__(self, message: str, path: str = "", line: int = 0, column: int = 0):
        self.message = message
        self.path = path
        self.line = line
        self.column = column
        where = path or "<config>"
        if line:
            where += ":%d:%d" % (line, column)
        super().__init__("%s: %s" % (where, message) if (path or line) else message)


class ProtocolError(NatsError):
    """A peer broke the protocol.  `err` is the -ERR text to send, or None
    for a silent close (Go closes silently on malformed arguments)."""

    def __init__(self, message: str, err: str | None = None, reason: str = PROTOCOL_VIOLATION):
        super().__init__(message)
        self.err = err
        self.reason = reason


# ============================================================================
# 2. Protocol parser
# ============================================================================
#
# The client protocol is text control lines, each ending in CRLF (a bare LF
# is accepted too), some followed by a payload of a declared size and CRLF:
#
#     PUB <subject> [reply] <size>\r\n<payload>\r\n
#     HPUB <subject> [reply] <header size> <total size>\r\n<headers+payload>\r\n
#     SUB <subject> [queue] <sid>\r\n        UNSUB <sid> [max]\r\n
#     CONNECT {json}\r\n   PING\r\n   PONG\r\n   +OK\r\n   -ERR <text>\r\n
#
# The Go server walks bytes through a state machine.  We find whole lines
# with `bytes.find` and keep the machine's two outer states, "control line"
# and "payload": when a read ends inside either, the unparsed tail waits on
# the connection with the number of bytes still needed, and the next read
# resumes there (parser.go's split-buffer handling).  Ops are
# case-insensitive, arguments are split on runs of spaces and tabs.
#
# This chapter has the pieces that do not depend on the connection: the
# control-line splitter, the argument parsers, and the framing functions
# built on them (bytes in, ops out).  The read loop and its op table are the
# client's (chapter 5), because its PUB fast path delivers in place.  Go
# twin: server/parser.go.  Entry points: frame_line, frame_partial,
# payload_end (Client.process_op drives them), split_ops (all three, for
# tests) and the parse_*_args functions.


def split_op(line: bytes) -> tuple:
    """(OP upper-cased, argument bytes, had a separator) of a control line."""
    m = _OP_AND_ARG.match(line)
    return m.group(1).upper(), m.group(3), bool(m.group(2))


# GO-COMPAT: parse (fuzz/test_fuzz_client_vs_go.py::test_found_inputs_get_go_answer)
def drop_cr(arg: bytes) -> bytes:
    """A control line's argument, as Go's parser hands it over.  Go notes a
    CR anywhere in an argument after its first byte, then drops the byte
    before the LF, taking it for CRLF's CR: normally the CR itself, but in
    `SUB a\rb 1\n` the `1`."""
    return arg[:-1] if arg.find(b"\r", 1) >= 0 else arg


# GO-COMPAT: parse (fuzz/test_fuzz_client_vs_go.py::test_found_inputs_get_go_answer)
def split_client_op(line: bytes) -> tuple:
    """split_op for a client's line.  Go takes every byte after CONNECT or
    INFO as the argument, separator or not: `CONNECTx {}` is a CONNECT of
    `x {}` (bad JSON), and counts as having its separator."""
    op, arg, has_sep = split_op(line)
    if op.startswith((b"CONNECT", b"INFO")) and op not in (b"CONNECT", b"INFO"):
        op = b"CONNECT" if op.startswith(b"CONNECT") else b"INFO"
        return op, line[len(op):].lstrip(b" \t"), True
    return op, arg, has_sep


# GO-COMPAT: parseSize (test_proto.py::test_pub_bad_size_closes_silently)
def parse_size(token: bytes) -> int:
    """Go's parseSize: ASCII digits only, at most 9 of them, else -1."""
    if not token or not token.isdigit() or len(token) > 9:
        return -1
    return int(token)


_TABS = bytes.maketrans(b"\t", b" ")
_TABS_CR_LF = bytes.maketrans(b"\t\r\n", b"   ")
_OP_AND_ARG = re.compile(rb"([^ \t]*)([ \t]*)(.*)", re.S)    # (split_op: compiled once)


# GO-COMPAT: processPub (test_proto.py::test_tabs_and_repeated_spaces_separate_args)
def split_pub_arg(arg: bytes) -> list:
    """Go's processPub and processHeaderPub split on spaces and tabs only:
    in `PUB foo 0\r\r\n` the size token is `0\r`, a bad size."""
    return [token for token in arg.translate(_TABS).split(b" ") if token]


# GO-COMPAT: splitArg (fuzz/test_fuzz_client_vs_go.py::test_found_inputs_get_go_answer)
def split_arg(arg: bytes) -> list:
    """Go's splitArg (SUB, UNSUB): spaces, tabs, CR and LF separate
    (not the vertical tab and form feed that bytes.split() also takes)."""
    return [token for token in arg.translate(_TABS_CR_LF).split(b" ") if token]


def parse_pub_args(arg: bytes) -> tuple:
    """PUB arguments -> (subject, reply or None, size, offset of size in arg)."""
    args = split_pub_arg(arg)
    if len(args) == 2:
        subject, reply, size_token = args[0], None, args[1]
    elif len(args) == 3:
        subject, reply, size_token = args
    else:
        raise ProtocolError("processPub Parse Error: %s" % go_quote(arg))
    size = parse_size(size_token)
    if size < 0:
        raise ProtocolError("processPub Bad or Missing Size: %s" % go_quote(arg))
    return subject, reply, size, size_token


def parse_hpub_args(arg: bytes) -> tuple:
    """HPUB arguments -> (subject, reply or None, header size, total size,
    size field)."""
    args = split_pub_arg(arg)
    if len(args) == 3:
        subject, reply, hdr_token, size_token = args[0], None, args[1], args[2]
    elif len(args) == 4:
        subject, reply, hdr_token, size_token = args
    else:
        raise ProtocolError("processHeaderPub Parse Error: %s" % go_quote(arg))
    hdr = parse_size(hdr_token)
    if hdr < 0:
        raise ProtocolError("processHeaderPub Bad or Missing Header Size: %s" % go_quote(arg))
    size = parse_size(size_token)
    if size < 0:
        raise ProtocolError("processHeaderPub Bad or Missing Total Size: %s" % go_quote(arg))
    if hdr > size:
        raise ProtocolError("processHeaderPub Header Size larger then TotalSize: %s"
                            % go_quote(arg))
    # The size field of the MSG/HMSG lines it makes, from the raw tokens (a
    # header block of 0 bytes makes a plain message: Go's processHeaderPub).
    return subject, reply, hdr, size, size_token if hdr == 0 else hdr_token + b" " + size_token


def parse_sub_args(arg: bytes) -> tuple:
    """SUB arguments -> (subject, queue or None, sid)."""
    args = split_arg(arg)
    if len(args) == 2:
        return args[0], None, args[1]
    if len(args) == 3:
        return args[0], args[1], args[2]
    raise ProtocolError("processSub Parse Error: %s" % go_quote(arg))


def parse_unsub_args(arg: bytes) -> tuple:
    """UNSUB arguments -> (sid, max or 0)."""
    args = split_arg(arg)
    if len(args) == 1:
        return args[0], 0
    if len(args) == 2:
        return args[0], max(parse_size(args[1]), 0)  # Go ignores a bad max: unsubscribe now
    raise ProtocolError("processUnsub Parse Error: %s" % go_quote(arg))


def err_proto(text: str) -> bytes:
    """The wire form of a server error: -ERR 'text'."""
    return b"-ERR '" + text.encode() + b"'\r\n"


# -- framing: bytes in, ops out ---------------------------------------------------
#
# The pure part of reading a client: where an op's line ends, what its name
# and argument are, and where its payload ends, with Go's answers for input
# that is wrong; no connection, no state.  The client's reference path
# (Client.process_op, partial_line, process_pub) frames with these, and
# split_ops strings them together for tests, as Go's parser_test.go drives
# its parser with byte slices (tests/test_framing.py).

# The client ops, and whether each takes an argument.
CLIENT_OPS = {
    b"PUB": True, b"HPUB": True, b"SUB": True, b"UNSUB": True, b"CONNECT": True,
    b"INFO": True, b"-ERR": True, b"PING": False, b"PONG": False,
}
# Names an unfinished line may still be spelling: Go's parser also walks
# through +OK (skipped) and HMSG (refused only at the newline).
CLIENT_OP_NAMES = tuple(CLIENT_OPS) + (b"+OK", b"HMSG")


def control_line_exceeded(length: int, max_control_line: int) -> ProtocolError:
    """An argument of `length` bytes past max_control_line."""
    return ProtocolError("maximum control line exceeded (max_control_line %d, line %d)"
                         % (max_control_line, length), ERR_MAX_CONTROL_LINE,
                         MAX_CONTROL_LINE_EXCEEDED)


def frame_line(data: bytes, i: int, nl: int, max_control_line: int):
    """The client op whose control line starts at `i` and ends at the LF at
    `nl`: (OP, argument, line, index of its last LF), or None when the
    argument is not all here yet.  OP is one of CLIENT_OPS or b"+OK" (PING,
    PONG and +OK take no argument: what follows them is skipped).  Raises
    the ProtocolError of an unknown op or an overlong argument."""
    line = data[i:nl]
    op, arg, has_sep = split_client_op(line)
    kept = drop_cr(arg)
    if kept is not arg:             # the byte before LF goes from the line too
        arg, line = kept, line[:-1]
    needs_arg = CLIENT_OPS.get(op)
    if needs_arg is None:
        for name in (b"PING", b"PONG", b"+OK"):
            if op.startswith(name):
                return name, b"", line, nl
        raise op_name_error(data, i)
    if not needs_arg:
        return op, arg, line, nl
    if not has_sep and op not in (b"CONNECT", b"INFO"):
        raise op_name_error(data, i)
    if not arg:
        # Go's argument starts at the first byte after the blanks, even a
        # LF: `PUB \nfoo 0\r\n` is a PUB of `\nfoo 0`.
        # GO-COMPAT: parse (fuzz/test_fuzz_client_vs_go.py::test_found_inputs_get_go_answer)
        end = data.find(b"\n", nl + 1)
        if end < 0:
            held = len(drop_cr(data[nl:]))
            if held > max_control_line:
                raise control_line_exceeded(held, max_control_line)
            return None
        arg = drop_cr(data[nl:end])
        line, nl = line + arg, end
    if len(arg) > max_control_line:
        raise control_line_exceeded(len(arg), max_control_line)
    return op, arg, line, nl


# GO-COMPAT: parse (fuzz/test_fuzz_regressions.py::test_long_unknown_op_is_unknown_even_split)
def frame_partial(data: bytes, i: int, max_control_line: int) -> bytes:
    """The bytes to keep of a control line that starts at `i` and has no
    LF yet.  Go's parser reads byte by byte, so it fails on the first byte
    no op can continue with, before the newline comes (a client that sends
    `X` and waits gets its -ERR at once), and never holds more than an
    argument: it skips what follows PING, PONG and +OK, and the blanks
    after an op.  Raises the ProtocolError of an unknown op or an overlong
    argument."""
    op, _arg, has_sep = split_op(data[i:i + len(b"CONNECT") + 2])
    if not op.startswith((b"PING", b"PONG", b"+OK", b"CONNECT", b"INFO")):
        if has_sep:
            if op not in CLIENT_OPS:
                raise op_name_error(data, i)
        elif not any(name.startswith(op) for name in CLIENT_OP_NAMES):
            raise op_name_error(data, i)
    if len(data) - i <= max_control_line:
        return data[i:]
    op, arg, has_sep = split_client_op(data[i:])
    held = len(drop_cr(arg))    # Go leaves out what drop_cr drops
    # Only an op that takes arguments has a limit (as in frame_line).
    if held > max_control_line and has_sep and CLIENT_OPS.get(op):
        raise control_line_exceeded(held, max_control_line)
    if op[:4] in (b"PING", b"PONG") or op[:3] == b"+OK":
        return data[i:i + 4] + data[-1:]
    if has_sep and op in CLIENT_OPS:
        return op + b" " + arg
    raise op_name_error(data, i)


def payload_end(data: bytes, nl: int, size: int) -> int:
    """Where the CRLF after a payload of `size` bytes (starting after the
    LF at `nl`) starts, or -1 when it is not all here yet.  Raises Go's
    parse error as soon as a byte there is not the CR or LF."""
    stop = nl + 1 + size
    if stop + 2 > len(data):
        check_payload_end(data, stop)
        return -1
    if data[stop] != 13 or data[stop + 1] != 10:
        raise payload_end_error(data, stop)
    return stop


def check_payload_end(data: bytes, stop: int, kind: str = "Client"):
    """A payload must be followed by CRLF: fail as soon as a wrong byte shows."""
    if stop < len(data) and data[stop] != 13:
        raise payload_end_error(data, stop, kind)


def split_ops(data: bytes, max_control_line: int = MAX_CONTROL_LINE_SIZE) -> tuple:
    """Frame `data` as a client's input: ([(OP, argument, payload or None)],
    the unfinished tail to prepend to the next bytes).  Raises the
    ProtocolError the reference path would (also for a PUB or HPUB whose
    arguments do not parse).  The pieces the server reads with, strung
    together for tests."""
    ops = []
    i, n = 0, len(data)
    while i < n:
        nl = data.find(b"\n", i)
        if nl < 0:
            return ops, frame_partial(data, i, max_control_line)
        framed = frame_line(data, i, nl, max_control_line)
        if framed is None:
            return ops, data[i:]
        op, arg, _line, nl = framed
        payload = None
        if op in (b"PUB", b"HPUB"):
            size = parse_pub_args(arg)[2] if op == b"PUB" else parse_hpub_args(arg)[3]
            stop = payload_end(data, nl, size)
            if stop < 0:
                return ops, data[i:]
            payload, nl = data[nl + 1:stop], stop + 1
        ops.append((op, arg, payload))
        i = nl + 1
    return ops, b""


# ============================================================================
# 3. Sublist
# ============================================================================
#
# A sublist maps a published subject to the subscriptions interested in it.
# Subjects are `bytes` split on "." into tokens; a subscription's subject may
# use `*` (exactly one token) and `>` (one or more tokens, last only).  The
# trie has one level per token: a level maps literal tokens to nodes and keeps
# the `*` and `>` nodes aside, and a node holds the plain subscriptions and
# the queue subscriptions (by group name) that end there.
#
# `match` walks every branch that can match (literal, `*`, `>`) and merges
# queue subscriptions of the same group name from all matching nodes into one
# group, as the Go server does.  Results are cached by subject (at most
# SUBLIST_CACHE_MAX entries, oldest dropped first).  The cache stays correct
# under churn: inserting or removing a literal subscription drops just the one
# entry with that subject; a wildcard one drops every cached subject it
# matches.  To find those without testing every cached subject (a client
# churning `SUB w.*`/`UNSUB` against a full cache would hold the loop), the
# cached subjects are also kept in a small token trie of their own, which the
# wildcard walks: the cost follows the entries it can match, not the cache
# size.  The trie is built by the first wildcard change that needs it and
# kept up from then on, until the cache next evicts (so traffic to ever new
# subjects, which fills and evicts the cache, does not pay for it).  `genid`
# counts changes to the subscriptions, so callers may keep derived data (such
# as a client's ready-made delivery plan) and know when it went stale.  A
# result the cache drops leaves its `cold` in cold_lines (and `local_cold`
# in cold_subjects) until they next change: subjects past the cache.
#
# A published subject with an empty token (`foo..bar`, `.foo`) matches
# nothing.  Go twin: server/sublist.go.


class Subscription:
    """One SUB of a client: subject, optional queue group, sid, optional max.

    A shadow subscription (an account's stream import, chapter 9) sits in
    the exporter's sublist for its `parent`; `im` maps delivered subjects
    back into the subscriber's account."""

    __slots__ = ("client", "subject", "queue", "sid", "max", "delivered", "parent", "im",
                 "shadows")

    def __init__(self, client, subject: bytes, queue: bytes | None, sid: bytes):
        self.client = client
        self.subject = subject
        self.queue = queue
        self.sid = sid
        self.max = 0          # messages to deliver before auto-unsubscribe; 0 = no limit
        self.delivered = 0
        self.parent = None    # for a shadow: the subscription it stands for
        self.im = None        # for a shadow: SubjectTransform into the client's account
        self.shadows = None   # [(account, shadow)] of a subscription that has some

    def __repr__(self) -> str:
        return "<Subscription %r %r sid=%r>" % (self.subject, self.queue, self.sid)


class SublistResult:
    """What `match` returns: plain subs, and queue subs as a list of groups.

    The plan slots are free for the caller (the client chapter keeps its
    delivery plans there); they live exactly as long as the cached result.
    Whatever sits in them has a `settle()`, called to bring counts up to
    date, and a `retire()` (which settles) when the result is dropped (a
    caller may hold a plan elsewhere, and must then look the subject up
    again).  A falsy marker in a slot holds a place (the client's SEEN_ONCE).
    `cold`: what the sublist keeps once the cache drops it (cold_lines), and
    `local_cold` what it keeps under the subject (cold_subjects, a route's)."""

    __slots__ = ("psubs", "qsubs", "plan", "header_plan", "local_plan", "cold", "local_cold")

    def __init__(self, psubs: list, qsubs: list):
        self.psubs = psubs
        self.qsubs = qsubs
        self.plan = None          # for a PUB
        self.header_plan = None   # for an HPUB
        self.local_plan = None    # for messages from a route: local clients only
        self.cold = None          # (key, value) kept in cold_lines once dropped
        self.local_cold = None    # kept in cold_subjects once dropped

    def __len__(self) -> int:
        return len(self.psubs) + sum(len(g) for g in self.qsubs)

    def settle(self):
        """Settle each delivery plan kept here; the sublist calls it before
        dropping the result."""
        for plan in (self.plan, self.header_plan, self.local_plan):
            if plan:
                plan.settle()

    def drop(self):
        """Retire (and so settle) each plan kept here: the sublist drops the result."""
        # HOT: three tests, not a tuple and a loop (a result is dropped per
        #      cache miss once the cache is full: 10k 1.04x in process).
        if self.plan:
            self.plan.retire()
        if self.header_plan:
            self.header_plan.retire()
        if self.local_plan:
            self.local_plan.retire()


class _Node:
    __slots__ = ("next", "psubs", "qsubs")

    def __init__(self):
        self.next = None      # _Level below this token, or None
        self.psubs = {}       # Subscription -> None (an ordered set)
        self.qsubs = {}       # queue name -> {Subscription: None}

    def is_empty(self) -> bool:
        return not self.psubs and not self.qsubs and (self.next is None or self.next.is_empty())


class _Level:
    __slots__ = ("nodes", "pwc", "fwc")

    def __init__(self):
        self.nodes = {}       # literal token -> _Node
        self.pwc = None       # the `*` node
        self.fwc = None       # the `>` node

    def is_empty(self) -> bool:
        return not self.nodes and self.pwc is None and self.fwc is None


class Sublist:
    """The subject trie with a bounded match cache.  Loop thread only."""

    def __init__(self, cache_max: int = SUBLIST_CACHE_MAX, name: bytes = b"$G"):
        self.name = name      # the account's, for the route protocol lines it makes
        self.root = _Level()
        self.cache = {}
        self.cache_index = None  # the cached subjects as a trie, once a wildcard needs it
        self.cache_max = cache_max
        self.count = 0
        self.genid = 0
        self.inserts = 0
        self.removes = 0
        self.matches = 0
        self.cache_hits = 0
        self.plan_shapes = {}        # the client chapter's (shape_for), for genid:
        self.plan_shapes_genid = 0
        self.cold_lines = {}         # dropped results' `cold` (key, value)s
        self.cold_subjects = {}      # and their `local_cold`, by subject

    def insert(self, sub: Subscription):
        """Add `sub` under its subject and drop the cached results it changes
        (Go's Insert).  The subject is not checked here, and `sub` must not be
        in the sublist already (it would be counted twice)."""
        level, node = self.root, None
        tokens = sub.subject.split(b".")
        for token in tokens:
            if token == b"*":
                node = level.pwc = level.pwc or _Node()
            elif token == b">":
                node = level.fwc = level.fwc or _Node()
            else:
                node = level.nodes.get(token)
                if node is None:
                    node = level.nodes[token] = _Node()
            if node.next is None:
                node.next = _Level()
            level = node.next
        if sub.queue is None:
            node.psubs[sub] = None
        else:
            node.qsubs.setdefault(sub.queue, {})[sub] = None
        self.count += 1
        self.inserts += 1
        self._changed()
        self._invalidate(sub.subject, tokens)

    def remove(self, sub: Subscription) -> bool:
        """Remove `sub`; prune emptied nodes.  Returns False if it was absent."""
        tokens = sub.subject.split(b".")
        path = []  # (level, token, node) from the root down
        level = self.root
        for token in tokens:
            if level is None:
                return False
            if token == b"*":
                node = level.pwc
            elif token == b">":
                node = level.fwc
            else:
                node = level.nodes.get(token)
            if node is None:
                return False
            path.append((level, token, node))
            level = node.next
        node = path[-1][2]
        if sub.queue is None:
            if node.psubs.pop(sub, 0) is not None:
                return False
        else:
            group = node.qsubs.get(sub.queue)
            if group is None or group.pop(sub, 0) is not None:
                return False
            if not group:
                del node.qsubs[sub.queue]
        for level, token, node in reversed(path):
            if not node.is_empty():
                break
            if token == b"*":
                level.pwc = None
            elif token == b">":
                level.fwc = None
            else:
                del level.nodes[token]
        self.count -= 1
        self.removes += 1
        self._changed()
        self._invalidate(sub.subject, tokens)
        return True

    def _changed(self):
        """Subscriptions changed: count it, and forget the cold lines."""
        self.genid += 1
        self.cold_lines.clear()
        self.cold_subjects.clear()

    def _invalidate(self, subject: bytes, tokens: list):
        """Drop cached results that `subject` (a subscription's) can match."""
        cache = self.cache
        if not cache:
            return
        if b"*" not in tokens and b">" not in tokens:
            self._drop(subject)
            return
        if self.cache_index is None:
            self.cache_index = {}
            for key in cache:
                self._index(key)
        keys: list = []
        _cached_matching(self.cache_index, tokens, 0, keys)
        for key in keys:
            self._drop(key)

    def _index(self, key: bytes):
        """Add a cached subject to the cache's token trie."""
        node = self.cache_index
        for token in key.split(b"."):
            child = node.get(token)
            if child is None:
                child = node[token] = {}
            node = child
        node[None] = key

    def _drop(self, key: bytes):
        """Forget one cached result, settling its plan's counts first."""
        result = self.cache.pop(key, None)
        if result is not None:
            result.drop()
            if self.cache_index is not None:
                path = []
                node = self.cache_index
                for token in key.split(b"."):
                    path.append((node, token))
                    node = node[token]
                del node[None]
                for parent, token in reversed(path):    # prune emptied branches
                    if parent[token]:
                        break
                    del parent[token]

    def clear_cache(self):
        """Drop every cached result (and plan); callers' derived data goes stale."""
        for result in self.cache.values():
            result.drop()
        self.cache.clear()
        self.cache_index = None
        self._changed()

    def settle(self):
        """Move every cached plan's pending counts to their owners."""
        for result in self.cache.values():
            result.settle()

    def match(self, subject: bytes) -> SublistResult:
        """All subscriptions matching the literal `subject` (cached)."""
        self.matches += 1
        result = self.cache.get(subject)
        if result is not None:
            self.cache_hits += 1
            return result
        tokens = subject.split(b".")
        psubs: list = []
        qsubs: dict = {}
        if b"" not in tokens:
            _match_level(self.root, tokens, psubs, qsubs)
        result = SublistResult(psubs, list(qsubs.values()))
        cache = self.cache
        if len(cache) >= self.cache_max:
            # Drop the oldest quarter (dicts keep insertion order), and the
            # token trie with it (so no _drop): built again if a wildcard needs it.
            self.cache_index = None
            cold, subjects = self.cold_lines, self.cold_subjects
            for kept in (cold, subjects):
                if len(kept) >= COLD_LINES_MAX:
                    for key in list(kept)[:COLD_LINES_MAX // 4]:
                        del kept[key]
            for key in list(cache)[: max(1, self.cache_max // 4)]:
                dropped = cache.pop(key)
                dropped.drop()
                if dropped.cold is not None:
                    cold[dropped.cold[0]] = dropped.cold[1]
                if dropped.local_cold is not None:
                    subjects[key] = dropped.local_cold
        cache[subject] = result
        if self.cache_index is not None:
            self._index(subject)
        return result

    def has_interest(self, subject: bytes) -> bool:
        """True if a message on the literal `subject` would reach anyone (a
        full `match`, so it is cached and counted)."""
        return len(self.match(subject)) > 0

    def all_subscriptions(self) -> list:
        """Every subscription, as a list (see `iter_subscriptions`)."""
        return list(self.iter_subscriptions())

    def iter_subscriptions(self):
        """Every subscription, a node at a time; the trie may change between
        steps (what is seen is copied first), so a caller may pause."""
        stack = [self.root]
        while stack:
            level = stack.pop()
            nodes = list(level.nodes.values())
            nodes += [n for n in (level.pwc, level.fwc) if n is not None]
            for node in nodes:
                yield from list(node.psubs)
                for group in list(node.qsubs.values()):
                    yield from list(group)
                if node.next is not None:
                    stack.append(node.next)


def _cached_matching(node: dict, pattern: list, i: int, out: list):
    """The cached subjects (in the cache's token trie) that `pattern[i:]`
    matches, added to `out`: literal tokens are looked up, `*` follows every
    branch one level, `>` takes every subject below."""
    if i == len(pattern):
        key = node.get(None)
        if key is not None:
            out.append(key)
        return
    token = pattern[i]
    if token == b">":
        stack = [child for t, child in node.items() if t is not None]
        while stack:
            below = stack.pop()
            for t, child in below.items():
                if t is None:
                    out.append(child)
                else:
                    stack.append(child)
    elif token == b"*":
        for t, child in node.items():
            if t is not None:
                _cached_matching(child, pattern, i + 1, out)
    else:
        child = node.get(token)
        if child is not None:
            _cached_matching(child, pattern, i + 1, out)


def _match_level(level: _Level, tokens: list, psubs: list, qsubs: dict):
    """Go's matchLevel: follow literal tokens, branch into `*`, collect `>`."""
    node = pwc = None
    i = 0
    for token in tokens:
        if level is None:
            return
        fwc = level.fwc
        if fwc is not None:
            # HOT: _add_node inlined, no queue walk without queues (every
            #      match under real.>; with _add_queues: a miss 3.04 -> 2.64 us).
            psubs.extend(fwc.psubs)
            if fwc.qsubs:
                _add_queues(fwc, qsubs)
        pwc = level.pwc
        if pwc is not None:
            _match_level(pwc.next, tokens[i + 1:], psubs, qsubs)
        node = level.nodes.get(token)
        level = node.next if node is not None else None
        i += 1
    if node is not None:
        _add_node(node, psubs, qsubs)
    if pwc is not None:
        _add_node(pwc, psubs, qsubs)


def _add_node(node: _Node, psubs: list, qsubs: dict):
    psubs.extend(node.psubs)
    if node.qsubs:
        _add_queues(node, qsubs)


def _add_queues(node: _Node, qsubs: dict):
    for name, group in node.qsubs.items():
        members = qsubs.get(name)
        if members is None:
            qsubs[name] = list(group)
        else:
            members.extend(group)


def _subject_matches(literal: list, pattern: list) -> bool:
    """Does the literal subject (tokens) match the subscription pattern?"""
    if b"" in literal:
        return False
    for i, token in enumerate(pattern):
        if token == b">":
            return len(literal) > i
        if i >= len(literal) or (token != b"*" and token != literal[i]):
            return False
    return len(literal) == len(pattern)


def subject_is_subset(tokens: list, pattern: list) -> bool:
    """Is everything `tokens` (a subject that may hold wildcards) matches
    also matched by `pattern`?  (Go's subjectIsSubsetMatch.)"""
    for i, token in enumerate(pattern):
        if token == b">":
            return len(tokens) > i
        if i >= len(tokens) or tokens[i] == b">":
            return False
        if token != b"*" and tokens[i] != token:
            return False
    return len(tokens) == len(pattern)


def subject_intersection(a: list, b: list) -> list | None:
    """The tokens of the subjects both patterns match, or None if they
    share none (`*.x` and `events.>` give `events.x`)."""
    out = []
    for i, token in enumerate(a):
        if token == b">":
            return out + b[i:] if i < len(b) else None
        if i >= len(b):
            return None
        other = b[i]
        if other == b">":
            return out + a[i:]
        if token == b"*":
            out.append(other)
        elif other == b"*" or other == token:
            out.append(token)
        else:
            return None
    return out if len(a) == len(b) else None


def _wildcards(tokens: list) -> list:
    return [t for t in tokens if t in (b"*", b">")]


def same_wildcards(source: str, dest: str) -> bool:
    """Can a SubjectTransform map `source` onto `dest`?  Either the same
    wildcards in the same order, or `$N` references to each `*` of the
    source (a JWT import's local_subject, `mapped.$1`)."""
    source_tokens, dest_tokens = source.encode().split(b"."), dest.encode().split(b".")
    references = [t for t in dest_tokens if _reference(t)]
    if references:
        stars = source_tokens.count(b"*")
        return sorted(_reference(t) for t in references) == list(range(1, stars + 1)) and \
            _wildcards(dest_tokens) == [b">"] * source_tokens.count(b">")
    return _wildcards(source_tokens) == _wildcards(dest_tokens)


def _reference(token: bytes) -> int:
    """N for a `$N` token (a reference to the Nth wildcard), else 0."""
    return int(token[1:]) if token[:1] == b"$" and token[1:].isdigit() else 0


class SubjectTransform:
    """Maps subjects under `source` onto `dest`, carrying what the wildcards
    of `source` matched into the wildcards of `dest`, in order
    (`events.>` -> `from_b.events.>` for an import with a prefix), or into
    `$N` tokens, the Nth wildcard's (`m.*` -> `mapped.$1`).  The subject
    mapped may itself hold wildcards if it is a subset of `source`."""

    __slots__ = ("source", "dest")

    def __init__(self, source: bytes, dest: bytes):
        self.source = source.split(b".")
        self.dest = dest.split(b".")

    def apply(self, subject: bytes) -> bytes:
        """Map `subject`, which the caller knows matches `source`, onto `dest`."""
        tokens = subject.split(b".")
        stars, rest = [], b""
        for i, token in enumerate(self.source):
            if token == b"*":
                stars.append(tokens[i])
            elif token == b">":
                rest = b".".join(tokens[i:])
        out, in_order = [], iter(stars)
        for token in self.dest:
            if token == b"*":
                out.append(next(in_order))
            elif token == b">":
                out.append(rest)
            else:
                n = _reference(token)
                out.append(stars[n - 1] if n else token)
        return b".".join(out)

    def inverse(self) -> "SubjectTransform":
        """The transform back from `dest` to `source` (`$N` tokens become
        wildcards, and the source's wildcards refer to them)."""
        dest = [b"*" if _reference(t) else t for t in self.dest]
        if not any(_reference(t) for t in self.dest):
            return SubjectTransform(b".".join(self.dest), b".".join(self.source))
        positions = [_reference(t) for t in self.dest if _reference(t)]
        source, star = [], 0
        for token in self.source:
            if token == b"*":
                star += 1
                source.append(b"$%d" % (positions.index(star) + 1))
            else:
                source.append(token)
        return SubjectTransform(b".".join(dest), b".".join(source))



def is_valid_subject(subject: bytes) -> bool:
    """A subscription subject: non-empty tokens, no whitespace, `>` only last."""
    if not subject or b" " in subject or b"\t" in subject:
        return False
    tokens = subject.split(b".")
    for i, token in enumerate(tokens):
        if not token:
            return False
        if token == b">" and i != len(tokens) - 1:
            return False
    return True


def is_valid_literal_subject(subject: bytes) -> bool:
    """A publish subject: valid, and no `*` or `>` token."""
    if not is_valid_subject(subject):
        return False
    return all(t != b"*" and t != b">" for t in subject.split(b"."))


# ============================================================================
# 4. Connection base
# ============================================================================
#
# What every connection (client now, route later) shares: the socket, the
# outbound buffer, flushing, the ping timer, closing and the byte counters.
#
# Writes are coalesced.  Delivery only appends to `out` (a list of chunks) and
# puts the connection in the server's `pending` set; after each loop turn the
# server flushes every pending connection once (Go's pcd, Redis's before-sleep
# hook).  A flush sends at once while the kernel accepts; only when it pushes
# back does the connection wait for writability.  Memory stays bounded: a
# connection whose buffer passes max_pending, or that makes no progress for
# write_deadline, is a slow consumer and is closed (the publisher and every
# other subscriber are untouched).
#
# TLS changes only the two ends of that pipe (chapter 10): a TLS
# connection is an instance of a subclass whose reads
# decrypt before `process_input` and whose flush encrypts `out`, so plain
# connections run exactly the code they ran before TLS existed.  Go twin:
# the write half of server/client.go (queueOutbound, flushOutbound, the
# pcd).  Entry points: Connection.queue_outbound, flush, close.


class Connection:
    """A socket with buffered output.  Loop thread only.

    accepted -> open (reads, writes) -> closed (once, with a reason)
    """

    __slots__ = (
        "server", "sock", "fd", "cid", "host", "port", "out", "closed",
        "close_reason", "pending_in", "need", "backlog", "backlog_at", "start", "last_activity",
        "pings_out", "write_waiting", "last_write_progress", "trace",
        "in_msgs", "in_bytes", "out_msgs", "out_bytes", "log_prefix",
        "stalled", "stall_seq", "stall_waiters", "tls", "ws", "ping_entry", "waiting",
        "secrets_checked", "rtt", "ping_at",
    )

    kind = "Client"
    tls_label = ""               # "route " in a route's TLS log lines, as Go words them

    def __init__(self, server: "Server", sock: socket.socket, cid: int):
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.cid = cid
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        if isinstance(peer, tuple):
            self.host, self.port = peer[0], peer[1]
        else:
            self.host, self.port = "", 0
        if self.host.startswith("::ffff:") and "." in self.host:
            self.host = self.host[7:]  # an IPv4 client on a dual-stack listener
        self.out = []                # chunks of bytes, joined once per flush
        self.closed = False
        self.close_reason = ""
        self.pending_in = None       # bytearray: an incomplete op waiting for more bytes
        self.need = 0                # bytes pending_in must reach before parsing again
        self.backlog = None          # input past this turn's time (MAX_INPUT_TIME) ...
        self.backlog_at = 0          # ... to be parsed from this index on a later turn
        self.start = time.time()
        self.last_activity = self.start
        self.pings_out, self.rtt, self.ping_at = 0, 0.0, 0.0  # (rtt: of our last PING answered)
        self.write_waiting = False   # registered for EVENT_WRITE
        self.last_write_progress = 0.0
        self.trace = server.trace
        self.in_msgs = self.in_bytes = self.out_msgs = self.out_bytes = 0
        host = "[%s]" % self.host if ":" in self.host else self.host
        self.log_prefix = "%s:%d - cid:%d - " % (host, self.port, cid)
        self.stalled = False         # not read while a connection it fed drains
        self.stall_seq = 0
        self.stall_waiters = None    # publishers stalled on this connection
        self.tls = None              # TLSSession of a TLS connection
        self.ws = None               # WSSession of a WebSocket connection (chapter 11)
        self.ping_entry = None       # the ping timer's heap entry, once armed
        self.waiting = False         # not read while a bcrypt check runs off the loop
        self.secrets_checked = None  # {(given, bcrypt hash): bool} answered for this peer

    # -- logging -------------------------------------------------------------

    def debug(self, fmt: str, *args):
        """Log at [DBG] with this connection's prefix (built only when debug is on)."""
        if self.server.log.isEnabledFor(logging.DEBUG):
            self.server.log.debug(self.log_prefix + fmt, *args)

    def error(self, fmt: str, *args):
        """Log at [ERR] with this connection's prefix."""
        self.server.log.error(self.log_prefix + fmt, *args)

    def trace_in(self, op: str, arg: bytes = b""):
        """Trace an op received, `<<- [OP arg]`; callers check `self.trace` first."""
        self.server.log.log(TRACE, "%s<<- [%s%s]", self.log_prefix, op,
                            (" " + arg.decode("utf-8", "replace")) if arg else "")

    def trace_out(self, text: str):
        """Trace an op sent, `->> [text]`; callers check `self.trace` first."""
        self.server.log.log(TRACE, "%s->> [%s]", self.log_prefix, text)

    def trace_payload(self, payload: bytes):
        """Trace a payload received, Go-quoted and cut at max_traced_msg_len."""
        limit = self.server.options.max_traced_msg_len
        if limit and len(payload) > limit:
            shown = go_quote(payload[:limit])[1:-1] + "..."
        else:
            shown = go_quote(payload)[1:-1]
        self.server.log.log(TRACE, '%s<<- MSG_PAYLOAD: ["%s"]', self.log_prefix, shown)

    # -- output --------------------------------------------------------------

    def queue_outbound(self, data: bytes):
        """Append to the outbound buffer; it is flushed at the end of the turn."""
        self.out.append(data)
        self.server.pending.add(self)

    def send_proto(self, data: bytes, text: str = ""):
        """Queue a protocol line; the trace shows `text`, or the line itself."""
        if self.trace:
            self.trace_out(text or data.decode("utf-8", "replace").rstrip("\r\n"))
        self.queue_outbound(data)

    def send_err(self, text: str):
        """Queue `-ERR 'text'` (traced); the connection stays open (Go's sendErr)."""
        if self.trace:
            self.trace_out("-ERR %s" % text)
        self.queue_outbound(err_proto(text))

    def send_err_and_close(self, text: str, reason: str):
        """Send -ERR 'text', flush what we can, and close (Go's authViolation shape)."""
        self.send_err(text)
        self.close(reason)

    def flush(self):
        """Send as much of `out` as the kernel takes now.  Loop thread only."""
        out = self.out
        if not out or self.closed:
            return
        # HOT: `out` is a list of chunks joined once here; appending chunks is
        #      ~3x cheaper per delivery than growing a bytearray for 1 KiB
        #      messages and ~1.5x for 16 bytes (make bench pubsub1k: 0.50x ->
        #      1.0x of Go 2.9).
        if type(out[0]) is memoryview and len(out[0]) > FLUSH_ALONE_SIZE and len(out) > 1 \
                and not self.flush_rest(out[0]):
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        size = len(data)
        sent = self.send_some(data)
        if sent < 0:
            return
        if sent < size:
            out.append(memoryview(data)[sent:])
            if size - sent > self.server.options.max_pending:
                self.slow_consumer(SLOW_CONSUMER_PENDING_BYTES, size - sent)
                return
            if not self.write_waiting:
                # The write-deadline clock starts when the kernel first pushes back.
                self.last_write_progress = time.monotonic()
                self.write_waiting = True
                self.server.want_write(self, True)
        elif self.write_waiting:
            self.write_waiting = False
            self.server.want_write(self, False)
        # Last, with the unsent bytes back in `out`: a publisher released
        # here may deliver to us at once (a websocket's held frames), behind them.
        if self.stall_waiters and size - sent <= self.server.options.max_pending * 3 // 4:
            self.release_stalled()

    def flush_rest(self, rest: memoryview) -> bool:
        """Send what the kernel left of the last flush (`rest`, out[0]) on
        its own; True if it all went (flush goes on with the rest).  What
        queued behind it is gathered into one bytearray (out[1]) and sent
        after it, not copied with it at every flush (a peer slower than us
        kept tens of MB queued, copied whole every turn); its size known,
        the same slow-consumer and stall rules hold as for a whole flush."""
        out = self.out
        if len(out) > 2:
            if type(out[1]) is bytearray:
                out[1] += b"".join(out[2:])
                del out[2:]
            else:
                out[1:] = [bytearray(b"".join(out[1:]))]
        sent = self.send_some(rest)
        if sent < 0:
            return False
        if sent == len(rest):
            del out[0]
            return True
        out[0] = rest[sent:]
        left = len(rest) - sent + len(out[1])
        if self.stall_waiters and left <= self.server.options.max_pending * 3 // 4:
            self.release_stalled()
        if left > self.server.options.max_pending:
            self.slow_consumer(SLOW_CONSUMER_PENDING_BYTES, left)
        return False

    def send_some(self, data) -> int:
        """Send `data` (MAX_SEND_SIZE at most): bytes taken, -1 if the socket failed (closed)."""
        try:
            sent = self.sock.send(data if len(data) <= MAX_SEND_SIZE else
                                  memoryview(data)[:MAX_SEND_SIZE])
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self.debug("Error flushing: %s", exc)
            self.close(WRITE_ERROR, flush=False)
            return -1
        if sent:
            self.last_write_progress = time.monotonic()
        return sent

    def pending_bytes(self) -> int:
        """Bytes queued for this peer and not yet taken by the kernel."""
        return sum(map(len, self.out))

    def write_ready(self):
        """The selector says the socket is writable: flush what waits."""
        self.flush()

    def slow_consumer(self, reason: str, pending: int):
        """Count and log a slow consumer (`reason`: max pending or write
        deadline; `pending`: the bytes queued), then drop its output and
        close unflushed."""
        server = self.server
        server.slow_consumers += 1
        if reason == SLOW_CONSUMER_PENDING_BYTES:
            server.log.info("%sSlow Consumer Detected: MaxPending of %d Exceeded",
                            self.log_prefix, server.options.max_pending)
        else:
            server.log.info("%sSlow Consumer Detected: WriteDeadline of %s exceeded with %d chunks"
                            " of %d total bytes.", self.log_prefix,
                            format_duration(server.options.write_deadline), len(self.out), pending)
        self.out.clear()
        self.close(reason, flush=False)

    def check_write_deadline(self, now: float):
        """Called by the server's periodic sweep for connections waiting to write."""
        if now - self.last_write_progress > self.server.options.write_deadline and \
                self.pending_bytes():
            self.slow_consumer(SLOW_CONSUMER_WRITE_DEADLINE, self.pending_bytes())

    # -- input ---------------------------------------------------------------

    def read_ready(self):
        """Read what the kernel has (one recv into the server's reused buffer)."""
        server = self.server
        try:
            n = self.sock.recv_into(server.read_buffer, server.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.debug("Error reading from client: %s", exc)
            self.close(READ_ERROR, flush=False)
            return
        if n == 0:
            self.close(CLIENT_CLOSED, flush=False)
            return
        self.process_input(bytes(server.read_view[:n]))

    def process_input(self, data: bytes):
        """Parse what arrived, resuming an op split across reads; behind any
        input put off for a later turn (a socket is not read meanwhile, but
        a websocket read may hold several frames' worth)."""
        if self.backlog is not None:
            self.backlog = self.backlog[self.backlog_at:] + data
            self.backlog_at = 0
            return
        n = len(data)
        pending = self.pending_in
        if pending is not None:
            # Resume an op split across reads.  The pieces grow one buffer
            # (a payload trickled a byte per read costs its bytes, not an
            # object per read) and are parsed once the op is whole.
            have = len(pending) + n
            if have < self.need and not (have == self.need - 1 and data[-1:] != b"\r"):
                pending += data
                return
            # (One byte short, the byte after a payload is here: if it is not
            # CR, parse now so the error is not held back; Go's MSG_END_R
            # fails at once, split or not.)
            # GO-COMPAT: parse (test_framing.py::test_bad_input_gets_the_same_answer_cut_anywhere)
            data = b"".join((pending, data))    # one copy of the last read
            self.pending_in = None
        self.consume(data, 0, n >= FLOOD_READ_SIZE)

    def consume(self, data: bytes, start: int, flood: bool):
        """Parse `data` from `start`, for at most MAX_INPUT_TIME this turn
        (`parse` parks the rest with `defer_input`).  After a flood,
        stall this publisher if its receivers cannot keep up."""
        server = self.server
        if flood and server.pending:
            server.flush_pending()  # so that `pending` shows whom this read feeds
        try:
            self.parse(data, start)
        except ProtocolError as exc:
            self.protocol_error(exc)
            return
        if flood and server.pending and not self.closed:
            self.stall_if_congested()

    def defer_input(self, data: bytes, at: int):
        """This turn's budget is spent: keep `data[at:]` (whole ops) for the
        next turn and read no more from the socket until it is parsed."""
        self.backlog = data
        self.backlog_at = at
        if not self.waiting:        # else await_secret queues it when answered
            self.server.defer_input(self)

    # -- backpressure --------------------------------------------------------

    def stall_if_congested(self):
        """After a flood read: flush its receivers now, and stop reading this
        publisher while one of them stays above 3/4 of max_pending."""
        server = self.server
        receivers = list(server.pending)
        server.flush_pending()
        high_water = server.options.max_pending * 3 // 4
        congested = [c for c in receivers if c is not self and not c.closed
                     and c.pending_bytes() > high_water]
        if not congested:
            return
        self.stalled = True
        self.stall_seq += 1
        server.update_events(self)
        for c in congested:
            if c.stall_waiters is None:
                c.stall_waiters = set()
            c.stall_waiters.add(self)
        seq = self.stall_seq
        server.add_timer(MAX_STALL, lambda: self.end_stall(seq))

    def end_stall(self, seq: int = -1):
        """Read this connection again (its receiver drained, or time is up)."""
        if self.stalled and not self.closed and seq in (-1, self.stall_seq):
            self.stalled = False
            self.continue_input()

    def continue_input(self):
        """A pause ended (a stall, a bcrypt check): unless another still
        holds, parse the input that waited, or else read again."""
        if self.closed or self.stalled or self.waiting:
            return                  # whatever still holds calls this again
        if self.backlog is not None:
            self.server.defer_input(self)
        else:
            self.resume_reading()

    def resume_reading(self):
        """Neither stalled nor backlogged any more: wait for reads again."""
        self.server.update_events(self)

    def release_stalled(self):
        """This connection drained or closed: resume the publishers it held."""
        waiters, self.stall_waiters = self.stall_waiters, None
        for publisher in waiters:
            publisher.end_stall()

    # -- secrets checked off the loop -----------------------------------------

    def secret_equal(self, given, expected: str) -> bool:
        """`_secret_equal` for this peer, where a bcrypt hash is never
        verified on the loop: an answer already had is used, else
        _SecretCheckPending asks the caller to `await_secret`."""
        if not isinstance(given, str) or not is_bcrypt_hash(expected):
            return _secret_equal(given, expected)
        known = (self.secrets_checked or {}).get((given, expected))
        if known is None:
            raise _SecretCheckPending(given, expected)
        return known

    def await_secret(self, pending: "_SecretCheckPending", then):
        """Read and parse nothing more from this peer until the bcrypt check
        is answered off the loop (SecretChecker); then remember the answer,
        call `then()` (which checks again and now gets it), and go on with
        the input that waited."""
        self.waiting = True
        self.server.update_events(self)

        def answered(ok: bool):
            if self.closed:
                return
            if self.secrets_checked is None:
                self.secrets_checked = {}
            self.secrets_checked[(pending.given, pending.expected)] = ok
            self.waiting = False
            try:
                then()
            except ProtocolError as exc:
                self.protocol_error(exc)
                return
            self.continue_input()

        self.server.secret_checker.submit(pending.given, pending.expected, answered)

    def keep_tail(self, data: bytes, start: int, need: int):
        """Park an incomplete op; parse again once `need` bytes are there."""
        self.pending_in = bytearray(memoryview(data)[start:])
        self.need = need

    def protocol_error(self, exc: ProtocolError):
        """A ProtocolError from parsing: send its -ERR if it has one, log its
        message if any, and close with its reason."""
        if exc.err is not None:
            self.send_err(exc.err)
        if str(exc):
            self.error("%s", exc)
        self.close(exc.reason)

    def parse(self, data: bytes, start: int = 0):
        """Process the ops in `data` from `start`; each kind of connection
        supplies its own.  Raises ProtocolError."""
        raise NotImplementedError

    # -- ping timer ----------------------------------------------------------

    def ping_interval(self) -> float:
        """Seconds between this connection's PINGs."""
        return self.server.options.ping_interval

    def pong(self):
        """A PONG: no PING is left unanswered; ours took `rtt` (in /connz)."""
        self.pings_out = 0
        if self.ping_at:
            self.rtt, self.ping_at = time.monotonic() - self.ping_at, 0.0

    def arm_ping_timer(self):
        """Start the ping timer for one interval (Go's setPingTimer);
        `close` cancels it."""
        # close() cancels it: else under connect/disconnect churn every client
        # closed in the last ping_interval is held (tests/soak.py: +1.2 KB RSS
        # per connection churned).  The short auth and TLS timers just fire.
        self.ping_entry = self.server.add_timer(self.ping_interval(), self.ping_timer)

    def ping_timer(self):
        """Go's processPingTimer: PING, or close as stale after ping_max misses."""
        if self.closed:
            return
        opts = self.server.options
        if self.pings_out + 1 > opts.ping_max:
            self.debug("Stale Client Connection - Closing")
            self.server.stale_connections += 1
            self.send_err_and_close(ERR_STALE_CONNECTION, STALE_CONNECTION)
            return
        self.pings_out += 1
        self.ping_at = time.monotonic()
        self.send_proto(PING)
        self.arm_ping_timer()

    # -- close ---------------------------------------------------------------

    def close(self, reason: str, flush: bool = True):
        """Close once: flush what we can, unregister, drop subscriptions."""
        if self.closed:
            return
        if flush and self.out:
            self.flush()
            if self.closed:
                return
        self.closed = True
        self.close_reason = reason
        server = self.server
        if self.stall_waiters:
            self.release_stalled()
        server.pending.discard(self)
        server.unregister(self)
        if self.ping_entry is not None:
            server.cancel_timer(self.ping_entry)
        try:
            # Drain unread input first so the close is a FIN, not a RST that
            # could destroy an -ERR the peer has not read yet.
            self.sock.setblocking(False)
            for _ in range(4):
                if not self.sock.recv(65536):
                    break
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed_cleanup()
        self.log_closed(reason)

    def log_closed(self, reason: str):
        """Log the close at [DBG] (a route logs it at [INF])."""
        self.debug("%s connection closed: %s", self.kind, reason)

    def closed_cleanup(self):
        """Called once by `close` after the socket is closed, for what a
        subclass releases (subscriptions, a route's place in the
        cluster); nothing here."""
        pass

    def tls_peer_identities(self) -> list:
        """The user names verify_and_map tries for this peer, from its
        verified certificate, in Go's order (see `cert_identities`); [] for
        a plain connection or one without a certificate."""
        tls = self.tls
        if tls is None or tls.state != TLS_OPEN:
            return []
        return cert_identities(tls.sslobj.getpeercert() or {})


# ============================================================================
# 5. Client
# ============================================================================
#
# A client connection: the INFO/CONNECT handshake, PUB/HPUB/SUB/UNSUB, and
# delivery of MSG/HMSG to subscribers, with queue groups, echo, headers,
# no_responders, auto-unsubscribe and the verbose/pedantic modes.
#
# The read loop (`parse`) has two paths.  The reference path splits a control
# line into op and arguments and dispatches through `OPS` (process_op ->
# op_pub -> process_pub -> deliver_msg).  The hot path takes a PUB line as
# clients write it, `PUB <subject> [reply] <size>\r\n`: the size is the
# line's last token, and `PUB <subject>` is looked up among the lines the
# client sent before (pub_lines), each vetted once, which map to the
# subject's delivery *plan*, kept with the sublist's cached result: for each
# subscriber the ready-made `MSG <subject> <sid> ` prefix, followed by the
# publisher's own `<size>\r\n<payload>\r\n` bytes, sliced once from the
# read buffer.  So a message costs a few slices and dict lookups whatever
# its subject and size.  When the sublist drops a result (a subscription
# changed, or its cache made room) it retires the plan, and the line is
# looked up again.  Anything unusual (odd spacing, permissions, echo off
# on a subject the client listens to, auto-unsubscribe, imports) takes
# the reference path; both write the same bytes (tests/test_hot_path.py,
# and the Go differential fuzzer).
#
# In this chapter, the reference path comes first: the Client class with
# process_op and the ops, CONNECT, SUB/UNSUB, process_pub -> deliver_msg ->
# deliver_to; then, fenced, the hot path: Client.parse (the entry point a
# read calls), pub_lookup, and the DeliveryPlan and deliver_run it uses.
# Go's exact reading of odd CONNECT and INFO JSON (read_go_json) is in
# chapter 9, and the parse error's log line (op_name_error) in chapter 15.
#
# Go twins: server/client.go (processConnect, processPub, processSub,
# processUnsub, deliverMsg, processMsgResults) and server/auth.go.


def _pick_start(group: list) -> int:
    """Where to start looking for a queue member: at random, a route's
    member counting as many as its weight."""
    if all(s.client.kind == "Client" for s in group):
        return int(random.random() * len(group))
    weights = [s.client.weight(s) if s.client.kind == "Router" else 1 for s in group]
    r = random.random() * sum(weights)
    for index, weight in enumerate(weights):
        r -= weight
        if r < 0:
            return index
    return len(group) - 1


class Client(Connection):
    """A client connection.

    accepted -> INFO -> CONNECT (before the auth timeout, if auth is on)
             -> (PUB | HPUB | SUB | UNSUB | PING | PONG)* -> closed
    """

    __slots__ = (
        "verbose", "pedantic", "echo", "headers", "no_responders", "protocol",
        "name", "lang", "version", "user", "connect_received", "awaiting_auth",
        "subject_err_sent",
        "first_pong_sent", "subs", "fast_pub", "fast_pub_plain", "pub_lines", "header_lines",
        "perms",
        "account", "credentials", "tls_identities", "nonce", "max_payload", "max_subs",
        "expiry_entry",
    )

    kind = "Client"

    def __init__(self, server: "Server", sock: socket.socket, cid: int):
        super().__init__(server, sock, cid)
        # Until CONNECT says otherwise a client is verbose and pedantic (Go's defaultOpts).
        self.verbose = True
        self.pedantic = True
        self.echo = True
        self.headers = False
        self.no_responders = False
        self.protocol = 0
        self.name = self.lang = self.version = self.user = ""
        self.connect_received = False
        self.awaiting_auth = self.auth_options().auth_required
        self.subject_err_sent = False  # pedantic -ERR of the PUB awaiting its payload
        self.first_pong_sent = False   # async INFOs go to clients past their first PONG
        self.subs = {}               # sid -> Subscription
        self.perms = None            # ClientPermissions of the user, if restricted
        self.credentials = None      # user, pass, auth_token of CONNECT (for reloads)
        self.tls_identities = ()     # verify_and_map's names from the certificate (handshake)
        self.nonce = b""             # what an nkey user signs (in our INFO when one exists)
        self.max_payload = -1        # a user JWT's limits below the server's, -1 if none
        self.max_subs = -1
        self.expiry_entry = None     # the timer of a JWT login's end
        self.account = server.global_account
        self.account.client_count += 1
        self.account.total_connections += 1
        # May PUB lines take the hot path in `parse`?  Not while verbose,
        # pedantic or traced (as a client is until its CONNECT).  `pub_lines`
        # maps the `PUB <subject>` lines it has sent to the subjects' plans,
        # each found free to publish on plainly (pub_lookup); emptied
        # whenever that may change (refresh_pub_path); `header_lines` maps
        # `HPUB <subject> <hdr>` lines to (plan, hdr, the hdr token).
        self.fast_pub = False
        self.fast_pub_plain = False  # no permissions or services to check (publishes_plainly)
        self.pub_lines = {}
        self.header_lines = {}

    # -- the reference path: one control line at a time ---------------------

    def partial_line(self, data: bytes, i: int):
        """The buffer ends inside a control line: refuse it now if no more
        bytes can make it valid (frame_partial), else keep it and wait."""
        if self.refused_before_connect(data[i:i + 1]):
            return
        kept = frame_partial(data, i, self.server.options.max_control_line)
        self.keep_tail(kept, 0, len(kept) + 1)

    # GO-COMPAT: parse (test_proto.py::test_unknown_op_before_connect_sends_err_and_closes)
    def refused_before_connect(self, first: bytes) -> bool:
        """Go's check on the first byte of each op while auth is awaited:
        only CONNECT may come (`CONNX` is then a parse error), unless a
        no_auth_user logs the client in (telnet: no CONNECT at all; its
        auth timer ends).  True if the client was refused (and closed)."""
        if not self.awaiting_auth or first in (b"C", b"c"):
            return False
        if self.auth_options().no_auth_user:
            return not self.authorize_connect({})
        self.auth_violation()
        return True

    def process_op(self, data: bytes, i: int, nl: int) -> int:
        """The cold path: one control line, framed by frame_line, to its
        op's handler.  Returns the next index, or -1 when the op needs more
        bytes or the connection closed."""
        if self.refused_before_connect(data[i:i + 1]):
            return -1
        framed = frame_line(data, i, nl, self.server.options.max_control_line)
        if framed is None:
            self.keep_tail(data, i, len(data) - i + 1)
            return -1
        op, arg, line, nl = framed
        if op == b"+OK":
            return nl + 1
        next_i = self.OPS[op](self, data, i, nl, line, arg)
        return -1 if self.closed else next_i

    # -- client ops (each returns the index after its bytes, or -1) ----------

    def op_ping(self, data, i, nl, line, arg) -> int:
        """PING: answer PONG (Go's processPing).  After the first PONG, a
        client of protocol 1 whose INFO predates a change of the cluster's
        connect_urls gets the INFO again (it missed the async one)."""
        if self.trace:
            self.trace_in("PING")
        self.send_proto(PONG)
        if not self.first_pong_sent and self.connect_received:
            self.first_pong_sent = True
            server = self.server
            if self.protocol >= 1 and server.cluster.urls_changed_at >= self.start:
                self.send_proto(server.client_info(self), "INFO")
        return nl + 1

    def op_pong(self, data, i, nl, line, arg) -> int:
        """PONG: no PING is left unanswered (Go's processPong)."""
        if self.trace:
            self.trace_in("PONG")
        self.pong()
        return nl + 1

    def op_err(self, data, i, nl, line, arg) -> int:
        """-ERR from a client: log it and close with a parse error (Go's processErr)."""
        if self.trace:
            self.trace_in("-ERR", arg)
        self.error("Client Error %s", arg.decode("utf-8", "replace"))
        self.close(PARSE_ERROR)
        return -1

    def op_info(self, data, i, nl, line, arg) -> int:
        """INFO from a client: ignored, but a ProtocolError unless it is JSON
        with INFO's field types."""
        # Clients may send INFO; it is read and ignored (Go's processInfo).
        if self.trace:
            self.trace_in("INFO", arg)
        try:
            read_go_json(arg, _INFO_FIELDS, "Info")
        except ValueError as exc:
            raise ProtocolError(str(exc))
        return nl + 1

    def op_connect(self, data, i, nl, line, arg) -> int:
        """CONNECT: traced with its secrets redacted, then `process_connect`."""
        if self.trace:
            self.trace_in("CONNECT", _SECRETS_IN_CONNECT.sub(rb'\1[REDACTED]"', arg))
        self.process_connect(arg)
        return nl + 1

    def op_sub(self, data, i, nl, line, arg) -> int:
        """SUB <subject> [queue] <sid>: `process_sub`."""
        if self.trace:
            self.trace_in("SUB", arg)
        subject, queue, sid = parse_sub_args(arg)
        self.last_activity = time.time()
        self.process_sub(subject, queue, sid)
        return nl + 1

    def op_unsub(self, data, i, nl, line, arg) -> int:
        """UNSUB <sid> [max]: `process_unsub`."""
        if self.trace:
            self.trace_in("UNSUB", arg)
        sid, maximum = parse_unsub_args(arg)
        self.last_activity = time.time()
        self.process_unsub(sid, maximum)
        return nl + 1

    def op_pub(self, data, i, nl, line, arg) -> int:
        """PUB <subject> [reply] <size>: `process_pub`, whose payload follows the line."""
        if self.trace:
            self.trace_in("PUB", arg)
        subject, reply, size, size_token = parse_pub_args(arg)
        return self.process_pub(data, i, nl, line, subject, reply, -1, size, size_token)

    def op_hpub(self, data, i, nl, line, arg) -> int:
        """HPUB <subject> [reply] <header size> <total size>: as PUB, for a
        client whose CONNECT asked for headers; a ProtocolError otherwise."""
        if self.trace:
            self.trace_in("HPUB", arg)
        if not self.headers:
            raise ProtocolError("message headers not supported")
        subject, reply, hdr, size, size_field = parse_hpub_args(arg)
        return self.process_pub(data, i, nl, line, subject, reply, hdr, size, size_field)

    # The handler of each of CLIENT_OPS.
    OPS = {
        b"PUB": op_pub, b"HPUB": op_hpub, b"SUB": op_sub, b"UNSUB": op_unsub,
        b"CONNECT": op_connect, b"INFO": op_info, b"PING": op_ping, b"PONG": op_pong,
        b"-ERR": op_err,
    }

    # -- CONNECT and auth ------------------------------------------------------

    def process_connect(self, arg: bytes):
        """Apply the CONNECT fields sent (only those), then check auth."""
        try:
            fields = read_go_json(arg, _CONNECT_FIELDS, "ClientOpts")
        except ValueError as exc:
            raise ProtocolError(str(exc))
        if fields is None:
            fields = {}             # Go's json.Unmarshal of null leaves the defaults
        for key in ("verbose", "pedantic", "echo", "no_responders", "name", "lang",
                    "version", "protocol"):
            if fields.get(key) is not None:
                setattr(self, key, fields[key])
        if fields.get("headers") is not None:
            self.headers = bool(fields["headers"])
        self.update_log_prefix()
        if self.connect_received and self.subs:
            # A second CONNECT starts the session over: nats-server 2.11+
            # drops the subscriptions of the first (2.9 kept them).
            for sub in list(self.subs.values()):
                self.unsubscribe(sub)
        self.connect_received = True
        self.refresh_pub_path()
        try:
            if not self.authorize_connect(fields):
                return
        except _SecretCheckPending as pending:
            # Do it all again once the bcrypt answer is in (the same fields
            # give the same state; nothing else was parsed meanwhile).
            self.await_secret(pending, lambda: self.process_connect(arg))
            return
        if self.protocol < 0 or self.protocol > PROTO:
            self.error("%s", ERR_BAD_CLIENT_PROTOCOL)
            self.send_err_and_close(ERR_BAD_CLIENT_PROTOCOL, BAD_CLIENT_PROTOCOL_VERSION)
            return
        if self.no_responders and not self.headers:
            self.send_err_and_close(ERR_NO_RESPONDERS_REQUIRES_HEADERS,
                                    NO_RESPONDERS_REQUIRES_HEADERS)
            return
        if self.verbose:
            self.send_ok()

    def authorize_connect(self, fields: dict) -> bool:
        """Check credentials when auth is on (Go's isClientAuthorized); every
        CONNECT is checked, not just the first.  The credentials are kept:
        a config reload checks them again."""
        # Go unmarshals each CONNECT into the options the last one left: a
        # field not sent (or null) keeps its value, so a second CONNECT
        # without credentials logs in with the first one's.
        credentials = dict(self.credentials or {})
        for key in ("user", "pass", "auth_token", "nkey", "sig", "jwt"):
            if fields.get(key):
                credentials[key] = fields[key]
            elif key in fields and fields[key] is not None:
                credentials.pop(key, None)      # sent empty: cleared
        self.credentials = credentials or None
        return self.check_auth()

    def check_auth(self) -> bool:
        """Log in with the kept credentials (with verify_and_map, as the user
        the certificate names), or close with an auth violation."""
        opts = self.auth_options()
        if opts.trusted_keys:
            return jwt_client_login(self)
        user = (self.credentials or {}).get("user")
        if maps_certificates(opts):
            user = certificate_user(self, opts) or user  # Go names the mapped user
        found = authenticate(opts, self.credentials or {}, self.tls_identities,
                             self.secret_equal, self.nonce)
        if found is None:
            self.auth_violation(user if isinstance(user, str) else "")
            return False
        self.user, perms, account = found
        self.awaiting_auth = False
        self.perms = ClientPermissions(perms) if perms is not None else None
        self.bind_account(self.server.accounts[account or GLOBAL_ACCOUNT])
        self.refresh_pub_path()
        self.update_log_prefix()
        self.rtt = time.time() - self.start     # until a PING is answered: accept to login (Go)
        self.server.system_client.client_event(self, "CONNECT")
        return True

    def connection_type(self) -> str:
        """What a user JWT's allowed_connection_types calls this client."""
        return "WEBSOCKET" if self.ws is not None else "STANDARD"

    def auth_options(self) -> Options:
        """The options this client logs in with: the server's (a websocket
        client's may have the websocket block's own, chapter 11)."""
        return self.server.options

    def reload_config(self, old: Options):
        """The server reloaded its config: log in again with the same
        credentials, under the new permissions (Go's reloadAuthorization).
        A client of the old single user whose password changed is closed
        without an -ERR, as Go does (Go closes every single-user client on
        each reload; a client whose credentials still pass stays here); so
        is one whose user (named in CONNECT, or by its certificate) is gone
        from a users list (Go's clientHasMovedToDifferentAccount).  A bcrypt
        check this needs runs off the loop, and the whole check again after."""
        try:
            check_reloaded_auth(self, old)      # chapter 9
        except _SecretCheckPending as pending:
            self.await_secret(pending, lambda: self.reload_config(old))

    def bind_account(self, account: Account):
        """Log in to `account`: subscriptions made before move with the client."""
        if account is self.account:
            return
        subs = list(self.subs.values())
        for sub in subs:
            self.unsubscribe(sub)
        self.account.client_count -= 1
        self.account = account
        account.client_count += 1
        account.total_connections += 1
        for sub in subs:
            self.add_subscription(sub)

    def update_log_prefix(self):
        """Go 2.15's prefix: `ip:port - cid:N - "name" - "$G/user:alice" - `."""
        host = "[%s]" % self.host if ":" in self.host else self.host
        prefix = "%s:%d - cid:%d - " % (host, self.port, self.cid)
        if self.name:
            prefix += go_quote(self.name.encode()) + " - "
        if self.user and not self.awaiting_auth:
            given = self.credentials or {}      # Go's getAuthUserLabel
            label = "nkey" if given.get("nkey") else "user" if given.get("user") or \
                not given.get("jwt") else "jwt"
            prefix += go_quote(("%s/%s:%s" % (self.account.label, label, self.user)).encode()) \
                + " - "
        self.log_prefix = prefix

    def auth_violation(self, user: str = ""):
        """Log an authentication error (naming `user`, if given), send -ERR and
        close (Go's authViolation)."""
        if user:
            self.error('authentication error - User "%s"', user)
        else:
            self.error("authentication error")
        self.send_err_and_close(ERR_AUTH_VIOLATION, AUTHENTICATION_VIOLATION)

    def auth_timeout(self):
        """Timer callback: a client still not logged in is sent -ERR and
        closed (Go's authTimeout)."""
        if self.closed or not self.awaiting_auth:
            return
        self.debug("Authentication Timeout")
        self.send_err_and_close(ERR_AUTH_TIMEOUT, AUTHENTICATION_TIMEOUT)

    def send_ok(self):
        """Queue +OK, for a verbose client (Go's sendOK)."""
        if self.trace:
            self.trace_out("OK")
        self.queue_outbound(OK)

    # -- SUB and UNSUB ---------------------------------------------------------

    def process_sub(self, subject: bytes, queue: bytes | None, sid: bytes):
        """Go's processSub, in its order: permissions, the subscription
        limit, then (for a new sid only) the subject's validity; a SUB
        that reuses a sid changes nothing and is +OK'd."""
        if self.perms is not None and not self.perms.can_subscribe(subject, queue):
            self.sub_permission_violation(subject, queue, sid)
            return
        max_subs = self.server.options.max_subscriptions
        if (max_subs and len(self.subs) >= max_subs) or \
                (self.max_subs != -1 and len(self.subs) >= self.max_subs):
            self.error("maximum subscriptions exceeded")
            self.send_err(ERR_MAX_SUBSCRIPTIONS)
            return
        if sid not in self.subs:
            if not is_valid_subject(subject) or (queue is not None and not _valid_queue(queue)):
                self.send_err(ERR_INVALID_SUBJECT)
                return
            self.subscribe(subject, queue, sid)
        if self.verbose:
            self.send_ok()

    def subscribe(self, subject: bytes, queue: bytes | None, sid: bytes) -> Subscription:
        """A new subscription in the client's account."""
        sub = Subscription(self, subject, queue, sid)
        self.add_subscription(sub)
        return sub

    def add_subscription(self, sub: Subscription):
        """Insert `sub` in the account, shadowed where imports cover it."""
        self.subs[sub.sid] = sub
        self.account.sublist.insert(sub)
        self.server.interest_changed(self.account, sub, 1)
        if self.account.stream_imports:
            self.add_shadows(sub)

    def add_shadows(self, sub: Subscription):
        """A shadow subscription in each exporter whose stream `sub` can see
        (Go's addShadowSubscriptions)."""
        tokens = sub.subject.split(b".")
        shadows = []
        for imp in self.account.stream_imports:
            overlap = subject_intersection(tokens, imp.local_tokens)
            if overlap is None:
                continue
            subject = b".".join(overlap)
            if imp.to_source is not None:
                subject = imp.to_source.apply(subject)
            self.debug("Creating import subscription on %s from account %s",
                       go_quote(subject), go_quote(imp.exporter.name.encode()))
            shadow = Subscription(self, subject, sub.queue, sub.sid)
            shadow.parent, shadow.im = sub, imp.to_local
            imp.exporter.sublist.insert(shadow)
            self.server.interest_changed(imp.exporter, shadow, 1)
            shadows.append((imp.exporter, shadow))
        sub.shadows = shadows or None

    def remove_subscription(self, sub: Subscription):
        """Take `sub` and its shadows out of the sublists (and the routes' view)."""
        self.account.sublist.remove(sub)
        self.server.interest_changed(self.account, sub, -1)
        for account, shadow in sub.shadows or ():
            account.sublist.remove(shadow)
            self.server.interest_changed(account, shadow, -1)

    def sublists_of(self, sub: Subscription) -> list:
        """The sublists `sub` sits in: its account's, and each exporter's that
        holds a shadow of it."""
        return [self.account.sublist] + [account.sublist for account, _ in sub.shadows or ()]

    def process_unsub(self, sid: bytes, maximum: int):
        """Go's processUnsub: with a `maximum` not yet reached, unsubscribe
        after that many messages; else at once.  An unknown sid changes
        nothing; +OK if verbose."""
        sub = self.subs.get(sid)
        if sub is not None:
            sublists = self.sublists_of(sub)
            for sublist in sublists:
                sublist.settle()  # make sub.delivered exact
            if maximum > 0 and sub.delivered < maximum:
                sub.max = maximum
                # The plans cached for its subjects assumed no limit.
                for sublist in sublists:
                    sublist.clear_cache()
            else:
                self.unsubscribe(sub)
        if self.verbose:
            self.send_ok()

    def unsubscribe(self, sub: Subscription):
        """Remove `sub` from `subs` and the sublists, if it is still the
        subscription of its sid (Go's unsubscribe); traced as DELSUB."""
        if self.subs.get(sub.sid) is sub:
            del self.subs[sub.sid]
            self.remove_subscription(sub)
            if self.trace:
                self.trace_delsub(sub)

    def trace_delsub(self, sub: Subscription):
        """Trace a subscription's removal, `<-> [DELSUB sid]`, as Go does."""
        self.server.log.log(TRACE, "%s<-> [DELSUB %s]", self.log_prefix,
                            sub.sid.decode("utf-8", "replace"))

    def closed_cleanup(self):
        """After close: leave the account, take every subscription out
        of the sublists, and pass the client to `remove_client` (for
        /connz's closed connections); a JWT login's end is no longer due."""
        self.account.client_count -= 1
        if self.expiry_entry is not None:
            self.server.cancel_timer(self.expiry_entry)
        for sub in self.subs.values():
            # Removing a sub settles every cached plan that counted for it.
            self.remove_subscription(sub)
            if self.trace:
                self.trace_delsub(sub)
        self.server.remove_client(self)  # /connz still shows the subs it had
        self.subs.clear()

    # -- PUB and delivery ------------------------------------------------------

    def process_pub(self, data: bytes, i: int, nl: int, line: bytes, subject: bytes,
                    reply: bytes | None, hdr: int, size: int, size_field: bytes) -> int:
        """PUB or HPUB whose payload starts after `nl` (Go's processPub);
        `size_field` is the raw size token(s) for the MSG/HMSG lines."""
        max_payload = self.server.options.max_payload
        if self.max_payload != -1 and self.max_payload < max_payload:
            max_payload = self.max_payload       # a JWT's limit (the hot path is off)
        if size > max_payload:
            self.error("maximum payload exceeded: %d vs %d", size, max_payload)
            self.send_err_and_close(ERR_MAX_PAYLOAD, MAX_PAYLOAD_EXCEEDED)
            return -1
        # A pedantic client hears of a bad subject as soon as Go has read the
        # line, before the payload.  When the payload is not all in that
        # read, Go parses the line a second time (clonePubArg) and says it
        # again.  We parse the line again on every read until the payload
        # is in, so subject_err_sent keeps it to those two.
        # GO-COMPAT: clonePubArg (fuzz/test_fuzz_client_vs_go.py::test_later_payload_gets_subject_error_twice)
        valid = True
        if self.pedantic and not is_valid_literal_subject(subject):
            valid = False
            if not self.subject_err_sent:
                self.send_err(ERR_INVALID_PUBLISH_SUBJECT)
        stop = payload_end(data, nl, size)
        if stop < 0:
            if not valid and not self.subject_err_sent:
                self.send_err(ERR_INVALID_PUBLISH_SUBJECT)
                self.subject_err_sent = True
            self.keep_tail(data, i, nl + 3 + size - i)
            return -1
        self.subject_err_sent = False
        payload = data[nl + 1:stop]
        if self.trace:
            self.trace_payload(payload)
        allowed = self.perms is None or self.perms.can_publish(subject)
        if self.verbose and allowed:
            self.send_ok()
        self.in_msgs += 1
        self.in_bytes += size
        self.last_activity = time.time()
        if not allowed:
            self.pub_permission_violation(subject)
            return stop + 2
        msg = Message(subject, reply, hdr if hdr > 0 else -1, size, payload, size_field)
        account = self.account
        if hdr > 0 and payload.find(b"Nats-Trace-", 0, hdr) >= 0:
            trace = MsgTrace.start(self, msg)
            if trace is not None:
                self.deliver_msg(account.sublist.match(subject), msg, trace=trace)
                trace.send(self)
                return stop + 2
            if trace_only(header_values(msg)):
                return stop + 2         # a trace-only message whose trace failed
        route = account.service_route(subject) if account.routes_services or \
            subject[:5] == b"$SYS." else None
        if route is not None:
            routed = self.route_service(route, msg)
            self.deliver_msg(account.sublist.match(subject), msg, routed)
            return stop + 2
        self.deliver_msg(account.sublist.match(subject), msg)
        return stop + 2

    def pub_permission_violation(self, subject: bytes):
        """Tell the client (-ERR) and the log that it may not publish to
        `subject`; the connection stays open (Go's pubPermissionViolation)."""
        self.send_err("Permissions Violation for Publish to %s" % go_quote(subject))
        self.error("Publish Violation - Subject %s", go_quote(subject))

    def sub_permission_violation(self, subject: bytes, queue: bytes | None, sid: bytes):
        """Tell the client (-ERR) and the log that it may not subscribe to
        `subject` (with `queue`); the connection stays open (Go's
        subPermissionViolation)."""
        if queue is None:
            self.send_err("Permissions Violation for Subscription to %s" % go_quote(subject))
            self.error("Subscription Violation - Subject %s, SID %s", go_quote(subject),
                       sid.decode("utf-8", "replace"))
        else:
            self.send_err("Permissions Violation for Subscription to %s using queue %s"
                          % (go_quote(subject), go_quote(queue)))
            self.error("Subscription Violation - Subject %s, Queue: %s, SID %s",
                       go_quote(subject), go_quote(queue), sid.decode("utf-8", "replace"))

    def route_service(self, route, msg: "Message") -> bool:
        """Send a request on to the exporting account, or a response back to
        the requester's account (Go's processServiceImport).  Returns True
        if anyone got it."""
        if isinstance(route, ResponseImport):
            account = self.account
            if route.singleton or route.expires <= time.monotonic():
                account.responses.pop(msg.subject, None)
            if route.expires <= time.monotonic():
                return False
            reply = route.reply
            routed = msg.routed(reply, msg.reply)
            return self.deliver_msg(route.importer.sublist.match(reply), routed, True,
                                    route.importer)
        exporter = route.exporter
        subject = route.to_export.apply(msg.subject)
        reply = None
        if msg.reply is not None:
            reply = exporter.new_response(self.account, msg.reply, route.export)
        info = {"acc": self.account.name}
        if route.share and self.user:
            info["user"] = self.user
        routed = msg.routed(subject, reply).with_header(
            REQUEST_INFO_HEADER, json.dumps(info, separators=(",", ":")).encode())
        # Nobody in the exporter: the caller's deliver_msg sends the
        # requester its no-responders status, on its own reply subject.
        return self.deliver_msg(exporter.sublist.match(subject), routed, False, exporter)

    def deliver_msg(self, result: SublistResult, msg: "Message", delivered: bool = False,
                    account: Account | None = None, trace: "MsgTrace | None" = None) -> bool:
        """Deliver what this client published (deliver_result), then, if no
        one could get a request, the no_responders status.  `account` is the
        one `result` came from (the publisher's unless an import moved the
        message).  Returns True if anyone got it (or if `delivered` says
        someone already did)."""
        if deliver_result(result, msg, self, account or self.account, trace):
            delivered = True
        if trace is not None and trace.only:
            return delivered
        if not delivered and msg.reply is not None and self.no_responders:
            self.send_no_responders(msg.reply, msg.subject)
        return delivered

    def send_no_responders(self, reply: bytes, subject: bytes):
        """A request on `subject` nobody can answer: a 503 status to the
        requester's own plain subscription on the reply subject, if it has
        one (not a queue one: Go's subForReply)."""
        for sub in self.account.sublist.match(reply).psubs:
            if sub.client is self:
                header = NO_RESPONDERS_HEADER % subject
                status = Message(reply, None, len(header), len(header), header)
                self.queue_outbound(status.proto_for(sub.sid, True))
                return

    # -- the read loop, and its hot path (HOT) ---------------------------------
    #
    # `parse` is what a read calls.  A PUB or HPUB line as clients write it
    # is taken here, with the sublist cache's delivery plan; every other
    # line goes to process_op above.  The rule the hot path keeps: the
    # bytes it writes are the reference path's (tests/test_hot_path.py,
    # tests/test_framing.py and the Go differential fuzzer take both).

    def parse(self, data: bytes, start: int = 0):
        """Process the whole ops in `data` from `start`, up to this turn's
        budget (the rest is deferred); park an incomplete tail for later.

        Loop thread only.  Raises ProtocolError; the caller closes."""
        if self.closed:                 # (closed by what the read's early flush ran: a KICK)
            return
        if self.waiting:                # a bcrypt check of its CONNECT is out
            self.defer_input(data, start)
            return
        server = self.server
        n = len(data)
        i = start
        # Fairness: the clock is read every INPUT_CHECK_BYTES, and after
        # every slow op (check_at = 0); past the turn's time, the rest waits.
        monotonic = time.monotonic
        deadline = monotonic() + MAX_INPUT_TIME
        check_at = start + INPUT_CHECK_BYTES
        find = data.find
        startswith = data.startswith
        lines = self.pub_lines
        lines_get = lines.get
        header_lines_get = self.header_lines.get
        cold_get = self.cold_lines_get()
        sizes_get = server.pub_line_sizes.get
        max_line = server.options.max_control_line
        pending = server.pending
        rand = random.random
        EMPTY, PLAIN, QUEUES, STALE = PLAN_EMPTY, PLAN_PLAIN, PLAN_QUEUES, PLAN_STALE
        msgs = nbytes = 0
        run_plan = None
        last_size = -1
        streak, run_min = 0, SUBJECT_RUN_MIN    # PUBs in a row on run_plan's (past the first)
        window = 0                  # bytes deliver_subject_run looks at next
        # HOT: the plans delivered to, whose receivers are marked pending
        #      (and active) once, after the loop, not per message.
        touched = set()
        touch = touched.add
        now = time.time()  # last_activity of publisher and receivers (Go's c.last)
        batch_at = start if self.fast_pub and n - start >= PUB_BATCH_WINDOW else n
        batch_retry = PUB_BATCH_RETRY_MIN
        batch_width = PUB_BATCH_WINDOW
        try:
            while i < n:
                if i >= check_at:
                    if self.waiting or monotonic() > deadline:
                        self.defer_input(data, i)
                        break
                    check_at = i + INPUT_CHECK_BYTES
                if i >= batch_at:
                    # HOT: a window of many subjects' records at once
                    #      (deliver_pub_batch), then one the way below (TCP: 4
                    #      publishers 1.45M -> 1.65M msgs/s, pub->sub 0.98M -> 1.13M).
                    began = monotonic()
                    k, got, at = deliver_pub_batch(self, data, i, batch_width, touch)
                    # (Not again at once if a PUB ended it early: LFs in payloads,
                    # say; the window twice as wide after one it took the most of
                    # in less than PUB_BATCH_GROW_TIME, narrow after one it did not.)
                    took_most = 2 * (at - i) >= min(batch_width, n - i)
                    if not took_most:
                        batch_width = PUB_BATCH_WINDOW
                    elif monotonic() - began < PUB_BATCH_GROW_TIME:
                        batch_width = min(2 * batch_width, PUB_BATCH_WINDOW_MAX)
                    if k >= PUB_BATCH_RECORDS and (took_most or not startswith(b"PUB ", at)):
                        batch_at, batch_retry = at + 1, PUB_BATCH_RETRY_MIN
                    else:
                        batch_at = at + (batch_retry if k >= 0 else PUB_BATCH_RETRY_MAX)
                        batch_retry = min(2 * batch_retry, PUB_BATCH_RETRY_MAX)
                    if k > 0:
                        msgs, nbytes, i, run_plan = msgs + k, nbytes + got, at, None
                        continue
                nl = find(b"\n", i)
                if nl < 0:
                    self.partial_line(data, i)
                    break
                # HOT: a line this client has sent before but for its size,
                #      `PUB <subject> <size>\r\n`: `PUB <subject>` finds the
                #      subject's delivery plan in pub_lines, `<size>\r` its
                #      value in pub_line_sizes; two dict lookups, no split
                #      (64 subjects, 16..256-byte payloads, in process:
                #      publish-only 0.90 -> 0.66 us/msg, to one wildcard sub
                #      1.33 -> 1.03; then rpartition, not rfind with bounds and
                #      two slices: 0.69 -> 0.62 on 3.11, 0.84 -> 0.76 on 3.12).
                #      Anything else, a reply, headers, a first sight,
                #      goes to pub_lookup, and what it does not take to
                #      process_op (the reference path).
                key, _, token = data[i:nl].rpartition(b" ")
                sp = i + len(key)
                if key:
                    plan = lines_get(key)
                    if plan is None:
                        plan = cold_get(key)    # a PlanShape (see pub_lookup)
                    size = sizes_get(token, -1)
                elif token == b"PING\r" and self.first_pong_sent and not self.trace:
                    # HOT: a PING past the first (clients send one per flush,
                    #      the load generator every 32 KiB): its PONG without
                    #      process_op (in process 2.6 -> 0.4 us).
                    self.queue_outbound(PONG)
                    i = nl + 1
                    run_plan = None
                    continue
                else:
                    plan, size = None, -1
                if plan is None or size < 0:
                    reply = None
                    if plan is None and size >= 0 and (r := key.find(b" ", 4)) > 0:
                        if r == 4:
                            # HOT: `HPUB <subject> [reply] <hdr> <total>`, a
                            #      line sent before but for its reply and total:
                            #      the header size goes where a reply would,
                            #      after pub_lookup's checks (in process 3.1 ->
                            #      1.6 us/msg; with replies 3.5 -> 2.2).
                            line = header_lines_get(key)
                            if line is None and 5 < (r := key.find(b" ", 5)) < \
                                    (sp2 := key.rfind(b" ")):
                                # (The reply checked as a PUB's below; a CR in
                                # it goes out as the reference path sends it.)
                                reply = key[r + 1:sp2]
                                if reply and 32 not in reply and 9 not in key and \
                                        nl - i <= max_line + 5:
                                    line = header_lines_get(key[:r] + key[sp2:])
                            if line is not None:
                                hplan, hdr, token = line
                                if hplan.kind != STALE and size >= hdr and \
                                        find(b"Nats-Trace-", nl + 1, nl + 1 + hdr) < 0:
                                    plan = hplan
                                    reply = token if reply is None else reply + b" " + token
                            if plan is None:
                                reply = None
                        else:
                            # HOT: `PUB <subject> <reply> <size>` on a subject
                            #      whose line it knows, with pub_lookup's checks
                            #      of the reply (reply 2.1 -> 1.55 us/msg in process).
                            plan = lines_get(key[:r])
                            reply = key[r + 1:]
                            if plan is None or plan.kind == STALE or not reply or 32 in reply \
                                    or 9 in key or 13 in key or nl - i > max_line + 5:
                                plan = reply = None
                    if reply is not None:
                        reply_sp = reply + b" "
                        tail_at = sp + 1
                    else:
                        plan, reply_sp, size, tail_at = self.pub_lookup(data, i, nl, sp, size)
                        if plan is None:
                            run_plan = None
                            i = self.process_op(data, i, nl)
                            if i < 0:
                                break
                            check_at = 0
                            cold_get = self.cold_lines_get()    # (a CONNECT may change it)
                            continue
                else:
                    reply_sp = None
                    tail_at = sp + 1
                stop = nl + 1 + size
                if stop + 2 > n:
                    check_payload_end(data, stop)
                    self.keep_tail(data, i, stop + 2 - i)
                    break
                if data[stop] != 13 or data[stop + 1] != 10:
                    raise payload_end_error(data, stop)
                kind = plan.kind
                if kind == PLAIN:
                    if plan is run_plan:
                        if size == last_size and reply_sp is None and plan.runnable and \
                                startswith(data[i:nl + 1], stop + 2):
                            # HOT (best case): the same PUB line again: take the
                            #      whole run of repeats at once (deliver_run; make
                            #      bench same-line pub-only 0.28x -> 2.4x of Go 2.9).
                            k = deliver_run(data, i, nl, size, tail_at - i, None, plan)
                            msgs += k
                            nbytes += k * size
                            i += k * (nl + 3 - i + size)
                            touch(plan)
                            continue
                        # HOT: after SUBJECT_RUN_MIN PUBs in a row on a subject,
                        #      the rest of the run at once (deliver_subject_run;
                        #      in process, one subject 0.94 -> 0.47 us/msg; runs
                        #      of 128 0.96 -> 0.60; of 8 and 32 within noise).
                        streak += 1
                        if streak >= run_min and reply_sp is None and plan.runnable and startswith(
                                data[i:tail_at], stop + 2) and tail_at - i + 5 <= max_line:
                            if not window:
                                window = run_min * (stop + 2 - i)
                            k, got, at = deliver_subject_run(data, i, tail_at, window, plan,
                                                             server)
                            # (Twice as wide while runs fill it, half after one
                            # ended, anew after a run of less than two.)
                            window = min(2 * window, SUBJECT_RUN_WINDOW_MAX) if k < 0 \
                                else window // 2 if k else 0
                            if k:
                                k = abs(k)
                                msgs += k
                                nbytes += got
                                i = at
                                continue
                    else:
                        streak = 0
                    run_plan = plan
                    last_size = size
                    # HOT: one slice holds "<size>\r\n<payload>\r\n" for every
                    #      receiver; prefixes are ready-made per subscriber, and
                    #      counts are kept per plan (settle()), not per delivery
                    #      (make bench fan-out 16: 0.57x -> 0.75x of Go 2.9).  No
                    #      reply: deliver() written out (pub->sub 1.05-1.08x on 3.11).
                    if reply_sp is None:
                        tail = data[tail_at:stop + 2]
                        plan.msgs += 1
                        plan.bytes += size
                        for append, prefix in plan.plain_out:
                            append(prefix)
                            append(tail)
                    else:
                        plan.deliver(data[tail_at:stop + 2], size, reply_sp)
                    touch(plan)
                elif kind == EMPTY:
                    if reply_sp is not None:
                        if self.no_responders:
                            self.send_no_responders(reply_sp[:-1], plan.subject)
                    elif (size == last_size and plan is run_plan
                          and startswith(data[i:nl + 1], stop + 2)):
                        # HOT (best case): a run of repeats nobody listens to.
                        k = deliver_run(data, i, nl, size, tail_at - i, None, plan)
                        msgs += k
                        nbytes += k * size
                        i += k * (nl + 3 - i + size)
                        continue
                    run_plan = plan
                    last_size = size
                elif kind == QUEUES:
                    run_plan = None
                    tail = data[tail_at:stop + 2]
                    if plan.plain_out:
                        plan.deliver(tail, size, reply_sp)
                        touch(plan)
                    for group in plan.queues:
                        append, prefix, sub, c = group[int(rand() * len(group))]
                        append(prefix)
                        if reply_sp is not None:
                            append(reply_sp)
                        append(tail)
                        sub.delivered += 1
                        c.out_msgs += 1
                        c.out_bytes += size
                        c.last_activity = now
                        pending.add(c)
                elif kind == PLAN_FIRST:   # a PlanShape: `PUB <subject> <size>` (pub_lookup)
                    run_plan = None
                    plan.deliver(data[i + 4:sp], data[tail_at:stop + 2], size)
                    touch(plan)
                elif kind == STALE:
                    # The sublist dropped the plan (a subscription changed, or
                    # its cache made room): look the line up again.
                    del lines[data[i:sp]]
                    continue
                else:
                    run_plan = None
                    reply = reply_sp[:-1] if reply_sp is not None else None
                    subject = plan.subject
                    # (An HPUB's size field is "<hdr> <total>".)
                    hdr = int(data[tail_at:sp]) if tail_at <= sp else -1
                    self.deliver_msg(self.account.sublist.match(subject),
                                     Message(subject, reply, hdr, size, data[nl + 1:stop],
                                             data[tail_at:nl - 1]))
                    check_at = 0
                msgs += 1
                nbytes += size
                i = stop + 2
        finally:
            mark_receivers(touched, pending, now)
            if msgs:                    # (also when a bad op ends the read)
                self.in_msgs += msgs
                self.in_bytes += nbytes
                self.last_activity = now
        # (No sublist match is counted for a line pub_lines answers: Go's
        # per-connection results answer the same PUBs, and /subsz counts
        # only what reaches the sublist, pub_lookup's.)

    def pub_lookup(self, data: bytes, i: int, nl: int, sp: int, size: int = -1) -> tuple:
        """The hot path's take on a line pub_lines does not settle at once
        (the line from `i` to the LF at `nl`, `sp` its last space, `size`
        its last token's value if parse has it, else -1): (the
        subject's delivery plan, b"reply " or None, the payload size, where
        the MSG line's size field starts), or a None plan when the reference
        path must take the line.

        The hot path takes `PUB <subject> [reply] <size>\\r\\n` and `HPUB
        <subject> [reply] <hdr size> <total size>\\r\\n` exactly as a client
        writes them, the subject and reply free of tabs and CR, from a
        client that is neither verbose, pedantic nor traced, within
        max_control_line and max_payload, and on a subject it may publish
        to plainly (publishes_plainly: permissions, service imports); with
        echo off, not on a subject it listens to itself.  Then the plan is
        one the reference path would follow exactly.  A plain `PUB
        <subject>` line is remembered in pub_lines, an `HPUB <subject>
        <hdr>` line (its reply left out, someone listening) in header_lines, both
        emptied by refresh_pub_path whenever any of this may change
        (CONNECT, reload); the first PUB
        on a subject gets the plan's PlanShape instead (PLAN_FIRST), and
        leaves line and shape on the cached result (`cold`) for parse to find
        in cold_lines once the cache lets the subject go (cold_lines_get)."""
        none = (None, None, -1, 0)
        server = self.server
        if (not self.fast_pub or sp <= i or data[nl - 1] != 13
                or nl - i > server.options.max_control_line + 5):
            return none
        if size < 0:
            token = data[sp + 1:nl]
            size = server.pub_line_sizes.get(token)
            if size is None:
                size = server.pub_line_size(token)
            if size < 0:
                return none
        if data.startswith(b"PUB ", i):
            headers = False
            tail_at = sp + 1
            key = data[i + 4:sp]
        elif data.startswith(b"HPUB ", i) and self.headers:
            headers = True
            sp2 = data.rfind(b" ", i + 5, sp)
            if sp2 <= i + 5:
                return none
            hdr = server.pub_size(data[sp2 + 1:sp])
            if hdr < 1 or size < hdr:
                return none     # a header block of 0 bytes: a plain message (reference path)
            if data.find(b"Nats-Trace-", nl + 1, nl + 1 + hdr) >= 0:
                return none     # message tracing: the reference path
            tail_at = sp2 + 1
            key = data[i + 5:sp2]
        else:
            return none
        # HOT: a byte by its value (9 TAB, 13 CR, 32 space) is one memchr;
        #      `b"\t" in key` is ~10x slower (here: 1.31 -> 0.80 us).
        if 9 in key or 13 in key:
            return none
        if 32 in key:
            cut = key.find(b" ")
            subject, reply = key[:cut], key[cut + 1:]
            if not reply or 32 in reply:
                return none
            reply_sp = reply + b" "
        else:
            subject, reply_sp = key, None
        if not subject:
            return none
        lines = self.pub_lines
        line_key = b"PUB " + subject
        plan = None if headers else lines.get(line_key)
        if plan is None or plan.kind == PLAN_STALE:
            if (not self.fast_pub_plain or subject[:5] == b"$SYS.") and \
                    not self.publishes_plainly(subject):
                return none
            sublist = self.account.sublist
            result = sublist.match(subject)
            plan = result.header_plan if headers else result.plan
            if not plan:
                shape = shape_for(sublist, result, subject, headers)
                # HOT: a subject's first two PUBs go out from its shape
                #      (PlanShape) and a plan is built for a third (10k 4.68 ->
                #      3.84 us/msg for a plan at the second; 10k subjects
                #      through 1,024 cache entries seldom come a third time).
                if plan is not SEEN_TWICE and reply_sp is None and not headers and \
                        shape.plan_kind in (PLAN_EMPTY, PLAN_PLAIN) and \
                        (self.echo or self not in shape.members):
                    result.plan = SEEN_ONCE if plan is None else SEEN_TWICE
                    # HOT: once the cache lets the subject go, parse finds
                    #      its line's shape in cold_lines, no match (10k
                    #      subjects through 1,024 cache entries, one real.>
                    #      subscriber: 3.5 -> 1.45 us/msg; 100k 3.5 -> 1.4).
                    if plan is None and \
                            len(subject) + 10 <= server.options.max_control_line:
                        result.cold = (line_key, shape)
                    return shape, None, size, tail_at
                plan = DeliveryPlan(result, subject, sublist.name, headers, shape)
                if headers:
                    result.header_plan = plan
                else:
                    result.plan = plan
            if not self.echo and self in plan.members:
                return none     # its own subscriptions are skipped: deliver_msg
            # A remembered line is taken whatever its size token, so only a
            # subject short enough for any size (9 digits) within
            # max_control_line is remembered.
            if not headers and len(subject) + 10 <= server.options.max_control_line:
                if len(lines) >= PUB_LINES_MAX:
                    lines.clear()
                lines[line_key] = plan
            elif headers and plan.kind in (PLAN_PLAIN, PLAN_QUEUES):
                # `HPUB <subject> <hdr>`, without the reply if any.  (As for
                # PUB lines: any total of 9 digits keeps it within the
                # limit.  Nobody listening: pub_lookup each time.)
                hdr_token = data[sp2 + 1:sp]
                line_key = b"HPUB %s %s" % (subject, hdr_token)
                if len(line_key) + 6 <= server.options.max_control_line:
                    lines = self.header_lines
                    if len(lines) >= PUB_LINES_MAX:
                        lines.clear()
                    lines[line_key] = (plan, hdr, hdr_token)
        else:
            sublist = self.account.sublist
            sublist.matches += 1            # (counted as the hot path counts a hit)
            sublist.cache_hits += 1
        return plan, reply_sp, size, tail_at

    def cold_lines_get(self):
        """How parse finds a line's PlanShape in the account's cold_lines:
        for a client that may take any subject's line and its own messages."""
        if self.fast_pub and self.fast_pub_plain and self.echo:
            return self.account.sublist.cold_lines.get
        return NO_LINES.get

    def refresh_pub_path(self):
        """Decide again whether PUBs may take the hot path, and forget the
        lines remembered (CONNECT, a new login, a reload)."""
        self.fast_pub = not (self.verbose or self.pedantic or self.trace
                             or self.max_payload != -1)
        self.fast_pub_plain = self.perms is None and not self.account.routes_services
        self.pub_lines.clear()
        self.header_lines.clear()

    def publishes_plainly(self, subject: bytes) -> bool:
        """May a PUB to `subject` skip permissions and service imports?"""
        perms = self.perms
        if perms is not None and (perms.responses is not None
                                  or not perms.can_publish(subject)):
            return False
        account = self.account
        if (account.routes_services or subject[:5] == b"$SYS.") and \
                account.service_route(subject) is not None:
            return False
        return not (account.exports_services and subject.startswith(b"_R_."))

    # GO-COMPAT: parse (test_hostile.py::test_endless_unknown_op_is_refused)


def deliver_result(result: SublistResult, msg: "Message", publisher: "Client | None",
                   account: Account, trace: "MsgTrace | None" = None) -> bool:
    """Deliver to every plain sub and one member per queue group, and once
    to each route with interest, naming the groups it was picked for (Go's
    processMsgResults); `publisher` None is the server itself.  A traced
    message (`trace`) has each delivery noted, and none made if it is
    trace-only.  Returns True if anyone got it."""
    delivered = False
    routes = None       # route or leaf -> [a plain subscription of its peer, [queue subs]]
    deliver = deliver_to if trace is None else trace.deliver_to
    for sub in result.psubs:
        if sub.client.kind != "Client":       # a route's or a leaf node's interest
            if routes is None:
                routes = {}
            if sub.client not in routes:
                routes[sub.client] = [sub, []]
        elif deliver(sub, msg, publisher):
            delivered = True
    for group in result.qsubs:
        start = _pick_start(group)
        leaf = None     # a member across a leaf node: only if no other takes it (Go's)
        for k in range(len(group)):
            sub = group[(start + k) % len(group)]
            kind = sub.client.kind
            if kind == "Leaf":
                leaf = leaf or sub
                continue
            if kind == "Router":
                if routes is None:
                    routes = {}
                routes.setdefault(sub.client, [None, []])[1].append(sub)
                delivered = True
                break
            if deliver(sub, msg, publisher):
                delivered = True
                break
        else:
            if leaf is not None:
                if routes is None:
                    routes = {}
                routes.setdefault(leaf.client, [None, []])[1].append(leaf)
                delivered = True
    if routes:
        for route, (plain, queue_subs) in routes.items():
            sent = msg if trace is None else trace.forward(route, msg)
            if sent is not None:
                route.send_msg(account, sent, queue_subs, plain)
        delivered = True
    return delivered


def deliver_to(sub: Subscription, msg: "Message", publisher: "Client | None") -> bool:
    """Queue one MSG/HMSG for `sub` (Go's deliverMsg): the reference path's
    delivery, for a client's publish and for a message from a route
    (`publisher` None).  Returns False if the subscriber may not have it."""
    c = sub.client
    if c.closed or (c is publisher and not publisher.echo):
        return False
    if sub.im is not None:
        msg = msg.routed(sub.im.apply(msg.subject), msg.reply)
    if c.perms is not None:
        if not c.perms.can_receive(msg.subject, sub.queue):
            return False
        if c.perms.responses is not None and msg.reply is not None:
            c.perms.note_request(msg.reply)
    sub = sub.parent or sub
    sub.delivered += 1
    if sub.max:
        if sub.delivered > sub.max:
            return False
        if sub.delivered == sub.max:
            c.unsubscribe(sub)
    proto = msg.proto_for(sub.sid, c.headers)
    if c.trace:
        c.trace_out(proto[:proto.index(b"\r\n")].decode("utf-8", "replace"))
    c.out.append(proto)
    c.out_msgs += 1
    c.out_bytes += msg.size
    c.last_activity = time.time()
    c.server.pending.add(c)
    return True


class Message:
    """A message on its way to subscribers (the cold path's representation).

    `size_field` is the size part of the MSG line exactly as the publisher
    wrote it (Go copies the PUB line's size bytes: `PUB foo 02` gives
    `MSG foo 1 02`); for a message with headers it is `<hdr> <total>`."""

    __slots__ = ("subject", "reply", "hdr", "size", "payload", "size_field")

    def __init__(self, subject: bytes, reply: bytes | None, hdr: int, size: int,
                 payload: bytes, size_field: bytes | None = None):
        self.subject = subject
        self.reply = reply
        self.hdr = hdr            # header bytes at the start of payload, -1 for none
        self.size = size
        self.payload = payload
        if size_field is None:
            size_field = b"%d" % size if hdr < 0 else b"%d %d" % (hdr, size)
        self.size_field = size_field

    def routed(self, subject: bytes, reply: bytes | None) -> "Message":
        """The same message under another subject and reply (imports)."""
        return Message(subject, reply, self.hdr, self.size, self.payload, self.size_field)

    def with_header(self, name: bytes, value: bytes) -> "Message":
        """This message with header `name` set (added, or its value replaced)."""
        line = name + b": " + value + b"\r\n"
        if self.hdr < 0:
            block, body = b"NATS/1.0\r\n" + line + b"\r\n", self.payload
        else:
            lines = self.payload[:self.hdr].split(b"\r\n")
            kept = [lines[0]] + [h for h in lines[1:] if h and
                                 h.split(b":", 1)[0].strip().lower() != name.lower()]
            block, body = b"\r\n".join(kept) + b"\r\n" + line + b"\r\n", \
                self.payload[self.hdr:]
        return Message(self.subject, self.reply, len(block), len(block) + len(body),
                       block + body)

    def proto_for(self, sid: bytes, headers: bool) -> bytes:
        """MSG or HMSG bytes for subscription `sid`; headers are stripped for
        a client that did not announce header support."""
        reply = b"" if self.reply is None else self.reply + b" "
        if self.hdr < 0:
            return b"MSG %s %s %s%s\r\n%s\r\n" % (self.subject, sid, reply, self.size_field,
                                                  self.payload)
        if headers:
            return b"HMSG %s %s %s%s\r\n%s\r\n" % (self.subject, sid, reply, self.size_field,
                                                   self.payload)
        body = self.payload[self.hdr:]
        return b"MSG %s %s %s%d\r\n%s\r\n" % (self.subject, sid, reply, len(body), body)


# -- delivery plans and runs (HOT) -------------------------------------------
#
# What the hot path delivers with: per published subject, a DeliveryPlan of
# ready-made prefixes, one per subscriber; and for a run of one line
# repeated, deliver_run.  The rule: the bytes each subscriber gets are the
# ones deliver_to would give it (tests/test_hot_path.py, test_framing.py).

# DeliveryPlan kinds: nobody to deliver to; plain subs only; with queue
# groups; anything the general deliver_msg must handle (auto-unsubscribe);
# retired (the sublist dropped its result: look the subject up again); a
# PlanShape's, for a subject's first PUBs.  Until its plan is made a result's
# slot says how many went out from the shape (falsy: `if plan:` still means
# a plan).
PLAN_EMPTY, PLAN_PLAIN, PLAN_QUEUES, PLAN_SLOW, PLAN_STALE, PLAN_FIRST = 0, 1, 2, 3, 4, 5
SEEN_ONCE, SEEN_TWICE = False, 0
NO_LINES: dict = {}     # (never written)


class PlanShape:
    """What a DeliveryPlan holds that does not depend on its subject: for
    each receiver the bytes around the subject in its MSG line (`MSG `,
    ` <sid> `), the counts' owners, the receivers, the plan's kind.  The
    subjects under one `real.>` subscriber share one (shape_for), and a
    plan is made from it with two concatenations per receiver; a shape
    built through a deny list (`can_receive` asks the subject) is not
    `shared`.  A subject's first PUB goes out from the shape (`deliver`):
    most of 100,000 subjects leave the sublist cache before their second."""

    __slots__ = ("plain", "plain_parts", "queue_parts", "members", "clients", "runnable",
                 "plan_kind", "shared")

    kind = PLAN_FIRST     # (parse's view; a plan made from it gets `plan_kind`)

    def __init__(self, result: SublistResult, subject: bytes, account: bytes = b"$G",
                 headers: bool = False):
        # A header plan (an HPUB's) writes HMSG; a receiver that did not ask
        # for headers needs them stripped, which deliver_msg does.
        head = b"HMSG " if headers else b"MSG "
        plain, plain_parts, clients = [], [], set()
        fast = shared = True
        for s in result.psubs:
            c = s.client
            if headers and not c.headers:
                fast = False
            after = b" "
            if c.kind == "Router":
                if c.legacy:
                    fast = False        # a 0.7-dialect peer: MSG with its sid (send_msg)
                if c in clients:
                    continue            # a peer gets one RMSG per message
                before = c.msg_head(headers, account)     # (chapter 12)
            elif c.kind == "Leaf":      # (chapter 13) one LMSG per message, no account
                if c in clients:
                    continue
                if c.deny_exports is not None or not c.headers:
                    fast = False        # send_msg filters or strips
                before = b"HMSG " if headers else b"LMSG "
            else:
                perms = c.perms
                if perms is not None:
                    if perms.sub_deny is not None:
                        shared = False
                        if not perms.can_receive(subject, None):
                            continue    # its deny list names this subject
                    if perms.responses is not None:
                        fast = False
                before = head
                after = b" " + s.sid + b" "
            owner = s.parent or s
            if owner.max or s.im is not None:
                fast = False            # auto-unsubscribe, or an import renames the subject
            plain.append((owner, c))
            plain_parts.append((c.out.append, before, after))
            clients.add(c)
        queue_parts = []
        members = set(clients) if result.qsubs else clients
        for group in result.qsubs:
            kept = []
            for s in group:
                c = s.client
                if headers and not c.headers:
                    fast = False
                if c.kind != "Client":
                    fast = False        # members behind a route or leaf: in deliver_msg
                elif c.perms is not None:
                    perms = c.perms
                    if perms.sub_deny is not None:
                        shared = False
                        if not perms.can_receive(subject, s.queue):
                            continue
                    if perms.responses is not None:
                        fast = False
                owner = s.parent or s
                if owner.max or s.im is not None:
                    fast = False
                kept.append((c.out.append, head, b" " + s.sid + b" ", owner, c))
                members.add(c)
            if kept:
                queue_parts.append(kept)
        self.plain = plain
        self.plain_parts = plain_parts
        self.queue_parts = queue_parts
        self.clients = clients
        self.members = members
        self.shared = shared
        # Runs may be delivered subscriber by subscriber only when that keeps
        # each connection's message order: one subscription per connection.
        self.runnable = fast and not queue_parts and len(clients) == len(plain)
        # One int the hot path branches on.
        if not plain and not queue_parts:
            self.plan_kind = PLAN_EMPTY
        elif not fast:
            self.plan_kind = PLAN_SLOW
        else:
            self.plan_kind = PLAN_QUEUES if queue_parts else PLAN_PLAIN

    def deliver(self, subject: bytes, tail: bytes, size: int):
        """DeliveryPlan.deliver's bytes (no reply) for a PLAN_PLAIN shape,
        counted at once: no plan to settle."""
        for append, before, after in self.plain_parts:
            append(before + subject + after)
            append(tail)
        for owner, c in self.plain:
            owner.delivered += 1
            c.out_msgs += 1
            c.out_bytes += size


class DeliveryPlan:
    """Ready-made per-subscriber prefixes for one published subject.

    Made from its PlanShape on use; dropped with its SublistResult.  The
    hot path counts messages per plan, not per delivery; `settle()` moves
    those counts onto the subscriptions and clients, and the sublist calls
    it whenever it drops the result (so no count is ever lost).
    """

    __slots__ = ("subject", "plain", "plain_out", "prefixes", "queues", "members", "clients",
                 "runnable", "kind", "msgs", "bytes")

    def __init__(self, result: SublistResult, subject: bytes, account: bytes = b"$G",
                 headers: bool = False, shape: PlanShape | None = None):
        if shape is None:
            shape = PlanShape(result, subject, account, headers)
        self.subject = subject
        # HOT: loops, not comprehensions (a call each before 3.12); no list
        #      without queue groups (one object fewer per cached subject).
        self.plain_out = plain_out = []
        for append, before, after in shape.plain_parts:
            plain_out.append((append, before + subject + after))
        self.queues = queues = [] if shape.queue_parts else ()
        for group in shape.queue_parts:
            kept = []
            for append, before, after, owner, c in group:
                kept.append((append, before + subject + after, owner, c))
            queues.append(kept)
        # (deliver_pub_batch: each plain receiver's prefix, or each member's
        # of a queue group with no plain receiver beside it)
        self.prefixes = tuple(member[1] for member in queues[0]) \
            if len(queues) == 1 and not plain_out else tuple(p for _, p in plain_out)
        self.plain = shape.plain
        self.clients = shape.clients
        self.members = shape.members
        self.runnable = shape.runnable
        self.kind = shape.plan_kind
        self.msgs = 0             # messages delivered to every plain sub, not yet settled
        self.bytes = 0            # their payload bytes

    def deliver(self, tail: bytes, size: int, reply_sp: bytes | None):
        """One message to every plain subscriber: its ready-made prefix,
        the reply and a space (if any), then `tail`, the publisher's own
        `<size>\r\n<payload>\r\n` bytes (the same for every receiver, so
        sliced once).  Counted per plan (settle)."""
        self.msgs += 1
        self.bytes += size
        if reply_sp is None:
            for append, prefix in self.plain_out:
                append(prefix)
                append(tail)
        else:
            for append, prefix in self.plain_out:
                append(prefix)
                append(reply_sp)
                append(tail)

    def retire(self):
        """The sublist dropped this plan's result (a subscription changed, or
        the cache made room): whoever still holds the plan must not use it.
        Its receivers are let go (a client's pub_lines may keep the plan a
        while); `clients` stays, for a read that touched the plan before.
        Settles first."""
        if self.msgs:
            self.settle()
        self.kind = PLAN_STALE
        self.plain = self.plain_out = self.prefixes = self.queues = ()
        self.members = frozenset()

    def settle(self):
        """Move the hot path's message and byte counts onto the plain
        subscriptions and their clients, and start counting again from zero."""
        msgs, nbytes = self.msgs, self.bytes
        if msgs:
            self.msgs = self.bytes = 0
            for sub, client in self.plain:
                sub.delivered += msgs
                client.out_msgs += msgs
                client.out_bytes += nbytes


def shape_for(sublist: Sublist, result: SublistResult, subject: bytes,
              headers: bool = False) -> PlanShape:
    """The PlanShape for `subject` (its SublistResult `result`), that of a
    subject with the same subscriptions while the sublist's genid stays."""
    # HOT: shared, not built per subject (a plan 1.11 -> 0.72 us; 10k
    #      subjects under one real.> 6.90 -> 6.27 us/msg).
    shapes = sublist.plan_shapes
    if sublist.plan_shapes_genid != sublist.genid or len(shapes) >= SUBLIST_CACHE_MAX:
        shapes.clear()
        sublist.plan_shapes_genid = sublist.genid
    key = (headers, *result.psubs, *map(tuple, result.qsubs)) if result.qsubs else \
        (headers, *result.psubs)
    shape = shapes.get(key)
    if shape is None:
        shape = PlanShape(result, subject, sublist.name, headers)
        if shape.shared:
            shapes[key] = shape
    return shape


def deliver_run(data: bytes, i: int, nl: int, size: int, tail_at: int, reply_sp: bytes | None,
                plan: DeliveryPlan) -> int:
    """Deliver a run of whole records that repeat the PUB (or RMSG) line at `i`.

    A publisher in a loop sends the same line (`PUB foo 16\r\n`) with
    payloads of that size, so its records have one length and sit at
    fixed strides.  One strided slice per byte of the line, and per byte
    of the CRLF closing each payload, proves at C speed how many records
    in a row are well formed.  Each subscriber then gets the run's
    bodies (payload and CRLF) joined with its own MSG line.  Returns the
    number of records taken (at least 1; the record at `i` is whole).
    `tail_at` is the size's offset in the line; `reply_sp` the reply and a
    space, or None."""
    line = data[i:nl + 1]
    head = len(line)
    stride = head + size + 2
    k = (len(data) - i) // stride
    end = i + k * stride
    # HOT: count well-formed records column by column (strided slices).
    for col, expected in enumerate(line + CR_LF):
        offset = col if col < head else col + size
        column = data[i + offset:end:stride]
        good = len(column) - len(column.lstrip(bytes((expected,))))
        if good < k:
            k = good
            end = i + k * stride
    if k < 1:
        raise ProtocolError("", ERR_UNKNOWN_PROTOCOL)  # the first record's CRLF is wrong
    if plan.plain_out:
        bodies = [data[p:p + size + 2] for p in range(i + head, end, stride)]
        size_line = data[i + tail_at:nl + 1]
        reply = reply_sp or b""
        for append, prefix in plan.plain_out:
            msg_line = prefix + reply + size_line
            append(msg_line)
            append(msg_line.join(bodies))
        plan.msgs += k
        plan.bytes += k * size
    return k


def deliver_subject_run(data: bytes, i: int, tail_at: int, window: int,
                        plan: DeliveryPlan, server) -> tuple:
    """Deliver a run of whole records on the subject of the PUB line at
    `i` (`PUB <subject> ` ends at `tail_at`), sizes free, in the next
    `window` bytes: (records taken, negative if the run reaches the
    window's end; their payload bytes; the index after them).

    Split at every CRLF and `PUB <subject> `, the window from the first
    record's size on gives pieces that must be `<size>\r\n<payload>`; a
    piece's length fixes the one size it can hold (server.run_token): it
    is a record exactly when it starts with that size, checked for all
    pieces at C speed (a payload holding CRLF `PUB <subject> ` makes a
    piece too short for the size it starts with, and ends the run there).
    The last piece may be cut short, or run past the run: never taken.
    Subscribers get their MSG prefix joined with the pieces."""
    head = data[i:tail_at]
    span = data[tail_at:i + window]
    # HOT: the separator's CRLF ends each payload (no bytes.endswith per
    #      piece: in process, one subject 0.70 -> 0.56 us/msg).
    pieces = span.split(CR_LF + head)
    del pieces[-1]              # cut short (or past the run)
    whole = len(pieces)
    if whole < 2:
        return 0, 0, i
    lengths = list(map(len, pieces))
    tokens = list(map(server.run_tokens.get, lengths))
    if None in tokens:
        token_for = server.run_token
        tokens = [token or token_for(length) for token, length in zip(tokens, lengths)]
    # The run ends at the first piece without a size (past max_payload), or
    # not starting with it (map stops at k).
    k = tokens.index(None) if None in tokens else whole
    starts = list(map(bytes.startswith, pieces[:k], tokens))
    if False in starts:
        k = starts.index(False)
    if k < whole:
        if k < 2:
            return 0, 0, i
        del pieces[k:], tokens[k:], lengths[k:]
    taken = sum(lengths)
    nbytes = taken - sum(map(len, tokens))
    for append, prefix in plan.plain_out:
        append(prefix)
        append((CR_LF + prefix).join(pieces))
        append(CR_LF)
    plan.msgs += k
    plan.bytes += nbytes
    # HOT: the run reaches the window's end only if its records fill it
    #      (else the window grew to 256 KiB for runs that had ended: in
    #      process, runs of 32 1.9 -> 1.1 us/msg, with parse's halving).
    taken += k * (len(head) + 2)
    reached = k == whole and taken * 4 >= 3 * (len(span) + len(head))
    return -k if reached else k, nbytes, i + taken


def deliver_pub_batch(client, data: bytes, i: int, width: int, touch) -> tuple:
    """Deliver the whole `PUB <subject> <size>` records whose lines
    client.pub_lines knows in the `width` bytes from `i`, those with a
    reply on such subjects (pub_batch_replies), and answer the PINGs
    between them (past the client's first PONG): (records taken,
    their payload bytes, the index after them); none unless the first two
    are such (or one has a reply); -1 when its records are too few (large
    payloads) or, without replies, share one plan but a queue group's (the
    runs' way, which takes no replies): parse tries again next read.

    Split at every LF, the window gives pieces that alternate a line and a
    payload with its CR, while no payload holds an LF.  A line is `PUB
    <subject> <size>\r` exactly when everything before its last space is a
    line pub_lines knows and the rest a size token pub_line_lens knows
    (digits and CR, within max_payload); the piece after it is its payload
    and CR exactly when it is as long as that size says and ends in CR.
    Records are taken up to the first that fails a check, or whose plan is
    neither EMPTY nor PLAIN with the receivers of the other PLAIN ones
    (parse takes that one); when all are QUEUES, one queue group alone,
    deliver_queue_batch takes them.  Each receiver gets one chunk, its MSG
    prefix and size line before each payload, and is counted at once (no
    plan to settle).  The publisher gets one PONG per PING taken, after
    the batch's records; when it receives some of them itself (its PONG
    belongs between them) the batch ends at the first PING, as it does
    before its first PONG (op_ping's)."""
    lines_get = client.pub_lines.get
    server = client.server
    window = data[i:i + width]
    pieces = window.split(b"\n")
    whole = m = (len(pieces) - 1) >> 1
    if m < PUB_BATCH_RECORDS:
        return -1, 0, i
    lines = pieces[0:2 * m:2]
    pings = ()                  # the records PINGs come before (answered below)
    if b"PING\r" in lines:
        j = lines.index(b"PING\r")
        if client.first_pong_sent:
            # HOT: PINGs (a client's flushes; the load generator's every 32 KiB)
            #      are taken out of the pieces, so that the records after them
            #      alternate again, and answered with the records taken.  Past a
            #      PING the parity flips: a `PING\r` where a payload goes is one.
            pings, gone, p = [j], [2 * j], 2 * j
            try:
                while True:
                    p = pieces.index(b"PING\r", p + 1, len(pieces) - 1)
                    if (p - len(gone)) % 2 == 0:
                        pings.append((p - len(gone)) >> 1)
                        gone.append(p)
            except ValueError:
                pass
            if len(gone) < 16:
                for p in reversed(gone):
                    del pieces[p]
            else:               # (many: one copy, not a shift of the rest per PING)
                keep = bytearray(b"\1") * len(pieces)
                for p in gone:
                    keep[p] = 0
                pieces = list(itertools.compress(pieces, keep))
            whole = m = (len(pieces) - 1) >> 1
            lines = pieces[0:2 * m:2]
        else:                   # (the first PONG goes the way of op_ping)
            m = j
            del lines[m:]
    payloads = pieces[1:2 * m:2]
    parts = list(map(bytes.rpartition, lines, itertools.repeat(b" ")))
    plans = list(map(lines_get, map(_FIRST, parts)))
    lens = list(map(len, payloads))
    k = m
    expected = list(map(server.pub_line_lens.get, map(_THIRD, parts)))
    if lens != expected:
        k = list(map(operator.eq, lens, expected)).index(False)
    # HOT: countOf the CRs, not bytes(...).count(13): 6.2 -> 2.4 us a window.
    if operator.countOf(map(_LAST, payloads if k == m else payloads[:k]), 13) < k:
        k = list(map(bytes.endswith, payloads, itertools.repeat(b"\r"))).index(False)
    if k < m:
        del plans[k:], parts[k:], payloads[k:], lens[k:]
    distinct = set(plans)
    tails = None
    if None in distinct:
        plans, tails = pub_batch_replies(plans, parts, lines, lines_get,
                                         server.options.max_control_line)
        k = len(plans)
        del parts[k:], payloads[k:], lens[k:]
        distinct = set(plans)
    if len(distinct) < 2 and tails is None and not (plans and plans[0].kind == PLAN_QUEUES):
        return -1 if len(plans) >= PUB_BATCH_RECORDS else 0, 0, i   # (a queue group has no run)
    # HOT: the plans are told apart at C speed when all are PLAIN with one
    #      set of receivers, or all EMPTY (64 subjects, one window: ~60 each).
    # (Not `runnable`, a connection holding two of the receivers' subscriptions
    # would get one chunk per subscription, not each message's MSGs together.)
    kinds = set(map(_KIND, distinct))
    receivers = group = None
    if kinds == _PLAIN_ONLY and len(set(map(id, map(_RECEIVERS, distinct)))) == 1 \
            and plans[0].runnable:
        receivers = plans[0].plain
    elif kinds == _QUEUES_ONLY and len(set(map(id, map(_MEMBERS, distinct)))) == 1 and \
            len(plans[0].queues) == 1 and not plans[0].plain_out and \
            len(plans[0].members) == len(plans[0].queues[0]) <= 256:
        group = plans[0].queues[0]
    elif kinds != _EMPTY_ONLY:
        # Else one by one: the first PLAIN record's receivers; any other
        # kind, or other receivers, end the batch.
        receivers = next((p.plain for p in plans if p.kind == PLAN_PLAIN and p.runnable), None)
        ending = len(plans)
        for plan in distinct:
            if plan.kind != PLAN_EMPTY and (plan.kind != PLAN_PLAIN or
                                            plan.plain is not receivers):
                ending = min(ending, plans.index(plan))
        if ending < 2:
            return 0, 0, i
        if ending < len(plans):
            del plans[ending:], parts[ending:], payloads[ending:], lens[ending:]
            if tails is not None:
                del tails[ending:]
            kinds = set(map(_KIND, plans))
    k = len(plans)
    pongs = len([j for j in pings if j < k])     # (PINGs between records taken)
    if pongs:
        mine = group if group is not None else receivers or ()
        if any(member[-1] is client for member in mine):
            # (Its PONGs belong between its own messages: end at the first PING.)
            k, pongs = pings[0], 0
            if k < 2:
                return 0, 0, i
            del plans[k:], parts[k:], payloads[k:], lens[k:]
            if tails is not None:
                del tails[k:]
            kinds = set(map(_KIND, plans))
        else:
            client.queue_outbound(PONG * pongs)
    nbytes = sum(lens) - k
    # (Each record is its line, LF, payload and CR, LF: sum(len(pieces[:2k]))
    # + 2k, which is the window less its last pieces and their LFs if k ==
    # whole; a PING taken is 6 bytes more.)
    if k == whole and not pings:
        taken = len(window) - sum(map(len, pieces[2 * k:])) - (len(pieces) - 1 - 2 * k)
    else:
        taken = sum(map(len, lines[:k])) + nbytes + 3 * k + 6 * pongs
    if PLAN_PLAIN not in kinds and group is None:
        return k, nbytes, i + taken     # (nobody listens)
    tokens = tails if tails is not None else list(map(_THIRD, parts))
    if group is not None:
        deliver_queue_batch(group, plans, tokens, payloads, lens, server.pending)
        return k, nbytes, i + taken
    sent, sent_bytes = k, nbytes
    if PLAN_EMPTY in kinds:             # (subjects nobody listens to: left out)
        keep = list(map(PLAN_PLAIN.__eq__, map(_KIND, plans)))
        plans, tokens, payloads, lens = (list(itertools.compress(column, keep))
                                         for column in (plans, tokens, payloads, lens))
        sent = len(plans)
        sent_bytes = sum(lens) - sent
    # HOT: five pieces a record (prefix, token, LF, payload and CR, LF), no
    #      prefix + token made per record and receiver (in process, one
    #      subscriber 0.82 -> 0.76 us/msg, eight 1.85 -> 1.47-1.58).
    chunk = [b"\n"] * (5 * sent)
    chunk[1::5] = tokens
    chunk[3::5] = payloads
    # HOT: one receiver maps the plans' prefixes as it reads them, no list
    #      (with sent_bytes not summed again: in process 0.596 -> 0.584 us/msg).
    prefixes = list(map(_PREFIXES, plans)) if len(receivers) > 1 else map(_PREFIXES, plans)
    first = plans[0]
    for r, (owner, c) in enumerate(receivers):
        chunk[0::5] = map(operator.itemgetter(r), prefixes)
        first.plain_out[r][0](b"".join(chunk))
        owner.delivered += sent
        c.out_msgs += sent
        c.out_bytes += sent_bytes
    touch(first)
    return k, nbytes, i + taken


def pub_batch_replies(plans: list, parts: list, lines: list, lines_get, max_line: int) -> tuple:
    """deliver_pub_batch's records whose lines pub_lines does not know are
    taken when they are `PUB <subject> <reply> <size>`: pub_lines knows
    `PUB <subject>`, someone listens (else no_responders may answer), and
    the reply passes parse's checks (not empty, no tab or CR, the line
    within max_control_line, plus `PUB ` and CR).  Returns the records'
    plans up to the first that is neither (a STALE plan ends the batch in
    the caller), and the rest of their MSG lines after a receiver's prefix
    (`<size>\r`, or `<reply> <size>\r`): None if none has a reply."""
    # HOT: requests in the batch (one publisher, 64 subjects, a reply each,
    #      to one wildcard subscriber, in process: 1.70 -> 1.18 us/msg; the
    #      same checks as maps over all such records were no faster).
    k = len(plans)
    tails = None                # (made at the first reply)
    for j in [j for j, plan in enumerate(plans) if plan is None]:
        key, _, reply = parts[j][0].rpartition(b" ")
        plan = lines_get(key)
        if plan is None or plan.kind == PLAN_EMPTY or not reply or 9 in reply or \
                13 in reply or len(lines[j]) > max_line + 5:
            k = j
            break
        if tails is None:
            tails = list(map(_THIRD, parts))
        plans[j] = plan
        tails[j] = reply + b" " + tails[j]
    return plans[:k], tails and tails[:k]


_FIRST, _THIRD, _LAST = operator.itemgetter(0), operator.itemgetter(2), operator.itemgetter(-1)
_KIND, _RECEIVERS = operator.attrgetter("kind"), operator.attrgetter("plain")
_PREFIXES, _MEMBERS = operator.attrgetter("prefixes"), operator.attrgetter("members")
_PLAIN_ONLY, _EMPTY_ONLY, _QUEUES_ONLY = {PLAN_PLAIN}, {PLAN_EMPTY}, {PLAN_QUEUES}


def deliver_queue_batch(group: list, plans: list, tokens: list, payloads: list, lens: list,
                        pending: set):
    """deliver_pub_batch's records for one queue `group` alone, each member
    on a connection of its own: a random member per record (a random byte
    each, bytes.translate picks), each member one chunk of its records."""
    # HOT: a queue group of 4 over TCP, A/B in a row: 0.67-0.78M -> 0.82-0.83M msgs/s.
    k = len(plans)
    picks = random.getrandbits(8 * k).to_bytes(k, "little")
    prefixes = list(map(_PREFIXES, plans))
    now = time.time()
    for j, (append, _, owner, c) in enumerate(group):
        mine = picks.translate(queue_pick_table(len(group), j))
        sent = mine.count(1)
        if sent:
            chunk = [b"\n"] * (5 * sent)     # (as deliver_pub_batch's)
            chunk[0::5] = map(operator.itemgetter(j), itertools.compress(prefixes, mine))
            chunk[1::5] = itertools.compress(tokens, mine)
            chunk[3::5] = itertools.compress(payloads, mine)
            append(b"".join(chunk))
            owner.delivered += sent
            c.out_msgs += sent
            c.out_bytes += sum(itertools.compress(lens, mine)) - sent
            c.last_activity = now
            pending.add(c)


def queue_pick_table(members: int, j: int) -> bytes:
    """The bytes.translate table that maps a random byte to 1 when it picks
    member `j` of `members` (byte * members >> 8: as even as 256 values
    split `members` ways), else to 0."""
    table = _QUEUE_PICKS.get((members, j))
    if table is None:
        table = _QUEUE_PICKS[members, j] = bytes(b * members >> 8 == j for b in range(256))
    return table


_QUEUE_PICKS: dict = {}


def mark_receivers(plans, pending: set, now: float):
    """After a read, once: the receivers of the plans it delivered to wait
    for the turn's flush (`pending`) and were active at `now`."""
    for plan in plans:
        clients = plan.clients
        pending.update(clients)
        for c in clients:
            c.last_activity = now


# Secrets in a CONNECT line, replaced before it is traced (Go's removeSecretsFromTrace).
_SECRETS_IN_CONNECT = re.compile(rb'("(?:pass|auth_token)"\s*:\s*")(?:[^"\\]|\\.)*"')


def _valid_queue(queue: bytes) -> bool:
    return bool(queue) and b" " not in queue and b"\t" not in queue


# ============================================================================
# 6. Server and event loop
# ============================================================================
#
# The server owns everything the loop thread touches: the listener, the
# connections, the sublist, the timer heap and the counters.  One loop turn:
#
#     select (until the nearest timer) -> accept / read every ready socket
#       -> flush each connection that got output this turn -> run due timers
#
# Timers (auth timeout, pings, the write-deadline sweep) are entries on a
# heap, never threads.  Signal handlers only set a flag and wake the loop
# through a socket pair.  Go twin: server/server.go.  The class here is
# CoreServer; the Server everyone uses is composed in chapter 16 from it
# and Part II's mix-ins (TLS clients' start; reload, lame duck, signals).


class _Waker:
    """A socket pair that lets other threads and signal handlers wake select()."""

    closed = False

    def __init__(self):
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def wake(self):
        try:
            self.writer.send(b"\0")
        except OSError:
            pass

    def read_ready(self):
        try:
            while self.reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self):
        for s in (self.reader, self.writer):
            s.close()


class _LoopCall:
    """A call another thread queued for the loop.  `fn()` runs once; if it
    returns a generator (a snapshot taken in steps), each `run` advances
    it for at most `budget` seconds, until it returns its result."""

    __slots__ = ("fn", "waited", "steps", "value", "error", "done", "cancelled")

    def __init__(self, fn, waited: bool):
        self.fn = fn
        self.waited = waited          # a thread waits for `done` (call_in_loop)
        self.steps = None
        self.value = self.error = None
        self.done = threading.Event() if waited else None
        self.cancelled = False        # the waiter gave up: drop the call

    def run(self, budget: float) -> bool:
        """Advance the call; True once it is finished (or dropped)."""
        if self.cancelled:
            return True
        try:
            if self.steps is None:
                value = self.fn()
                if not isinstance(value, types.GeneratorType):
                    self.value = value
                    return self.finish()
                self.steps = value
            deadline = time.monotonic() + budget
            while time.monotonic() < deadline:
                next(self.steps)
            return False
        except StopIteration as stop:
            self.value = stop.value
        except Exception as exc:
            if not self.waited:     # a bug in a fire-and-forget call: log it
                log.exception("loop call failed")
            self.error = exc
        return self.finish()

    def finish(self) -> bool:
        if self.done is not None:
            self.done.set()
        return True


class _Listener:
    """A listening socket; readable means connections to accept, each
    handed to `create` (the server's create_client, or the cluster's create_route)."""

    closed = False

    def __init__(self, server: "Server", sock: socket.socket, create=None):
        self.server = server
        self.sock = sock
        self.create = create or server.create_client

    def read_ready(self):
        self.server.accept_connections(self.sock, self.create)


class CoreServer:
    """The core of the NATS server (Go's Server): the listener, the loop,
    the clients, shutdown.  `start()` serves on a loop thread of its own,
    `run()` in the calling thread; `shutdown()` ends either from any thread.

    Chapter 16 composes the class used, Server, from this and the mix-ins
    of Part II: TLSServing (chapter 10: start_client_tls, tls_established),
    WebSocketServing (chapter 11: listen_websocket) and ServerControl
    (chapter 16: reload, enter_lame_duck_mode, write_ports_file,
    install_signal_handlers), which the loop and listen() call by name."""

    def __init__(self, options: Options | None = None, flags: Options | None = None,
                 logger: logging.Logger | None = None):
        self.options = (options or Options()).fill_defaults()
        self.flags = flags or Options()      # the command line's, re-applied on reload
        self.log = log if logger is None else logger    # an embedded server's own (chapter 17)
        self.server_id = _new_server_id()
        self.server_name = self.options.server_name or self.server_id
        self.accounts = build_accounts(self.options)
        self.cluster = Cluster(self)         # the routes (chapter 12)
        self.leafs = LeafNodes(self)         # the leaf node connections (chapter 13)
        self.global_account = self.accounts[GLOBAL_ACCOUNT]
        self.system_account = self.accounts[self.options.system_account or SYSTEM_ACCOUNT]
        self.system_client = SystemClient(self)     # the server in $SYS (chapter 14)
        self.clients: dict = {}
        self.pending: set = set()
        self.write_waiting: set = set()
        self.backlogged: dict = {}   # connections with input left for the next turn (ordered)
        self.pub_sizes: dict = {}    # PUB size token -> size, for the hot path (pub_size)
        self.pub_line_sizes: dict = {}   # the same with the line's CR (pub_line_size)
        self.pub_line_lens: dict = {}    # and, valid ones, the payload's length with its CR
        self.run_tokens: dict = {}   # record length -> "<size>\r\n" (run_token)
        self.selector = selectors.DefaultSelector()
        self.timers: list = []       # a heap of [when, seq, callback or None]
        self.timer_seq = 0
        self.timers_cancelled = 0    # entries in it whose callback is None
        # One read's output must fit well inside max_pending, or a subscriber
        # that keeps up could be cut off by a single batch.
        self.read_size = max(16 * 1024, min(READ_SIZE, self.options.max_pending // 8))
        self.read_buffer = read_buffer(self.read_size)
        self.read_view = memoryview(self.read_buffer)
        # TLS: the class of accepted clients, and a buffer for ciphertext
        # (made with the first TLS client; plaintext still uses read_buffer).
        self.tls_client_class = with_tls(Client)
        self.ws_listener = None              # the websocket port's (chapter 11)
        self.ws_port = 0
        self.ws_client_classes: dict = {}    # secure (wss) -> with_websocket(...) class
        self.ws_upgrading: set = set()      # websocket connections not yet upgraded
        self.tls_route_class = with_tls(Route)
        self.tls_read_buffer = self.tls_read_view = None
        self.trace = self.options.trace
        self.next_cid = 0
        self.running = False
        self.listener = None
        self.host = self.options.host
        self.port = self.options.port
        self.waker = _Waker()
        self.start_time = time.time()
        self.total_connections = 0
        self.slow_consumers = 0
        self.stale_connections = 0
        self.closed_in_msgs = self.closed_in_bytes = 0
        self.closed_out_msgs = self.closed_out_bytes = 0
        self.info_template: dict = {}
        self.ports_file = ""
        self.reopen_log = False      # set by SIGUSR1, acted on by the loop
        self.monitor = None
        self.lame_duck = False
        self.lame_duck_requested = False     # set by SIGUSR2, acted on by the loop
        self.reload_requested = False        # set by SIGHUP, acted on by the loop
        self.loop_calls = collections.deque()   # (fn, result box, event) from other threads
        self.secret_checker = SecretChecker(self)
        self.closed_clients = collections.deque(maxlen=max(0, self.options.max_closed_clients))
        self.thread = None
        self.loop_thread = None
        self.exit_code = 0
        self.event_seq = 0           # the server's events (message traces) so far

    # -- startup ---------------------------------------------------------------

    def listen(self):
        """Bind the client listener and log the Go server's startup lines."""
        opts = self.options
        self.log.info("Starting nats-server")
        self.log.info("  Version:  %s", VERSION)
        self.log.info("  Git:      [%s]", GIT_COMMIT)
        self.log.info("  gnatsd.py: %s on %s %s", __version__, platform.python_implementation(),
                      platform.python_version())
        if opts.cluster_port:
            self.log.info("  Cluster:  %s", self.cluster.name)
        self.log.info("  Name:     %s", self.server_name)
        self.log.info("  ID:       %s", self.server_id)
        if opts.config_file:
            self.log.info("Using configuration file: %s", opts.config_file)
        if opts.trusted_operators:
            start_operator_mode(self)       # chapter 9
        for warning in opts.warnings:
            self.log.warning("%s", warning)
        sock = _bind(opts.host, opts.port)
        self.listener = _Listener(self, sock)
        self.host, self.port = opts.host, sock.getsockname()[1]
        self.selector.register(sock, selectors.EVENT_READ, self.listener)
        self.selector.register(self.waker.reader, selectors.EVENT_READ, self.waker)
        self.info_template = self.build_info()
        if opts.tls:
            opts.tls.server_context()  # raises ConfigError for an embedder's bad TLSConfig
        if opts.cluster_tls:
            opts.cluster_tls.server_context()
            opts.cluster_tls.client_context()
        if opts.http_port or opts.https_port:
            self.monitor = Monitor(self)
            self.monitor.start()
        if opts.websocket is not None and opts.websocket.port:
            self.listen_websocket()
        self.log.info("Listening for client connections on %s", _host_port(self.host, self.port))
        if opts.tls:
            self.log.info("TLS %s for client connections",
                          "available" if self.tls_optional() else "required")
            if opts.tls.handshake_first and not opts.tls.fallback:
                self.log.warning('Clients that are not using "TLS Handshake First" option will '
                                 'fail to connect')
        if opts.pid_file:
            _write_file(opts.pid_file, str(os.getpid()))
        self.add_timer(1.0, self.sweep_timeouts)
        self.system_client.start()       # $SYS requests and events (chapter 14)
        self.running = True
        self.log.info("Server is ready")
        if opts.cluster_port:
            self.cluster.listen()
        if opts.leafnodes is not None:
            self.leafs.listen()
        if opts.ports_file_dir:
            self.write_ports_file()
        return self

    def interest_changed(self, account: Account, sub: Subscription, delta: int):
        """A subscription of ours came or went: the routes and the leaf
        nodes that should hear of it do (chapters 12 and 13)."""
        if self.cluster.enabled:
            self.cluster.update_interest(account, sub, delta)
        if self.leafs.conns:
            self.leafs.interest_changed(account, sub, delta)

    def tls_optional(self) -> bool:
        """allow_non_tls: clients may upgrade or stay plain, which their first
        byte tells (Go sniffs it); a handshake_first without a fallback
        still requires TLS."""
        tls = self.options.tls
        return bool(self.options.allow_non_tls and tls
                    and not (tls.handshake_first and not tls.fallback))

    def build_info(self) -> dict:
        """INFO fields shared by every client, in the Go server's order."""
        opts = self.options
        info = {
            "server_id": self.server_id,
            "server_name": self.server_name,
            "version": VERSION,
            "proto": PROTO,
            "git_commit": GIT_COMMIT,
            "go": GO_FIELD,
            "host": opts.host,
            "port": self.port,
            "headers": True,
        }
        if opts.auth_required:
            info["auth_required"] = True
        if opts.tls:
            if not self.tls_optional():
                info["tls_required"] = True
            if opts.tls.verify:
                info["tls_verify"] = True
        info["max_payload"] = opts.max_payload
        if opts.tls and self.tls_optional():
            info["tls_available"] = True
        if self.cluster.enabled:
            info["cluster"] = self.cluster.name
            if self.cluster.routes:
                info["connect_urls"] = self.cluster.connect_urls()
        return info

    def start(self) -> "Server":
        """Listen, then serve on a background thread (for embedding and tests)."""
        self.listen()
        self.thread = threading.Thread(target=self.serve, name="gnatsd-loop", daemon=True)
        self.thread.start()
        return self

    def run(self) -> int:
        """Listen and serve in this thread until shutdown; returns the exit code."""
        self.listen()
        self.serve()
        return self.exit_code

    # -- the loop --------------------------------------------------------------

    def serve(self):
        """The event loop.  Returns after shutdown() has closed everything."""
        self.loop_thread = threading.current_thread()
        select = self.selector.select
        pending = self.pending
        timers = self.timers
        backlogged = self.backlogged
        EVENT_READ = selectors.EVENT_READ
        EVENT_WRITE = selectors.EVENT_WRITE
        try:
            while self.running:
                if backlogged:
                    self.run_backlog()
                timeout = None
                if backlogged or self.loop_calls:
                    timeout = 0.0       # input or a snapshot is waiting: just poll
                elif timers:
                    timeout = max(0.0, timers[0][0] - time.monotonic())
                for key, mask in select(timeout):
                    conn = key.data
                    if conn.closed:
                        continue
                    try:
                        if mask & EVENT_READ:
                            conn.read_ready()
                        if mask & EVENT_WRITE and not conn.closed:
                            conn.write_ready()
                    except Exception:  # a bug must cost one connection, not the server
                        self.connection_failed(conn)
                if pending:
                    self.flush_pending()
                if timers and timers[0][0] <= time.monotonic():
                    self.run_timers()
                if self.reopen_log:
                    self.reopen_log = False
                    reopen_log_file(self.options, self.log)
                if self.loop_calls:
                    self.run_loop_calls()
                if self.reload_requested:
                    self.reload_requested = False
                    self.reload()
                if self.lame_duck_requested:
                    self.lame_duck_requested = False
                    self.enter_lame_duck_mode()
        finally:
            self.close_all()

    def defer_input(self, conn: Connection):
        """`conn` has input left past its slice: stop reading it, and give it
        another slice next turn (round-robin with every other such connection)."""
        self.backlogged[conn] = None
        self.update_events(conn)

    def run_backlog(self):
        """One slice of input for each connection that had some left over
        (those deferred during this slice wait for the next turn)."""
        conns = list(self.backlogged)
        self.backlogged.clear()
        for conn in conns:
            if conn.closed or conn.stalled or conn.waiting:
                continue            # end_stall and await_secret put it back
            data, at = conn.backlog, conn.backlog_at
            conn.backlog = None
            try:
                conn.consume(data, at, True)
                if conn.backlog is None and not (conn.closed or conn.stalled or conn.waiting):
                    conn.resume_reading()
            except Exception:  # a bug must cost one connection, not the server
                self.connection_failed(conn)
        if self.pending:
            self.flush_pending()

    def flush_pending(self):
        """Flush every connection that got output this turn (Go's pcd)."""
        pending = self.pending
        while pending:
            conn = pending.pop()
            try:
                conn.flush()
            except Exception:
                self.connection_failed(conn)

    def connection_failed(self, conn):
        """An unexpected exception while serving `conn`: log it, close it."""
        self.log.exception("%sUnexpected error, closing connection",
                           getattr(conn, "log_prefix", ""))
        if isinstance(conn, Connection):
            try:
                conn.close(PROTOCOL_VIOLATION, flush=False)
            except Exception:
                self.log.exception("Error closing connection")

    def pub_size(self, token: bytes) -> int:
        """A PUB line's size token as the hot path takes it: its value if it
        is Go's size (ASCII digits, 9 at most) within max_payload, else -1
        (the reference path answers).  Remembered in `pub_sizes`, which a
        reload empties."""
        size = parse_size(token)
        if size > self.options.max_payload:
            size = -1
        sizes = self.pub_sizes
        if len(sizes) >= PUB_SIZES_MAX:
            sizes.clear()
        sizes[token] = size
        return size

    def pub_line_size(self, token: bytes) -> int:
        """pub_size for a PUB line's last token with the CR that ends the
        line (`16\r`): a client's hot path looks up token and CR at once.
        Remembered in `pub_line_sizes` (-1 for a token without its CR)."""
        size = self.pub_size(token[:-1]) if token.endswith(b"\r") else -1
        sizes, lens = self.pub_line_sizes, self.pub_line_lens
        if len(sizes) >= PUB_SIZES_MAX:
            sizes.clear()
            lens.clear()
        sizes[token] = size
        if size >= 0:
            lens[token] = size + 1      # (deliver_pub_batch)
        return size

    def run_token(self, length: int) -> bytes | None:
        """deliver_subject_run's `<size>\r\n` for a record `length` bytes long
        from its size to its payload's end (the one size that fits), None past
        max_payload; in `run_tokens`, which a reload empties."""
        token = None
        for digits in range(1, 10):     # size + its digits + CRLF == length
            size = length - 2 - digits
            if size >= 0 and len(str(size)) == digits:
                token = b"%d\r\n" % size if size <= self.options.max_payload else None
                break
        tokens = self.run_tokens
        if len(tokens) >= PUB_SIZES_MAX:
            tokens.clear()
        tokens[length] = token
        return token

    def call_in_loop(self, fn, timeout: float = 5.0):
        """Run `fn` on the loop thread between two turns and return its
        result (for the monitor's threads).  A generator function is a
        snapshot taken in steps: it runs a slice per turn (_LoopCall) and
        its return value is the result.  Raises TimeoutError, and then the
        loop drops the call."""
        call = _LoopCall(fn, waited=True)
        if not self.running or threading.current_thread() is self.loop_thread:
            while not call.run(float("inf")):
                pass
        else:
            self.loop_calls.append(call)
            self.waker.wake()
            if not call.done.wait(timeout):
                call.cancelled = True
                raise TimeoutError("the loop did not answer")
        if call.error is not None:
            raise call.error
        return call.value

    def call_soon(self, fn):
        """Run `fn` on the loop thread at the end of this turn or the next
        (any thread); nothing waits for it."""
        self.loop_calls.append(_LoopCall(fn, waited=False))
        self.waker.wake()

    def run_loop_calls(self):
        """The calls queued by other threads: each runs now, but a stepped
        snapshot, which gets MONITOR_SLICE and waits for the next turn if
        it has steps left."""
        calls = self.loop_calls
        for _ in range(len(calls)):
            call = calls.popleft()
            if not call.run(MONITOR_SLICE):
                calls.append(call)

    def add_timer(self, delay: float, callback) -> list:
        """Call `callback` on the loop thread `delay` s from now.  Returns
        the timer's heap entry [when, seq, callback], for cancel_timer."""
        self.timer_seq += 1
        entry = [time.monotonic() + delay, self.timer_seq, callback]
        heapq.heappush(self.timers, entry)
        return entry

    def cancel_timer(self, entry: list):
        """Forget a timer that has not fired: its callback, and the
        connection it holds, are dropped at once.  The entry stays in the
        heap until it is due, unless cancelled entries become over half of
        the heap: then they are shed in one pass (under connect/disconnect
        churn every closed client leaves a ping timer ping_interval long)."""
        if entry[2] is None:        # fired or cancelled already
            return
        entry[2] = None
        self.timers_cancelled += 1
        timers = self.timers
        if self.timers_cancelled > 1000 and self.timers_cancelled * 2 > len(timers):
            timers[:] = [e for e in timers if e[2] is not None]  # in place: serve() holds it
            heapq.heapify(timers)
            self.timers_cancelled = 0

    def run_timers(self):
        """Loop thread only.  Call every timer that is due (cancelled ones are
        skipped; one that raises is logged), then flush what they queued."""
        now = time.monotonic()
        timers = self.timers
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            callback = entry[2]
            if callback is None:
                self.timers_cancelled -= 1
                continue
            entry[2] = None
            try:
                callback()
            except Exception:  # a bug in one timer must not stop the loop
                self.log.exception("timer callback failed")
        if self.pending:
            self.flush_pending()

    def sweep_timeouts(self):
        """Once a second: slow writers past the deadline, expired responses."""
        now = time.monotonic()
        for conn in list(self.write_waiting):
            conn.check_write_deadline(now)
        for account in self.accounts.values():
            if account.responses:
                account.expire_responses(now)
        self.add_timer(1.0, self.sweep_timeouts)

    def want_write(self, conn: Connection, on: bool):
        """Wait for writability only while the kernel pushes back."""
        if on:
            self.write_waiting.add(conn)
        else:
            self.write_waiting.discard(conn)
        self.update_events(conn)

    def update_events(self, conn: Connection):
        """Register what `conn` waits for: reads unless stalled, writes while
        its output is blocked; neither means it is not in the selector."""
        reading = not (conn.stalled or conn.waiting or conn.backlog is not None)
        events = ((selectors.EVENT_READ if reading else 0)
                  | (selectors.EVENT_WRITE if conn.write_waiting else 0))
        selector = self.selector
        try:
            if events:
                try:
                    selector.modify(conn.sock, events, conn)
                except KeyError:
                    selector.register(conn.sock, events, conn)
            else:
                selector.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def unregister(self, conn: Connection):
        """Loop thread only.  Take `conn` (a connection, listener or
        dialer) out of the selector and `write_waiting`; harmless if it
        is in neither."""
        self.write_waiting.discard(conn)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    # -- connections -----------------------------------------------------------

    def accept_connections(self, listener: socket.socket, create):
        """Loop thread only.  Accept up to 256 waiting connections on
        `listener` and hand each socket to `create` (Go's acceptConnections);
        out of descriptors or memory, log and pause 10 ms."""
        for _ in range(256):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.error("Temporary Client Accept Error(%s), sleeping 10ms", exc)
                    time.sleep(0.01)
                    return
                self.log.error("Client Accept Error: %s", exc)
                return
            create(sock)

    def create_client(self, sock: socket.socket):
        """Loop thread only.  A client's socket (Go's createClient):
        non-blocking, registered for reads; a plain client gets INFO and its
        timers, a TLS one starts its handshake, and one over max_connections
        gets -ERR and is closed."""
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.next_cid += 1
        opts = self.options
        # Over the limit, a client gets Go's plain INFO and -ERR, TLS or not.
        over_limit = len(self.clients) >= opts.max_connections
        client_class = self.tls_client_class if opts.tls and not over_limit else Client
        client = client_class(self, sock, self.next_cid)
        self.total_connections += 1
        try:
            self.selector.register(sock, selectors.EVENT_READ, client)
        except (ValueError, OSError) as exc:
            self.log.error("Error registering client connection: %s", exc)
            sock.close()
            return
        self.clients[client.cid] = client
        client.debug("Client connection created")
        if client_class is Client:
            client.queue_outbound(self.client_info(client))
            if over_limit:
                client.error(ERR_MAX_CONNECTIONS)      # (Go's sendErrAndErr)
                client.send_err_and_close(ERR_MAX_CONNECTIONS, MAX_CONNECTIONS_EXCEEDED)
                return
            self.start_client_timers(client)
            client.flush()
        else:
            self.start_client_tls(client)

    def client_info(self, client: Client, ldm: bool = False) -> bytes:
        """The INFO a client gets (Go does not trace it): a websocket
        client's names the websocket port (chapter 11); with nkey users, a
        nonce of its own to sign; `ldm` in lame duck mode."""
        info = dict(self.info_template if client.ws is None else self.ws_info_template())
        info["client_id"] = client.cid
        info["client_ip"] = client.host
        if self.options.trusted_keys or any(user.nkey for user in self.options.users or ()):
            if not client.nonce:
                client.nonce = new_nonce().encode()
            info["nonce"] = client.nonce.decode()
        if ldm:
            info["ldm"] = True
        return b"INFO " + json.dumps(info, separators=(",", ":")).encode() + b" \r\n"

    def start_client_timers(self, client: Client):
        """The auth timeout and the ping timer (after the handshake for TLS)."""
        if client.awaiting_auth:
            self.add_timer(self.options.auth_timeout, client.auth_timeout)
        client.arm_ping_timer()

    def remove_client(self, client: Client):
        """Loop thread only.  A client closed: drop it from `clients`,
        keep its /connz entry (subscriptions, stop time, reason) among
        the closed ones, and add its counters to the closed totals (Go's
        removeClient and saveClosedClient)."""
        if self.clients.pop(client.cid, None) is not None:
            self.system_client.client_event(client, "DISCONNECT")
            info = client_conn_info(client, time.time(), "list", True)
            if client.subs:
                info["subscriptions_list_detail"] = [sub_detail(s) for s in client.subs.values()]
            info["stop"] = rfc3339(time.time())
            info["_stop"] = time.time()
            info["reason"] = client.close_reason
            self.closed_clients.append(_closed_order(info))
            self.closed_in_msgs += client.in_msgs
            self.closed_in_bytes += client.in_bytes
            self.closed_out_msgs += client.out_msgs
            self.closed_out_bytes += client.out_bytes

    # -- routes (chapter 12 has the connection's side) -----------------------------

    def client_url(self) -> str:
        """Our client address as other servers tell their clients."""
        return _advertised(self.options.client_advertise, self.host, self.port)

    # -- shutdown --------------------------------------------------------------

    def shutdown(self, timeout: float = 5.0):
        """Stop the loop; safe from any thread and from signal handlers
        (waits up to `timeout` s for a start()ed loop thread to end)."""
        self.running = False
        self.waker.wake()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def close_all(self):
        """Close listener and connections (loop thread, after the last turn)."""
        self.log.info("Initiating Shutdown...")
        if self.monitor is not None:
            self.monitor.stop()
        for listener in (self.listener, self.ws_listener):
            if listener is not None and not listener.closed:
                self.unregister(listener)
                listener.sock.close()
                listener.closed = True
        self.cluster.close_listener()
        self.leafs.close_listener()
        self.system_client.shutdown_event()     # chapter 14
        for client in list(self.clients.values()):
            client.close(SERVER_SHUTDOWN)
        for client in list(self.ws_upgrading):
            client.close(SERVER_SHUTDOWN, flush=False)
        for route in list(self.cluster.conns):
            route.close(SERVER_SHUTDOWN)
        for leaf in list(self.leafs.conns):
            leaf.close(SERVER_SHUTDOWN)
        self.secret_checker.stop()
        self.waker.close()
        self.selector.close()
        if self.options.pid_file:
            _remove_file(self.options.pid_file)
        if self.ports_file:
            _remove_file(self.ports_file)
        self.log.info("Server Exiting..")

def _is_ip_address(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, ValueError):
            pass
    return False


def read_buffer(size: int):
    """A buffer for recv_into whose pages cost memory only once a read has
    reached them: an anonymous mmap.  (bytearray(size) zero-fills, so
    touches, all of it: the 1 MiB read buffer was 1 MiB of every idle
    server's memory; now it is what the largest read needed.)"""
    return mmap.mmap(-1, size)


def _bind(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on host:port (port <= 0 picks one)."""
    if port in (RANDOM_PORT, 0):
        port = 0
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                               socket.AI_PASSIVE)
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def listen_error(host: str, port: int, exc: OSError) -> str:
    """Go's "Error listening on port" line for a listener that could not be
    bound, the cause in Go's net words (test helpers show it)."""
    if isinstance(exc, socket.gaierror):
        why = "listen tcp: lookup %s: no such host" % host
    else:
        why = "listen tcp %s: bind: %s" % (_host_port(host, port),
                                           (exc.strerror or str(exc)).lower())
    return 'Error listening on port: %s, "%s"' % (_host_port(host, port), why)


def _host_port(host: str, port: int) -> str:
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _advertise_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _advertised(advertise: str, host: str, port: int) -> str:
    """`host:port` others reach a listener at: its `advertise` (its port
    added if it names none), else the host it listens on, and the port."""
    if not advertise:
        return _host_port(_advertise_host(host), port)
    return advertise if ":" in advertise.rsplit("]", 1)[-1] else _host_port(advertise, port)


def _write_file(path: str, text: str):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _remove_file(path: str):
    try:
        os.remove(path)
    except OSError:
        pass


# ############################################################################
# Part II. Fidelity and the 2.x features
# ############################################################################
#
# What a drop-in for nats-server needs beyond the core: its config file and
# options (7, 8), users, permissions and accounts (9), TLS (10), WebSocket
# (11), clusters (12), leaf nodes (13), the monitoring endpoints (14), its
# log lines (15) and command line (16).  Code whose only job is to give Go's exact answer to odd input
# carries a GO-COMPAT marker naming the Go function and the test that pins
# it, wherever it sits.


# ============================================================================
# 7. Config-file lexer and parser
# ============================================================================
#
# The config format is the Go server's: a relaxed JSON/TOML cousin.
#
#     # comment            // comment too
#     port: 4222           # `:`, `=` or plain whitespace separate key and value
#     max_payload = 1MB    # size suffixes: K M G are 1000-based, KB MB GB 1024
#     ping_interval "2m"   # durations are strings the options chapter reads
#     name: "a\tb"         # "double" decodes \t \n \r \" \\ \xHH; 'single' is verbatim
#     authorization {      # maps; arrays are [a, b] or one item per line
#       user: derek, password: "s3cr3t"
#     }
#     include ./more.conf  # path relative to the including file
#     port: $PORT          # a variable: an earlier key in scope, else the env
#
# `parse_config(path)` returns a `ConfigMap` (a dict that also remembers where
# each key was written) so that later chapters can name file, line and column
# in their errors.  The scanner keeps one position and reads a token at a time;
# a recursive-descent parser builds maps and arrays (Go's lex.go and parse.go
# are a state-function lexer and a stack; the grammar is the same).  Go
# twins: conf/lex.go, conf/parse.go.  Entry point: parse_config(path).

# What peek() returns at the end of the text.
EOF = "\0"

# Characters that end a bare (unquoted) word.  `#` and `//` do not: Go reads
# `nats://host:4222` and `foo#1` as one word; a comment needs a blank before it.
_BARE_END = frozenset(" \t\r\n,;}]")

# Backslash escapes in double-quoted strings and bare words (Go's lexer).
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", '"': '"', "\\": "\\"}
_ESCAPE_RE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.|$)", re.S)

# Values that read as booleans (case-insensitive).
_TRUE_WORDS = frozenset(("true", "yes", "on"))
_FALSE_WORDS = frozenset(("false", "no", "off"))

# Size suffixes and their multipliers (Go's parse.go: k is 1000, kb is 1024).
_SIZE_SUFFIXES = {
    "k": 1000, "kb": 1024, "ki": 1024, "kib": 1024,
    "m": 1000 ** 2, "mb": 1024 ** 2, "mi": 1024 ** 2, "mib": 1024 ** 2,
    "g": 1000 ** 3, "gb": 1024 ** 3, "gi": 1024 ** 3, "gib": 1024 ** 3,
    "t": 1000 ** 4, "tb": 1024 ** 4, "ti": 1024 ** 4, "tib": 1024 ** 4,
    "p": 1000 ** 5, "pb": 1024 ** 5, "pi": 1024 ** 5, "pib": 1024 ** 5,
    "e": 1000 ** 6, "eb": 1024 ** 6, "ei": 1024 ** 6, "eib": 1024 ** 6,
}

_NUMBER_RE = re.compile(r"^(-?\d+)([A-Za-z]*)$")
_FLOAT_RE = re.compile(r"^-?\d+\.\d+([eE][-+]?\d+)?$")


class ConfigMap(dict):
    """A parsed config map: a dict plus where each key was written.

    `positions` maps a key to (line, column); `files` names the included
    file a key came from when it is not `path`.  `used_variables` holds
    (name, position) of each definition a `$name` read, so a key that only
    defines a variable is not an unknown field (a later redefinition is).
    """

    def __init__(self, path: str = ""):
        super().__init__()
        self.path = path
        self.positions: dict = {}
        self.files: dict = {}
        self.used_variables: set = set()

    def position(self, key: str) -> tuple:
        """(line, column) where `key` was written; (0, 0) if the file did not set it."""
        return self.positions.get(key, (0, 0))

    def is_variable(self, key: str) -> bool:
        """True if `key` is a definition some `$key` reference used."""
        return (key, self.position(key)) in self.used_variables

    def error(self, key: str, message: str) -> ConfigError:
        """A ConfigError for `key`, naming its file (an include's, if it came
        from one), line and column; the caller raises it."""
        line, col = self.position(key)
        return ConfigError(message, self.files.get(key, self.path), line, col)


class _ConfigParser:
    """Recursive-descent parser over one file's text."""

    def __init__(self, text: str, path: str, depth: int = 0):
        self.text = text
        self.path = path
        self.pos = 0
        self.line = 1
        self.line_start = 0
        self.depth = depth
        self.scopes: list = []  # stack of ConfigMaps, for variable look-up

    # -- scanning ------------------------------------------------------------

    def error(self, message: str) -> ConfigError:
        return ConfigError(message, self.path, self.line, self.pos - self.line_start + 1)

    def peek(self) -> str:
        """The next character, or EOF ("\\0", so `in` tests stay false)."""
        return self.text[self.pos] if self.pos < len(self.text) else EOF

    def advance(self, n: int = 1):
        for _ in range(n):
            if self.pos < len(self.text) and self.text[self.pos] == "\n":
                self.line += 1
                self.line_start = self.pos + 1
            self.pos += 1

    def skip_space(self, newlines: bool = True):
        """Skip blanks and comments (and newlines unless told not to)."""
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t\r" or (newlines and ch == "\n"):
                self.advance()
            elif ch == "#" or text.startswith("//", self.pos):
                while self.pos < len(text) and text[self.pos] != "\n":
                    self.pos += 1
            else:
                return

    def here(self) -> tuple:
        """(line, column) of the next character, as Go's lexer counts: from
        the newline before it, so columns start at 1 except on the first
        line, where they start at 0."""
        return (self.line, self.pos - self.line_start + (1 if self.line > 1 else 0))

    # -- grammar -------------------------------------------------------------

    def parse_document(self, into: ConfigMap) -> ConfigMap:
        """A file: pairs, optionally wrapped in one `{ }` (JSON style)."""
        self.scopes.append(into)
        self.skip_space()
        if self.peek() == "{":
            self.advance()
            self.parse_pairs(into, closing="}")
            self.skip_space()
            if self.peek() != EOF:
                raise self.error("expected the end of the file after the closing '}'")
        else:
            self.parse_pairs(into, closing="")
        self.scopes.pop()
        return into

    def parse_pairs(self, into: ConfigMap, closing: str):
        """key sep value pairs until `closing` (or end of text at top level)."""
        while True:
            self.skip_space()
            ch = self.peek()
            if ch in ",;":
                self.advance()
                continue
            if ch == EOF:
                if closing:
                    raise self.error("unexpected end of file, expected %r" % closing)
                return
            if closing and ch == closing:
                self.advance()
                return
            if not closing and ch == "}" and not self.text[self.pos + 1:].strip():
                return  # Go lets a file end with a stray "}" (JSON-like configs)
            where = self.here()
            key = self.parse_key()
            if key.lower() == "include" and ch not in "\"'":
                self.include(into, where)
                continue
            self.skip_space(newlines=False)
            if self.peek() in ":=":
                self.advance()
                self.skip_space(newlines=False)
            if self.peek() in (EOF, "\n"):
                raise self.error("key %r has no value" % key)
            into[key] = self.parse_value()
            into.positions[key] = where
            if self.path != into.path:
                into.files[key] = self.path
            else:
                into.files.pop(key, None)

    def parse_key(self) -> str:
        ch = self.peek()
        if ch in "\"'":
            return self.parse_quoted()
        start = self.pos
        text = self.text
        while self.pos < len(text) and text[self.pos] not in " \t\r\n:=#{[;,}]":
            self.pos += 1
        if self.pos == start:
            raise self.error("expected a key, found %r" % ch)
        return text[start:self.pos]

    def parse_quoted(self) -> str:
        """'single' is verbatim; "double" decodes backslash escapes."""
        quote = self.peek()
        line, column = self.here()
        self.advance()
        end = self.pos
        while end < len(self.text) and self.text[end] not in (quote, "\n"):
            end += 2 if quote == '"' and self.text[end] == "\\" else 1
        if end >= len(self.text) or self.text[end] != quote:
            raise ConfigError("unterminated string", self.path, line, column)
        value = self.text[self.pos:end]
        self.pos = end + 1
        return self.unescape(value) if quote == '"' else value

    def unescape(self, raw: str) -> str:
        """Decode \\t \\n \\r \\" \\\\ and \\xHH (bytes, then UTF-8) as Go does."""
        if "\\" not in raw:
            return raw
        out = bytearray()
        pos = 0
        for m in _ESCAPE_RE.finditer(raw):
            out += raw[pos:m.start()].encode()
            code = m.group(1)
            if code[:1] == "x" and len(code) == 3:
                out.append(int(code[1:], 16))
            elif code in _ESCAPES:
                out += _ESCAPES[code].encode()
            else:
                raise self.error("Invalid escape character %r. Only the following escape "
                                 "characters are allowed: \\xXX, \\t, \\n, \\r, \\\", \\\\."
                                 % code[:1])
            pos = m.end()
        out += raw[pos:].encode()
        return out.decode("utf-8", "replace")

    def parse_value(self):
        ch = self.peek()
        if ch == "{":
            self.advance()
            child = ConfigMap(self.path)
            self.scopes.append(child)
            self.parse_pairs(child, closing="}")
            self.scopes.pop()
            return child
        if ch == "[":
            return self.parse_array()
        if ch in "\"'":
            return self.parse_quoted()
        if ch == "(":
            return self.parse_block_string()
        if ch == "$":
            return self.parse_variable()
        return self.parse_bare()

    def parse_array(self) -> list:
        self.advance()  # [
        items = []
        while True:
            self.skip_space()
            ch = self.peek()
            if ch == EOF:
                raise self.error("unexpected end of file in array")
            if ch == "]":
                self.advance()
                return items
            if ch == ",":
                self.advance()
                continue
            items.append(self.parse_value())

    def parse_block_string(self) -> str:
        """`( ... )` where the closing `)` stands alone on its line."""
        self.advance()
        m = re.compile(r"\n[ \t]*\)[ \t]*(?=\n|$)").search(self.text, self.pos)
        if not m:
            raise self.error("unterminated block string")
        value = self.text[self.pos:m.start()].strip("\n")
        while self.pos < m.end():
            self.advance()
        return value

    def parse_variable(self):
        where_line, where_col = self.here()
        self.advance()  # $
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in "_-"):
            self.pos += 1
        name = self.text[start:self.pos]
        for scope in reversed(self.scopes):
            if name in scope:
                scope.used_variables.add((name, scope.position(name)))
                return scope[name]
        if name in os.environ:
            env_value = os.environ[name]
            return _read_scalar(env_value) if env_value else env_value
        raise ConfigError("variable reference for '%s' on line %d can not be found"
                          % (name, where_line), self.path, where_line, where_col)

    def parse_bare(self):
        start = self.pos
        text = self.text
        while self.pos < len(text) and text[self.pos] not in _BARE_END:
            self.pos += 1
        word = text[start:self.pos]
        if not word:
            raise self.error("expected a value, found %r" % self.peek())
        if "\\" in word:
            return self.unescape(word)
        try:
            return _read_scalar(word)
        except ValueError as exc:
            self.pos = start
            raise self.error(str(exc))

    def include(self, into: ConfigMap, where: tuple):
        self.skip_space(newlines=False)
        ch = self.peek()
        target = self.parse_quoted() if ch in "\"'" else self.parse_bare()
        if not isinstance(target, str):
            raise self.error("include needs a file name")
        if self.depth > 10:
            raise self.error("include nested too deeply")
        path = os.path.join(os.path.dirname(self.path) or ".", target)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError("error parsing include file '%s', %s" % (target, exc.strerror),
                              self.path, *where)
        except ValueError as exc:
            # A NUL in the name (Go's open says "invalid argument"), or not UTF-8.
            why = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "invalid argument"
            raise ConfigError("error parsing include file '%s', %s" % (target, why),
                              self.path, *where)
        # An included file is parsed on its own (it does not see the
        # includer's variables, as in Go), then merged in.
        included = _ConfigParser(text, path, self.depth + 1).parse_document(ConfigMap(path))
        for key, value in included.items():
            into[key] = value
            into.positions[key] = included.position(key)
            into.files[key] = included.files.get(key, path)
        into.used_variables |= included.used_variables


def _read_scalar(word: str):
    """A bare word as a bool, int (with size suffix), float or string."""
    lower = word.lower()
    if lower in _TRUE_WORDS:
        return True
    if lower in _FALSE_WORDS:
        return False
    m = _NUMBER_RE.match(word)
    if m:
        number, suffix = int(m.group(1)), m.group(2).lower()
        if not -2 ** 63 <= number < 2 ** 63:
            raise ValueError("integer '%s' is out of the range" % m.group(1))
        if not suffix:
            return number
        if suffix in _SIZE_SUFFIXES:
            return number * _SIZE_SUFFIXES[suffix]
        if _parse_duration_or_none(word) is not None:
            return word  # a bare duration such as 2s: the option reads it
        raise ValueError("unknown numeric suffix %r" % m.group(2))
    if _FLOAT_RE.match(word):
        return float(word)
    return word


def parse_config_text(text: str, path: str = "<config>") -> ConfigMap:
    """Parse config text; raise ConfigError naming file, line and column."""
    return _ConfigParser(text, path).parse_document(ConfigMap(path))


def parse_config(path: str) -> ConfigMap:
    """Parse the config file at `path` (Go's conf.ParseFile)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(_open_error(exc))
    except UnicodeDecodeError as exc:
        raise ConfigError("config file is not UTF-8: %s" % exc, path)
    return parse_config_text(text, path)


# Go duration units in seconds ("ns", "us", "ms", "s", "m", "h").
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)")


def _parse_duration_or_none(text: str):
    """Seconds in a Go duration string such as "1h2m3.5s", or None."""
    text = text.strip()
    sign = 1.0
    if text[:1] in ("+", "-"):  # not `in "+-"`: "" is in every string
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_RE.match(text, pos)
        if not m:
            return None
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total if pos else None


# ============================================================================
# 8. Options
# ============================================================================
#
# `Options` holds every setting of a server.  It is filled in three steps,
# as the Go server's opts.go does: the config file (if any) through the
# table of keys below, then the command-line flags on top ("flags override
# the file"), then `Options.fill_defaults()` puts every unset value in one
# place.  Settings whose feature this build does not have yet are never
# dropped silently: the file's keys produce a warning at startup, and a flag
# asking for them is an error (see `UNSUPPORTED_KEYS`).  Go twin:
# server/opts.go.  Entry points: options_from_config(path), Options.merge,
# fill_defaults, validate.

# Config blocks of the Go server this build does not implement.  A key here is
# accepted (so a Go config file still loads) and named in a startup warning.
UNSUPPORTED_KEYS = {
    "jetstream": "JetStream is not supported by gnatsd.py",
    "gateway": "gateways are not supported by gnatsd.py",
    "mqtt": "MQTT is not supported by gnatsd.py",
    "prof_port": "profiling is not supported by gnatsd.py",
    "prof_block_rate": "profiling is not supported by gnatsd.py",
    "default_sentinel": "default_sentinel is not supported by gnatsd.py",
    "resolver_tls": "URL account resolvers are not supported by gnatsd.py",
    "resolver_pinned_accounts": "resolver_pinned_accounts is not supported by gnatsd.py",
    "store_dir": "JetStream is not supported by gnatsd.py",
    "storedir": "JetStream is not supported by gnatsd.py",
    "default_js_domain": "JetStream is not supported by gnatsd.py",
    "mappings": "subject mappings are not supported by gnatsd.py",
    "maps": "subject mappings are not supported by gnatsd.py",
    "ocsp": "OCSP stapling is not supported by gnatsd.py",
    "ocsp_cache": "OCSP stapling is not supported by gnatsd.py",
    "proxy_protocol": "the PROXY protocol is not supported by gnatsd.py",
    "proxies": "trusted proxies are not supported by gnatsd.py",
    "trace_verbose": "trace_verbose is not supported by gnatsd.py (trace is)",
    "trace_headers": "trace_headers is not supported by gnatsd.py (trace is)",
    "disable_sublist_cache": "disabling the sublist cache is not supported by gnatsd.py",
    "no_sublist_cache": "disabling the sublist cache is not supported by gnatsd.py",
    "logfile_max_num": "log_max_num is not supported by gnatsd.py: backups are kept",
    "log_max_num": "log_max_num is not supported by gnatsd.py: backups are kept",
    "max_sub_tokens": "max_sub_tokens is not supported by gnatsd.py",
    "max_subscription_tokens": "max_sub_tokens is not supported by gnatsd.py",
    "write_timeout": "write_timeout is not supported by gnatsd.py (write_deadline is)",
    "no_system_account": "no_system_account is not supported by gnatsd.py",
    "no_system": "no_system_account is not supported by gnatsd.py",
    "no_sys_acc": "no_system_account is not supported by gnatsd.py",
    "no_header_support": "no_header_support is not supported by gnatsd.py",
    "connect_error_reports": "connect_error_reports is not supported by gnatsd.py",
    "reconnect_error_reports": "reconnect_error_reports is not supported by gnatsd.py",
    "server_metadata": "server_metadata is not supported by gnatsd.py",
    "feature_flags": "feature flags are not supported by gnatsd.py",
    "no_fast_producer_stall": "no_fast_producer_stall is not supported by gnatsd.py",
}

# Route connections per peer, unless `cluster { pool_size }` says otherwise
# (Go's DEFAULT_ROUTE_POOL_SIZE; chapter 12).
DEFAULT_ROUTE_POOL_SIZE = 3


class Options:
    """Every server setting, with the Go server's names and defaults.

    Unset values are None until `fill_defaults()`; that lets flags override
    the file only where a flag was actually given.
    """

    # (attribute, default) in the order of the Go server's Options struct.
    DEFAULTS = (
        ("config_file", ""),
        ("server_name", ""),
        ("server_tags", None),
        ("host", DEFAULT_HOST),
        ("port", DEFAULT_PORT),
        ("client_advertise", ""),
        ("trace", False),
        ("debug", False),
        ("logtime", True),
        ("logtime_utc", False),
        ("log_file", ""),
        ("log_size_limit", 0),
        ("syslog", False),
        ("remote_syslog", ""),
        ("max_traced_msg_len", 0),
        ("max_closed_clients", MAX_CLOSED_CLIENTS),
        ("allow_non_tls", False),
        ("pid_file", ""),
        ("ports_file_dir", ""),
        ("max_connections", DEFAULT_MAX_CONNECTIONS),
        ("max_control_line", MAX_CONTROL_LINE_SIZE),
        ("max_payload", MAX_PAYLOAD_SIZE),
        ("max_pending", MAX_PENDING_SIZE),
        ("max_subscriptions", 0),
        ("ping_interval", DEFAULT_PING_INTERVAL),
        ("ping_max", DEFAULT_PING_MAX_OUT),
        ("write_deadline", DEFAULT_WRITE_DEADLINE),
        ("lame_duck_duration", DEFAULT_LAME_DUCK_DURATION),
        ("lame_duck_grace_period", DEFAULT_LAME_DUCK_GRACE_PERIOD),
        ("username", ""),
        ("password", ""),
        ("authorization", ""),
        ("auth_timeout", 0.0),
        ("users", None),
        ("default_permissions", None),
        ("no_auth_user", ""),
        ("cluster_name", ""),
        ("cluster_host", ""),
        ("cluster_port", 0),
        ("cluster_advertise", ""),
        ("cluster_auth", None),
        ("cluster_tls", None),
        ("cluster_pool_size", DEFAULT_ROUTE_POOL_SIZE),
        ("cluster_accounts", None),
        ("no_advertise", False),
        ("connect_retries", 0),
        ("routes", None),
        ("accounts", None),
        ("system_account", ""),
        ("leafnodes", None),
        ("trusted_keys", None),
        ("trusted_operators", None),
        ("operator_jwts", None),
        ("account_resolver", ""),
        ("resolver_preload", None),
        ("http_host", ""),
        ("http_port", 0),
        ("http_base_path", ""),
        ("http_metrics", True),
        ("http_metrics_prefix", "gnatsd"),
        ("https_port", 0),
        ("tls", None),
        ("websocket", None),
        ("warnings", None),
    )

    def __init__(self, **kw):
        for name, _default in self.DEFAULTS:
            setattr(self, name, None)
        for name, value in kw.items():
            if not any(name == n for n, _ in self.DEFAULTS):
                raise TypeError("unknown option %r" % name)
            setattr(self, name, value)

    def __repr__(self) -> str:
        shown = ", ".join("%s=%r" % (n, getattr(self, n)) for n, _ in self.DEFAULTS
                          if getattr(self, n) is not None)
        return "Options(%s)" % shown

    def __eq__(self, other) -> bool:
        return isinstance(other, Options) and all(
            getattr(self, n) == getattr(other, n) for n, _ in self.DEFAULTS)

    def merge(self, flags: "Options") -> "Options":
        """Flags given on the command line override the file (Go's MergeOptions)."""
        for name, _default in self.DEFAULTS:
            value = getattr(flags, name)
            if value is not None and name != "warnings":
                setattr(self, name, value)
        return self

    def fill_defaults(self) -> "Options":
        """Give every unset option its default (Go's setBaselineOptions)."""
        for name, default in self.DEFAULTS:
            if getattr(self, name) is None:
                setattr(self, name, list(default or ()) if name == "warnings" else default)
        if self.tls is False:
            self.tls = None          # --tls=false turned the file's tls block off
        if self.auth_timeout == 0.0:
            # Go's getDefaultAuthTimeout: with TLS, a second more than a handshake may take.
            self.auth_timeout = self.tls.timeout + 1.0 if self.tls else AUTH_TIMEOUT
        if self.port == 0:
            self.port = RANDOM_PORT
        return self

    def validate(self) -> "Options":
        """Check the merged options as Go's validateOptions does; raise
        ConfigError, or add a warning for what is allowed but unwise."""
        if " " in self.server_name:
            raise ConfigError("server name cannot contain spaces")
        if self.max_payload > self.max_pending:
            raise ConfigError("max_payload (%d) cannot be higher than max_pending (%d)"
                              % (self.max_payload, self.max_pending))
        if self.max_payload > 8 * 1024 * 1024:
            self.warnings.append("Maximum payloads over 8.00 MB are generally discouraged "
                                 "and could lead to poor performance")
        validate_operators(self)
        if self.cluster_accounts:
            if self.cluster_pool_size < 0:
                raise ConfigError("pool_size cannot be negative if pinned accounts are specified")
            # (Go lists them as pinned: the system account added at the end)
            pinned = self.cluster_accounts + [
                n for n in [self.system_account or SYSTEM_ACCOUNT] if n not in self.cluster_accounts]
            for k, name in enumerate(self.cluster_accounts):
                if name in self.cluster_accounts[:k]:
                    listed = " ".join(go_quote(n.encode()) for n in pinned)
                    raise ConfigError("found duplicate account name %s in pinned accounts list "
                                      "[%s]" % (go_quote(name.encode()), listed))
        if self.websocket is not None:
            validate_websocket(self.websocket)
            jwt_cookie = self.websocket.cookies.get("jwt_cookie")
            if self.websocket.port and jwt_cookie and not (self.trusted_keys or
                                                           self.trusted_operators):
                raise ConfigError('trusted operators or trusted keys configuration is required '
                                  'for JWT authentication via cookie "%s"' % jwt_cookie)
            if self.websocket.port and self.users:
                for what in ("username", "token"):
                    if getattr(self.websocket, what):
                        raise ConfigError("websocket authentication %s not compatible with "
                                          "presence of users/nkeys" % what)
        return self

    @property
    def auth_required(self) -> bool:
        """True if clients must log in: a single user, a token or a users
        list is set, or operator mode is on."""
        return bool(self.username or self.authorization or self.users or self.trusted_keys)


def _to_int(cm: ConfigMap, key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise cm.error(key, "interface conversion: expected an integer for %r, got %r"
                       % (key, value))
    return value


def _to_str(cm: ConfigMap, key: str, value) -> str:
    if isinstance(value, (dict, list)):
        raise cm.error(key, "expected a string for %r" % key)
    return str(value)


def _to_bool(cm: ConfigMap, key: str, value) -> bool:
    if not isinstance(value, bool):
        raise cm.error(key, "expected a boolean for %r, got %r" % (key, value))
    return value


def _to_seconds(cm: ConfigMap, key: str, value) -> float:
    """A timeout: a Go duration string, or a number (int or float) of seconds."""
    if isinstance(value, bool):
        raise cm.error(key, "expected a duration for %r" % key)
    if isinstance(value, (int, float)):
        return float(value)
    seconds = _parse_duration_or_none(str(value))
    if seconds is None:
        reason = ("missing unit in duration" if re.match(r"^[-+]?[\d.]+$", str(value))
                  else "invalid duration")
        raise cm.error(key, 'error parsing %s: time: %s "%s"' % (key, reason, value))
    return seconds


def _duration(attr: str):
    """The reader of a duration option (Go's parseDuration): a duration
    string such as "2m"; a bare integer is seconds, with Go's warning."""

    def read(cm: ConfigMap, key: str, value, opts: Options):
        if isinstance(value, int) and not isinstance(value, bool):
            opts.warnings.append('%s:%d: invalid use of field "%s": %s should be converted '
                                 'to a duration' % (cm.files.get(key, cm.path),
                                                    cm.position(key)[0], key, key))
        elif not isinstance(value, str):
            raise cm.error(key, "interface conversion: expected a duration for %r, got %r"
                           % (key, value))
        setattr(opts, attr, _to_seconds(cm, key, value))
    return read


# Largest max_payload and max_control_line (Go keeps them in an int32).
_MAX_INT32 = 2 ** 31 - 1


def _to_size(cm: ConfigMap, key: str, value) -> int:
    """An integer number of bytes (size suffixes are read by the lexer)."""
    size = _to_int(cm, key, value)
    if size > _MAX_INT32 and key.lower() in ("max_payload", "max_control_line"):
        raise cm.error(key, "%s value is too big" % key)
    return size


def _to_server_name(cm: ConfigMap, key: str, value) -> str:
    name = _to_str(cm, key, value)
    if " " in name:
        raise cm.error(key, "server name cannot contain spaces")
    return name


def _host_port_value(cm: ConfigMap, key: str, value) -> tuple:
    """A `listen` value, `host:port` (or `[v6]:port`): (host or "", port)."""
    text = _to_str(cm, key, value)
    host, _, port = text.rpartition(":")
    if not port.lstrip("-").isdigit():
        raise cm.error(key, "could not parse address string %r" % text)
    return host.strip("[]"), int(port)


def _listen(cm: ConfigMap, key: str, value, opts: Options):
    """`listen: host:port` sets both host and port."""
    host, opts.port = _host_port_value(cm, key, value)
    if host:
        opts.host = host


_CLUSTER_URL_RE = re.compile(r"^(?:[a-z+-]+://)?(?:(?P<user>[^:@/]*)(?::(?P<pass>[^@/]*))?@)?"
                             r"(?P<host>\[[^\]]*\]|[^:/]*)(?::(?P<port>-?\d+))?/?$")


def parse_cluster_url(url: str) -> tuple:
    """`nats://[user:pass@]host:port` (the --cluster and --cluster_listen
    flags) -> (host, port, (user, password) or None); port -1 is random."""
    m = _CLUSTER_URL_RE.match(url.strip())
    if not m or m.group("port") is None:
        raise ConfigError('error parsing cluster url ["%s"]' % url)
    auth = (urllib.parse.unquote(m.group("user") or ""),
            urllib.parse.unquote(m.group("pass") or "")) if m.group("user") else None
    return m.group("host").strip("[]"), int(m.group("port")), auth


def _cluster(cm: ConfigMap, key: str, value, opts: Options):
    """`cluster { name listen host port advertise no_advertise authorization
    routes tls connect_retries pool_size accounts compression }` (Go's
    parseCluster)."""
    if not isinstance(value, ConfigMap):
        raise cm.error(key, "Expected map to define cluster")
    for sub_key, sub_value in value.items():
        name = sub_key.lower()
        if name == "name":
            opts.cluster_name = _to_str(value, sub_key, sub_value)
            if " " in opts.cluster_name:
                raise value.error(sub_key, "cluster name cannot contain spaces or new lines")
        elif name == "listen":
            opts.cluster_host, opts.cluster_port = _host_port_value(value, sub_key, sub_value)
        elif name in ("host", "net"):
            opts.cluster_host = _to_str(value, sub_key, sub_value)
        elif name == "port":
            opts.cluster_port = _to_int(value, sub_key, sub_value)
        elif name in ("advertise", "cluster_advertise"):
            opts.cluster_advertise = _to_str(value, sub_key, sub_value)
        elif name == "no_advertise":
            opts.no_advertise = _to_bool(value, sub_key, sub_value)
        elif name == "connect_retries":
            opts.connect_retries = _to_int(value, sub_key, sub_value)
        elif name == "routes":
            routes = sub_value if isinstance(sub_value, list) else [sub_value]
            for url in routes:
                if not isinstance(url, str):
                    raise value.error(sub_key, "expected a route URL")
            opts.routes = list(routes)
        elif name == "authorization":
            opts.cluster_auth = _route_authorization(value, sub_key, sub_value)
        elif name == "pool_size":
            opts.cluster_pool_size = _to_int(value, sub_key, sub_value) or DEFAULT_ROUTE_POOL_SIZE
        elif name == "accounts":
            names = sub_value if isinstance(sub_value, list) else [sub_value]
            opts.cluster_accounts = [_to_str(value, sub_key, n) for n in names]
        elif name in ("compression", "ping_interval", "ping_max"):
            continue  # uncompressed routes here; Go peers adapt
        elif name == "tls":
            opts.cluster_tls = parse_tls_block(value, sub_key, sub_value, route=True)
            if opts.cluster_tls.verify_and_map:  # peers' certificates are verified, not mapped
                opts.warnings.append(_route_not_yet(value, sub_key, "tls verify_and_map"))
        elif name == "permissions":
            opts.warnings.append(_route_not_yet(value, sub_key, name))
        elif value.is_variable(sub_key):
            continue
        else:
            raise value.error(sub_key, 'unknown field "%s"' % sub_key)


def _route_not_yet(cm: ConfigMap, key: str, what: str) -> str:
    """The startup warning for a cluster setting this build ignores."""
    return "%s:%d: route %s is not supported by gnatsd.py yet; ignored" % (
        cm.files.get(key, cm.path), cm.position(key)[0], what)


# A user and password in an `authorization {}` block (cluster, websocket,
# leafnodes) and in a leaf user's entry: key -> (field, converter).
_AUTH_USER_KEYS = {"user": ("username", _to_str), "username": ("username", _to_str),
                   "pass": ("password", _to_str), "password": ("password", _to_str)}


def _read_block(cm: ConfigMap, key: str, value, keys: dict, what: str = "authorization") -> dict:
    """The fields of a block whose keys `keys` names (lowercase key ->
    (field, converter)): {field: value}; any other key is Go's `unknown
    field` error."""
    if not isinstance(value, ConfigMap):
        raise cm.error(key, "expected a map for %s" % what)
    fields = {}
    for sub_key, sub_value in value.items():
        known = keys.get(sub_key.lower())
        if known is not None:
            fields[known[0]] = known[1](value, sub_key, sub_value)
        elif not value.is_variable(sub_key):
            raise value.error(sub_key, 'unknown field "%s"' % sub_key)
    return fields


def _route_authorization(cm: ConfigMap, key: str, value) -> tuple:
    """cluster { authorization { user password timeout } } -> (user, password)."""
    fields = _read_block(cm, key, value, dict(_AUTH_USER_KEYS, timeout=("timeout", _to_seconds)))
    return (fields.get("username", ""), fields.get("password", ""))


def _http(cm: ConfigMap, key: str, value, opts: Options):
    """`http: 8222` or `http: "host:8222"`: the monitoring listener."""
    host, opts.http_port = _monitor_address(cm, key, value)
    if host:
        opts.http_host = host


def _https(cm: ConfigMap, key: str, value, opts: Options):
    """`https: 8443` or `https: "host:8443"`: the monitoring listener over TLS."""
    host, opts.https_port = _monitor_address(cm, key, value)
    if host:
        opts.http_host = host


def _monitor_address(cm: ConfigMap, key: str, value) -> tuple:
    """A port, or "host:port" -> (host or "", port)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "", value
    text = _to_str(cm, key, value)
    host, _, port = text.rpartition(":")
    if not port.lstrip("-").isdigit():
        raise cm.error(key, "could not parse address string %r" % text)
    return host.strip("[]"), int(port)


class WebsocketOptions:
    """The `websocket {}` block (Go's WebsocketOpts): where the websocket
    listener is, its TLS (or no_tls), origin checks, compression, and the
    headers its upgrade answer adds."""

    def __init__(self):
        self.host = DEFAULT_HOST
        self.port = 0
        self.advertise = ""
        self.no_tls = False
        self.tls = None                  # TLSConfig
        self.same_origin = False
        self.allowed_origins = []
        self.handshake_timeout = 0.0     # seconds; 0: none
        self.compression = False
        self.username = self.password = self.token = ""
        self.auth_timeout = 0.0
        self.no_auth_user = ""
        self.cookies = {}                # jwt_cookie, user_cookie, ... -> cookie name
        self.headers = {}
        self.ping_interval = None

    def __eq__(self, other) -> bool:
        return isinstance(other, WebsocketOptions) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return "WebsocketOptions(%s:%d)" % (self.host, self.port)


def _websocket(cm: ConfigMap, key: str, value, opts: Options):
    """`websocket { listen host port advertise no_tls tls same_origin
    allowed_origins handshake_timeout compression authorization
    no_auth_user jwt_cookie user_cookie pass_cookie token_cookie headers
    ping_interval }` (Go's parseWebsocket)."""
    if not isinstance(value, ConfigMap):
        raise cm.error(key, "Expected websocket to be a map, got %s" % _go_type(value))
    ws = opts.websocket = WebsocketOptions()
    for sub_key, sub_value in value.items():
        name = sub_key.lower()
        if name == "listen":
            ws.host, ws.port = _host_port_value(value, sub_key, sub_value)
        elif name == "port":
            ws.port = _to_int(value, sub_key, sub_value)
        elif name in ("host", "net"):
            ws.host = _to_str(value, sub_key, sub_value)
        elif name == "advertise":
            ws.advertise = _to_str(value, sub_key, sub_value)
        elif name == "no_tls":
            ws.no_tls = _to_bool(value, sub_key, sub_value)
        elif name == "tls":
            ws.tls = parse_tls_block(value, sub_key, sub_value)
        elif name == "same_origin":
            ws.same_origin = _to_bool(value, sub_key, sub_value)
        elif name in ("allowed_origins", "allowed_origin", "allow_origins", "allow_origin",
                      "origins", "origin"):
            origins = sub_value if isinstance(sub_value, list) else [sub_value]
            ws.allowed_origins = [_to_str(value, sub_key, origin) for origin in origins]
        elif name == "handshake_timeout":
            ws.handshake_timeout = _to_seconds(value, sub_key, sub_value)
        elif name in ("compress", "compression"):
            ws.compression = _to_bool(value, sub_key, sub_value)
        elif name in ("authorization", "authentication"):
            _websocket_authorization(value, sub_key, sub_value, ws)
        elif name in ("jwt_cookie", "user_cookie", "pass_cookie", "token_cookie"):
            ws.cookies[name] = _to_str(value, sub_key, sub_value)
        elif name == "no_auth_user":
            ws.no_auth_user = _to_str(value, sub_key, sub_value)
        elif name == "headers":
            if not isinstance(sub_value, ConfigMap):
                raise value.error(sub_key, "error parsing headers: unsupported type %s"
                                  % _go_type(sub_value))
            for header, header_value in sub_value.items():
                if not isinstance(header_value, str):
                    raise sub_value.error(header, "error parsing header key %s: unsupported "
                                                  "type %s" % (header, _go_type(header_value)))
                ws.headers[header] = header_value
        elif name == "ping_interval":
            ws.ping_interval = _to_seconds(value, sub_key, sub_value)
        elif value.is_variable(sub_key):
            continue
        else:
            raise value.error(sub_key, 'unknown field "%s"' % sub_key)


def _websocket_authorization(cm: ConfigMap, key: str, value, ws: WebsocketOptions):
    """websocket { authorization { user password token timeout } }."""
    keys = dict(_AUTH_USER_KEYS, token=("token", _to_str),
                timeout=("auth_timeout", _to_seconds))
    for field, field_value in _read_block(cm, key, value, keys).items():
        setattr(ws, field, field_value)


def validate_websocket(ws: WebsocketOptions):
    """Go's validateWebsocketOptions: TLS unless no_tls, absolute http(s)
    allowed origins, no header the upgrade answer owns (Options.validate:
    no JWT cookie without operators).  Raises ConfigError."""
    if not ws.port:
        return
    if ws.port and ws.tls is None and not ws.no_tls:
        raise ConfigError("websocket requires TLS configuration")
    for origin in ws.allowed_origins:
        parsed = urllib.parse.urlsplit(origin)
        if parsed.scheme not in ("http", "https"):
            raise ConfigError('unable to parse allowed origin "%s": allowed origins must be '
                              'absolute URLs with http or https scheme' % origin)
        if not parsed.netloc:
            raise ConfigError('unable to parse allowed origin "%s": host is required' % origin)
    for header in ws.headers:
        lowered = header.lower()
        if lowered in ("host", "content-length", "connection", "upgrade", "nats-no-masking"):
            raise ConfigError('websocket: invalid header "%s" not allowed' % header)
        if lowered.startswith("sec-websocket-"):
            raise ConfigError('websocket: invalid header "%s", "Sec-WebSocket-" prefix not '
                              'allowed' % header)


class Permissions:
    """What one user may publish and subscribe to (Go's Permissions).

    Each list holds subjects as written in the config; a subscribe entry
    may carry a queue group after a space (`"work.* workers"`).  None means
    "no such list" (everything allowed / nothing denied).
    """

    def __init__(self, publish_allow=None, publish_deny=None, subscribe_allow=None,
                 subscribe_deny=None, responses=None):
        self.responses = responses   # (max responses, seconds) or None
        self.publish_allow = publish_allow
        self.publish_deny = publish_deny
        self.subscribe_allow = subscribe_allow
        self.subscribe_deny = subscribe_deny

    def __repr__(self) -> str:
        return "Permissions(%r, %r, %r, %r)" % (self.publish_allow, self.publish_deny,
                                               self.subscribe_allow, self.subscribe_deny)


class User:
    """One entry of `authorization { users [...] }` or of an account's users;
    `account` names the account it logs in to ("" is the global account)."""

    def __init__(self, username: str, password: str, permissions: Permissions | None,
                 account: str = "", nkey: str = ""):
        self.username = username
        self.password = password
        self.permissions = permissions
        self.account = account
        self.nkey = nkey          # an nkey user's public key ("U..."), who signs a nonce

    def __repr__(self) -> str:
        return "User(%r)" % self.username


def _subject_list(cm: ConfigMap, key: str, value) -> list:
    """A permission value: one subject or a list of them."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, str):
            raise cm.error(key, "error parsing %s permissions, expected a subject string" % key)
        if not is_valid_subject(item.strip().partition(" ")[0].encode()):
            raise cm.error(key, 'subject "%s" is not a valid subject' % item)
        out.append(item)
    return out


def _permission_lists(cm: ConfigMap, key: str, value) -> tuple:
    """publish/subscribe: a subject, a list, or {allow, deny} -> (allow, deny)."""
    if isinstance(value, ConfigMap):
        allow = deny = None
        for sub_key, sub_value in value.items():
            name = sub_key.lower()
            if name == "allow":
                allow = _subject_list(value, sub_key, sub_value)
            elif name == "deny":
                deny = _subject_list(value, sub_key, sub_value)
            else:
                raise value.error(sub_key, 'unknown field "%s"' % sub_key)
        return allow, deny
    return _subject_list(cm, key, value), None


def _response_permission(cm: ConfigMap, key: str, value) -> tuple:
    """`allow_responses: true` or `{max: N, expires: "1m"}` -> (max, seconds)
    (Go's defaults: one response, within two minutes)."""
    if value is True:
        return (1, 120.0)
    if value is False:
        return None
    if not isinstance(value, ConfigMap):
        raise cm.error(key, "error parsing allow_responses, expected a bool or a map")
    maximum, expires = 1, 120.0
    for sub_key, sub_value in value.items():
        name = sub_key.lower()
        if name == "max":
            maximum = _to_int(value, sub_key, sub_value)
        elif name in ("expires", "ttl"):
            expires = _to_seconds(value, sub_key, sub_value)
        else:
            raise value.error(sub_key, 'unknown field "%s"' % sub_key)
    return (maximum, expires)


def _permissions(cm: ConfigMap, key: str, value) -> Permissions:
    """`permissions { publish subscribe }` (Go's parseUserPermissions)."""
    if not isinstance(value, ConfigMap):
        raise cm.error(key, "expected a map for permissions")
    perms = Permissions()
    for sub_key, sub_value in value.items():
        name = sub_key.lower()
        if name in ("publish", "pub"):
            perms.publish_allow, perms.publish_deny = _permission_lists(value, sub_key, sub_value)
        elif name in ("subscribe", "sub"):
            perms.subscribe_allow, perms.subscribe_deny = _permission_lists(
                value, sub_key, sub_value)
        elif name in ("allow_responses", "allow_response"):
            perms.responses = _response_permission(value, sub_key, sub_value)
        else:
            raise value.error(sub_key, 'unknown field "%s"' % sub_key)
    return perms


def _users(cm: ConfigMap, key: str, value) -> list:
    """`users = [ {user password permissions} ... ]`."""
    if not isinstance(value, list):
        raise cm.error(key, "expected an array for users")
    users = []
    for entry in value:
        if not isinstance(entry, ConfigMap):
            raise cm.error(key, "expected a map for each user")
        username = password = nkey = ""
        perms = None
        for sub_key, sub_value in entry.items():
            name = sub_key.lower()
            if name in ("user", "username"):
                username = _to_str(entry, sub_key, sub_value)
            elif name in ("pass", "password"):
                password = _to_str(entry, sub_key, sub_value)
            elif name in ("permissions", "permission", "authorization"):  # Go's spellings
                perms = _permissions(entry, sub_key, sub_value)
            elif name == "nkey":
                nkey = _to_str(entry, sub_key, sub_value)
                if decode_nkey(nkey, NKEY_USER) is None:
                    raise entry.error(sub_key, "Not a valid public nkey for a user")
            else:
                raise entry.error(sub_key, 'unknown field "%s"' % sub_key)
        users.append(User(username, password, perms, nkey=nkey))
    return users


def _authorization(cm: ConfigMap, key: str, value, opts: Options):
    """`authorization { user password token timeout }` (single user or token)."""
    if not isinstance(value, ConfigMap):
        raise cm.error(key, "expected a map for authorization")
    auth_users: list = []
    for sub_key, sub_value in value.items():
        name = sub_key.lower()
        if name in ("user", "username"):
            opts.username = _to_str(value, sub_key, sub_value)
        elif name in ("pass", "password"):
            opts.password = _to_str(value, sub_key, sub_value)
        elif name == "token":
            opts.authorization = _to_str(value, sub_key, sub_value)
        elif name == "timeout":
            opts.auth_timeout = _to_seconds(value, sub_key, sub_value)
        elif name == "users":
            auth_users = _users(value, sub_key, sub_value)
        elif name == "default_permissions":
            opts.default_permissions = _permissions(value, sub_key, sub_value)
        elif name == "permissions":
            opts.warnings.append("%s:%d: authorization permissions need a user; ignored"
                                 % (cm.path, cm.position(key)[0]))
        elif value.is_variable(sub_key):
            continue  # a variable definition, used by another key
        else:
            raise value.error(sub_key, 'unknown field "%s"' % sub_key)
    if (auth_users or opts.users) and (opts.username or opts.authorization):
        raise cm.error(key, "Can not have a single user/pass and a users array")
    if opts.username and opts.authorization:
        raise cm.error(key, "Cannot have a user/pass and token")
    _check_duplicate_users(cm, key, auth_users, opts.users)
    if opts.default_permissions is not None:
        for user in auth_users:
            if user.permissions is None:
                user.permissions = opts.default_permissions
    opts.users = auth_users + (opts.users or [])


def _check_duplicate_users(cm: ConfigMap, key: str, users: list, known: list | None):
    names = {u.username for u in known or () if not u.nkey}
    nkeys = {u.nkey for u in known or () if u.nkey}
    for user in users:
        if user.nkey:
            if user.nkey in nkeys:
                raise cm.error(key, 'Duplicate nkey "%s" detected' % user.nkey)
            nkeys.add(user.nkey)
            continue
        if user.username in names:
            raise cm.error(key, 'Duplicate user "%s" detected' % user.username)
        names.add(user.username)


class Export:
    """A stream or service an account offers to others (Go's streamExport and
    serviceExport).  `accounts` lists who may import it; None is public."""

    def __init__(self, kind: str, subject: str, accounts: list | None = None,
                 response_type: str = "singleton", response_threshold: float = 120.0):
        self.kind = kind
        self.subject = subject
        self.accounts = accounts
        self.response_type = response_type
        self.response_threshold = response_threshold

    def __repr__(self) -> str:
        return "Export(%r, %r)" % (self.kind, self.subject)


class Import:
    """A stream or service an account takes from `account` (Go's streamImport
    and serviceImport).  `subject` is the exporter's subject; `to` is the
    subject in the importing account (for streams, `prefix.subject` when a
    prefix is given)."""

    def __init__(self, kind: str, account: str, subject: str, to: str):
        self.kind = kind
        self.account = account
        self.subject = subject
        self.to = to

    def __repr__(self) -> str:
        return "Import(%r, %r, %r, %r)" % (self.kind, self.account, self.subject, self.to)


class AccountConfig:
    """One account of the `accounts` block, as written."""

    def __init__(self, name: str):
        self.name = name
        self.exports: list = []
        self.imports: list = []
        self.claims = None        # operator mode: the account JWT's claims


_RESPONSE_TYPES = ("singleton", "stream", "chunked")


def _check_config_subject(cm: ConfigMap, key: str, subject, what: str) -> str:
    if not isinstance(subject, str) or not is_valid_subject(subject.encode()):
        raise cm.error(key, "invalid %s subject %r" % (what, subject))
    return subject


def _export(cm: ConfigMap, key: str, entry) -> Export:
    """`{stream: "x.>"}` or `{service: "svc", accounts: [B], response_type: stream}`."""
    if not isinstance(entry, ConfigMap):
        raise cm.error(key, "Export Items should be a map, got %s" % type(entry).__name__)
    export = None
    accounts = None
    response_type, threshold = "singleton", 120.0
    for sub_key, value in entry.items():
        name = sub_key.lower()
        if name in ("stream", "service"):
            if export is not None:
                raise entry.error(sub_key, "Detected stream and service exports in the same "
                                           "entry, only one is allowed")
            export = Export(name, _check_config_subject(entry, sub_key, value, name))
        elif name == "accounts":
            if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                raise entry.error(sub_key, "expected a list of account names")
            accounts = list(value)
        elif name in ("response", "response_type"):
            if not isinstance(value, str) or value.lower() not in _RESPONSE_TYPES:
                raise entry.error(sub_key, 'Unknown response type: "%s"' % (value,))
            response_type = value.lower()
        elif name in ("threshold", "response_threshold", "response_max_time",
                      "response_time"):
            threshold = _to_seconds(entry, sub_key, value)
        elif name in ("latency", "account_token_position", "advertise", "allow_trace"):
            continue  # service latency tracking and the like: accepted, not used
        elif entry.is_variable(sub_key):
            continue
        else:
            raise entry.error(sub_key, 'unknown field "%s"' % sub_key)
    if export is None:
        raise cm.error(key, "Expected a stream or service export")
    export.accounts = accounts
    if export.kind == "service":
        export.response_type, export.response_threshold = response_type, threshold
    elif response_type != "singleton":
        raise cm.error(key, "Detected response directive on non-service")
    return export


def _import(cm: ConfigMap, key: str, entry) -> Import:
    """`{stream: {account: B, subject: "x.>"}, prefix: p}` or
    `{service: {account: B, subject: "svc"}, to: "local"}`."""
    if not isinstance(entry, ConfigMap):
        raise cm.error(key, "Import Items should be a map, got %s" % type(entry).__name__)
    kind = account = subject = None
    to = prefix = ""
    for sub_key, value in entry.items():
        name = sub_key.lower()
        if name in ("stream", "service"):
            if kind is not None:
                raise entry.error(sub_key, "Detected stream and service imports in the same "
                                           "entry, only one is allowed")
            if not isinstance(value, ConfigMap):
                raise entry.error(sub_key, "Import %s should be a map with account and subject"
                                  % name)
            kind = name
            for field, field_value in value.items():
                if field.lower() == "account":
                    account = _to_str(value, field, field_value)
                elif field.lower() == "subject":
                    subject = _check_config_subject(value, field, field_value, name + " import")
                elif not value.is_variable(field):
                    raise value.error(field, 'unknown field "%s"' % field)
            if not account or subject is None:
                raise entry.error(sub_key, "Expect an account name and a subject")
        elif name == "prefix":
            prefix = _to_str(entry, sub_key, value)
        elif name in ("to", "local_subject"):
            to = _check_config_subject(entry, sub_key, value, "import")
        elif name in ("share", "allow_trace"):
            continue  # request-info sharing and tracing: accepted, not used
        elif entry.is_variable(sub_key):
            continue
        else:
            raise entry.error(sub_key, 'unknown field "%s"' % sub_key)
    if kind is None:
        raise cm.error(key, "Expected a stream or service import")
    if kind == "service" and prefix:
        raise cm.error(key, "Detected prefix on service import, not allowed")
    if prefix:
        to = prefix.rstrip(".") + "." + subject
    return Import(kind, account, subject, to or subject)


def _account(cm: ConfigMap, name: str, value, opts: Options) -> AccountConfig:
    """One account: `A { users exports imports default_permissions }`."""
    account = AccountConfig(name)
    if value is None or value == "":
        return account
    if not isinstance(value, ConfigMap):
        raise cm.error(name, "Expected map entries for accounts")
    default_perms = None
    users: list = []
    users_key = ""
    for sub_key, sub_value in value.items():
        key = sub_key.lower()
        if key == "users":
            users, users_key = _users(value, sub_key, sub_value), sub_key
        elif key == "exports":
            items = sub_value if isinstance(sub_value, list) else [sub_value]
            account.exports = [_export(value, sub_key, item) for item in items]
        elif key == "imports":
            items = sub_value if isinstance(sub_value, list) else [sub_value]
            account.imports = [_import(value, sub_key, item) for item in items]
        elif key == "default_permissions":
            default_perms = _permissions(value, sub_key, sub_value)
        elif key in ("jetstream", "mappings", "limits", "nkey", "msg_trace", "trace_dest"):
            opts.warnings.append("%s:%d: account %s: %s is not supported by gnatsd.py; ignored"
                                 % (value.files.get(sub_key, value.path),
                                    value.position(sub_key)[0], name, sub_key))
        elif value.is_variable(sub_key):
            continue
        else:
            raise value.error(sub_key, 'unknown field "%s"' % sub_key)
    if users and (opts.username or opts.authorization):
        raise value.error(users_key, "Can not have a single user/pass and accounts")
    _check_duplicate_users(value, users_key, users, opts.users)
    for user in users:
        user.account = name
        if user.permissions is None:
            user.permissions = default_perms
    opts.users = (opts.users or []) + users
    return account


def _accounts(cm: ConfigMap, key: str, value, opts: Options):
    """`accounts { A {...} B {...} }`, or a list of names (Go's parseAccounts)."""
    accounts = opts.accounts = opts.accounts or {}
    if isinstance(value, list):
        for name in value:
            if not isinstance(name, str):
                raise cm.error(key, "Expected an account name")
            accounts[name] = AccountConfig(name)
        return
    if not isinstance(value, ConfigMap):
        raise cm.error(key, "Expected map or array of accounts")
    for name, body in value.items():
        if value.is_variable(name):
            continue
        if name == GLOBAL_ACCOUNT:
            raise value.error(name, '"%s" is a Reserved Account' % name)
        accounts[name] = _account(value, name, body, opts)
    try:
        check_accounts(accounts)
    except ConfigError as exc:
        raise cm.error(key, exc.message)


def check_accounts(accounts: dict):
    """Cross-account checks once the block is read (Go's parseAccounts):
    exports name existing accounts; imports name existing accounts and
    exported subjects they are allowed, each at most once."""
    for account in accounts.values():
        for export in account.exports:
            for name in export.accounts or ():
                if name not in accounts:
                    raise ConfigError('"%s" account not defined for %s export'
                                      % (name, export.kind))
    for account in accounts.values():
        seen = set()
        for imp in account.imports:
            exporter = accounts.get(imp.account)
            if exporter is None:
                raise ConfigError('"%s" account not defined for %s import'
                                  % (imp.account, imp.kind))
            export = find_export(exporter, imp.kind, imp.subject)
            if export is None or (export.accounts is not None
                                  and account.name not in export.accounts):
                raise ConfigError('Error adding %s import "%s": %s import not authorized'
                                  % (imp.kind, imp.subject, imp.kind))
            if imp.kind == "stream":
                if (imp.account, imp.subject) in seen:
                    raise ConfigError('Error adding stream import "%s": stream import already'
                                      ' exists' % imp.subject)
                seen.add((imp.account, imp.subject))
            if not same_wildcards(imp.subject, imp.to):
                raise ConfigError('Error adding %s import "%s": %r must keep the wildcards of'
                                  ' the subject' % (imp.kind, imp.subject, imp.to))


def find_export(account: AccountConfig, kind: str, subject: str) -> Export | None:
    """The export of `kind` covering `subject` (which may be narrower)."""
    tokens = subject.encode().split(b".")
    for export in account.exports:
        if export.kind == kind and subject_is_subset(tokens, export.subject.encode().split(b".")):
            return export
    return None


# -- the leafnodes {} block ---------------------------------------------------
#
#     leafnodes {
#       port: 7422                 # a hub: accept leaf nodes (listen, host, advertise)
#       authorization { user: leaf, password: pw, account: A }   # or users [...]
#       remotes = [                # a leaf: dial hubs
#         { url: "nats-leaf://user:pw@hub:7422", account: A, credentials: "./u.creds",
#           deny_imports: ["secret.>"], deny_exports: ["local.>"] }
#       ]
#       reconnect: "1s"
#     }
#
# becomes LeafNodeOptions with RemoteLeafOptions (Go's LeafNodeOpts and
# RemoteLeafOpts); chapter 13 serves it.


class LeafURL:
    """A leaf remote's URL: `nats-leaf://[user:pass@]host:port` (or
    `nats://`, `tls://`; port 7422 by default), or a hub's websocket port:
    `ws://` (port 80) or `wss://` (443)."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url if "://" in url else "nats-leaf://" + url)
        if parsed.scheme not in ("nats-leaf", "nats", "tls", "nats+tls", "ws", "wss") or \
                not parsed.hostname:
            raise ConfigError('error parsing leafnode remote url ["%s"]' % url)
        self.url = url
        self.ws = parsed.scheme in ("ws", "wss")
        self.tls = parsed.scheme in ("tls", "nats+tls", "wss")
        self.host = parsed.hostname
        default = {"ws": 80, "wss": 443}.get(parsed.scheme, DEFAULT_LEAF_PORT)
        try:
            self.port = parsed.port or default
        except ValueError:
            raise ConfigError('error parsing leafnode remote url ["%s"]: invalid port' % url)
        self.user = urllib.parse.unquote(parsed.username or "")
        self.password = urllib.parse.unquote(parsed.password or "")

    def redacted(self) -> str:
        """The URL as logs show it (the password hidden, as Go does)."""
        auth = "%s:%s@" % (self.user, "xxxxx") if self.user and self.password else \
            ("%s@" % self.user if self.user else "")
        scheme = ("wss" if self.tls else "ws") if self.ws else "nats-leaf"
        return "%s://%s%s" % (scheme, auth, _host_port(self.host, self.port))


class RemoteLeafOptions:
    """One entry of `leafnodes { remotes [...] }`: the hub's URLs, the
    local account to bind, credentials, TLS, deny lists; and the state of
    dialing it (which URL next, attempts, a loop's wait)."""

    def __init__(self):
        self.urls: list = []             # LeafURL
        self.account = ""                # local account bound ("" is $G)
        self.credentials = ""            # a .creds file: user JWT + seed
        self.seed = ""                   # an nkey seed
        self.tls = None                  # TLSConfig
        self.deny_imports: list = []     # subjects not taken from the hub
        self.deny_exports: list = []     # subjects not sent to the hub
        self.next_url = 0
        self.attempts = 0
        self.was_connected = False
        self.delay_until = 0.0

    def __eq__(self, other) -> bool:
        keys = ("account", "credentials", "seed", "tls", "deny_imports", "deny_exports")
        return isinstance(other, RemoteLeafOptions) and \
            [u.url for u in self.urls] == [u.url for u in other.urls] and \
            all(getattr(self, k) == getattr(other, k) for k in keys)


class LeafNodeOptions:
    """The `leafnodes {}` block (Go's LeafNodeOpts)."""

    def __init__(self):
        self.host = DEFAULT_HOST
        self.port = 0
        self.advertise = ""
        self.no_advertise = False
        self.username = self.password = ""
        self.nkey = ""                   # or an nkey whose holder signs the nonce
        self.account = ""                # the account an authorized leaf binds to
        self.users: list = []            # User, with account
        self.auth_timeout = 0.0
        self.tls = None
        self.remotes: list = []          # RemoteLeafOptions
        self.reconnect = LEAF_RECONNECT_DELAY

    def __eq__(self, other) -> bool:
        return isinstance(other, LeafNodeOptions) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return "LeafNodeOptions(%s:%d, %d remotes)" % (self.host, self.port, len(self.remotes))


def _leafnodes(cm: ConfigMap, key: str, value, opts: Options):
    """`leafnodes { listen host port advertise no_advertise authorization
    remotes reconnect tls ... }` (Go's parseLeafNodes)."""
    if not isinstance(value, ConfigMap):
        raise cm.error(key, "Expected map to define leafnodes, got %s" % _go_type(value))
    leaf = opts.leafnodes = LeafNodeOptions()
    for sub_key, sub_value in value.items():
        name = sub_key.lower()
        if name == "listen":
            host, leaf.port = _host_port_value(value, sub_key, sub_value)
            if host:
                leaf.host = host
        elif name == "port":
            leaf.port = _to_int(value, sub_key, sub_value)
        elif name in ("host", "net"):
            leaf.host = _to_str(value, sub_key, sub_value)
        elif name in ("advertise", "leafnode_advertise"):
            leaf.advertise = _to_str(value, sub_key, sub_value)
        elif name == "no_advertise":
            leaf.no_advertise = _to_bool(value, sub_key, sub_value)
        elif name == "authorization":
            _leaf_authorization(value, sub_key, sub_value, leaf)
        elif name == "remotes":
            if not isinstance(sub_value, list):
                raise value.error(sub_key, "Expected remotes field to be an array, got %s"
                                  % _go_type(sub_value))
            leaf.remotes = [_remote_leaf(value, sub_key, entry) for entry in sub_value]
        elif name in ("reconnect", "reconnect_delay", "reconnect_interval"):
            leaf.reconnect = _to_seconds(value, sub_key, sub_value)
        elif name == "tls":
            leaf.tls = parse_tls_block(value, sub_key, sub_value)
        elif name in ("compression", "min_version", "minimum_version", "dial_timeout",
                      "isolate_leafnode_interest", "isolate", "write_deadline",
                      "write_timeout"):
            continue  # uncompressed, no version floor, Go's defaults: accepted, not used
        elif value.is_variable(sub_key):
            continue
        else:
            raise value.error(sub_key, 'unknown field "%s"' % sub_key)


def _leaf_authorization(cm: ConfigMap, key: str, value, leaf: LeafNodeOptions):
    """leafnodes { authorization { user password account timeout users nkey } }."""
    keys = dict(_AUTH_USER_KEYS, account=("account", _to_str),
                timeout=("auth_timeout", _to_seconds), users=("users", _leaf_users),
                nkey=("nkey", _leaf_nkey), proxy_required=("", _no_proxy_required))
    for field, field_value in _read_block(cm, key, value, keys).items():
        if field:
            setattr(leaf, field, field_value)


def _leaf_users(cm: ConfigMap, key: str, value) -> list:
    """`users = [ {user, password, account} ]` of a leafnodes authorization."""
    if not isinstance(value, list):
        raise cm.error(key, "Expected users field to be an array, got %s" % _go_type(value))
    users = []
    for entry in value:
        if not isinstance(entry, ConfigMap):
            raise cm.error(key, "Expected user entry to be a map/struct, got %s"
                           % _go_type(entry))
        fields = _read_block(cm, key, entry, dict(_AUTH_USER_KEYS, account=("account", _to_str)))
        users.append(User(fields.get("username", ""), fields.get("password", ""), None,
                          fields.get("account", "")))
    return users


def _leaf_nkey(cm: ConfigMap, key: str, value) -> str:
    nkey = _to_str(cm, key, value)
    if decode_nkey(nkey, NKEY_USER) is None:
        raise cm.error(key, "Not a valid public nkey for a user")
    return nkey


def _no_proxy_required(cm: ConfigMap, key: str, value) -> bool:
    if _to_bool(cm, key, value):
        raise cm.error(key, "proxy_required is not supported by gnatsd.py")
    return False


def _remote_leaf(cm: ConfigMap, key: str, entry) -> RemoteLeafOptions:
    """One remote: `{ url | urls, account, credentials, nkey, tls,
    deny_imports, deny_exports }` (Go's parseRemoteLeafNodes)."""
    if not isinstance(entry, ConfigMap):
        raise cm.error(key, "Expected remote leafnode entry to be a map/struct, got %s"
                       % _go_type(entry))
    remote = RemoteLeafOptions()
    for sub_key, sub_value in entry.items():
        name = sub_key.lower()
        if name in ("url", "urls"):
            urls = sub_value if isinstance(sub_value, list) else [sub_value]
            try:
                remote.urls += [LeafURL(_to_str(entry, sub_key, u)) for u in urls]
            except ConfigError as exc:
                raise entry.error(sub_key, str(exc))
        elif name in ("account", "local"):
            remote.account = _to_str(entry, sub_key, sub_value)
        elif name in ("creds", "credentials"):
            remote.credentials = os.path.expanduser(_to_str(entry, sub_key, sub_value))
        elif name in ("nkey", "seed"):
            remote.seed = _to_str(entry, sub_key, sub_value)
            if decode_seed(remote.seed) is None:
                raise entry.error(sub_key, "Remote leafnode nkey is not a valid seed")
        elif name == "tls":
            remote.tls = parse_tls_block(entry, sub_key, sub_value, client=True)
        elif name in ("deny_imports", "deny_import", "deny_exports", "deny_export"):
            subjects = sub_value if isinstance(sub_value, list) else [sub_value]
            subjects = [_check_config_subject(entry, sub_key, s, "deny") for s in subjects]
            if name.startswith("deny_import"):
                remote.deny_imports = subjects
            else:
                remote.deny_exports = subjects
        elif name in ("no_randomize", "dont_randomize", "hub", "ws_compress", "ws_compression",
                      "websocket_compress", "websocket_compression", "ws_no_masking",
                      "websocket_no_masking", "jetstream_cluster_migrate",
                      "js_cluster_migrate", "isolate_leafnode_interest", "isolate",
                      "request_isolation", "compression", "first_info_timeout",
                      "dial_timeout", "disabled", "proxy"):
            continue  # Go's finer controls: accepted, not used
        elif entry.is_variable(sub_key):
            continue
        else:
            raise entry.error(sub_key, 'unknown field "%s"' % sub_key)
    if not remote.urls:
        raise cm.error(key, "Leafnode remote requires at least one URL")
    return remote


# -- the tls {} block ---------------------------------------------------------
#
#     tls { cert_file key_file ca_file verify verify_and_map timeout
#           handshake_first cipher_suites curve_preferences min_version }
#
# becomes a TLSConfig (Go's TLSConfigOpts), and its SSLContext is built while
# the file is read, so a missing file or an unknown cipher is a config error
# with a line number, as Go's parseTLS and GenTLSConfig make it.  The same
# reader serves `cluster { tls {} }`, where Go forces verification both
# ways (a route is a client of its peer too: `client_context()`, which
# `insecure` stops checking the server it dials).
# Go names ciphers and curves as IANA and crypto/tls do; OpenSSL has its own
# names, mapped below.  Chapter 10 uses the context; nothing here touches a
# socket.

# Go's cipher suite names -> OpenSSL's.  The TLS 1.3 suites map to "": Go
# accepts and ignores them, and Python's ssl cannot choose them either.
GO_CIPHER_SUITES = {
    "TLS_RSA_WITH_RC4_128_SHA": "RC4-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": "ECDHE-ECDSA-RC4-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": "ECDHE-RSA-RC4-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    # The names nats-server 2.9 (Go < 1.14) used for the two above.
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": "",
    "TLS_AES_256_GCM_SHA384": "",
    "TLS_CHACHA20_POLY1305_SHA256": "",
}

# Go's curve names -> OpenSSL's group names.  Python's ssl sets one group
# (set_ecdh_curve), so a server uses the first listed name this build knows.
GO_CURVES = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
    "X25519MLKEM768": "X25519MLKEM768",
    "SecP256r1MLKEM768": "SecP256r1MLKEM768",
    "SecP384r1MLKEM1024": "SecP384r1MLKEM1024",
}

# Keys of Go's tls block this build does not implement: refused, because
# ignoring them (pinning, OCSP) would accept peers Go rejects.
_TLS_KEYS_NOT_SUPPORTED = ("pinned_certs", "ocsp_peer", "cert_store", "cert_match_by",
                           "cert_match", "cert_match_skip_invalid", "ca_certs_match", "certs",
                           "certificates", "connection_rate_limit",
                           "verify_cert_and_check_known_urls")


def load_ssl():
    """The `ssl` module, imported the first time TLS is configured (it
    brings OpenSSL into the process: 5 MB a plain server does without), or
    None on a Python built without it.  Every use of `ssl` follows a call
    of this, through TLSConfig's contexts."""
    global ssl
    if ssl is None:
        try:
            import ssl as module
        except ImportError:
            return None
        ssl = module
    return ssl


class TLSConfig:
    """One `tls {}` block, or the --tls flags (Go's TLSConfigOpts).

    `server_context()` builds the SSLContext for accepted connections once
    and raises ConfigError; `server_context(verify=False)` is the HTTPS
    monitor's, which never asks for a client certificate (Go clones the
    client config with NoClientCert for it).  `client_context()` is for
    the routes we dial.
    """

    FIELDS = ("cert_file", "key_file", "ca_file", "verify", "verify_and_map", "timeout",
              "handshake_first", "fallback", "ciphers", "curves", "min_version", "insecure")

    def __init__(self, cert_file: str = "", key_file: str = "", ca_file: str = "",
                 verify: bool = False, verify_and_map: bool = False,
                 timeout: float = TLS_TIMEOUT, handshake_first: bool = False,
                 fallback: float = 0.0, ciphers: list | None = None,
                 curves: list | None = None, min_version: str = "", insecure: bool = False):
        self.cert_file = cert_file
        self.key_file = key_file
        self.ca_file = ca_file
        self.verify = verify or verify_and_map
        self.verify_and_map = verify_and_map
        self.timeout = timeout                  # seconds a handshake may take
        self.handshake_first = handshake_first  # TLS before INFO
        self.fallback = fallback                # seconds to wait for that, then plain INFO
        self.ciphers = ciphers                  # Go names, or None for OpenSSL's defaults
        self.curves = curves                    # Go names, or None
        self.min_version = min_version          # "1.2", "1.3" or "" (1.2)
        self.insecure = insecure                # routes: do not verify the server we dial
        self.client_only = False                # a leaf remote's: our certificate optional
        self.contexts: dict = {}

    def __repr__(self) -> str:
        return "TLSConfig(%s)" % ", ".join("%s=%r" % (name, getattr(self, name))
                                           for name in self.FIELDS if getattr(self, name))

    def __eq__(self, other) -> bool:
        return isinstance(other, TLSConfig) and all(
            getattr(self, name) == getattr(other, name) for name in self.FIELDS)

    def server_context(self, verify: bool | None = None):
        """The ssl.SSLContext for connections we accept (built once)."""
        verify = self.verify if verify is None else verify
        if verify not in self.contexts:
            self.contexts[verify] = self.build_context(verify)
        return self.contexts[verify]

    def client_context(self):
        """The ssl.SSLContext for routes we dial (built once): our certificate,
        the peer's checked against ca_file and the host we dialed, unless
        `insecure` (Go's route TLS config as a tls.Client)."""
        if "client" not in self.contexts:
            if load_ssl() is None:
                raise ConfigError("TLS needs Python's ssl module, and this Python has none")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = not self.insecure
            self.configure(context, not self.insecure, ssl.Purpose.SERVER_AUTH)
            self.contexts["client"] = context
        return self.contexts["client"]

    def build_context(self, verify: bool):
        """A new server-side SSLContext from these settings (GenTLSConfig)."""
        if load_ssl() is None:
            raise ConfigError("TLS needs Python's ssl module, and this Python has none")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.configure(context, verify, ssl.Purpose.CLIENT_AUTH)
        return context

    def configure(self, context, verify: bool, purpose):
        """Give a new context our certificate, the CAs that vouch for peers
        (`purpose` picks the system's when ca_file is not set), versions,
        ciphers and curves."""
        if not self.cert_file and not self.client_only:
            raise ConfigError("missing 'cert_file' in TLS configuration")
        if not self.key_file and (self.cert_file or not self.client_only):
            raise ConfigError("missing 'key_file' in TLS configuration")
        context.minimum_version = (ssl.TLSVersion.TLSv1_3 if self.min_version == "1.3"
                                   else ssl.TLSVersion.TLSv1_2)
        context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)  # Go never renegotiates
        try:
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ValueError) as exc:
            missing = self.key_file if os.path.exists(self.cert_file) else self.cert_file
            raise ConfigError("error parsing X509 certificate/key pair: %s"
                              % _tls_file_error(exc, missing))
        if self.ca_file:
            try:
                context.load_verify_locations(self.ca_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(_tls_file_error(exc, self.ca_file))
        elif verify:
            context.load_default_certs(purpose)
        context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        if self.ciphers:
            self.set_ciphers(context)
        if self.curves:
            self.set_curve(context)

    def set_ciphers(self, context):
        """Restrict TLS 1.2 to the listed suites, named as Go names them."""
        names = []
        for name in self.ciphers:
            openssl_name = GO_CIPHER_SUITES[name]
            if openssl_name and not _openssl_cipher_available(openssl_name):
                raise ConfigError("cipher suite %s is not available in this build (%s)"
                                  % (name, ssl.OPENSSL_VERSION))
            if openssl_name:
                names.append(openssl_name)
        if names:
            context.set_ciphers(":".join(names))

    def set_curve(self, context):
        """The first listed curve this OpenSSL has (Python sets just one)."""
        for name in self.curves:
            try:
                context.set_ecdh_curve(GO_CURVES[name])
                return
            except ValueError:
                continue  # a curve this OpenSSL lacks: try the next preference
        raise ConfigError("none of the curve preferences %s is available in this build (%s)"
                          % (", ".join(self.curves), ssl.OPENSSL_VERSION))


def _openssl_cipher_available(openssl_name: str) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(openssl_name)
        return True
    except ssl.SSLError:
        return False


def _tls_file_error(exc: Exception, path: str) -> str:
    """A certificate or key file failure in Go's words where they are known."""
    if isinstance(exc, FileNotFoundError):
        return "open %s: no such file or directory" % path
    reason = getattr(exc, "reason", None)
    if reason == "KEY_VALUES_MISMATCH":
        return "tls: private key does not match public key"
    if reason in ("NO_START_LINE", "PEM_LIB") or "PEM" in str(exc):
        return "tls: failed to find any PEM data in input"
    return str(exc)


def _go_type(value) -> str:
    """The Go type a config value would have, for Go's conversion errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return "string"


def parse_tls_block(cm: ConfigMap, key: str, value, route: bool = False,
                    client: bool = False) -> TLSConfig:
    """Read a `tls {}` block (the clients', with `route` a cluster's, with
    `client` a leaf remote's, which dials only) into a TLSConfig and build
    its contexts, so bad files and names fail here (Go's parseTLS).  Routes
    always verify their peers, both ways (Go's parseCluster forces
    RequireAndVerifyClientCert)."""
    if not isinstance(value, ConfigMap):
        raise cm.error(key, "interface conversion: interface {} is %s, not "
                            "map[string]interface {}" % _go_type(value))
    tc = TLSConfig()
    for sub_key, sub_value in value.items():
        name = sub_key.lower()
        if name in ("cert_file", "key_file", "ca_file"):
            if not isinstance(sub_value, str):
                raise value.error(sub_key, "error parsing tls config, expected '%s' to be "
                                           "filename" % name)
            setattr(tc, name, sub_value)
        elif name in ("verify", "verify_and_map", "insecure", "allow_insecure_cipher_suites"):
            if not isinstance(sub_value, bool):
                raise value.error(sub_key, "error parsing tls config, expected '%s' to be a "
                                           "boolean" % name)
            if name != "allow_insecure_cipher_suites":  # OpenSSL's own list decides
                setattr(tc, name, sub_value)
        elif name == "timeout":
            tc.timeout = _tls_timeout(value, sub_key, sub_value)
        elif name in ("handshake_first", "first", "immediate"):
            tc.handshake_first, tc.fallback = _handshake_first(value, sub_key, sub_value)
        elif name in ("cipher_suites", "curve_preferences"):
            names = _tls_names(value, sub_key, sub_value)
            if name == "cipher_suites":
                tc.ciphers = names
            else:
                tc.curves = names
        elif name == "min_version":
            tc.min_version = _tls_min_version(value, sub_key, sub_value)
        elif name in _TLS_KEYS_NOT_SUPPORTED:
            raise value.error(sub_key, "error parsing tls config, %r is not supported by "
                                       "gnatsd.py" % name)
        elif value.is_variable(sub_key):
            continue  # a variable definition, used by another key
        else:
            raise value.error(sub_key, 'error parsing tls config, unknown field "%s"' % sub_key)
    tc.verify = tc.verify or tc.verify_and_map or route
    tc.client_only = client
    try:
        if client:
            tc.client_context()
        else:
            tc.server_context()
        if route:
            tc.client_context()
    except ConfigError as exc:
        raise cm.error(key, exc.message)
    return tc


def _tls_timeout(cm: ConfigMap, key: str, value) -> float:
    """`timeout`: seconds (int or float) or a duration string."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        seconds = _parse_duration_or_none(value)
        if seconds is not None:
            return seconds
        raise cm.error(key, "error parsing tls config, 'timeout' time: invalid duration "
                            '"%s"' % value)
    raise cm.error(key, "error parsing tls config, 'timeout' wrong type")


def _handshake_first(cm: ConfigMap, key: str, value) -> tuple:
    """`handshake_first`: true/false, "auto" (wait 50ms for a ClientHello,
    then send a plain INFO after all), or such a wait as a duration.
    Returns (handshake first?, fallback seconds)."""
    if isinstance(value, bool):
        return value, 0.0
    if not isinstance(value, str):
        raise cm.error(key, 'field "%s" should be a boolean or string, got %s'
                       % (key, _go_type(value)))
    word = value.lower()
    if word in ("true", "on"):
        return True, 0.0
    if word in ("false", "off"):
        return False, 0.0
    if word in ("auto", "auto_fallback"):
        return True, DEFAULT_TLS_HANDSHAKE_FIRST_FALLBACK_DELAY
    seconds = _parse_duration_or_none(value)
    if seconds is None:
        raise cm.error(key, 'field "%s"\'s value "%s" is invalid' % (key, value))
    return True, max(seconds, 0.0)


def _tls_names(cm: ConfigMap, key: str, value) -> list:
    """`cipher_suites` or `curve_preferences`: a non-empty array of Go names."""
    name = key.lower()
    if not isinstance(value, list):
        raise cm.error(key, "error parsing tls config, expected '%s' to be an array" % name)
    if not value:
        raise cm.error(key, "error parsing tls config, '%s' cannot be empty" % name)
    known = GO_CIPHER_SUITES if name == "cipher_suites" else GO_CURVES
    for item in value:
        if item not in known:
            raise cm.error(key, "unrecognized %s %s" % (
                "cipher" if name == "cipher_suites" else "curve preference", item))
    return list(value)


def _tls_min_version(cm: ConfigMap, key: str, value) -> str:
    if not isinstance(value, str):
        raise cm.error(key, "error parsing tls config: 'min_version' wrong type: %s" % value)
    if value in ("1.0", "1.1"):
        raise cm.error(key, "error parsing tls config: unsupported TLS version: TLS %s" % value)
    if value not in ("1.2", "1.3"):
        raise cm.error(key, "error parsing tls config: unknown version: %s" % value)
    return value


def _tls(cm: ConfigMap, key: str, value, opts: Options):
    """The clients' `tls {}` block."""
    opts.tls = parse_tls_block(cm, key, value)


# Config keys: name -> (Options attribute, converter), aliases included, as
# in the Go server's processConfigFileLine.  Keys are case-insensitive.
CONFIG_KEYS = {
    "server_name": ("server_name", _to_server_name),
    "host": ("host", _to_str),
    "net": ("host", _to_str),
    "port": ("port", _to_int),
    "client_advertise": ("client_advertise", _to_str),
    "debug": ("debug", _to_bool),
    "trace": ("trace", _to_bool),
    "logtime": ("logtime", _to_bool),
    "logtime_utc": ("logtime_utc", _to_bool),
    "logfile": ("log_file", _to_str),
    "log_file": ("log_file", _to_str),
    "logfile_size_limit": ("log_size_limit", _to_int),
    "log_size_limit": ("log_size_limit", _to_int),
    "syslog": ("syslog", _to_bool),
    "remote_syslog": ("remote_syslog", _to_str),
    "max_traced_msg_len": ("max_traced_msg_len", _to_int),
    "pidfile": ("pid_file", _to_str),
    "pid_file": ("pid_file", _to_str),
    "ports_file_dir": ("ports_file_dir", _to_str),
    "max_connections": ("max_connections", _to_int),
    "max_conn": ("max_connections", _to_int),
    "max_control_line": ("max_control_line", _to_size),
    "max_payload": ("max_payload", _to_size),
    "max_pending": ("max_pending", _to_size),
    "max_pending_size": ("max_pending", _to_size),
    "max_subscriptions": ("max_subscriptions", _to_int),
    "max_subs": ("max_subscriptions", _to_int),
    "ping_max": ("ping_max", _to_int),
    "no_auth_user": ("no_auth_user", _to_str),
    "system_account": ("system_account", _to_str),
    "system": ("system_account", _to_str),
    "max_closed_clients": ("max_closed_clients", _to_int),
    "allow_non_tls": ("allow_non_tls", _to_bool),
    "http_port": ("http_port", _to_int),
    "monitor_port": ("http_port", _to_int),
    "http_base_path": ("http_base_path", _to_str),
    "http_metrics": ("http_metrics", _to_bool),
    "http_metrics_prefix": ("http_metrics_prefix", _to_str),
    "https_port": ("https_port", _to_int),
}

def _server_tags(cm: ConfigMap, key: str, value, opts: Options):
    """`server_tags: "a"` or `["a", "b"]`: kept lower-cased and trimmed, as
    Go's TagList keeps them (shown in /varz `tags`)."""
    values = value if isinstance(value, list) else [value]
    tags = list(opts.server_tags or [])
    for tag in values:
        if not isinstance(tag, str):
            raise cm.error(key, "error parsing tags: unsupported type %s where string is "
                                "expected" % _go_type(tag))
        tag = tag.strip().lower()
        if tag and tag not in tags:
            tags.append(tag)
    opts.server_tags = tags


# -- operator mode: operator, resolver, resolver_preload, trusted --------------
#
#     operator: ./op.jwt            # or the JWT itself, or a list of either
#     resolver: MEMORY
#     resolver_preload { ACCOUNTPUBKEY...: eyJ0eXAiOi... }
#     system_account: ACCOUNTPUBKEY...
#
# Trust comes from JWTs instead of users (chapter 9's operator mode): the
# operator's JWT names the keys that sign accounts, and the preloaded
# account JWTs are every account there is (Go's MEMORY resolver; the URL and
# directory resolvers fetch them from elsewhere, which gnatsd.py does not).


def _operator(cm: ConfigMap, key: str, value, opts: Options):
    """`operator: <file or JWT>` or a list of them (Go's readOperatorJWT):
    each must be an operator JWT that signs itself or is signed by a key it
    lists.  The first operator's system account is the default one."""
    values = value if isinstance(value, list) else [value]
    opts.trusted_operators, opts.operator_jwts = [], []
    for item in values:
        if not isinstance(item, str):
            raise cm.error(key, "error parsing operators: unsupported type %s"
                           % _go_type(item))
        text = item
        if not item.startswith("eyJ"):          # not a JWT: a file holding one
            try:
                with open(item) as f:
                    text = f.read()
            except OSError as exc:
                raise cm.error(key, "error parsing operator JWT: open %s: %s"
                               % (item, (exc.strerror or str(exc)).lower()))
        try:
            claims = decode_jwt(decorated_jwt(text), "operator")
        except JWTError as exc:
            raise cm.error(key, "error parsing operator JWT: %s" % exc)
        opts.trusted_operators.append(claims)
        opts.operator_jwts.append(decorated_jwt(text))
    if len(opts.trusted_operators) == 1 and not opts.system_account:
        opts.system_account = opts.trusted_operators[0]["nats"].get("system_account", "")


def _resolver(cm: ConfigMap, key: str, value, opts: Options):
    """`resolver: MEMORY` (or MEM, or `{type: mem}`): the account JWTs are
    resolver_preload's.  Go's URL(...) and directory resolvers are refused."""
    kind = value.get("type", "") if isinstance(value, ConfigMap) else value
    if not isinstance(kind, str):
        raise cm.error(key, "error parsing operator resolver, wrong type %s" % _go_type(value))
    if kind.strip().upper() in ("MEM", "MEMORY"):
        opts.account_resolver = "MEMORY"
        return
    if kind.strip().upper().startswith("URL") or kind.strip().upper() in ("FULL", "CACHE"):
        raise cm.error(key, "the %s account resolver is not supported by gnatsd.py: use "
                            "MEMORY with resolver_preload" % kind.strip())
    raise cm.error(key, 'error parsing account resolver, should be MEM or  URL("url") or a '
                        'map containing dir and type state=[FULL|CACHE])')


def _resolver_preload(cm: ConfigMap, key: str, value, opts: Options):
    """`resolver_preload { <account public key>: <account JWT> }`; each JWT
    must decode as an account's (its signer is checked at login, as Go
    checks it then)."""
    if not isinstance(value, ConfigMap):
        raise cm.error(key, "preload should be a map of account_public_key:account_jwt")
    preload = opts.resolver_preload = {}
    for name, token in value.items():
        if not isinstance(token, str):
            raise value.error(name, "preload map value should be a string JWT")
        try:
            decode_jwt(token, "account")
        except JWTError:
            raise value.error(name, "invalid account JWT")
        preload[name] = token


def _trusted(cm: ConfigMap, key: str, value, opts: Options):
    """`trusted: [O...]`: operator keys trusted without an operator JWT."""
    values = value if isinstance(value, list) else [value]
    for item in values:
        if not isinstance(item, str):
            raise cm.error(key, "error parsing trusted: unsupported type in array %s"
                           % _go_type(item))
        if decode_nkey(item, NKEY_OPERATOR) is None:
            raise cm.error(key, 'trust key "%s" required to be a valid public operator nkey'
                           % item)
    opts.trusted_keys = list(values)


def validate_operators(opts: Options):
    """Go's validateTrustedOperators, for the merged options: with an
    operator there must be a resolver and no users or accounts of the
    config; the trusted keys become the operators' own and signing keys."""
    if not opts.trusted_operators:
        return
    if not opts.account_resolver:
        raise ConfigError("operators require an account resolver to be configured")
    if opts.accounts:
        raise ConfigError("operators do not allow Accounts to be configured directly")
    if opts.users or opts.username or opts.authorization:
        raise ConfigError("operators do not allow users to be configured directly")
    named = [op["nats"].get("system_account") for op in opts.trusted_operators]
    if opts.system_account and any(named) and opts.system_account not in named:
        raise ConfigError("system_account in config and operator JWT must be identical")
    keys = []
    for claims in opts.trusted_operators:
        if not claims["nats"].get("strict_signing_key_usage"):
            keys.append(claims["sub"])
        keys.extend(k for k in claims["nats"].get("signing_keys") or () if isinstance(k, str))
    for key in keys:
        if decode_nkey(key, NKEY_OPERATOR) is None:
            raise ConfigError('trusted Keys "%s" are required to be a valid public operator '
                              'nkey' % key)
    if opts.trusted_keys and opts.trusted_keys != keys:   # (validate may run twice)
        raise ConfigError("conflicting options for 'TrustedKeys' and 'TrustedOperators'")
    opts.trusted_keys = keys


def startup_problem(opts: Options) -> str:
    """What stops a server with these (valid) options from starting, or ""."""
    if opts.no_auth_user and not any(opts.no_auth_user in (u.username, u.nkey)
                                     for u in opts.users or ()):
        return ('no_auth_user: "%s" not present as user or nkey in authorization block or'
                ' account configuration' % opts.no_auth_user)
    known = opts.resolver_preload if opts.trusted_keys else opts.accounts
    if opts.system_account and opts.system_account not in (known or {}) \
            and opts.system_account != SYSTEM_ACCOUNT:
        return "error resolving system account: account missing"
    names = set(known or ()) | {GLOBAL_ACCOUNT, opts.system_account or SYSTEM_ACCOUNT}
    for remote in (opts.leafnodes.remotes if opts.leafnodes else ()):
        if remote.account and remote.account not in names:
            return 'cannot find local account "%s" specified in leafnode remote' % remote.account
    return ""


# Keys read by a function, because they set several options or may warn.
CONFIG_BLOCKS = {
    "operator": _operator,
    "operators": _operator,
    "root": _operator,
    "roots": _operator,
    "root_operator": _operator,
    "root_operators": _operator,
    "resolver": _resolver,
    "account_resolver": _resolver,
    "accounts_resolver": _resolver,
    "resolver_preload": _resolver_preload,
    "trusted": _trusted,
    "trusted_keys": _trusted,
    "server_tags": _server_tags,
    "listen": _listen,
    "http": _http,
    "https": _https,
    "tls": _tls,
    "authorization": _authorization,
    "accounts": _accounts,
    "cluster": _cluster,
    "websocket": _websocket,
    "ws": _websocket,
    "leafnodes": _leafnodes,
    "leaf": _leafnodes,
    "ping_interval": _duration("ping_interval"),
    "write_deadline": _duration("write_deadline"),
    "lame_duck_duration": _duration("lame_duck_duration"),
    "lame_duck_grace_period": _duration("lame_duck_grace_period"),
}


def options_from_config(path: str) -> Options:
    """Read a config file into Options (Go's ProcessConfigFile)."""
    cm = parse_config(path)
    if not cm:
        raise ConfigError("config has no values or is empty", path)
    opts = Options(config_file=path, warnings=[])
    try:
        _process_config(cm, path, opts)
    except ConfigError as exc:
        exc.listed = True
        raise
    return opts


def _process_config(cm: ConfigMap, path: str, opts: Options):
    """Each top-level key into `opts` (Go's processConfigFileLine)."""
    for key, value in cm.items():
        name = key.lower()
        if name in CONFIG_KEYS:
            attr, convert = CONFIG_KEYS[name]
            setattr(opts, attr, convert(cm, key, value))
        elif name in CONFIG_BLOCKS:
            CONFIG_BLOCKS[name](cm, key, value, opts)
        elif name in UNSUPPORTED_KEYS:
            opts.warnings.append("%s:%d: %s" % (cm.files.get(key, path), cm.position(key)[0],
                                                UNSUPPORTED_KEYS[name]))
        elif cm.is_variable(key):
            continue  # a variable definition, used by another key
        else:
            raise cm.error(key, 'unknown field "%s"' % key)
    if opts.lame_duck_duration is not None and opts.lame_duck_duration < 30:
        key = next(k for k in cm if k.lower() == "lame_duck_duration")  # keys ignore case
        raise cm.error(key, "invalid lame_duck_duration of %s, minimum is 30 seconds"
                       % format_duration(opts.lame_duck_duration))


# ============================================================================
# 9. Authentication, permissions and accounts
# ============================================================================
#
# Who may connect, and what they may do once in.  `authenticate` turns a
# CONNECT's credentials (or, with verify_and_map, a TLS certificate) into a
# user, its permissions and its account; bcrypt hashes are checked off the
# loop (SecretChecker).  Permissions compile a user's allow and deny lists
# into sublists of their own (ClientPermissions).  Accounts are subject
# spaces, each with a sublist, joined by stream and service imports.  The
# client (chapter 5) calls into this chapter; nothing here reads a socket.
# The chapter ends with how a peer's CONNECT and INFO JSON is read, as Go's
# encoding/json reads it (read_go_json).  Go twins: server/auth.go,
# server/accounts.go.


def authenticate(opts: Options, credentials: dict, identities=(),
                 secret_equal=None, nonce: bytes = b"") -> tuple | None:
    """Who do these CONNECT credentials log in as?  (user name, Permissions
    or None, account name or ""), or None when they are refused.  With
    verify_and_map the client's certificate names the user instead: the
    first of `identities` (cert_identities) that names one, whose password,
    if it has one, the CONNECT must still give (as Go 2.15 checks).
    `secret_equal` compares secrets (a connection's, which keeps bcrypt off
    the loop; `_secret_equal` by default).  An nkey user logs in with its
    public key and its signature of `nonce` (the INFO's)."""
    secret_equal = secret_equal or _secret_equal
    if not opts.auth_required:
        return ("", None, "")
    nkey = credentials.get("nkey")
    if nkey and opts.users:
        for user in opts.users:
            if user.nkey and user.nkey == nkey:
                if nkey_signed(nkey, credentials.get("sig"), nonce):
                    return (user.nkey, user.permissions, user.account)
                return None
        return None
    if maps_certificates(opts):
        user = map_certificate_user(opts.users, identities)
        if user is None or not secret_equal(credentials.get("pass", ""), user.password):
            return None
        return (user.username, user.permissions, user.account)
    if opts.users:
        name, check = credentials.get("user"), True
        if opts.no_auth_user and not credentials:
            name, check = opts.no_auth_user, False   # no credentials: the no_auth_user
        for user in opts.users:
            if user.username == name and not user.nkey:
                if check and not secret_equal(credentials.get("pass"), user.password):
                    return None
                return (user.username, user.permissions, user.account)
            if not check and user.nkey and user.nkey == name:
                return (user.nkey, user.permissions, user.account)   # no_auth_user is an nkey
        return None
    if opts.authorization:
        ok = secret_equal(credentials.get("auth_token"), opts.authorization)
    else:
        ok = (secret_equal(credentials.get("user"), opts.username)
              and secret_equal(credentials.get("pass"), opts.password))
    user = credentials.get("user")
    return (user if isinstance(user, str) else "", None, "") if ok else None


def maps_certificates(opts: Options) -> bool:
    """Do client certificates name the users (`tls { verify_and_map }` with
    a users list; Go's tlsMap, which a single user or a token ignores)?"""
    return bool(opts.users) and opts.tls is not None and opts.tls.verify_and_map


def map_certificate_user(users: list, identities) -> User | None:
    """The user the first of a certificate's names (cert_identities' order)
    names.  The first name that is a distinguished name is the subject, and
    matches a user whose name is the same DN in any RDN order, spacing or
    attribute case (Go's DistinguishedNameMatch); other names match exactly."""
    by_name = {user.username: user for user in users}
    subject_tried = False
    for name in identities:
        if name in by_name:
            return by_name[name]
        rdns = None if subject_tried else _dn_rdns(name)
        if rdns is not None:
            subject_tried = True
            for user in users:
                if _dn_rdns(user.username) == rdns:
                    return user
    return None


# One attribute of a DN: a type (a name or an OID), "=", a value (escapes kept).
_DN_ATTRIBUTE_RE = re.compile(r"\s*([A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)\s*=(.*)", re.S)


def check_reloaded_auth(client: "Client", old: Options):
    """The work of Client.reload_config: refresh tracing and the PUB fast
    path, close a client whose login no longer passes, and drop the
    subscriptions the new permissions refuse.  Raises
    _SecretCheckPending when a bcrypt answer is needed."""
    client.trace = client.server.trace
    if not client.connect_received:
        client.awaiting_auth = client.auth_options().auth_required
        return
    client.refresh_pub_path()
    opts = client.server.options
    if old.username and client.user == old.username and \
            authenticate(opts, client.credentials or {}, (), client.secret_equal) is None:
        client.close(CLIENT_CLOSED)
        return
    if client.user and opts.users and all(u.username != client.user and
                                          u.nkey != client.user for u in opts.users):
        client.close(CLIENT_CLOSED)       # its user (or nkey) is gone
        return
    if client.check_auth() and client.perms is not None:
        remove_unauthorized_subs(client)


def remove_unauthorized_subs(client: "Client"):
    """Drop the subscriptions the permissions no longer allow, telling
    the client and the log about each."""
    for sub in list(client.subs.values()):
        if client.perms.can_subscribe(sub.subject, sub.queue):
            continue
        client.unsubscribe(sub)
        what = go_quote(sub.subject)
        if sub.queue is not None:
            what += " using queue %s" % go_quote(sub.queue)
        sid = sub.sid.decode("utf-8", "replace")
        client.send_err('Permissions Violation for Subscription to %s (sid "%s")' % (what, sid))
        client.server.log.info('Removed sub %s (sid "%s") for User %s - not authorized',
                               what, sid, go_quote(client.user.encode()))


def certificate_user(client: "Client", opts: Options) -> str:
    """verify_and_map: the user `client`'s certificate names, or "",
    with Go's log lines (checkClientTLSCertSubject)."""
    user = map_certificate_user(opts.users, client.tls_identities)
    names = client.tls_identities
    if user is None:
        if not names:
            client.debug("User required in cert, none found")
            return ""
        subject = go_quote((names[-1] if "=" in names[-1] else "").encode())
        client.debug("DistinguishedNameMatch could not be used for auth [%s]", subject)
        client.debug("User in cert [%s], not found", subject)
        return ""
    if client.server.log.isEnabledFor(logging.DEBUG):
        client.debug("Using %s for auth [%s]",
                   cert_name_source(client.tls.sslobj.getpeercert(), user.username),
                   go_quote(user.username.encode()))
    given = (client.credentials or {}).get("user")
    if given:
        client.server.log.warning("User %s found in connect proto, but user required from "
                                  "cert", go_quote(str(given).encode()))
    return user.username


def _dn_rdns(text: str) -> tuple | None:
    """A DN as RDN text parses it (Go's ldap.ParseDN), order aside: a sorted
    tuple of RDNs, each a sorted tuple of (TYPE, value); None if `text` is
    not a DN."""
    rdns = []
    for rdn in _split_unescaped(text, ",;"):
        attributes = []
        for part in _split_unescaped(rdn, "+"):
            m = _DN_ATTRIBUTE_RE.fullmatch(part)
            if m is None:
                return None
            value = re.sub(r"\\(.)", r"\1", m.group(2).strip())
            attributes.append((m.group(1).upper(), value))
        rdns.append(tuple(sorted(attributes)))
    return tuple(sorted(rdns))


def _split_unescaped(text: str, separators: str) -> list:
    """`text` cut at each separator not escaped by a backslash."""
    parts, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] in separators:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def cert_name_source(cert: dict, name: str) -> str:
    """Where in the certificate `name` came from, in Go's debug words."""
    sans = cert.get("subjectAltName", ())
    for kind, source in (("email", "email found in cert"), ("DNS", "SAN found in cert"),
                         ("URI", "URI found in cert")):
        if (kind, name) in sans:
            return source
    return "DistinguishedNameMatch"


# -- nkeys: Ed25519 public keys as NATS writes them --
#
# An nkey is base32 (no padding) of a prefix byte naming its kind, the 32
# bytes of an Ed25519 public key, and a CRC16 (XMODEM, little endian) of
# both: "U..." a user, "N..." a server.  A user proves it holds the key by
# signing the nonce of our INFO (Go's nkey.go and auth.go; the nkeys
# libraries).  The standard library has no Ed25519: ed25519_verify is RFC
# 8032's verification in plain Python (the `cryptography` package's, when
# it is installed, is used instead: the same answer, faster).

# The prefix byte of each kind of key: its first base32 letter.
NKEY_SEED = 18 << 3         # "S..." a seed (private), followed by its kind's letter
NKEY_OPERATOR = 14 << 3     # "O..."
NKEY_ACCOUNT = 0            # "A..."
NKEY_USER = 20 << 3         # "U..."
NKEY_SERVER = 13 << 3       # "N..."
NKEY_CLUSTER = 2 << 3       # "C..."
NONCE_RAW_LEN = 11          # random bytes of a nonce (15 base64url characters)


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), as nkeys check it."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        crc &= 0xFFFF
    return crc


def _nkey_body(text, length: int) -> bytes | None:
    """The bytes an nkey or seed of `length` characters encodes, its CRC16
    checked and dropped, or None (bad base32, length or checksum)."""
    if not isinstance(text, str) or len(text) != length or not text.isalnum():
        return None
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (ValueError, TypeError):
        return None
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    return body if crc16_xmodem(body) == crc else None


def decode_nkey(text: str, prefix: int) -> bytes | None:
    """The 32 key bytes of public nkey `text` of kind `prefix`, or None if
    it is not one (bad base32, length, kind or checksum)."""
    body = _nkey_body(text, 56)
    if body is None or body[0] != prefix:
        return None
    return body[1:]


def encode_nkey(prefix: int, key: bytes) -> str:
    """The public nkey of kind `prefix` for 32 key bytes."""
    raw = bytes([prefix]) + key
    return base64.b32encode(raw + crc16_xmodem(raw).to_bytes(2, "little")).decode().rstrip("=")


def decode_seed(text) -> tuple | None:
    """(kind prefix, 32 seed bytes) of an nkey seed ("SU...", "SA..."), or
    None.  A seed's first two bytes pack the seed prefix and its kind's:
    0b10010kkk 0bkkkkk000 (nkeys' EncodeSeed)."""
    body = _nkey_body(text, 58)
    if body is None or body[0] & 0xF8 != NKEY_SEED:
        return None
    return ((body[0] & 7) << 5) | (body[1] >> 3), body[2:]


def nkey_sign(seed: str, data: bytes) -> tuple:
    """(public nkey, base64url signature of `data`) for an nkey seed, as a
    client answers a nonce (leaf remotes with a credentials file)."""
    decoded = decode_seed(seed)
    if decoded is None:
        raise ValueError("not a valid nkey seed")
    kind, raw = decoded
    public = encode_nkey(kind, ed25519_public_key(raw))
    return public, base64.urlsafe_b64encode(ed25519_sign(raw, data)).rstrip(b"=").decode()


def _new_server_id() -> str:
    """A server id as Go makes one (nkeys.CreateServer): the public nkey
    ("N...", chapter 9) of a fresh Ed25519 seed, which is then dropped:
    the server signs nothing with it."""
    return encode_nkey(NKEY_SERVER, ed25519_public_key_once(os.urandom(32)))


def new_nonce() -> str:
    """A connection's nonce for nkey users to sign (Go's generateNonce)."""
    return base64.urlsafe_b64encode(os.urandom(NONCE_RAW_LEN)).rstrip(b"=").decode()


def nkey_signed(nkey: str, sig, nonce: bytes) -> bool:
    """Did the holder of user nkey `nkey` sign `nonce`?  `sig` is base64url
    (unpadded) or standard base64, as Go accepts it."""
    public = decode_nkey(nkey, NKEY_USER)
    if public is None or not sig or not nonce:
        return False
    signature = signature_bytes(sig)
    return signature is not None and ed25519_verify(public, nonce, signature)


def signature_bytes(sig) -> bytes | None:
    """A CONNECT's `sig` as bytes: base64url without padding, else
    standard base64 (Go's RawURLEncoding, then StdEncoding); None if it is
    neither."""
    if not isinstance(sig, str) or not sig.isascii():
        return None
    if "=" not in sig and len(sig) % 4 != 1:
        try:
            return base64.b64decode(sig + "=" * (-len(sig) % 4), altchars=b"-_", validate=True)
        except ValueError:
            pass
    if len(sig) % 4 == 0:
        try:
            return base64.b64decode(sig, validate=True)
        except ValueError:
            pass
    return None


# Edwards25519 (RFC 8032 section 5.1): the field prime, the group order,
# the curve constant d (and 2d, as the additions use it), sqrt(-1) and the
# base point B's affine coordinates.
#
# Speed, for the pure path: a 256-bit multiplication with its reduction
# costs CPython ~0.35 us, a point doubling or addition (7 or 8 of them, in
# Python bytecode) ~3-4 us, so what counts is how many of those there are:
#  - points are extended twisted Edwards coordinates (X:Y:Z:T), a = -1
#    (add-2008-hwcd-3, dbl-2008-hwcd), inlined in one loop (_ed_sum) with
#    the coordinates in local variables: no calls, no tuples per step;
#    T = E*H is only multiplied out when an addition needs it, so a run
#    of doublings skips it;
#  - B's multiples come from a table made at first use (_ed_base_table):
#    the odd multiples 1B..127B of 2**(32j)*B, j < 8, affine, in the
#    (y+x, y-x, 2dxy) form an addition wants: [k]B is 32 doublings and ~32
#    additions (signing, key derivation);
#  - verification checks [v]([S]B - [h]A - R) == 0 with h*v = u (mod 8L)
#    and u, v of ~128 bits (a lattice reduction, _ed_halve): [vS]B - [u]A
#    - [v]R is 128 doublings shared by four ~128-bit scalars in wNAF form
#    (Straus), half the doublings of [S]B - [h]A; v odd keeps the answer
#    the cofactorless one of Go's crypto/ed25519 (see ed25519_verify);
#  - what is left is a square root for each point decoded (pow(), ~0.12 ms):
#    R's every time, A's once (_ED_KEYS keeps decoded public keys: the same
#    user or account keys sign again and again); an inverse is pow(z, -1, p)
#    (Euclid's, ~0.02 ms), not z**(p-2).
_ED_P = 2 ** 255 - 19
_ED_L = 2 ** 252 + 27742317777372353535851937790883648493
_ED_D = -121665 * pow(121666, _ED_P - 2, _ED_P) % _ED_P
_ED_D2 = 2 * _ED_D % _ED_P
_ED_I = pow(2, (_ED_P - 1) // 4, _ED_P)
_ED_BY = 4 * pow(5, _ED_P - 2, _ED_P) % _ED_P
_ED_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202

_ED_BASE_W = 8           # wNAF width of B's table: odd multiples up to 127B
_ED_BASE_STEP = 32       # the table's bases are B * 2**(32j), j < 8
_ED_VAR_W = 5            # wNAF width for A and R: odd multiples up to 15P

_ED_BASE: list = []      # B's table, one list per base (_ed_base_table)
_ED_KEYS: dict = {}      # decoded public keys (32 bytes -> (x, y)), ~250 B each
_ED_KEYS_MAX = 256       # cleared when full
_ED_SHA512 = None        # sha512 constructor, looked up at first use
_ED_NATIVE = None        # the `cryptography` package's Ed25519, False if absent


def _ed_double(x: int, y: int, z: int) -> tuple:
    """2(X:Y:Z) as (X, Y, Z, T) (dbl-2008-hwcd, a = -1, as in _ed_sum)."""
    p = _ED_P
    a, b = x * x % p, y * y % p
    e = x * y * 2 % p
    g, h = b - a, a + b
    f = z * z * 2 % p - g
    return e * f % p, g * h % p, f * g % p, e * h % p


def _ed_add(point: tuple, cached: tuple) -> tuple:
    """(X, Y, Z, T) + a point in _ed_cached's form (add-2008-hwcd-3)."""
    p = _ED_P
    x, y, z, t = point
    yp, ym, z2, t2d = cached
    a = (y - x) * ym % p
    b = (y + x) * yp % p
    c = t * t2d % p
    d = z * z2 % p
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % p, g * h % p, f * g % p, e * h % p


def _ed_cached(point: tuple) -> tuple:
    """(Y+X, Y-X, 2Z, 2dT): what an addition reads of its second point."""
    p = _ED_P
    x, y, z, t = point
    return (y + x) % p, (y - x) % p, 2 * z % p, t * _ED_D2 % p


def _ed_odd_multiples(point: tuple, count: int) -> list:
    """P, 3P, 5P, ... (count of them) of (X, Y, Z, T) point P."""
    twice = _ed_cached(_ed_double(*point[:3]))
    multiples = [point]
    for _ in range(count - 1):
        multiples.append(_ed_add(multiples[-1], twice))
    return multiples


def _ed_signed_table(cached: list) -> list:
    """The table a wNAF digit d indexes: table[d] is dP for d = 1, 3, 5 ...,
    and table[-d] (Python's from-the-end index) is -dP, whose form is dP's
    with Y+X and Y-X swapped and 2dT negated."""
    table = [None] * (4 * len(cached))
    for i, entry in enumerate(cached):
        table[2 * i + 1] = entry
        table[-2 * i - 1] = (entry[1], entry[0]) + entry[2:-1] + (_ED_P - entry[-1],)
    return table


def _ed_base_table() -> list:
    """B's table: for each base B * 2**(32j), its odd multiples up to 127,
    affine (Z = 1: one multiplication less per addition) as (y+x, y-x, 2dxy),
    signed (_ed_signed_table).  512 points, ~240 KB, made in ~6 ms."""
    if _ED_BASE:
        return _ED_BASE
    p = _ED_P
    count = 1 << (_ED_BASE_W - 2)
    points = []
    base = (_ED_BX, _ED_BY, 1, _ED_BX * _ED_BY % p)
    for j in range(256 // _ED_BASE_STEP):
        if j:
            for _ in range(_ED_BASE_STEP):
                base = _ed_double(*base[:3])
        points.extend(_ed_odd_multiples(base, count))
    # Affine: one inversion for all the Zs (Montgomery's trick).
    prefix = [1]
    for point in points:
        prefix.append(prefix[-1] * point[2] % p)
    inverse = pow(prefix[-1], -1, p)
    affine = [None] * len(points)
    for i in range(len(points) - 1, -1, -1):
        x, y, z, _ = points[i]
        zi = inverse * prefix[i] % p        # 1/z
        inverse = inverse * z % p
        x, y = x * zi % p, y * zi % p
        affine[i] = ((y + x) % p, (y - x) % p, x * y % p * _ED_D2 % p)
    tables = [_ed_signed_table(affine[i:i + count]) for i in range(0, len(affine), count)]
    _ED_BASE[:] = tables
    return _ED_BASE


def _ed_sum(fixed: list, var: list) -> tuple:
    """(X, Y, Z) of the sum of k_i P_i (Straus: one run of doublings for
    all).  `fixed` holds (k, table) with B's affine tables (_ED_BASE_W wide),
    `var` (k, table) with _ed_signed_table(_ed_cached(...)) tables of odd
    multiples up to (2**(_ED_VAR_W-1) - 1)P."""
    # The additions to make after each doubling, by bit position: the
    # table entries of the scalars' width-w NAF digits (odd, below 2**(w-1)
    # in absolute value, at least w-1 zeros between two of them).
    size = max(k.bit_length() for k, _ in fixed + var) + 1
    fplan, vplan = [None] * size, [None] * size
    for terms, plan, w in ((fixed, fplan, _ED_BASE_W), (var, vplan, _ED_VAR_W)):
        full = 1 << w
        half, mask = full >> 1, full - 1
        for k, table in terms:
            pos = 0
            while k:
                if k & 1:
                    d = k & mask
                    if d >= half:
                        d -= full
                    adds = plan[pos]
                    if adds is None:
                        plan[pos] = [table[d]]
                    else:
                        adds.append(table[d])
                    k = (k - d) >> w          # k - d has w low zero bits
                    pos += w
                else:
                    zeros = (k & -k).bit_length() - 1
                    k >>= zeros
                    pos += zeros
    top = size - 1
    while top > 0 and fplan[top] is None and vplan[top] is None:
        top -= 1
    p = _ED_P
    # (X:Y:Z) with T = E*H; start at the neutral element (0:1:1), T = 0.
    x, y, z, e, h = 0, 1, 1, 0, 1
    for i in range(top, -1, -1):
        # dbl-2008-hwcd, all four coordinates negated (the same point):
        # E = 2XY, F = 2Z^2 - G, G = Y^2 - X^2, H = X^2 + Y^2.
        a, b = x * x % p, y * y % p
        e = x * y * 2 % p
        g, h = b - a, a + b
        f = z * z * 2 % p - g
        x, y, z = e * f % p, g * h % p, f * g % p
        adds = fplan[i]
        if adds:
            for yp, ym, t2d in adds:      # + affine point: Z2 = 1
                a = (y - x) * ym % p
                b = (y + x) * yp % p
                c = e * h % p * t2d % p
                d = z + z
                e, f, g, h = b - a, d - c, d + c, b + a
                x, y, z = e * f % p, g * h % p, f * g % p
        adds = vplan[i]
        if adds:
            for yp, ym, z2, t2d in adds:
                a = (y - x) * ym % p
                b = (y + x) * yp % p
                c = e * h % p * t2d % p
                d = z * z2 % p
                e, f, g, h = b - a, d - c, d + c, b + a
                x, y, z = e * f % p, g * h % p, f * g % p
    return x, y, z


def _ed_mul_base(k: int) -> tuple:
    """(X, Y, Z) of [k]B, 0 <= k < 2**256: k's 32-bit pieces times B's
    bases in the table, in one run of 32 doublings."""
    tables = _ed_base_table()
    mask = (1 << _ED_BASE_STEP) - 1
    return _ed_sum([(k >> (_ED_BASE_STEP * j) & mask, table)
                    for j, table in enumerate(tables)], [])


def _ed_encode(x: int, y: int, z: int) -> bytes:
    """The 32-byte encoding of (X:Y:Z): y, with x's parity in the top bit."""
    p = _ED_P
    zi = pow(z, -1, p)     # Euclid's: ~7 times faster than z**(p-2)
    x, y = x * zi % p, y * zi % p
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _ed_decode(data: bytes) -> tuple | None:
    """Affine (x, y) of a 32-byte encoding, or None if it is not a point's
    canonical encoding (RFC 8032 5.1.3: y >= p, no x, or x = 0 with the
    sign bit set)."""
    p = _ED_P
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= p:
        return None
    # x = sqrt(u/v) = u v^3 (u v^7)^((p-5)/8), one exponentiation for both
    # the inverse and the root; then v x^2 is u (a root), -u (times
    # sqrt(-1) it is) or neither (no point).
    yy = y * y % p
    u = (yy - 1) % p
    v = (_ED_D * yy + 1) % p
    v3 = v * v % p * v % p
    uv3 = u * v3 % p
    x = uv3 * pow(uv3 * v3 % p * v % p, (p - 5) // 8, p) % p
    vxx = v * x % p * x % p
    if vxx != u:
        if vxx != p - u:
            return None
        x = x * _ED_I % p
    if x & 1 != sign:
        if not x:
            return None
        x = p - x
    return x, y


def _ed_halve(h: int) -> tuple:
    """(u, v), v odd, u and |v| of ~128 bits, with u = h*v (mod 8L): the
    extended Euclidean algorithm on (8L, h), stopped halfway.  Each row
    keeps r = h*t (mod 8L); two neighbouring t are coprime, so one is odd."""
    r0, r1, t0, t1 = 8 * _ED_L, h, 0, 1
    half = 1 << 128
    while r1 >= half:
        q = r0 // r1
        r0, r1, t0, t1 = r1, r0 - q * r1, t1, t0 - q * t1
    # |t1| <= 8L / r0, about 2**127, and r1 < 2**128; r0 is larger, rarely
    # by much (then the loop of _ed_sum is longer: still the right answer).
    return (r1, t1) if t1 & 1 else (r0, t0)


def _ed_sha512(*parts: bytes) -> bytes:
    """SHA-512 of the concatenated parts.  CPython's own sha512 module
    (_sha2 from 3.12, _sha512 before) when it is built: hashlib loads
    OpenSSL's libcrypto (~4 MB), which only TLS users need."""
    global _ED_SHA512
    if _ED_SHA512 is None:
        try:
            from _sha2 import sha512
        except ImportError:
            try:
                from _sha512 import sha512
            except ImportError:
                from hashlib import sha512
        _ED_SHA512 = sha512
    digest = _ED_SHA512()
    for part in parts:
        digest.update(part)
    return digest.digest()


def _ed_native():
    """The `cryptography` package's Ed25519 (the same answers, 5 to 10
    times faster) as (private key class, public key class, InvalidSignature,
    raw encoding, raw format), or False: looked up once."""
    global _ED_NATIVE
    if _ED_NATIVE is None:
        try:
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives.asymmetric.ed25519 import (
                Ed25519PrivateKey, Ed25519PublicKey)
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        except Exception:           # absent, or installed but broken
            _ED_NATIVE = False
        else:
            _ED_NATIVE = (Ed25519PrivateKey, Ed25519PublicKey, InvalidSignature,
                          Encoding.Raw, PublicFormat.Raw)
    return _ED_NATIVE


def _ed_secret(seed: bytes) -> tuple:
    """(secret scalar, nonce prefix) of a 32-byte seed (RFC 8032 5.1.5)."""
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    digest = _ed_sha512(seed)
    scalar = int.from_bytes(digest[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    return scalar, digest[32:]


def ed25519_public_key(seed: bytes) -> bytes:
    """The 32-byte public key of a 32-byte Ed25519 seed (RFC 8032 5.1.5)."""
    native = _ed_native()
    if native:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return native[0].from_private_bytes(bytes(seed)).public_key().public_bytes(
            native[3], native[4])
    # B has order L: [a]B = [a mod L]B, and a mod L fits the table.
    return _ed_encode(*_ed_mul_base(_ed_secret(seed)[0] % _ED_L))


def ed25519_public_key_once(seed: bytes) -> bytes:
    """ed25519_public_key in plain Python without B's table (~2 ms): for a
    key made once, such as the server's own at startup, neither the table's
    240 KB nor the `cryptography` package's import are worth it."""
    p = _ED_P
    odd = _ed_odd_multiples((_ED_BX, _ED_BY, 1, _ED_BX * _ED_BY % p), 1 << (_ED_VAR_W - 2))
    table = _ed_signed_table([_ed_cached(m) for m in odd])
    return _ed_encode(*_ed_sum([], [(_ed_secret(seed)[0] % _ED_L, table)]))


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """RFC 8032's deterministic 64-byte signature of `message` by the key
    of a 32-byte seed (5.1.6)."""
    native = _ed_native()
    if native:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return native[0].from_private_bytes(bytes(seed)).sign(bytes(message))
    scalar, prefix = _ed_secret(seed)
    public = _ed_encode(*_ed_mul_base(scalar % _ED_L))
    r = int.from_bytes(_ed_sha512(prefix, message), "little") % _ED_L
    big_r = _ed_encode(*_ed_mul_base(r))
    h = int.from_bytes(_ed_sha512(big_r, public, message), "little") % _ED_L
    return big_r + ((r + h * scalar) % _ED_L).to_bytes(32, "little")


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """RFC 8032's Ed25519 verification: is `signature` the holder of
    `public`'s signature of `message`?  Cofactorless, as Go's
    crypto/ed25519: [S]B - [h]A must be R itself, S < L."""
    if len(public) != 32 or len(signature) != 64:
        return False
    native = _ed_native()
    if native:
        try:
            native[1].from_public_bytes(bytes(public)).verify(bytes(signature), bytes(message))
            return True
        except (native[2], ValueError):
            return False
    p, order = _ED_P, _ED_L
    s = int.from_bytes(signature[32:], "little")
    if s >= order:
        return False
    public = bytes(public)
    a = _ED_KEYS.get(public)
    if a is None:
        a = _ed_decode(public)
        if a is None:
            return False
        if len(_ED_KEYS) >= _ED_KEYS_MAX:
            _ED_KEYS.clear()
        _ED_KEYS[public] = a
    r = _ed_decode(signature[:32])       # Go compares R's bytes: canonical only
    if r is None:
        return False
    h = int.from_bytes(_ed_sha512(signature[:32], public, message), "little") % order
    # Q = [S]B - [h]A - R must be 0.  With u = h*v (mod 8L), every point's
    # order dividing 8L: [v]Q = [vS mod L]B - [u]A - [v]R.  [v]Q = 0 means
    # Q's order divides v, and v odd, 0 < |v| < L, leaves only Q = 0: the
    # same answer as Q itself, for any A and R, small-order parts included.
    u, v = _ed_halve(h)
    w = v * s % order
    (ax, ay), (rx, ry) = a, r
    if v > 0:
        rx = p - rx                       # [v](-R)
    else:
        v = -v                            # [-v](R)
    var = []
    for k, x, y in ((u, p - ax, ay), (v, rx, ry)):   # [u](-A)
        if k:
            odd = _ed_odd_multiples((x, y, 1, x * y % p), 1 << (_ED_VAR_W - 2))
            var.append((k, _ed_signed_table([_ed_cached(m) for m in odd])))
    tables = _ed_base_table()
    fixed = [(w & ((1 << 128) - 1), tables[0]), (w >> 128, tables[128 // _ED_BASE_STEP])]
    x, y, z = _ed_sum(fixed, var)
    return x == 0 and y == z


# -- operator mode: JWTs signed by a trusted operator --------------------------
#
# In operator mode (Go's "decentralized auth") no user is configured.  The
# config trusts an operator's key (its JWT names the keys that may sign for
# it); every account is a JWT one of those keys signed (the MEMORY resolver:
# resolver_preload lists them); a user logs in with a JWT that its account,
# or one of the account's signing keys, signed, and with its signature of
# our INFO's nonce, as an nkey user does.  A JWT is three base64url
# segments: a header {"typ":"JWT","alg":"ed25519-nkey"}, the claims, and
# the issuer's Ed25519 signature of the first two.  The claims name the
# issuer (iss), the subject's public key (sub), times (iat, exp, nbf) and,
# under "nats", the JWT's type and what it grants: an account's exports,
# imports, limits, signing keys, revocations and default permissions; a
# user's permissions, limits, allowed connection types and source networks
# (the nats-io/jwt v2 library's claims).  Chapter 5's Client logs in with
# `jwt_login` and is closed when its JWT (or its account's) expires.

class JWTError(ValueError):
    """A JWT that does not decode, or whose signature does not verify."""


# The key kinds that may issue (and be the subject of) each kind of JWT.
JWT_ISSUERS = {"operator": NKEY_OPERATOR, "account": NKEY_OPERATOR, "user": NKEY_ACCOUNT}
JWT_SUBJECTS = {"operator": NKEY_OPERATOR, "account": NKEY_ACCOUNT, "user": NKEY_USER}

# The connection types a user JWT may allow (jwt's ConnectionType*).
CONNECTION_TYPES = ("STANDARD", "WEBSOCKET", "LEAFNODE", "LEAFNODE_WS", "MQTT", "MQTT_WS",
                    "IN_PROCESS")

# User JWTs that logged in, by their text: a JWT's signature covers all of
# it, so one that passed once needs no second Ed25519 check (a client
# reconnecting with the same credentials).  Only JWTs of trusted accounts
# get in (remember_jwt), and at most _VERIFIED_JWTS_BYTES of them.
_VERIFIED_JWTS: dict = {}
_VERIFIED_JWTS_BYTES = 1 << 20
_verified_jwts_size = 0


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def decode_jwt(token: str, kind: str) -> dict:
    """The claims of a JWT of `kind` ("operator", "account", "user") whose
    issuer's signature verifies and whose claims have the jwt library's
    types; raises JWTError with the library's words.  Times are not checked
    here (jwt_time_error)."""
    if not isinstance(token, str):
        raise JWTError("expected 3 chunks")
    claims = _VERIFIED_JWTS.get(token)
    if claims is not None and claims["nats"].get("type") == kind:
        return claims
    parts = token.split(".")
    if len(parts) != 3:
        raise JWTError("expected 3 chunks")
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, TypeError):
        raise JWTError("illegal base64 data")
    if not isinstance(header, dict) or str(header.get("typ", "")).upper() != "JWT":
        raise JWTError("not supported type")
    if header.get("alg") != "ed25519-nkey":
        raise JWTError('unexpected "%s" algorithm' % header.get("alg"))
    if not isinstance(claims, dict) or not isinstance(claims.get("nats"), dict):
        raise JWTError("not %s claim" % kind)
    if claims["nats"].get("type") != kind:
        raise JWTError("not %s claim" % kind)
    issuer = decode_nkey(claims.get("iss"), JWT_ISSUERS[kind])
    if issuer is None:
        raise JWTError("unable to validate issuer")
    if decode_nkey(claims.get("sub"), JWT_SUBJECTS[kind]) is None:
        raise JWTError("subject is not a valid %s public key" % kind)
    problem = _claims_type_error(claims)
    if problem:
        raise JWTError(problem)
    if not ed25519_verify(issuer, (parts[0] + "." + parts[1]).encode(), signature):
        raise JWTError("claim failed V2 signature verification")
    return claims


def remember_jwt(token: str, claims: dict):
    """Keep a user JWT that logged in (see _VERIFIED_JWTS); the oldest go
    when the cache is full."""
    global _verified_jwts_size
    if token in _VERIFIED_JWTS:
        return
    while _VERIFIED_JWTS and _verified_jwts_size + len(token) > _VERIFIED_JWTS_BYTES:
        _verified_jwts_size -= len(next(iter(_VERIFIED_JWTS)))
        del _VERIFIED_JWTS[next(iter(_VERIFIED_JWTS))]
    _VERIFIED_JWTS[token] = claims
    _verified_jwts_size += len(token)


# The types of the claims gnatsd.py reads, as the jwt library's structs
# declare them (a JWT with others does not decode in Go).
_JWT_INT = (int,)
_JWT_CLAIM_TYPES = {"iat": _JWT_INT, "exp": _JWT_INT, "nbf": _JWT_INT, "iss": (str,),
                    "sub": (str,), "name": (str,), "aud": (str,)}
_JWT_NATS_TYPES = {
    "issuer_account": (str,), "bearer_token": (bool,), "subs": _JWT_INT, "data": _JWT_INT,
    "payload": _JWT_INT, "times_location": (str,), "allowed_connection_types": (list,),
    "src": (list, str), "times": (list,), "tags": (list,), "signing_keys": (list,),
    "revocations": (dict,), "limits": (dict,), "exports": (list,), "imports": (list,),
    "default_permissions": (dict,), "pub": (dict,), "sub": (dict,), "resp": (dict,),
    "system_account": (str,), "strict_signing_key_usage": (bool,),
}


def _claims_type_error(claims: dict) -> str:
    """What in `claims` has a type the jwt library would not decode, or ""."""
    def bad(value, kinds) -> bool:
        return value is not None and (isinstance(value, bool) and bool not in kinds
                                      or not isinstance(value, kinds))
    for key, kinds in _JWT_CLAIM_TYPES.items():
        if bad(claims.get(key), kinds):
            return "json: cannot unmarshal %s into field %s" % (type(claims[key]).__name__, key)
    nats = claims["nats"]
    for key, kinds in _JWT_NATS_TYPES.items():
        if bad(nats.get(key), kinds):
            return "json: cannot unmarshal %s into field %s" % (type(nats[key]).__name__, key)
    lists = [nats.get("allowed_connection_types"), nats.get("tags")]
    if isinstance(nats.get("src"), list):
        lists.append(nats["src"])
    for perms in (nats, nats.get("default_permissions") or {}):
        for what in ("pub", "sub"):
            entry = perms.get(what)
            if entry is not None and not isinstance(entry, dict):
                return "json: cannot unmarshal into field %s" % what
            lists += [(entry or {}).get("allow"), (entry or {}).get("deny")]
    if any(v is not None and not (isinstance(v, list) and all(isinstance(s, str) for s in v))
           for v in lists):
        return "json: cannot unmarshal into a list of strings"
    if any(not isinstance(t, int) or isinstance(t, bool)
           for t in (nats.get("revocations") or {}).values()):
        return "json: cannot unmarshal into field revocations"
    for key in ("exports", "imports", "times"):
        if not all(isinstance(entry, dict) for entry in nats.get(key) or ()):
            return "json: cannot unmarshal into field %s" % key
    if not all(isinstance(entry, (str, dict)) for entry in nats.get("signing_keys") or ()):
        return "json: cannot unmarshal into field signing_keys"
    if any(v is not None and (not isinstance(v, int) or isinstance(v, bool))
           for v in ((nats.get("resp") or {}).get("max"), (nats.get("resp") or {}).get("ttl"))):
        return "json: cannot unmarshal into field resp"
    if any(not isinstance(v, int) or isinstance(v, bool)
           for v in (nats.get("limits") or {}).values() if not isinstance(v, (bool, dict))):
        return "json: cannot unmarshal into field limits"
    return ""


def jwt_time_error(claims: dict, now: float | None = None) -> str:
    """"claim is expired" or "claim is not yet valid" (jwt's ClaimsData
    Validate, to the second), or ""."""
    now = int(time.time() if now is None else now)
    expires, not_before = claims.get("exp") or 0, claims.get("nbf") or 0
    if expires > 0 and now > expires:
        return "claim is expired"
    if not_before > 0 and not_before > now:
        return "claim is not yet valid"
    return ""


def decorated_jwt(text: str) -> str:
    """The JWT in `text`: the text itself, or the one between a file's
    -----BEGIN ... JWT----- and ------END ... JWT------ lines (nsc's files)."""
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("-----BEGIN") and line.endswith("JWT-----") and i + 1 < len(lines):
            return lines[i + 1]
    return text.strip()


def read_credentials(path: str) -> tuple:
    """(user JWT, nkey seed) from a .creds file (the nats tools' format:
    the JWT and the seed each between a BEGIN and an END line)."""
    with open(path) as f:
        text = f.read()
    blocks = re.findall(r"-{3,}BEGIN[^\n]*-{3,}\s*\n\s*(\S+)\s*\n\s*-{3,}END", text)
    if len(blocks) < 2:
        raise ValueError("%s: expected a user JWT and a seed" % path)
    return blocks[0], blocks[1]


def jwt_permissions(claims: dict) -> Permissions | None:
    """Permissions from the pub/sub/resp of a user JWT's (or an account's
    default) permissions; None when they list nothing (Go's
    buildPermissionsFromJwt)."""
    pub = claims.get("pub") or {}
    sub = claims.get("sub") or {}
    resp = claims.get("resp")
    if not (pub.get("allow") or pub.get("deny") or sub.get("allow") or sub.get("deny")
            or resp is not None):
        return None
    perms = Permissions()
    if pub.get("allow") or pub.get("deny"):
        perms.publish_allow, perms.publish_deny = pub.get("allow") or None, pub.get("deny")
    if sub.get("allow") or sub.get("deny"):
        perms.subscribe_allow, perms.subscribe_deny = sub.get("allow") or None, sub.get("deny")
    if resp is not None:       # Go's validateResponsePermissions: 0 means the default
        max_msgs, ttl = resp.get("max") or 0, (resp.get("ttl") or 0) / 1e9
        perms.responses = (max_msgs if max_msgs > 0 else 1, ttl if ttl > 0 else 120.0)
    return perms


def _limit(value) -> int:
    """A JWT limit: -1 (jwt.NoLimit) for none, else the number (0 is 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _lowest_limit(first: int, second: int) -> int:
    """The lower of two JWT limits, -1 being none (Go's minLimit)."""
    if first == -1:
        return second
    return first if second == -1 else min(first, second)


class JWTLogin:
    """What a user JWT grants a connection: its user key, permissions,
    account, limits and when its login ends."""

    __slots__ = ("user", "permissions", "account", "max_payload", "max_subs", "expires_in")

    def __init__(self, user, permissions, account, max_payload, max_subs, expires_in):
        self.user = user
        self.permissions = permissions
        self.account = account
        self.max_payload = max_payload      # -1: no limit of its own
        self.max_subs = max_subs
        self.expires_in = expires_in        # seconds until the login ends, or None


def jwt_login(accounts: dict, client) -> JWTLogin | None:
    """Log `client` in with the user JWT of its CONNECT (Go's
    processClientOrLeafAuthentication in operator mode), or None, having
    logged Go's reason.  `client` gives the credentials, the nonce, the
    address and the connection type, and logs."""
    credentials = client.credentials or {}
    try:
        user = decode_jwt(credentials.get("jwt"), "user")
    except JWTError:
        user = None
    if user is None:
        client.debug("Authentication requires a user JWT")
        return None
    problem = jwt_time_error(user)
    if problem:
        client.debug("User JWT no longer valid: &{Issues:[%s]}", problem)
        return None
    nats = user["nats"]
    issuer = nats.get("issuer_account") or user["iss"]
    account = accounts.get(issuer)
    if account is None or account.claims is None:
        client.server.log.warning("Account fetch failed: account missing")
        client.debug("Account JWT lookup error: account missing")
        return None
    if not account.trusted or (account.expired and not account.registered):
        client.debug("Account JWT lookup error: account validation failed")
        return None
    account.registered = True
    if user["iss"] not in account.signing_keys:
        client.debug("User JWT issuer is not known")
        return None
    template = account.signing_keys[user["iss"]]
    if template is not None:        # a scoped signing key: its template, not the user's
        if any(nats.get(k) for k in _USER_LIMIT_CLAIMS):
            client.debug("User JWT is not valid: scoped users require no permissions or "
                         "limits set")
            return None
        try:
            nats = dict(nats, **scoped_limits(template, user, account))
        except ValueError:
            client.debug("User JWT generated invalid permissions")
            return None
    if account.expired:
        client.debug("Account JWT has expired")
        return None
    if nats.get("bearer_token") and account.disallow_bearer:
        client.debug("Account does not allow bearer tokens")
        return None
    allowed = [str(t).upper() for t in nats.get("allowed_connection_types") or ()]
    known = [t for t in allowed if t in CONNECTION_TYPES]
    if len(known) < len(allowed):
        client.debug("invalid connection types %s",
                     "[%s]" % " ".join(go_quote(t.encode()) for t in allowed if t not in known))
        if not known:
            return None
    if known and client.connection_type() not in known:
        client.debug("Connection type not allowed")
        return None
    if not nats.get("bearer_token"):
        sig = credentials.get("sig")
        if not sig:
            client.debug("Signature missing")
            return None
        signature = signature_bytes(sig)
        if signature is None:
            client.debug("Signature not valid base64")
            return None
        if not ed25519_verify(decode_nkey(user["sub"], NKEY_USER), client.nonce, signature):
            client.debug("Signature not verified")
            return None
    revoked = account.revocations.get(user["sub"])
    revoked_all = account.revocations.get("*")
    issued = user.get("iat") or 0
    if (revoked is not None and revoked >= issued) or \
            (revoked_all is not None and revoked_all >= issued):
        client.debug("User authentication revoked")
        return None
    if not _source_allowed(nats.get("src"), client.host):
        client.error("Bad src Ip %s", client.host)
        return None
    allowed_now, valid_for = _times_allowed(nats.get("times"), nats.get("times_location"))
    if not allowed_now:
        client.error("Outside connect times")
        return None
    remember_jwt(credentials["jwt"], user)
    perms = jwt_permissions(nats)
    if perms is None:
        perms = account.default_permissions
    expires_in = None
    if user.get("exp"):
        expires_in = max(0, user["exp"] - int(time.time()))   # Go counts whole seconds
    if valid_for is not None and (expires_in is None or valid_for < expires_in):
        expires_in = valid_for
    return JWTLogin(user["sub"], perms, account.name, _limit(nats.get("payload")),
                    _limit(nats.get("subs")), expires_in)


def jwt_client_login(client: "Client") -> bool:
    """Operator mode: log `client` in with the user JWT of its CONNECT
    (jwt_login), under its account's and its own limits, until the JWT
    expires (Client.check_auth calls this)."""
    login = jwt_login(client.server.accounts, client)
    if login is None:
        client.auth_violation()
        return False
    account = client.server.accounts[login.account]
    if account is not client.account and account.max_connections != -1 and \
            account.client_count >= account.max_connections:
        client.error(ERR_MAX_ACCOUNT_CONNECTIONS)
        client.send_err_and_close(ERR_MAX_ACCOUNT_CONNECTIONS, MAX_ACCOUNT_CONNECTIONS_EXCEEDED)
        return False
    client.user, client.awaiting_auth = login.user, False
    client.perms = ClientPermissions(login.permissions) if login.permissions else None
    client.bind_account(account)
    # Go's applyAccountLimits: the lowest of the user's, the account's
    # and the server's limits; -1 is none, 0 is zero.
    client.max_payload = _lowest_limit(login.max_payload, account.max_payload)
    client.max_subs = _lowest_limit(login.max_subs, account.max_subs)
    if client.expiry_entry is not None:
        client.server.cancel_timer(client.expiry_entry)
        client.expiry_entry = None
    if login.expires_in is not None:
        client.expiry_entry = client.server.add_timer(
            login.expires_in, lambda: end_jwt_login(client))
    client.refresh_pub_path()
    client.update_log_prefix()
    client.rtt = time.time() - client.start     # (as Client.login)
    if client.max_subs != -1 and len(client.subs) >= client.max_subs:
        client.error(ERR_MAX_SUBSCRIPTIONS)
        client.send_err_and_close(ERR_MAX_SUBSCRIPTIONS, MAX_SUBSCRIPTIONS_EXCEEDED)
        return False
    client.server.system_client.client_event(client, "CONNECT")
    return True


def end_jwt_login(client: "Client", message: str = ERR_USER_EXPIRED):
    """Timer callback: the user's JWT (or, with ERR_ACCOUNT_EXPIRED, its
    account's) has expired; tell the client and close (Go's authExpired,
    whose log line names the account and the user)."""
    client.expiry_entry = None
    if not client.closed:
        client.debug("%s - Account:%s - jwt:%s", message, client.account.label, client.user)
        client.send_err_and_close(message, AUTHENTICATION_EXPIRED)


def start_operator_mode(server: "Server"):
    """Operator mode's startup lines: each trusted operator, and the
    preloaded accounts whose JWTs have expired (Go's Start and
    checkResolvePreloads); then the accounts' expiry timers."""
    def when(seconds):
        return time.strftime("%Y-%m-%d %H:%M:%S %z %Z", time.localtime(seconds))
    opts, log = server.options, server.log
    log.info("Trusted Operators")
    for claims in opts.trusted_operators:
        log.info("  System  : %s", go_quote(str(claims.get("aud", "")).encode()))
        log.info("  Operator: %s", go_quote(str(claims.get("name", "")).encode()))
        log.info("  Issued  : %s", when(claims.get("iat") or 0))
        log.info("  Expires : %s", when(claims["exp"]) if claims.get("exp") else "Never")
    if not opts.system_account:
        log.warning("Trusted Operators should utilize a System Account")
    for name, token in (opts.resolver_preload or {}).items():
        problem = jwt_time_error(decode_jwt(token, "account"))
        if problem:
            log.warning("Account [%s] has validation issues:", name)
            log.warning("  - %s", problem)
    arm_account_expiry(server)


def arm_account_expiry(server: "Server"):
    """When an account's JWT expires, its clients are told and closed
    (Go's Account.expiredTimeout); Go's timer counts whole seconds."""
    for account in server.accounts.values():
        expires = (account.claims or {}).get("exp") or 0
        if expires and not account.expired:
            server.add_timer(max(0, expires - int(time.time())),
                             lambda account=account: expire_account(server, account))


def expire_account(server: "Server", account: Account):
    """Timer callback: `account`'s JWT has expired (if a reload has not
    replaced it): no more logins, and every client in it is closed."""
    if server.accounts.get(account.name) is not account:
        return
    account.expired = True
    for client in list(server.clients.values()) + list(server.leafs.conns):
        if client.account is account:
            end_jwt_login(client, ERR_ACCOUNT_EXPIRED)


# What a user signed by a scoped signing key may not set: the key's
# template sets them (jwt's UserPermissionLimits, compared with its zero).
_USER_LIMIT_CLAIMS = ("pub", "sub", "resp", "src", "times", "times_location", "subs", "data",
                      "payload", "bearer_token", "proxy_required", "allowed_connection_types")

_TEMPLATE_RE = re.compile(r"\{\{([^}]+)\}\}")


def scoped_limits(template: dict, user: dict, account: Account) -> dict:
    """A scoped signing key's template for this user, with {{name()}},
    {{subject()}}, {{account-name()}}, {{account-subject()}}, {{tag(x)}}
    and {{account-tag(x)}} filled in (Go's processUserPermissionsTemplate);
    ValueError when one cannot be.  An allow list the templates empty
    becomes a deny of everything."""
    import itertools
    nats = user["nats"]
    fields = {k: v for k, v in template.items()}

    def values(op: str) -> list:
        name = op.strip().lower()
        if name == "name()":
            return [user.get("name", "")]
        if name == "subject()":
            return [user["sub"]]
        if name == "account-name()":
            return [(account.claims or {}).get("name", "")]
        if name == "account-subject()":
            return [nats.get("issuer_account", "")]
        for prefix, tags in (("tag(", nats.get("tags")),
                             ("account-tag(", (account.claims or {}).get("nats", {}).get("tags"))):
            if name.startswith(prefix) and name.endswith(")"):
                key = name[len(prefix):-1] + ":"
                return [t[len(key):] for t in tags or () if t.startswith(key)]
        raise ValueError("template operation %r is not defined" % op)

    def expand(entries, strict: bool) -> list:
        out = []
        for entry in entries or ():
            ops = _TEMPLATE_RE.findall(entry)
            if not ops:
                out.append(entry)
                continue
            choices = [values(op) for op in ops]
            if strict and any(not c for c in choices):
                raise ValueError("generated invalid subject")
            for combo in itertools.product(*choices):
                subject = entry
                for op, value in zip(ops, combo):
                    subject = subject.replace("{{%s}}" % op, value)
                if is_valid_subject(subject.encode()):
                    out.append(subject)
                elif strict:
                    raise ValueError("generated invalid subject")
        return out

    for what in ("pub", "sub"):
        lists = dict(fields.get(what) or {})
        had_allow = bool(lists.get("allow"))
        lists["allow"] = expand(lists.get("allow"), False)
        lists["deny"] = expand(lists.get("deny"), True)
        if had_allow and not lists["allow"]:
            lists["deny"] = lists["deny"] + [">"]
        fields[what] = lists
    return fields


def _source_allowed(cidrs, host: str) -> bool:
    """Is `host` in one of a user JWT's `src` networks (or are there none)?"""
    if not cidrs:
        return True
    if isinstance(cidrs, str):
        cidrs = [c.strip() for c in cidrs.split(",")]
    import ipaddress
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    for cidr in cidrs:
        try:
            if address in ipaddress.ip_network(cidr, strict=False):
                return True
        except ValueError:
            return False
    return False


def _times_allowed(times, location) -> tuple:
    """(may log in now, seconds until the current range ends or None) for a
    user JWT's `times` ([{start: "HH:MM:SS", end: ...}], in `location`'s
    time or local time; a range may cross midnight), as Go's validateTimes."""
    if not times:
        return True, None
    import datetime
    zone = None
    if location:
        try:
            import zoneinfo
            zone = zoneinfo.ZoneInfo(location)
        except Exception:
            return False, None
    now = datetime.datetime.now(zone) if zone else datetime.datetime.now()
    best = None
    for entry in times:
        try:
            start = datetime.datetime.strptime(entry["start"], "%H:%M:%S").time()
            end = datetime.datetime.strptime(entry["end"], "%H:%M:%S").time()
        except (KeyError, TypeError, ValueError):
            return False, None
        start_at = now.replace(hour=start.hour, minute=start.minute, second=start.second,
                               microsecond=0)
        end_at = now.replace(hour=end.hour, minute=end.minute, second=end.second,
                             microsecond=0)
        left = None
        if start_at < now < end_at:
            left = (end_at - now).total_seconds()
        elif start_at > end_at:                       # crosses midnight
            if end_at > now:
                left = (end_at - now).total_seconds()
            elif start_at < now:
                left = (end_at + datetime.timedelta(days=1) - now).total_seconds()
        if left is not None and (best is None or left > best):
            best = left
    return best is not None, best


def _secret_equal(given, expected: str) -> bool:
    """Constant-time comparison of a client's secret with the configured one;
    a bcrypt hash (`$2a$...`) is verified, never compared as text."""
    if not isinstance(given, str):
        return False
    if is_bcrypt_hash(expected):
        return bcrypt_verify(given, expected)
    import hmac      # here: hashlib loads OpenSSL's libcrypto (4 MB), for auth only
    return hmac.compare_digest(given.encode(), expected.encode())


# Prefixes of the bcrypt hashes Go's auth accepts as passwords and tokens.
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")

# A known bcrypt hash of "gnatsd" (cost 4), to prove a verifier works.
_BCRYPT_PROBE = "$2b$04$sgWqz21xdeDfy.ookgjCyuiNRy.tAMkUwpuNHDkOJcTS4BU7ckiZe"


def bcrypt_missing(opts: Options) -> bool:
    """Is a bcrypt hash configured that this Python cannot verify?"""
    secrets = [opts.password, opts.authorization] + [u.password for u in opts.users or ()]
    return any(is_bcrypt_hash(s) for s in secrets) and not bcrypt_available()


def is_bcrypt_hash(secret: str) -> bool:
    """True if `secret` is a bcrypt hash, to be verified rather than compared."""
    return secret.startswith(BCRYPT_PREFIXES)


def bcrypt_verify(password: str, hashed: str) -> bool:
    """Check `password` against a bcrypt hash: with the C library's crypt(3)
    through the standard `crypt` module where it exists (CPython <= 3.12 on
    glibc/libxcrypt), else with the optional `bcrypt` package."""
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        result = crypt.crypt(password, hashed)
        if result:
            import hmac
            return hmac.compare_digest(result.encode(), hashed.encode())
    except (ImportError, OSError, ValueError):
        pass
    try:
        import bcrypt  # optional
        return bcrypt.checkpw(password.encode(), hashed.encode())
    except (ImportError, ValueError):
        return False


def bcrypt_available() -> bool:
    """Can this Python verify bcrypt hashes at all?"""
    return bcrypt_verify("gnatsd", _BCRYPT_PROBE) and not bcrypt_verify("x", _BCRYPT_PROBE)


# -- bcrypt off the loop ---------------------------------------------------------
#
# A bcrypt check is meant to be slow (a cost-11 hash takes 0.1-0.25 s here),
# and both verifiers hold the GIL while they hash, so neither the loop nor a
# thread may run one without freezing every client: four clients sending
# wrong passwords would take the whole loop.  The checks run instead in
# helper processes (at most SECRET_CHECKERS, at a lower CPU priority than
# the loop), each fed by a thread that waits on its pipe.  A connection that
# needs one waits (Connection.await_secret): none of its input is parsed
# until the answer comes back through `call_soon`, while every other
# connection is served.  A helper that cannot start or dies answers "no".

# Helper processes verifying bcrypt hashes at most (and threads feeding them).
SECRET_CHECKERS = 2

# How a helper starts: this file loaded as a module, then secret_worker().
_SECRET_WORKER_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('gnatsd_secret_worker', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "module.secret_worker()\n")


class _SecretCheckPending(Exception):
    """Raised by Connection.secret_equal: this answer must come off the loop."""

    def __init__(self, given: str, expected: str):
        super().__init__("bcrypt check pending")
        self.given = given
        self.expected = expected


class SecretChecker:
    """bcrypt checks in helper processes, answered on the loop thread."""

    def __init__(self, server: "Server"):
        self.server = server
        self.requests: queue.Queue = queue.Queue()
        self.threads: list = []

    def submit(self, given: str, hashed: str, callback):
        """Check `given` against `hashed`; `callback(ok)` runs on the loop."""
        if len(self.threads) < SECRET_CHECKERS:
            thread = threading.Thread(target=self.feed_helper, name="bcrypt", daemon=True)
            self.threads.append(thread)
            thread.start()
        self.requests.put((given, hashed, callback))

    def stop(self):
        """Ask each helper thread to end once the checks queued before this are
        answered; it then closes its helper process.  Does not wait."""
        for _ in self.threads:
            self.requests.put(None)

    def feed_helper(self):
        """A thread's life: start a helper, pass it one check at a time."""
        helper = None
        while True:
            request = self.requests.get()
            if request is None:
                break
            given, hashed, callback = request
            ok = False
            try:
                if helper is None or helper.poll() is not None:
                    import subprocess
                    helper = subprocess.Popen(
                        [sys.executable, "-c", _SECRET_WORKER_BOOT, os.path.abspath(__file__)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
                helper.stdin.write(json.dumps([given, hashed]).encode() + b"\n")
                helper.stdin.flush()
                ok = helper.stdout.readline() == b"1\n"
            except (OSError, ValueError) as exc:
                self.server.log.error("bcrypt helper failed: %s", exc)
                if helper is not None:
                    helper.kill()
                    helper = None
            self.server.call_soon(lambda callback=callback, ok=ok: callback(ok))
        if helper is not None:
            helper.stdin.close()
            helper.wait()


def secret_worker():
    """A bcrypt helper's main: a JSON [password, hash] per line in, `1` or
    `0` per line out, until its input ends."""
    try:
        os.nice(5)              # the loop's clients come first
    except (AttributeError, OSError):
        pass
    for line in sys.stdin.buffer:
        given, hashed = json.loads(line)
        sys.stdout.write("1\n" if bcrypt_verify(given, hashed) else "0\n")
        sys.stdout.flush()


# -- permissions: who may publish and subscribe to what -------------------------


class ClientPermissions:
    """A user's Permissions compiled into sublists (Go's client.perms).

    Allow and deny lists are tries of their own, so `foo.*` in a list
    covers `foo.bar`, and a queue entry ("work.* workers") is a queue
    subscription in the trie.  Deny always beats allow.
    """

    __slots__ = ("pub_allow", "pub_deny", "sub_allow", "sub_deny", "responses", "replies")

    def __init__(self, perms: Permissions):
        self.responses = perms.responses
        self.replies = {}            # reply subject -> [responses left, expiry]
        publish_allow = perms.publish_allow
        if self.responses and publish_allow is None:
            publish_allow = []       # Go: allow_responses alone permits only responses
        self.pub_allow = _permission_sublist(publish_allow)
        self.pub_deny = _permission_sublist(perms.publish_deny)
        self.sub_allow = _permission_sublist(perms.subscribe_allow)
        self.sub_deny = _permission_sublist(perms.subscribe_deny)

    def can_publish(self, subject: bytes) -> bool:
        """May the client publish to `subject`?  A response allowed on it says
        yes (and is used up) before the allow and deny lists are asked."""
        if self.replies and self.use_response(subject):
            return True
        if self.pub_allow is not None and not self.pub_allow.match(subject).psubs:
            return False
        return self.pub_deny is None or not self.pub_deny.match(subject).psubs

    def note_request(self, reply: bytes):
        """A delivered message carried `reply`: allow responses to it."""
        maximum, expires = self.responses
        self.replies[reply] = [maximum, time.monotonic() + expires if expires > 0 else 0.0]

    def use_response(self, subject: bytes) -> bool:
        """Use up one response allowed on `subject` (see `note_request`); False
        if there is none or it has expired (then it is forgotten)."""
        grant = self.replies.get(subject)
        if grant is None:
            return False
        if grant[1] and time.monotonic() > grant[1]:
            del self.replies[subject]
            return False
        grant[0] -= 1
        if grant[0] <= 0:
            del self.replies[subject]
        return True

    def can_subscribe(self, subject: bytes, queue: bytes | None) -> bool:
        """Go's canSubscribe: a queue entry decides for a queue subscription."""
        allowed = True
        if self.sub_allow is not None:
            result = self.sub_allow.match(subject)
            allowed = bool(result.psubs)
            if queue is not None and result.qsubs:
                allowed = _queue_listed(queue, result.qsubs)
        if allowed and self.sub_deny is not None:
            result = self.sub_deny.match(subject)
            allowed = not result.psubs
            if queue is not None and result.qsubs:
                allowed = not _queue_listed(queue, result.qsubs)
        return allowed

    def can_receive(self, subject: bytes, queue: bytes | None) -> bool:
        """Go's checkDenySub: a wildcard subscription never gets a subject the
        deny list names, nor a queue subscription one that a queue entry
        denies to its group (`SUB sub.* qdeny` against "sub.q qdeny")."""
        if self.sub_deny is None:
            return True
        result = self.sub_deny.match(subject)
        if result.psubs:
            return False
        return queue is None or not result.qsubs or not _queue_listed(queue, result.qsubs)


def _permission_sublist(entries: list | None) -> Sublist | None:
    if entries is None:
        return None
    sublist = Sublist()
    for entry in entries:
        subject, _, queue = entry.strip().partition(" ")
        queue = queue.strip()
        sublist.insert(Subscription(None, subject.encode(), queue.encode() if queue else None,
                                    b""))
    return sublist


def _queue_listed(queue: bytes, groups: list) -> bool:
    """Go's queueMatches: a listed queue name, or a wildcard one covering it."""
    for group in groups:
        name = group[0].queue
        if queue == name:
            return True
        tokens = name.split(b".")
        if (b"*" in tokens or b">" in tokens) and _subject_matches(queue.split(b"."), tokens):
            return True
    return False


# -- accounts: subject spaces, exports and imports ----------------------------
#
# An account is a subject space of its own: it owns a sublist, and a message
# published in it reaches only its subscribers.  Users of the `accounts`
# block log in to their account; everyone else is in the global account $G.
# Accounts share on purpose, through exports and imports (Go's accounts.go):
#
# * A stream import lets account A see what account B publishes on an
#   exported subject.  Each subscription in A that the import covers gets a
#   shadow subscription in B's sublist (same client and sid, subject mapped
#   into B's space), so B's publishes reach A's subscriber with no extra
#   step; when the import adds a prefix, the shadow maps the subject back
#   on delivery (`im`).
# * A service import lets A's requests reach B's responders: a PUB in A on
#   the import's subject is published again in B on the exported subject,
#   with a fresh reply subject `_R_.<prefix>.<id>` of B's.  That reply is a
#   response import in B: what B's responder publishes to it is delivered in
#   A on the requester's own reply subject (once, for the default singleton
#   response type; until it expires for `stream` and `chunked`).


class StreamImport:
    """A's view of B's stream: `source` in B appears as `local` in A."""

    __slots__ = ("exporter", "source", "local", "local_tokens", "to_local", "to_source")

    def __init__(self, exporter: "Account", source: bytes, local: bytes):
        self.exporter = exporter
        self.source = source
        self.local = local
        mapped = source != local
        self.to_local = SubjectTransform(source, local) if mapped else None
        self.to_source = self.to_local.inverse() if mapped else None
        self.local_tokens = self.to_source.source if mapped else local.split(b".")


class ServiceImport:
    """A's requests on `local` go to B's exported service subject."""

    __slots__ = ("exporter", "export", "local", "to_export", "share")

    def __init__(self, exporter: "Account", export: Export, subject: bytes, local: bytes,
                 share: bool = False):
        self.exporter = exporter
        self.export = export
        self.local = local
        self.to_export = SubjectTransform(local, subject)
        self.share = share          # the requester's user travels in Nats-Request-Info


class ResponseImport:
    """A reply subject in the exporter's account that leads back to a requester."""

    __slots__ = ("importer", "reply", "singleton", "expires")

    def __init__(self, importer: "Account", reply: bytes, singleton: bool, expires: float):
        self.importer = importer
        self.reply = reply
        self.singleton = singleton
        self.expires = expires


class Account:
    """A subject space with its sublist, its imports and its pending responses."""

    def __init__(self, name: str):
        self.name = name
        self.sublist = Sublist(name=name.encode())
        self.stream_imports: list = []
        self.service_imports: dict = {}      # literal local subject -> ServiceImport
        self.system_imports = 0              # how many of them are add_system_imports'
        self.wildcard_imports: list = []     # (local tokens, ServiceImport)
        self.responses: dict = {}            # reply subject here -> ResponseImport
        self.exports_services = False
        self.reply_prefix = b"_R_." + _random_token(6) + b"."
        self.interest: dict = {}             # (subject, queue) -> local subs (routes' RS+)
        # (subject, queue) -> subscriptions learned from routes of one dialect,
        # told to the routes of the other (legacy: True for 0.7-dialect peers).
        self.bridged: dict = {True: {}, False: {}}
        self.client_count = 0                # clients logged in now
        self.total_connections = 0
        # Operator mode (an account JWT's claims; apply_account_claims):
        self.claims = None                   # the JWT's claims, None for a config account
        self.trusted = True                  # signed by a trusted operator key
        self.signing_keys: dict = {}         # key that may sign users -> scope template or None
        self.revocations: dict = {}          # user key ("*" all) -> revoked if issued by then
        self.max_connections = -1            # -1: no limit (jwt.NoLimit)
        self.max_subs = -1
        self.max_payload = -1
        self.disallow_bearer = False
        self.default_permissions = None      # for users whose JWT lists none
        self.expired = False
        self.registered = False              # looked up by a login (Go registers it then)

    @property
    def label(self) -> str:
        """How logs name the account: an account JWT's adds its name
        (Go's traceLabel, "A.../APP")."""
        name = (self.claims or {}).get("name")
        return "%s/%s" % (self.name, name) if name else self.name

    def __repr__(self) -> str:
        return "<Account %s>" % self.name

    @property
    def routes_services(self) -> bool:
        """May a PUB in this account be a service request or a response,
        other than on a `$SYS.` subject (every account imports a few of
        those: add_system_imports; a PUB checks them by their prefix)?"""
        return bool(len(self.service_imports) > self.system_imports or self.wildcard_imports
                    or self.exports_services)

    def service_route(self, subject: bytes):
        """The ServiceImport or ResponseImport a PUB on `subject` follows, or None."""
        route = self.service_imports.get(subject) or self.responses.get(subject)
        if route is None and self.wildcard_imports:
            tokens = subject.split(b".")
            for pattern, imp in self.wildcard_imports:
                if _subject_matches(tokens, pattern):
                    return imp
        return route

    def take_response(self, subject: bytes) -> "ResponseImport | None":
        """The response import `subject` leads back through (a reply to a
        request that came in through an import), used up if it is a
        singleton; None if it is no such reply."""
        route = self.responses.get(subject) if self.responses else None
        if route is not None and route.singleton:
            del self.responses[subject]
        return route

    def new_response(self, importer: "Account", reply: bytes, export: Export) -> bytes:
        """A fresh reply subject here that routes back to `reply` in `importer`."""
        subject = self.reply_prefix + _random_token(6)
        self.responses[subject] = ResponseImport(
            importer, reply, export.response_type == "singleton",
            time.monotonic() + export.response_threshold)
        return subject

    def expire_responses(self, now: float):
        """Forget the response imports whose time is up at `now` (monotonic);
        called by the server's once-a-second sweep."""
        for subject in [s for s, r in self.responses.items() if r.expires <= now]:
            del self.responses[subject]


def build_accounts(opts: Options) -> dict:
    """Account objects from the options: $G, the system account, and every
    configured one (in operator mode, every preloaded account JWT), with
    imports resolved (checked by `check_accounts`, or jwt_account_configs)."""
    accounts = {GLOBAL_ACCOUNT: Account(GLOBAL_ACCOUNT)}
    configs = jwt_account_configs(opts) if opts.trusted_keys else (opts.accounts or {})
    for name, config in configs.items():
        accounts[name] = Account(name)
        if config.claims is not None:
            apply_account_claims(accounts[name], config.claims, opts.trusted_keys)
    system = opts.system_account or SYSTEM_ACCOUNT
    accounts.setdefault(system, Account(system)).registered = True   # Go looks it up at start
    for name, config in configs.items():
        account = accounts[name]
        account.exports_services = any(e.kind == "service" for e in config.exports)
        for imp in config.imports:
            exporter = accounts[imp.account]
            if imp.kind == "stream":
                account.stream_imports.append(
                    StreamImport(exporter, imp.subject.encode(), imp.to.encode()))
                continue
            export = find_export(configs[imp.account], "service", imp.subject)
            si = ServiceImport(exporter, export, imp.subject.encode(), imp.to.encode())
            tokens = si.local.split(b".")
            if b"*" in tokens or b">" in tokens:
                account.wildcard_imports.append((tokens, si))
            else:
                account.service_imports[si.local] = si
    add_system_imports(accounts, accounts[system])
    return accounts


# The services every account imports from the system account, so that its
# users can ask about their own account and themselves (Go's
# addSystemAccountImports): (subject there, subject here, response type,
# whether the requester's user is shared).
SYSTEM_IMPORTS = (
    (b"$SYS.REQ.ACCOUNT.%s.CONNZ", b"$SYS.REQ.ACCOUNT.PING.CONNZ", "stream", False),
    (b"$SYS.REQ.ACCOUNT.%s.CONNZ", b"$SYS.REQ.SERVER.PING.CONNZ", "stream", False),
    (b"$SYS.REQ.ACCOUNT.%s.STATZ", b"$SYS.REQ.ACCOUNT.PING.STATZ", "stream", False),
    (b"$SYS.REQ.USER.%s.INFO", b"$SYS.REQ.USER.INFO", "singleton", True),
)


def add_system_imports(accounts: dict, system: Account):
    """Give every account the SYSTEM_IMPORTS (the system account only the
    user info's)."""
    system.exports_services = True
    for account in accounts.values():
        for there, here, response_type, share in SYSTEM_IMPORTS:
            if account is system and not share:
                continue
            export = Export("service", (there % b"*").decode(), None, response_type)
            if here not in account.service_imports:
                account.service_imports[here] = ServiceImport(
                    system, export, there % account.name.encode(), here, share)
                account.system_imports += 1


def jwt_account_configs(opts: Options) -> dict:
    """Operator mode: an AccountConfig for each preloaded account JWT (its
    exports, and the imports whose export exists and lets it in; the others
    are left out with Go's log line, as Go leaves them incomplete)."""
    configs = {}
    for name, token in (opts.resolver_preload or {}).items():
        try:
            claims = decode_jwt(token, "account")
        except JWTError as exc:
            log.error("Account JWT for %s not valid: %s", name, exc)
            continue
        if claims["sub"] != name:
            log.error("Account JWT for %s names account %s", name, claims["sub"])
            continue
        config = configs[name] = AccountConfig(name)
        config.claims = claims
        for export in claims["nats"].get("exports") or ():
            kind, subject = export.get("type"), export.get("subject")
            if kind not in ("stream", "service") or not isinstance(subject, str) or \
                    not is_valid_subject(subject.encode()):
                continue
            threshold = (export.get("response_threshold") or 0) / 1e9 or 120.0
            config.exports.append(Export(
                kind, subject, [] if export.get("token_req") else None,
                str(export.get("response_type") or "singleton").lower(), threshold))
    for config in configs.values():
        for imp in config.claims["nats"].get("imports") or ():
            kind, account = imp.get("type"), imp.get("account")
            subject, to = imp.get("subject") or "", imp.get("to") or ""
            local = imp.get("local_subject") or ""
            if kind == "stream":       # `to` is a prefix (deprecated); local_subject renames
                made = Import(kind, account, subject, local or (to.rstrip(".") + "." + subject
                                                                if to else subject))
            elif kind == "service":    # `subject` is the importer's, `to` the exporter's
                made = Import(kind, account, to or subject, local or subject) if local \
                    else Import(kind, account, to or subject, subject)
            else:
                continue
            exporter = configs.get(account)
            export = exporter and find_export(exporter, kind, made.subject)
            if exporter is None:
                log.error("Can't locate account [%s] for import of [%s] %s", account, subject,
                          kind)
            elif export is None or export.accounts is not None or \
                    not all(is_valid_subject(s.encode()) for s in (made.subject, made.to)) or \
                    not same_wildcards(made.subject, made.to):
                log.debug("Error adding %s import to account [%s]: %s import not authorized",
                          kind, config.name, kind)
            else:
                config.imports.append(made)
    return configs


def apply_account_claims(account: Account, claims: dict, trusted_keys) -> None:
    """An account JWT's claims on its Account (Go's updateAccountClaims):
    who may sign its users, revocations, limits, default permissions and
    whether it has expired."""
    nats = claims["nats"]
    account.claims = claims
    account.trusted = claims["iss"] in (trusted_keys or ())
    keys = {account.name: None}
    for entry in nats.get("signing_keys") or ():
        if isinstance(entry, str):
            keys[entry] = None
        elif isinstance(entry, dict) and entry.get("kind") == "user_scope":
            # jwt's NewUserScope: the template's limits are -1 unless given
            keys[entry.get("key")] = dict({"subs": -1, "data": -1, "payload": -1},
                                          **(entry.get("template") or {}))
    account.signing_keys = keys
    account.revocations = dict(nats.get("revocations") or {})
    limits = nats.get("limits") or {}
    account.max_connections = _limit(limits.get("conn"))
    account.max_subs = _limit(limits.get("subs"))
    account.max_payload = _limit(limits.get("payload"))
    account.disallow_bearer = bool(limits.get("disallow_bearer"))
    account.default_permissions = jwt_permissions(nats.get("default_permissions") or {})
    account.expired = jwt_time_error(claims) == "claim is expired"


def _random_token(n: int) -> bytes:
    alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return bytes(alphabet[b % 62] for b in os.urandom(n))


# -- reading a peer's CONNECT and INFO -----------------------------------------
#
# A peer's CONNECT and INFO are read as Go's encoding/json reads them into
# its structs: a field Go knows must have its type (another type fails the
# line, and the connection closes), integers must fit, keys match whatever
# their case, NaN and Infinity are no numbers, and bad UTF-8 in a string is
# replaced rather than refused.  A kind is a Python type, an integer range,
# _STRINGS (Go's []string: a null element is "") or _PERMISSION (Go's
# SubjectPermission: {"allow": [...], "deny": [...]}).  null always passes.
_INT = (-(1 << 63), (1 << 63) - 1)
_INT32 = (-(1 << 31), (1 << 31) - 1)
_UINT64 = (0, (1 << 64) - 1)
_BYTE = (0, 255)
_STRINGS = "[]string"
_PERMISSION = "SubjectPermission"

# Go's clientOpts.
_CONNECT_FIELDS = {
    "verbose": bool, "pedantic": bool, "echo": bool, "headers": bool,
    "no_responders": bool, "tls_required": bool, "protocol": _INT,
    "name": str, "lang": str, "version": str, "user": str, "pass": str,
    "auth_token": str, "nkey": str, "jwt": str, "sig": str, "account": str,
    "new_account": bool, "remote_account": str, "proxy_sig": str,
    "import": _PERMISSION, "export": _PERMISSION,
}

# Go's Info, which a client's INFO (read and ignored) and a route's INFO
# must fit.
_INFO_FIELDS = {
    "server_id": str, "server_name": str, "version": str, "proto": _INT, "git_commit": str,
    "go": str, "host": str, "port": _INT, "headers": bool, "auth_required": bool,
    "tls_required": bool, "tls_verify": bool, "tls_available": bool, "max_payload": _INT32,
    "jetstream": bool, "ip": str, "client_id": _UINT64, "client_ip": str, "nonce": str,
    "cluster": str, "cluster_dynamic": bool, "domain": str, "connect_urls": _STRINGS,
    "ws_connect_urls": _STRINGS, "ldm": bool, "route_pool_size": _INT,
    "route_pool_idx": _INT, "route_account": str, "route_acc_add_reqid": bool,
    "lnoc": bool, "lnocu": bool, "info_on_connect": bool, "connect_info": bool,
    "remote_account": str, "acc_is_sys": bool, "api_lvl": _INT, "gossip_mode": _BYTE,
    "compression": str, "gateway": str, "gateway_url": str, "gateway_urls": _STRINGS,
    "gateway_cmd": _BYTE, "gateway_nrp": bool, "gateway_iom": bool,
    "leafnode_urls": _STRINGS, "xkey": str, "import": _PERMISSION, "export": _PERMISSION,
}


# Go's names for the kinds above in its unmarshal errors (and below, for a
# JSON value's type: _GO_JSON_TYPES).
_GO_KINDS = {str: "string", bool: "bool", _INT: "int", _INT32: "int32", _UINT64: "uint64",
             _BYTE: "uint8", _STRINGS: "[]string", _PERMISSION: "server.SubjectPermission"}


class _GoFloat(float):
    """A JSON number with a fraction or an exponent, its text kept (Go's
    error for one in an integer field quotes it as written)."""
    __slots__ = ("text",)


def _go_float(text: str) -> float:
    number = _GoFloat(text)
    number.text = text
    return number


_GO_JSON_TYPES = {str: "string", bool: "bool", int: "number", _GoFloat: "number",
                  list: "array"}


def _go_json_type(value, kind=None) -> str:
    """`value`'s JSON type as Go's UnmarshalTypeError names it; a number
    meant for an integer kind comes with its text ("number 1.5")."""
    name = "object" if isinstance(value, dict) else _GO_JSON_TYPES[type(value)]
    if name == "number" and isinstance(kind, tuple):
        return "number " + getattr(value, "text", str(value))
    return name


class _GoObject(dict):
    """A JSON object that keeps its members in the order sent, repeated
    keys included (`pairs`): Go's decoder checks each in that order."""
    __slots__ = ("pairs",)

    def __init__(self, pairs: list):
        super().__init__(pairs)
        self.pairs = pairs


# GO-COMPAT: json.Unmarshal (test_logging.py::test_bad_json_is_logged_as_go_logs_it)
def _json_type_error(fields: dict, types: dict, struct: str) -> str:
    """Go's unmarshal error for the first member of `fields` (Go's `struct`,
    e.g. ClientOpts), in the order sent and repeats included, whose value
    does not fit its kind in `types` (keys in any case), or "".  The field
    is named as the peer spelled its key, an element of a list by its
    index, as Go 1.2x does."""
    for sent, value in getattr(fields, "pairs", None) or fields.items():
        kind = types.get(sent.lower())
        if kind is None or value is None:
            continue
        name = "%s.%s" % (struct, sent)
        if kind is _STRINGS and isinstance(value, list):
            for index, item in enumerate(value):
                if item is not None and not isinstance(item, str):
                    return "json: cannot unmarshal %s into %s.%d of type string" % (
                        _go_json_type(item), name, index)
            continue
        if kind is _PERMISSION and isinstance(value, dict):
            problem = _json_type_error(value, {"allow": _STRINGS, "deny": _STRINGS}, name)
            if problem:
                return problem
            continue
        where = "Go struct field %s of type" % name
        if isinstance(kind, tuple):
            ok = type(value) is int and kind[0] <= value <= kind[1]  # true is no int
        else:
            ok = not isinstance(kind, str) and isinstance(value, kind)
        if not ok:
            return "json: cannot unmarshal %s into %s %s" % (_go_json_type(value, kind), where,
                                                            _GO_KINDS[kind])
    return ""


def _no_constant(name: str):
    raise ValueError("invalid character %r looking for beginning of value" % name[:1])


# A lone UTF-16 surrogate, which a \\ud800-style escape makes.
_LONE_SURROGATE = re.compile("[\\ud800-\\udfff]")


def _go_strings(value):
    """`value` with each lone surrogate in its strings as U+FFFD, which Go's
    decoder writes for one (Python keeps it, and it cannot be encoded:
    a client named "\\ud800" was closed by a UnicodeEncodeError)."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_go_strings(item) for item in value]
    if isinstance(value, dict):
        return _GoObject([(_go_strings(key), _go_strings(item))
                          for key, item in getattr(value, "pairs", value.items())])
    return value


# GO-COMPAT: json.Unmarshal (fuzz/test_fuzz_client_vs_go.py::test_found_inputs_get_go_answer)
def read_go_json(arg: bytes, types: dict, struct: str):
    """A CONNECT's or INFO's JSON read as encoding/json reads it into Go's
    `struct` (ClientOpts, Info, connectInfo, leafConnectInfo), whose fields
    have `types` (see above): the object, its keys lower-cased (for a key
    repeated in different cases the last one wins), or None for null.
    Raises ValueError with Go's words: the scanner's for bad JSON
    (go_json_syntax_error), the decoder's for a value of the wrong type."""
    try:
        value = json.loads(arg.decode("utf-8", "replace"), parse_constant=_no_constant,
                           parse_float=_go_float, object_pairs_hook=_GoObject)
        if b"\\u" in arg:
            value = _go_strings(value)
    except (ValueError, RecursionError) as exc:    # (deep nesting: Go's json fails too)
        text = go_json_syntax_error(arg.decode("utf-8", "surrogateescape"))
        raise ValueError(text or ("exceeded max depth" if isinstance(exc, RecursionError)
                                  else str(exc)))
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("json: cannot unmarshal %s into Go value of type server.%s"
                         % (_go_json_type(value), struct))
    problem = _json_type_error(value, types, struct)
    if problem:
        raise ValueError(problem)
    fields = _GoObject([(key.lower(), item) for key, item in value.pairs])
    fields.pairs = value.pairs      # (as sent: a route's or leaf's own struct is checked next)
    return fields


# -- Go's json scanner, for its error texts -------------------------------------
#
# Python's json says where JSON breaks in its own words; a peer's bad CONNECT
# is logged in Go's (nats-server 2.15's: Go 1.2x words some of them
# differently from the Go that built 2.9).

_JSON_SPACE = " \t\r\n"
_JSON_DIGITS = "0123456789"
_JSON_HEX = "0123456789abcdefABCDEF"
_JSON_END_OF_INPUT = "unexpected end of JSON input"


def _json_string_end(text: str, i: int):
    """(index after the string opening at i, "") or (-1, Go's error)."""
    n = len(text)
    i += 1
    while i < n:
        ch = text[i]
        if ch == '"':
            return i + 1, ""
        if ch == "\\":
            escape = text[i + 1:i + 2]
            if escape == "u":
                digits = text[i + 2:i + 6]
                if all(d in _JSON_HEX for d in digits):
                    if len(digits) < 4:
                        break
                    i += 6
                    continue
                return -1, "invalid escape sequence `\\u%s` in string" % digits
            if not escape:
                break
            if escape not in '"\\/bfnrt':
                return -1, "invalid escape sequence `\\%s` in string" % escape
            i += 2
            continue
        if ch < " ":
            return -1, _json_bad(text, i, "in string")
        i += 1
    return -1, _JSON_END_OF_INPUT


def _json_number_end(text: str, i: int):
    """(index after the number starting at i, "") or (-1, Go's error)."""
    n = len(text)
    if text[i] == "-":
        i += 1
    if i >= n:
        return -1, _JSON_END_OF_INPUT
    if text[i] == "0":
        i += 1
    elif text[i] in _JSON_DIGITS:
        while i < n and text[i] in _JSON_DIGITS:
            i += 1
    else:
        return -1, _json_bad(text, i, "in numeric literal")
    for marks, signs in ((".", ""), ("eE", "+-")):
        if i < n and text[i] in marks:
            i += 1
            if signs and i < n and text[i] in signs:
                i += 1
            if i >= n:
                return -1, _JSON_END_OF_INPUT
            if text[i] not in _JSON_DIGITS:
                return -1, _json_bad(text, i, "in numeric literal")
            while i < n and text[i] in _JSON_DIGITS:
                i += 1
    return i, ""


def _json_bad(text: str, at: int, context: str) -> str:
    """Go's scanner error for the character at `at` (quoted as its quoteChar)."""
    ch = text[at]
    quoted = "\\'" if ch == "'" else '"' if ch == '"' else \
        go_quote(ch.encode("utf-8", "surrogateescape"))[1:-1]
    return "invalid character '%s' %s" % (quoted, context)


def go_json_syntax_error(text: str) -> str:
    """What Go's json scanner (nats-server 2.15's) says of the first
    character of `text` that breaks JSON, or "" when there is none.
    Containers are an explicit stack ("{" or "["), so depth costs no
    recursion."""
    n, i, stack = len(text), 0, []
    state = "value"             # value | value-or-] | key | key-or-} | colon | after
    while True:
        while i < n and text[i] in _JSON_SPACE:
            i += 1
        if i >= n:
            return "" if state == "after" and not stack else _JSON_END_OF_INPUT
        ch = text[i]
        if state in ("key", "key-or-}"):
            if ch == "}" and state == "key-or-}":
                stack.pop()
                i, state = i + 1, "after"
                continue
            if ch != '"':
                return _json_bad(text, i, "looking for beginning of object key string")
            i, error = _json_string_end(text, i)
            if error:
                return error
            state = "colon"
        elif state == "colon":
            if ch != ":":
                return _json_bad(text, i, "after object key")
            i, state = i + 1, "value"
        elif state == "after":
            if not stack:
                return _json_bad(text, i, "after top-level value")
            close = "}" if stack[-1] == "{" else "]"
            if ch == ",":
                i, state = i + 1, "key" if close == "}" else "value"
            elif ch == close:
                stack.pop()
                i += 1
            else:
                return _json_bad(text, i, "after object key:value pair" if close == "}"
                                 else "after array element")
        elif ch == "]" and state == "value-or-]":
            stack.pop()
            i, state = i + 1, "after"
        elif ch in "{[":
            stack.append(ch)
            i, state = i + 1, "key-or-}" if ch == "{" else "value-or-]"
        else:
            if ch == '"':
                i, error = _json_string_end(text, i)
            elif ch == "-" or ch in _JSON_DIGITS:
                i, error = _json_number_end(text, i)
            elif ch in "tfn":
                word = "true" if ch == "t" else "false" if ch == "f" else "null"
                error = ""
                for k in range(1, len(word)):
                    if i + k >= n:
                        error = _JSON_END_OF_INPUT
                    elif text[i + k] != word[k]:
                        error = _json_bad(text, i + k, "in literal %s (expecting '%s')"
                                          % (word, word[k]))
                    if error:
                        break
                i += len(word)
            else:
                error = _json_bad(text, i, "looking for beginning of value")
            if error:
                return error
            state = "after"


# ============================================================================
# 10. TLS
# ============================================================================
#
# A TLS connection reads and writes through OpenSSL without ever blocking the
# loop.  `ssl.SSLObject` works on two memory BIOs instead of a socket:
#
#     socket --recv--> incoming BIO --SSLObject.read--> plaintext --> process_input
#     out --SSLObject.write--> outgoing BIO --send--> socket
#
# so a handshake is a few rounds of "feed in what arrived, send what OpenSSL
# wrote, wait for the selector", and a peer that stalls mid-handshake costs
# nothing but its timer.  It also avoids the trap of non-blocking SSLSockets,
# where plaintext already decrypted inside OpenSSL never wakes select(): each
# read drains OpenSSL until it asks for more, and a publisher stalled by
# backpressure with plaintext still inside is resumed by a timer.
#
# A session moves through
#
#     WAIT (handshake_first with a fallback, nothing received yet: the
#           fallback timer sends a plain INFO and moves on to HELLO)
#       -> HELLO (the first byte must open a TLS record, as Go checks)
#       -> HANDSHAKE -> OPEN
#
# and a failed handshake, or one not done within the tls timeout, closes the
# connection with "TLS Handshake Failure".  `with_tls(Client)` is the class
# a TLS server accepts; `with_tls(Route)` carries routes when the cluster has
# a tls block, and on the routes we dial we are the TLS client, speaking
# first (a session with a server hostname starts in HANDSHAKE).  Go twins:
# server.go createClientEx, route.go createRoute, client.go
# doTLSServerHandshake, tlsTimeout; auth.go checkClientTLSCertSubject.

# TLSSession states, in order.
TLS_WAIT, TLS_HELLO, TLS_HANDSHAKE, TLS_OPEN = 0, 1, 2, 3

# First bytes of a TLS record: a handshake message, or an alert.
TLS_RECORD_STARTS = (0x16, 0x15)


class TLSSession:
    """One connection's TLS state: OpenSSL's object, its two memory BIOs,
    ciphertext the kernel has not taken yet, and the handshake's progress."""

    __slots__ = ("sslobj", "incoming", "outgoing", "unsent", "state", "first")

    def __init__(self, context, state: int, first: bool, hostname: str | None = None):
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing,
                                       server_side=hostname is None, server_hostname=hostname)
        self.unsent = None        # memoryview: what the last send left of a record batch
        self.state = state
        self.first = first        # handshake_first: INFO comes after the handshake

    def conn_info(self) -> dict:
        """The /connz fields of an open session (Go's ConnInfo)."""
        info = {"tls_version": tls_version_name(self.sslobj.version()),
                "tls_cipher_suite": go_cipher_name(self.sslobj.cipher()[0])}
        if self.first:
            info["tls_first"] = True
        return info


class TLSConnection(Connection):
    """The TLS ends of a connection, placed before its class by `with_tls`.

    Loop thread only.  Reads go socket -> incoming BIO -> `process_input`;
    `flush` encrypts `out` and sends the records; `close` ends with a
    close_notify.  The parser, buffers and timers are the plain class's.
    """

    __slots__ = ()

    def start_tls(self, context, timeout: float | None, state: int = TLS_HELLO,
                  first: bool = False, hostname: str | None = None):
        """Begin a handshake, due within `timeout` s (None: another timer
        sees to it): the server side, or with the `hostname` we dialed the
        client side, which speaks first."""
        server = self.server
        if server.tls_read_buffer is None:  # ciphertext lands here; plaintext in read_buffer
            server.tls_read_buffer = read_buffer(server.read_size)
            server.tls_read_view = memoryview(server.tls_read_buffer)
        self.tls = TLSSession(context, TLS_HANDSHAKE if hostname else state, first, hostname)
        if self.tls_label:
            self.tls_debug("Starting TLS %s%s handshake", self.tls_label,
                           "client" if hostname else "server")
        else:
            self.tls_debug("Starting TLS %s connection handshake", self.kind.lower())
        if timeout is not None:
            server.add_timer(timeout, self.tls_timeout)
        if hostname:
            self.tls_handshake()  # the ClientHello

    def send_now(self, data: bytes):
        """Bytes straight to the socket, outside TLS: the plain INFO before
        the upgrade.  A fresh socket's buffer takes a few hundred bytes."""
        try:
            self.sock.send(data)
        except OSError as exc:
            self.debug("Error flushing: %s", exc)
            self.close(WRITE_ERROR, flush=False)

    # -- input ---------------------------------------------------------------

    def read_ready(self):
        """Take ciphertext from the kernel; handshake, or decrypt and parse."""
        server = self.server
        tls = self.tls
        if tls is None:             # allow_non_tls: a client that stayed plain
            super().read_ready()
            return
        try:
            n = self.sock.recv_into(server.tls_read_buffer, server.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.debug("Error reading from client: %s", exc)
            self.close(READ_ERROR, flush=False)
            return
        if n == 0:
            if tls.state == TLS_OPEN:
                self.close(CLIENT_CLOSED, flush=False)
            else:
                self.tls_failed("EOF")
            return
        tls.incoming.write(server.tls_read_view[:n])
        if tls.state != TLS_OPEN:
            if tls.state < TLS_HANDSHAKE:
                if server.tls_read_buffer[0] not in TLS_RECORD_STARTS:
                    if tls.state == TLS_HELLO and not tls.first and not self.tls_label \
                            and server.tls_optional():
                        # allow_non_tls: a plain client; TLS ends here.
                        data = bytes(server.tls_read_view[:n])
                        self.tls = None
                        server.start_client_timers(self)
                        self.process_input(data)
                        return
                    # A plain-text peer: Go closes without a word or an alert
                    # (and logs it at [ERR] for a route).
                    self.log_tls_error(self.refuse_plain_text(bytes(server.tls_read_view[:5])),
                                       at_debug=not self.tls_label)
                    self.close(TLS_HANDSHAKE_ERROR, flush=False)
                    return
                tls.state = TLS_HANDSHAKE
            if not self.tls_handshake():
                return
        self.tls_input()

    def tls_handshake(self) -> bool:
        """Feed the handshake what arrived; True once it is complete."""
        tls = self.tls
        try:
            tls.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self.flush()  # the records OpenSSL wrote (ServerHello, certificate, ...)
            return False
        except ssl.SSLError as exc:
            self.tls_failed(go_tls_error(exc))
            return False
        tls.state = TLS_OPEN
        if self.server.log.isEnabledFor(logging.DEBUG):
            self.tls_debug("TLS handshake complete")
            self.tls_debug("TLS version %s, cipher suite %s",
                           tls_version_name(tls.sslobj.version()),
                           go_cipher_name(tls.sslobj.cipher()[0]))
        self.server.tls_established(self)
        self.flush()
        return True

    def tls_failed(self, reason: str):
        """Log why (Go's "TLS handshake error"), give the peer the alert
        OpenSSL wrote, and close."""
        self.log_tls_error(reason)
        alert = self.tls.outgoing.read()
        if alert:
            try:
                self.sock.send(alert)
            except OSError:
                pass
        self.close(TLS_HANDSHAKE_ERROR, flush=False)

    def tls_debug(self, text: str, *args):
        """A [DBG] line of the handshake's progress."""
        self.debug(text, *args)

    def log_tls_error(self, reason: str, at_debug: bool = False):
        """Go's "TLS handshake error" line (a client's plain-text first
        record is logged at [DBG])."""
        (self.debug if at_debug else self.error)("TLS %shandshake error: %s", self.tls_label,
                                                 reason)

    def refuse_plain_text(self, first: bytes) -> str:
        """The peer's first bytes are no TLS record: why (here nothing is
        sent; a wss:// port answers an HTTP request)."""
        return "tls: first record does not look like a TLS handshake"

    def tls_timeout(self):
        """Go's tlsTimeout: a handshake still unfinished is closed."""
        if self.closed or self.tls is None or self.tls.state == TLS_OPEN:
            return
        if self.tls_label:
            # A route: Go's handshake read fails first, then the timer fires.
            self.error("TLS %shandshake error: i/o timeout", self.tls_label)
            self.close(TLS_HANDSHAKE_ERROR, flush=False)
            self.error("TLS handshake timeout")
            return
        self.debug("TLS handshake timeout")
        self.close(TLS_HANDSHAKE_ERROR, flush=False)

    def tls_input(self):
        """Decrypt what OpenSSL holds and process it, a read buffer at a time,
        until it needs more ciphertext or this publisher is stalled."""
        tls = self.tls
        read = tls.sslobj.read
        view = self.server.read_view
        size = self.server.read_size
        while not (self.closed or self.stalled or self.waiting or self.backlog is not None):
            n = 0
            eof = False
            try:
                while n < size:
                    got = read(size - n, view[n:])
                    if not got:
                        eof = True  # the peer's close_notify
                        break
                    n += got
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                self.debug("Error reading from client: %s", exc)
                self.close(READ_ERROR, flush=False)
                return
            if n:
                self.process_input(bytes(view[:n]))
            if eof:
                self.close(CLIENT_CLOSED, flush=False)
                return
            if n < size:
                break
        if tls.outgoing.pending and not self.closed:
            self.server.pending.add(self)  # a key update, say: sent by the flush

    def resume_reading(self):
        """Read again; plaintext left inside OpenSSL would never wake
        select(), so the next timer turn processes it."""
        super().resume_reading()
        tls = self.tls
        if tls is not None and tls.state == TLS_OPEN and (
                tls.incoming.pending or tls.sslobj.pending()):
            self.server.add_timer(0.0, self.tls_input)

    # -- output --------------------------------------------------------------

    def flush(self):
        """Encrypt `out` and send the records while the kernel takes them
        (the plain flush's twin: same slow-consumer, stall and write-wait
        rules, counted in ciphertext bytes)."""
        if self.closed:
            return
        tls = self.tls
        if tls is None:             # allow_non_tls: a client that stayed plain
            super().flush()
            return
        out = self.out
        if out and tls.state == TLS_OPEN:
            try:
                tls.sslobj.write(out[0] if len(out) == 1 else b"".join(out))
            except ssl.SSLError as exc:
                self.debug("Error flushing: %s", exc)
                self.close(WRITE_ERROR, flush=False)
                return
            out.clear()
        outgoing = tls.outgoing
        while True:
            data = tls.unsent
            if data is None:
                if not outgoing.pending:
                    break
                data = outgoing.read(MAX_SEND_SIZE)
            sent = self.send_some(data)
            if sent < 0:
                return
            if sent < len(data):
                tls.unsent = memoryview(data)[sent:]
                break
            tls.unsent = None
        pending = outgoing.pending + (len(tls.unsent) if tls.unsent is not None else 0)
        max_pending = self.server.options.max_pending
        if self.stall_waiters and pending <= max_pending * 3 // 4:
            self.release_stalled()
        if pending > max_pending:
            self.slow_consumer(SLOW_CONSUMER_PENDING_BYTES, pending)
        elif pending and not self.write_waiting:
            # The write-deadline clock starts when the kernel first pushes back.
            self.last_write_progress = time.monotonic()
            self.write_waiting = True
            self.server.want_write(self, True)
        elif not pending and self.write_waiting:
            self.write_waiting = False
            self.server.want_write(self, False)

    def pending_bytes(self) -> int:
        """Plaintext not yet encrypted, plus ciphertext the kernel has not taken."""
        tls = self.tls
        if tls is None:
            return super().pending_bytes()
        unsent = len(tls.unsent) if tls.unsent is not None else 0
        return sum(map(len, self.out)) + tls.outgoing.pending + unsent

    # -- close ---------------------------------------------------------------

    def close(self, reason: str, flush: bool = True):
        """Close; an open session that got all its output out first says
        close_notify (as Go's tls.Conn.Close does)."""
        tls = self.tls
        if flush and not self.closed and tls is not None and tls.state == TLS_OPEN:
            self.flush()
            if self.closed:
                return
            if tls.unsent is None and not tls.outgoing.pending:
                try:
                    tls.sslobj.unwrap()
                except (ssl.SSLError, OSError, ValueError):
                    pass  # the peer's close_notify is not awaited
                try:
                    self.sock.send(tls.outgoing.read())
                except OSError:
                    pass
        super().close(reason, flush)


def with_tls(cls: type) -> type:
    """`cls` speaking TLS: a subclass whose read_ready, flush and close come
    from TLSConnection.  The server makes `with_tls(Client)` and
    `with_tls(Route)` once each."""
    return type("TLS" + cls.__name__, (TLSConnection, cls),
                {"__slots__": (), "__doc__": "%s over TLS." % cls.__name__})


def tls_version_name(version: str | None) -> str:
    """OpenSSL's "TLSv1.3" as Go shows it: "1.3"."""
    return (version or "").replace("TLSv", "") or "Unknown"


def go_cipher_name(openssl_name: str) -> str:
    """OpenSSL's name of a cipher suite as Go names it (TLS 1.3 names agree)."""
    for go_name, name in GO_CIPHER_SUITES.items():
        if name == openssl_name:
            return go_name
    return openssl_name


# OpenSSL's reasons for a failed handshake, in Go's words.
_GO_TLS_ERRORS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "tls: client didn't provide a certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "remote error: tls: bad certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "remote error: tls: unknown certificate authority",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "remote error: tls: unknown certificate",
    "TLSV1_ALERT_DECRYPT_ERROR": "remote error: tls: error decrypting message",
    "NO_SHARED_CIPHER": "tls: no cipher suite supported by both client and server",
    "UNSUPPORTED_PROTOCOL": "tls: client offered only unsupported versions",
    "WRONG_VERSION_NUMBER": "tls: first record does not look like a TLS handshake",
}


def go_tls_error(exc: Exception) -> str:
    """A handshake error as Go's crypto/tls would phrase it, where known."""
    reason = getattr(exc, "reason", None) or ""
    if reason == "CERTIFICATE_VERIFY_FAILED":
        detail = getattr(exc, "verify_message", "") or "certificate verify failed"
        if "issuer" in detail or "self-signed" in detail or "self signed" in detail:
            detail = "certificate signed by unknown authority"
        return "tls: failed to verify certificate: x509: %s" % detail
    if reason in _GO_TLS_ERRORS:
        return _GO_TLS_ERRORS[reason]
    return "tls: " + reason.lower().replace("_", " ") if reason else str(exc)


# Subject attributes Go's pkix.Name keeps as fields, OpenSSL's long name ->
# the RFC 2253 short name, in the order its ToRDNSequence writes them.
_DN_ATTRIBUTES = (("countryName", "C"), ("stateOrProvinceName", "ST"),
                  ("localityName", "L"), ("streetAddress", "STREET"),
                  ("postalCode", "POSTALCODE"), ("organizationName", "O"),
                  ("organizationalUnitName", "OU"), ("commonName", "CN"),
                  ("serialNumber", "SERIALNUMBER"))


def cert_identities(cert: dict) -> list:
    """The user names verify_and_map tries for a peer certificate (a dict
    from SSLObject.getpeercert()), in Go's order (checkClientTLSCertSubject):
    e-mail SANs, DNS SANs, URI SANs, then the subject as RFC 2253 text:
    in the certificate's own order with every attribute Go names (Go compares
    that one as a parsed DN), with the domain components appended when there
    are any, and as Go's pkix.Name prints it (`CN=alice,OU=tests,O=Acme,C=US`).
    Go finds nothing when the certificate has no e-mail, URI or subject."""
    sans = cert.get("subjectAltName", ())
    emails = [value for kind, value in sans if kind == "email"]
    uris = [value for kind, value in sans if kind == "URI"]
    names = emails + [value for kind, value in sans if kind == "DNS"] + uris
    subject = cert.get("subject", ())
    if not emails and not uris and not subject:
        return []
    short = dict(_DN_ATTRIBUTES, domainComponent="DC")
    if all(attr in short for rdn in subject for attr, _value in rdn):
        names.append(",".join("+".join("%s=%s" % (short[attr], _dn_escape(value))
                                       for attr, value in rdn)
                              for rdn in reversed(subject)))
    values: dict = {}
    for rdn in subject:
        for attr, value in rdn:
            values.setdefault(attr, []).append(value)
    parts = []
    for attr, name in reversed(_DN_ATTRIBUTES):
        found = values.get(attr, [])
        if name in ("CN", "SERIALNUMBER"):
            found = found[-1:]  # pkix.Name keeps one of each, the last
        if found:
            parts.append("+".join("%s=%s" % (name, _dn_escape(value)) for value in found))
    dn = ",".join(parts)
    dcs = ",".join("DC=" + value for value in values.get("domainComponent", ()))
    if dcs:
        names.append(dn + "," + dcs)
    names.append(dn)
    return list(dict.fromkeys(name for name in names if name))


def _dn_escape(value: str) -> str:
    """Go's RDNSequence.String escaping of an attribute value."""
    out = []
    for i, ch in enumerate(value):
        if (ch in ',+"\\<>;' or (ch == " " and i in (0, len(value) - 1))
                or (ch == "#" and i == 0)):
            out.append("\\")
        out.append(ch)
    return "".join(out)


# Escapes Go's %q uses for the common control characters.


# -- the server's side of a TLS client --

class TLSServing:
    """The Server's part in a TLS client's start (mixed into Server in
    chapter 16): which comes first, INFO or the handshake (Go's
    createClientEx, handshake_first and its fallback), and what a finished
    handshake starts.  The connection's side is TLSConnection above."""

    def start_client_tls(self, client: TLSConnection):
        """Go's createClientEx on a TLS server: a plain INFO, then the upgrade;
        or with handshake_first the handshake at once and INFO after it, and
        with a fallback delay a plain INFO after all if no ClientHello came."""
        tls = self.options.tls
        context = tls.server_context()
        if not tls.handshake_first:
            client.send_now(self.client_info(client))
            if not client.closed:
                client.start_tls(context, tls.timeout)
        elif not tls.fallback:
            client.start_tls(context, tls.timeout, TLS_HELLO, first=True)
        else:
            client.start_tls(context, tls.fallback + tls.timeout, TLS_WAIT, first=True)
            self.add_timer(tls.fallback, lambda: self.tls_fallback(client))

    def tls_fallback(self, client: TLSConnection):
        """handshake_first with a fallback, and nothing arrived in time: send
        the INFO in plain text after all; the client upgrades as usual."""
        if client.closed or client.tls.state != TLS_WAIT:
            return
        client.tls.state = TLS_HELLO
        client.tls.first = False
        client.send_now(self.client_info(client))

    def tls_established(self, client: TLSConnection):
        """A handshake completed: the INFO if it waited for it, then the
        timers a plain client starts at accept (Go arms them only now).
        A route starts its protocol now (`start_route`)."""
        if isinstance(client, Route):
            self.cluster.start_route(client)
            return
        if isinstance(client, LeafNode):
            if client.is_spoke and client.ws is not None and client.ws.state == WS_HTTP:
                client.ws_dial(client.url.host, client.url.port)    # wss://: the upgrade
            elif client.is_spoke and client.ws is None:
                client.hello()          # our CONNECT to the hub (chapter 13)
            return
        client.tls_identities = client.tls_peer_identities()
        if client.ws is not None:
            return                      # wss://: the HTTP upgrade comes next (ws_upgrade)
        if client.tls.first:
            client.queue_outbound(self.client_info(client))
        self.start_client_timers(client)


# ============================================================================
# 11. WebSocket
# ============================================================================
#
# Browsers reach NATS over WebSocket (RFC 6455): an HTTP/1.1 GET asks to
# upgrade the connection, and from then on the client protocol travels in
# binary frames, masked by the client, each message optionally compressed
# (RFC 7692's permessage-deflate, with no context kept between messages).
# A frame is only a transport: its payloads, joined, are the byte stream a
# TCP client sends, so the client's parser reads them unchanged, an op may
# span frames and a frame may hold many ops.
#
# The layer sits between the socket (or TLS, for wss://) and the client, as
# TLS does: WSConnection is mixed in before the client's class
# (with_websocket).  Its process_input reads the HTTP request, answers it
# (101, or Go's HTTP error), and from then on unframes; its flush frames
# what the client queued.  Control frames (ping, pong, close) are answered
# in place; a broken frame gets a close frame with Go's status and text.
# Everything runs in the one loop, non-blocking.  Go twin:
# server/websocket.go.  Entry points: WebSocketServing.listen_websocket
# (the server's side), WSConnection.

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Frame opcodes and header bits (RFC 6455 5.2).
WS_CONTINUATION, WS_TEXT, WS_BINARY = 0, 1, 2
WS_CLOSE, WS_PING, WS_PONG = 8, 9, 10
WS_FINAL, WS_RSV1, WS_RSV2_RSV3, WS_MASKED = 0x80, 0x40, 0x30, 0x80
WS_MAX_CONTROL_PAYLOAD = 125
# ws_frame_start: a bad frame waits for input the parser put off.
WS_HELD = -2

# Close status codes (RFC 6455 7.4.1) Go sends.
WS_CLOSE_NORMAL = 1000
WS_CLOSE_GOING_AWAY = 1001
WS_CLOSE_PROTOCOL_ERROR = 1002
WS_CLOSE_NO_STATUS = 1005
WS_CLOSE_INVALID_PAYLOAD = 1007
WS_CLOSE_POLICY_VIOLATION = 1008
WS_CLOSE_MESSAGE_TOO_BIG = 1009
WS_CLOSE_INTERNAL_ERROR = 1011
WS_CLOSE_TLS_HANDSHAKE = 1015

# The close status for why the server closes (Go's wsEnqueueCloseMessage).
WS_CLOSE_STATUS_FOR = {
    CLIENT_CLOSED: WS_CLOSE_NORMAL,
    AUTHENTICATION_TIMEOUT: WS_CLOSE_POLICY_VIOLATION,
    AUTHENTICATION_VIOLATION: WS_CLOSE_POLICY_VIOLATION,
    SLOW_CONSUMER_PENDING_BYTES: WS_CLOSE_POLICY_VIOLATION,
    SLOW_CONSUMER_WRITE_DEADLINE: WS_CLOSE_POLICY_VIOLATION,
    MAX_CONNECTIONS_EXCEEDED: WS_CLOSE_POLICY_VIOLATION,
    MAX_CONTROL_LINE_EXCEEDED: WS_CLOSE_POLICY_VIOLATION,
    TLS_HANDSHAKE_ERROR: WS_CLOSE_TLS_HANDSHAKE,
    PARSE_ERROR: WS_CLOSE_PROTOCOL_ERROR,
    PROTOCOL_VIOLATION: WS_CLOSE_PROTOCOL_ERROR,
    BAD_CLIENT_PROTOCOL_VERSION: WS_CLOSE_PROTOCOL_ERROR,
    MAX_PAYLOAD_EXCEEDED: WS_CLOSE_MESSAGE_TOO_BIG,
    WRITE_ERROR: WS_CLOSE_GOING_AWAY,
    READ_ERROR: WS_CLOSE_GOING_AWAY,
    STALE_CONNECTION: WS_CLOSE_GOING_AWAY,
    SERVER_SHUTDOWN: WS_CLOSE_GOING_AWAY,
}

# Go writes frames of at most this many bytes to a browser (one whose
# User-Agent starts "Mozilla/"), which copes better with them.
WS_FRAME_SIZE_FOR_BROWSERS = 4096
# Output of this size or less is not worth compressing.
WS_COMPRESS_THRESHOLD = 64
# The compressed bytes of one message may be this many times max_payload
# (and at most WS_MAX_MESSAGE_LIMIT) before its inflation is refused.
WS_MAX_MESSAGE_MULTIPLE = 8
WS_MAX_MESSAGE_LIMIT = 64 * 1024 * 1024
# The longest HTTP request head read before the upgrade (Go's http.Server
# default, DefaultMaxHeaderBytes, and its 4 KiB of slack).
WS_MAX_REQUEST = (1 << 20) + 4096
# What a deflate stream's sync flush ends with: left off each compressed
# message, and put back before inflating one (RFC 7692 7.2.1).
WS_DEFLATE_TAIL = b"\x00\x00\xff\xff"

WS_PMC_EXTENSION = "permessage-deflate"
WS_PMC_RESPONSE = (b"Sec-WebSocket-Extensions: permessage-deflate; "
                   b"server_no_context_takeover; client_no_context_takeover\r\n")
WS_NO_MASKING_HEADER = "nats-no-masking"

# Where a WebSocket connection is: reading the HTTP request, or framed.
WS_HTTP, WS_OPEN, WS_DIALED = 0, 1, 2     # (WS_DIALED: our request sent, its answer due)


class WSSession:
    """One connection's WebSocket state: the request until the upgrade,
    then the frame being read, the message being inflated, and the frames
    the server queued outside the client's output (pong, close)."""

    __slots__ = ("state", "request", "compress", "masked", "browser", "tail", "held",
                 "pieces", "remaining", "mask_key", "mask_pos", "final", "inflating",
                 "deflated", "deflated_size", "control", "close_sent", "close_frame", "unsent",
                 "key", "mask_writes", "client_ip", "cookies")

    def __init__(self):
        self.state = WS_HTTP
        self.request = bytearray()  # the HTTP request head as it arrives
        self.compress = False       # permessage-deflate negotiated
        self.masked = True          # client frames are masked (no Nats-No-Masking)
        self.browser = False        # frames of WS_FRAME_SIZE_FOR_BROWSERS at most
        self.tail = b""             # an unfinished frame header, kept for the next read
        self.held = b""             # frames not read while the parser held input back
        self.pieces = []            # payload bytes unframed and not yet parsed
        self.remaining = 0          # payload bytes still to come in the current frame
        self.mask_key = b""
        self.mask_pos = 0
        self.final = True           # the current message's last frame is being read
        self.inflating = False      # the current message is compressed
        self.deflated = []          # its compressed payloads so far
        self.deflated_size = 0
        self.control = []           # framed pongs to send before the next output
        self.close_sent = False
        self.close_frame = b""      # the close frame, sent after the output
        self.unsent = None          # framed bytes the kernel has not taken yet
        self.key = ""               # a dialing side's Sec-WebSocket-Key (ws_dial)
        self.client_ip = ""         # an X-Forwarded-For address, shown in the log prefix
        self.cookies = {}           # CONNECT credential -> the value of its *_cookie
        self.mask_writes = False    # a dialing side masks what it sends (no Nats-No-Masking)


def ws_accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key."""
    import hashlib      # (4 MB of OpenSSL: loaded by the first websocket client only)
    digest = hashlib.sha1(key.encode("latin-1") + WS_GUID).digest()
    return base64.b64encode(digest).decode()


def ws_frame_header(opcode: int, length: int, first: bool = True, final: bool = True,
                    compressed: bool = False) -> bytes:
    """A server frame's header (servers do not mask)."""
    b0 = (opcode if first else 0) | (WS_FINAL if final else 0) | (WS_RSV1 if compressed else 0)
    if length <= 125:
        return bytes((b0, length))
    if length < 65536:
        return bytes((b0, 126)) + length.to_bytes(2, "big")
    return bytes((b0, 127)) + length.to_bytes(8, "big")


def ws_close_payload(status: int, text: str) -> bytes:
    """A close frame's payload: the status, then the text, cut to fit a
    control frame with a trailing "..." (Go's wsCreateCloseMessage)."""
    body = text.encode()
    if len(body) > WS_MAX_CONTROL_PAYLOAD - 2:
        body = body[:WS_MAX_CONTROL_PAYLOAD - 5] + b"..."
    return status.to_bytes(2, "big") + body


def ws_valid_close_status(code: int) -> bool:
    """May a peer send this status in a close frame?  (Go's wsIsValidCloseStatus)"""
    if code in (WS_CLOSE_NO_STATUS, 1004, 1006, WS_CLOSE_TLS_HANDSHAKE):
        return False
    return 1000 <= code < 5000 and not 1016 <= code <= 2999


# XOR_TABLES[k]: the bytes.translate table that XORs every byte with k;
# made on the first long websocket frame (64 KiB).
XOR_TABLES: list = []

# Frames up to this size are unmasked as one XOR of two integers, longer
# ones by strided translation (ws_unmask); WS_KEY_ONES has a 1 in the low
# byte of each of its WS_INT_UNMASK_MAX // 4 little-endian 32-bit words.
WS_INT_UNMASK_MAX = 4096
WS_KEY_ONES = int.from_bytes(b"\x01\0\0\0" * (WS_INT_UNMASK_MAX // 4), "little")


def ws_unmask(data: bytes, key: bytes, pos: int) -> bytes:
    """`data` XOR the 4-byte mask `key`, starting at byte `pos` of the key."""
    n = len(data)
    if not n:
        return data
    key = key[pos:] + key[:pos]
    if n <= WS_INT_UNMASK_MAX:
        # HOT: a short frame (a browser client's PUB) is read as one
        #      little-endian integer and XORed with the key repeated, which is
        #      the key's value times 1s spaced 32 bits apart (in process on
        #      3.11: 16 B 1.9 -> 0.8 us, 100 B 2.5 -> 0.8, 1 KiB 3.1 -> 2.4,
        #      4 KiB 9.1 -> 7.8; 3.8 alike; 3.13 even from 2 KiB on; past
        #      4 KiB the translation below is as fast or faster).
        words = (n + 3) >> 2
        mask = int.from_bytes(key, "little") * \
            (WS_KEY_ONES >> (32 * (WS_INT_UNMASK_MAX // 4 - words)))
        return (int.from_bytes(data, "little") ^ mask).to_bytes(4 * words, "little")[:n]
    if not XOR_TABLES:
        XOR_TABLES.extend(bytes(b ^ k for b in range(256)) for k in range(256))
    # HOT: every 4th byte has the same mask byte, so four strided slices,
    #      each translated through its XOR table, make the whole at C speed
    #      (32 KiB: 180 us as one big-integer XOR, 115 us so).
    out = bytearray(data)
    for j in range(4):
        out[j::4] = data[j::4].translate(XOR_TABLES[key[j]])
    return bytes(out)


def ws_header_has(headers: dict, name: str, value: str) -> bool:
    """Does a header (any of its lines) list `value` among its comma-separated
    tokens, in any case?  (Go's wsHeaderContains)"""
    return any(token.strip(" \t").lower() == value.lower()
               for line in headers.get(name, ()) for token in line.split(","))


def ws_offers_deflate(headers: dict) -> bool:
    """Does the client offer permessage-deflate?  (Go checks the name only.)"""
    return any(param.strip(" \t").lower() == WS_PMC_EXTENSION
               for line in headers.get("sec-websocket-extensions", ())
               for extension in line.split(",") for param in extension.split(";"))


# The first bytes of an HTTP request (Go's tlsRecordHeaderLooksLikeHTTP).
WS_HTTP_REQUEST_STARTS = (b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO")

# websocket { *_cookie: NAME }: the CONNECT field the cookie NAME fills in,
# the first of these winning when two options name one cookie (Go's order).
WS_COOKIE_FIELDS = (("jwt_cookie", "jwt"), ("user_cookie", "user"), ("pass_cookie", "pass"),
                    ("token_cookie", "auth_token"))

# A cookie name is an HTTP token (RFC 7230's tchar).
_HTTP_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def ws_credential_cookies(headers: dict, names: dict) -> dict:
    """The request's Cookie headers read as Go's net/http reads them (each
    `name=value` between semicolons, trimmed; a name that is not a token, or
    a value, quotes stripped, holding a control byte, '"', ';' or '\\', is
    skipped): {CONNECT field: value} for the cookies `names` configures,
    the last one of a name winning."""
    fields = {}
    for option, field in reversed(WS_COOKIE_FIELDS):
        if names.get(option):
            fields[names[option]] = field
    found = {}
    for line in headers.get("cookie", ()):
        for part in line.split(";"):
            name, _, value = part.strip(" \t\r\n").partition("=")
            name = name.strip(" \t\r\n")
            if not _HTTP_TOKEN_RE.match(name) or name not in fields:
                continue
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if all(0x20 <= ord(c) < 0x7F and c not in '";\\' for c in value):
                found[fields[name]] = value
    return found


def ws_host_port(secure: bool, hostport: str) -> tuple:
    """(host lower-cased, port) of an origin or Host header, the scheme's
    default port when none is given (Go's wsGetHostAndPort)."""
    parsed = urllib.parse.urlsplit("//" + hostport)
    try:
        port = parsed.port
    except ValueError:
        raise ValueError("invalid port in %r" % hostport)
    host = (parsed.hostname or "").lower()
    return host, str(port if port is not None else (443 if secure else 80))


class WSConnection(Connection):
    """The WebSocket ends of a connection, placed before its class (and
    before TLSConnection for wss://) by `with_websocket`.  Loop thread only.

    process_input: HTTP request -> upgrade -> frames -> the client's parser.
    flush: the client's output -> frames (compressed when negotiated) ->
    the socket (or TLS).  close: a close frame first, with Go's status.
    """

    __slots__ = ()

    # -- input -----------------------------------------------------------------

    def process_input(self, data: bytes):
        """Bytes from the peer: the HTTP request until the upgrade, frames after."""
        ws = self.ws
        if ws.state == WS_OPEN:
            self.ws_read_frames(data)
            return
        if ws.state == WS_DIALED:
            self.ws_read_answer(data)
            return
        searched = max(0, len(ws.request) - 3)     # (the blank line may straddle reads)
        ws.request += data
        while ws.state == WS_HTTP and not self.closed:
            end = ws.request.find(b"\r\n\r\n", searched)
            searched = 0
            if end < 0:
                if len(ws.request) > WS_MAX_REQUEST:
                    self.ws_bad_request("431 Request Header Fields Too Large")
                return
            head, rest = bytes(ws.request[:end]), bytes(ws.request[end + 4:])
            ws.request = bytearray(rest)
            self.server.ws_upgrade(self, head, rest)

    # -- the dialing side (a leaf node's ws:// remote) -------------------------

    def ws_dial(self, host: str, port: int):
        """Ask the server we dialed to upgrade (Go's leaf dialing a hub's
        websocket port: path /leafnode, and no masking, which a server may
        refuse by not echoing Nats-No-Masking: then we mask)."""
        ws = self.ws
        ws.state = WS_DIALED
        ws.key = base64.b64encode(os.urandom(16)).decode()
        request = ("GET /leafnode HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\nNats-No-Masking: true\r\n\r\n"
                   % (_host_port(host, port), ws.key))
        self.queue_outbound(request.encode())
        self.flush()

    def ws_read_answer(self, data: bytes):
        """The server's answer to ws_dial: 101 with the right accept key,
        then frames (unmasked, as a server's are)."""
        ws = self.ws
        ws.request += data
        end = ws.request.find(b"\r\n\r\n")
        if end < 0:
            if len(ws.request) > WS_MAX_REQUEST:
                self.error("websocket handshake error: answer too long")
                self.close(READ_ERROR)
            return
        head, rest = bytes(ws.request[:end]), bytes(ws.request[end + 4:])
        ws.request = bytearray()
        lines = head.decode("latin-1").split("\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        status = lines[0].split(" ")
        if len(status) < 2 or status[1] != "101" or \
                fields.get("upgrade", "").lower() != "websocket" or \
                fields.get("connection", "").lower() != "upgrade" or \
                fields.get("sec-websocket-accept") != ws_accept_key(ws.key):
            self.error("websocket handshake error: invalid websocket connection (%s)",
                       lines[0])
            self.close(READ_ERROR)
            return
        ws.state = WS_OPEN
        ws.masked = False
        ws.mask_writes = fields.get("nats-no-masking", "").lower() != "true"
        if rest:
            self.ws_read_frames(rest)

    def ws_read_frames(self, data: bytes):
        """Unframe `data` (after what an earlier read left of a header, or
        left unread while input was held), handing payloads to the client's
        parser in order, once per read where it can (so that a flood is
        seen as one, as over TCP), and answering control frames; a frame
        breaking the rules closes the connection with Go's close frame.
        While the parser holds input back (its backlog, a bcrypt check, a
        stall), the frames not yet read wait raw in `held`, at most this
        read: reading them must not grow the backlog without bound."""
        ws = self.ws
        if ws.held:
            data, ws.held = ws.held + data, b""
        if ws.tail:
            data, ws.tail = ws.tail + data, b""
        i, n = 0, len(data)
        while i < n and not self.closed:
            if ws.remaining == 0:
                if self.backlog is not None or self.waiting or self.stalled:
                    ws.held = data[i:]      # read on in resume_reading
                    break
                header = self.ws_frame_start(data, i)
                if header is None:
                    ws.tail = data[i:]
                    break
                if header == WS_HELD:
                    ws.held = data[i:]      # refused once the put-off input is parsed
                    break
                if header < 0:
                    return                  # refused and closed
                i = header
                if ws.remaining == 0 and ws.inflating and ws.final:
                    self.ws_inflate()       # an empty last frame of a compressed message
                continue
            take = min(ws.remaining, n - i)
            chunk = data[i:i + take]
            if ws.masked:
                chunk = ws_unmask(chunk, ws.mask_key, ws.mask_pos)
                ws.mask_pos = (ws.mask_pos + take) & 3
            ws.remaining -= take
            i += take
            if ws.inflating:
                ws.deflated.append(chunk)
                ws.deflated_size += take
                if not self.ws_deflated_within_limit():
                    return
                if ws.remaining == 0 and ws.final:
                    self.ws_inflate()
            else:
                ws.pieces.append(chunk)
        self.ws_parse_pieces()

    def ws_parse_pieces(self):
        """Parse the payload bytes unframed so far (before a control frame,
        an inflated message, or at the end of a read), behind whatever input
        the parser put off (Connection.process_input)."""
        pieces = self.ws.pieces
        if pieces and not self.closed:
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            pieces.clear()
            super().process_input(data)

    def resume_reading(self):
        """Input flows again: first read the frames that waited raw (they
        may hold the parser back again, and then wait for the next turn)."""
        super().resume_reading()
        ws = self.ws
        if ws is not None and ws.held and not self.closed:
            self.ws_read_frames(b"")

    def ws_frame_start(self, data: bytes, i: int):
        """Read the frame header at `i`: the index after it (a control frame's
        payload included, the frame handled), None when the header is not all
        here, -1 when the frame was refused (and the connection closed), or
        WS_HELD when refusing it waits for input the parser put off."""
        ws = self.ws
        n = len(data)
        if n - i < 2:
            return None
        b0, b1 = data[i], data[i + 1]
        opcode = b0 & 0x0F
        final = bool(b0 & WS_FINAL)
        compressed = bool(b0 & WS_RSV1)
        if b0 & WS_RSV2_RSV3:
            return self.ws_frame_refused("RSV2 and RSV3 must be clear")
        if compressed and not ws.compress:
            return self.ws_frame_refused(
                "compressed frame received without negotiated permessage-deflate")
        if ws.masked and not b1 & WS_MASKED:
            return self.ws_frame_refused("mask bit missing")
        length = b1 & 0x7F
        if opcode in (WS_PING, WS_PONG, WS_CLOSE):
            if length > WS_MAX_CONTROL_PAYLOAD:
                return self.ws_frame_refused(
                    "control frame length bigger than maximum allowed of %d bytes"
                    % WS_MAX_CONTROL_PAYLOAD)
            if not final:
                return self.ws_frame_refused("control frame does not have final bit set")
            if compressed:
                return self.ws_frame_refused("control frame must not be compressed")
        elif opcode in (WS_TEXT, WS_BINARY):
            if not ws.final:
                return self.ws_frame_refused(
                    "new message started before final frame for previous message was received")
        elif opcode == WS_CONTINUATION:
            if ws.final or compressed:
                return self.ws_frame_refused("invalid continuation frame")
        else:
            return self.ws_frame_refused("unknown opcode %d" % opcode)
        at = i + 2
        if length == 126:
            if n - at < 2:
                return None
            length, at = int.from_bytes(data[at:at + 2], "big"), at + 2
        elif length == 127:
            if n - at < 8:
                return None
            length, at = int.from_bytes(data[at:at + 8], "big"), at + 8
            if length >> 63:
                return self.ws_frame_refused("invalid 64-bit payload length")
        key = b""
        if ws.masked:
            if n - at < 4:
                return None
            key, at = data[at:at + 4], at + 4
        if opcode >= WS_CLOSE:
            if n - at < length:
                return None
            if self.ws_input_put_off():
                return WS_HELD      # answered after the payloads before it
            payload = data[at:at + length]
            if ws.masked:
                payload = ws_unmask(payload, key, 0)
            self.ws_control_frame(opcode, payload)
            return -1 if self.closed else at + length
        if opcode != WS_CONTINUATION:
            ws.inflating = compressed
        ws.final = final
        ws.remaining, ws.mask_key, ws.mask_pos = length, key, 0
        return at

    def ws_control_frame(self, opcode: int, payload: bytes):
        """A ping gets its pong; a close is answered (Go echoes the status,
        or sends an empty close when none came) and ends the connection,
        after what came before it is parsed."""
        self.ws_parse_pieces()
        ws = self.ws
        if opcode == WS_PING:
            ws.control.append(ws_frame_header(WS_PONG, len(payload)) + payload)
            self.server.pending.add(self)
        elif opcode == WS_CLOSE:
            if len(payload) == 1:
                self.ws_protocol_error("close frame payload cannot be 1 byte")
                return
            status, body = WS_CLOSE_NO_STATUS, b""
            if len(payload) >= 2:
                status = int.from_bytes(payload[:2], "big")
                if not ws_valid_close_status(status):
                    self.ws_protocol_error("invalid close status code %d" % status)
                    return
                body = payload[2:]
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError:
                    status, body = WS_CLOSE_INVALID_PAYLOAD, b"invalid utf8 body in close frame"
            reply = b"" if status == WS_CLOSE_NO_STATUS else status.to_bytes(2, "big") + body
            ws.close_frame = ws_frame_header(WS_CLOSE, len(reply)) + reply
            ws.close_sent = True
            self.close(CLIENT_CLOSED)

    def ws_deflated_within_limit(self) -> bool:
        """A compressed message may not grow past what max_payload allows
        once inflated (Go's wsMaxMessageSize); False if it did (and closed)."""
        limit = min(self.server.options.max_payload * WS_MAX_MESSAGE_MULTIPLE,
                    WS_MAX_MESSAGE_LIMIT)
        if self.ws.deflated_size + len(WS_DEFLATE_TAIL) > limit:
            self.ws_max_payload()
            return False
        return True

    def ws_inflate(self):
        """The compressed message is whole: inflate it (at most max_payload
        bytes, as Go reads it) and parse it, after what came before it."""
        import zlib
        self.ws_parse_pieces()
        ws = self.ws
        deflated, ws.deflated, ws.inflating = ws.deflated, [], False
        ws.deflated_size = 0
        max_payload = self.server.options.max_payload
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(b"".join(deflated) + WS_DEFLATE_TAIL, max_payload + 1)
        except zlib.error as exc:
            self.debug("Error inflating a websocket message: %s", exc)
            self.close(READ_ERROR, flush=True)
            return
        super().process_input(data[:max_payload])
        if len(data) > max_payload and not self.closed:
            self.ws_max_payload()

    def ws_max_payload(self):
        """A compressed message too large: Go's max payload error and close."""
        self.error("%s", ERR_MAX_PAYLOAD)
        self.send_err_and_close(ERR_MAX_PAYLOAD, MAX_PAYLOAD_EXCEEDED)

    def ws_input_put_off(self) -> bool:
        """Parse the payloads read so far; True if the parser put some of
        them off (its time budget, a bcrypt check, a stall).  A control
        frame or a refused header after them then waits raw with the rest of
        the read (WS_HELD), so that it comes after them, as it does when
        nothing is put off: a PING's PONG after the answers before it, an
        error among them closing the connection first."""
        self.ws_parse_pieces()
        return not self.closed and (self.backlog is not None or self.waiting or self.stalled)

    def ws_frame_refused(self, text: str) -> int:
        """A frame header broke RFC 6455: ws_protocol_error, once the
        payloads before it are parsed (WS_HELD while some are put off)."""
        if self.ws_input_put_off():
            return WS_HELD
        return self.ws_protocol_error(text)

    def ws_protocol_error(self, text: str) -> int:
        """A frame broke RFC 6455: a close frame with 1002 and `text`, and
        close (Go's wsHandleProtocolError).  Returns -1 for ws_frame_start."""
        self.ws_parse_pieces()          # what came before the bad frame counts
        ws = self.ws
        if self.closed:
            return -1
        payload = ws_close_payload(WS_CLOSE_PROTOCOL_ERROR, text)
        ws.close_frame = ws_frame_header(WS_CLOSE, len(payload)) + payload
        ws.close_sent = True
        self.error("read error: %s", text)
        self.close(READ_ERROR)
        return -1

    def ws_http_error(self, status: int, reason: str):
        """Refuse the upgrade with Go's HTTP error response (http.Error) and
        log why; the connection stays open for another request, as Go's
        HTTP/1.1 server keeps it."""
        self.ws_handshake_error(reason)
        text = _HTTP_REASONS.get(status, "Error")
        body = (text + "\n").encode()
        self.out.append(b"HTTP/1.1 %d %s\r\n" % (status, text.encode())
                        + b"Content-Type: text/plain; charset=utf-8\r\n"
                        + b"Sec-Websocket-Version: 13\r\n"
                        + b"X-Content-Type-Options: nosniff\r\n"
                        + b"Date: " + _http_date().encode() + b"\r\n"
                        + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.server.pending.add(self)

    def ws_bad_request(self, status: str = "400 Bad Request"):
        """A request Go's HTTP server itself refuses (not HTTP, HTTP/1.1
        without a Host, a head too large): its bare status, and close."""
        self.out.append(b"HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        b"Connection: close\r\n\r\n%s" % (status.encode(), status.encode()))
        self.close(READ_ERROR)

    def ws_handshake_error(self, reason: str):
        """Log a refused upgrade as Go does."""
        self.server.log.error("%s - websocket handshake error: %s",
                              _host_port(self.host, self.port), reason)

    # wss://: before the upgrade, TLS is Go's HTTP server's, which logs only
    # a failed handshake, through nats-server's "websocket: " prefix.

    def tls_debug(self, text: str, *args):
        """Not logged before the upgrade."""
        if self not in self.server.ws_upgrading:
            super().tls_debug(text, *args)

    def log_tls_error(self, reason: str, at_debug: bool = False):
        """Before the upgrade, as Go's HTTP server logs it."""
        if self in self.server.ws_upgrading:
            self.server.log.error("websocket: TLS handshake error from %s: %s",
                                  _host_port(self.host, self.port), reason)
        else:
            super().log_tls_error(reason, at_debug)

    def refuse_plain_text(self, first: bytes) -> str:
        """An HTTP request to the wss:// port gets Go's plain-text 400."""
        if self in self.server.ws_upgrading and first in WS_HTTP_REQUEST_STARTS:
            self.send_now(b"HTTP/1.0 400 Bad Request\r\n\r\n"
                          b"Client sent an HTTP request to an HTTPS server.\n")
            return "client sent an HTTP request to an HTTPS server"
        return super().refuse_plain_text(first)

    def protocol_error(self, exc: ProtocolError):
        """A parse error inside a frame: Go's websocket read loop sends the
        -ERR, logs a read error and closes at once, without a close frame."""
        if exc.err is not None:
            self.send_err(exc.err)
        self.error("read error: %s", exc)
        self.ws.close_sent = True
        self.close(READ_ERROR)

    def auth_options(self) -> Options:
        """The websocket block's authorization or no_auth_user, if it has one."""
        return self.server.ws_auth_options()

    # -- output ------------------------------------------------------------------

    def flush(self):
        """Frame what the client queued, after any pong and before a close
        frame, and send it (the plain or TLS flush below does)."""
        ws = self.ws
        if ws is None or ws.state != WS_OPEN or self.closed:
            super().flush()
            return
        out = self.out
        frames = ws.control
        if ws.unsent is not None:
            frames.insert(0, ws.unsent)
            ws.unsent = None
        if out:
            frames += self.ws_frames(out)
            out.clear()
        if ws.close_frame:
            frames.append(ws.close_frame)
            ws.close_frame = b""
        ws.control = []
        if not frames:
            super().flush()
            return
        out.extend(frames)
        super().flush()
        if out:                         # the plain flush left framed bytes unsent
            rest = out[0] if len(out) == 1 else b"".join(bytes(chunk) for chunk in out)
            out.clear()
            ws.unsent = bytes(rest)

    def ws_frames(self, chunks: list) -> list:
        """The queued `chunks` as binary frames: one compressed frame when
        negotiated and worth it, else one frame, or frames of
        WS_FRAME_SIZE_FOR_BROWSERS bytes for a browser (Go's wsCollapsePtoNB)."""
        ws = self.ws
        total = sum(map(len, chunks))
        if not total:
            return []
        if ws.compress and total > WS_COMPRESS_THRESHOLD:
            import zlib
            deflater = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
            packed = deflater.compress(b"".join(chunks)) + deflater.flush(zlib.Z_SYNC_FLUSH)
            packed = packed[:-len(WS_DEFLATE_TAIL)]
            return [ws_frame_header(WS_BINARY, len(packed), compressed=True), packed]
        if not (ws.browser or ws.mask_writes):
            # HOT: one frame's header before the chunks as they are, joined
            #      once by the plain flush, not once more here.
            return [ws_frame_header(WS_BINARY, total), *chunks]
        data = b"".join(chunks)
        size = WS_FRAME_SIZE_FOR_BROWSERS if ws.browser else len(data)
        frames = []
        for at in range(0, len(data), size):
            chunk = data[at:at + size]
            if ws.mask_writes:      # a dialing side whose server wants masked frames
                key = os.urandom(4)
                header = bytearray(ws_frame_header(WS_BINARY, len(chunk)))
                header[1] |= WS_MASKED
                frames += [bytes(header) + key, ws_unmask(chunk, key, 0)]
            else:
                frames += [ws_frame_header(WS_BINARY, len(chunk)), chunk]
        return frames

    def pending_bytes(self) -> int:
        """Queued output, framed or not, the kernel has not taken."""
        ws = self.ws
        unsent = len(ws.unsent) if ws is not None and ws.unsent is not None else 0
        return super().pending_bytes() + unsent

    def close(self, reason: str, flush: bool = True):
        """Close; an upgraded connection says why first, in a close frame
        with Go's status for `reason` (wsEnqueueCloseMessage)."""
        ws = self.ws
        if not self.closed and ws is not None and ws.state == WS_OPEN:
            if not ws.close_sent:
                payload = ws_close_payload(
                    WS_CLOSE_STATUS_FOR.get(reason, WS_CLOSE_INTERNAL_ERROR), reason)
                ws.close_frame = ws_frame_header(WS_CLOSE, len(payload)) + payload
                ws.close_sent = True
            if flush or ws.close_frame:
                self.flush()
                if self.closed:
                    return
        super().close(reason, flush)

    def update_log_prefix(self):
        """A client's prefix with `wid:N` for `cid:N`, after the peer's
        X-Forwarded-For address if the upgrade named a valid one (Go's)."""
        super().update_log_prefix()
        given = "%s - cid:%d - " % (_host_port(self.host, self.port), self.cid)
        self.log_prefix = "%s - wid:%d - %s" % (self.ws_peer_address(), self.cid,
                                                  self.log_prefix[len(given):])

    def ws_peer_address(self) -> str:
        """`host:port` of the peer for log lines, after the X-Forwarded-For
        address of the upgrade if it named a valid one: `10.1.2.3/host:port`."""
        address = _host_port(self.host, self.port)
        forwarded_for = self.ws.client_ip
        if forwarded_for:
            address = "%s/%s" % ("[%s]" % forwarded_for if ":" in forwarded_for
                                 else forwarded_for, address)
        return address

    def authorize_connect(self, fields: dict) -> bool:
        """The upgrade's cookies (websocket { user_cookie ... }) stand in
        for the credentials the CONNECTs left empty (Go's processConnect;
        a no_auth_user login without a CONNECT takes none)."""
        cookies = self.ws.cookies if self.ws is not None else None
        if cookies and self.connect_received:
            fields, kept = dict(fields), self.credentials or {}
            for key, value in cookies.items():
                if not fields.get(key) and not (fields.get(key) is None and kept.get(key)):
                    fields[key] = value
        return super().authorize_connect(fields)

    def log_closed(self, reason: str):
        """A connection the upgrade never made a client ends unlogged, as
        one of Go's HTTP server's; any other as its class logs it."""
        if self.kind != "Client" or self.ws is None or self.ws.state != WS_HTTP:
            super().log_closed(reason)      # (a dialed wss:// leaf in its TLS too)

    def closed_cleanup(self):
        """No longer one of the connections shutdown closes unupgraded."""
        self.server.ws_upgrading.discard(self)
        super().closed_cleanup()


def with_websocket(cls: type) -> type:
    """`cls` (a client class, TLS or not) speaking WebSocket: a subclass whose
    process_input, flush and close come from WSConnection."""
    return type("WS" + cls.__name__, (WSConnection, cls),
                {"__slots__": (), "__doc__": "%s over WebSocket." % cls.__name__})


# HTTP status texts the upgrade's errors use (Go's http.StatusText).
_HTTP_REASONS = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed",
                 431: "Request Header Fields Too Large", 500: "Internal Server Error"}


def _http_date() -> str:
    """An HTTP Date header's value, now."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())


class WebSocketServing:
    """The Server's part in WebSocket (mixed into Server in chapter 16):
    the listener, the upgrade's checks and answer, and what a finished
    upgrade starts.  The connection's side is WSConnection above."""

    def listen_websocket(self):
        """Bind the websocket port and log it as Go does."""
        ws = self.options.websocket
        sock = _bind(ws.host, ws.port)
        self.ws_listener = _Listener(self, sock, self.create_ws_client)
        self.ws_port = sock.getsockname()[1]
        self.selector.register(sock, selectors.EVENT_READ, self.ws_listener)
        scheme = "wss" if ws.tls is not None else "ws"
        self.log.info("Listening for websocket clients on %s://%s", scheme,
                      _host_port(ws.host, self.ws_port))
        if ws.tls is None:
            self.log.warning("Websocket not configured with TLS. DO NOT USE IN PRODUCTION!")

    def create_ws_client(self, sock: socket.socket):
        """A websocket connection: a client that reads the HTTP request
        first (and, for wss://, completes its TLS handshake before that).
        Until the upgrade it is only an HTTP connection, as in Go: no cid
        (ws_upgrade gives one), not counted, listed or logged as a client."""
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        ws_opts = self.options.websocket
        secure = ws_opts.tls is not None
        client_class = self.ws_client_classes.get(secure)
        if client_class is None:
            client_class = self.ws_client_classes[secure] = with_websocket(
                self.tls_client_class if secure else Client)
        client = client_class(self, sock, 0)
        client.ws = WSSession()
        client.log_prefix = "%s - " % _host_port(client.host, client.port)
        try:
            self.selector.register(sock, selectors.EVENT_READ, client)
        except (ValueError, OSError) as exc:
            self.log.error("Error registering client connection: %s", exc)
            sock.close()
            return
        self.ws_upgrading.add(client)
        timeout = ws_opts.handshake_timeout
        if ws_opts.tls is not None:
            client.start_tls(ws_opts.tls.server_context(), None, TLS_HELLO,
                             first=True)
        if timeout:
            self.add_timer(timeout, lambda: self.ws_handshake_timeout(client))

    def ws_handshake_timeout(self, client: WSConnection):
        """The upgrade did not come in time: close (Go's ReadTimeout)."""
        if not client.closed and client.ws.state != WS_OPEN:
            if client.tls is not None and client.tls.state != TLS_OPEN:
                local = _host_port(*client.sock.getsockname()[:2])
                client.log_tls_error("read tcp %s->%s: i/o timeout" % (
                    local, _host_port(client.host, client.port)))
            client.close(READ_ERROR, flush=False)

    def ws_upgrade(self, client: WSConnection, head: bytes, rest: bytes):
        """Check the HTTP request as Go's wsUpgrade does, then answer 101 and
        start the client (INFO, timers), or answer Go's HTTP error."""
        ws_opts = self.options.websocket
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
            return client.ws_bad_request()      # Go's HTTP server: not HTTP at all
        method = parts[0]
        headers: dict = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                return client.ws_bad_request()
            headers.setdefault(name.lower(), []).append(value.strip(" \t"))
        first = {name: values[0] for name, values in headers.items()}
        if parts[2] == "HTTP/1.1" and "host" not in headers:
            return client.ws_bad_request("400 Bad Request: missing required Host header")
        if method != "GET":
            return client.ws_http_error(405, "request method must be GET")
        if not first.get("host"):
            return client.ws_http_error(400, "'Host' missing in request")
        if not ws_header_has(headers, "upgrade", "websocket"):
            return client.ws_http_error(400, "invalid value for header 'Upgrade'")
        if not ws_header_has(headers, "connection", "Upgrade"):
            return client.ws_http_error(400, "invalid value for header 'Connection'")
        key = first.get("sec-websocket-key", "")
        if not key:
            return client.ws_http_error(400, "key missing")
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid_key = False
        if not valid_key:
            return client.ws_http_error(400, "invalid websocket key")
        if not ws_header_has(headers, "sec-websocket-version", "13"):
            return client.ws_http_error(400, "invalid version")
        problem = self.ws_origin_problem(first, ws_opts)
        if problem:
            return client.ws_http_error(403, "origin not allowed: " + problem)
        if rest:
            # Go's hijacked connection has bytes buffered: closed without a word.
            client.ws_handshake_error("client sent data before handshake is complete")
            client.close(READ_ERROR, flush=False)
            return
        ws = client.ws
        # A leaf node dials the path /leafnode (Go's wsUpgrade: its suffix).
        leaf = urllib.parse.urlsplit(parts[1]).path.endswith("/leafnode")
        ws.compress = ws_opts.compression and ws_offers_deflate(headers)
        ws.masked = first.get(WS_NO_MASKING_HEADER) != "true"
        ws.browser = not leaf and first.get("user-agent", "").startswith("Mozilla/")
        forwarded_for = first.get("x-forwarded-for", "")
        if _is_ip_address(forwarded_for):
            ws.client_ip = forwarded_for    # the log names it (Go: only when a valid IP)
        if ws_opts.cookies and not leaf:
            ws.cookies = ws_credential_cookies(headers, ws_opts.cookies)
        answer = [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: ",
                  ws_accept_key(key).encode(), b"\r\n"]
        if ws.compress:
            answer.append(WS_PMC_RESPONSE)
        if not ws.masked:
            answer.append(b"Nats-No-Masking: true\r\n")
        for name, value in ws_opts.headers.items():
            answer.append(("%s: %s\r\n" % (name, value)).encode())
        answer.append(b"\r\n")
        client.out.append(b"".join(answer))
        client.flush()                  # before the state changes: the 101 is not framed
        if client.closed:
            return
        if leaf:
            if self.options.leafnodes is None or not self.options.leafnodes.port:
                self.log.error("Not configured to accept leaf node connections")
                client.close(READ_ERROR, flush=False)
                return
            self.leafs.accept_websocket(client)
            return
        ws.state = WS_OPEN
        # Now a client (Go's createWSClient): its cid, counted and listed.
        self.ws_upgrading.discard(client)
        self.next_cid += 1
        client.cid = self.next_cid
        client.start = client.last_activity = time.time()
        client.update_log_prefix()
        self.total_connections += 1
        self.clients[client.cid] = client
        client.debug("Client connection created")
        client.queue_outbound(self.client_info(client))
        over_limit = len(self.clients) > self.options.max_connections
        if over_limit:
            client.error(ERR_MAX_CONNECTIONS)
            client.send_err_and_close(ERR_MAX_CONNECTIONS, MAX_CONNECTIONS_EXCEEDED)
            return
        self.start_client_timers(client)

    def ws_origin_problem(self, first: dict, ws_opts) -> str:
        """Why the request's Origin is refused, or "" (Go's checkOrigin): with
        same_origin it must match the Host, with allowed_origins be listed;
        a request without an Origin passes."""
        if not ws_opts.same_origin and not ws_opts.allowed_origins:
            return ""
        origin = first.get("origin") or first.get("sec-websocket-origin", "")
        if not origin:
            return ""
        try:
            parsed = urllib.parse.urlsplit(origin)
        except ValueError:
            return 'parse "%s": missing \']\' in host' % origin
        if not parsed.scheme or not parsed.netloc:
            return 'parse "%s": invalid URI for request' % origin
        secure = parsed.scheme == "https"
        try:
            host, port = ws_host_port(secure, parsed.netloc)
        except ValueError as exc:
            return str(exc)
        if ws_opts.same_origin:
            tls = ws_opts.tls is not None
            try:
                rhost, rport = ws_host_port(tls, first.get("host", ""))
            except ValueError as exc:
                return str(exc)
            if (host, port) != (rhost, rport) or parsed.scheme.lower() != (
                    "https" if tls else "http"):
                return "not same origin"
        if ws_opts.allowed_origins:
            for allowed in ws_opts.allowed_origins:
                a = urllib.parse.urlsplit(allowed)
                if (ws_host_port(a.scheme == "https", a.netloc) == (host, port)
                        and a.scheme == parsed.scheme):
                    return ""
            return "not in the allowed list"
        return ""

    def ws_auth_options(self) -> Options:
        """The options websocket clients log in with: the server's, with the
        websocket block's user and password or token, and its no_auth_user,
        in place of the server's (Go's authOverride)."""
        opts = self.options
        ws = opts.websocket
        if ws is None or not (ws.username or ws.token or ws.no_auth_user):
            return opts
        view = copy.copy(opts)
        if ws.username or ws.token:
            view.username, view.password, view.authorization = ws.username, ws.password, ws.token
        if ws.no_auth_user:
            view.no_auth_user = ws.no_auth_user
        return view

    def websocket_varz(self) -> dict:
        """/varz's `websocket` section (Go's WebsocketOptsVarz): {} when off."""
        ws = self.options.websocket
        if ws is None or not ws.port:
            return {}
        varz = {"host": ws.host, "port": self.ws_port or ws.port}
        for name, value in (("advertise", ws.advertise), ("no_auth_user", ws.no_auth_user),
                            ("jwt_cookie", ws.cookies.get("jwt_cookie", "")),
                            ("handshake_timeout", int(ws.handshake_timeout * 1e9)),
                            ("auth_timeout", ws.auth_timeout), ("no_tls", ws.no_tls),
                            ("same_origin", ws.same_origin),
                            ("allowed_origins", list(ws.allowed_origins)),
                            ("compression", ws.compression)):
            if value:
                varz[name] = value
        return varz

    def ws_url(self) -> str:
        """Our websocket address as other servers tell their websocket
        clients (the block's advertise, else host and port)."""
        ws = self.options.websocket
        return _advertised(ws.advertise, ws.host, self.ws_port)

    def ws_info_template(self) -> dict:
        """The INFO fields websocket clients share: the websocket listener's
        host and port, TLS as the websocket port has it, its own
        authorization (Go's generateClientInfoJSON), in Go's field order."""
        info = dict(self.info_template)
        secure = self.options.websocket.tls is not None
        info["host"], info["port"] = self.options.websocket.host, self.ws_port
        info.pop("connect_urls", None)
        if self.cluster.ws_urls:                # the cluster's websocket URLs
            info["connect_urls"] = list(self.cluster.ws_urls)
        info.pop("tls_required", None)
        info.pop("tls_available", None)
        if secure:
            info["tls_required"] = info["tls_available"] = True
        if self.ws_auth_options().auth_required:
            info["auth_required"] = True
        ordered = {name: info.pop(name) for name in _INFO_FIELDS if name in info}
        ordered.update(info)
        return ordered


# ============================================================================
# 12. Route
# ============================================================================
#
# Servers of a cluster connect to each other over routes and speak the
# route protocol of nats-server 2.x, so a gnatsd.py node and Go nodes can be
# peers.  One side dials (a configured route, or one learned by gossip) and
# sends CONNECT and its INFO; the other side sends its INFO when it accepts
# and checks the CONNECT (cluster name, route credentials).  Each side then
# registers the peer by its server id, sends it all of its interest and a
# PING, and tells its other peers about it (gossip: an INFO whose server id
# is not the route's own is a server to dial), so the cluster becomes a full
# mesh.  Of two connections between the same pair, the later one is closed.
#
# Interest travels as `RS+ <account> <subject> [<queue> <weight>]` and
# `RS- ...`: sent once per (account, subject) when the first local
# subscription appears and when the last one goes, and for a queue group
# again whenever its local member count (the weight) changes.  A peer's
# interest becomes subscriptions in our account sublists whose "client" is
# the route, so matching a published subject finds the routes to send to.
# A message goes to each interested route once, as `RMSG <account> <subject>
# [reply] <size>` (HMSG with headers); when the route was picked for queue
# groups the line names them (`+ <reply> <q>...` or `| <q>...`) and the peer
# delivers to one local member of each.  A message that came over a route
# is delivered to local clients only: one hop, so every server needs a
# route to every other (the mesh).
#
# Between servers of Go 2.10+ and this one, a peer is reached by a pool of
# connections (`route_pool_size`, 3 by default) plus one per pinned account
# (`cluster { accounts [...] }`, and always the system account): each
# account's interest and messages use one of them, the pool slot its name
# hashes to (route_pool_index) or its pinned route, so one busy account
# does not hold up the others.  The dialing side sends CONNECT, waits for
# the peer's INFO, then sends its own naming the slot (`route_pool_idx`) or
# the account (`route_account`), and dials the rest of the pool once the
# first is in (Cluster.fill).  On a pinned route the account is implied, so
# RS+/RS-/RMSG lines leave it out.  A peer without pooling (Go 2.9, or
# `pool_size: -1` on either side) gets one connection for everything.  A
# peer's interest lives on the connection it came by, and a message follows
# the interest, so the two sides need not agree on slot numbers.  Routes
# are uncompressed (Go peers fall back to no compression).
#
# A peer of gnatsd 0.7's dialect (its INFO has no `proto`) gets that
# protocol instead: SUB/UNSUB/MSG with route sids, the global account only
# (see "the 0.7 dialect" in Route).  It cannot route to a 2.x server, so a
# node with routes of both dialects tells each side the other's interest
# as its own and forwards messages across (bridge_interest, deliver_local).
#
# With `cluster { tls {} }` every route is TLS from its first byte, before
# CONNECT or INFO: the accepting side is the TLS server, the dialing side
# the client (checking the peer against ca_file and the host it dialed), and
# each side verifies the other's certificate, as Go's routes always do.  A
# route is then a `with_tls(Route)` (chapter 10), and starts its protocol
# when the handshake completes.  Go twin: server/route.go.

# Route protocol level (2: accounts and RS+/RS-; 3: message tracing, Go's
# MsgTraceProto, so a peer forwards traced messages to be traced here too).
ROUTE_PROTO = 3
# The level from which a peer traces what we forward it.
ROUTE_TRACE_PROTO = 3

# Seconds between attempts to dial a configured route, and a dial's timeout.
ROUTE_RECONNECT_DELAY = 1.0
ROUTE_DIAL_TIMEOUT = 2.0

# Attempts after which a failed dial is logged again at [ERR] (Go's
# reconnect_error_reports); the ones between are [DBG].
ROUTE_ERROR_REPORTS = 3600

# Distinct `<account> <subject>` keys of RMSG lines a route remembers
# (~200 bytes each: 10,000 subjects across a route fit).
ROUTE_MSG_KEYS_MAX = 16384

# Seconds between route PINGs at most (Go caps the route ping interval).
ROUTE_MAX_PING_INTERVAL = 30.0


class RouteURL:
    """A route URL: `nats-route://[user:pass@]host:port` (or `nats://`)."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url if "://" in url else "nats-route://" + url)
        if parsed.scheme not in ("nats-route", "nats", "tls", "nats+tls") or not parsed.hostname:
            raise ConfigError('error parsing route url ["%s"]' % url)
        self.url = url
        self.host = parsed.hostname
        try:
            self.port = parsed.port or DEFAULT_ROUTE_PORT
        except ValueError:
            raise ConfigError('error parsing route url ["%s"]: invalid port' % url)
        self.user = urllib.parse.unquote(parsed.username or "")
        self.password = urllib.parse.unquote(parsed.password or "")

    def redacted(self) -> str:
        """The URL as logs show it (the password hidden, as Go does)."""
        auth = "%s:%s@" % (self.user, "xxxxx") if self.user else ""
        return "nats-route://%s%s" % (auth, _host_port(self.host, self.port))


def local_plan(sublist: Sublist, subject: bytes, reply: bool = False):
    """The delivery plan for a message that came over a route: the local
    clients' plain subscriptions, and the leaf nodes that dialed us (one
    hop; queue groups only when the peer names them, which the general
    path handles).  As for a client's PUBs (pub_lookup), a subject's first
    two messages without a `reply` get its PlanShape instead (PLAN_FIRST),
    which the sublist keeps in cold_subjects once its cache
    lets the subject go, and the third a plan."""
    result = sublist.match(subject)
    plan = result.local_plan
    if not plan:
        local = SublistResult([s for s in result.psubs if s.client.kind == "Client" or
                               s.client.kind == "Leaf" and not s.client.is_spoke], [])
        shape = shape_for(sublist, local, subject)
        legacy = any(s.client.kind == "Router" and s.client.legacy for s in result.psubs)
        # HOT: as a client's first PUBs.  With the cold subjects below and
        #      ROUTE_MSG_KEYS_MAX 4096 -> 16384, make bench real_route_10k
        #      (two gnatsd.py nodes' CPU) 11.7 -> 4.7 us/msg, 0.27x -> 0.79x
        #      of Go 2.9 (this and the cold subjects alone: 6.2 us/msg).
        if plan is not SEEN_TWICE and not reply and not legacy and \
                shape.plan_kind in (PLAN_EMPTY, PLAN_PLAIN):
            result.local_plan = SEEN_ONCE if plan is None else SEEN_TWICE
            if plan is None:
                result.local_cold = shape
            return shape
        plan = result.local_plan = DeliveryPlan(local, subject, sublist.name, False, shape)
        if legacy:
            plan.kind = PLAN_SLOW       # a 0.7-dialect peer wants it too: deliver_local
    return plan


class _Dialer:
    """A connection being dialed (a route, a leaf node's hub): waits in the
    selector for the non-blocking connect to finish, then hands the socket
    to `connected`, or why it failed to `failed` (dial_tcp)."""

    closed = False

    def __init__(self, server: "Server", sock: socket.socket, connected, failed):
        self.server = server
        self.sock = sock
        self.connected = connected
        self.failed = failed

    def read_ready(self):
        self.write_ready()

    def write_ready(self):
        if self.closed:
            return
        self.closed = True
        self.server.unregister(self)
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.sock.close()
            self.failed(os.strerror(error))
        else:
            self.connected(self.sock)

    def timeout(self):
        if not self.closed:
            self.closed = True
            self.server.unregister(self)
            self.sock.close()
            self.failed("i/o timeout")


def dial_tcp(server: "Server", host: str, port: int, connected, failed):
    """Dial host:port without stalling the loop: an IP address at once, a
    host name looked up on a helper thread first.  `connected(sock)` or
    `failed(why)` is called on the loop thread (through a _Dialer)."""
    if _is_ip_address(host):
        _connect_tcp(server, host, port, None, "", connected, failed)
        return

    def resolve():      # (helper thread)
        try:
            address, why = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0], ""
        except (OSError, UnicodeError) as exc:
            address, why = None, str(exc)
        server.call_soon(lambda: _connect_tcp(server, host, port, address, why, connected,
                                              failed))
    threading.Thread(target=resolve, name="gnatsd-resolve", daemon=True).start()


def _connect_tcp(server: "Server", host: str, port: int, address: tuple | None, why: str,
                 connected, failed):
    """Start a non-blocking connect to a getaddrinfo entry (None: look the
    numeric host up now, unless `why` says the lookup failed)."""
    try:
        if address is None and not why:
            address = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        if address is None:
            raise OSError(why)
        family, _type, _proto, _name, address = address
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        failed(str(exc))
        return
    sock.setblocking(False)
    error = sock.connect_ex(address)
    if error not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
        sock.close()
        failed(os.strerror(error))
        return
    dialer = _Dialer(server, sock, connected, failed)
    server.selector.register(sock, selectors.EVENT_WRITE, dialer)
    server.add_timer(ROUTE_DIAL_TIMEOUT, dialer.timeout)


# The ops Route.process_op knows (a blank line, or one starting with a
# space, is unknown: Go fails on its first byte).
_ROUTE_OPS = frozenset((b"RMSG", b"HMSG", b"RS+", b"RS-", b"LS+", b"LS-", b"PING", b"PONG",
                        b"INFO", b"CONNECT", b"-ERR", b"+OK", b"SUB", b"UNSUB", b"MSG"))
# ... those whose name Go's parser wants a blank after (OP_SUB, OP_UNSUB,
# OP_MSG, OP_HMSG, OP_MINUS_ERR; a route's and a leaf's alike).
_OPS_WITH_ARGS = frozenset((b"RMSG", b"LMSG", b"HMSG", b"RS+", b"RS-", b"LS+", b"LS-", b"-ERR"))


def peer_op(data: bytes, i: int, nl: int) -> tuple:
    """A route's or leaf's control line at `i` (ending at `nl`) as Go's
    parser reads it: (its op's name upper-cased, the blank after the name
    or b"", the arguments).  A tab after the name is a blank; PING, PONG and
    +OK followed by anything up to the line's end are those ops (Go skips
    the rest to the LF, as the client's frame_line does)."""
    line = data[i:nl]
    if line.endswith(b"\r"):
        line = line[:-1]
    op, blank, arg = line.partition(b" ")
    if b"\t" in op:
        op, tab, rest = op.partition(b"\t")
        arg, blank = rest + blank + arg, tab
    op = op.upper()
    if op[:4] in (b"PING", b"PONG") and len(op) > 4:
        op = op[:4]
    elif op[:3] == b"+OK" and len(op) > 3:
        op = b"+OK"
    return op, blank, arg


# A peer's CONNECT as Go's connectInfo reads it (its INFO: _INFO_FIELDS,
# chapter 5, where read_go_json explains the rules).
_ROUTE_CONNECT_FIELDS = {
    "user": str, "pass": str, "name": str, "cluster": str, "cluster_dynamic": bool,
    "echo": bool, "verbose": bool, "pedantic": bool, "tls_required": bool, "headers": bool,
}


def _go_list(args: list) -> str:
    """A list of byte strings as Go's %s prints a [][]byte: [a b c]."""
    return "[%s]" % " ".join(a.decode("utf-8", "replace") for a in args)


# GO-COMPAT: processRoutedMsgArgs (test_cluster.py::test_bad_routed_msg_args_close_the_route_as_go_does)
def routed_msg_args(args: list, lead: int, headers: bool, name: str, arg: bytes) -> tuple:
    """The arguments `args` of an RMSG, LMSG or HMSG line `arg` as Go reads
    them (its processRoutedMsgArgs, processLeafMsgArgs and their Header
    twins, `name`): `lead` of them first (a route's account and subject, a
    leaf's subject), then `[reply] <size>`, or with queue groups `+ <reply>
    <queues> <size>` / `| <queues> <size>`; an HMSG has `<hdr> <size>` at
    the end.  -> (*the lead, reply, queues, hdr (-1 for no headers), size,
    the size tokens as written): a route unpacks seven values (account,
    subject, ...), a leaf six.  Go's errors close the connection without
    a word to the peer (ProtocolError with no -ERR)."""
    sizes = 2 if headers else 1
    if len(args) < lead + sizes:
        raise ProtocolError("%s Parse Error: '%s'" % (name, _go_list(args)))
    reply, queues = None, None
    if len(args) == lead + 1 + sizes:
        reply = args[lead]
    elif len(args) > lead + 1 + sizes:
        if args[lead] == b"+":
            reply, queues = args[lead + 1], args[lead + 2:-sizes]
        elif args[lead] == b"|":
            queues = args[lead + 1:-sizes]
        else:
            raise ProtocolError("%s Bad or Missing Reply Indicator: '%s'"
                                % (name, args[lead].decode("utf-8", "replace")))
    size = parse_size(args[-1])
    hdr = parse_size(args[-2]) if headers else -1
    if headers and hdr < 0:
        raise ProtocolError("%s Bad or Missing Header Size: '%s'"
                            % (name, arg.decode("utf-8", "replace")))
    if size < 0:
        raise ProtocolError("%s Bad or Missing Size: '%s'" % (name, _go_list(args)))
    if hdr > size:
        raise ProtocolError("%s Header Size larger then TotalSize: '%s'"
                            % (name, arg.decode("utf-8", "replace")))
    size_field = args[-2] + b" " + args[-1] if headers else args[-1]
    return (*args[:lead], reply, queues, hdr, size, size_field)


class Route(Connection):
    """A connection to another server of the cluster.

    dialed:   connect -> [TLS] -> CONNECT -> peer INFO -> INFO -> registered
    accepted: [TLS] -> INFO -> peer CONNECT (checked) -> peer INFO -> registered

    [TLS] is a handshake, when the cluster has a tls block (`with_tls(Route)`).
    A dialed route's INFO names its pool slot or pinned account, so it waits
    for the peer's (with `pool_size: -1` it goes with the CONNECT).
    Registered, a route is one of its peer's RoutePool.
    """

    __slots__ = ("target", "implicit", "remote_id", "remote_name", "remote_info",
                 "remote_subs", "weights", "connect_received", "registered",
                 "headers", "protocol", "msg_keys", "legacy", "advertised", "retry",
                 "pool_idx", "pinned", "pinned_name", "filling", "no_redial")

    kind = "Router"
    tls_label = "route "

    def __init__(self, server: "Server", sock: socket.socket, cid: int,
                 target: RouteURL | None = None, implicit: bool = False,
                 pinned: str = "", filling: "RoutePool | None" = None):
        super().__init__(server, sock, cid)
        self.target = target            # the URL we dialed, None for an accepted route
        self.implicit = implicit        # learned by gossip rather than configured
        self.remote_id = ""
        self.remote_name = ""
        self.remote_info: dict = {}
        self.remote_subs: dict = {}     # b"acc subject[ queue]" -> Subscription
        self.weights: dict = {}         # the same keys -> queue weight
        self.connect_received = False
        self.registered = False
        self.headers = True
        self.protocol = ROUTE_PROTO
        self.msg_keys = {}              # RMSG "account subject" -> (sublist, subject) (parse)
        self.legacy = False             # the peer speaks the 0.7 dialect (its INFO has no proto)
        self.advertised: set = set()    # route sids of our interest a 0.7 peer has (SUB sent)
        self.retry = False              # dial again if it closes (it won a duplicate)
        self.no_redial = False          # refused for good (pool or pinned account mismatch)
        self.pool_idx = -1              # its slot in the peer's pool, once registered
        self.pinned = pinned            # the account of a pinned route ("": a pool slot)
        self.pinned_name = pinned.encode()  # (the same, as wire bytes)
        self.filling = filling          # the pool we dialed it to fill (Cluster.fill)
        host = "[%s]" % self.host if ":" in self.host else self.host
        self.log_prefix = "%s:%d - rid:%d - " % (host, self.port, cid)

    # -- handshake -------------------------------------------------------------

    def send_connect(self):
        """Our CONNECT to a peer we dialed: our server id, the cluster's name,
        and the route URL's credentials, if any (Go's sendRouteConnect)."""
        fields = {"echo": True, "verbose": False, "pedantic": False,
                  "tls_required": self.tls is not None, "headers": True,
                  "name": self.server.server_id,
                  "cluster": self.server.cluster.name}
        if self.target is not None and self.target.user:
            fields["user"], fields["pass"] = self.target.user, self.target.password
        if self.server.cluster.dynamic:
            fields["cluster_dynamic"] = True
        self.send_proto(b"CONNECT " + json.dumps(fields, separators=(",", ":")).encode()
                        + CR_LF, "CONNECT")

    def process_connect(self, arg: bytes):
        """The dialing peer's CONNECT (Go's processRouteConnect)."""
        try:
            # (Go reads every CONNECT into ClientOpts first, then its own.)
            fields = read_go_json(arg, _CONNECT_FIELDS, "ClientOpts") or {}
            problem = _json_type_error(fields, _ROUTE_CONNECT_FIELDS, "connectInfo")
        except ValueError as exc:
            raise ProtocolError(str(exc))
        if problem:
            raise ProtocolError(problem)
        if "lang" in fields:
            self.error("Route connect with client lang, attempted to connect to route port")
            self.send_err_and_close("attempted to connect to route port", PROTOCOL_VIOLATION)
            return
        server = self.server
        auth = server.options.cluster_auth
        try:
            refused = auth is not None and not (self.secret_equal(fields.get("user"), auth[0])
                                                and self.secret_equal(fields.get("pass"), auth[1]))
        except _SecretCheckPending as pending:
            self.await_secret(pending, lambda: self.process_connect(arg))
            return
        if refused:
            self.error("authentication error - User %s", go_quote(str(fields.get("user") or "")
                                                                   .encode()))
            self.send_err_and_close(ERR_AUTH_VIOLATION, AUTHENTICATION_VIOLATION)
            return
        cluster = fields.get("cluster") or ""
        if not server.cluster.reconcile_name(cluster, bool(fields.get("cluster_dynamic"))):
            text = "Rejecting connection, cluster name %s does not match %s" % (
                go_quote(cluster.encode()), go_quote(server.cluster.name.encode()))
            self.error("%s", text)
            self.send_err_and_close(text, "Cluster Name Conflict")
            return
        self.connect_received = True
        if auth is not None:
            self.send_proto(server.cluster.info(), "INFO")     # held back (start_route)

    # GO-COMPAT: parse (test_redteam.py::test_a_route_that_skips_connect_is_refused_and_sees_nothing)
    def refused_before_connect(self, first: bytes) -> bool:
        """Go's rule for an accepted route (the parser's expectConnect): until
        the peer's CONNECT has passed, every op must start with `C`; any other
        first byte is an Authorization Violation.  So nothing a stranger on
        the cluster port sends (RS+, RMSG, INFO) reaches an account.  True
        if the route was refused (and closed)."""
        if self.target is not None or self.connect_received or first in (b"C", b"c"):
            return False
        self.error("authentication error")
        self.send_err_and_close(ERR_AUTH_VIOLATION, AUTHENTICATION_VIOLATION)
        return True

    def connect_timeout(self):
        """Timer callback: an accepted route whose CONNECT has not passed by
        now is sent -ERR and closed."""
        if not self.closed and not self.connect_received:
            self.error("Authentication Timeout")
            self.send_err_and_close(ERR_AUTH_TIMEOUT, AUTHENTICATION_TIMEOUT)

    def process_info(self, arg: bytes):
        """The peer's INFO: the first registers the route; later ones are
        gossip about other servers, or updates of the peer itself."""
        try:
            info = read_go_json(arg, _INFO_FIELDS, "Info")
        except ValueError as exc:
            raise ProtocolError(str(exc))
        if info is None:
            return                  # null: Go's zero Info, nothing to learn
        server = self.server
        remote_id = info.get("server_id") or ""
        if self.registered and remote_id != self.remote_id:
            server.cluster.learn(info)   # gossip: a server our peer knows
            return
        if self.registered:
            self.remote_info.update(info)
            server.cluster.changed()
            return
        if remote_id == server.server_id:
            self.debug("Detected route to self, ignoring %s",
                       self.target.redacted() if self.target else "")
            if self.target is not None:
                server.cluster.self_routes.add((self.target.host, self.target.port))
            self.close(CLIENT_CLOSED)
            return
        cluster = info.get("cluster") or ""
        if not server.cluster.reconcile_name(cluster, bool(info.get("cluster_dynamic"))):
            self.error("Rejecting connection, cluster name %s does not match %s",
                       go_quote(cluster.encode()), go_quote(server.cluster.name.encode()))
            self.close("Cluster Name Conflict")
            return
        if not info.get("ip"):
            # A peer sends its route URL only with cluster advertise; Go then
            # makes it from the connection's address and the INFO's port, for
            # the gossip that tells the others where to dial (processRouteInfo).
            try:
                address = self.sock.getpeername()[0]
            except OSError:
                address = self.host
            if address.startswith("::ffff:") and "." in address:
                address = address[7:]
            info["ip"] = "nats-route://%s/" % _host_port(address, info.get("port") or 0)
        self.remote_id = remote_id
        self.remote_name = info.get("server_name") or ""
        self.remote_info = info
        self.headers = bool(info.get("headers"))
        if "proto" not in info:
            # gnatsd 0.7 (and the 0.9-1.x servers of its dialect) send no
            # proto: SUB/UNSUB/MSG with route sids, the global account only.
            self.legacy = True
            self.debug("Route speaks the 0.7 dialect (%s)", info.get("version") or "?")
        server.cluster.register(self)

    # -- input -----------------------------------------------------------------

    def parse(self, data: bytes, start: int = 0):
        """Route ops, up to this turn's time as a client's (chapter 5).  A
        plain `RMSG <account> <subject> [reply] <size>` takes the hot path as
        a client's PUB does: the size from the line's last token, the
        account and subject from `msg_keys`, and the local clients' plan
        from the sublist cache; anything else goes to process_op."""
        server = self.server
        n = len(data)
        i = start
        # Fairness, as in Client.parse (its twin): the clock is read every
        # INPUT_CHECK_BYTES and after every slow op (check_at = 0).
        monotonic = time.monotonic
        deadline = monotonic() + MAX_INPUT_TIME
        check_at = start + INPUT_CHECK_BYTES
        find = data.find
        startswith = data.startswith
        sizes_get = server.pub_sizes.get
        keys_get = self.msg_keys.get
        # Only a registered route (past CONNECT and INFO) takes the hot path:
        # before that, every op goes to process_op, which refuses it.
        hot = self.registered and not self.trace
        msgs = nbytes = 0
        run_plan = None
        last_size = -1
        touched = set()               # plans delivered to: receivers marked once, after
        touch = touched.add
        now = time.time()
        try:
            while i < n and not self.closed:
                if i >= check_at:
                    if self.waiting or monotonic() > deadline:
                        self.defer_input(data, i)
                        break
                    check_at = i + INPUT_CHECK_BYTES
                nl = find(b"\n", i)
                if nl < 0:
                    if self.refused_before_connect(data[i:i + 1]):
                        break
                    if n - i > server.options.max_control_line * 16:
                        op = data[i:i + 16].partition(b" ")[0].upper()
                        if op not in _ROUTE_OPS:   # as process_op will say (and Go at once)
                            raise op_name_error(data, i, "Router")
                        raise ProtocolError("route control line too long",
                                            ERR_MAX_CONTROL_LINE, MAX_CONTROL_LINE_EXCEEDED)
                    self.keep_tail(data, i, n - i + 1)
                    break
                # HOT: RMSG lines as peers write them (see the docstring).
                plan = None
                if hot and startswith(b"RMSG ", i) and data[nl - 1] == 13:
                    key, _, size_token = data[i + 5:nl - 1].rpartition(b" ")   # (as Client.parse)
                    sp = i + 5 + len(key)
                    size = sizes_get(size_token, -2)
                    if size == -2:
                        size = server.pub_size(size_token)
                    if size >= 0 and key:
                        entry = keys_get(key)
                        reply_sp = None
                        if entry is None:
                            entry, reply_sp = self.msg_key(key)
                        if entry is not None:
                            sublist, subject = entry
                            result = sublist.cache.get(subject)
                            if result is not None:
                                plan = result.local_plan
                            elif reply_sp is None:
                                # HOT: a subject the cache let go: its shape
                                #      (local_plan), no match (see there).
                                plan = sublist.cold_subjects.get(subject)
                            if not plan:
                                plan = local_plan(sublist, subject, reply_sp is not None)
                if plan is None or (plan.kind != PLAN_PLAIN and plan.kind != PLAN_EMPTY
                                    and plan.kind != PLAN_FIRST):
                    run_plan = None
                    i = self.process_op(data, i, nl)
                    if i < 0:
                        break
                    check_at = 0
                    continue
                stop = nl + 1 + size
                if stop + 2 > n:
                    check_payload_end(data, stop, "Router")
                    self.keep_tail(data, i, stop + 2 - i)
                    break
                if data[stop] != 13 or data[stop + 1] != 10:
                    raise payload_end_error(data, stop, "Router")
                if plan.kind == PLAN_FIRST:     # a PlanShape (local_plan): no runs
                    k = 1
                    plan.deliver(subject, data[sp + 1:stop + 2], size)
                    run_plan = None
                else:
                    if (plan is run_plan and size == last_size and reply_sp is None
                            and plan.runnable and startswith(data[i:nl + 1], stop + 2)):
                        # HOT (best case): a run of one RMSG line, delivered in
                        #      bulk (deliver_run; cross-route pub->sub 16 B went
                        #      0.17M -> 2.5M msgs/s on two gnatsd.py nodes).
                        k = deliver_run(data, i, nl, size, sp + 1 - i, None, plan)
                    else:
                        k = 1
                        plan.deliver(data[sp + 1:stop + 2], size, reply_sp)
                    run_plan = plan
                    last_size = size
                msgs += k
                nbytes += k * size
                i += k * (nl + 3 - i + size)
                touch(plan)
        finally:
            mark_receivers(touched, server.pending, now)
        if msgs:
            self.in_msgs += msgs
            self.in_bytes += nbytes
            self.last_activity = now

    def msg_key(self, key: bytes) -> tuple:
        """The hot path's second try at an RMSG line's `<account> <subject>
        [reply]`: ((account's sublist, subject), b"reply " or None), or
        (None, None) when process_op must take the line: queue names, a
        blank other than single spaces, an unknown account, or a response
        subject of an account that exports services (deliver_local routes
        those).  Keys without a reply are remembered."""
        parts = key.split(b" ")
        if b"" in parts or key.split() != parts:
            return None, None
        parts = self.with_account(parts)
        if len(parts) not in (2, 3) or parts[-1] in (b"+", b"|"):
            return None, None
        account = self.server.accounts.get(parts[0].decode("utf-8", "replace"))
        if account is None or (account.exports_services and parts[1].startswith(b"_R_.")):
            return None, None
        entry = (account.sublist, parts[1])
        if len(parts) == 3:
            return entry, parts[2] + b" "
        keys = self.msg_keys
        if len(keys) >= ROUTE_MSG_KEYS_MAX:
            keys.clear()
        keys[key] = entry
        return entry, None

    def process_op(self, data: bytes, i: int, nl: int) -> int:
        """One control line the slow way; returns the next index, or -1 when
        the op's payload is not all here yet (the tail is kept)."""
        if self.refused_before_connect(data[i:i + 1]):
            return -1
        op, blank, arg = peer_op(data, i, nl)
        if not blank and op in _OPS_WITH_ARGS:      # (Go fails on the byte after the name)
            raise op_name_error(data, i, "Router")
        if op == b"RMSG" or op == b"HMSG" or op == b"MSG" and self.legacy:
            if op == b"MSG":
                stop = self.process_legacy_msg(data, nl, arg)
            else:
                stop = self.process_msg(data, nl, op == b"HMSG", arg.lstrip(b" \t"))
            if stop < 0:
                self.keep_tail(data, i, -stop - i)
                return -1
            return stop
        if self.trace:
            self.trace_in(op.decode("ascii", "replace"), arg)
        if op == b"RS+":
            self.process_remote_sub(arg)
        elif op == b"RS-":
            self.process_remote_unsub(arg)
        elif op == b"SUB" and self.legacy:
            self.process_legacy_sub(split_arg(arg))
        elif op == b"UNSUB" and self.legacy:
            self.process_legacy_unsub(split_arg(arg))
        elif op == b"PING":
            self.send_proto(PONG)
        elif op == b"PONG":
            self.pong()
        elif op == b"INFO":
            self.process_info(arg)
        elif op == b"CONNECT":
            self.process_connect(arg)
        elif op == b"-ERR":
            self.error("Remote Error: %s", arg.decode("utf-8", "replace"))
        elif op in (b"+OK", b"LS+", b"LS-"):
            pass
        else:
            raise op_name_error(data, i, "Router")
        return nl + 1

    def with_account(self, args: list) -> list:
        """The arguments of RS+, RS-, RMSG or HMSG with the account first: on
        a pinned route the peer leaves it out (it is the route's)."""
        if self.pinned and args:
            args.insert(0, self.pinned_name)
        return args

    def process_msg(self, data: bytes, nl: int, headers: bool, arg: bytes) -> int:
        """RMSG/HMSG whose payload follows `nl`; returns the index after it,
        or -(bytes needed from the line start) when it is not all here."""
        account_name, subject, reply, queues, hdr, size, size_field = routed_msg_args(
            self.with_account(split_arg(arg)), 2, headers,
            "processRoutedHeaderMsgArgs" if headers else "processRoutedMsgArgs", arg)
        stop = nl + 1 + size
        end = data[stop:stop + 2]
        if end != CR_LF[:len(end)]:     # (as soon as a wrong byte shows, as Go's parser)
            raise payload_end_error(data, stop, "Router")
        if stop + 2 > len(data):
            return -(stop + 2)
        payload = data[nl + 1:stop]
        if self.trace:
            self.trace_in("RMSG" if hdr < 0 else "HMSG", arg)
        self.in_msgs += 1
        self.in_bytes += size
        self.last_activity = time.time()
        account = self.server.accounts.get(account_name.decode("utf-8", "replace"))
        if account is not None:
            msg = Message(subject, reply, hdr, size, payload, size_field)
            trace = None
            if hdr > 0 and payload.find(b"Nats-Trace-", 0, hdr) >= 0:
                trace = MsgTrace.start(self, msg, account)
            self.deliver_local(account, msg, queues, trace=trace)
            if trace is not None:
                trace.send(self, account)
        return stop + 2

    def deliver_local(self, account: Account, msg: Message, queues, plain: bool = True,
                      trace: "MsgTrace | None" = None):
        """A message from the peer: to our clients' plain subscriptions
        (unless `plain` is False: a 0.7 peer's message for one queue
        subscriber), and to one member of each queue group the peer chose us
        for.  Routes of the other dialect (a 0.7 peer's message to 2.x peers,
        a 2.x peer's to 0.7 peers), which the sender cannot reach, count as
        ours: the message goes on to them; routes of the peer's own dialect
        have it from the peer (one hop).  A traced message (`trace`) has
        each delivery noted, and none made if it is trace-only."""
        route = account.take_response(msg.subject)
        if route is not None:
            # A response to a service request made here: back to the requester.
            routed = msg.routed(route.reply, msg.reply)
            self.deliver_local(route.importer, routed, None)
            return
        result = account.sublist.match(msg.subject)
        onward = {}         # route of the other dialect -> [plain sub, [queue subs]]
        deliver = deliver_to if trace is None else trace.deliver_to
        if plain:
            for sub in result.psubs:
                c = sub.client
                if c.kind == "Client":
                    deliver(sub, msg, None)
                elif c.kind == "Leaf":      # a leaf that dialed us (Go: not our hub's)
                    if not c.is_spoke and c not in onward:
                        onward[c] = [sub, []]
                elif c.legacy != self.legacy and c not in onward:
                    onward[c] = [sub, []]
        if queues:
            for group in result.qsubs:
                if group[0].queue not in queues:
                    continue
                members = [s for s in group if s.client.kind == "Client" or
                           (not s.client.is_spoke if s.client.kind == "Leaf" else
                            s.client.legacy != self.legacy)]
                start = int(random.random() * len(members)) if members else 0
                for k in range(len(members)):
                    sub = members[(start + k) % len(members)]
                    if sub.client.kind != "Client":
                        onward.setdefault(sub.client, [None, []])[1].append(sub)
                        break
                    if deliver(sub, msg, None):
                        break
        for peer, (plain_sub, queue_subs) in onward.items():
            sent = msg if trace is None else trace.forward(peer, msg)
            if sent is not None:
                peer.send_msg(account, sent, queue_subs, plain_sub)

    # -- interest ----------------------------------------------------------------

    # GO-COMPAT: processRemoteSub (test_cluster.py::test_bad_interest_lines_are_refused_as_go_does)
    def process_remote_sub(self, arg: bytes):
        """RS+ <account> <subject> [<queue> <weight>] (no account on a
        pinned route), as Go's processRemoteSub reads it: another count of
        arguments closes the route, an unknown account or an invalid subject
        is logged (the latter answered -ERR) and the line ignored.  (A
        weight that is not a positive number counts as 1: Go's makes the
        member one it never picks.)"""
        args = self.with_account(split_arg(arg))
        if len(args) not in (2, 4):
            raise ProtocolError("processRemoteSub Parse Error: 'R %s'"
                                % arg.decode("utf-8", "replace"))
        account = self.server.accounts.get(args[0].decode("utf-8", "replace"))
        if account is None:
            self.error("Unknown account %s for remote subject %s", go_quote(args[0]),
                       go_quote(args[1]))
            return
        if not is_valid_subject(args[1]):
            self.error("Could not insert subscription: sublist: invalid subject")
            self.send_err("Invalid Subscription")
            return
        queue = args[2] if len(args) > 2 else None
        key = b" ".join(args[:3])
        weight = old = 1
        if queue is not None:
            old = self.weights.get(key, 0)
            self.weights[key] = weight = max(1, parse_size(args[3]))
        sub = self.remote_subs.get(key)
        if sub is None:
            sub = Subscription(self, args[1], queue, key)
            self.remote_subs[key] = sub
            account.sublist.insert(sub)
            self.server.cluster.bridge_interest(self, account, sub, weight)
            if account is self.server.system_account:
                self.server.system_client.peer_listens(sub.subject)
        elif queue is not None:
            # A queue group's weight again (its members there come and go):
            # leaves hear the new total, also when it stayed, as from Go 2.15.
            self.server.cluster.bridge_interest(self, account, sub, weight - old)

    def process_remote_unsub(self, arg: bytes):
        """RS- <account> <subject> [<queue>] (Go's processRemoteUnsub: another
        count of arguments closes the route)."""
        args = self.with_account(split_arg(arg))
        if len(args) not in (2, 3):
            raise ProtocolError("processRemoteUnsub parse error: '%s'"
                                % arg.decode("utf-8", "replace"))
        key = b" ".join(args[:3])
        sub = self.remote_subs.pop(key, None)
        weight = self.weights.pop(key, 1)
        account = self.server.accounts.get(args[0].decode("utf-8", "replace"))
        if sub is not None and account is not None:
            account.sublist.remove(sub)
            self.server.cluster.bridge_interest(self, account, sub, -weight)

    # -- the 0.7 dialect ------------------------------------------------------------
    #
    # gnatsd 0.7.2's routes (and those of the 0.9-1.x servers): interest is
    # `SUB <subject> [queue] RSID:<cid>:<sid>` (QRSID for a queue member),
    # one per client subscription, and `UNSUB <rsid> [max]`; a message is
    # `MSG <subject> <rsid> [reply] <size>`, where a QRSID names the one
    # queue subscriber the sender picked and any other sid means "your plain
    # subscribers".  No accounts (the global one), no headers.  Our interest
    # goes to such a peer under sids of our own (Cluster.legacy_rsid).

    def process_legacy_sub(self, args: list):
        """SUB <subject> [queue] <rsid> from a 0.7 peer."""
        if len(args) == 2:
            subject, queue, rsid = args[0], None, args[1]
        elif len(args) == 3:
            subject, queue, rsid = args
        else:
            raise ProtocolError("processSub Parse Error", ERR_UNKNOWN_PROTOCOL, PARSE_ERROR)
        key = b"$G " + rsid
        if key in self.remote_subs:
            return              # a duplicate, which 0.7 may send (its processSub)
        account = self.server.global_account
        sub = Subscription(self, subject, queue, rsid)
        self.remote_subs[key] = sub
        account.sublist.insert(sub)
        self.server.cluster.bridge_interest(self, account, sub, 1)

    def process_legacy_unsub(self, args: list):
        """UNSUB <rsid> [max] from a 0.7 peer; with a max the peer sends a
        plain UNSUB again once its subscriber has had them."""
        if not args or len(args) > 2:
            raise ProtocolError("processUnsub Parse Error", ERR_UNKNOWN_PROTOCOL, PARSE_ERROR)
        if len(args) == 2 and parse_size(args[1]) > 0:
            return
        sub = self.remote_subs.pop(b"$G " + args[0], None)
        if sub is not None:
            account = self.server.global_account
            account.sublist.remove(sub)
            self.server.cluster.bridge_interest(self, account, sub, -1)

    def process_legacy_msg(self, data: bytes, nl: int, arg: bytes) -> int:
        """MSG <subject> <rsid> [reply] <size> from a 0.7 peer, payload
        after `nl`; returns the index after it, or -(bytes needed from the
        line start) when it is not all here."""
        args = split_arg(arg)
        if len(args) not in (3, 4):
            raise ProtocolError("processMsgArgs Parse Error: %s" % go_quote(arg),
                                ERR_UNKNOWN_PROTOCOL, PARSE_ERROR)
        size = parse_size(args[-1])
        if size < 0:
            raise ProtocolError("processMsgArgs Bad or Missing Size: %s" % go_quote(arg),
                                ERR_UNKNOWN_PROTOCOL, PARSE_ERROR)
        stop = nl + 1 + size
        if stop + 2 > len(data):
            return -(stop + 2)
        if self.trace:
            self.trace_in("MSG", arg)
        subject, rsid = args[0], args[1]
        reply = args[2] if len(args) == 4 else None
        self.in_msgs += 1
        self.in_bytes += size
        self.last_activity = time.time()
        msg = Message(subject, reply, -1, size, data[nl + 1:stop])
        account = self.server.global_account
        if rsid.startswith(b"QRSID"):
            # For one of our queue groups (a sid we gave): one member of it.
            key = self.server.cluster.legacy_keys.get(rsid)
            if key is not None:
                self.deliver_local(account, msg, [key[1]], plain=False)
        else:
            self.deliver_local(account, msg, None)
        return stop + 2

    def send_legacy_msg(self, msg: Message, subs: list):
        """`msg` to a 0.7 peer: one MSG per route sid in `subs` (headers
        dropped: the dialect has none)."""
        body = msg.payload if msg.hdr < 0 else msg.payload[msg.hdr:]
        reply = b" " + msg.reply if msg.reply is not None else b""
        for sub in subs:
            line = b"MSG %s %s%s %d" % (msg.subject, sub.sid, reply, len(body))
            if self.trace:
                self.trace_out(line.decode("utf-8", "replace"))
            self.out.append(line + CR_LF + body + CR_LF)
            self.out_msgs += 1
            self.out_bytes += len(body)
        self.server.pending.add(self)

    def weight(self, sub: Subscription) -> int:
        """The weight the peer's RS+ gave `sub`'s queue group here (1 by
        default); `_pick_start` draws queue members by it."""
        return self.weights.get(sub.sid, 1)

    def send_interest(self, account: Account, subject: bytes, queue: bytes | None, count: int):
        """Tell the peer about local interest: RS+ (count > 0) or RS-; to a
        0.7 peer, SUB or UNSUB with the interest's route sid (global
        account only; a queue weight means nothing to it)."""
        if self.legacy:
            if account is not self.server.global_account:
                return
            rsid = self.server.cluster.legacy_rsid(subject, queue)
            if count > 0:
                if rsid in self.advertised:
                    return
                self.advertised.add(rsid)
                line = b"SUB %s %s %s" % (subject, queue or b"", rsid)
            else:
                if rsid not in self.advertised:
                    return
                self.advertised.discard(rsid)
                line = b"UNSUB " + rsid
            if self.trace:
                self.trace_out(line.decode("utf-8", "replace"))
            self.queue_outbound(line + CR_LF)
            return
        name = b"" if self.pinned else account.name.encode() + b" "
        if count > 0:
            line = b"RS+ %s%s" % (name, subject)
            if queue is not None:
                line += b" %s %d" % (queue, count)
        else:
            line = b"RS- %s%s" % (name, subject)
            if queue is not None:
                line += b" " + queue
        if self.trace:
            self.trace_out(line.decode("utf-8", "replace"))
        self.queue_outbound(line + CR_LF)

    # -- output --------------------------------------------------------------------

    def msg_head(self, headers: bool, account: bytes) -> bytes:
        """`RMSG <account> ` (HMSG with headers) as a DeliveryPlan's prefix
        for this route starts; on a pinned route the account is implied."""
        return (b"HMSG " if headers else b"RMSG ") + (b"" if self.pinned else account + b" ")

    def send_msg(self, account: Account, msg: Message, queue_subs: list,
                 plain: Subscription | None = None):
        """One RMSG/HMSG for `msg`, naming the queue groups we chose the peer
        for (`queue_subs`, its subscriptions that won).  To a 0.7 peer: a
        MSG with the route sid of `plain` (one of its plain subscriptions)
        for its plain subscribers, and one per queue subscription that won."""
        if self.legacy:
            self.send_legacy_msg(msg, ([plain] if plain is not None else []) + queue_subs)
            return
        queue_peer_msg(self, b"RMSG", None if self.pinned else account.name.encode(), msg,
                       queue_subs)

    # -- ping and close ----------------------------------------------------------------

    def ping_interval(self) -> float:
        """As a client's, but at most ROUTE_MAX_PING_INTERVAL."""
        return min(self.server.options.ping_interval, ROUTE_MAX_PING_INTERVAL)

    def closed_cleanup(self):
        """Leave the cluster (`Cluster.remove`): forget the peer's interest,
        redial if configured."""
        self.server.cluster.remove(self)

    def log_closed(self, reason: str):
        """Log the close at [INF], as Go does for routes."""
        self.server.log.info("%sRouter connection closed: %s", self.log_prefix, reason)

    def conn_info(self) -> dict:
        """This route as a /routez entry (Go's RouteInfo)."""
        now = time.time()
        return {
            "rid": self.cid, "remote_id": self.remote_id, "remote_name": self.remote_name,
            "did_solicit": self.target is not None, "is_configured": (
                self.target is not None and not self.implicit),
            "ip": self.host, "port": self.port, "start": rfc3339(self.start),
            "last_activity": rfc3339(self.last_activity), "rtt": format_duration(self.rtt),
            "uptime": go_uptime(now - self.start), "idle": go_uptime(now - self.last_activity),
            "pending_size": self.pending_bytes(), "in_msgs": self.in_msgs,
            "out_msgs": self.out_msgs, "in_bytes": self.in_bytes, "out_bytes": self.out_bytes,
            "subscriptions": len(self.remote_subs),
            **({"account": self.pinned} if self.pinned else {}),
        }


def queue_peer_msg(conn, head: bytes, account: bytes | None, msg: Message, queue_subs: list):
    """Queue `msg` for a route (`head` RMSG, with the account) or a leaf
    node (LMSG, without): `<head> [account] <subject> [reply | + reply
    <queues> | | <queues>] <size>`, HMSG and `<hdr> <size>` with headers
    (stripped for a peer that has none), naming the queue groups the peer
    was picked for (`queue_subs`, its subscriptions that won)."""
    queues = [sub.queue for sub in queue_subs]
    if msg.hdr >= 0 and not conn.headers:
        body = msg.payload[msg.hdr:]
        msg = Message(msg.subject, msg.reply, -1, len(body), body)
    parts = [head if msg.hdr < 0 else b"HMSG"] + ([account] if account else []) + [msg.subject]
    if queues:
        if msg.reply is not None:
            parts += [b"+", msg.reply]
        else:
            parts.append(b"|")
        parts += queues
    elif msg.reply is not None:
        parts.append(msg.reply)
    parts.append(msg.size_field)        # (as the publisher wrote it, as Go copies it)
    line = b" ".join(parts)
    if conn.trace:
        conn.trace_out(line.decode("utf-8", "replace"))
    conn.out.append(line + CR_LF + msg.payload + CR_LF)
    conn.out_msgs += 1
    conn.out_bytes += msg.size
    conn.server.pending.add(conn)


def route_pool_index(pool_size: int, account: str) -> int:
    """The pool slot that carries `account` (Go's computeRoutePoolIdx: FNV-1a
    of the name, modulo the pool size), the same on every server."""
    if pool_size <= 1:
        return 0
    h = 0x811C9DC5
    for byte in account.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % pool_size


class RoutePool:
    """The registered connections to one peer (Go's `routes[id]` slice and
    its `accRoutes` entries): `slots`, the pool (one slot when the peer does
    not pool: `no_pool`), and `pinned`, account name -> its dedicated route.
    For a peer we dialed, `target` is where to dial the missing ones, and
    `dialing` / `dialing_pinned` what is on its way (Cluster.fill)."""

    def __init__(self, size: int, no_pool: bool):
        self.slots: list = [None] * size
        self.pinned: dict = {}
        self.no_pool = no_pool
        self.target: RouteURL | None = None
        self.implicit = False
        self.dialing = 0
        self.dialing_pinned: set = set()

    def routes(self) -> list:
        """Every registered connection to the peer."""
        return [r for r in self.slots if r is not None] + list(self.pinned.values())

    def drop(self, route: "Route"):
        """`route` closed: free its slot or its account."""
        if route.pinned:
            if self.pinned.get(route.pinned) is route:
                del self.pinned[route.pinned]
        elif 0 <= route.pool_idx < len(self.slots) and self.slots[route.pool_idx] is route:
            self.slots[route.pool_idx] = None


class Cluster:
    """This server's side of its cluster (the route half of Go's server.go):
    the route listener, the routes by peer, dialing and redialing, gossip,
    the cluster's name, and the interest every peer hears of.  The server
    owns one (`server.cluster`), enabled when a cluster port is set.  Loop
    thread only.

    listen() -> create_route() per connection -> start_route()
             -> register() once the peer's INFO is in -> remove() at close
    """

    def __init__(self, server: "Server"):
        self.server = server
        opts = server.options
        self.enabled = bool(opts.cluster_port)
        self.routes: dict = {}          # remote server id -> a registered Route (its first)
        self.pools: dict = {}           # remote server id -> RoutePool (all its routes)
        self.conns: set = set()         # every route connection, registered or not
        # Connections per pooling peer (< 1: one for everything, Go's "no
        # pool"), and the accounts with a route of their own: the configured
        # ones and the system account (Go's setBaselineOptions).
        self.pool_size = opts.cluster_pool_size
        self.slot_of: dict = {}         # account name -> its pool slot (route_for)
        self.pinned_accounts: list = []
        if self.pool_size > 0:
            system = opts.system_account or SYSTEM_ACCOUNT
            self.pinned_accounts = list(opts.cluster_accounts or ())
            if system not in self.pinned_accounts:
                self.pinned_accounts.append(system)
        self.listener = None
        self.host = ""
        self.port = 0
        self.self_routes: set = set()   # (host, port) of route URLs that led to us
        self.urls_changed_at = 0.0      # when connect_urls last changed (Go's lastCURLsUpdate)
        self.ws_urls: list = []         # the cluster's websocket URLs, ours first, if routed
        self.name = opts.cluster_name or _new_server_id()[1:23]
        self.dynamic = not opts.cluster_name    # a generated name, which gives way
        self.legacy_ids: dict = {}      # (subject, queue) -> our route sid for 0.7 peers
        self.legacy_keys: dict = {}     # and back

    # -- listening and dialing -------------------------------------------------

    def listen(self):
        """Bind the route listener and dial the configured routes."""
        server = self.server
        opts = server.options
        self.host = opts.cluster_host or DEFAULT_HOST
        sock = _bind(self.host, opts.cluster_port)
        self.port = sock.getsockname()[1]
        self.listener = _Listener(server, sock, self.create_route)
        server.selector.register(sock, selectors.EVENT_READ, self.listener)
        server.log.info("Cluster name is %s", self.name)
        if self.dynamic:
            server.log.warning("Cluster name was dynamically generated, consider setting one")
        server.log.info("Listening for route connections on %s", _host_port(self.host, self.port))
        for url in opts.routes or ():
            self.dial(RouteURL(url), implicit=False)

    def close_listener(self):
        """Stop accepting routes: unregister and close the route listener,
        once; routes already up stay."""
        listener = self.listener
        if listener is not None and not listener.closed:
            self.server.unregister(listener)
            listener.sock.close()
            listener.closed = True

    def url(self) -> str:
        """How peers reach our route port (INFO's `ip`)."""
        return "nats-route://%s/" % _advertised(self.server.options.cluster_advertise,
                                                  self.host, self.port)

    def info(self, pool_idx: int = 0, account: str = "") -> bytes:
        """The INFO we send a route (Go's route INFO, without compression, so
        Go peers use plain connections): our pool size, and when we dialed,
        the slot or the pinned account the connection is for."""
        server = self.server
        opts = server.options
        info = {
            "server_id": server.server_id, "server_name": server.server_name,
            "version": VERSION, "proto": ROUTE_PROTO, "go": GO_FIELD,
            "host": self.host, "port": self.port, "headers": True,
        }
        if opts.cluster_auth is not None:
            info["auth_required"] = True
        if opts.cluster_tls is not None:
            info["tls_required"] = info["tls_verify"] = True
        info.update({"max_payload": opts.max_payload, "ip": self.url(), "cluster": self.name})
        if self.dynamic:
            info["cluster_dynamic"] = True
        if not opts.no_advertise:
            info["connect_urls"] = [server.client_url()]
            if server.ws_port:
                info["ws_connect_urls"] = [server.ws_url()]
        if self.pool_size > 0:
            info["route_pool_size"] = self.pool_size
        if pool_idx:
            info["route_pool_idx"] = pool_idx
        if account:
            info["route_account"] = account
        return b"INFO " + json.dumps(info, separators=(",", ":")).encode() + CR_LF

    def dial(self, target: RouteURL, implicit: bool, attempt: int = 1,
             pool: RoutePool | None = None, pinned: str = ""):
        """Dial a route (dial_tcp: a host name is looked up off the loop);
        with `pool`, a further connection to that peer: a pool slot, or the
        route of account `pinned`."""
        server = self.server
        if not server.running and server.listener is None:
            return
        if (target.host, target.port) in self.self_routes or server.lame_duck:
            return
        if pool is not None:
            if pinned:
                pool.dialing_pinned.add(pinned)
            else:
                pool.dialing += 1
        dial_tcp(server, target.host, target.port,
                 lambda sock: self.create_route(sock, target, implicit, pool, pinned),
                 lambda why: self.dial_failed(target, implicit, why, attempt, pool, pinned))

    def dial_failed(self, target: RouteURL, implicit: bool, why: str, attempt: int = 0,
                    pool: RoutePool | None = None, pinned: str = ""):
        """Log (Go's cadence) and try again: configured routes forever (or
        connect_retries times), learned ones connect_retries times; a pool's
        further connection when the pool next looks for what it lacks."""
        attempt = attempt or 1
        text = "Error trying to connect to route (attempt %d): dial tcp %s: connect: %s" % (
            attempt, _host_port(target.host, target.port), why.lower())
        if attempt == 1 or attempt % ROUTE_ERROR_REPORTS == 0:
            self.server.log.error("%s", text)
        else:
            self.server.log.debug("%s", text)
        if pool is not None:
            self.filled(pool, pinned)
            self.server.add_timer(ROUTE_RECONNECT_DELAY, lambda: self.fill(pool))
            return
        retries = self.server.options.connect_retries
        if implicit and attempt > retries:
            return
        if not implicit and retries and attempt > retries:
            return
        self.server.add_timer(ROUTE_RECONNECT_DELAY,
                              lambda: self.redial(target, implicit, attempt + 1))

    def redial(self, target: RouteURL, implicit: bool, attempt: int):
        """Dial `target` again, unless it came back by itself meanwhile."""
        if self.server.running and not self.connected(target):
            self.dial(target, implicit, attempt)

    def connected(self, target: RouteURL) -> bool:
        """Is there a route to `target` already, dialed by us or by it?"""
        where = (target.host, target.port)
        for route in self.conns:
            if route.target is not None and (route.target.host, route.target.port) == where:
                return True
            if route.registered and route.remote_info.get("ip"):
                try:
                    advertised = RouteURL(route.remote_info["ip"])
                except ConfigError:
                    continue
                if (advertised.host, advertised.port) == where:
                    return True
        return False

    # -- route connections ----------------------------------------------------

    def create_route(self, sock: socket.socket, target: RouteURL | None = None,
                     implicit: bool = False, pool: RoutePool | None = None, pinned: str = ""):
        """A route connection, accepted (target None) or dialed: INFO (and
        CONNECT first when we dialed); with cluster TLS, the handshake comes
        before either (Go's createRoute: TLS at once, no plain INFO)."""
        server = self.server
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        server.next_cid += 1
        tls = server.options.cluster_tls
        route_class = server.tls_route_class if tls else Route
        route = route_class(server, sock, server.next_cid, target, implicit, pinned, pool)
        try:
            server.selector.register(sock, selectors.EVENT_READ, route)
        except (ValueError, OSError) as exc:
            self.server.log.error("Error registering route connection: %s", exc)
            sock.close()
            if pool is not None:
                self.filled(pool, pinned)
            return
        self.conns.add(route)
        if target is not None:
            route.host, route.port = target.host, target.port
            route.log_prefix = "%s - rid:%d - " % (_host_port(target.host, target.port),
                                                   route.cid)
        if tls is None:
            self.start_route(route)
        elif target is not None:
            route.start_tls(tls.client_context(), tls.timeout, hostname=target.host)
        else:
            route.start_tls(tls.server_context(), tls.timeout)

    def start_route(self, route: Route):
        """The route's first words, once it is connected (and past TLS):
        CONNECT and INFO when we dialed; INFO when we accepted, as Go greets
        a route, and the peer's CONNECT is checked when it comes, within the
        auth timeout.  With route authorization, our INFO waits for a CONNECT
        that passes instead: a Go 2.15 dialer with wrong credentials that
        gets an INFO first registers the route, and when it is closed dials
        again at once, thousands of times a second."""
        if route.target is not None:
            route.send_connect()
            if self.pool_size <= 0:
                route.send_proto(self.info(), "INFO")
            # (else our INFO waits for the peer's, to name the slot: register)
        else:
            if self.server.options.cluster_auth is None:
                route.send_proto(self.info(), "INFO")
            self.server.add_timer(AUTH_TIMEOUT, route.connect_timeout)
        route.arm_ping_timer()
        route.flush()
        self.server.log.info("%sRoute connection created", route.log_prefix)

    def register(self, route: Route):
        """The peer's INFO arrived: place the route in the peer's pool (or as
        its pinned account's route), send it the interest it carries, and
        tell the other peers about a new one (gossip)."""
        info = route.remote_info
        remote_size = info.get("route_pool_size") or 0
        pooled = self.pool_size > 0 and remote_size > 0 and not route.legacy
        if route.target is None:
            route.pinned = info.get("route_account") or ""
            route.pinned_name = route.pinned.encode()
        problem = self.pool_problem(route, pooled, remote_size)
        if problem:
            # Go's addRoute refusals: -ERR and close; a dedicated route the
            # peer cannot have is not dialed again (Go's setNoReconnect).
            route.no_redial = problem.startswith("Not possible")
            route.error("%s", problem)
            route.send_err_and_close(problem, PROTOCOL_VIOLATION)
            return
        pool = self.pools.get(route.remote_id)
        if pool is None:
            size = max(self.pool_size, remote_size) if pooled else 1
            pool = self.pools[route.remote_id] = RoutePool(size, not pooled)
        elif pooled and len(pool.slots) < remote_size:
            pool.slots += [None] * (remote_size - len(pool.slots))   # the peer's pool grew
        if route.filling is pool:
            self.filled(pool, route.pinned)
            route.filling = None
        # Its place: the pinned account's, a free slot (dialed), the slot the
        # peer names (accepted), or the only one (no pool).
        if route.pinned:
            existing = pool.pinned.get(route.pinned)
        elif not pooled:
            route.pool_idx = 0
            existing = pool.slots[0]
        elif route.target is not None:
            free = [k for k, r in enumerate(pool.slots) if r is None or r.closed]
            if not free:
                route.debug("Route pool size reached, closing extra connection to %s",
                            go_quote(route.remote_id.encode()))
                route.close("Duplicate Route")
                return
            route.pool_idx, existing = free[0], None
        else:
            route.pool_idx = info.get("route_pool_idx") or 0
            existing = pool.slots[route.pool_idx]
        if existing is not None and not existing.closed:
            # Two connections for one place (both sides dialed).  The peer may
            # keep the other one and close this one's twin, and then none is
            # left: so the kept one takes over what this one was dialed for,
            # and is dialed again if it closes (Go's handleDuplicateRoute).
            route.debug("Detected duplicate remote route %s", go_quote(route.remote_id.encode()))
            if route.target is not None and existing.target is None:
                existing.target, existing.implicit = route.target, route.implicit
            existing.retry = True
            route.close("Duplicate Route")
            return
        if route.pinned:
            pool.pinned[route.pinned] = route
        else:
            pool.slots[route.pool_idx] = route
        route.registered = True
        if route.target is not None:
            if pool.target is None or pool.implicit:
                pool.target, pool.implicit = route.target, route.implicit
            if self.pool_size > 0:
                route.send_proto(self.info(max(route.pool_idx, 0), route.pinned), "INFO")
        first = route.remote_id not in self.routes
        if first:
            self.routes[route.remote_id] = route
        if route.pinned:
            route.debug("Registering remote route %s for account %s",
                        go_quote(route.remote_id.encode()), go_quote(route.pinned_name))
        else:
            route.debug("Registering remote route %s", go_quote(route.remote_id.encode()))
        for account in self.server.accounts.values():
            if self.route_for(pool, account.name) is not route:
                continue
            bridged = account.bridged[not route.legacy]
            for key in list(account.interest) + [k for k in bridged if k not in account.interest]:
                count = account.interest.get(key, 0) + bridged.get(key, 0)
                route.send_interest(account, key[0], key[1], count)
            if account.exports_services:
                route.send_interest(account, account.reply_prefix + b">", None, 1)
        route.ping_at = time.monotonic()        # (its PONG gives the route's rtt)
        route.send_proto(PING)
        # Gossip: tell the others about the new peer; they dial it (as Go
        # does), and about its pinned routes, which a Go peer dials as
        # well.  Not between dialects: a 0.7 peer neither gossips nor
        # follows gossip, and a 2.x peer must not dial it.
        if not route.legacy:
            told = {k: v for k, v in info.items()
                    if k not in ("route_account", "route_pool_idx", "nonce")}
            announce = []
            if first:
                announce.append(told)
            if route.pinned:
                announce.append(dict(told, route_account=route.pinned))
            for told in announce:
                line = b"INFO " + json.dumps(told, separators=(",", ":")).encode() + CR_LF
                for other in self.routes.values():
                    if other.remote_id != route.remote_id and not other.legacy:
                        other.queue_outbound(line)
        if first:
            self.changed()
        if pooled and route.target is not None:
            self.fill(pool)

    def pool_problem(self, route: Route, pooled: bool, remote_size: int) -> str:
        """Why the route cannot join the peer's pool, in Go's words, or ""."""
        info = route.remote_info
        if not pooled:
            if route.pinned:
                return ("Not possible to have a dedicated route for account %s between those "
                        "servers" % go_quote(route.pinned_name))
        elif route.target is not None:
            if info.get("route_pool_idx"):
                return ("Route pool index should not be set but is set to %d"
                        % info["route_pool_idx"])
        else:
            idx = info.get("route_pool_idx") or 0
            if not 0 <= idx < max(self.pool_size, remote_size):
                return "Invalid route pool index: %d - pool size is %d" % (idx, remote_size)
        if route.pinned and route.pinned not in self.server.accounts:
            return "Unable to lookup account %s: account missing" % go_quote(route.pinned_name)
        if route.pinned and route.pinned not in self.pinned_accounts:
            return "No route for account %s" % go_quote(route.pinned_name)
        return ""

    def route_for(self, pool: RoutePool, account: str) -> "Route | None":
        """The connection to a peer that carries `account`'s interest (and so
        its messages): its pinned route, or the pool slot its name hashes
        to; None while that one is not up."""
        if pool.no_pool:
            return pool.slots[0]
        if account in self.pinned_accounts:
            return pool.pinned.get(account)
        slot = self.slot_of.get(account)
        if slot is None:    # (hashed once per account, not per peer and SUB)
            slot = self.slot_of[account] = route_pool_index(self.pool_size, account)
        return pool.slots[slot]

    def all_routes(self) -> list:
        """Every registered route connection (what /routez lists)."""
        return [route for pool in self.pools.values() for route in pool.routes()]

    def interest_routes(self, account: Account) -> list:
        """For each peer, the connection that carries `account`."""
        routes = []
        for pool in self.pools.values():
            route = self.route_for(pool, account.name)
            if route is not None:
                routes.append(route)
        return routes

    def fill(self, pool: RoutePool):
        """Dial what the pool of a peer we dialed lacks: its free slots and
        its pinned accounts' routes (Go dials each after the previous one's
        first PONG; here all at once)."""
        server = self.server
        if pool.target is None or pool.no_pool or not server.running or server.lame_duck \
                or pool not in self.pools.values():
            return
        for _ in range(sum(1 for r in pool.slots if r is None) - pool.dialing):
            self.dial(pool.target, pool.implicit, pool=pool)
        for name in self.pinned_accounts:
            if name not in pool.pinned and name not in pool.dialing_pinned:
                self.dial(pool.target, pool.implicit, pool=pool, pinned=name)

    def filled(self, pool: RoutePool, pinned: str):
        """A connection dialed by `fill` registered, failed or closed."""
        if pinned:
            pool.dialing_pinned.discard(pinned)
        elif pool.dialing > 0:
            pool.dialing -= 1

    def adopt_accounts(self):
        """A reload made new accounts: each peer's subscriptions move into
        the new account of the same name (and are forgotten with one that
        is gone)."""
        for route in self.conns:
            for key, sub in list(route.remote_subs.items()):
                name = key.split(b" ", 1)[0].decode("utf-8", "replace")
                account = (self.server.global_account if route.legacy
                           else self.server.accounts.get(name))
                if account is None:
                    del route.remote_subs[key]
                else:
                    account.sublist.insert(sub)

    def learn(self, info: dict):
        """Gossip named a server: dial it unless we know it already."""
        remote_id = info.get("server_id") or ""
        url = info.get("ip") or ""
        if not url or remote_id == self.server.server_id or remote_id in self.routes:
            return
        if info.get("route_account"):
            return      # a pinned route: ours follow the pool's first connection (fill)
        try:
            target = RouteURL(url)
        except ConfigError:
            return
        if not self.connected(target):
            self.dial(target, implicit=True)

    def remove(self, route: Route):
        """A route closed: forget its interest; dial it again if we dialed it
        (the whole peer when it was the last connection to it, else the
        missing part of its pool)."""
        server = self.server
        self.conns.discard(route)
        for key, sub in route.remote_subs.items():
            account = server.accounts.get(key.split(b" ", 1)[0].decode("utf-8", "replace"))
            if account is not None:
                account.sublist.remove(sub)
                self.bridge_interest(route, account, sub, -route.weights.get(key, 1))
        route.remote_subs.clear()
        if route.filling is not None:
            self.filled(route.filling, route.pinned)
        pool = self.pools.get(route.remote_id) if route.registered else None
        if pool is not None:
            pool.drop(route)
            left = pool.routes()
            if not left:
                del self.pools[route.remote_id]
                pool = None
            if self.routes.get(route.remote_id) is route:
                if left:
                    self.routes[route.remote_id] = left[0]
                else:
                    del self.routes[route.remote_id]
                    self.changed()
        if route.target is not None and server.running and not server.lame_duck \
                and route.close_reason not in ("Duplicate Route",) and not route.no_redial \
                and (route.target.host, route.target.port) not in self.self_routes \
                and (route.retry or not route.implicit or pool is not None):
            # A duplicate's survivor redials after a random part of the
            # delay, so two servers that raced once do not race again.
            delay = random.uniform(0.05, ROUTE_RECONNECT_DELAY) if route.retry \
                else ROUTE_RECONNECT_DELAY
            if pool is not None:
                server.add_timer(delay, lambda: self.fill(pool))
            else:
                server.add_timer(delay, lambda: self.redial(route.target, route.implicit, 1))

    # -- what the cluster means to clients -------------------------------------

    def changed(self, lame_duck: bool = False):
        """Peers came or went: new connect_urls for clients, and for
        websocket clients the websocket ones (an async INFO to the clients
        of a list that changed and speak protocol 1, as Go sends).  In
        `lame_duck` mode (Go's sendLDMToClients) every such client hears,
        with `ldm`, of the other nodes only."""
        server = self.server
        # Go lists the URLs from the first peer on: ours alone once the
        # peers have gone (websocket ones once a peer has some).
        urls = self.connect_urls() if self.routes or "connect_urls" in server.info_template \
            else []
        ws_urls = self.connect_urls("ws_connect_urls") if server.ws_port and (self.ws_urls or any(
            route.remote_info.get("ws_connect_urls") for route in self.routes.values())) else []
        changed = urls != server.info_template.get("connect_urls", [])
        ws_changed = ws_urls != self.ws_urls
        if not changed and not ws_changed and not lame_duck:
            return
        if urls:
            server.info_template["connect_urls"] = urls
        else:
            server.info_template.pop("connect_urls", None)
        self.ws_urls = ws_urls
        self.urls_changed_at = time.time()
        # (A client yet to send its first PING gets it then: Client.op_ping.)
        for client in list(server.clients.values()):
            if client.protocol >= 1 and client.first_pong_sent and not client.closed and \
                    (lame_duck or (ws_changed if client.ws is not None else changed)):
                client.send_proto(server.client_info(client, lame_duck), "INFO")

    def connect_urls(self, field: str = "connect_urls") -> list:
        """Our client address and every peer's, for clients to fail over to
        (`ws_connect_urls`: the websocket addresses, for websocket clients)."""
        server = self.server
        if server.options.no_advertise or server.lame_duck:    # (Go's LDM drops ours)
            urls = []
        else:
            urls = [server.client_url() if field == "connect_urls" else server.ws_url()]
        for route in self.routes.values():
            for url in route.remote_info.get(field) or ():
                if url and url not in urls:     # (Go reads a null element as "")
                    urls.append(url)
        return urls

    def reconcile_name(self, name: str, peer_dynamic: bool) -> bool:
        """May a peer of cluster `name` join?  A generated name gives way to a
        configured one, and of two generated names the larger wins (as in
        Go's processRouteInfo), so both sides settle on the same name."""
        if not name or name == self.name:
            return True
        if self.dynamic and (not peer_dynamic or self.name < name):
            self.adopt_name(name)
            return True
        return peer_dynamic

    def adopt_name(self, name: str):
        """Take a peer's cluster name as ours (ours was generated)."""
        self.server.log.info("Cluster name updated to %s", name)
        self.name = name
        self.dynamic = False
        self.server.info_template["cluster"] = name

    def update_interest(self, account: Account, sub: Subscription, delta: int):
        """A local subscription came or went: RS+/RS- to every route when the
        (account, subject) interest starts or ends, or a queue's weight moves."""
        key = (sub.subject, sub.queue)
        interest = account.interest
        count = interest.get(key, 0) + delta
        if count > 0:
            interest[key] = count
        else:
            interest.pop(key, None)
        self.tell_routes(account, key, delta, None)

    def bridge_interest(self, route: Route, account: Account, sub: Subscription, delta: int):
        """A peer's subscription came or went.  Routes of the other dialect
        cannot hear of it from the peer (a 0.7 server and a 2.x server do
        not route to each other), so they hear of it from us, as ours, and
        we forward their messages (Route.deliver_local).  Global account
        only: the 0.7 dialect has no other.  (A hub's leaf nodes hear of
        it too, chapter 13.)"""
        if self.server.leafs.conns:
            self.server.leafs.interest_changed(account, sub, delta)
        if account is not self.server.global_account:
            return
        key = (sub.subject, sub.queue)
        bridged = account.bridged[route.legacy]
        count = bridged.get(key, 0) + delta
        if count > 0:
            bridged[key] = count
        else:
            bridged.pop(key, None)
        self.tell_routes(account, key, delta, route.legacy)

    def tell_routes(self, account: Account, key: tuple, delta: int, source):
        """Interest in `key` changed by `delta`, locally (`source` None) or
        on routes of one dialect (`source`: legacy or not): tell every
        route that should know, when the interest it sees starts or ends,
        or a queue's weight moves."""
        subject, queue = key
        local = account.interest.get(key, 0)
        for route in self.interest_routes(account):
            if route.legacy is source:
                continue
            count = local + account.bridged[not route.legacy].get(key, 0)
            if queue is None and not (count == 1 and delta > 0 or count == 0):
                continue
            route.send_interest(account, subject, queue, max(count, 0))

    def legacy_rsid(self, subject: bytes, queue: bytes | None) -> bytes:
        """Our route sid for interest in (subject, queue) on 0.7 peers:
        `RSID:0:<n>`, or `QRSID:0:<n>` for a queue group, whose messages
        then name it (Route.process_legacy_msg)."""
        key = (subject, queue)
        rsid = self.legacy_ids.get(key)
        if rsid is None:
            rsid = b"%sRSID:0:%d" % (b"Q" if queue is not None else b"", len(self.legacy_ids) + 1)
            self.legacy_ids[key] = rsid
            self.legacy_keys[rsid] = key
        return rsid

    def varz(self) -> dict:
        """/varz's `cluster` object (empty without a cluster, as in Go)."""
        opts = self.server.options
        if not self.enabled:
            return {}
        varz = {"name": self.name, "addr": self.host, "cluster_port": self.port,
                "auth_timeout": 2, "urls": list(opts.routes or ()), "tls_timeout": 2,
                "pool_size": self.pool_size}
        if not varz["urls"]:
            del varz["urls"]            # (omitempty)
        tls = opts.cluster_tls
        if tls is not None:
            varz.update(tls_timeout=go_number(tls.timeout), tls_required=True, tls_verify=True)
        return varz


# ============================================================================
# 13. Leaf nodes
# ============================================================================
#
# A leaf node joins one account of this server to one account of another
# over a single connection, whichever side dialed: the edge device dials
# out (through NAT, to a hub it names in `leafnodes { remotes [...] }`),
# and the hub accepts on its leafnode port.  Unlike a route, a leaf
# connection is bound to one account at each end, and each side tells the
# other only the interest it has in that account: `LS+ <subject> [<queue>
# <weight>]` and `LS- ...`; messages cross as `LMSG <subject> [reply |
# + reply queues | | queues] <size>` (HMSG with headers).  A message goes
# over a leaf connection only when the other side said it wants it, and
# never back where it came from.
#
# The two ends are not symmetric (Go's leafnode.go):
#
# * The hub (the accepting side) tells a leaf about all interest in the
#   account: its clients', its routes' and its other leaf nodes'.  A leaf's
#   interest travels on to the hub's routes, so a leaf on one node of a
#   cluster reaches subscribers on every node.
# * The spoke (the dialing side) tells the hub only about its own clients
#   (and the leaf nodes that dial it in turn), and what comes from the hub
#   is for its clients: its cluster peers dial the hub themselves.
# * A queue group prefers its members on this side; a member across a leaf
#   connection gets a message only when no local one can.
# * Each side subscribes the other to a loop detection subject ($LDS.<id>)
#   of its own: seeing one's own come back means the connection closes a
#   loop, which is refused.
#
# The dialing side reconnects (leafnodes { reconnect }) for as long as it
# runs, keeps serving its clients while the hub is away, and sends its
# interest again on each connect.  The hub authenticates a leaf by the
# leafnodes block's authorization (binding it to that block's account), or
# else as a client (users, accounts, operator mode's JWTs: a remote's
# `credentials` file signs the hub's nonce).

LEAF_RECONNECT_DELAY = 1.0        # Go's DEFAULT_LEAF_NODE_RECONNECT
LEAF_CONNECT_TIMEOUT = 2.0        # Go's connectProcessTimeout: a hub's answer to CONNECT
LEAF_LDS_PREFIX = b"$LDS."        # loop detection subjects (Go's leafNodeLoopDetectionSubjectPrefix)
LEAF_LOOP_DELAY = 30.0            # a dialing side's wait after a loop (Go's, 30 s)
# Subjects whose LMSG plan a leaf connection keeps (LeafNode.msg_plans):
# emptied when full, each plan some hundred bytes.
LEAF_MSG_PLANS_MAX = 4096

# A leaf's CONNECT as Go's leafConnectInfo reads it (read_go_json's rules).
_LEAF_CONNECT_FIELDS = {
    "version": str, "nkey": str, "jwt": str, "sig": str, "user": str, "pass": str,
    "auth_token": str, "server_id": str, "domain": str, "name": str, "is_hub": bool,
    "cluster": str, "headers": bool, "jetstream": bool, "deny_pub": _STRINGS, "isolate": bool,
    "compress_mode": str, "gateway": str, "remote_account": str, "protocol": _INT,
}

# The ops LeafNode.process_op knows.
_LEAF_OPS = frozenset((b"LMSG", b"HMSG", b"LS+", b"LS-", b"PING", b"PONG", b"INFO",
                       b"CONNECT", b"-ERR", b"+OK"))


class LeafNode(Connection):
    """A leaf node connection, bound to `account`.

    dialed (spoke):  connect -> [TLS] -> hub INFO -> CONNECT -> interest
                     (with the hub's info_on_connect: after its second INFO)
    accepted (hub):  [TLS] -> INFO -> leaf CONNECT (authenticated) -> interest
    """

    __slots__ = ("remote", "url", "account", "remote_id", "remote_name", "remote_cluster",
                 "remote_info", "info_received", "connect_received", "registered", "headers",
                 "remote_subs", "weights", "smap", "nonce", "credentials", "deny_exports",
                 "deny_imports", "remote_account", "perms", "expiry_entry", "msg_plans",
                 "header_plans", "msg_plans_for")

    kind = "Leaf"
    tls_label = "leafnode "
    legacy = False              # (as a Route's: what message tracing asks of a peer)
    user = ""                   # (as a Client's: what expiry's log line names)

    @property
    def name(self) -> str:
        """The remote server's name (what a client's `name` is in traces)."""
        return self.remote_name

    def __init__(self, server: "Server", sock: socket.socket, cid: int,
                 remote: "RemoteLeafOptions | None" = None, url: "RouteURL | None" = None):
        super().__init__(server, sock, cid)
        self.remote = remote            # the remotes entry we dialed for, None for accepted
        self.url = url                  # the URL dialed
        self.account = server.global_account
        self.remote_id = self.remote_name = self.remote_cluster = self.remote_account = ""
        self.remote_info: dict = {}
        self.info_received = False
        self.connect_received = False
        self.registered = False
        self.headers = True
        self.remote_subs: dict = {}     # b"subject[ queue]" -> Subscription (the peer's LS+)
        self.weights: dict = {}         # the same keys -> queue weight
        self.smap: dict = {}            # b"subject[ queue]" -> count we told the peer
        self.nonce = b""
        self.credentials = None
        self.perms = None               # an accepted leaf's user's (ClientPermissions)
        self.expiry_entry = None        # the timer of its JWT login's end
        self.msg_plans: dict = {}       # LMSG subject -> DeliveryPlan (parse, leaf_plan)
        self.header_plans: dict = {}    # the same for HMSG
        self.msg_plans_for = None       # (sublist, genid) the plans were made for
        # (None when a remote denies nothing: a plan through the hub stays fast.)
        self.deny_exports = _permission_sublist(remote.deny_exports or None if remote else None)
        self.deny_imports = _permission_sublist(remote.deny_imports or None if remote else None)
        host = "[%s]" % self.host if ":" in self.host else self.host
        self.log_prefix = "%s:%d - lid:%d - " % (host, self.port, cid)

    @property
    def is_spoke(self) -> bool:
        """Did we dial (the hub is the other side)?"""
        return self.remote is not None

    # -- handshake -------------------------------------------------------------

    def send_connect(self):
        """Our CONNECT to the hub (Go's sendLeafConnect): who we are, the
        account we bind, and the credentials of the remote: a .creds file
        or an nkey seed signs the hub's nonce; user and password come from
        the URL."""
        server, remote = self.server, self.remote
        fields = {"version": VERSION, "server_id": server.server_id, "name": server.server_name,
                  "headers": True, "remote_account": self.account.name, "protocol": 1}
        if server.cluster.enabled:
            fields["cluster"] = server.cluster.name
        if remote.deny_imports:
            fields["deny_pub"] = list(remote.deny_imports)
        try:
            if remote.credentials:
                self.debug("Authenticating with credentials file %s",
                           go_quote(remote.credentials.encode()))
                token, seed = read_credentials(remote.credentials)
                fields["jwt"] = token
                fields["sig"] = nkey_sign(seed, self.nonce)[1]
            elif remote.seed:
                fields["nkey"], fields["sig"] = nkey_sign(remote.seed, self.nonce)
        except (OSError, ValueError) as exc:
            self.error("Error signing the nonce: %s", exc)
            self.close("Write Error")
            return
        if self.url is not None and self.url.user:
            fields["user"] = self.url.user
            if self.url.password:
                fields["pass"] = self.url.password
            else:
                fields["auth_token"] = self.url.user
        self.send_proto(b"CONNECT " + json.dumps(fields, separators=(",", ":")).encode()
                        + CR_LF, "CONNECT")

    def process_info(self, arg: bytes):
        """The hub's INFO (we dialed): the first one has the nonce to sign;
        then CONNECT, and our interest at once, or after the hub's answer
        when it says it will send one (info_on_connect).  Later INFOs update
        what we know (the hub's answer: connect_info)."""
        try:
            info = read_go_json(arg, _INFO_FIELDS, "Info") or {}
        except ValueError as exc:
            raise ProtocolError(str(exc))
        if not self.is_spoke:
            return                      # an accepting side reads no INFO (Go's)
        if not self.info_received:
            if not info.get("client_id") or info.get("leafnode_urls") is None:
                self.error("attempted to connect to wrong port")
                self.close("Wrong Port")
                return
            self.info_received = True
            self.nonce = str(info.get("nonce") or "").encode()
            self.remote_id = str(info.get("server_id") or "")
            self.remote_name = str(info.get("server_name") or info.get("name") or
                                   self.remote_id)
            self.remote_cluster = str(info.get("cluster") or "")
            self.remote_info = info
            self.headers = bool(info.get("headers"))
            remote = self.remote
            if (info.get("tls_required") or remote.tls is not None or self.url.tls) \
                    and self.tls is None and self.ws is None:
                # The upgrade comes after the hub's plain INFO (Go's
                # leafClientHandshakeIfNeeded); CONNECT after the handshake.
                self.start_leaf_tls()
                return
            self.hello()
            return
        if info.get("remote_account"):
            self.remote_account = info["remote_account"]
        if info.get("connect_info") and not self.registered:
            self.server.leafs.register(self)

    def start_leaf_tls(self):
        """Begin our TLS handshake with the hub (after its INFO, or first
        for wss://), trusting the remote's tls block or the system's CAs."""
        remote = self.remote
        try:
            context = remote.tls.client_context() if remote.tls is not None else \
                load_ssl().create_default_context()
        except (ConfigError, AttributeError, OSError) as exc:
            self.error("TLS leafnode setup failed: %s", exc)
            self.close(TLS_HANDSHAKE_ERROR)
            return
        self.start_tls(context, remote.tls.timeout if remote.tls else TLS_TIMEOUT,
                       hostname=self.url.host)

    def hello(self):
        """Our CONNECT to the hub (after its INFO, and the TLS handshake if
        any); then we are in, or wait for the hub's second INFO when it said
        it would send one (info_on_connect)."""
        self.send_connect()
        if self.closed:
            return
        self.debug("Remote leafnode connect msg sent")
        if self.remote_info.get("info_on_connect"):
            self.server.add_timer(LEAF_CONNECT_TIMEOUT, self.connect_timeout)
            return
        self.server.leafs.register(self)

    def connect_timeout(self):
        """Timer callback: a hub that promised an INFO after our CONNECT
        (or a leaf whose CONNECT never came) did not send it in time."""
        if self.closed or self.registered:
            return
        if self.is_spoke:
            self.debug("Stale Leaf Node Connection - Closing")
            self.send_err_and_close("Stale Leaf Node Connection - Closing", STALE_CONNECTION)
        else:
            self.error("Authentication Timeout")
            self.send_err_and_close(ERR_AUTH_TIMEOUT, AUTHENTICATION_TIMEOUT)

    def process_connect(self, arg: bytes):
        """A leaf's CONNECT (we accepted; Go's processLeafNodeConnect):
        authenticate, bind the account, register, send our interest."""
        if self.is_spoke or self.connect_received:
            return                      # (a second CONNECT changes nothing)
        try:
            # (Go reads every CONNECT into ClientOpts first, then its own.)
            fields = read_go_json(arg, _CONNECT_FIELDS, "ClientOpts") or {}
            problem = _json_type_error(fields, _LEAF_CONNECT_FIELDS, "leafConnectInfo")
        except ValueError as exc:
            raise ProtocolError(str(exc))
        if problem:
            raise ProtocolError(problem)
        if fields.get("lang"):
            self.error("attempted to connect to leaf node port")
            self.send_err_and_close("attempted to connect to leaf node port", "Incorrect Port")
            return
        if fields.get("gateway"):
            text = "Rejecting connection from gateway %s on the leafnode port" % go_quote(
                str(fields["gateway"]).encode())
            self.error("%s", text)
            self.send_err_and_close(text, "Wrong Gateway")
            return
        cluster = fields.get("cluster") or ""
        if " " in str(cluster):
            self.error("cluster name cannot contain spaces")
            self.send_err_and_close("cluster name cannot contain spaces", PROTOCOL_VIOLATION)
            return
        server = self.server
        if cluster and server.cluster.enabled and cluster == server.cluster.name:
            text = "remote leafnode has same cluster name"
            self.error("%s", text)
            self.send_err_and_close(text, "Cluster Names Identical")
            return
        self.credentials = {k: fields[k] for k in ("user", "pass", "auth_token", "nkey",
                                                   "sig", "jwt") if fields.get(k)}
        try:
            login = self.authorize()
        except _SecretCheckPending as pending:
            self.await_secret(pending, lambda: self.process_connect(arg))
            return
        account = login[0] if login is not None else None
        if account is None:
            user = (self.credentials or {}).get("user")
            if user:
                self.error("authentication error - User %s", go_quote(str(user).encode()))
            else:
                self.error("authentication error")
            self.send_err_and_close(ERR_AUTH_VIOLATION, AUTHENTICATION_VIOLATION)
            return
        self.connect_received = True
        self.account = account
        _account, perms, expires_in = login
        self.perms = ClientPermissions(perms) if perms is not None else None
        if expires_in is not None:
            self.expiry_entry = server.add_timer(expires_in, lambda: end_jwt_login(self))
        self.remote_id = str(fields.get("server_id") or "")
        self.remote_name = str(fields.get("name") or self.remote_id)
        self.remote_cluster = str(cluster)
        self.remote_account = str(fields.get("remote_account") or "")
        self.headers = bool(fields.get("headers"))
        deny = fields.get("deny_pub")
        if isinstance(deny, list) and deny:     # what the leaf will not import: not sent
            self.deny_exports = _permission_sublist([s for s in deny if s])
        self.send_proto(server.leafs.info(self, connected=True), "INFO")
        server.leafs.register(self)

    def authorize(self) -> tuple | None:
        """(account, Permissions or None, seconds until the login ends or
        None) of this accepted leaf, or None: the leafnodes block's
        authorization (one user or nkey, or users, each with an account),
        else the credentials a client's would be (users, accounts, operator
        mode).  The permissions are the user's, seen from the leaf: what it
        may publish to us and subscribe to here.  Raises _SecretCheckPending
        for a bcrypt answer."""
        server = self.server
        leaf = server.options.leafnodes
        given = self.credentials or {}
        if leaf.nkey:
            if given.get("nkey") != leaf.nkey or \
                    not nkey_signed(leaf.nkey, given.get("sig"), self.nonce):
                return None
            return server.accounts.get(leaf.account or GLOBAL_ACCOUNT), None, None
        if leaf.username or leaf.users:
            users = leaf.users or [User(leaf.username, leaf.password, None, leaf.account)]
            for user in users:
                if user.username == given.get("user"):
                    if not self.secret_equal(given.get("pass", ""), user.password):
                        return None
                    return server.accounts.get(user.account or GLOBAL_ACCOUNT), None, None
            return None
        opts = server.options
        if opts.trusted_keys:
            login = jwt_login(server.accounts, self)
            if login is None:
                return None
            return server.accounts[login.account], login.permissions, login.expires_in
        found = authenticate(opts, given, (), self.secret_equal, self.nonce)
        if found is None:
            return None
        return server.accounts.get(found[2] or GLOBAL_ACCOUNT), found[1], None

    def perm_violation(self, publish: bool, subject: bytes):
        """The leaf's user may not publish (or subscribe to) `subject`:
        -ERR, log, close (Go's leafPermViolation)."""
        action = "Publish" if publish else "Subscription"
        self.send_err("Permissions Violation for %s to %s" % (action, go_quote(subject)))
        self.error("%s Violation on %s - Check other side configuration", action,
                   go_quote(subject))
        self.close(PROTOCOL_VIOLATION)

    def connection_type(self) -> str:
        """What a user JWT's allowed_connection_types calls this connection."""
        return "LEAFNODE"

    # -- input -----------------------------------------------------------------

    def parse(self, data: bytes, start: int = 0):
        """Leaf ops, up to this turn's time as a client's (chapter 5).  A
        plain `LMSG <subject> [reply] <size>` (or HMSG, `<hdr> <size>`)
        takes the hot path as a route's RMSG does: the size from the line's
        last token, the plan from msg_plans (header_plans; leaf_plan);
        anything else goes to process_op."""
        server = self.server
        n = len(data)
        i = start
        limit = server.options.max_control_line
        # Fairness, as in Client.parse: the clock is read every
        # INPUT_CHECK_BYTES and after every op the hot path did not take.
        monotonic = time.monotonic
        deadline = monotonic() + MAX_INPUT_TIME
        check_at = start + INPUT_CHECK_BYTES
        find = data.find
        startswith = data.startswith
        sizes_get = server.pub_sizes.get
        # What LeafNode.process_msg checks per message, once: a registered
        # leaf, untraced, with no deny_imports and no user permissions.
        hot = self.registered and not self.trace and self.deny_imports is None and \
            self.perms is None
        plans_get, header_plans_get = (d.get for d in self.leaf_plans())
        msgs = nbytes = 0
        touched = set()               # plans delivered to: settled and marked once, after
        touch = touched.add
        now = time.time()
        try:
            while i < n and not self.closed:
                if i >= check_at:
                    if self.waiting or monotonic() > deadline:
                        self.defer_input(data, i)
                        break
                    check_at = i + INPUT_CHECK_BYTES
                nl = find(b"\n", i)
                if (nl if nl >= 0 else n) - i > limit:
                    raise ProtocolError("leafnode control line too long",
                                        ERR_MAX_CONTROL_LINE, MAX_CONTROL_LINE_EXCEEDED)
                if nl < 0:
                    self.keep_tail(data, i, n - i + 1)
                    break
                # HOT: LMSG lines as peers write them (see the docstring;
                #      a hub's CPU for LMSGs over 64 subjects from a leaf to
                #      one client: 3.5 -> 1.9 us/msg).
                plan = None
                if hot and data[nl - 1] == 13 and (startswith(b"LMSG ", i) or
                                                   startswith(b"HMSG ", i)):
                    subject, _, size_token = data[i + 5:nl - 1].rpartition(b" ")
                    size = sizes_get(size_token, -2)
                    if size == -2:
                        size = server.pub_size(size_token)
                    header = data[i] == 72          # HMSG: `<hdr> <total>`
                    if header and size >= 0:
                        subject, _, hdr_token = subject.rpartition(b" ")
                        hdr = sizes_get(hdr_token, -2)
                        if hdr == -2:
                            hdr = server.pub_size(hdr_token)
                        if not 0 <= hdr <= size:
                            size = -1
                    tail_at = i + 6 + len(subject)  # (the size field)
                    if size >= 0 and subject:
                        reply_sp = None
                        r = subject.find(b" ")
                        if r >= 0:      # `<subject> <reply>`; more (queues): process_op
                            reply = subject[r + 1:]
                            subject = subject[:r]
                            if reply.split() == [reply]:
                                reply_sp = reply + b" "
                            else:
                                subject = b""
                        if header:
                            plan = header_plans_get(subject) or self.leaf_plan(subject, True)
                        else:
                            plan = plans_get(subject) or self.leaf_plan(subject)
                if plan is None or (plan.kind != PLAN_PLAIN and plan.kind != PLAN_EMPTY):
                    i = self.process_op(data, i, nl)
                    if i < 0:
                        break
                    check_at = 0
                    # (An LS+ or LS- changes the sublist.)
                    plans_get, header_plans_get = (d.get for d in self.leaf_plans())
                    continue
                stop = nl + 1 + size
                if stop + 2 > n or data[stop] != 13 or data[stop + 1] != 10:
                    i = self.process_op(data, i, nl)    # (keeps the tail, or refuses the end)
                    if i < 0:
                        break
                    check_at = 0
                    continue
                if plan.kind == PLAN_PLAIN:
                    plan.deliver(data[tail_at:stop + 2], size, reply_sp)
                    touch(plan)
                msgs += 1
                nbytes += size
                i = stop + 2
        finally:
            for plan in touched:
                plan.settle()       # (msg_plans may be emptied before the next parse)
            mark_receivers(touched, server.pending, now)
            if msgs:                # (also when a bad op ends the read)
                self.in_msgs += msgs
                self.in_bytes += nbytes
                self.last_activity = now

    def leaf_plans(self) -> tuple:
        """(msg_plans, header_plans), emptied if the account's sublist
        changed since they were made (its genid: any subscription, a
        reload's new accounts).  Each parse settles the plans it used, so
        none holds counts here."""
        sublist = self.account.sublist
        made_for = (sublist, sublist.genid)
        if self.msg_plans_for != made_for:
            self.msg_plans, self.header_plans = {}, {}
            self.msg_plans_for = made_for
        return self.msg_plans, self.header_plans

    def leaf_plan(self, subject: bytes, headers: bool = False):
        """The delivery plan of a plain LMSG (`headers`: HMSG) on `subject`
        from this leaf, LeafNodes.deliver's for a message naming no queue
        group: the local clients' plain subscriptions, the other leaf
        connections and, on a hub, the routes; never this connection.  None
        (process_op takes the line) for a subject with other whitespace in
        it, or a response to a service request (take_response)."""
        account = self.account
        if subject.split() != [subject] or (account.exports_services and
                                            subject.startswith(b"_R_.")):
            return None
        sublist = account.sublist
        spoke = self.is_spoke
        psubs = [s for s in sublist.match(subject).psubs if s.client is not self and
                 (s.client.kind != "Router" or not spoke)]
        receivers = SublistResult(psubs, [])
        plan = DeliveryPlan(receivers, subject, sublist.name, headers,
                            shape_for(sublist, receivers, subject, headers))
        plans = self.header_plans if headers else self.msg_plans
        if len(plans) >= LEAF_MSG_PLANS_MAX:
            plans.clear()
        plans[subject] = plan
        return plan

    def process_op(self, data: bytes, i: int, nl: int) -> int:
        """One control line; returns the next index, or -1 when the op's
        payload is not all here yet (the tail is kept)."""
        op, blank, arg = peer_op(data, i, nl)
        if not self.is_spoke and not self.connect_received and op[:1] != b"C":
            # (Go refuses the first byte of anything but a C before CONNECT;
            # a C that spells no CONNECT is an unknown op, below.)
            self.error("authentication error")
            self.send_err_and_close(ERR_AUTH_VIOLATION, AUTHENTICATION_VIOLATION)
            return -1
        if not blank and op in _OPS_WITH_ARGS:      # (Go fails on the byte after the name)
            raise op_name_error(data, i, "Leafnode")
        if op == b"LMSG" or op == b"HMSG":
            stop = self.process_msg(data, nl, op == b"HMSG", arg.lstrip(b" \t"))
            if stop < 0:
                self.keep_tail(data, i, -stop - i)
                return -1
            return stop
        if self.trace:
            self.trace_in(op.decode("ascii", "replace"), arg)
        if op == b"LS+":
            self.process_leaf_sub(split_arg(arg))
        elif op == b"LS-":
            self.process_leaf_unsub(arg.strip())
        elif op == b"PING":
            self.send_proto(PONG)
        elif op == b"PONG":
            self.pong()
        elif op == b"INFO":
            self.process_info(arg)
        elif op == b"CONNECT":
            self.process_connect(arg)
        elif op == b"-ERR":
            text = arg.decode("utf-8", "replace")
            self.error("Leafnode Error %s", text)
            if self.remote is not None and ("Loop detected" in text or
                                            "same cluster name" in text):
                self.remote.delay_until = time.monotonic() + LEAF_LOOP_DELAY
        elif op != b"+OK":
            raise op_name_error(data, i, "Leafnode")
        return nl + 1

    def process_msg(self, data: bytes, nl: int, headers: bool, arg: bytes) -> int:
        """LMSG/HMSG whose payload follows `nl` (Go's processLeafMsgArgs):
        `<subject> [reply] <size>`, or `<subject> + <reply> <queues> <size>`
        or `<subject> | <queues> <size>` (HMSG: `<hdr> <size>` at the end);
        returns the index after the payload, or -(bytes needed)."""
        subject, reply, queues, hdr, size, size_field = routed_msg_args(
            split_arg(arg), 1, headers,
            "processLeafHeaderMsgArgs" if headers else "processLeafMsgArgs", arg)
        if size > self.server.options.max_payload:
            self.error("maximum payload exceeded: %d vs %d", size,
                       self.server.options.max_payload)
            self.send_err_and_close(ERR_MAX_PAYLOAD, MAX_PAYLOAD_EXCEEDED)
            return len(data)
        stop = nl + 1 + size
        end = data[stop:stop + 2]
        if end != CR_LF[:len(end)]:     # (as soon as a wrong byte shows, as Go's parser)
            raise payload_end_error(data, stop, "Leafnode")
        if stop + 2 > len(data):
            return -(stop + 2)
        if self.trace:
            self.trace_in("LMSG" if hdr < 0 else "HMSG", arg)
        self.in_msgs += 1
        self.in_bytes += size
        self.last_activity = time.time()
        if self.deny_imports is not None and self.deny_imports.has_interest(subject):
            return stop + 2             # deny_imports: not taken from the hub
        if self.perms is not None and not subject.startswith(b"_R_.") and \
                not self.perms.can_publish(subject):
            self.perm_violation(True, subject)
            return stop + 2
        msg = Message(subject, reply, hdr, size, data[nl + 1:stop], size_field)   # (as written)
        self.server.leafs.deliver(self, msg, queues)
        return stop + 2

    # -- interest ----------------------------------------------------------------

    def process_leaf_sub(self, args: list):
        """LS+ <subject> [<queue> <weight>] (Go's processLeafSub): the peer's
        interest, in our account's sublist; our own loop detection subject
        coming back means a loop."""
        if len(args) not in (1, 3):
            raise ProtocolError("processLeafSub Parse Error: '%s'"
                                % b" ".join(args).decode("utf-8", "replace"))
        subject = args[0]
        leafs = self.server.leafs
        if subject == leafs.lds(self.account):
            self.loop_detected()
            return
        queue = args[1] if len(args) == 3 else None
        if not is_valid_subject(subject) or (queue is not None and not _valid_queue(queue)):
            self.send_err("Invalid Subscription")
            return
        if self.perms is not None and not subject.startswith(LEAF_LDS_PREFIX) and \
                is_valid_literal_subject(subject) and not self.perms.can_subscribe(subject, queue):
            self.perm_violation(False, subject)
            return
        key = subject if queue is None else subject + b" " + queue
        delta = 1
        if queue is not None:
            old = self.weights.get(key, 0)
            self.weights[key] = weight = max(1, parse_size(args[2]))
            delta = weight - old
        sub = self.remote_subs.get(key)
        if sub is None:
            sub = Subscription(self, subject, queue, key)
            self.remote_subs[key] = sub
            self.account.sublist.insert(sub)
        elif not delta:
            return
        leafs.interest_changed(self.account, sub, delta)
        if not self.is_spoke and self.server.cluster.enabled:
            self.server.cluster.update_interest(self.account, sub, delta)   # a hub's routes

    def process_leaf_unsub(self, key: bytes):
        """LS- <subject> [<queue>]."""
        sub = self.remote_subs.pop(key, None)
        if sub is None:
            return
        delta = -self.weights.pop(key, 1)
        self.account.sublist.remove(sub)
        self.server.leafs.interest_changed(self.account, sub, delta)
        if not self.is_spoke and self.server.cluster.enabled:
            self.server.cluster.update_interest(self.account, sub, delta)

    def loop_detected(self):
        """Our loop detection subject came back: this connection closes a
        loop.  Tell the peer, log, close (a dialing side waits before it
        tries again)."""
        text = "Loop detected for leafnode account=%s. Delaying attempt to reconnect for %s" % (
            go_quote(self.account.name.encode()), format_duration(LEAF_LOOP_DELAY))
        self.send_err(text)
        self.error("%s", text)
        if self.remote is not None:
            self.remote.delay_until = time.monotonic() + LEAF_LOOP_DELAY
        self.close(PROTOCOL_VIOLATION)

    def weight(self, sub: Subscription) -> int:
        """The weight the peer gave `sub`'s queue group (for _pick_start)."""
        return self.weights.get(sub.sid, 1)

    def update_smap(self, subject: bytes, queue: bytes | None, delta: int):
        """Interest in (subject, queue) here changed by `delta`: LS+ when
        the peer should start hearing of it, LS- when it ends, and for a
        queue group its new weight (Go's updateSmap)."""
        key = subject if queue is None else subject + b" " + queue
        count = self.smap.get(key, 0)
        if delta < 0 and key not in self.smap:
            return
        new = count + delta
        if new > 0:
            self.smap[key] = new
        else:
            self.smap.pop(key, None)
        if queue is not None or (count <= 0 < new) or (count > 0 >= new):
            self.send_interest(key, new)

    def send_interest(self, key: bytes, count: int):
        """LS+ key [weight] or LS- key."""
        if count > 0:
            line = b"LS+ " + key + (b" %d" % count if b" " in key else b"")
        else:
            line = b"LS- " + key
        if self.trace:
            self.trace_out(line.decode("utf-8", "replace"))
        self.queue_outbound(line + CR_LF)

    # -- output ------------------------------------------------------------------

    def send_msg(self, account: Account, msg: Message, queue_subs: list,
                 plain: Subscription | None = None):
        """One LMSG/HMSG for `msg`, naming the queue groups the peer was
        picked for; nothing if deny_exports keeps the subject here."""
        if self.deny_exports is not None and self.deny_exports.has_interest(msg.subject):
            return
        queue_peer_msg(self, b"LMSG", None, msg, queue_subs)     # (chapter 12)

    # -- ping and close ----------------------------------------------------------

    def closed_cleanup(self):
        """Leave the account: the peer's interest goes; a dialing side
        dials again (LeafNodes.remove)."""
        self.server.leafs.remove(self)

    def log_closed(self, reason: str):
        """Log the close at [INF], naming the peer once known, as Go 2.15 does."""
        self.server.log.info("%sLeafnode connection closed: %s%s", self.log_prefix, reason,
                             " - Remote: " + self.remote_name if self.remote_name else "")

    def conn_info(self) -> dict:
        """This leaf as a /leafz entry (Go's LeafInfo)."""
        return {
            "id": self.cid, "name": self.remote_name, "is_spoke": self.is_spoke,
            "account": self.account.name, "ip": self.host, "port": self.port,
            "rtt": format_duration(self.rtt), "in_msgs": self.in_msgs, "out_msgs": self.out_msgs,
            "in_bytes": self.in_bytes, "out_bytes": self.out_bytes,
            "subscriptions": len(self.remote_subs), "compression": "not supported",
        }


class LeafNodes:
    """This server's leaf node connections (the leaf half of Go's
    server.go): the hub's listener, the remotes it dials and dials again,
    the connections by account, and what each is told of the account's
    interest.  The server owns one (`server.leafs`).  Loop thread only."""

    def __init__(self, server: "Server"):
        self.server = server
        self.conns: set = set()         # every leaf connection, registered or not
        self.by_account: dict = {}      # account name -> [registered LeafNode]
        self.listener = None
        self.host = ""
        self.port = 0
        self.lds_subjects: dict = {}    # account name -> our loop detection subject
        self.tls_class = None           # with_tls(LeafNode), made at first use
        self.ws_class = None            # with_websocket of that, for ws:// remotes

    # -- listening and dialing -------------------------------------------------

    def listen(self):
        """Bind the leafnode listener (a hub), and dial the remotes (a leaf)."""
        server = self.server
        leaf = server.options.leafnodes
        if leaf is None:
            return
        if leaf.port:
            self.host = leaf.host or DEFAULT_HOST
            sock = _bind(self.host, leaf.port)
            self.port = sock.getsockname()[1]
            self.listener = _Listener(server, sock, self.create_leaf)
            server.selector.register(sock, selectors.EVENT_READ, self.listener)
            server.log.info("Listening for leafnode connections on %s",
                            _host_port(self.host, self.port))
        for remote in leaf.remotes:
            self.dial(remote)

    def close_listener(self):
        """Stop accepting leaf nodes (shutdown, lame duck)."""
        listener = self.listener
        if listener is not None and not listener.closed:
            self.server.unregister(listener)
            listener.sock.close()
            listener.closed = True

    def url(self) -> str:
        """How leaf nodes reach our leafnode port (INFO's leafnode_urls)."""
        return _advertised(self.server.options.leafnodes.advertise, self.host, self.port)

    def info(self, leaf: LeafNode, connected: bool = False) -> bytes:
        """The INFO an accepted leaf gets (Go's leafnode INFO): a nonce to
        sign, its cid (client_id) and where to reach us (leafnode_urls: a Go
        leaf needs both to tell a leafnode port from others), and that a
        second INFO follows its CONNECT (info_on_connect).  That second one
        (`connected`, Go's sendPermsAndAccountInfo) names the bound account
        and tells a Go leaf it is in."""
        server = self.server
        opts = server.options
        host, port = self.host, self.port
        if opts.leafnodes.advertise:
            host, _, advertised_port = self.url().rpartition(":")
            port = int(advertised_port)
        info = {
            "server_id": server.server_id, "server_name": server.server_name,
            "version": VERSION, "proto": 1, "go": GO_FIELD, "host": host, "port": port,
            "headers": True, "auth_required": True,
        }
        if opts.leafnodes.tls is not None:
            info["tls_required"] = True
            if opts.leafnodes.tls.verify:
                info["tls_verify"] = True
        info.update({"max_payload": opts.max_payload, "client_id": leaf.cid})
        if not connected:
            info["nonce"] = leaf.nonce.decode()
        info["info_on_connect"] = True
        if connected:
            info["connect_info"] = True
        info["leafnode_urls"] = [] if opts.leafnodes.no_advertise else [self.url()]
        if server.cluster.enabled:
            info["cluster"] = server.cluster.name
        if connected:
            info["remote_account"] = leaf.account.name
        return b"INFO " + json.dumps(info, separators=(",", ":")).encode() + b" \r\n"

    def dial(self, remote: "RemoteLeafOptions"):
        """Dial the remote's next URL (they take turns)."""
        server = self.server
        if not server.running and server.listener is None:
            return
        if server.lame_duck or not remote.urls:
            return
        url = remote.urls[remote.next_url % len(remote.urls)]
        remote.next_url += 1
        server.log.debug("Trying to connect as leafnode to remote server on %s",
                         go_quote(_host_port(url.host, url.port).encode()))
        dial_tcp(server, url.host, url.port, lambda sock: self.create_leaf(sock, remote, url),
                 lambda why: self.dial_failed(remote, url, why))

    def dial_failed(self, remote: "RemoteLeafOptions", url: LeafURL, why: str):
        """Log (the first failure, then every ROUTE_ERROR_REPORTS-th) and
        try again after the reconnect delay."""
        remote.attempts += 1
        where = _host_port(url.host, url.port)
        text = "Error trying to connect as leafnode to remote server %s (attempt %d): " \
               "dial tcp %s: connect: %s" % (go_quote(where.encode()), remote.attempts, where,
                                             why.lower())
        # Go reports every failure once the remote has been up, else the
        # first and every ROUTE_ERROR_REPORTS-th.
        if remote.was_connected or remote.attempts == 1 or \
                remote.attempts % ROUTE_ERROR_REPORTS == 0:
            self.server.log.error("%s", text)
        else:
            self.server.log.debug("%s", text)
        self.redial_later(remote, jitter=True)

    def redial_later(self, remote: "RemoteLeafOptions", jitter: bool = False):
        """Dial the remote again after the reconnect delay (plus up to as
        much again after a failed dial, as Go 2.15 spreads its retries), or
        the longer wait a loop imposes."""
        server = self.server
        delay = server.options.leafnodes.reconnect
        if jitter:
            delay += random.uniform(0, delay)
        delay = max(delay, remote.delay_until - time.monotonic())
        server.add_timer(delay, lambda: self.redial(remote))

    def redial(self, remote: "RemoteLeafOptions"):
        """Timer callback: dial the remote, unless it is connected again."""
        if self.server.running and not any(c.remote is remote for c in self.conns):
            self.dial(remote)

    # -- connections ------------------------------------------------------------

    def create_leaf(self, sock: socket.socket, remote: "RemoteLeafOptions | None" = None,
                    url: RouteURL | None = None):
        """A leaf connection, accepted (remote None: INFO at once) or dialed
        (wait for the hub's INFO); TLS first when configured."""
        server = self.server
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        server.next_cid += 1
        tls = server.options.leafnodes.tls if remote is None else None
        if remote is not None or tls is not None:     # a dialed leaf may upgrade after INFO
            if self.tls_class is None:
                self.tls_class = with_tls(LeafNode)
            leaf_class = self.tls_class
            if url is not None and url.ws:            # a hub's websocket port (chapter 11)
                if self.ws_class is None:
                    self.ws_class = with_websocket(self.tls_class)
                leaf_class = self.ws_class
            leaf = leaf_class(server, sock, server.next_cid, remote, url)
        else:
            leaf = LeafNode(server, sock, server.next_cid, remote, url)
        try:
            server.selector.register(sock, selectors.EVENT_READ, leaf)
        except (ValueError, OSError) as exc:
            server.log.error("Error registering leafnode connection: %s", exc)
            sock.close()
            return
        self.conns.add(leaf)
        if remote is not None:
            remote.attempts = 0
            remote.was_connected = True
            leaf.account = server.accounts.get(remote.account or GLOBAL_ACCOUNT,
                                               server.global_account)
            leaf.log_prefix = "%s - %s:%d - " % (_host_port(url.host, url.port),
                                                 "lid_ws" if url.ws else "lid", leaf.cid)
            server.log.info("%sLeafnode connection created for account: %s ", leaf.log_prefix,
                            leaf.account.label)
            server.add_timer(LEAF_CONNECT_TIMEOUT * 2, leaf.connect_timeout)
            if url.ws:      # wss://: TLS first, then the upgrade (tls_established)
                leaf.ws = WSSession()
                if url.tls:
                    leaf.start_leaf_tls()
                else:
                    leaf.ws_dial(url.host, url.port)
            leaf.arm_ping_timer()
            leaf.flush()
        else:
            self.welcome(leaf, tls)

    def welcome(self, leaf: LeafNode, tls=None):
        """An accepted leaf's start: a nonce to sign, our INFO (plain, and
        then the handshake, when the leafnodes block has `tls`), the auth
        timer, the log line and the ping timer."""
        server = self.server
        leaf.nonce = new_nonce().encode()
        if tls is not None:         # the plain INFO says tls_required, then the handshake
            if leaf.trace:
                leaf.trace_out("INFO")
            leaf.send_now(self.info(leaf))
            leaf.start_tls(tls.server_context(), tls.timeout)
        else:
            leaf.send_proto(self.info(leaf), "INFO")
        server.add_timer(server.options.leafnodes.auth_timeout or AUTH_TIMEOUT,
                         leaf.connect_timeout)
        server.log.info("%sLeafnode connection created ", leaf.log_prefix)
        leaf.arm_ping_timer()
        leaf.flush()

    def accept_websocket(self, upgraded: "WSConnection"):
        """A leaf upgraded on the websocket port (path /leafnode): a leaf
        connection takes over its socket and its TLS and websocket
        sessions, and starts as an accepted leaf does (Go's createLeafNode
        with a websocket): the INFO, in a frame; no TLS of the leafnodes
        block.  The client the upgrade had made ends unseen."""
        server = self.server
        server.ws_upgrading.discard(upgraded)
        upgraded.closed = True          # (its timers see it so; the socket lives on)
        upgraded.account.client_count -= 1
        if self.tls_class is None:
            self.tls_class = with_tls(LeafNode)
        if self.ws_class is None:
            self.ws_class = with_websocket(self.tls_class)
        server.next_cid += 1
        leaf = self.ws_class(server, upgraded.sock, server.next_cid, None, None)
        leaf.tls, leaf.ws = upgraded.tls, upgraded.ws
        leaf.ws.state = WS_OPEN
        leaf.log_prefix = "%s - lid_ws:%d - " % (leaf.ws_peer_address(), leaf.cid)
        server.selector.modify(leaf.sock, selectors.EVENT_READ, leaf)
        self.conns.add(leaf)
        self.welcome(leaf)

    def register(self, leaf: LeafNode):
        """The handshake is done: the leaf joins its account, hears of the
        account's interest (and our loop detection subject), and its
        subscriptions, when they come, count as ours."""
        leaf.registered = True
        self.by_account.setdefault(leaf.account.name, []).append(leaf)
        leaf.debug("Leafnode registered for account: %s", leaf.account.label)
        for sub in leaf.account.sublist.all_subscriptions():
            if self.tells(leaf, sub):
                leaf.update_smap(sub.subject, sub.queue, self.weight_of(sub))
        leaf.update_smap(self.lds(leaf.account), None, 1)
        leaf.ping_at = time.monotonic()
        leaf.send_proto(PING)
        self.server.system_client.conns_event(leaf.account)

    def remove(self, leaf: LeafNode):
        """A leaf connection closed: forget its interest, tell the others,
        and dial again if we dialed it."""
        self.conns.discard(leaf)
        if leaf.expiry_entry is not None:
            self.server.cancel_timer(leaf.expiry_entry)
        leaf.registered = False
        peers = self.by_account.get(leaf.account.name, [])
        if leaf in peers:
            peers.remove(leaf)
            self.server.system_client.conns_event(leaf.account)
        for key in list(leaf.remote_subs):
            leaf.process_leaf_unsub(key)
        if leaf.remote is not None and self.server.running:
            self.redial_later(leaf.remote)

    def adopt_accounts(self):
        """A reload made new accounts: each leaf connection moves to the new
        account of its account's name, with the peer's subscriptions; one
        whose account is gone is closed."""
        for leaf in list(self.conns):
            account = self.server.accounts.get(leaf.account.name)
            if account is None:
                leaf.close(CLIENT_CLOSED)
                continue
            leaf.account = account
            for sub in leaf.remote_subs.values():
                account.sublist.insert(sub)
                if not leaf.is_spoke:       # counted for the routes, as a client's is
                    key = (sub.subject, sub.queue)
                    account.interest[key] = account.interest.get(key, 0) + self.weight_of(sub)

    def lds(self, account: Account) -> bytes:
        """Our loop detection subject in `account` ($LDS.<random>)."""
        subject = self.lds_subjects.get(account.name)
        if subject is None:
            subject = self.lds_subjects[account.name] = LEAF_LDS_PREFIX + _random_token(22)
        return subject

    # -- interest ----------------------------------------------------------------

    @staticmethod
    def weight_of(sub: Subscription) -> int:
        """What `sub` adds to its group's weight: a leaf's queue member
        counts as the weight its LS+ gave, any other as one."""
        client = sub.client
        if sub.queue is not None and client.kind == "Leaf":
            return client.weights.get(sub.sid, 1)
        return 1

    @staticmethod
    def tells(leaf: LeafNode, sub: Subscription) -> bool:
        """Does `leaf` hear of `sub`?  Not its own; a hub's leaf hears of
        everything else; a spoke's hub only of our clients and of leaves
        that dial us (Go's initLeafNodeSmapAndSendSubs and updateSmap);
        never of what deny_imports keeps out, nor of a loop detection
        subject but its own."""
        client = sub.client
        if client is leaf:
            return False
        if sub.subject.startswith(LEAF_LDS_PREFIX):
            return client.kind == "Leaf" and (not client.remote_cluster or
                                              client.remote_cluster != leaf.remote_cluster)
        if leaf.is_spoke and not (client.kind == "Client" or
                                  (client.kind == "Leaf" and not client.is_spoke)):
            return False
        if client.kind == "Leaf" and client.remote_cluster and \
                client.remote_cluster == leaf.remote_cluster:
            return False
        if leaf.perms is not None and is_valid_literal_subject(sub.subject) and \
                not leaf.perms.can_publish(sub.subject):
            return False        # what the leaf's user may not publish: no use telling it
        return leaf.deny_imports is None or not leaf.deny_imports.has_interest(sub.subject)

    def interest_changed(self, account: Account, sub: Subscription, delta: int):
        """Interest in `account` came or went (a client's, a route's, a
        leaf's; `delta` 0: a queue weight changed): the leaf connections
        that should hear of it do."""
        peers = self.by_account.get(account.name)
        if not peers:
            return
        for leaf in peers:
            if self.tells(leaf, sub):
                leaf.update_smap(sub.subject, sub.queue, delta)

    # -- messages from leaf nodes -------------------------------------------------

    def deliver(self, source: LeafNode, msg: Message, queues: list | None):
        """A message from a leaf connection (Go's processInboundLeafMsg and
        processMsgResults): to our clients' subscriptions; to routes only
        from a hub's leaf (a spoke's cluster peers have their own link);
        to other leaf connections with interest, never back to `source`.
        Queue groups only when the LMSG names them, local members first."""
        account = source.account
        route = account.take_response(msg.subject)
        if route is not None:       # a response to a service request made here
            deliver_result(route.importer.sublist.match(route.reply),
                           msg.routed(route.reply, msg.reply), None, route.importer)
            return
        result = account.sublist.match(msg.subject)
        targets = {}            # route or leaf -> [a plain subscription, [queue subs]]
        for sub in result.psubs:
            c = sub.client
            if c.kind == "Client":
                deliver_to(sub, msg, None)
            elif c is not source and (c.kind == "Leaf" or not source.is_spoke):
                targets.setdefault(c, [sub, []])
        for group in result.qsubs if queues else ():
            if group[0].queue not in queues:
                continue
            start = int(random.random() * len(group))
            fallback = None
            for k in range(len(group)):
                sub = group[(start + k) % len(group)]
                c = sub.client
                if c.kind == "Client":
                    if deliver_to(sub, msg, None):
                        break
                elif c.kind == "Router" and not source.is_spoke:
                    targets.setdefault(c, [None, []])[1].append(sub)
                    break
                elif c.kind == "Leaf" and c is not source and fallback is None:
                    fallback = sub
            else:
                if fallback is not None:
                    targets.setdefault(fallback.client, [None, []])[1].append(fallback)
        for peer, (plain, queue_subs) in targets.items():
            peer.send_msg(account, msg, queue_subs, plain)

    # -- monitoring ---------------------------------------------------------------

    def leafz(self, subs: bool = False, account: str = "") -> list:
        """/leafz's `leafs`: the registered leaf connections (of `account`
        if given), with their subscriptions' subjects if `subs`."""
        out = []
        for name, peers in self.by_account.items():
            if account and name != account:
                continue
            for leaf in peers:
                info = leaf.conn_info()
                if subs and leaf.remote_subs:
                    info["subscriptions_list"] = sorted(
                        s.subject.decode("utf-8", "replace") for s in leaf.remote_subs.values())
                out.append(info)
        return out

    def count(self) -> int:
        """/varz's `leafnodes`."""
        return sum(len(peers) for peers in self.by_account.values())

    def varz(self) -> dict:
        """/varz's `leaf` object (empty without a leafnodes block, as Go's)."""
        leaf = self.server.options.leafnodes
        if leaf is None:
            return {}
        out = {}
        if leaf.port:
            out = {"host": self.host or leaf.host, "port": self.port,
                   "auth_timeout": go_number(leaf.auth_timeout or AUTH_TIMEOUT),
                   "tls_timeout": go_number(leaf.tls.timeout if leaf.tls else TLS_TIMEOUT)}
        if leaf.tls is not None:
            out["tls_required"] = True
        if leaf.remotes:
            out["remotes"] = []
            for remote in leaf.remotes:
                entry = {"local_account": remote.account or GLOBAL_ACCOUNT,
                         "urls": [_host_port(u.host, u.port) for u in remote.urls]}
                if remote.deny_exports or remote.deny_imports:
                    entry["deny"] = {"exports": list(remote.deny_exports),
                                     "imports": list(remote.deny_imports)}
                out["remotes"].append(entry)
        return out


# ============================================================================
# 14. Monitor
# ============================================================================
#
# The HTTP monitoring endpoints, with the JSON of nats-server 2.x (key
# names, nesting and value types), so that Prometheus' nats exporter,
# nats-top and curl scripts read them unchanged:
#
#     /varz  /connz  /routez  /subsz (/subscriptionsz)  /healthz
#     /accountz  /accstatz  /leafz  /gatewayz  /jsz      and / (an index)
#
# Requests are served by `http.server.ThreadingHTTPServer` threads, which
# never touch a socket, a connection or the sublist: each asks the loop
# thread for a snapshot (`Server.call_in_loop`), which copies plain values
# between two loop turns, and builds its JSON from that copy.  A storm of
# requests therefore costs the loop only the copying, and no more than
# MONITOR_SLICE of it per turn: snapshots that grow with the server (every
# connection, every subscription) are taken a slice per turn.  The HTTP side
# is bounded too: a connection must send its request within
# MONITOR_READ_TIMEOUT, at most MONITOR_MAX_CONNECTIONS are served at once
# (more are closed at once), and at most MONITOR_HEAVY_REQUESTS build a
# large page at a time, since building JSON in Python holds the GIL the loop
# needs.  The same endpoints answer over NATS, in the system account
# (`$SYS.REQ.SERVER.PING.VARZ` ...: SystemClient, at the chapter's end).
# Go twins: server/monitor.go, server/events.go.

# Longest HTTP request line the monitor reads (Go's default header limit).
MONITOR_MAX_REQUEST_LINE = 1024 * 1024

# Default page of /connz and /subsz (Go's DefaultConnListSize; like Go, no
# largest: a large page costs time, not fairness).
DEFAULT_MONITOR_LIMIT = 1024

# Seconds of loop time a stepped snapshot may take per loop turn.
MONITOR_SLICE = 0.002

# Seconds a monitor connection may take to send a request, or sit idle
# between requests (Go's ReadHeaderTimeout).
MONITOR_READ_TIMEOUT = 5.0

# Monitor connections served at once (one thread each); beyond it new ones
# are closed as they arrive.
MONITOR_MAX_CONNECTIONS = 256

# Requests building /connz, /subsz or /routez pages at once; the others wait.
MONITOR_HEAVY_REQUESTS = 2

# Seconds a snapshot may wait for the loop before the request gets 503.
MONITOR_SNAPSHOT_TIMEOUT = 30.0

# /connz sort keys: name -> (key function, largest first?).  Go's SortOpt.
CONNZ_SORTS = {
    "cid": (lambda c: c["cid"], False),
    "start": (lambda c: c["_start"], False),
    "subs": (lambda c: c["subscriptions"], True),
    "pending": (lambda c: c["pending_bytes"], True),
    "msgs_to": (lambda c: c["out_msgs"], True),
    "msgs_from": (lambda c: c["in_msgs"], True),
    "bytes_to": (lambda c: c["out_bytes"], True),
    "bytes_from": (lambda c: c["in_bytes"], True),
    "last": (lambda c: c["_last"], True),
    "idle": (lambda c: c["_idle"], True),
    "uptime": (lambda c: c["_uptime"], False),
    "rtt": (lambda c: c["_rtt"], True),
    "stop": (lambda c: c.get("_stop", 0), True),
    "reason": (lambda c: c.get("reason", ""), False),
}

# /varz fields that only grow (Prometheus counters); the rest are gauges.
_VARZ_COUNTERS = frozenset(("in_msgs", "out_msgs", "in_bytes", "out_bytes",
                            "total_connections", "slow_consumers"))


class MetricsText:
    """Prometheus' text exposition format 0.0.4: per metric a HELP line, a
    TYPE line and its samples, label values escaped as the format says."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.lines: list = []

    def add(self, name: str, kind: str, help_text: str, samples: list):
        """One metric family: `samples` are (labels dict, number); none, none."""
        if not samples:
            return
        name = "%s_%s" % (self.prefix, name)
        self.lines.append("# HELP %s %s" % (name, help_text.replace("\\", "\\\\")
                                             .replace("\n", "\\n")))
        self.lines.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            text = ",".join('%s="%s"' % (k, str(v).replace("\\", "\\\\")
                                         .replace('"', '\\"').replace("\n", "\\n"))
                            for k, v in labels.items())
            self.lines.append("%s{%s} %s" % (name, text, repr(value)))

    def text(self) -> bytes:
        """The exposition: one line per sample, newline-terminated, UTF-8."""
        return ("\n".join(self.lines) + "\n").encode()


# The dashboard `/` serves a browser: one self-contained page (no CDN, no
# build step) that polls the JSON endpoints every second and draws what it
# sees.  Ids and data-value attributes name each number shown, so a test
# (tests/test_dashboard.py, in headless Chromium) can read them back.
DASHBOARD_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gnatsd.py</title>
<style>
:root { --bg: #f7f7f9; --card: #fff; --fg: #1d1d24; --dim: #6b6b78; --line: #e2e2ea;
        --in: #2f7de1; --out: #d9822b; --ok: #2e9d5b; --bad: #d64545; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #15161b; --card: #1e2027; --fg: #e8e8ee; --dim: #9a9aa8; --line: #30323c;
          --in: #5aa2ff; --out: #ffa552; --ok: #4fcf83; --bad: #ff6b6b; }
}
* { box-sizing: border-box; }
body { margin: 0; padding: 16px; background: var(--bg); color: var(--fg);
       font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 16px;
         margin-bottom: 12px; }
h1 { font-size: 20px; margin: 0; }
h2 { font-size: 13px; font-weight: 600; color: var(--dim); text-transform: uppercase;
     letter-spacing: .04em; margin: 0 0 8px; }
.dim { color: var(--dim); }
#status.ok { color: var(--ok); } #status.bad { color: var(--bad); }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
        padding: 10px 12px; }
.num { font-size: 22px; font-variant-numeric: tabular-nums; }
.wide { grid-column: 1 / -1; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 10px;
          margin: 10px 0; }
svg { width: 100%; height: 70px; display: block; }
polyline { fill: none; stroke-width: 1.6; vector-effect: non-scaling-stroke; }
.in { stroke: var(--in); color: var(--in); } .out { stroke: var(--out); color: var(--out); }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: right; padding: 3px 6px; border-bottom: 1px solid var(--line);
         white-space: nowrap; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
.scroll { overflow-x: auto; }
section { margin-top: 10px; }
#cluster_name { text-transform: none; letter-spacing: 0; }
footer { margin-top: 16px; font-size: 13px; }
footer a { color: var(--in); margin-right: 10px; }
</style>
</head>
<body>
<header>
  <h1 id="server_name">gnatsd.py</h1>
  <span class="dim">v<span id="version"></span> &middot; <span id="address"></span>
    &middot; up <span id="uptime"></span> &middot; <span id="server_id"></span></span>
  <span id="status" class="dim">connecting...</span>
</header>
<div class="grid">
  <div class="card"><h2>Connections</h2><div class="num" id="connections">-</div>
    <div class="dim"><span id="total_connections">-</span> since start</div></div>
  <div class="card"><h2>Subscriptions</h2><div class="num" id="subscriptions">-</div></div>
  <div class="card"><h2>Messages in</h2><div class="num in" id="in_msgs_rate">-</div>
    <div class="dim"><span id="in_msgs">-</span> total</div></div>
  <div class="card"><h2>Messages out</h2><div class="num out" id="out_msgs_rate">-</div>
    <div class="dim"><span id="out_msgs">-</span> total</div></div>
  <div class="card"><h2>Bytes in</h2><div class="num in" id="in_bytes_rate">-</div>
    <div class="dim"><span id="in_bytes">-</span> total</div></div>
  <div class="card"><h2>Bytes out</h2><div class="num out" id="out_bytes_rate">-</div>
    <div class="dim"><span id="out_bytes">-</span> total</div></div>
  <div class="card"><h2>Slow consumers</h2><div class="num" id="slow_consumers">-</div></div>
  <div class="card"><h2>Routes</h2><div class="num" id="routes">-</div>
    <div class="dim">leaf nodes <span id="leafnodes">-</span></div></div>
  <div class="card"><h2>Memory</h2><div class="num" id="mem">-</div>
    <div class="dim">CPU <span id="cpu">-</span></div></div>
</div>
<div class="charts" id="charts" data-samples="0">
  <div class="card"><h2>Messages / s <span class="in">in</span> <span class="out">out</span></h2>
    <svg id="chart_msgs" viewBox="0 0 300 70" preserveAspectRatio="none"></svg></div>
  <div class="card"><h2>Bytes / s <span class="in">in</span> <span class="out">out</span></h2>
    <svg id="chart_bytes" viewBox="0 0 300 70" preserveAspectRatio="none"></svg></div>
  <div class="card"><h2>Connections</h2>
    <svg id="chart_conns" viewBox="0 0 300 70" preserveAspectRatio="none"></svg></div>
</div>
<section class="card scroll"><h2>Top connections by messages</h2>
  <table id="top_msgs"><thead><tr><th>cid</th><th>name</th><th>address</th><th>msgs in</th>
  <th>msgs out</th><th>bytes in</th><th>bytes out</th><th>pending</th><th>subs</th></tr></thead>
  <tbody></tbody></table></section>
<section class="card scroll"><h2>Top connections by pending bytes</h2>
  <table id="top_pending"><thead><tr><th>cid</th><th>name</th><th>address</th><th>msgs in</th>
  <th>msgs out</th><th>bytes in</th><th>bytes out</th><th>pending</th><th>subs</th></tr></thead>
  <tbody></tbody></table></section>
<section class="card scroll"><h2>Cluster <span id="cluster_name" class="dim"></span></h2>
  <table id="route_table"><thead><tr><th>node</th><th>address</th><th>msgs in</th><th>msgs out</th>
  <th>bytes in</th><th>bytes out</th><th>pending</th><th>subs</th></tr></thead><tbody></tbody>
  </table></section>
<section class="card scroll"><h2>Leaf nodes</h2>
  <table id="leaf_table"><thead><tr><th>name</th><th>address</th><th>msgs in</th><th>msgs out</th>
  </tr></thead><tbody></tbody></table></section>
<footer class="dim">JSON: __LINKS__</footer>
<script>
"use strict";
const BASE = __BASE__;
const KEEP = 60;
const $ = (id) => document.getElementById(id);
const hist = { inm: [], outm: [], inb: [], outb: [], conns: [] };
let last = null;

function unit(n, step, names) {
  let i = 0;
  while (Math.abs(n) >= step && i < names.length - 1) { n /= step; i++; }
  return (i ? n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0) : String(Math.round(n))) + names[i];
}
const count = (n) => unit(n, 1000, ["", "K", "M", "G", "T"]);
const bytes = (n) => unit(n, 1024, [" B", " KiB", " MiB", " GiB", " TiB"]);

function show(id, text, value) {
  const el = $(id);
  el.textContent = text;
  if (value !== undefined) el.dataset.value = value;
}

async function get(path) {
  const r = await fetch(BASE + "/" + path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function chart(id, series, classes) {
  const svg = $(id);
  const top = Math.max(1, ...series.flat());
  svg.replaceChildren(...series.map((values, k) => {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("class", classes[k]);
    const step = 300 / Math.max(values.length - 1, 1);      // the last KEEP s, full width
    line.setAttribute("points", values.map((v, i) =>
      (i * step).toFixed(1) + "," + (68 - 66 * v / top).toFixed(1)).join(" "));
    return line;
  }));
  svg.dataset.max = top;
}

function rows(id, items, cells) {
  const body = $(id).tBodies[0];
  body.replaceChildren(...items.map((item) => {
    const tr = document.createElement("tr");
    for (const text of cells(item)) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  }));
}

const connCells = (c) => [c.cid, c.name || "", c.ip + ":" + c.port, count(c.in_msgs),
  count(c.out_msgs), bytes(c.in_bytes), bytes(c.out_bytes), bytes(c.pending_bytes),
  c.subscriptions];

function push(series, value) {
  series.push(value);
  if (series.length > KEEP) series.shift();
}

async function tick() {
  try {
    const v = await get("varz");
    show("server_name", v.server_name);
    show("server_id", v.server_id);
    show("version", v.version);
    show("address", v.host + ":" + v.port);
    show("uptime", v.uptime);
    for (const key of ["connections", "total_connections", "subscriptions", "in_msgs",
                       "out_msgs", "slow_consumers", "routes", "leafnodes"]) {
      show(key, count(v[key]), v[key]);
    }
    show("in_bytes", bytes(v.in_bytes), v.in_bytes);
    show("out_bytes", bytes(v.out_bytes), v.out_bytes);
    show("mem", bytes(v.mem), v.mem);
    show("cpu", v.cpu.toFixed(1) + " %", v.cpu);
    const now = performance.now() / 1000;
    if (last) {
      const dt = Math.max(now - last.t, 0.001);
      const rate = (key) => Math.max(0, (v[key] - last[key]) / dt);
      push(hist.inm, rate("in_msgs")); push(hist.outm, rate("out_msgs"));
      push(hist.inb, rate("in_bytes")); push(hist.outb, rate("out_bytes"));
      push(hist.conns, v.connections);
      show("in_msgs_rate", count(hist.inm.at(-1)) + "/s", hist.inm.at(-1));
      show("out_msgs_rate", count(hist.outm.at(-1)) + "/s", hist.outm.at(-1));
      show("in_bytes_rate", bytes(hist.inb.at(-1)) + "/s", hist.inb.at(-1));
      show("out_bytes_rate", bytes(hist.outb.at(-1)) + "/s", hist.outb.at(-1));
      chart("chart_msgs", [hist.inm, hist.outm], ["in", "out"]);
      chart("chart_bytes", [hist.inb, hist.outb], ["in", "out"]);
      chart("chart_conns", [hist.conns], ["in"]);
      $("charts").dataset.samples = hist.inm.length;
    }
    last = { t: now, in_msgs: v.in_msgs, out_msgs: v.out_msgs, in_bytes: v.in_bytes,
             out_bytes: v.out_bytes };
    const [byMsgs, byPending, rz, lz] = await Promise.all([
      get("connz?sort=msgs_to&limit=10"), get("connz?sort=pending&limit=5"),
      get("routez"), get("leafz")]);
    rows("top_msgs", byMsgs.connections, connCells);
    rows("top_pending", byPending.connections, connCells);
    show("cluster_name", (v.cluster && v.cluster.name) || "(no cluster)");
    rows("route_table", [{ remote_name: v.server_name + " (this node)", ip: v.host, port: v.port,
                           in_msgs: "", out_msgs: "", in_bytes: "", out_bytes: "",
                           pending_size: "", subscriptions: "" }].concat(rz.routes), (r) =>
      [r.remote_name || r.remote_id, r.ip + ":" + r.port,
       r.in_msgs === "" ? "" : count(r.in_msgs), r.out_msgs === "" ? "" : count(r.out_msgs),
       r.in_bytes === "" ? "" : bytes(r.in_bytes), r.out_bytes === "" ? "" : bytes(r.out_bytes),
       r.pending_size === "" ? "" : bytes(r.pending_size), r.subscriptions]);
    rows("leaf_table", lz.leafs || [], (l) =>
      [l.name || l.account || "", l.ip + ":" + l.port, count(l.in_msgs), count(l.out_msgs)]);
    show("status", "live");
    $("status").className = "ok";
  } catch (err) {
    show("status", "offline (" + err.message + ")");
    $("status").className = "bad";
  }
}
tick();
setInterval(tick, 1000);
</script>
</body>
</html>
"""


# The index page: one link per endpoint, as Go's root handler lists them.
_MONITOR_INDEX = (("varz", "General"), ("jsz", "JetStream"), ("connz", "Connections"),
                  ("accountz", "Accounts"), ("accstatz", "Account Stats"),
                  ("subsz", "Subscriptions"), ("routez", "Routes"), ("leafz", "LeafNodes"),
                  ("gatewayz", "Gateways"), ("healthz", "Health Probe"))


class MonitorError(NatsError):
    """A bad monitoring request: HTTP status and Go's plain-text message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def rfc3339(ts: float) -> str:
    """A Unix time as Go's RFC3339Nano in UTC (trailing zeros trimmed)."""
    whole = int(ts)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    frac = ("%.6f" % (ts - whole))[2:].rstrip("0")
    return text + ("." + frac if frac else "") + "Z"


def go_uptime(seconds: float) -> str:
    """Go's myUptime: 1y2d3h4m5s, leading zero units left out."""
    secs = int(seconds)
    mins, hours, days = secs // 60, secs // 3600, secs // 86400
    years = days // 365
    if years:
        return "%dy%dd%dh%dm%ds" % (years, days % 365, hours % 24, mins % 60, secs % 60)
    if days:
        return "%dd%dh%dm%ds" % (days, hours % 24, mins % 60, secs % 60)
    if hours:
        return "%dh%dm%ds" % (hours, mins % 60, secs % 60)
    if mins:
        return "%dm%ds" % (mins, secs % 60)
    return "%ds" % secs


def go_number(value: float):
    """A float as Go's JSON writes it: integral values without a fraction."""
    return int(value) if float(value).is_integer() else value


def _proc_rss() -> int:
    """Resident memory in bytes (VmRSS), or 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _int_param(query: dict, name: str, default: int) -> int:
    text = query.get(name, "")
    if text == "":
        return default
    if re.fullmatch(r"[-+]?[0-9]+", text):
        if -(1 << 63) <= int(text) < (1 << 63):
            return int(text)
        raise MonitorError(400, "Error decoding int for '%s': strconv.Atoi: parsing \"%s\": "
                                "value out of range" % (name, text))
    raise MonitorError(400, "Error decoding int for '%s': strconv.Atoi: parsing \"%s\": "
                            "invalid syntax" % (name, text))


def _uint_param(query: dict, name: str) -> int:
    text = query.get(name, "")
    if text == "":
        return 0
    if re.fullmatch(r"[0-9]+", text):
        if int(text) < (1 << 64):
            return int(text)
        raise MonitorError(400, "Error decoding uint64 for '%s': strconv.ParseUint: parsing "
                                "\"%s\": value out of range" % (name, text))
    raise MonitorError(400, "Error decoding uint64 for '%s': strconv.ParseUint: parsing \"%s\": "
                            "invalid syntax" % (name, text))


def _bool_param(query: dict, name: str) -> bool:
    text = query.get(name, "")
    if text == "":
        return False
    try:
        return _parse_bool(text)
    except argparse.ArgumentTypeError:
        raise MonitorError(400, "Error decoding boolean for '%s': strconv.ParseBool: parsing "
                                "\"%s\": invalid syntax" % (name, text))


def _subs_param(query: dict) -> str:
    """subs=1|true -> "list", subs=detail -> "detail", else ""."""
    if query.get("subs", "") == "detail":
        return "detail"
    return "list" if _bool_param(query, "subs") else ""


def client_conn_info(client: Client, now: float, subs: str, auth: bool) -> dict:
    """A client as a /connz entry (Go's ConnInfo).  Keys starting with `_`
    carry raw values for sorting and are removed before output."""
    info = {
        "cid": client.cid, "kind": "Client",
        "type": "websocket" if client.ws is not None else "nats",
        "ip": client.host, "port": client.port,
        "start": rfc3339(client.start), "last_activity": rfc3339(client.last_activity),
        "rtt": format_duration(client.rtt), "uptime": go_uptime(now - client.start),
        "idle": go_uptime(now - client.last_activity),
        "pending_bytes": client.pending_bytes(), "in_msgs": client.in_msgs,
        "out_msgs": client.out_msgs, "in_bytes": client.in_bytes, "out_bytes": client.out_bytes,
        "subscriptions": len(client.subs),
    }
    for key in ("name", "lang", "version"):
        if getattr(client, key):
            info[key] = getattr(client, key)
    if client.tls is not None and client.tls.state == TLS_OPEN:
        info.update(client.tls.conn_info())
    if auth:
        if client.user:
            info["authorized_user"] = client.user
        if client.account is not client.server.global_account:
            info["account"] = client.account.name
        info["name_tag"] = client.account.name
    if subs == "list" and client.subs:
        info["subscriptions_list"] = [s.subject.decode("utf-8", "replace")
                                      for s in client.subs.values()]
    if subs == "detail" and client.subs:
        info["subscriptions_list_detail"] = [sub_detail(s) for s in client.subs.values()]
    info.update(_start=client.start, _last=client.last_activity, _idle=now - client.last_activity,
                _uptime=now - client.start, _rtt=client.rtt, _account=client.account.name)
    return info


class Monitor:
    """The HTTP monitoring listener and the JSON of each endpoint.

    Handlers run on the HTTP server's threads; every `*_snapshot` method
    runs on the loop thread (through Server.call_in_loop) and returns plain
    data.
    """

    def __init__(self, server: "Server"):
        self.server = server
        self.httpd = None
        self.thread = None
        self.base_path = "/" + server.options.http_base_path.strip("/")
        if self.base_path == "/":
            self.base_path = ""
        self.req_stats: dict = {}
        self.stats_lock = threading.Lock()
        self.heavy = threading.BoundedSemaphore(MONITOR_HEAVY_REQUESTS)
        self.cpu_mark = (time.monotonic(), _cpu_seconds())
        self.cpu = 0.0
        self.routes = {
            "/": self.index, "/varz": self.varz, "/connz": self.connz, "/routez": self.routez,
            "/subsz": self.subsz, "/subscriptionsz": self.subsz, "/healthz": self.healthz,
            "/accountz": self.accountz, "/accstatz": self.accstatz, "/leafz": self.leafz,
            "/gatewayz": self.gatewayz, "/jsz": self.jsz, "/metrics": self.metrics,
        }

    def start(self):
        """Bind and serve on daemon threads; logs where, as Go does."""
        import http.server  # here, so a server without monitoring never loads it
        opts = self.server.options
        if opts.http_port and opts.https_port:
            raise ConfigError("Can't start monitoring: can't specify both HTTP (%d) and HTTPs "
                              "(%d) ports" % (opts.http_port, opts.https_port))
        secure = not opts.http_port
        if secure and not opts.tls:
            raise ConfigError("Can't start monitoring: TLS cert and key required for HTTPS")
        configured = opts.https_port if secure else opts.http_port
        host = opts.http_host or opts.host
        port = 0 if configured in (RANDOM_PORT, 0) else configured
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        handler = type("Handler", (_make_monitor_handler(),), {"monitor": self})
        server_class = type("HTTPServer", (_make_monitor_server_class(),),
                            {"address_family": family})
        self.httpd = server_class((host, port), handler)
        self.port = self.httpd.server_address[1]
        if secure:
            # Go's HTTPS monitor uses the clients' certificate but never asks
            # for one of the browser.  The handshake runs on the request's
            # own thread (on its first read), so a stalled peer holds no one up.
            context = opts.tls.server_context(verify=False)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True,
                                                    do_handshake_on_connect=False)
        self.server.log.info("Starting %s monitor on %s", "https" if secure else "http",
                             _host_port(host, self.port))
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="gnatsd-monitor",
                                       daemon=True)
        self.thread.start()

    def stop(self):
        """Stop serving HTTP and close the socket (at shutdown).  shutdown()
        raises serve_forever's flag, which its select would notice only
        within poll_interval (0.5 s, a long stop for a test's server):
        connecting to our own port wakes it at once."""
        if self.httpd is None:
            return
        stopper = threading.Thread(target=self.httpd.shutdown, name="gnatsd-monitor-stop")
        stopper.start()
        host = _advertise_host(self.httpd.server_address[0])
        host = "::1" if host == "::" else host
        while stopper.is_alive():
            try:
                socket.create_connection((host, self.port), timeout=0.5).close()
            except OSError:
                pass
            stopper.join(0.01)
        self.httpd.server_close()

    # -- dispatch (HTTP threads) --------------------------------------------

    def handle(self, raw_path: str, accept: str = "") -> tuple:
        """(status, content type, body bytes) for one GET; `accept` is the
        request's Accept header (a browser asking for HTML at `/` gets the
        dashboard)."""
        from urllib.parse import parse_qs, urlsplit
        parts = urlsplit(raw_path)
        path = parts.path
        if self.base_path:
            if not path.startswith(self.base_path):
                return 404, "text/plain; charset=utf-8", b"404 page not found\n"
            path = path[len(self.base_path):] or "/"
        endpoint = self.routes.get(path)
        if endpoint is None:
            return 404, "text/plain; charset=utf-8", b"404 page not found\n"
        with self.stats_lock:
            self.req_stats[path] = self.req_stats.get(path, 0) + 1
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if path == "/" and "text/html" in accept:
            return self.respond(self.dashboard, query)
        if path in ("/connz", "/subsz", "/subscriptionsz", "/routez", "/metrics"):
            with self.heavy:
                return self.respond(endpoint, query)
        return self.respond(endpoint, query)

    def respond(self, endpoint, query: dict) -> tuple:
        """(status, content type, body) of one endpoint's answer: a
        MonitorError gives its status and text, bytes are HTML, anything
        else is JSON."""
        try:
            result = endpoint(query)
        except MonitorError as exc:
            return exc.status, "text/plain; charset=utf-8", str(exc).encode()
        if isinstance(result, bytes):
            return 200, "text/html; charset=utf-8", result
        if isinstance(result, tuple):
            return (200,) + result          # (content type, body)
        if endpoint == self.healthz:
            return 200, "application/json", json.dumps(result, separators=(",", ":")).encode()
        return 200, "application/json", json.dumps(result, indent=2, ensure_ascii=False).encode()

    def snapshot(self, fn, timeout: float = 5.0):
        """`fn()` run on the loop thread (Server.call_in_loop); a loop that
        does not answer within `timeout` s is a 503 "server busy"."""
        try:
            return self.server.call_in_loop(fn, timeout)
        except TimeoutError:
            raise MonitorError(503, "server busy")

    # -- endpoints (HTTP threads) -------------------------------------------

    def index(self, query: dict) -> bytes:
        """/: an HTML page linking each endpoint."""
        links = "".join('<a href=%s/%s>%s<span class="endpoint"> /%s</span></a>\n'
                        % (self.base_path or ".", name, title, name)
                        for name, title in _MONITOR_INDEX)
        return ("<html lang=\"en\">\n<head><title>gnatsd.py monitor</title></head>\n<body>\n"
                "<a href=https://github.com/nats-io/nats-server/tree/v%s class='version'>v%s"
                "</a>\n<br/>\n%s</body>\n</html>\n" % (VERSION, VERSION, links)).encode()

    def dashboard(self, query: dict) -> bytes:
        """/ for a browser (its Accept names HTML): DASHBOARD_HTML, which
        polls the JSON pages under this monitor's base path."""
        base = self.base_path
        links = " ".join('<a href="%s/%s">/%s</a>' % (base, name, name)
                         for name, _title in _MONITOR_INDEX + (("metrics", "Metrics"),))
        return (DASHBOARD_HTML.replace("__BASE__", json.dumps(base))
                .replace("__LINKS__", links).encode())

    def varz(self, query: dict) -> dict:
        """/varz (Go's Varz): options, and counters from a loop snapshot."""
        snap = self.snapshot(lambda: varz_snapshot(self.server))
        now = time.time()
        opts = self.server.options
        server = self.server
        with self.stats_lock:
            req_stats = dict(self.req_stats)
        varz = {
            "server_id": server.server_id,
            "server_name": server.server_name,
            "version": VERSION,
            "proto": PROTO,
            "git_commit": GIT_COMMIT,
            "go": GO_FIELD,
            "host": opts.host,
            "port": server.port,
        }
        if opts.auth_required:
            varz["auth_required"] = True
        if opts.tls:
            varz["tls_required"] = True
            if opts.tls.verify:
                varz["tls_verify"] = True
        for name in ("connect_urls", "ws_connect_urls"):    # (the cluster's, when routed)
            if snap[name]:
                varz[name] = snap[name]
        varz.update({
            "max_connections": opts.max_connections,
            "ping_interval": int(opts.ping_interval * 1e9),
            "ping_max": opts.ping_max,
            "http_host": opts.http_host or opts.host,
            "http_port": opts.http_port,  # as configured (-1 stays -1, as in Go)
            "http_base_path": opts.http_base_path,
            "https_port": opts.https_port,
            "auth_timeout": go_number(opts.auth_timeout),
            "max_control_line": opts.max_control_line,
            "max_payload": opts.max_payload,
            "max_pending": opts.max_pending,
            "cluster": snap["cluster"],
            "gateway": {},
            "leaf": snap["leaf"],
            "mqtt": {},
            "websocket": server.websocket_varz(),
            "jetstream": {},
            "tls_timeout": go_number(opts.tls.timeout if opts.tls else TLS_TIMEOUT),
            "write_deadline": int(opts.write_deadline * 1e9),
            "start": rfc3339(server.start_time),
            "now": rfc3339(now),
            "uptime": go_uptime(now - server.start_time),
            "mem": _proc_rss(),
            "cores": os.cpu_count() or 1,
            "gomaxprocs": os.cpu_count() or 1,
            "cpu": float(self.cpu_percent()),
            "connections": snap["connections"],
            "total_connections": server.total_connections,
            "routes": snap["routes"],
            "remotes": snap["routes"],
            "leafnodes": snap["leafnodes"],
            "in_msgs": snap["in_msgs"],
            "in_bytes": snap["in_bytes"],
            "in_client_msgs": snap["in_msgs"],
            "in_client_bytes": snap["in_bytes"],
            "out_msgs": snap["out_msgs"],
            "out_bytes": snap["out_bytes"],
            "out_client_msgs": snap["out_msgs"],
            "out_client_bytes": snap["out_bytes"],
            "slow_consumers": server.slow_consumers,
            "stale_connections": server.stale_connections,
            "stalled_clients": 0,
            "subscriptions": snap["subscriptions"],
            "http_req_stats": req_stats,
            "config_load_time": rfc3339(server.start_time),
            "config_digest": "",
        })
        if opts.server_tags:
            varz["tags"] = list(opts.server_tags)
        if opts.trusted_operators:
            varz["trusted_operators_jwt"] = list(opts.operator_jwts)
            varz["trusted_operators_claim"] = list(opts.trusted_operators)
        varz.update({
            "system_account": server.system_account.name,
            "slow_consumer_stats": {"clients": server.slow_consumers, "routes": 0,
                                    "gateways": 0, "leafs": 0},
            "stale_connection_stats": {"clients": server.stale_connections, "routes": 0,
                                       "gateways": 0, "leafs": 0},
        })
        return varz

    def cpu_percent(self) -> float:
        """CPU use since the previous /varz (the first: since start), in percent."""
        with self.stats_lock:
            then, used = self.cpu_mark
            now, used_now = time.monotonic(), _cpu_seconds()
            if now - then >= 0.5:
                self.cpu = round(100.0 * (used_now - used) / (now - then), 2)
                self.cpu_mark = (now, used_now)
            return self.cpu

    def connz(self, query: dict) -> dict:
        """/connz (Go's Connz): connections open, closed or both (`state`),
        filtered by `acc` or `cid`, sorted by `sort`, paged by `offset` and
        `limit`; `subs` and `auth` add detail.  Bad parameters are a 400."""
        sort = query.get("sort", "") or "cid"
        if sort not in CONNZ_SORTS:
            raise MonitorError(400, "invalid sorting option: %s" % sort)
        state = (query.get("state", "") or "open").lower()
        if state not in ("open", "closed", "all", "any"):
            raise MonitorError(400, "Error decoding state for %s" % state)
        if sort in ("stop", "reason") and state != "closed":
            raise MonitorError(400, "sort by %s only valid on closed connections" % sort)
        subs = _subs_param(query)
        auth = _bool_param(query, "auth")
        offset = max(0, _int_param(query, "offset", 0))
        limit = _int_param(query, "limit", DEFAULT_MONITOR_LIMIT)
        if limit <= 0:
            limit = DEFAULT_MONITOR_LIMIT
        cid = _uint_param(query, "cid")
        conns = self.snapshot(lambda: connz_snapshot(self.server, state, subs, auth),
                              MONITOR_SNAPSHOT_TIMEOUT)
        account = query.get("acc", "")
        if account:
            conns = [c for c in conns if c["_account"] == account]
        total = len(conns)
        if cid:
            # One connection by id: Go answers a page of one, total unchanged.
            conns = [c for c in conns if c["cid"] == cid]
            offset, limit = 0, 1
        key, largest_first = CONNZ_SORTS[sort]
        conns.sort(key=key, reverse=largest_first)
        page = conns[offset:offset + limit]
        for c in page:
            for k in [k for k in c if k.startswith("_")]:
                del c[k]
        return {
            "server_id": self.server.server_id,
            "now": rfc3339(time.time()),
            "num_connections": len(page),
            "total": total,
            "offset": offset,
            "limit": limit,
            "connections": page,
        }

    def routez(self, query: dict) -> dict:
        """/routez (Go's Routez): the routes, with their subscriptions if `subs`."""
        subs = _subs_param(query)
        routes = self.snapshot(lambda: routez_snapshot(self.server, subs),
                               MONITOR_SNAPSHOT_TIMEOUT)
        return {"server_id": self.server.server_id, "server_name": self.server.server_name,
                "now": rfc3339(time.time()), "num_routes": len(routes), "routes": routes}

    def subsz(self, query: dict) -> dict:
        """/subsz (Go's Subsz): sublist statistics over every account; with
        `subs`, a page of the subscriptions, only those matching the publish
        subject `test` if given."""
        subs = _subs_param(query)
        test = query.get("test", "")
        if test and not is_valid_literal_subject(test.encode()):
            raise MonitorError(400, "invalid test subject, must be valid publish subject: %s" % test)
        offset = max(0, _int_param(query, "offset", 0))
        limit = _int_param(query, "limit", DEFAULT_MONITOR_LIMIT)
        if limit <= 0:
            limit = DEFAULT_MONITOR_LIMIT
        account = query.get("acc", "")
        snap = self.snapshot(lambda: subsz_snapshot(self.server, bool(subs), test, account),
                             MONITOR_SNAPSHOT_TIMEOUT)
        out = {
            "server_id": self.server.server_id,
            "now": rfc3339(time.time()),
            "num_subscriptions": snap["num_subscriptions"],
            "num_cache": snap["num_cache"],
            "num_inserts": snap["num_inserts"],
            "num_removes": snap["num_removes"],
            "num_matches": snap["num_matches"],
            "cache_hit_rate": float(snap["cache_hit_rate"]),
            "max_fanout": snap["max_fanout"],
            "avg_fanout": float(snap["avg_fanout"]),
            "total": len(snap["subs"]),
            "offset": offset,
            "limit": limit,
        }
        if subs and snap["subs"]:
            out["subscriptions_list"] = snap["subs"][offset:offset + limit]
        return out

    def healthz(self, query: dict) -> dict:
        """/healthz: ok once the loop answers (a 503 if it does not)."""
        self.snapshot(lambda: None)  # the loop answers: it is alive
        return {"status": "ok"}

    def accountz(self, query: dict) -> dict:
        """/accountz: the account names and the system account's."""
        names = self.snapshot(lambda: list(self.server.accounts))
        return {"server_id": self.server.server_id, "now": rfc3339(time.time()),
                "system_account": self.server.system_account.name, "accounts": names}

    def accstatz(self, query: dict) -> dict:
        """/accstatz: per-account connections, subscriptions and message
        counts; accounts with no client only with `unused`."""
        snaps = self.snapshot(lambda: account_snapshots(self.server))
        unused = query.get("unused", "").lower() in ("1", "true")
        zero = {"msgs": 0, "bytes": 0}
        stats = []
        for snap in snaps:
            if not snap["conns"] and not snap["leafnodes"] and not unused:
                continue
            stats.append({
                "acc": snap["name"], "name": snap["name"], "conns": snap["conns"],
                "leafnodes": snap["leafnodes"], "total_conns": snap["conns"] + snap["leafnodes"],
                "num_subscriptions": snap["subscriptions"],
                "sent": {"msgs": snap["out_msgs"], "bytes": snap["out_bytes"],
                         "gateways": dict(zero), "routes": dict(zero), "leafs": dict(zero)},
                "received": {"msgs": snap["in_msgs"], "bytes": snap["in_bytes"],
                             "gateways": dict(zero), "routes": dict(zero), "leafs": dict(zero)},
                "slow_consumers": snap["slow_consumers"],
            })
        return {"server_id": self.server.server_id, "now": rfc3339(time.time()),
                "account_statz": stats}

    def metrics(self, query: dict) -> tuple:
        """/metrics: the Prometheus text format (0.0.4), with the names
        prometheus-nats-exporter gives (`<prefix>_varz_in_msgs{server_id=
        "..."}`), from the same snapshots as the JSON pages: /varz's numbers,
        /connz's counts (one gauge per connection and field only with
        `?conns=N`, at most DEFAULT_MONITOR_LIMIT), /routez's per route,
        /subsz's and /healthz's.  Off with `http_metrics: false`."""
        opts = self.server.options
        if not opts.http_metrics:
            raise MonitorError(404, "404 page not found\n")
        conns = min(max(0, _int_param(query, "conns", 0)), DEFAULT_MONITOR_LIMIT)
        server = {"server_id": self.server.server_id}
        out = MetricsText(opts.http_metrics_prefix)
        for key, value in self.varz({}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.add("varz_" + key, "counter" if key in _VARZ_COUNTERS else "gauge",
                        "/varz " + key, [(server, value)])
        connz = self.connz({"limit": str(max(conns, 1)), "sort": "msgs_to"})
        out.add("connz_num_connections", "gauge", "/connz open connections",
                [(server, connz["total"])])
        if conns:
            page = connz["connections"][:conns]
            for key in ("in_msgs", "out_msgs", "in_bytes", "out_bytes", "pending_bytes",
                        "subscriptions"):
                out.add("connz_conn_" + key, "gauge", "/connz connection " + key,
                        [(dict(server, cid=str(c["cid"]), name=c.get("name", ""),
                               ip="%s:%d" % (c["ip"], c["port"])), c[key]) for c in page])
        routez = self.routez({})
        out.add("routez_num_routes", "gauge", "/routez routes", [(server, routez["num_routes"])])
        for key in ("in_msgs", "out_msgs", "in_bytes", "out_bytes", "pending_size",
                    "subscriptions"):
            samples = [(dict(server, rid=str(r["rid"]), remote_id=r["remote_id"],
                             remote_name=r.get("remote_name", "")), r[key])
                       for r in routez["routes"]]
            if samples:
                out.add("routez_" + key, "counter" if key.endswith(("msgs", "bytes"))
                        else "gauge", "/routez route " + key, samples)
        for key, value in self.subsz({}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and key not in ("total", "offset", "limit"):
                out.add("subsz_" + key, "gauge", "/subsz " + key, [(server, value)])
        try:
            healthy = self.healthz({})["status"] == "ok"
        except MonitorError:
            healthy = False
        out.add("healthz_status", "gauge", "/healthz: 1 if ok", [(server, int(healthy))])
        return "text/plain; version=0.0.4; charset=utf-8", out.text()

    def leafz(self, query: dict) -> dict:
        """/leafz (Go's Leafz): the leaf node connections (chapter 13)."""
        subs, account = bool(_subs_param(query)), query.get("acc", "")
        leafs = self.snapshot(lambda: self.server.leafs.leafz(subs, account),
                              MONITOR_SNAPSHOT_TIMEOUT)
        return {"server_id": self.server.server_id, "now": rfc3339(time.time()),
                "leafnodes": len(leafs), "leafs": leafs}

    def gatewayz(self, query: dict) -> dict:
        """/gatewayz: always empty (there are no gateways)."""
        return {"server_id": self.server.server_id, "now": rfc3339(time.time()),
                "outbound_gateways": {}, "inbound_gateways": {}}

    def jsz(self, query: dict) -> dict:
        """/jsz: JetStream, always disabled (Go 2.15's JSInfo, all zero)."""
        return {"memory": 0, "storage": 0, "reserved_memory": 0, "reserved_storage": 0,
                "accounts": 0, "ha_assets": 0, "api": {"level": 0, "total": 0, "errors": 0},
                "server_id": self.server.server_id, "now": rfc3339(time.time()),
                "disabled": True, "config": {"max_memory": 0, "max_storage": 0},
                "streams": 0, "consumers": 0, "messages": 0, "bytes": 0, "total": 0}


# -- snapshots (loop thread) ----------------------------------------------------
#
# Each runs on the loop thread (Monitor.snapshot -> Server.call_in_loop) and
# returns plain data.  Those that grow with the server (a connection or a
# subscription at a time) are generators: call_in_loop takes them a
# MONITOR_SLICE per turn, so one request for 100,000 subscriptions never
# holds the loop.

def sub_detail(sub: Subscription) -> dict:
    """One subscription as /connz?subs=detail and /subsz?subs=1 show it."""
    if sub.client.kind == "Router":
        account = sub.sid.split(b" ", 1)[0].decode("utf-8", "replace")  # "acc subject [queue]"
    else:
        account = sub.client.account.name
    detail = {"account": account, "account_tag": account,
              "subject": sub.subject.decode("utf-8", "replace")}
    if sub.queue is not None:
        detail["qgroup"] = sub.queue.decode("utf-8", "replace")
    detail["sid"] = sub.sid.decode("utf-8", "replace")
    detail["msgs"] = sub.delivered
    if sub.max:
        detail["max"] = sub.max
    detail["cid"] = sub.client.cid
    return detail


def _closed_order(info: dict) -> dict:
    """A closed connection's /connz entry, with stop and reason where Go puts them."""
    ordered = {}
    for key, value in info.items():
        ordered[key] = value
        if key == "last_activity":
            ordered["stop"] = info["stop"]
            ordered["reason"] = info["reason"]
    return ordered


def settle_all(server: "Server"):
    """Make every subscription's and client's counters exact."""
    for account in server.accounts.values():
        account.sublist.settle()

def varz_snapshot(server: "Server") -> dict:
    """What /varz counts, from the loop's state."""
    settle_all(server)
    clients = server.clients.values()
    return {
        "connections": len(server.clients),
        "subscriptions": sum(a.sublist.count for a in server.accounts.values()),
        "in_msgs": server.closed_in_msgs + sum(c.in_msgs for c in clients),
        "in_bytes": server.closed_in_bytes + sum(c.in_bytes for c in clients),
        "out_msgs": server.closed_out_msgs + sum(c.out_msgs for c in clients),
        "out_bytes": server.closed_out_bytes + sum(c.out_bytes for c in clients),
        "routes": len(server.cluster.all_routes()),
        "cluster": server.cluster.varz(),
        "leafnodes": server.leafs.count(),
        "leaf": server.leafs.varz(),
        "connect_urls": list(server.info_template.get("connect_urls", ())),
        "ws_connect_urls": list(server.cluster.ws_urls),
    }

def routez_snapshot(server: "Server", subs: str):
    """/routez's routes (stepped: a route or a subscription at a time)."""
    routes = []
    for route in sorted(server.cluster.all_routes(), key=lambda r: r.cid):
        info = route.conn_info()
        if subs:
            remote = list(route.remote_subs.values())
            listed = info["subscriptions_list_detail" if subs == "detail"
                          else "subscriptions_list"] = []
            for sub in remote:
                listed.append(sub_detail(sub) if subs == "detail"
                              else sub.subject.decode("utf-8", "replace"))
                yield
        routes.append(info)
        yield
    return routes

def account_snapshots(server: "Server") -> list:
    """Per-account counters for /accstatz (what the account's clients did)."""
    settle_all(server)
    snaps = {name: {"name": name, "conns": 0, "subscriptions": account.sublist.count,
                    "in_msgs": 0, "in_bytes": 0, "out_msgs": 0, "out_bytes": 0,
                    "slow_consumers": 0,
                    "leafnodes": len(server.leafs.by_account.get(name, ()))}
             for name, account in server.accounts.items()}
    for client in server.clients.values():
        snap = snaps[client.account.name]
        snap["conns"] += 1
        for key in ("in_msgs", "in_bytes", "out_msgs", "out_bytes"):
            snap[key] += getattr(client, key)
    return list(snaps.values())

def connz_snapshot(server: "Server", state: str, subs: str, auth: bool):
    """/connz's connections, open and closed (stepped: a client at a time)."""
    settle_all(server)
    now = time.time()
    conns = []
    if state in ("open", "all", "any"):
        for client in list(server.clients.values()):
            if not client.closed:
                conns.append(client_conn_info(client, now, subs, auth))
            yield
    if state in ("closed", "all", "any"):
        for info in server.closed_clients:
            info = dict(info)
            if subs != "list":
                info.pop("subscriptions_list", None)
            if subs != "detail":
                info.pop("subscriptions_list_detail", None)
            if not auth:
                for key in ("authorized_user", "account", "name_tag"):
                    info.pop(key, None)
            conns.append(info)
    return conns

def subsz_snapshot(server: "Server", with_subs: bool, test: str, account: str = ""):
    """Sublist statistics summed over every account (or `account`'s only,
    as Go's Subsz); with `with_subs`, every subscription (stepped: one at a
    time)."""
    settle_all(server)
    if account:
        sublists = [server.accounts[account].sublist] if account in server.accounts else []
    else:
        sublists = [a.sublist for a in server.accounts.values()]
    subs = []
    if with_subs:
        for sublist in sublists:
            if test:
                wanted = sublist.match(test.encode())
                chosen = wanted.psubs + [s for g in wanted.qsubs for s in g]
            else:
                chosen = sublist.iter_subscriptions()
            for sub in chosen:
                subs.append(sub_detail(sub))
                yield
    fanouts = [len(r) for sl in sublists for r in sl.cache.values()]
    matches = sum(sl.matches for sl in sublists)
    return {
        "num_subscriptions": sum(sl.count for sl in sublists),
        "num_cache": sum(len(sl.cache) for sl in sublists),
        "num_inserts": sum(sl.inserts for sl in sublists),
        "num_removes": sum(sl.removes for sl in sublists),
        "num_matches": matches,
        "cache_hit_rate": (sum(sl.cache_hits for sl in sublists) / matches) if matches else 0,
        "max_fanout": max(fanouts, default=0),
        "avg_fanout": (sum(fanouts) / len(fanouts)) if fanouts else 0,
        "subs": subs,
    }


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _make_monitor_server_class():
    import http.server

    class MonitorHTTPServer(http.server.ThreadingHTTPServer):
        """A thread per connection, at most MONITOR_MAX_CONNECTIONS of them."""

        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 1024

        def __init__(self, *args, **kw):
            self.slots = threading.BoundedSemaphore(MONITOR_MAX_CONNECTIONS)
            super().__init__(*args, **kw)

        def process_request(self, request, client_address):
            if not self.slots.acquire(blocking=False):
                self.shutdown_request(request)      # full: closed, not queued
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    return MonitorHTTPServer


def _make_monitor_handler():
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        """One monitoring request: GET only, Go's headers, no access log."""

        monitor: Monitor
        timeout = MONITOR_READ_TIMEOUT      # per read: a stalled peer is dropped
        server_version = "gnatsd.py"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            try:
                status, content_type, body = self.monitor.handle(
                    self.path, self.headers.get("Accept", ""))
            except Exception:  # never let one request take the monitor down
                self.monitor.server.log.exception("monitor request %r failed", self.path[:200])
                status, content_type, body = 500, "text/plain; charset=utf-8", b"internal error"
            self.send_response(status)
            if status == 200:
                self.send_header("Access-Control-Allow-Origin", "*")
            elif status == 404:
                self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            self.monitor.server.log.debug("monitor: %s - %s", self.address_string(), fmt % args)

        def send_error(self, code, message=None, explain=None):
            """Errors as Go's net/http writes them: a status line, plain text."""
            body = ("%d %s" % (code, message or self.responses.get(code, ("",))[0])).encode()
            self.request_version = "HTTP/1.1"  # a status line even for garbage requests
            self.close_connection = True
            self.send_response_only(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Connection", "close")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def handle_one_request(self):
            """http.server's, with Go's 1 MB request-line limit (not 64 KiB)."""
            try:
                self.raw_requestline = self.rfile.readline(MONITOR_MAX_REQUEST_LINE + 1)
                if len(self.raw_requestline) > MONITOR_MAX_REQUEST_LINE:
                    self.requestline = self.request_version = self.command = ""
                    self.send_error(431)
                    return
                if not self.raw_requestline:
                    self.close_connection = True
                    return
                if not self.parse_request():
                    return
                method = getattr(self, "do_" + self.command, None)
                if method is None:
                    self.send_error(405)
                    return
                method()
                self.wfile.flush()
            except (socket.timeout, TimeoutError, ConnectionError):
                self.close_connection = True
            except OSError as exc:  # an HTTPS handshake that failed (ssl.SSLError)
                self.monitor.server.log.debug("monitor: %s - %s", self.address_string(), exc)
                self.close_connection = True

    return Handler



# -- message tracing (Nats-Trace-Dest) --
#
# nats-server 2.11's message tracing: a client publishes with the header
# `Nats-Trace-Dest: <subject>` and the server publishes, to that subject in
# the client's account, one event saying what it did with the message: its
# ingress ("in": the publisher) and each egress ("eg": a subscription it
# went to, a route it was forwarded on).  `Nats-Trace-Only: true` asks for
# the event without the delivery.  A message forwarded on a route to a
# peer that traces (route protocol 3) carries its hop id in `Nats-Trace-Hop`
# and the peer sends its own event (its ingress is the route); a peer that
# does not gets it untraced (a trace-only message not at all), and the
# egress says so in Go's words.  Go twin: server/msgtrace.go.

# Go's texts for an egress that did not happen, or happened untraced.
TRACE_NO_ECHO = "Not delivered because of no echo"
TRACE_SUB_DENY = "Not delivered because subscription denies this subject"
TRACE_ONLY_NO_SUPPORT = "Not delivered because remote does not support message tracing"
TRACE_NO_SUPPORT = ("Message delivered but remote does not support message tracing so no "
                    "trace event generated from there")


def trace_only(headers: dict) -> bool:
    """Do a message's headers (header_values) ask for the trace only
    (`Nats-Trace-Only`: 1, true, on)?"""
    value = headers.get("Nats-Trace-Only", [""])[0].lower()
    return value in ("1", "true", "on")


def header_values(msg: Message) -> dict:
    """A message's header block as {name: [values]} (names as written)."""
    headers: dict = {}
    if msg.hdr <= 0:
        return headers
    for line in msg.payload[:msg.hdr].decode("utf-8", "replace").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep and name:
            headers.setdefault(name, []).append(value.strip())
    return headers


class MsgTrace:
    """One traced message (Go's msgTrace): its destination, whether it is
    trace-only, and the event built while it is delivered."""

    def __init__(self, dest: bytes, only: bool, event: dict):
        self.dest = dest
        self.only = only
        self.event = event
        self.hop = ""               # our hop id, when the message came over a route
        self.hops = 0               # routes we forwarded it on that trace it too

    @classmethod
    def start(cls, conn, msg: Message, account: Account | None = None) -> "MsgTrace | None":
        """The trace a message asks for, from a client or (with its
        `account`) a route; None without a destination, with an invalid
        one, or one a client may not publish to (then told, as Go does)."""
        headers = header_values(msg)
        dest = (headers.get("Nats-Trace-Dest") or [""])[0].encode()
        if not dest:
            return None
        if not is_valid_literal_subject(dest):
            conn.error("Destination %s is not valid, won't be able to trace events",
                       go_quote(dest))
            return None
        route = conn.kind == "Router"
        if not route and conn.perms is not None and not conn.perms.can_publish(dest):
            conn.pub_permission_violation(dest)
            return None
        account = account or conn.account
        ingress = {"type": "in", "ts": rfc3339(time.time()), "kind": 1 if route else 0,
                   "cid": conn.cid}
        name = conn.remote_name if route else conn.name
        if name:
            ingress["name"] = name
        ingress.update({"acc": account.name, "subj": msg.subject.decode("utf-8", "replace")})
        event = {"server": None, "request": {"header": headers, "msgsize": msg.size},
                 "events": [ingress]}
        trace = cls(dest, trace_only(headers), event)
        trace.hop = (headers.get("Nats-Trace-Hop") or [""])[0] if route else ""
        return trace

    def egress(self, conn, sub: Subscription | None, error: str = "", hop: str = ""):
        """Note one delivery (or why there was none) to `conn`."""
        entry = {"type": "eg", "ts": rfc3339(time.time()),
                 "kind": 1 if conn.kind == "Router" else 0, "cid": conn.cid}
        name = conn.remote_name if conn.kind == "Router" else conn.name
        if name:
            entry["name"] = name
        if hop:
            entry["hop"] = hop
        if sub is not None and conn.kind != "Router":
            entry["sub"] = sub.subject.decode("utf-8", "replace")
            if sub.queue is not None:
                entry["queue"] = sub.queue.decode("utf-8", "replace")
        if error:
            entry["error"] = error
        self.event["events"].append(entry)

    def deliver_to(self, sub: Subscription, msg: Message, publisher) -> bool:
        """deliver_to for a traced message: noted, and made unless trace-only."""
        c = sub.client
        if c is publisher and not publisher.echo:
            self.egress(c, sub, TRACE_NO_ECHO)
            return False
        if c.perms is not None and not c.perms.can_receive(msg.subject, sub.queue):
            self.egress(c, sub, TRACE_SUB_DENY)
            return False
        self.egress(c, sub)
        return True if self.only else deliver_to(sub, msg, publisher)

    def forward(self, route, msg: Message) -> "Message | None":
        """A route with interest: noted, and the message to send it (None:
        not sent).  A peer that traces (route proto 3, Go's MsgTraceProto)
        gets it, trace-only too, with its hop id in `Nats-Trace-Hop` ("1",
        "2", ... from the origin, "<our hop>.1" further on) and sends its
        own event; another gets it untraced, or not at all if trace-only."""
        supported = not route.legacy and \
            (route.remote_info.get("proto") or 0) >= ROUTE_TRACE_PROTO
        if not supported:
            self.egress(route, None, TRACE_ONLY_NO_SUPPORT if self.only else TRACE_NO_SUPPORT)
            return None if self.only else msg
        self.hops += 1
        hop = "%s.%d" % (self.hop, self.hops) if self.hop else "%d" % self.hops
        self.egress(route, None, hop=hop)
        return msg.with_header(b"Nats-Trace-Hop", hop.encode())

    def send(self, conn, account: Account | None = None):
        """Publish the event to the destination in the message's account,
        as the server (no echo rule, no no_responders)."""
        server, account = conn.server, account or conn.account
        server.event_seq += 1
        info = {"name": server.server_name, "host": server.options.host,
                "id": server.server_id}
        if server.cluster.enabled:
            info["cluster"] = server.cluster.name
        info.update({"ver": VERSION, "jetstream": False, "flags": 0,
                     "seq": server.event_seq, "time": rfc3339(time.time())})
        self.event["server"] = info
        if self.hops:
            self.event["hops"] = self.hops
        body = json.dumps(self.event, separators=(",", ":")).encode()
        msg = Message(self.dest, None, -1, len(body), body)
        deliver_result(account.sublist.match(self.dest), msg, None, account)


# -- the monitor over the system account ($SYS) ---------------------------------
#
# natscli and other tools ask the servers over NATS itself, in the system
# account: a request on `$SYS.REQ.SERVER.PING` is answered by every server
# with its STATSZ, `$SYS.REQ.SERVER.PING.<X>` (and `$SYS.REQ.SERVER.<id>.<X>`
# for one server) with the monitor's <X> (VARZ, CONNZ, ...), wrapped as Go
# wraps it: {"server": who answers, "data": ...}, or "error" instead.  The
# server's own client in the system account, SystemClient, holds those
# subscriptions; a delivery to it is queued like any other and handled when
# the loop flushes it, so requests and answers travel through the sublist
# and over routes as client messages do (a mixed cluster answers from every
# node).  The answers come from the Monitor's endpoint functions: one
# implementation for HTTP and $SYS.  Go twin: server/events.go.

SYS_PING = b"$SYS.REQ.SERVER.PING"
# Seconds between two `$SYS.SERVER.<id>.STATSZ` (Go's statsz interval, its
# steady value).
SYS_STATSZ_INTERVAL = 10.0
# After startup the first comes this soon, and the gaps double up to the
# interval (Go's startStatszTimer); one on a change waits at least this long
# after the last (Go's statszRateLimit).
SYS_STATSZ_FIRST = 0.25
SYS_STATSZ_MIN_GAP = 1.0
# Seconds between an account's CONNS events while it has connections (Go's
# eventsHBInterval), on top of one at every change.
SYS_CONNS_INTERVAL = 30.0
SYS_SERVER_REQUEST = b"$SYS.REQ.SERVER.%s.*"

# ConnzOptions' "state" (Go's ConnState) as /connz's state parameter.
_SYS_CONN_STATES = {0: "open", 1: "closed", 2: "all"}


def sys_query(options: dict) -> dict:
    """A $SYS request's JSON options (Go's ConnzOptions and friends) as the
    HTTP endpoints' query parameters."""
    query = {}
    for key, value in options.items():
        if key == "subscriptions" and value:
            query.setdefault("subs", "1")
        elif key == "subscriptions_detail" and value:
            query["subs"] = "detail"
        elif key == "state" and isinstance(value, int):
            query["state"] = _SYS_CONN_STATES.get(value, str(value))
        elif isinstance(value, bool):
            query[key] = "true" if value else "false"
        elif isinstance(value, (int, str)):
            query[key] = str(value)
    return query


class SystemClient:
    """The server's own client in the system account: its subscriptions
    answer the $SYS requests.  It quacks like a Client where delivery looks
    (out, counters, no permissions, headers), and its `flush`, called when
    the loop flushes what was delivered this turn, handles each message."""

    kind = "Client"
    cid = 0
    name = ""
    perms = None
    headers = True
    echo = True
    trace = False
    closed = False
    stall_waiters = None

    def __init__(self, server: "Server"):
        self.server = server
        self.account = server.system_account
        self.out = []
        self.out_msgs = self.out_bytes = 0
        self.last_activity = 0.0
        self.request_info: dict = {}     # the Nats-Request-Info of the request in hand
        self.handlers: dict = {}     # sid -> handler(subject, reply, payload)
        self.subs = []
        self.unforwarded = set()     # sids of the subscriptions only our clients reach
        self.seq = 0                 # of the answers sent (Go's server info "seq")
        self.statsz_gap = SYS_STATSZ_FIRST   # until the next STATSZ heartbeat
        self.statsz_at = 0.0         # when the last STATSZ left (monotonic)
        self.conns_timers: dict = {}  # account name -> its CONNS heartbeat's timer

    def start(self):
        """Subscribe to the requests this server answers, and send STATSZ
        now, then after SYS_STATSZ_FIRST and gaps doubling up to
        SYS_STATSZ_INTERVAL."""
        self.subscribe(SYS_PING, self.ping)
        self.subscribe(SYS_PING + b".*", self.request)
        self.subscribe(SYS_SERVER_REQUEST % self.server.server_id.encode(), self.request)
        self.subscribe(b"$SYS.REQ.ACCOUNT.*.*", self.account_request)
        self.subscribe(b"$SYS.REQ.USER.*.INFO", self.user_info, forward=False)  # ours only
        self.send_statsz()

    def send_statsz(self, heartbeat: bool = True):
        """`$SYS.SERVER.<id>.STATSZ` (Go's heartbeat of server stats); the
        heartbeat arms the next one."""
        server = self.server
        self.statsz_at = time.monotonic()
        self.reply(b"$SYS.SERVER.%s.STATSZ" % server.server_id.encode(),
                   {"server": self.server_info(), "statsz": self.statsz()})
        if heartbeat:
            server.add_timer(self.statsz_gap, self.send_statsz)
            self.statsz_gap = min(self.statsz_gap * 2, SYS_STATSZ_INTERVAL)

    def peer_listens(self, subject: bytes):
        """A peer subscribed to `subject` in the system account: if that is
        a server's STATSZ (a server joined), a STATSZ now, for it to count
        us (as Go announces itself to a new server), unless one left within
        SYS_STATSZ_MIN_GAP."""
        ours = b"$SYS.SERVER.%s.STATSZ" % self.server.server_id.encode()
        if _subject_matches(ours.split(b"."), subject.split(b".")) and \
                time.monotonic() - self.statsz_at >= SYS_STATSZ_MIN_GAP:
            self.send_statsz(heartbeat=False)

    def client_event(self, client, what: str):
        """`$SYS.ACCOUNT.<acc>.CONNECT` when a client logs in, `.DISCONNECT`
        when it is gone (Go's accountConnectEvent, accountDisconnectEvent).
        A websocket connection is a client only once upgraded."""
        if client.ws is not None and client.ws.state != WS_OPEN:
            return
        now = time.time()
        info = {"start": rfc3339(client.start), "host": client.host, "id": client.cid,
                "acc": client.account.name}
        for key, value in (("user", client.user), ("name", client.name),
                           ("lang", client.lang), ("ver", client.version)):
            if value:
                info[key] = value
        event = {"type": "io.nats.server.advisory.v1.client_%s" % what.lower(),
                 "id": _random_token(22).decode(), "timestamp": rfc3339(now),
                 "server": self.server_info(), "client": info}
        if what == "DISCONNECT":
            if client.rtt:
                info["rtt"] = int(client.rtt * 1e9)     # (Go: a time.Duration, in ns)
            info["stop"] = rfc3339(now)
        info.update({"name_tag": client.account.name, "kind": "Client",
                     "client_type": "websocket" if client.ws is not None else "nats"})
        if what == "DISCONNECT":
            event["sent"] = {"msgs": client.in_msgs, "bytes": client.in_bytes}
            event["received"] = {"msgs": client.out_msgs, "bytes": client.out_bytes}
            event["reason"] = client.close_reason
        self.reply(b"$SYS.ACCOUNT.%s.%s" % (client.account.name.encode(), what.encode()), event)
        self.conns_event(client.account)

    def conns_event(self, account: Account):
        """`$SYS.ACCOUNT.<acc>.SERVER.CONNS` (and Go's older
        `$SYS.SERVER.ACCOUNT.<acc>.CONNS`): the account's connection
        counts, when they change and every SYS_CONNS_INTERVAL while it has
        connections (Go's accConnsUpdate; none for the global account).
        Made only when someone listens."""
        if account is self.server.global_account:
            return
        timers = self.conns_timers
        if account.name in timers:
            self.server.cancel_timer(timers.pop(account.name))
        if account.client_count + len(self.server.leafs.by_account.get(account.name, ())):
            timers[account.name] = self.server.add_timer(
                SYS_CONNS_INTERVAL, lambda: self.conns_heartbeat(account.name))
        name = account.name.encode()
        subjects = (b"$SYS.SERVER.ACCOUNT.%s.CONNS" % name, b"$SYS.ACCOUNT.%s.SERVER.CONNS" % name)
        if not any(self.account.sublist.has_interest(s) for s in subjects):
            return
        monitor = self.server.monitor or Monitor(self.server)
        stats = [s for s in monitor.accstatz({"unused": "true"})["account_statz"]
                 if s["acc"] == account.name]
        if not stats:
            return
        event = {"type": "io.nats.server.advisory.v1.account_connections",
                 "id": _random_token(22).decode(), "timestamp": rfc3339(time.time()),
                 "server": self.server_info()}
        event.update(stats[0])
        for subject in subjects:
            self.reply(subject, event)

    def conns_heartbeat(self, name: str):
        """Timer callback: the account's CONNS event again (by name: a reload
        may have made a new account of it)."""
        self.conns_timers.pop(name, None)
        account = self.server.accounts.get(name)
        if account is not None:
            self.conns_event(account)

    def shutdown_event(self):
        """`$SYS.SERVER.<id>.SHUTDOWN`, this server's info, as it stops
        (Go's sendShutdownEvent); it leaves with the routes' last bytes."""
        self.reply(b"$SYS.SERVER.%s.SHUTDOWN" % self.server.server_id.encode(),
                   self.server_info())

    def subscribe(self, subject: bytes, handler, forward: bool = True):
        """Answer messages on `subject` with handler(subject, reply, payload).
        Not `forward`ed: the routes do not hear of it, so only this
        server's clients reach it (Go's sysSubscribeInternal; a leaf bound
        to the system account still hears of it when it connects, as Go's do)."""
        sub = Subscription(self, subject, None, b"%d" % (len(self.handlers) + 1))
        self.handlers[sub.sid] = handler
        if not forward:
            self.unforwarded.add(sub.sid)
        self.subs.append(sub)
        self.insert(sub, 1)

    def insert(self, sub: Subscription, delta: int):
        """Put `sub` in the system account's sublist (delta 1) or take it out."""
        if delta > 0:
            self.account.sublist.insert(sub)
        else:
            self.account.sublist.remove(sub)
        if sub.sid not in self.unforwarded:
            self.server.interest_changed(self.account, sub, delta)

    def rebind(self):
        """A reload made new accounts: subscribe again in the new system account."""
        for sub in self.subs:
            self.insert(sub, -1)
        self.account = self.server.system_account
        for sub in self.subs:
            self.insert(sub, 1)

    def pending_bytes(self) -> int:
        """Nothing waits on a socket here."""
        return 0

    def flush(self):
        """Handle what was delivered this turn, a message at a time."""
        data = b"".join(self.out)
        self.out.clear()
        try:
            messages = list(_delivered_msgs(data))
        except (ValueError, IndexError):
            self.server.log.exception("Error reading what was delivered to $SYS")
            return
        for sid, subject, reply, headers, payload in messages:
            handler = self.handlers.get(sid)
            if handler is None or reply is None:
                continue
            self.request_info = _request_info(headers)
            try:
                handler(subject, reply, payload)
            except Exception:
                self.server.log.exception("Error answering a $SYS request on %s",
                                          subject.decode("utf-8", "replace"))

    # -- answers -------------------------------------------------------------------

    def server_info(self) -> dict:
        """Who answers (Go's ServerInfo)."""
        server = self.server
        self.seq += 1
        info = {"name": server.server_name, "host": server.options.host, "id": server.server_id}
        if server.cluster.enabled:
            info["cluster"] = server.cluster.name
        info["ver"] = VERSION
        if server.options.server_tags:
            info["tags"] = list(server.options.server_tags)
        info.update({"jetstream": False, "flags": 0, "seq": self.seq,
                     "time": rfc3339(time.time())})
        return info

    def statsz(self) -> dict:
        """Go's ServerStats."""
        server = self.server
        snap = varz_snapshot(server)
        routes = [{"rid": route.cid, "name": route.remote_name or route.remote_id,
                   "sent": {"msgs": route.out_msgs, "bytes": route.out_bytes},
                   "received": {"msgs": route.in_msgs, "bytes": route.in_bytes},
                   "pending": route.pending_bytes()}
                  for route in server.cluster.all_routes()]
        stats = {
            "start": rfc3339(server.start_time),
            "mem": _proc_rss(),
            "cores": os.cpu_count() or 1,
            "cpu": 0,
            "connections": snap["connections"],
            "total_connections": server.total_connections,
            "active_accounts": len({c.account.name for c in server.clients.values()}),
            "subscriptions": snap["subscriptions"],
            "sent": {"msgs": snap["out_msgs"], "bytes": snap["out_bytes"]},
            "received": {"msgs": snap["in_msgs"], "bytes": snap["in_bytes"]},
            "slow_consumers": server.slow_consumers,
        }
        if routes:
            stats["routes"] = routes
        stats["active_servers"] = 1 + len(server.cluster.routes)
        return stats

    def reply(self, reply: bytes, body: dict):
        """Publish `body` as JSON to `reply`, in the system account; a reply
        to a request that came through an account's import goes back to the
        requester there (the account's response import)."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        msg = Message(reply, None, -1, len(payload), payload)
        account = self.account
        route = account.take_response(reply)
        if route is not None:
            msg, account = msg.routed(route.reply, None), route.importer
        deliver_result(account.sublist.match(msg.subject), msg, None, account)

    def ping(self, subject: bytes, reply: bytes, payload: bytes):
        """`$SYS.REQ.SERVER.PING`: every server's STATSZ."""
        self.reply(reply, {"server": self.server_info(), "statsz": self.statsz()})

    def request(self, subject: bytes, reply: bytes, payload: bytes):
        """`$SYS.REQ.SERVER.PING.<X>` or `$SYS.REQ.SERVER.<id>.<X>`: the
        monitor's <X>, unless the options' filters leave this server out."""
        kind = subject.rsplit(b".", 1)[1].decode("ascii", "replace").lower()
        try:
            options = json.loads(payload) if payload.strip() else {}
        except ValueError as exc:
            self.reply(reply, {"server": self.server_info(),
                               "error": {"code": 400, "description": str(exc)}})
            return
        if not isinstance(options, dict):
            options = {}
        if subject.startswith(SYS_PING) and not self.selected_by(options):
            return
        if kind == "idz":
            server = self.server
            self.reply(reply, {"name": server.server_name, "host": server.options.host,
                               "id": server.server_id})
            return
        if kind == "statsz":
            self.reply(reply, {"server": self.server_info(), "statsz": self.statsz()})
            return
        if kind in ("kick", "ldm", "reload") and not subject.startswith(SYS_PING):
            problem = getattr(self, "control_" + kind)(options)
            answer = {"server": self.server_info()}
            if problem:
                answer["error"] = {"code": 500, "description": problem}
            self.reply(reply, answer)
            return
        monitor = self.server.monitor or Monitor(self.server)
        endpoint = getattr(monitor, kind, None) if kind in SYS_MONITOR_REQUESTS else None
        if endpoint is None:
            return                      # Go does not subscribe to what it does not serve
        try:
            data = endpoint(sys_query(options))
        except MonitorError as exc:
            self.reply(reply, {"server": self.server_info(),
                               "error": {"code": exc.status, "description": str(exc)}})
            return
        self.reply(reply, {"server": self.server_info(), "data": data})

    def account_request(self, subject: bytes, reply: bytes, payload: bytes):
        """`$SYS.REQ.ACCOUNT.<acc>.<X>`, as Go's monAccSrvc: CONNZ, SUBSZ and
        LEAFZ (the monitor's, for that account), STATZ (its /accstatz entry;
        no answer for an account without connections unless
        `include_unused`), INFO (account_info), JSZ (an error: no
        JetStream) and CONNS (conns_answer).  An account's users reach
        theirs through the system imports (add_system_imports)."""
        _, _, _, account, kind = subject.decode("utf-8", "replace").split(".")
        try:
            options = json.loads(payload) if payload.strip() else {}
        except ValueError as exc:
            self.reply(reply, {"server": self.server_info(),
                               "error": {"code": 400, "description": str(exc)}})
            return
        if not isinstance(options, dict) or not self.selected_by(options):
            return
        monitor = self.server.monitor or Monitor(self.server)
        if kind == "CONNS":
            self.conns_answer(account, reply, options)
            return
        if kind in ("INFO", "JSZ"):
            if kind == "JSZ":
                problem = "jetstream not enabled"
            else:
                problem = "" if account in self.server.accounts else \
                    "Account %s does not exist" % account
            answer = {"server": self.server_info(), "data": None}
            if problem:
                answer["error"] = {"code": 500, "description": problem}
            else:
                answer["data"] = account_info(self.server, self.server.accounts[account])
            self.reply(reply, answer)
            return
        if kind in ("CONNZ", "SUBSZ", "LEAFZ"):
            query = dict(sys_query(options), acc=account)
            if kind == "SUBSZ":
                query["subs"] = "1"
            try:
                data = getattr(monitor, kind.lower())(query)
            except MonitorError as exc:
                self.reply(reply, {"server": self.server_info(), "data": None,
                                   "error": {"code": exc.status, "description": str(exc)}})
                return
        elif kind == "STATZ":
            if account == "PING":
                return
            statz = monitor.accstatz({"unused": "true"})
            statz["account_statz"] = [a for a in statz["account_statz"] if a["acc"] == account]
            if not statz["account_statz"] or (not statz["account_statz"][0]["conns"]
                                              and not options.get("include_unused")):
                return
            data = statz
        else:
            return                      # Go does not subscribe to what it does not serve
        self.reply(reply, {"server": self.server_info(), "data": data})

    def conns_answer(self, name: str, reply: bytes, options: dict):
        """`$SYS.REQ.ACCOUNT.<acc>.CONNS` (Go's connsRequest): the account's
        account_connections event, to the asker alone, if it has clients
        here (and the body names no other account)."""
        if options.get("acc", name) != name or name not in self.server.accounts:
            return
        if not any(c.account.name == name for c in self.server.clients.values()):
            return
        monitor = self.server.monitor or Monitor(self.server)
        stats = [s for s in monitor.accstatz({"unused": "true"})["account_statz"]
                 if s["acc"] == name]
        event = {"type": "io.nats.server.advisory.v1.account_connections",
                 "id": _random_token(22).decode(), "timestamp": rfc3339(time.time()),
                 "server": self.server_info()}
        event.update(stats[0])
        self.reply(reply, event)

    def user_info(self, subject: bytes, reply: bytes, payload: bytes):
        """`$SYS.REQ.USER.INFO`, imported by every account as
        `$SYS.REQ.USER.<acc>.INFO`: the asking user, its account and
        permissions (Go's userInfoReq), from the request's Nats-Request-Info."""
        info = self.request_info
        user, account = str(info.get("user") or ""), str(info.get("acc") or "")
        data = {"user": user, "account": account}
        if account:
            data["account_name"] = account
        for entry in self.server.options.users or ():
            if user and (entry.username or entry.nkey) == user and entry.permissions:
                data["permissions"] = go_permissions(entry.permissions)
        self.reply(reply, {"server": self.server_info(), "data": data})

    def control_kick(self, options: dict) -> str:
        """KICK {"cid": N}: close that client (Go's DisconnectClientByID)."""
        cid = options.get("cid")
        client = self.server.clients.get(cid) if isinstance(cid, int) else None
        if client is None:
            return "no such client or leafnode id"
        client.close(KICKED)
        return ""

    def control_ldm(self, options: dict) -> str:
        """LDM {"cid": N}: tell that client to move, with an INFO carrying
        `ldm` (Go's LDMClientByID)."""
        cid = options.get("cid")
        client = self.server.clients.get(cid) if isinstance(cid, int) else None
        if client is None:
            return "no such client id"
        if client.protocol < PROTO or not client.connect_received:
            return ("client does not support Lame Duck Mode or is not ready to receive the "
                    "notification")
        info = dict(self.server.info_template, ldm=True)
        client.queue_outbound(b"INFO " + json.dumps(info, separators=(",", ":")).encode()
                              + b" \r\n")
        return ""

    def control_reload(self, options: dict) -> str:
        """RELOAD: read the config file again, as SIGHUP does."""
        if not self.server.options.config_file:
            return "can only reload config when a file is provided using -c or --config"
        return self.server.reload()

    def selected_by(self, options: dict) -> bool:
        """Go's EventFilterOptions: server_name, cluster, host (substrings,
        or exact with exact_match) and tags (all of them)."""
        server = self.server
        exact = bool(options.get("exact_match"))
        mine = {"server_name": server.server_name, "host": server.options.host,
                "cluster": server.cluster.name if server.cluster.enabled else ""}
        for key, value in mine.items():
            wanted = options.get(key)
            if isinstance(wanted, str) and wanted:
                if (wanted != value) if exact else (wanted not in value):
                    return False
        tags = options.get("tags")
        if isinstance(tags, list) and tags:
            have = set(server.options.server_tags or ())
            if not all(isinstance(t, str) and t.lower() in have for t in tags):
                return False
        return True


# The monitor endpoints `$SYS.REQ.SERVER.PING.<X>` serves (STATSZ and IDZ
# are answered by SystemClient itself).
SYS_MONITOR_REQUESTS = ("varz", "connz", "subsz", "routez", "healthz", "accountz", "leafz",
                        "gatewayz", "jsz")


def _request_info(headers: bytes) -> dict:
    """The Nats-Request-Info header's JSON (who asked, through a service
    import), or {}."""
    for line in headers.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == REQUEST_INFO_HEADER.lower():
            try:
                info = json.loads(value)
            except ValueError:
                return {}
            return info if isinstance(info, dict) else {}
    return {}


def go_permissions(perms: Permissions) -> dict:
    """Permissions as Go's JSON writes them (publish/subscribe allow and
    deny lists, responses with its ttl in nanoseconds)."""
    out = {}
    for what, allow, deny in (("publish", perms.publish_allow, perms.publish_deny),
                              ("subscribe", perms.subscribe_allow, perms.subscribe_deny)):
        entry = {}
        if allow is not None:
            entry["allow"] = list(allow)
        if deny:
            entry["deny"] = list(deny)
        if entry:
            out[what] = entry
    if perms.responses is not None:
        out["responses"] = {"max": perms.responses[0], "ttl": int(perms.responses[1] * 1e9)}
    return out


# The services the system account exports, as Go's AccountInfo lists them.
SYSTEM_EXPORTS = (("$SYS.REQ.ACCOUNT.*.CONNZ", "Streamed"), ("$SYS.REQ.ACCOUNT.*.STATZ",
                  "Streamed"), ("$SYS.REQ.USER.*.INFO", "Singleton"),
                  ("$SYS.DEBUG.SUBSCRIBERS", "Singleton"))


def account_info(server: "Server", account: Account) -> dict:
    """Go's AccountInfo (/accountz?acc='s account_detail) of `account`:
    its connections, subscriptions, imports (and the system account's
    exports), sublist statistics.  Loop thread."""
    sublist = account.sublist
    matches = sublist.matches
    fanouts = [len(r) for r in sublist.cache.values()]
    info = {"account_name": account.name, "update_time": rfc3339(server.start_time)}
    if account is server.system_account:
        info["is_system"] = True
    info.update({
        "expired": account.expired, "complete": True, "jetstream_enabled": False,
        "leafnode_connections": len(server.leafs.by_account.get(account.name, ())),
        "client_connections": sum(1 for c in server.clients.values() if c.account is account),
        "subscriptions": sublist.count,
    })
    if account is server.system_account:
        info["exports"] = [{"subject": subject, "type": "service", "response_type": kind}
                           for subject, kind in SYSTEM_EXPORTS]
    imports = []
    for local, si in sorted(account.service_imports.items()):
        there = si.to_export.apply(local).decode("utf-8", "replace")
        imports.append({"subject": there, "account": si.exporter.name,
                        "to": local.decode("utf-8", "replace"),
                        "local_subject": local.decode("utf-8", "replace"), "type": "service",
                        "invalid": False, "share": si.share, "tracking": False})
    info["imports"] = imports
    info.update({"name_tag": (account.claims or {}).get("name", account.name), "sublist_stats": {
        "num_subscriptions": sublist.count, "num_cache": len(sublist.cache),
        "num_inserts": sublist.inserts, "num_removes": sublist.removes, "num_matches": matches,
        "cache_hit_rate": (sublist.cache_hits / matches) if matches else 0,
        "max_fanout": max(fanouts, default=0),
        "avg_fanout": (sum(fanouts) / len(fanouts)) if fanouts else 0}})
    return info


def _delivered_msgs(data: bytes):
    """(sid, subject, reply or None, header block, payload) of the MSG/HMSG
    frames delivered to the SystemClient."""
    i, n = 0, len(data)
    while i < n:
        nl = data.find(b"\n", i)
        if nl < 0:
            return
        parts = data[i:nl].rstrip(b"\r").split(b" ")
        headers = parts[0] == b"HMSG"
        if headers:
            hdr, size = int(parts[-2]), int(parts[-1])
            subject, sid, reply = parts[1], parts[2], parts[3] if len(parts) == 6 else None
        else:
            hdr, size = 0, int(parts[-1])
            subject, sid, reply = parts[1], parts[2], parts[3] if len(parts) == 5 else None
        payload = data[nl + 1:nl + 1 + size]
        yield sid, subject, reply, payload[:hdr], payload[hdr:]
        i = nl + 1 + size + 2


# ============================================================================
# 15. Logging
# ============================================================================
#
# Log lines look like the Go server's, because people and tools read them:
#
#     [1234] 2026/11/27 13:37:19.818351 [INF] Server is ready
#
# `-T=false` drops the time; `-D` adds [DBG] lines (connections opening and
# closing), `-V` adds [TRC] lines (every protocol op in and out), `-l FILE`
# appends to a file instead of stderr.  SIGUSR1 reopens that file, for
# logrotate; `--log_size_limit` rotates it by itself.  `-s` sends the log to
# the local syslog and `-r URL` to a remote one instead.  The chapter ends
# with the line a client's parse error logs, Go's quoted snippet of the
# offending bytes (op_name_error, which the framing of chapter 2 raises).
# Go twins: logger/log.go, logger/syslog.go.  Entry point:
# configure_logging(opts).

# -- Go's ways of writing values in log lines (and JSON) --

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def go_quote(data: bytes) -> str:
    """`data` as Go's %q prints it: printable text kept, the rest escaped."""
    text = data.decode("utf-8", "surrogateescape")
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:          # a byte that is not UTF-8
            out.append("\\x%02x" % (code - 0xDC00))
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append("\\x%02x" % code)
        elif code <= 0xFFFF:
            out.append("\\u%04x" % code)
        else:
            out.append("\\U%08x" % code)
    return '"' + "".join(out) + '"'


def format_duration(seconds: float) -> str:
    """Seconds in Go's time.Duration String() form, to the nanosecond:
    1h2m3s, 1.5s, 250ms, 1.234567ms, 523µs, 80ns."""
    n = int(round(abs(seconds) * 1e9))
    sign = "-" if seconds < 0 and n else ""

    def decimal(unit: int) -> str:      # n in `unit`s, no trailing zeros
        whole, frac = divmod(n, unit)
        if not frac:
            return str(whole)
        return "%d.%s" % (whole, ("%0*d" % (len(str(unit)) - 1, frac)).rstrip("0"))
    if n < 1000:
        return sign + "%dns" % n if n else "0s"
    if n < 1000000:
        return sign + decimal(1000) + "\u00b5s"
    if n < 1000000000:
        return sign + decimal(1000000) + "ms"
    hours, n = divmod(n, 3600 * 10 ** 9)
    minutes, n = divmod(n, 60 * 10 ** 9)
    text = sign
    if hours:
        text += "%dh" % hours
    if hours or minutes:
        text += "%dm" % minutes
    return text + decimal(10 ** 9) + "s"


# Level labels as the Go server prints them.
_LABELS = {TRACE: "TRC", logging.DEBUG: "DBG", logging.INFO: "INF",
           logging.WARNING: "WRN", logging.ERROR: "ERR", logging.CRITICAL: "FTL"}


class GoFormatter(logging.Formatter):
    """`[pid] date time.micro [LBL] message`, as Go's logger writes it."""

    def __init__(self, logtime: bool = True, utc: bool = False):
        super().__init__()
        self.logtime = logtime
        self.clock = time.gmtime if utc else time.localtime
        self.pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        """One Go log line for `record`, with its traceback if any; a level
        without a Go label prints as [INF]."""
        label = _LABELS.get(record.levelno, "INF")
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if not self.logtime:
            return "[%d] [%s] %s" % (self.pid, label, text)
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", self.clock(record.created))
        micros = int((record.created % 1) * 1_000_000)
        return "[%d] %s.%06d [%s] %s" % (self.pid, stamp, micros, label, text)


class _TraceWithoutDebug(logging.Filter):
    """-V without -D: show [TRC] lines but not [DBG] ones."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.DEBUG


def configure_logging(opts: Options, logger: logging.Logger = log):
    """Give the logger (the module's, or an embedded server's) one handler
    as the options ask: remote syslog, local syslog, a file, or stderr (Go's
    ConfigureLogger order)."""
    log = logger
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    if opts.remote_syslog:
        handler = SysLogHandler(*_syslog_address(opts.remote_syslog))
    elif opts.syslog:
        handler = SysLogHandler(None, None, facility=_LOG_DAEMON)
    elif opts.log_file:
        handler = _SizeLimitedFileHandler(opts.log_file, opts.log_size_limit)
    else:
        handler = logging.StreamHandler(sys.stderr)
    if not isinstance(handler, SysLogHandler):
        handler.setFormatter(GoFormatter(opts.logtime, opts.logtime_utc))
    if opts.trace and not opts.debug:
        handler.addFilter(_TraceWithoutDebug())
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(TRACE if opts.trace else logging.DEBUG if opts.debug else logging.INFO)


def reopen_log_file(opts: Options, logger: logging.Logger = log):
    """SIGUSR1: reopen the log file (after logrotate moved it)."""
    if opts.log_file and not (opts.syslog or opts.remote_syslog):
        configure_logging(opts, logger)
        logger.info("File log re-opened")


# -- log file size limit --

class _SizeLimitedFileHandler(logging.FileHandler):
    """A log file that, once past `limit` bytes, is renamed to
    `NAME.YYYY.MM.DD.HH.MM.SS.NANOS` and started afresh (Go's fileLogger
    rotation; the new file opens with a "Rotated log" line)."""

    def __init__(self, path: str, limit: int = 0):
        super().__init__(path, mode="a", encoding="utf-8")
        self.path = path
        self.limit = limit

    def emit(self, record: logging.LogRecord):
        super().emit(record)
        if self.limit > 0 and self.stream and os.fstat(self.stream.fileno()).st_size > self.limit:
            self.rotate(record)

    def rotate(self, record: logging.LogRecord):
        try:
            backup = self.baseFilename + "." + _rotation_stamp()
            self.close()
            os.rename(self.baseFilename, backup)
            self.stream = self._open()
        except OSError:
            self.handleError(record)
            return
        shown = self.path + backup[len(self.baseFilename):]
        note = logging.LogRecord(record.name, logging.INFO, __file__, 0,
                                 'Rotated log, backup saved as "%s"', (shown,), None)
        super().emit(note)


def _rotation_stamp() -> str:
    """Go's time format "2006.01.02.15.04.05.999999999" (zeros trimmed)."""
    now = time.time_ns()
    stamp = time.strftime("%Y.%m.%d.%H.%M.%S", time.localtime(now // 1_000_000_000))
    nanos = ("%09d" % (now % 1_000_000_000)).rstrip("0")
    return stamp + ("." + nanos if nanos else "")


# -- syslog --
#
# Go's SysLogger writes each line through log/syslog, without the [INF]
# label: the level is the syslog severity.  Local syslog (`-s`) uses
# /dev/log with facility daemon; remote syslog (`-r`) uses facility 0.
# Info and trace go out as notice.  Lines carry the tag (the executable's
# name) and pid; network lines also carry an RFC 3339 time and hostname,
# unix-socket lines Go's time.Stamp.  A syslog failure drops the line but
# never takes the server down.

# Syslog facility daemon (RFC 3164), shifted into place.
_LOG_DAEMON = 3 << 3
# Syslog severity of each level, as Go's SysLogger chooses them.
_SYSLOG_SEVERITY = {TRACE: 5, logging.DEBUG: 7, logging.INFO: 5, logging.WARNING: 4,
                    logging.ERROR: 3, logging.CRITICAL: 2}
# Where local syslog listens (Go's unixSyslog tries these in order).
_LOCAL_SYSLOG_PATHS = ("/dev/log", "/var/run/syslog", "/var/run/log")
# Seconds to wait when connecting to, or writing to, a TCP syslog server.
_SYSLOG_TCP_TIMEOUT = 1.0
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _syslog_address(url: str) -> tuple:
    """`udp://host:port`, `tcp://host:port`, `unix:///path` -> (network,
    address) (Go's getNetworkAndAddr)."""
    network, sep, rest = url.partition("://")
    if not sep or network not in ("udp", "tcp", "unix"):
        raise ValueError('invalid network type: "%s"' % (network if sep else ""))
    if network == "unix":
        return network, "/" + rest.split("/", 1)[1] if "/" in rest else rest
    host, _, port = rest.split("/", 1)[0].rpartition(":")
    if not port.isdigit():
        raise ValueError("dial %s %s: missing port in address" % (network, rest))
    return network, (host.strip("[]") or "localhost", int(port))


class SysLogHandler(logging.Handler):
    """Write log lines to a syslog daemon as Go's log/syslog does.

    network None is local syslog: the first of `_LOCAL_SYSLOG_PATHS` that
    accepts a datagram or stream connection.  Connecting happens at once,
    so a bad address fails at startup as in Go ("error connecting to syslog").
    """

    def __init__(self, network, address, facility: int = 0, tag: str = ""):
        super().__init__()
        self.network, self.address, self.facility = network, address, facility
        self.tag = tag or os.path.basename(sys.argv[0]) or "gnatsd.py"
        self.hostname = socket.gethostname()
        self.sock = None
        self.local = network in (None, "unix")
        self.connect()

    def connect(self):
        """Open the socket; raises OSError with Go's wording."""
        if self.network is None:
            self.sock = _connect_local_syslog(self.address)
        elif self.network == "udp":
            self.sock = socket.socket(_family(self.address[0]), socket.SOCK_DGRAM)
            self.sock.connect(self.address)
        elif self.network == "tcp":
            self.sock = socket.create_connection(self.address, timeout=_SYSLOG_TCP_TIMEOUT)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(_SYSLOG_TCP_TIMEOUT)
            try:
                self.sock.connect(self.address)
            except OSError as exc:
                self.sock.close()
                raise OSError("dial unix %s: connect: %s"
                              % (self.address, (exc.strerror or str(exc)).lower())) from None

    def line(self, record: logging.LogRecord) -> bytes:
        """`<PRI>TIME HOST TAG[PID]: MSG\\n` (local: no host, time.Stamp)."""
        priority = self.facility | _SYSLOG_SEVERITY.get(record.levelno, 5)
        text = record.getMessage()
        if self.local:
            t = time.localtime(record.created)
            stamp = "%s %2d %s" % (_MONTHS[t.tm_mon - 1], t.tm_mday,
                                   time.strftime("%H:%M:%S", t))
            head = "<%d>%s %s[%d]: " % (priority, stamp, self.tag, os.getpid())
        else:
            head = "<%d>%s %s %s[%d]: " % (priority, _rfc3339(record.created), self.hostname,
                                           self.tag, os.getpid())
        return (head + text + ("" if text.endswith("\n") else "\n")).encode("utf-8", "replace")

    def emit(self, record: logging.LogRecord):
        """Send one line, reconnecting and retrying once on error (Go's
        writeAndRetry); a line that fails twice is dropped."""
        data = self.line(record)
        for _attempt in range(2):  # Go's writeAndRetry: reconnect once
            try:
                if self.sock is None:
                    self.connect()
                self.sock.sendall(data)
                return
            except OSError:
                self.close_socket()

    def close_socket(self):
        """Close the socket, if open; the next `emit` connects again."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def close(self):
        """Close the socket and the handler."""
        self.close_socket()
        super().close()


def _connect_local_syslog(path=None) -> socket.socket:
    """The local syslog socket: datagram first, then stream (Go's unixSyslog)."""
    for address in ((path,) if path else _LOCAL_SYSLOG_PATHS):
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(socket.AF_UNIX, kind)
            try:
                sock.settimeout(_SYSLOG_TCP_TIMEOUT)
                sock.connect(address)
                return sock
            except OSError:
                sock.close()
    raise OSError("Unix syslog delivery error")


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _rfc3339(created: float) -> str:
    """Go's time.RFC3339: 2026-11-27T15:29:14Z or ...+01:00."""
    t = time.localtime(created)
    offset = t.tm_gmtoff or 0
    if offset == 0:
        zone = "Z"
    else:
        sign = "+" if offset > 0 else "-"
        zone = "%s%02d:%02d" % (sign, abs(offset) // 3600, abs(offset) % 3600 // 60)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + zone


# -- the parse error's log line ------------------------------------------------
# GO-COMPAT: protoSnippet (test_logging.py::test_parse_error_log_names_state_and_snippet)
#
# Go answers a byte no op can continue with `-ERR 'Unknown Protocol
# Operation'` and logs where its byte-wise parser stood:
#
#     Client parser ERROR, state=31, i=3: proto='"X foo 1\r"...'
#
# `state` is the parser state (its enum in parser.go) and `i` the failing
# byte's index in the read, followed by up to 32 bytes from there, quoted.
# We find lines, not bytes, so the state is worked out from the op's name
# (the longest prefix of a name it spells) or the payload's end.

# Go's parser states for the prefixes of the client ops' names.
_GO_OP_STATES = {
    b"": 0, b"+": 1, b"+O": 2, b"+OK": 3, b"-": 4, b"-E": 5, b"-ER": 6, b"-ERR": 7,
    b"C": 10, b"CO": 11, b"CON": 12, b"CONN": 13, b"CONNE": 14, b"CONNEC": 15, b"CONNECT": 16,
    b"H": 18, b"HP": 19, b"HPU": 20, b"HPUB": 21, b"HM": 24, b"HMS": 25, b"HMSG": 26,
    b"P": 29, b"PU": 30, b"PUB": 31, b"PI": 34, b"PIN": 35, b"PING": 36,
    b"PO": 37, b"PON": 38, b"PONG": 39,
    b"S": 43, b"SU": 44, b"SUB": 45,
    b"U": 59, b"UN": 60, b"UNS": 61, b"UNSU": 62, b"UNSUB": 63,
    b"I": 71, b"IN": 72, b"INF": 73, b"INFO": 74,
}
# (No op starts with M: Go's OP_M follows R or L only, and a client's MSG
# fails on its first byte.)  A route's parser also knows RS+ RS- RMSG LS+
# LS- LMSG A+ A- (OP_R, OP_L, OP_A: RS+ goes on as SUB does, RS- as UNSUB,
# RMSG as MSG).
_GO_ROUTE_OP_STATES = {
    **_GO_OP_STATES, b"R": 57, b"RS": 58, b"RS+": 45, b"RS-": 63, b"RM": 66, b"RMS": 67,
    b"RMSG": 68, b"L": 55, b"LS": 56, b"LS+": 45, b"LS-": 63, b"LM": 66, b"LMS": 67,
    b"LMSG": 68, b"A": 48, b"A+": 49, b"A-": 52}
# ... and after a payload: CR expected, then LF.
GO_MSG_END_R, GO_MSG_END_N = 41, 42

# Bytes of the offending input a parse error's log line quotes.
PROTO_SNIPPET_SIZE = 32


def parser_error(data: bytes, at: int, state: int, kind: str = "Client") -> ProtocolError:
    """The unknown-op error for the byte at `at`, with Go's log line
    (`kind`: Go's name for the connection's kind, Router or Leafnode)."""
    stop = at + PROTO_SNIPPET_SIZE
    if at >= len(data):
        snippet = '""'
    else:
        if stop > len(data):
            stop = len(data) - 1        # (Go's protoSnippet leaves the last byte out)
        snippet = go_quote(data[at:stop])
    return ProtocolError("%s parser ERROR, state=%d, i=%d: proto='%s...'"
                         % (kind, state, at, snippet), ERR_UNKNOWN_PROTOCOL)


def op_name_error(data: bytes, i: int, kind: str = "Client") -> ProtocolError:
    """The unknown op starting at `i`: Go fails on the first byte that no
    op name continues with (a route's and a leaf's: _GO_ROUTE_OP_STATES)."""
    states = _GO_OP_STATES if kind == "Client" else _GO_ROUTE_OP_STATES
    name = data[i:i + 8].upper()
    j = 0
    while j < len(name) and name[:j + 1] in states:
        j += 1
    return parser_error(data, i + j, states[name[:j]], kind)


def payload_end_error(data: bytes, stop: int, kind: str = "Client") -> ProtocolError:
    """A payload not followed by CRLF (`stop` is where the CR belongs)."""
    if data[stop] != 13:
        return parser_error(data, stop, GO_MSG_END_R, kind)
    return parser_error(data, stop + 1, GO_MSG_END_N, kind)


# ============================================================================
# 16. Command line
# ============================================================================
#
# The flags of gnatsd 0.7.2 and of the modern nats-server, in the groups of
# the Go server's usage text.  Go's flag package is more relaxed than
# argparse: `-port 4222`, `--port 4222`, `-port=4222`, `--port=4222` are all
# the same flag, and booleans take `-T=false`.  `_normalize_argv` rewrites
# every known spelling to `--name=value` before argparse sees it.  Flags go
# into an `Options` that overrides the config file's; later flags win.
#
# Then what an operator does to a running server (signals, reload, lame
# duck mode, the ports file: ServerControl), the composition of Server, and
# main().  Go twins: main.go, server/opts.go (ConfigureOptions),
# server/reload.go, server/signal.go.

# Value kinds of flags.
_BOOL, _INT, _STR = "bool", "int", "str"

# Flags whose feature is not in this build, and why.
_NOT_YET = {
    "jetstream": "JetStream is not supported by gnatsd.py",
}

# Flags of a feature this build does not have that Go takes without it:
# accepted, and named in a startup line.  Go keeps --store_dir quietly until
# -js asks for JetStream (nats.py's test helper passes it to every node), so
# that is a debug line; --profile would serve pprof in Go, so a warning, and
# so is gnatsd 0.7.2's -bs (its bufio size).
_IGNORED_FLAGS = {
    "store_dir": (logging.DEBUG, "accepted and not used: JetStream is not supported by gnatsd.py"),
    "profile": (logging.WARNING, "accepted and not used: profiling is not supported by gnatsd.py"),
    "buf_size": (logging.WARNING, "accepted and not used: gnatsd.py sizes its buffers itself"),
}

# (group, [(flag spellings, dest, kind, metavar, help)]) as in Go's usage text.
FLAG_GROUPS = (
    ("Server Options", (
        (("-a", "--addr", "--net"), "host", _STR, "<host>", "Bind to host address (default: 0.0.0.0)"),
        (("-p", "--port"), "port", _INT, "<port>", "Use port for clients (default: 4222)"),
        (("-n", "--name", "--server_name"), "server_name", _STR, "<server_name>",
         "Server name (default: auto)"),
        (("-P", "--pid"), "pid_file", _STR, "<file>", "File to store PID"),
        (("-m", "--http_port"), "http_port", _INT, "<port>", "Use port for http monitoring"),
        (("-ms", "--https_port"), "https_port", _INT, "<port>", "Use port for https monitoring"),
        (("-c", "--config"), "config_file", _STR, "<file>", "Configuration file"),
        (("-t",), "check_config", _BOOL, None, "Test configuration and exit"),
        (("-sl", "--signal"), "signal", _STR, "<signal>[=<pid>]",
         "Send signal to nats-server process (ldm, stop, quit, term, reopen, reload)"),
        (("--client_advertise",), "client_advertise", _STR, "<string>",
         "Client URL to advertise to other servers"),
        (("--ports_file_dir",), "ports_file_dir", _STR, "<dir>",
         "Creates a ports file in the specified directory (<executable_name>_<pid>.ports)"),
        (("-bs", "--bs"), "buf_size", _INT, "<size>", "Buffer size for I/O (gnatsd 0.7.2; not used)"),
    )),
    ("Logging Options", (
        (("-l", "--log"), "log_file", _STR, "<file>", "File to redirect log output"),
        (("-T", "--logtime"), "logtime", _BOOL, None, "Timestamp log entries (default: true)"),
        (("--logtime_utc",), "logtime_utc", _BOOL, None,
         "Timestamps in UTC instead of local timezone (default: false)"),
        (("-s", "--syslog"), "syslog", _BOOL, None, "Log to syslog or windows event log"),
        (("-r", "--remote_syslog"), "remote_syslog", _STR, "<addr>",
         "Syslog server addr (udp://localhost:514)"),
        (("-D", "--debug"), "debug", _BOOL, None, "Enable debugging output"),
        (("-V", "--trace"), "trace", _BOOL, None, "Trace the raw protocol"),
        (("-VV",), "trace_verbose", _BOOL, None, "Verbose trace (traces system account as well)"),
        (("-DV",), "debug_trace", _BOOL, None, "Debug and trace"),
        (("-DVV",), "debug_trace_verbose", _BOOL, None,
         "Debug and verbose trace (traces system account as well)"),
        (("--log_size_limit",), "log_size_limit", _INT, "<limit>",
         "Logfile size limit (default: auto)"),
        (("--max_traced_msg_len",), "max_traced_msg_len", _INT, "<len>",
         "Maximum printable length for traced messages (default: unlimited)"),
    )),
    ("JetStream Options", (
        (("-js", "--jetstream"), "jetstream", _BOOL, None, "Enable JetStream functionality (not supported)"),
        (("-sd", "--store_dir"), "store_dir", _STR, "<dir>", "Set the storage directory (not supported)"),
    )),
    ("Authorization Options", (
        (("--user",), "username", _STR, "<user>", "User required for connections"),
        (("--pass",), "password", _STR, "<password>", "Password required for connections"),
        (("--auth",), "authorization", _STR, "<token>", "Authorization token required for connections"),
    )),
    ("TLS Options", (
        (("--tls",), "tls", _BOOL, None, "Enable TLS, do not verify clients (default: false)"),
        (("--tlscert",), "tlscert", _STR, "<file>", "Server certificate file"),
        (("--tlskey",), "tlskey", _STR, "<file>", "Private key for server certificate"),
        (("--tlsverify",), "tlsverify", _BOOL, None, "Enable TLS, verify client certificates"),
        (("--tlscacert",), "tlscacert", _STR, "<file>", "Client certificate CA for verification"),
    )),
    ("Cluster Options", (
        (("--routes",), "routes", _STR, "<rurl-1, rurl-2>", "Routes to solicit and connect"),
        (("--cluster",), "cluster", _STR, "<cluster-url>", "Cluster URL for solicited routes"),
        (("--cluster_name",), "cluster_name", _STR, "<string>",
         "Cluster Name, if not set one will be dynamically generated"),
        (("--no_advertise",), "no_advertise", _BOOL, None,
         "Do not advertise known cluster information to clients"),
        (("--cluster_advertise",), "cluster_advertise", _STR, "<string>",
         "Cluster URL to advertise to other servers"),
        (("--connect_retries",), "connect_retries", _INT, "<number>",
         "For implicit routes, number of connect retries"),
        (("--cluster_listen",), "cluster_listen", _STR, "<url>",
         "Cluster url from which members can solicit routes"),
    )),
    ("Profiling Options", (
        (("--profile",), "profile", _INT, "<port>", "Profiling HTTP port"),
    )),
    ("Common Options", (
        (("-h", "--help"), "help", _BOOL, None, "Show this message"),
        (("-v", "--version"), "version", _BOOL, None, "Show version"),
        (("--help_tls",), "help_tls", _BOOL, None, "TLS help"),
    )),
    ("gnatsd.py Options", (
        (("--install-alias",), "install_alias", _STR, "<dir>",
         "Write <dir>/nats-server, which runs gnatsd.py, and exit"),
    )),
)


def _parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise argparse.ArgumentTypeError("invalid boolean value %r" % text)


def _flag_table() -> dict:
    """Every spelling without dashes -> (canonical --flag, kind)."""
    table = {}
    for _group, flags in FLAG_GROUPS:
        for spellings, _dest, kind, _metavar, _help in flags:
            canonical = spellings[-1] if spellings[-1].startswith("--") else spellings[0]
            for spelling in spellings:
                table[spelling.lstrip("-")] = (canonical, kind)
    return table


def _flag_spellings(dest: str) -> str:
    """How a flag is written, for messages: "-m/--http_port"."""
    for _group, flags in FLAG_GROUPS:
        for spellings, flag_dest, _kind, _metavar, _help in flags:
            if flag_dest == dest:
                return "/".join(spellings)
    return "--" + dest


def _normalize_argv(argv: list) -> list:
    """Rewrite Go flag spellings (`-port=1`, `-T=false`, `--port 1`) for argparse."""
    table = _flag_table()
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            out.extend(argv[i - 1:])
            break
        if not arg.startswith("-") or arg == "-":
            out.append(arg)
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        known = table.get(name)
        if known is None:
            out.append(arg)  # argparse reports it
            continue
        canonical, kind = known
        if kind == _BOOL:
            out.append("%s=%s" % (canonical, value) if has_value else canonical)
        elif has_value:
            out.append("%s=%s" % (canonical, value))
        elif i < len(argv):
            out.append("%s=%s" % (canonical, argv[i]))
            i += 1
        else:
            out.append(canonical)  # argparse reports the missing value
    return out


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with the help laid out as the Go server's usage text."""

    def format_help(self) -> str:
        lines = ["", "Usage: %s" % self.format_usage().split(":", 1)[1].strip(), "",
                 self.description, ""]
        for group_name, flags in FLAG_GROUPS:
            lines.append("%s:" % group_name)
            for spellings, _dest, _kind, metavar, help_text in flags:
                indent = "        " if spellings[0].startswith("--") else "    "
                left = indent + ", ".join(spellings) + (" " + metavar if metavar else "")
                if len(left) > 36 and len(spellings) > 1:  # Go wraps `-n, --name`
                    lines.append(indent + ", ".join(spellings[:-1]))
                    left = "        %s %s" % (spellings[-1], metavar)
                lines.append("%s%s" % (left.ljust(36), " " + help_text))
            lines.append("")
        return "\n".join(lines) + "\n"


def build_arg_parser() -> argparse.ArgumentParser:
    """The command line's parser, laid out by FLAG_GROUPS.  Every flag defaults
    to None, so only flags given override the config file; it reads argv as
    `_normalize_argv` rewrote it."""
    parser = _ArgumentParser(
        prog="gnatsd.py", usage="%(prog)s [options]", add_help=False, allow_abbrev=False,
        description="gnatsd.py %s: a NATS server (nats-server %s compatible) in one Python file."
                    % (__version__, VERSION))
    for group_name, flags in FLAG_GROUPS:
        group = parser.add_argument_group(group_name)
        for spellings, dest, kind, metavar, help_text in flags:
            if kind == _BOOL:
                group.add_argument(*spellings, dest=dest, nargs="?", const=True, default=None,
                                   type=_parse_bool, metavar="", help=help_text)
            else:
                group.add_argument(*spellings, dest=dest, default=None, metavar=metavar,
                                   type=int if kind == _INT else str, help=help_text)
    parser.add_argument("command", nargs="?", help=argparse.SUPPRESS)
    return parser


def options_from_flags(args: argparse.Namespace) -> Options:
    """The Options the command line sets (None where a flag was not given)."""
    opts = Options()
    for name in ("host", "port", "server_name", "pid_file", "client_advertise", "ports_file_dir",
                 "http_port", "https_port",
                 "log_file", "logtime", "logtime_utc", "debug", "trace", "max_traced_msg_len",
                 "log_size_limit", "syslog", "remote_syslog",
                 "username", "password", "authorization"):
        value = getattr(args, name)
        if value is not None:
            setattr(opts, name, value)
    if args.debug_trace or args.debug_trace_verbose:
        opts.debug = opts.trace = True
    if args.trace_verbose:
        opts.trace = True
    opts.tls = _tls_from_flags(args)
    _cluster_from_flags(args, opts)
    return opts


def _cluster_from_flags(args: argparse.Namespace, opts: Options):
    """--cluster/--cluster_listen URL, --routes, --cluster_name and friends.
    Raises ConfigError."""
    for flag in ("cluster", "cluster_listen"):
        url = getattr(args, flag)
        if url:
            opts.cluster_host, opts.cluster_port, auth = parse_cluster_url(url)
            if auth is not None:
                opts.cluster_auth = auth
    if args.routes:
        opts.routes = [u.strip() for u in args.routes.split(",") if u.strip()]
    for name in ("cluster_name", "cluster_advertise", "no_advertise", "connect_retries"):
        if getattr(args, name) is not None:
            setattr(opts, name, getattr(args, name))


def _tls_from_flags(args: argparse.Namespace):
    """--tls --tlscert --tlskey --tlsverify --tlscacert: any of them replaces
    the file's tls block (Go's overrideTLS), and --tls=false turns TLS off
    (False).  None when no TLS flag was given.  Raises ConfigError."""
    if all(getattr(args, name) is None
           for name in ("tls", "tlscert", "tlskey", "tlsverify", "tlscacert")):
        return None
    if args.tls is False:
        return False
    if not args.tlscert:
        raise ConfigError("TLS Server certificate must be present and valid")
    if not args.tlskey:
        raise ConfigError("TLS Server private key must be present and valid")
    tls = TLSConfig(cert_file=args.tlscert, key_file=args.tlskey, ca_file=args.tlscacert or "",
                    verify=bool(args.tlsverify))
    tls.server_context()
    return tls


# `--help_tls`: Go's tlsUsage, then the names this build accepts.
TLS_USAGE = """
TLS configuration is specified in the tls section of a configuration file:

e.g.

    tls {
        cert_file:      "./certs/server-cert.pem"
        key_file:       "./certs/server-key.pem"
        ca_file:        "./certs/ca.pem"
        verify:         true
        verify_and_map: true

        cipher_suites: [
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        ]
        curve_preferences: [
            "CurveP256",
            "CurveP384",
            "CurveP521"
        ]
    }

Available cipher suites include:
"""


def tls_help_text() -> str:
    """Go's --help_tls, listing only the ciphers and curves this Python's
    OpenSSL can use (TLS 1.3 suites are always there)."""
    if load_ssl() is None:
        return "gnatsd.py: this Python has no ssl module, so TLS is not available\n"
    ciphers = [name for name, openssl_name in GO_CIPHER_SUITES.items()
               if not openssl_name or _openssl_cipher_available(openssl_name)]
    curves = []
    for name, openssl_name in GO_CURVES.items():
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ecdh_curve(openssl_name)
            curves.append(name)
        except ValueError:
            pass
    return (TLS_USAGE + "".join("    %s\n" % name for name in ciphers)
            + "\nAvailable curve preferences include:\n"
            + "".join("    %s\n" % name for name in curves))


def version_text() -> str:
    """What -v prints: the nats-server version we match, and our own."""
    return "nats-server: v%s (gnatsd.py %s)" % (VERSION, __version__)


# -- the server's controls: signals, reload, lame duck mode, ports file --
#
# What an operator (or a launcher) does to a running server, mixed into
# Server below: SIGINT/SIGTERM stop it, SIGHUP reloads the config file
# (Go's Reload), SIGUSR2 puts it in lame duck mode, SIGUSR1 reopens the log
# file; a ports file tells launchers where it listens.

class ServerControl:
    """Server methods for signals, config reload, lame duck mode and the
    ports file.  Signal handlers only set a flag and wake the loop; the loop
    (CoreServer.serve) acts on it between two turns."""

    # -- signals ---------------------------------------------------------------

    def install_signal_handlers(self):
        """SIGINT/SIGTERM stop; SIGUSR1 reopens the log file; SIGHUP reloads the
        config; SIGUSR2 enters lame duck mode (main thread only)."""

        def stop(signum, _frame):
            self.log.info('Trapped "%s" signal', _SIGNAL_NAMES.get(signum, signum))
            self.running = False
            self.waker.wake()

        def reopen(_signum, _frame):
            self.reopen_log = True   # the loop reopens; a handler must not close a file mid-write
            self.waker.wake()

        def reload(signum, _frame):
            self.log.info('Trapped "%s" signal', _SIGNAL_NAMES.get(signum, signum))
            self.reload_requested = True
            self.waker.wake()

        def lame_duck(_signum, _frame):
            self.lame_duck_requested = True
            self.waker.wake()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, reopen)
            signal.signal(signal.SIGHUP, reload)
            signal.signal(signal.SIGUSR2, lame_duck)

    # -- config reload (SIGHUP) -------------------------------------------------

    def reload(self):
        """Read the config file again and apply what changed (Go's Reload):
        logging, limits, authorization and accounts, permissions.  Clients
        whose credentials no longer pass are closed; subscriptions the new
        permissions deny are removed.  Any error keeps the old config, and
        is returned ("" when the reload went through)."""
        try:
            new = self.reloaded_options()
            changes = reload_changes(self.options, new, self.port, self.ws_port)
        except ConfigError as exc:
            self.log.error("Failed to reload server configuration: %s", exc)
            return str(exc)
        old, self.options = self.options, new
        self.pub_sizes.clear()          # sizes checked against the old max_payload
        self.pub_line_sizes.clear()
        self.pub_line_lens.clear()
        self.run_tokens.clear()
        for change in changes:
            self.log.info("Reloaded: %s", change)
        if self.log.handlers and any(getattr(old, a) != getattr(new, a)
                                     for a in _LOGGING_OPTIONS):
            configure_logging(new, self.log)
        self.trace = new.trace
        self.info_template = self.build_info()
        if old.accounts or new.accounts or old.trusted_keys or new.trusted_keys:
            self.accounts = build_accounts(new)
            self.global_account = self.accounts[GLOBAL_ACCOUNT]
            self.system_account = self.accounts[new.system_account or SYSTEM_ACCOUNT]
            self.system_client.rebind()
            self.cluster.adopt_accounts()
            self.leafs.adopt_accounts()
            arm_account_expiry(self)
        for client in list(self.clients.values()):
            client.reload_config(old)
        for route in self.cluster.conns:
            route.trace = self.trace
            route.msg_keys.clear()    # its entries hold the old accounts' sublists
        for leaf in self.leafs.conns:
            leaf.trace = self.trace   # (an untraced leaf's LMSGs skip the receivers' traces)
        for account in self.accounts.values():
            account.sublist.clear_cache()   # plans filtered by the old permissions
        if new.pid_file and new.pid_file != old.pid_file:
            _write_file(new.pid_file, str(os.getpid()))
        self.log.info("Reloaded server configuration")
        return ""

    def reloaded_options(self) -> Options:
        """The config file read again, flags on top, checked as at startup."""
        path = self.options.config_file
        if not path:
            raise ConfigError("can only reload config when a file is provided using -c "
                              "or --config")
        new = options_from_config(path).merge(self.flags).fill_defaults().validate()
        problem = startup_problem(new)
        if problem:
            raise ConfigError(problem)
        return new

    # -- lame duck mode ----------------------------------------------------------

    def enter_lame_duck_mode(self):
        """SIGUSR2 (Go's lameDuckMode): stop accepting, tell protocol-1
        clients with an INFO carrying `ldm`, wait the grace period, then close
        the clients spread over the rest of lame_duck_duration, and exit."""
        if self.lame_duck or self.listener is None:
            return
        self.lame_duck = True
        self.log.info("Entering lame duck mode, stop accepting new clients")
        for listener in (self.listener, self.ws_listener):
            if listener is not None and not listener.closed:
                self.unregister(listener)
                listener.sock.close()
                listener.closed = True
        for upgrading in list(self.ws_upgrading):     # (Go closes its HTTP server)
            upgrading.close(SERVER_SHUTDOWN, flush=False)
        self.cluster.changed(lame_duck=True)
        opts = self.options
        self.add_timer(opts.lame_duck_grace_period, self.lame_duck_close_clients)

    def lame_duck_close_clients(self):
        """Timer callback, after lame duck's grace period: close the clients
        one at a time, spread over the rest of lame_duck_duration (at most 1 s
        apart), then stop the loop."""
        self.log.info("Closing existing clients")
        clients = list(self.clients.values())
        spread = max(self.options.lame_duck_duration - self.options.lame_duck_grace_period, 1.0)
        interval = min(spread / len(clients), 1.0) if clients else 0.0

        def close_next():
            while clients:
                client = clients.pop(0)
                if not client.closed:
                    client.close(SERVER_SHUTDOWN)
                    break
            if clients:
                self.add_timer(random.uniform(interval / 2, interval), close_next)
            else:
                self.running = False  # then the loop closes everything and exits
        close_next()

    def write_ports_file(self):
        """Write `<program>_<pid>.ports` into ports_file_dir: the URLs of our
        listeners as JSON, as Go's PortsInfo gives them (`nats`, or `tls` when
        TLS is required; `monitoring`; `cluster`).  The program is this
        file's name as started, so run as `nats-server` (a symlink) it is
        Go's name.  On failure log it and leave `ports_file` empty (nothing
        to remove at shutdown)."""
        name = "%s_%d.ports" % (os.path.splitext(os.path.basename(sys.argv[0] or "gnatsd"))[0],
                                os.getpid())
        opts = self.options
        ports = {"nats": ["%s://%s" % ("tls" if opts.tls else "nats",
                                       _host_port(_advertise_host(self.host), self.port))]}
        if self.monitor is not None:
            host = opts.http_host or opts.host
            ports["monitoring"] = ["%s://%s" % ("http" if opts.http_port else "https",
                                                _host_port(_advertise_host(host),
                                                           self.monitor.port))]
        if self.cluster.listener is not None:
            ports["cluster"] = ["%s://%s" % ("tls" if opts.cluster_tls else "nats",
                                             _host_port(_advertise_host(self.cluster.host),
                                                        self.cluster.port))]
        self.ports_file = os.path.join(self.options.ports_file_dir, name)
        try:
            _write_file(self.ports_file, json.dumps(ports))
        except OSError as exc:
            self.log.error("Error writing ports file (%s): %s", self.ports_file, exc)
            self.ports_file = ""


# Go's names for the signals it traps.
_SIGNAL_NAMES = {signal.SIGINT: "interrupt", signal.SIGTERM: "terminated"}


# Options a reload may not change, with the Go field names its error uses.
_NOT_RELOADABLE = (("server_name", "ServerName"), ("host", "Host"), ("port", "Port"),
                   ("http_host", "HTTPHost"), ("http_port", "HTTPPort"),
                   ("http_base_path", "HTTPBasePath"), ("https_port", "HTTPSPort"),
                   ("system_account", "SystemAccount"),
                   ("cluster_host", "cluster host"), ("cluster_port", "cluster port"),
                   ("cluster_name", "cluster name"),
                   # (Go reconnects every route for these; not built here)
                   ("cluster_pool_size", "cluster pool_size"),
                   ("cluster_accounts", "cluster accounts"))

# What a reload logs for each changed option ("Reloaded: max_payload = 2048"),
# in the order of Go's Options struct.  A name ending in "=" shows the value.
_RELOADED = (
    ("trace", "trace ="), ("debug", "debug ="), ("logtime", "logtime ="),
    ("logtime_utc", "logtime_utc ="), ("max_connections", "max_connections ="),
    ("max_subscriptions", "max_subscriptions ="), ("no_auth_user", "no_auth_user ="),
    ("username", "authorization username"), ("password", "authorization password"),
    ("authorization", "authorization token"), ("auth_timeout", "authorization timeout ="),
    ("ping_interval", "ping_interval ="), ("ping_max", "ping_max ="),
    ("max_control_line", "max_control_line ="), ("max_payload", "max_payload ="),
    ("max_pending", "max_pending ="), ("write_deadline", "write_deadline ="),
    ("log_file", "log_file ="), ("log_size_limit", "log_size_limit ="),
    ("syslog", "syslog ="), ("remote_syslog", "remote_syslog ="),
    ("max_traced_msg_len", "max_traced_msg_len ="), ("pid_file", "pid_file ="),
    ("ports_file_dir", "ports_file_dir ="), ("lame_duck_duration", "lame_duck_duration ="),
    ("lame_duck_grace_period", "lame_duck_grace_period ="),
    ("client_advertise", "client_advertise ="), ("tls", "tls = enabled"),
)
def _websocket_reload_view(ws, ws_port: int) -> tuple:
    """A websocket block's settings as a reload compares them: all but its
    TLS, a random port (-1) as the port bound."""
    if ws is None:
        return ()
    fields = dict(vars(ws), tls=None)
    if fields["port"] == RANDOM_PORT:
        fields["port"] = ws_port
    return tuple(fields.values())


_DURATION_OPTIONS = ("ping_interval", "write_deadline", "lame_duck_duration",
                     "lame_duck_grace_period")
_LOGGING_OPTIONS = ("trace", "debug", "logtime", "logtime_utc", "log_file", "log_size_limit",
                    "syslog", "remote_syslog")


def reload_changes(old: Options, new: Options, actual_port: int, ws_port: int = 0) -> list:
    """What a reload from `old` to `new` changes, as Go logs it; raises
    ConfigError for an option that cannot change while running.  A random
    port (-1) in the new options means the port already bound (the
    websocket block's too: it may change its TLS only)."""
    for attr, go_name in _NOT_RELOADABLE:
        before, after = getattr(old, attr), getattr(new, attr)
        if attr == "port":
            before, after = actual_port, actual_port if after == RANDOM_PORT else after
        if attr == "cluster_accounts":      # shown as Go shows a []string: [A B]
            before, after = ("[%s]" % " ".join(v or ()) for v in (before, after))
        if before != after:
            raise ConfigError("config reload not supported for %s: old=%s, new=%s"
                              % (go_name, before, after))
    before, after = (_websocket_reload_view(opts.websocket, ws_port) for opts in (old, new))
    if before != after:
        raise ConfigError("config reload not supported for Websocket: old={%s}, new={%s}"
                          % (" ".join(map(str, before)), " ".join(map(str, after))))
    # Go compares these by pointer, so every reload reports them.
    changes = ["authorization users", "accounts"]
    for attr, text in _RELOADED:
        value = getattr(new, attr)
        if getattr(old, attr) == value:
            continue
        if not text.endswith("="):
            changes.append(text)
        elif isinstance(value, bool):
            changes.append("%s %s" % (text, "true" if value else "false"))
        elif attr in _DURATION_OPTIONS:
            changes.append("%s %s" % (text, format_duration(value)))
        else:
            changes.append("%s %s" % (text, ("%g" % value) if isinstance(value, float) else value))
    return changes


class Server(ServerControl, WebSocketServing, TLSServing, CoreServer):
    """The NATS server: the core of chapter 6 (CoreServer: the loop,
    clients, shutdown), TLS clients' start (TLSServing, chapter 10),
    the websocket port (WebSocketServing, chapter 11) and the
    controls above (ServerControl), composed as socketserver composes its
    servers from mix-ins.  `Server(options).start()` serves on a thread of
    its own (chapter 17 wraps it for embedding); main() calls `run()`."""


def main(argv: list | None = None) -> int:
    """Run the server from the command line; returns the exit status."""
    if argv is None and __spec__ is None:
        restart_as_module()           # `python3 gnatsd.py`: see there
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_arg_parser()
    try:
        args = parser.parse_args(_normalize_argv(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.help or args.command == "help":
        parser.print_help()
        return 0
    if args.version or args.command == "version":
        print(version_text())
        return 0
    if args.command:
        parser.print_usage(sys.stderr)
        print("gnatsd.py: unexpected argument %r" % args.command, file=sys.stderr)
        return 2
    if args.signal is not None:
        return send_signal(args.signal)
    for dest, reason in _NOT_YET.items():
        if getattr(args, dest, None) not in (None, False):
            print("gnatsd.py: %s: %s" % (_flag_spellings(dest), reason), file=sys.stderr)
            return 1
    if args.help_tls:
        sys.stdout.write(tls_help_text())
        return 0
    if args.install_alias:
        return install_alias(args.install_alias)
    try:
        opts = options_from_config(args.config_file) if args.config_file else Options(warnings=[])
    except ConfigError as exc:
        # GO-COMPAT: processConfigErr.Error (test_cli.py::test_config_field_error_bytes_match_go)
        print("nats-server: %s%s" % (exc, "\n" if exc.listed else ""), file=sys.stderr)
        return 1
    try:
        flags = options_from_flags(args)
    except ConfigError as exc:
        print("nats-server: %s" % exc, file=sys.stderr)
        return 1
    opts.merge(flags).fill_defaults()
    ignored = [(level, "%s: %s" % (_flag_spellings(dest), reason))
               for dest, (level, reason) in _IGNORED_FLAGS.items()
               if getattr(args, dest, None) not in (None, False)]
    opts.warnings.extend(text for level, text in ignored if level == logging.WARNING)
    if bcrypt_missing(opts):
        print("gnatsd.py: a bcrypt password hash is configured, but this Python cannot verify"
              " bcrypt (no crypt module with bcrypt support); install the optional 'bcrypt'"
              " package", file=sys.stderr)
        return 1
    if args.check_config:
        # Go checks the file only (validateOptions runs at startup), on stderr.
        print("nats-server: configuration file %s is valid" % (opts.config_file or "<none>"),
              file=sys.stderr)
        return 0
    try:
        opts.validate()
    except ConfigError as exc:
        print("nats-server: %s" % exc, file=sys.stderr)
        return 1
    problem = startup_problem(opts)
    if problem:
        print("nats-server: %s" % problem, file=sys.stderr)
        return 1
    try:
        configure_logging(opts)
    except (OSError, ValueError) as exc:
        if opts.syslog or opts.remote_syslog:
            print('nats-server: error connecting to syslog: "%s"' % exc, file=sys.stderr)
        else:
            print("nats-server: error opening file: %s" % _open_error(exc), file=sys.stderr)
        return 1
    for level, text in ignored:
        if level == logging.DEBUG:
            log.debug("%s", text)
    if not (opts.port == RANDOM_PORT or 0 <= opts.port <= 65535):
        # The socket layer would quietly wrap it around (99999 -> 34463).
        log.critical('Error listening on port: %s, "listen tcp: address %d: invalid port"',
                     _host_port(opts.host, opts.port), opts.port)
        return 1
    _raise_open_file_limit()
    tune_gc()
    server = Server(opts, flags)
    server.install_signal_handlers()
    release_startup_memory()
    tune_malloc()
    try:
        return server.run()
    except ConfigError as exc:  # e.g. "Can't start monitoring: ..."
        log.critical("%s", exc)
        return 1
    except OSError as exc:
        if opts.pid_file and exc.filename == opts.pid_file:
            log.critical("Could not write pidfile: %s", _open_error(exc))
        else:
            log.critical("%s", listen_error(opts.host, opts.port, exc))
        return 1


# The first lines of the script --install-alias writes (the second marks it ours).
_ALIAS_SCRIPT = """#!%s
# nats-server: runs gnatsd.py (written by gnatsd.py --install-alias)
import importlib.util, sys
spec = importlib.util.spec_from_file_location("gnatsd", %r)
gnatsd = sys.modules["gnatsd"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gnatsd)
sys.exit(gnatsd.main())
"""


def install_alias(directory: str) -> int:
    """`--install-alias DIR`: write DIR/nats-server, a script that runs this
    file with this Python, so tools that look for `nats-server` on PATH or
    in NATS_SERVER_BIN start gnatsd.py (and, named so, its ports file is
    Go's name).  An existing file is replaced only if an alias wrote it."""
    path = os.path.join(directory, "nats-server")
    marker = _ALIAS_SCRIPT.splitlines()[1]
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            if marker not in f.read(4096):
                print("gnatsd.py: %s exists and is not a gnatsd.py alias; not replaced" % path,
                      file=sys.stderr)
                return 1
    except FileNotFoundError:
        pass
    except OSError as exc:
        print("gnatsd.py: %s" % _open_error(exc), file=sys.stderr)
        return 1
    try:
        _write_file(path, _ALIAS_SCRIPT % (sys.executable, os.path.abspath(__file__)))
        os.chmod(path, 0o755)
    except OSError as exc:
        print("gnatsd.py: %s" % _open_error(exc), file=sys.stderr)
        return 1
    print(path)
    return 0


# `--signal` commands and the signal each sends (Go's CommandToSignal).
SIGNAL_COMMANDS = {"stop": signal.SIGKILL, "quit": signal.SIGINT, "term": signal.SIGTERM,
                   "reopen": signal.SIGUSR1, "reload": signal.SIGHUP, "ldm": signal.SIGUSR2}


def send_signal(spec: str) -> int:
    """`--signal CMD=PID` or `CMD=PIDFILE`: signal a running server and exit
    (Go's ProcessSignal).  Go finds the server with pgrep when no pid is
    given; gnatsd.py runs as "python", so it asks for the pid instead."""
    command, _, target = spec.partition("=")
    if command not in SIGNAL_COMMANDS:
        print('nats-server: unknown signal "%s"' % command, file=sys.stderr)
        return 1
    if not target:
        print("nats-server: no pid given for signal \"%s\": gnatsd.py does not search for "
              "running servers; use --signal %s=<pid> or %s=<pidfile>"
              % (command, command, command), file=sys.stderr)
        return 1
    pid_text = target
    if not target.isdigit():
        try:
            with open(target, encoding="ascii", errors="replace") as f:
                pid_text = f.read().strip()
        except OSError:
            pass
    if not pid_text.isdigit() or int(pid_text) <= 0:
        print("nats-server: invalid pid: %s" % target, file=sys.stderr)
        return 1
    try:
        os.kill(int(pid_text), SIGNAL_COMMANDS[command])
    except OSError as exc:
        print('nats-server: signal "%s" %s: %s' % (command, pid_text,
              (exc.strerror or str(exc)).lower()), file=sys.stderr)
        return 1
    return 0


def _open_error(exc: OSError) -> str:
    """A file error as Go words it: "open /x/y.log: no such file or directory"."""
    if exc.filename is None:
        return str(exc)
    return "open %s: %s" % (exc.filename, (exc.strerror or str(exc)).lower())


def tune_gc():
    """The server process's garbage collector: young collections far less
    often.  The server keeps many long-lived objects (subscriptions, cached
    results and plans), and a subject seen for the first time allocates a
    dozen small ones; at CPython's default (700) the collector's passes over
    them cost more than the work (a PUB to an uncached subject: 6.5 -> 3.9
    us with 20000).  Unreferenced cycles are still collected."""
    # HOT: see above; the CLI's process only, never an embedding program's.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


# What restart_as_module runs: this file imported as the module `gnatsd`
# (from its cached bytecode when there is one), then its main().
_MODULE_BOOT = ("import importlib.util, sys\n"
                "path = sys.argv[0] = sys.argv.pop(1)\n"
                "spec = importlib.util.spec_from_file_location('gnatsd', path)\n"
                "module = sys.modules['gnatsd'] = importlib.util.module_from_spec(spec)\n"
                "spec.loader.exec_module(module)\n"
                "sys.exit(module.main())\n")


def restart_as_module():
    """`python3 gnatsd.py`: replace this process (same pid, same open
    files) with one that imports the file as a module.  CPython keeps a
    script's syntax tree alive until the script's top level returns, which
    for a server is never: 19 MB of it here.  An import frees it as soon as
    it is compiled, and uses the cached bytecode from then on (the first
    start writes it, where Python may).  Only where exec keeps the pid
    (POSIX); with GNATSD_AS_SCRIPT=1, or if exec fails, it runs on as is."""
    if os.name != "posix" or not sys.executable or os.environ.get("GNATSD_AS_SCRIPT"):
        return
    original = getattr(sys, "orig_argv", None)          # Python 3.10+: keep -X, -u, ...
    flags = original[1:original.index(sys.argv[0])] if original and sys.argv[0] in original \
        else []
    try:
        os.execv(sys.executable, [sys.executable, *flags, "-c", _MODULE_BOOT,
                                  os.path.abspath(__file__), *sys.argv[1:]])
    except OSError:
        pass


def release_startup_memory():
    """Give the C heap's freed pages back to the system (glibc's
    malloc_trim), once, before serving.  `python3 gnatsd.py` compiles the
    whole file at every start (a script never gets cached bytecode), and the
    compiler's freed memory would otherwise stay resident for the process's
    life: 39 -> 25 MB idle here.  Nothing happens without glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (ImportError, OSError, AttributeError):
        pass        # musl (Alpine) has no malloc_trim; it returns memory itself


# glibc's heap (tune_malloc): blocks up to 2 MiB (a read's bytes) come from
# the heap, not a fresh mmap each, and it keeps up to 4 MiB free at its top.
MALLOC_MMAP_THRESHOLD = 2 * 1024 * 1024
MALLOC_TRIM_THRESHOLD = 4 * 1024 * 1024


def tune_malloc():
    """The server process's C heap (glibc): a read's bytes (up to 1 MiB) are
    allocated from the heap and go back to it, instead of a fresh mmap
    each, whose pages the kernel faults in and zeroes (92,000 page faults a
    second under 4 publishers; a fifth of the server's time in the kernel;
    1.35M -> 1.70M msgs/s).  glibc's own rule does that only for sizes it
    has seen freed, and trims the heap's top at 128 KiB."""
    # HOT: see above; the CLI's process only, never an embedding program's.
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, MALLOC_MMAP_THRESHOLD)     # M_MMAP_THRESHOLD
        libc.mallopt(-1, MALLOC_TRIM_THRESHOLD)     # M_TRIM_THRESHOLD
    except (ImportError, OSError, AttributeError):
        pass        # not glibc (musl has no mallopt)


def _raise_open_file_limit():
    """Allow as many sockets as the hard limit permits (Go does this too)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                        else max(soft, 1 << 20), hard))
    except (ImportError, ValueError, OSError):
        pass


# ############################################################################
# Part III. From Python
# ############################################################################
#
# The same file is a module: a Python program, notebook or test suite starts
# servers in its own process, with no binary to install (17).


# ============================================================================
# 17. Embedding and the pytest plugin
# ============================================================================
#
# nats.py's helper package (`nats.server`: run, run_cluster, ServerError)
# starts the Go binary from PATH and waits for "Server is ready" on its
# stderr.  Here the same names start a Server (chapters 6 and 14) in the
# calling process: `run()` turns keyword arguments (chapter 8's Options
# names) into Options, binds, serves on a thread of its own and returns the
# running server.  Nothing is shared between two servers in one process: each has its
# own loop, sockets and logger, and only `main()` installs signal handlers.
#
# What test authors lack with a binary is here as methods: kick one client,
# pause the loop as a hung server would, restart on the same ports, drop the
# routes.  A pytest plugin (the `pytest11` entry point of the package, or
# `pytest_plugins = ["gnatsd"]` beside a copied file) gives the fixtures
# nats_server, nats_server_factory and nats_cluster.
#
# Twins: nats.py's nats.server, and Go's in-process test servers
# (test/test.go's RunServer).  Entry points: run(), run_cluster(),
# EmbeddedServer, ServerCluster.

# Go's ClosedState for a client an operator disconnected (DisconnectClientByID).
KICKED = "Kicked"

# Options that ask for the server's own log output, as the command line has it.
_LOG_OUTPUT_OPTIONS = ("debug", "trace", "log_file", "syslog", "remote_syslog")


class ServerError(NatsError):
    """An embedded server could not start; the message is what the command
    line would have printed (nats.py's helper raises the same class name)."""


def run(port: int | None = 0, host: str | None = "127.0.0.1", config_path: str | None = None,
        **options) -> "EmbeddedServer":
    """Start a server in this process and return it once it is listening.

    `port` 0 (or -1) picks a free port; `host` defaults to loopback; None
    leaves either to the config file at `config_path` (or Go's defaults).
    Other keywords are Options names (`max_payload=1024`, `username=...`,
    `cluster_port=-1`, `routes=[url, ...]`, `debug=True`); `jetstream=True`
    is refused and `store_dir` ignored, as Go ignores it without JetStream.
    Logging: with debug, trace or a log file the server writes its own log
    as the command line would; otherwise its records go to the `gnatsd`
    logger, for the program's logging to show or not.  Raises ServerError."""
    return EmbeddedServer(embedded_options(port, host, config_path, options)).start()


def embedded_options(port, host, config_path, options: dict) -> Options:
    """Options from run()'s arguments, checked as main() checks the
    command line's.  Raises ServerError."""
    options = dict(options)
    if options.pop("jetstream", False):
        raise ServerError("JetStream is not supported by gnatsd.py")
    options.pop("store_dir", None)
    try:
        opts = options_from_config(config_path) if config_path else Options(warnings=[])
        given = Options(**options)
    except (ConfigError, TypeError) as exc:
        raise ServerError(str(exc)) from None
    if host is not None:
        given.host = host
    if port is not None:
        given.port = port
    try:
        opts.merge(given).fill_defaults().validate()
    except ConfigError as exc:
        raise ServerError(str(exc)) from None
    problem = startup_problem(opts)
    if problem:
        raise ServerError(problem)
    if bcrypt_missing(opts):
        raise ServerError("a bcrypt password hash is configured, but this Python cannot "
                          "verify bcrypt")
    return opts


class EmbeddedServer:
    """A server running in this process (what run() returns).

    Use: `.client_url` (also `.url`), `.host`, `.port`, `.is_running`,
    `.shutdown()`, `with` and `async with`; `.server` is chapter 6's Server
    of the current run.  Fault injection: `kick(cid)`, `pause()`/`resume()`,
    `restart()`, `drop_routes()`, `lame_duck_mode()`.  Every method may be
    called from any thread but the server's own."""

    def __init__(self, options: Options):
        self.options = options
        self.server: Server | None = None
        self.resume_event: threading.Event | None = None
        # A logger of its own, a child of the module's (records propagate
        # to it unless this server writes its own log); not registered with
        # `logging`, so a thousand servers leave nothing behind.
        self.log = logging.Logger("gnatsd.%s" % (options.server_name or "embedded"))
        self.log.parent = log

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return "<EmbeddedServer %s %s>" % (self.client_url if self.server else "-", state)

    # -- starting and stopping ---------------------------------------------------

    def start(self) -> "EmbeddedServer":
        """Bind and serve on a new loop thread.  Raises ServerError, having
        released whatever the attempt took."""
        if self.is_running:
            raise ServerError("already running on %s" % self.client_url)
        if any(getattr(self.options, name) for name in _LOG_OUTPUT_OPTIONS):
            try:
                configure_logging(self.options, self.log)   # its own output, as main() gives
            except (OSError, ValueError) as exc:
                raise ServerError("error opening file: %s" % _open_error(exc)) from None
        server = Server(copy.copy(self.options), logger=self.log)
        try:
            server.start()
        except BaseException as exc:
            server.running = False
            server.close_all()
            self.close_log()
            if isinstance(exc, ConfigError):
                raise ServerError(str(exc)) from None
            if isinstance(exc, OSError):
                raise ServerError(listen_error(server.options.host, server.options.port,
                                               exc)) from None
            raise
        self.server = server
        return self

    def shutdown(self, timeout: float = 5.0):
        """Close every connection and the listeners, and end the loop thread
        (waiting up to `timeout` s for it).  Safe to call twice."""
        self.resume()
        if self.server is not None:
            self.server.shutdown(timeout)
        self.close_log()

    def close_log(self):
        """Close this server's own log output (a log file), if it has one."""
        for handler in list(self.log.handlers):
            self.log.removeHandler(handler)
            handler.close()

    def restart(self) -> "EmbeddedServer":
        """Shut down, then start again on the same client, route and
        monitoring ports (a new server id, as a restarted process has)."""
        old = self.server
        self.shutdown()
        if old is not None:
            self.options.port = old.port
            if old.cluster.listener is not None:
                self.options.cluster_port = old.cluster.port
            if old.monitor is not None:
                setattr(self.options, "http_port" if self.options.http_port else "https_port",
                        old.monitor.port)
        return self.start()

    @property
    def is_running(self) -> bool:
        """True from start until shutdown (or lame duck mode) ends the loop."""
        thread = self.server.thread if self.server is not None else None
        return bool(thread is not None and thread.is_alive() and self.server.running)

    # -- where to connect ----------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the client port listens on."""
        return self.server.host

    @property
    def port(self) -> int:
        """The client port (the real one when started with port -1)."""
        return self.server.port

    @property
    def client_url(self) -> str:
        """nats://host:port to connect to (loopback for a wildcard address)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return "nats://%s" % _host_port(host, self.port)

    url = client_url

    @property
    def cluster_port(self) -> int:
        """The route port, or 0 without clustering."""
        cluster = self.server.cluster
        return cluster.port if cluster.listener is not None else 0

    # -- fault injection -----------------------------------------------------------

    def kick(self, cid: int) -> bool:
        """Disconnect client `cid` (nats.py's `nc.client_id`) as Go's
        DisconnectClientByID does; False if there is no such client."""
        def close():
            client = self.server.clients.get(cid)
            if client is None:
                return False
            client.close(KICKED)
            return True
        return self.server.call_in_loop(close)

    def pause(self, timeout: float = 5.0):
        """Hang the server: its loop stops reading, writing and timing out
        anything until resume() (the kernel still accepts connections, as it
        does for a hung process).  Returns once the loop has stopped."""
        if self.resume_event is not None:
            return
        hung = threading.Event()
        resume = self.resume_event = threading.Event()

        def hang():
            hung.set()
            resume.wait()
        self.server.call_soon(hang)
        if not hung.wait(timeout):
            raise TimeoutError("the server's loop did not stop")

    def resume(self):
        """End a pause(): the loop carries on where it stopped."""
        if self.resume_event is not None:
            self.resume_event.set()
            self.resume_event = None

    def drop_routes(self):
        """Close every route connection at once, as a network fault would;
        routes this server dialed are dialed again."""
        def close():
            for route in list(self.server.cluster.conns):
                route.close(KICKED, flush=False)
        self.server.call_in_loop(close)

    def lame_duck_mode(self):
        """Enter lame duck mode as SIGUSR2 does: stop accepting, close the
        clients over lame_duck_duration, then stop."""
        self.server.lame_duck_requested = True
        self.server.waker.wake()

    def route_count(self) -> int:
        """How many peers are routed to now (each by one or more connections)."""
        return len(self.server.cluster.routes)

    # -- context managers -----------------------------------------------------------

    def __enter__(self) -> "EmbeddedServer":
        return self

    def __exit__(self, *exc_info):
        self.shutdown()

    async def __aenter__(self) -> "EmbeddedServer":
        return self

    async def __aexit__(self, *exc_info):
        self.shutdown()


class ServerCluster:
    """Servers routed to each other in a full mesh (what run_cluster()
    returns): `.servers`, `.client_url()`, `.shutdown()`, `with`."""

    def __init__(self, servers: list):
        self.servers = servers

    def client_url(self) -> str:
        """The first server's client URL (nats.py's ServerCluster)."""
        return self.servers[0].client_url

    def client_urls(self) -> list:
        """Every server's client URL, for a client's server list."""
        return [s.client_url for s in self.servers]

    def wait_for_mesh(self, timeout: float = 10.0):
        """Wait until every server has a route to every other one."""
        deadline = time.monotonic() + timeout
        want = len(self.servers) - 1
        while any(s.route_count() < want for s in self.servers if s.is_running):
            if time.monotonic() > deadline:
                raise ServerError("cluster routes did not form within %.1f s" % timeout)
            time.sleep(0.01)

    def shutdown(self, timeout: float = 5.0):
        """Shut every node down, each within `timeout` seconds."""
        for server in self.servers:
            server.shutdown(timeout)

    def __enter__(self) -> "ServerCluster":
        return self

    def __exit__(self, *exc_info):
        self.shutdown()

    async def __aenter__(self) -> "ServerCluster":
        return self

    async def __aexit__(self, *exc_info):
        self.shutdown()


def run_cluster(size: int = 3, host: str = "127.0.0.1", timeout: float = 10.0,
                **options) -> ServerCluster:
    """Start `size` servers (node1, node2, ...) in cluster "cluster", each
    on free client and route ports and routed to the ones before it, and
    return once every route is up.  Keywords as run()'s, for every node.
    Raises ValueError for a size below 1, ServerError if a node fails."""
    if size < 1:
        raise ValueError("Cluster size must be at least 1")
    options.setdefault("cluster_name", "cluster")
    servers: list = []
    try:
        for i in range(size):
            servers.append(run(host=host, server_name="node%d" % (i + 1), cluster_host=host,
                               cluster_port=RANDOM_PORT,
                               routes=["nats://%s" % _host_port(host, s.cluster_port)
                                       for s in servers], **options))
        cluster = ServerCluster(servers)
        cluster.wait_for_mesh(timeout)
    except BaseException:
        for server in servers:
            server.shutdown()
        raise
    return cluster


# -- the pytest plugin --
#
# Defined only when pytest is already loaded (it is, whenever pytest loads
# this module as a plugin), so a plain `python3 gnatsd.py` never imports it
# and the file imports nothing outside the standard library.

if "pytest" in sys.modules:
    pytest = sys.modules["pytest"]

    @pytest.fixture
    def nats_server_factory():
        """`nats_server_factory(**options)` starts a server as run() does;
        every one it started is shut down after the test, pass or fail."""
        started: list = []

        def factory(**options) -> EmbeddedServer:
            server = run(**options)
            started.append(server)
            return server
        yield factory
        for server in started:
            server.shutdown()

    @pytest.fixture
    def nats_server(nats_server_factory) -> EmbeddedServer:
        """A server on a free loopback port for one test (`.url`)."""
        return nats_server_factory()

    @pytest.fixture
    def nats_cluster(request):
        """A routed cluster for one test; 3 servers, or the size given by
        `@pytest.mark.parametrize("nats_cluster", [N], indirect=True)`."""
        cluster = run_cluster(getattr(request, "param", 3))
        yield cluster
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())

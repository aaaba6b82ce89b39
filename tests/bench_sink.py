#!/usr/bin/env python3
"""A do-nothing NATS server: the load generator's ceiling for tests/bench.py.

`python3 tests/bench.py --sink` runs every scenario against this process
instead of a real server. It accepts connections, sends one INFO, answers
each PING with a PONG and throws everything else away, so what the bench
measures against it is how fast the generator itself can publish. The one
extra, for the request/reply scenario: on a connection whose first read
subscribes to an `_INBOX.` subject, each `PUB subj _INBOX.x n` is echoed
straight back as a MSG, which gives the requester's own round-trip floor.

It speaks just enough of the protocol for the bench, nothing more:

    accepted -> INFO -> (bytes; each "PING\\r\\n" answered, the rest dropped)* -> closed

Finding the PINGs must cost less than the server would, or the sink and not
the generator sets the ceiling (a scan of every byte tops out near 1 GB/s).
So a connection starts by scanning each read for PINGs, and once three
PINGs in a row are the same distance apart (the bench's publisher sends
batches of one length, each ending in a PING) it switches to checking only
where the next PING must end: a few bytes per batch. If a PING is not where
expected it goes back to scanning.

It starts like the real servers and logs the same two lines the bench
waits for:

    python3 tests/bench_sink.py -a 127.0.0.1 -p -1

Standard library only; Python 3.8+.
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import time

PING = b"PING\r\n"
PONG = b"PONG\r\n"
CRLF = b"\r\n"
# Reply subjects that get echoed (tests/bench.py's requester uses this one).
INBOX = b"_INBOX."
# Bytes read per recv; large, so bulk publishing costs few system calls.
RECV_SIZE = 1 << 20
# Shortest distance between PINGs that switches a connection to checking
# only where the next one must be, bytes.
MIN_PERIOD = 1024


class SinkConn:
    """One client and what the sink remembers about its byte stream."""

    __slots__ = ("sock", "offset", "tail", "ping_ends", "period", "next_ping",
                 "echo", "pending")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        # Bytes received before the current read.
        self.offset = 0
        # The last 5 bytes of the stream (a PING may straddle two reads).
        self.tail = b""
        # Stream offsets where the last three PINGs ended (scanning mode).
        self.ping_ends = []
        # Distance between PINGs once periodic (0: scanning), and where the
        # next one must end.
        self.period = 0
        self.next_ping = 0
        # Echo mode for a requester, and its unfinished request.
        self.echo = False
        self.pending = b""


def last_six(conn: SinkConn, buf: bytearray, end: int) -> bytes:
    """The 6 stream bytes ending at stream offset `end` (inside this read)."""
    stop = end - conn.offset
    if stop >= 6:
        return bytes(buf[stop - 6:stop])
    return (conn.tail + bytes(buf[:stop]))[-6:]


def scan_pings(conn: SinkConn, buf: bytearray, nbytes: int) -> int:
    """Scanning mode: count every PING in this read (one may straddle the
    previous read) and note where they end, to spot a period."""
    ends = []
    joined = conn.tail + bytes(buf[:5])
    split = joined.find(PING)
    if conn.tail and split >= 0:
        ends.append(conn.offset - len(conn.tail) + split + 6)
    at = buf.find(PING, 0, nbytes)
    while at >= 0:
        ends.append(conn.offset + at + 6)
        at = buf.find(PING, at + 6, nbytes)
    note_period(conn, ends)
    return len(ends)


def note_period(conn: SinkConn, ends: list) -> None:
    """After three PINGs at equal distances, switch to periodic mode."""
    conn.ping_ends = (conn.ping_ends + ends)[-3:]
    if len(conn.ping_ends) == 3:
        first, second, third = conn.ping_ends
        if third - second == second - first >= MIN_PERIOD:
            conn.period = third - second
            conn.next_ping = third + conn.period


def periodic_pings(conn: SinkConn, buf: bytearray, nbytes: int) -> int:
    """Periodic mode: check only where PINGs must end; rescan the rest of
    the read if one is missing."""
    end = conn.offset + nbytes
    found = 0
    while conn.next_ping <= end:
        if last_six(conn, buf, conn.next_ping) != PING:
            resume = conn.next_ping - conn.period - conn.offset
            conn.period, conn.ping_ends = 0, []
            return found + buf.count(PING, max(0, resume), nbytes)
        found += 1
        conn.next_ping += conn.period
    return found


def count_pings(conn: SinkConn, buf: bytearray, nbytes: int) -> int:
    """PINGs in this read, by whichever mode the connection is in."""
    if conn.period:
        found = periodic_pings(conn, buf, nbytes)
    else:
        found = scan_pings(conn, buf, nbytes)
    conn.tail = (conn.tail + bytes(buf[max(0, nbytes - 5):nbytes]))[-5:]
    conn.offset += nbytes
    return found


def echo_requests(conn: SinkConn, data: bytes) -> bytes:
    """Echo mode: answer PINGs and echo each `PUB subj _INBOX.x n` back as
    `MSG _INBOX.x 1 n`. Returns the reply."""
    buf = conn.pending + data
    out = []
    pos = 0
    while True:
        eol = buf.find(CRLF, pos)
        if eol < 0:
            break
        args = buf[pos:eol].split()
        if args[:1] == [b"PING"]:
            out.append(PONG)
        elif args[:1] == [b"PUB"]:
            size = int(args[-1])
            end = eol + 2 + size + 2
            if end > len(buf):
                break  # payload not here yet: keep the whole PUB for later
            if len(args) == 4 and args[2].startswith(INBOX):
                out.append(b"MSG %s 1 %d\r\n%s\r\n" % (args[2], size, buf[eol + 2:end - 2]))
            eol = end - 2
        pos = eol + 2
    conn.pending = buf[pos:]
    return b"".join(out)


def serve_readable(sel: selectors.BaseSelector, conn: SinkConn, buf: bytearray) -> None:
    """Read once from `conn` into the shared `buf` and answer; close on EOF."""
    try:
        nbytes = conn.sock.recv_into(buf)
    except OSError:
        nbytes = 0
    if not nbytes:
        sel.unregister(conn.sock)
        conn.sock.close()
        return
    if conn.offset == 0 and buf.find(b"SUB " + INBOX, 0, nbytes) >= 0:
        conn.echo = True
    if conn.echo:
        reply = echo_requests(conn, bytes(buf[:nbytes]))
        conn.offset += nbytes
    else:
        reply = PONG * count_pings(conn, buf, nbytes)
    if reply:
        try:
            conn.sock.sendall(reply)
        except OSError:
            pass  # the next read sees the close


def info_line(host: str, port: int) -> bytes:
    """The INFO every client gets on accept."""
    info = {"server_id": "bench-sink", "version": "0.0.0", "go": "none",
            "host": host, "port": port, "auth_required": False,
            "max_payload": 1048576}
    return b"INFO " + json.dumps(info).encode() + CRLF


def accept(sel: selectors.BaseSelector, listener: socket.socket, info: bytes) -> None:
    """Take one connection, greet it, and watch it for reads."""
    try:
        sock, _ = listener.accept()
    except OSError:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(True)
    sock.sendall(info)
    sel.register(sock, selectors.EVENT_READ, SinkConn(sock))


def log(text: str) -> None:
    """One log line on stderr in nats-server's shape."""
    stamp = time.strftime("%Y/%m/%d %H:%M:%S")
    sys.stderr.write("[%d] %s [INF] %s\n" % (os.getpid(), stamp, text))
    sys.stderr.flush()


def serve(host: str, port: int) -> None:
    """Listen on host:port (0 picks a free port) and serve until killed."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(4096)
    port = listener.getsockname()[1]
    info = info_line(host, port)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    log("Listening for client connections on %s:%d" % (host, port))
    log("Server is ready")
    buf = bytearray(RECV_SIZE)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                accept(sel, listener, info)
            else:
                serve_readable(sel, key.data, buf)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-a", "--addr", default="127.0.0.1", help="address to bind")
    parser.add_argument("-p", "--port", type=int, default=4222, help="port; -1 picks a free one")
    opts = parser.parse_args(argv)
    try:
        serve(opts.addr, 0 if opts.port == -1 else opts.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

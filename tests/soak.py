#!/usr/bin/env python3
"""Soak: gnatsd.py under many connections, churn and a minute of mixed traffic.

    make soak                                   # or: python tests/soak.py
    python tests/soak.py --hold 10000 --churn 50000 --duration 60 --rate 4000

Loopback only, bounded in time (each phase has a deadline, the whole run
`--timeout`).  One gnatsd.py process (started here on a free port, with a
monitor and `ping_interval: 20s`, so PINGs flow) and this load generator,
an asyncio program speaking the raw protocol (stdlib only):

0. warm-up: `--warmup` connections (10,000) come and go, filling the ring
          of closed connections that /connz?state=closed reads (bounded at
          10,000 entries); one ping interval later the baseline is taken.
1. hold:  `--hold` connections (10,000) that CONNECT, SUB to their own
          subject and to `soak.hold.all`, and stay; one message published
          to `soak.hold.all` must reach every one of them.
2. churn: `--churn` connections (50,000) opened and closed, `--churn-conc`
          at a time, while the held ones stay: most CONNECT, SUB and
          PING/PONG, then close (half politely, half with a reset); some
          close after INFO, some send half an op first.
3. mix:   `--duration` seconds (60) of traffic at `--rate` messages/s:
          publishers on 20 subjects `soak.mix.<a-d>.<0-4>`, subscribers on
          `soak.mix.>`, `soak.mix.<letter>.*` and one exact subject, two
          queue groups (one over everything, one over `soak.mix.c.*`), and
          requesters calling a queue group of responders.  Every subscriber
          reads as fast as it can, so none may lose a message: each plain
          subscriber gets exactly what matched, in order per publisher; each
          queue group gets every matching message exactly once; every request
          gets its one reply.
4. leave: every client goes; the server must be back to its starting
          connection count, its open file descriptors (/proc/PID/fd) to the
          start count.  One ping interval later its resident memory
          (/proc/PID/status VmRSS) is read.  CPython keeps freed memory for
          reuse rather than returning it to the OS, so RSS stays near the
          high-water mark of 10,000 live connections; to tell that from a
          leak, steps 1, 2 and 4 run a second time, and RSS after round 2 must
          be within `--rss-slack` MiB (16) of RSS after round 1.

The record of the run (inputs, connections held, RSS and fds at each step,
messages counted, date, machine) is written to tests/SOAK-RECORD.md (or
`--record`); the exit status is 0 only if every check passed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request

from bench import raise_fd_limit  # tests/bench.py, beside this file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GNATSD = os.path.join(ROOT, "gnatsd.py")
HOST = "127.0.0.1"
LISTEN_RE = re.compile(rb"Listening for client connections on \S+:(\d+)")
MONITOR_RE = re.compile(rb"Starting http monitor on \S+:(\d+)")
READY_RE = re.compile(rb"Server is ready")
CONNECT = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
LETTERS = "abcd"
SUBJECTS = [b"soak.mix.%s.%d" % (l.encode(), n) for l in LETTERS for n in range(5)]
MiB = 1024 * 1024


class SoakError(Exception):
    pass


# -- the server ---------------------------------------------------------------------


class Server:
    """gnatsd.py on 127.0.0.1 and free client and monitor ports."""

    def __init__(self, python: str, args: list):
        self.log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                     "soak-gnatsd-%d.log" % os.getpid())
        self.log = open(self.log_path, "w+b")
        self.proc = subprocess.Popen([python, GNATSD, "-a", HOST, "-p", "-1", "-m", "-1", *args],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 30
        while True:
            text = self.log_text()
            if LISTEN_RE.search(text) and MONITOR_RE.search(text) and READY_RE.search(text):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SoakError("gnatsd.py did not start:\n%s" % text[-2000:].decode())
            time.sleep(0.05)
        self.port = int(LISTEN_RE.search(text).group(1))
        self.mon_port = int(MONITOR_RE.search(text).group(1))

    def log_text(self) -> bytes:
        return os.pread(self.log.fileno(), 1 << 24, 0)

    def rss_kib(self) -> int:
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise SoakError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def varz(self) -> dict:
        url = "http://%s:%d/varz" % (HOST, self.mon_port)
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.loads(resp.read())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


# -- a raw client ---------------------------------------------------------------------


class Conn:
    """One client connection (asyncio streams) with a MSG reader."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, subs: bytes = b"", ping: bool = True) -> "Conn":
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        line = await reader.readuntil(b"\r\n")
        if not line.startswith(b"INFO "):
            raise SoakError("expected INFO, got %r" % line[:100])
        c = cls(reader, writer)
        writer.write(CONNECT + subs + (b"PING\r\n" if ping else b""))
        if ping:
            await c.expect_pong()
        return c

    async def expect_pong(self):
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"PONG\r\n":
                return
            if line == b"PING\r\n":
                self.writer.write(b"PONG\r\n")
            elif not line.startswith(b"INFO "):
                raise SoakError("expected PONG, got %r" % line[:100])

    async def next_msg(self) -> tuple:
        """(subject, sid, reply or None, payload) of the next MSG; PINGs answered."""
        readuntil = self.reader.readuntil
        while True:
            line = await readuntil(b"\r\n")
            if line.startswith(b"MSG "):
                parts = line.split()
                data = await self.reader.readexactly(int(parts[-1]) + 2)
                reply = parts[3] if len(parts) == 5 else None
                return parts[1], parts[2], reply, data[:-2]
            if line == b"PING\r\n":
                self.writer.write(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise SoakError("server said %r" % line)

    async def flush(self):
        """PING/PONG: everything sent before has been processed."""
        self.writer.write(b"PING\r\n")
        await self.expect_pong()

    def reset(self):
        """Close with RST (SO_LINGER 0): no FIN, no TIME_WAIT."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self):
        self.writer.close()


async def bounded(coros, limit: int):
    """Run coroutines (an iterator), `limit` at a time; return their results."""
    results = []
    it = iter(coros)

    async def worker():
        for coro in it:
            results.append(await coro)

    await asyncio.gather(*(worker() for _ in range(limit)))
    return results


# -- 1. hold ----------------------------------------------------------------------------


class Held:
    """A held connection: a task reads it for good, answering the server's
    PINGs and counting the broadcasts it gets."""

    def __init__(self, conn: Conn):
        self.conn = conn
        self.broadcasts = 0
        self.task = asyncio.ensure_future(self.read())

    async def read(self):
        while True:
            subject, _, _, data = await self.conn.next_msg()
            if subject == b"soak.hold.all" and data == b"hello":
                self.broadcasts += 1


async def hold_phase(server: Server, n: int, record: dict) -> list:
    t0 = time.monotonic()
    conns = await bounded((Conn.open(server.port, b"SUB soak.hold.%d 1\r\nSUB soak.hold.all 2\r\n"
                                     % i) for i in range(n)), 500)
    held = [Held(c) for c in conns]
    opened = time.monotonic() - t0
    v = server.varz()
    record["hold"] = {"connections": n, "open_s": round(opened, 1),
                      "varz_connections": v["connections"], "varz_subscriptions": v["subscriptions"],
                      "rss_kib": server.rss_kib(), "fds": server.fds()}
    check(v["connections"] >= n, "held %d connections, /varz says %d" % (n, v["connections"]))
    got = await broadcast(server, held, 1)
    record["hold"]["broadcast_received"] = got
    check(got == n, "broadcast reached %d of %d held connections" % (got, n))
    return held


async def broadcast(server: Server, held: list, k: int) -> int:
    """Publish the k-th message to soak.hold.all; how many held connections
    got it (within 30 s)."""
    pub = await Conn.open(server.port)
    pub.writer.write(b"PUB soak.hold.all 5\r\nhello\r\n")
    await pub.flush()
    pub.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = sum(h.broadcasts >= k for h in held)
        if got == len(held):
            break
        await asyncio.sleep(0.1)
    return sum(h.broadcasts == k for h in held)


# -- 2. churn ----------------------------------------------------------------------------


async def churn_one(port: int, i: int) -> str:
    kind = i % 10
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        c = Conn(reader, writer)
        await reader.readuntil(b"\r\n")
        if kind == 0:                      # gone right after INFO
            c.reset()
            return "info-only"
        if kind == 1:                      # half an op, then gone
            writer.write(CONNECT + b"PUB soak.churn 100\r\npart")
            await writer.drain()
            c.reset()
            return "half-op"
        writer.write(CONNECT + b"SUB soak.churn.%d 1\r\nSUB soak.churn.> 2\r\n" % i)
        await c.flush()
        if kind % 2:
            c.reset()
        else:
            writer.close()
            await writer.wait_closed()
        return "full"
    except (OSError, asyncio.IncompleteReadError) as exc:
        return "error: %s" % type(exc).__name__


async def churn_phase(server: Server, n: int, conc: int, record: dict):
    t0 = time.monotonic()
    results = await bounded((churn_one(server.port, i) for i in range(n)), conc)
    took = time.monotonic() - t0
    counts = {}
    for r in results:
        counts[r] = counts.get(r, 0) + 1
    record["churn"] = {"connections": n, "concurrency": conc, "seconds": round(took, 1),
                       "per_second": round(n / took), "outcomes": counts,
                       "rss_kib": server.rss_kib(), "fds": server.fds()}
    errors = sum(v for k, v in counts.items() if k.startswith("error"))
    check(errors == 0, "churn: %d connections failed: %r" % (errors, counts))


# -- 3. mix ------------------------------------------------------------------------------


def matches(pattern: bytes, subject: bytes) -> bool:
    p, s = pattern.split(b"."), subject.split(b".")
    for i, tok in enumerate(p):
        if tok == b">":
            return len(s) > i
        if i >= len(s) or (tok != b"*" and tok != s[i]):
            return False
    return len(p) == len(s)


class Consumer:
    """A subscriber connection recording (publisher, seq) of what it got."""

    def __init__(self, name: str, pattern: bytes, queue: bytes = b""):
        self.name, self.pattern, self.queue = name, pattern, queue
        self.got = []

    async def start(self, port: int):
        q = b" " + self.queue if self.queue else b""
        self.conn = await Conn.open(port, b"SUB %s%s 1\r\n" % (self.pattern, q))
        self.task = asyncio.ensure_future(self.read())

    async def read(self):
        while True:
            _, _, _, data = await self.conn.next_msg()
            pub, seq = data.split(b" ", 2)[:2]
            self.got.append((int(pub), int(seq)))


async def mix_phase(server: Server, duration: float, rate: int, record: dict) -> None:
    port = server.port
    consumers = [Consumer("all-1", b"soak.mix.>"), Consumer("all-2", b"soak.mix.>")]
    consumers += [Consumer("letter-" + l, b"soak.mix.%s.*" % l.encode()) for l in LETTERS]
    consumers += [Consumer("exact", b"soak.mix.b.3"), Consumer("tail", b"soak.*.*.4")]
    q1 = [Consumer("q1-%d" % i, b"soak.mix.>", b"q1") for i in range(4)]
    q2 = [Consumer("q2-%d" % i, b"soak.mix.c.*", b"q2") for i in range(3)]
    for c in consumers + q1 + q2:
        await c.start(port)

    responders = []
    for i in range(3):
        r = await Conn.open(port, b"SUB soak.svc.> svc 1\r\n")
        responders.append(r)

    async def respond(r, counter):
        while True:
            subject, _, reply, data = await r.next_msg()
            r.writer.write(b"PUB %s %d\r\n%s\r\n" % (reply, len(data), data))
            counter[0] += 1

    answered = [0]
    tasks = [asyncio.ensure_future(respond(r, answered)) for r in responders]

    # Publishers and requesters; pacing: batches every 10 ms.
    npub, nreq = 4, 2
    pubs = [await Conn.open(port) for _ in range(npub)]
    reqs = []
    for k in range(nreq):
        reqs.append(await Conn.open(port, b"SUB _INBOX.soak%d.* 1\r\n" % k))
    sent = [0] * npub
    asked = [0] * nreq
    replies = [[] for _ in range(nreq)]

    async def read_replies(k):
        while True:
            subject, _, _, data = await reqs[k].next_msg()
            replies[k].append(int(data))

    tasks += [asyncio.ensure_future(read_replies(k)) for k in range(nreq)]
    rnd = random.Random(7)
    pads = [b"." * rnd.choice((0, 8, 64, 200, 1000)) for _ in range(97)]
    t0 = time.monotonic()
    tick = 0.01
    per_tick = max(1, int(rate * tick / npub))
    req_per_tick = max(1, per_tick // 10)
    next_t = t0
    while time.monotonic() - t0 < duration:
        for p, conn in enumerate(pubs):
            out = []
            for _ in range(per_tick):
                seq = sent[p]
                body = b"%d %d %s" % (p, seq, pads[seq % 97])
                out.append(b"PUB %s %d\r\n%s\r\n" % (SUBJECTS[seq % len(SUBJECTS)], len(body),
                                                      body))
                sent[p] += 1
            conn.writer.write(b"".join(out))
        for k, conn in enumerate(reqs):
            out = []
            for _ in range(req_per_tick):
                out.append(b"PUB soak.svc.echo _INBOX.soak%d.%d %d\r\n%d\r\n" % (
                    k, asked[k], len(b"%d" % asked[k]), asked[k]))
                asked[k] += 1
            conn.writer.write(b"".join(out))
        await asyncio.gather(*(c.writer.drain() for c in pubs + reqs))
        next_t += tick
        delay = next_t - time.monotonic()
        await asyncio.sleep(max(0.0, delay))
    elapsed = time.monotonic() - t0
    for conn in pubs:        # (the others have a reader task: no PING here)
        await conn.flush()

    # Wait for everything to arrive (consumers that keep up lose nothing).
    def expected(pattern: bytes) -> list:
        return [(p, s) for p in range(npub) for s in range(sent[p])
                if matches(pattern, SUBJECTS[s % len(SUBJECTS)])]

    want = {c.name: expected(c.pattern) for c in consumers}
    want_q1, want_q2 = expected(b"soak.mix.>"), expected(b"soak.mix.c.*")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = all(len(c.got) >= len(want[c.name]) for c in consumers)
        done = done and sum(len(c.got) for c in q1) >= len(want_q1)
        done = done and sum(len(c.got) for c in q2) >= len(want_q2)
        done = done and all(len(replies[k]) >= asked[k] for k in range(nreq))
        if done:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # duplicates, if any, would be in by now
    for t in tasks + [c.task for c in consumers + q1 + q2]:
        t.cancel()

    rec = {"seconds": round(elapsed, 1), "rate_target": rate, "published": sum(sent),
           "rate_achieved": round(sum(sent) / elapsed), "requests": sum(asked),
           "replies": sum(map(len, replies)), "consumers": {}}
    for c in consumers:
        # Per publisher, in publish order: sorting by (pub, seq) keeps each
        # publisher's order, so equality also proves no reordering.
        in_order = all(a < b for a, b in zip(c.got, c.got[1:]) if a[0] == b[0])
        rec["consumers"][c.name] = {"pattern": c.pattern.decode(), "expected": len(want[c.name]),
                                    "received": len(c.got)}
        check(sorted(c.got) == want[c.name] and in_order,
              "%s (%s): %d received of %d expected%s" % (
                  c.name, c.pattern.decode(), len(c.got), len(want[c.name]),
                  "" if in_order else ", out of order"))
    for name, group, w in (("q1 (soak.mix.>)", q1, want_q1), ("q2 (soak.mix.c.*)", q2, want_q2)):
        union = sorted(x for c in group for x in c.got)
        rec["consumers"][name] = {"expected": len(w), "received": len(union),
                                  "per_member": [len(c.got) for c in group]}
        check(union == w, "queue group %s: %d received of %d expected (exactly once)" % (
            name, len(union), len(w)))
    for k in range(nreq):
        check(sorted(replies[k]) == list(range(asked[k])),
              "requester %d: %d replies to %d requests" % (k, len(replies[k]), asked[k]))
    v = server.varz()
    rec.update(rss_kib=server.rss_kib(), fds=server.fds(), slow_consumers=v["slow_consumers"],
               varz_in_msgs=v["in_msgs"], varz_out_msgs=v["out_msgs"])
    check(v["slow_consumers"] == 0, "slow consumers: %d" % v["slow_consumers"])
    record["mix"] = rec
    for c in consumers + q1 + q2:
        c.conn.close()
    for conn in pubs + reqs + responders:
        conn.close()


# -- checks and the record ----------------------------------------------------------------

FAILURES: list = []


def check(ok: bool, what: str):
    if not ok:
        FAILURES.append(what)
        print("FAIL: " + what, file=sys.stderr)


def machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MiB
    return "%s %s, %d CPUs (%s), %d MiB RAM, Python %s" % (
        platform.system(), platform.release(), os.cpu_count() or 0, cpu or platform.machine(),
        mem, platform.python_version())


def write_record(path: str, args, record: dict, ok: bool) -> None:
    kib = lambda k: "%.1f MiB" % (k / 1024)
    r = record
    lines = [
        "# Soak record",
        "",
        "Written by `tests/soak.py` (`make soak`); the last run is committed.",
        "",
        "- Date: %s" % r["date"],
        "- Machine: %s" % r["machine"],
        "- Server: gnatsd.py %s on %s" % (r.get("version", "?"), r["server_python"]),
        "- Inputs: hold %d, churn %d (%d at a time), mix %g s at %d msg/s; warm-up %d; "
        "server ping_interval %g s, ping_max 10" % (
            args.hold, args.churn, args.churn_conc, args.duration, args.rate, args.warmup,
            args.ping_interval),
        "- Load average when it started: %s (other work on the machine slows the "
        "rates, not the checks)" % r.get("loadavg", "?"),
        "- Result: **%s** in %.0f s" % ("PASS" if ok else "FAIL", r.get("total_s", 0)),
        "",
        "Reading it: fds and connections must come back to the start exactly.  RSS "
        "does not come back to the start, because CPython keeps freed memory for "
        "reuse rather than returning it to the OS: it stays near the high-water "
        "mark of the held connections.  A leak would raise it again in round 2 "
        "(the same hold and churn once more); reuse does not, hence the check "
        "on round 2's end against round 1's.",
        "",
        "| step | server RSS | server fds | notes |",
        "|------|-----------:|-----------:|-------|",
    ]
    if "warmup" in r:
        w = r["warmup"]
        lines.append("| warm-up | %s | | %d connections churned in %.1f s, filling the ring of "
                     "closed connections (up to 10,000) |" % (kib(w["rss_kib"]), w["connections"],
                                                           w["seconds"]))
    s = r.get("start", {"rss_kib": 0, "fds": 0})
    lines.append("| start | %s | %d | the baseline, one ping interval after the warm-up |" % (
        kib(s["rss_kib"]), s["fds"]))
    if "hold" in r:
        h = r["hold"]
        lines.append("| hold | %s | %d | %d connections open in %.1f s, /varz %d connections, "
                     "%d subscriptions; broadcast reached %d |" % (
                         kib(h["rss_kib"]), h["fds"], h["connections"], h["open_s"],
                         h["varz_connections"], h["varz_subscriptions"],
                         h.get("broadcast_received", 0)))
    if "churn" in r:
        c = r["churn"]
        lines.append("| churn | %s | %d | %d connections in %.1f s (%d/s), outcomes %s |" % (
            kib(c["rss_kib"]), c["fds"], c["connections"], c["seconds"], c["per_second"],
            ", ".join("%s %d" % kv for kv in sorted(c["outcomes"].items()))))
    if "mix" in r:
        m = r["mix"]
        lines.append("| mix | %s | %d | %d published in %.1f s (%d/s), %d requests, %d replies, "
                     "%d slow consumers; /varz in %d, out %d |" % (
                         kib(m["rss_kib"]), m["fds"], m["published"], m["seconds"],
                         m["rate_achieved"], m["requests"], m["replies"], m["slow_consumers"],
                         m["varz_in_msgs"], m["varz_out_msgs"]))
    if "hold_after" in r:
        lines.append("| hold, again | | | the broadcast after churn and mix reached %d |" %
                     r["hold_after"])
    if "end" in r:
        e = r["end"]
        lines.append("| end | %s | %d | all clients gone; %s RSS over start; /varz %d "
                     "connections |" % (kib(e["rss_kib"]), e["fds"],
                                        kib(e["rss_kib"] - s["rss_kib"]), e["varz_connections"]))
    if "round2" in r:
        r2 = r["round2"]
        if "hold" in r2:
            h = r2["hold"]
            lines.append("| round 2: hold | %s | %d | %d connections again; broadcast reached "
                         "%d |" % (kib(h["rss_kib"]), h["fds"], h["connections"],
                                   h.get("broadcast_received", 0)))
        if "churn" in r2:
            c = r2["churn"]
            lines.append("| round 2: churn | %s | %d | %d connections in %.1f s |" % (
                kib(c["rss_kib"]), c["fds"], c["connections"], c["seconds"]))
    if "end2" in r:
        e2, e = r["end2"], r["end"]
        lines.append("| round 2: end | %s | %d | all gone; %s RSS over round 1's end "
                     "(slack %d MiB); /varz %d connections |" % (
                         kib(e2["rss_kib"]), e2["fds"], kib(e2["rss_kib"] - e["rss_kib"]),
                         args.rss_slack, e2["varz_connections"]))
    if "mix" in r:
        lines += ["", "Messages per consumer in the mix (expected = what matched; every one "
                  "must arrive, queue groups exactly once across members):", "",
                  "| consumer | expected | received |", "|---|---:|---:|"]
        for name, c in r["mix"]["consumers"].items():
            extra = " (members %s)" % c["per_member"] if "per_member" in c else ""
            lines.append("| %s%s | %d | %d%s |" % (name, " " + c["pattern"] if "pattern" in c
                                                    else "", c["expected"], c["received"], extra))
    if FAILURES:
        lines += ["", "Failures:", ""] + ["- " + f for f in FAILURES]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


async def settle(server: Server, start: dict, ping_interval: float,
                 timeout: float = 60.0) -> dict:
    """Wait until the server is back to its start connections and fds, then
    one ping interval more: the ping timers of the connections that left
    fire (each holds a few hundred bytes until then)."""
    deadline = time.monotonic() + timeout
    while True:
        v = server.varz()
        fds = server.fds()
        if (v["connections"] <= start["varz_connections"] and fds <= start["fds"]) \
                or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(ping_interval + 2)
    return {"varz_connections": v["connections"], "fds": fds, "rss_kib": server.rss_kib()}


async def soak(args, server: Server, record: dict) -> None:
    # Warm-up: fill the ring of closed connections /connz?state=closed
    # reads (bounded at 10,000 entries, a few KB each), so that its memory
    # is in the baseline and not mistaken for a leak; then let the warm-up
    # connections' ping timers fire.
    t0 = time.monotonic()
    await bounded((churn_one(server.port, i) for i in range(args.warmup)), args.churn_conc)
    record["warmup"] = {"connections": args.warmup, "seconds": round(time.monotonic() - t0, 1),
                        "rss_kib": server.rss_kib()}
    await asyncio.sleep(args.ping_interval + 2)
    v = server.varz()
    record["version"] = v.get("version")
    record["start"] = start = {"rss_kib": server.rss_kib(), "fds": server.fds(),
                               "varz_connections": v["connections"]}
    t0 = time.monotonic()
    held = await hold_phase(server, args.hold, record) if args.hold else []
    print("hold: %s" % record.get("hold"), flush=True)
    if args.churn:
        await churn_phase(server, args.churn, args.churn_conc, record)
        print("churn: %s" % record["churn"], flush=True)
    if args.duration > 0:
        await mix_phase(server, args.duration, args.rate, record)
        print("mix: published %d, %d/s" % (record["mix"]["published"],
                                           record["mix"]["rate_achieved"]), flush=True)
    if held:
        record["hold_after"] = got = await broadcast(server, held, 2)
        check(got == len(held), "after churn and mix the broadcast reached %d of %d held "
                                "connections" % (got, len(held)))
        for h in held:
            h.task.cancel()
            h.conn.reset() if random.random() < 0.5 else h.conn.close()
    held = None
    record["end"] = end = await settle(server, start, args.ping_interval)
    print("end: %s" % end, flush=True)
    check_back(start, end)
    if args.hold or args.churn:
        # CPython keeps freed memory for reuse instead of giving it back to
        # the OS, so RSS stays near its high-water mark.  A leak would grow
        # it again on a second identical round; reuse does not.
        again = record["round2"] = {}
        held = await hold_phase(server, args.hold, again) if args.hold else []
        if args.churn:
            await churn_phase(server, args.churn, args.churn_conc, again)
        for h in held:
            h.task.cancel()
            h.conn.reset()
        held = None
        record["end2"] = end2 = await settle(server, start, args.ping_interval)
        print("end of round 2: %s" % end2, flush=True)
        check_back(start, end2)
        check(end2["rss_kib"] - end["rss_kib"] <= args.rss_slack * 1024,
              "server RSS %d KiB after round 2, %d KiB after round 1 (slack %d MiB)" % (
                  end2["rss_kib"], end["rss_kib"], args.rss_slack))
    record["total_s"] = time.monotonic() - t0


def check_back(start: dict, end: dict) -> None:
    """Connections and fds are back to their start counts."""
    check(end["varz_connections"] <= start["varz_connections"],
          "%d connections left after every client went" % end["varz_connections"])
    check(end["fds"] <= start["fds"], "server fds %d at the end, %d at the start" % (
        end["fds"], start["fds"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hold", type=int, default=10000, help="connections held (10000)")
    ap.add_argument("--churn", type=int, default=50000, help="connections churned (50000)")
    ap.add_argument("--churn-conc", type=int, default=200, help="churn concurrency (200)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of mixed traffic (60)")
    ap.add_argument("--rate", type=int, default=4000, help="published messages/s in the mix")
    ap.add_argument("--rss-slack", type=int, default=16,
                    help="MiB the end RSS may exceed the start RSS (16)")
    ap.add_argument("--warmup", type=int, default=10000,
                    help="connections churned before the baseline: fills the closed ring (10000)")
    ap.add_argument("--ping-interval", type=float, default=20.0,
                    help="the server's ping_interval, s (20): held clients answer PINGs")
    ap.add_argument("--python", default=sys.executable, help="Python to run gnatsd.py with")
    ap.add_argument("--record", default=os.path.join(HERE, "SOAK-RECORD.md"),
                    help="where to write the record ('' for nowhere)")
    ap.add_argument("--timeout", type=float, default=900, help="give up after this many s")
    args = ap.parse_args(argv)
    limit = raise_fd_limit(2 * args.hold + 2 * args.churn_conc + 1000)
    if limit < args.hold + args.churn_conc + 500:
        print("RLIMIT_NOFILE %d is too low for --hold %d" % (limit, args.hold), file=sys.stderr)
        return 2
    record = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": machine(),
              "loadavg": "%.1f %.1f %.1f" % os.getloadavg(),
              "server_python": subprocess.run([args.python, "-V"], capture_output=True,
                                              text=True).stdout.strip()}
    conf = os.path.join(os.environ.get("TMPDIR", "/tmp"), "soak-%d.conf" % os.getpid())
    with open(conf, "w") as f:
        # Publishers never read during the mix: PINGs may go unanswered
        # for a minute without the connection being closed as stale.
        f.write('ping_interval: "%gs"\nping_max: 10\n' % args.ping_interval)
    server = Server(args.python, ["-c", conf])
    try:
        asyncio.run(asyncio.wait_for(soak(args, server, record), args.timeout))
    except Exception as exc:  # recorded as a failure, with the record so far
        check(False, "the run stopped: %r" % exc)
    finally:
        if not server.alive():
            check(False, "the server died: exit %s\n%s" % (
                server.proc.returncode, server.log_text()[-2000:].decode(errors="replace")))
        server.stop()
        os.remove(conf)
    ok = not FAILURES
    if ok:
        os.remove(server.log_path)
    else:
        print("server log: %s" % server.log_path, file=sys.stderr)
    if args.record:
        write_record(args.record, args, record, ok)
        print("record written to %s" % os.path.relpath(args.record))
    print("soak: %s" % ("PASS" if ok else "FAIL: %d checks failed" % len(FAILURES)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

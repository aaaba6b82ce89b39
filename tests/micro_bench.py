"""In-process A/B micro bench of the client PUB path (issue 11).

    git show main:gnatsd.py > /tmp/base.py
    python3 tests/micro_bench.py [-n MESSAGES] /tmp/base.py gnatsd.py [scenario ...]

Loads two copies of gnatsd.py side by side, connects one publisher and the
scenario's subscribers to each over socketpairs (no event loop, no TCP), and
feeds both the same 20,000-message PUB stream through Client.process_input,
interleaving the two 9 times and keeping each one's best; it prints us/msg
for each copy and old/new.  Scenarios (SCEN below): pub (64 subjects,
16..256-byte payloads, nobody listening), pubsub (the same to one `real.>`
subscriber), 10k and 100k (that many subjects, one wildcard subscriber: the
sublist cache-miss path), 10k-pub (the same, nobody
listening), fanout8, queue4, reply, hpub, hreply (headers and a reply), same (one line
repeated), varied (one subject, varying sizes), runs8, runs32 and runs128 (as
pubsub, the subject drawn every 8, 32, 128 messages).  With no scenario, all.

The numbers are for comparing the two copies in one run; on a shared
machine repeat it and trust ratios, not absolute times.  The harness
itself leans: a file against itself reads 0.94-0.98x on some scenarios
(pubsub), so run that too before believing a few percent.
"""
import sys, time, random, socket, importlib.util
def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec); sys.modules[name] = m; spec.loader.exec_module(m); return m
class Wire:
    def __init__(self, g, server, connect=b""):
        self.server = server
        ours, self.peer = socket.socketpair(); ours.setblocking(False); self.peer.setblocking(False)
        server.next_cid += 1
        self.client = g.Client(server, ours, server.next_cid)
        server.clients[self.client.cid] = self.client
        if connect: self.feed(connect)
    def feed(self, data):
        self.client.process_input(data)
        while self.server.backlogged: self.server.run_backlog()
        self.server.flush_pending()
def stream(nmsg, nsubj=64, lo=16, hi=256, reply=False, hdr=False, run=1):
    random.seed(1); out = bytearray()
    for k in range(nmsg):
        if k % run == 0:
            s = b"real.%d" % random.randrange(nsubj)
        size = random.randint(lo, hi)
        r = b" _INBOX.%d" % k if reply else b""
        if hdr:
            h = b"NATS/1.0\r\nA: b\r\n\r\n"
            out += b"HPUB " + s + r + b" %d %d\r\n" % (len(h), len(h)+size) + h + b"x" * size + b"\r\n"
        else:
            out += b"PUB " + s + r + b" %d\r\n" % size + b"x" * size + b"\r\n"
    return bytes(out)
SCEN = {
 "pub": ([], {}), "pubsub": ([b"SUB real.> 1\r\n"], {}), "fanout8": ([b"SUB real.> 1\r\n"]*8, {}),
 "queue4": ([b"SUB real.> q 1\r\n"]*4, {}), "10k": ([b"SUB real.> 1\r\n"], {"nsubj": 10000}),
 "100k": ([b"SUB real.> 1\r\n"], {"nsubj": 100000}),
 "10k-pub": ([], {"nsubj": 10000}),
 "reply": ([b"SUB real.> 1\r\n"], {"reply": True}), "hpub": ([b"SUB real.> 1\r\n"], {"hdr": True}),
 "hreply": ([b"SUB real.> 1\r\n"], {"hdr": True, "reply": True}),
 "same": ([b"SUB real.> 1\r\n"], {"nsubj": 1, "lo": 128, "hi": 128}),
 "varied": ([b"SUB real.> 1\r\n"], {"nsubj": 1, "lo": 64, "hi": 192}),
 "runs8": ([b"SUB real.> 1\r\n"], {"run": 8}),
 "runs32": ([b"SUB real.> 1\r\n"], {"run": 32}),
 "runs128": ([b"SUB real.> 1\r\n"], {"run": 128}),
}
CONN = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
def setup(g, name, N):
    subs, kw = SCEN[name]
    server = g.Server(g.Options(host="127.0.0.1", port=-1))
    pub = Wire(g, server, CONN)
    recv = [Wire(g, server, CONN + s) for s in subs]
    data = stream(N, **kw)
    chunks = [data[i:i+65536] for i in range(0, len(data), 65536)]
    return server, pub, recv, chunks
def once(server, pub, recv, chunks):
    t = time.perf_counter()
    for c in chunks:
        pub.client.process_input(c)
        while server.backlogged: server.run_backlog()
        for w in recv: w.client.out.clear()
        server.pending.clear()
    return time.perf_counter() - t
if __name__ == "__main__":
    args = sys.argv[1:]
    N = 20000               # messages per stream; -n N for another
    if args[:1] == ["-n"]:
        N, args = int(args[1]), args[2:]
    old, new = load(args[0], "g_old"), load(args[1], "g_new")
    names = args[2:] or list(SCEN)
    for name in names:
        envs = [setup(old, name, N), setup(new, name, N)]
        best = [1e9, 1e9]
        for rep in range(9):
            for k in (0, 1):
                best[k] = min(best[k], once(*envs[k]))
        print("%-8s old %.3f  new %.3f us/msg  (%.2fx)" % (name, best[0]/N*1e6, best[1]/N*1e6, best[0]/best[1]))

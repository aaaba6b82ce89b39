"""A real browser over websocket: headless Chromium running nats.ws.

The page (tests/ws_browser/index.html and app.js) connects to the server's
websocket port with the nats.ws client, publishes to itself (a short message
and a 20 kB one that still fills several frames when compressed), does a
request/reply against a Python responder (nats-py over TCP on the same
server, which also publishes one message to the browser first), closes, and
writes what it saw into the DOM; it then posts that element back to the
local HTTP server that served it, and the test reads the element from there.
Waiting for that post is waiting for a fact: no virtual-time budget, which
would fire nats.ws's timers before the network answers.

nats.ws is the exact version pinned in tests/ws_browser/package.json and
package-lock.json, installed with `npm ci` into .cache/ws_browser (ignored
by git) and served from there as /nats.js: nothing comes from a CDN.  Runs
with compression on and off: Chromium always offers permessage-deflate, so
with it on, Go answers with its extension line and frames go compressed.
"""
from __future__ import annotations

import asyncio
import fcntl
import html
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import threading

import pytest

from conftest import ROOT, RawConn
# The same servers as tests/test_websocket.py: its `kind` fixture (over its
# WS_KINDS) and `ws_start` serve here unchanged.
from test_websocket import (PMC_OFFER, WS_KINDS, interest_barrier,  # noqa: F401
                            kind, ws_start)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NPM = shutil.which("npm")
PAGE_DIR = os.path.join(ROOT, "tests", "ws_browser")
NPM_DIR = os.path.join(ROOT, ".cache", "ws_browser")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (.ci/run installs Debian's)"),
    pytest.mark.skipif(NPM is None, reason="no npm (.ci/run installs Debian's nodejs and npm)"),
]


def pinned_version() -> str:
    with open(os.path.join(PAGE_DIR, "package.json")) as f:
        return json.load(f)["dependencies"]["nats.ws"]


@pytest.fixture(scope="session")
def nats_ws_bundle() -> str:
    """The path of nats.ws's ESM bundle, `npm ci`-installed into NPM_DIR
    (again only when the lock file changed; a file lock keeps parallel
    workers from installing at once)."""
    os.makedirs(NPM_DIR, exist_ok=True)
    lock_file = os.path.join(PAGE_DIR, "package-lock.json")
    installed = os.path.join(NPM_DIR, "node_modules", "nats.ws", "package.json")
    with open(os.path.join(NPM_DIR, ".install-lock"), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        stamp = os.path.join(NPM_DIR, "package-lock.json")
        current = os.path.exists(installed) and os.path.exists(stamp) and (
            open(stamp, "rb").read() == open(lock_file, "rb").read())
        if not current:
            shutil.copy(os.path.join(PAGE_DIR, "package.json"), NPM_DIR)
            shutil.copy(lock_file, NPM_DIR)
            out = subprocess.run([NPM, "ci", "--omit=optional", "--no-audit", "--no-fund",
                                  "--ignore-scripts", "--loglevel=error"],
                                 cwd=NPM_DIR, capture_output=True, text=True, timeout=300,
                                 stdin=subprocess.DEVNULL)
            assert out.returncode == 0, "npm ci failed:\n%s%s" % (out.stdout, out.stderr)
        with open(installed) as f:
            assert json.load(f)["version"] == pinned_version()
    bundle = os.path.join(NPM_DIR, "node_modules", "nats.ws", "esm", "nats.js")
    assert os.path.getsize(bundle) > 100_000
    return bundle


class PageServer(http.server.ThreadingHTTPServer):
    """Serves the page, its script and the nats.ws bundle on 127.0.0.1; keeps
    what the page posts to /result."""

    daemon_threads = True

    def __init__(self, bundle: str):
        super().__init__(("127.0.0.1", 0), PageHandler)
        self.files = {
            "/index.html": ("text/html; charset=utf-8", os.path.join(PAGE_DIR, "index.html")),
            "/app.js": ("text/javascript; charset=utf-8", os.path.join(PAGE_DIR, "app.js")),
            "/nats.js": ("text/javascript; charset=utf-8", bundle),
        }
        self.posted = threading.Event()
        self.result = None

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        entry = self.server.files.get(self.path.split("?", 1)[0])
        if entry is None:
            self.send_error(404)
            return
        with open(entry[1], "rb") as f:
            body = f.read()
        self.send_response(200)
        self.send_header("Content-Type", entry[0])
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.path != "/result":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.end_headers()
        self.server.result = body.decode()
        self.server.posted.set()

    def log_message(self, *args):
        pass


class Responder:
    """A nats-py client over TCP on its own event-loop thread: answers
    `browser.svc` with "pong:" + the request, after publishing to browser.push."""

    def __init__(self, url: str):
        import nats
        self.nats = nats
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.requests = []
        self.nc = self.call(self._start(url))

    def call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self, url: str):
        nc = await self.nats.connect(servers=[url], connect_timeout=2, allow_reconnect=False,
                                     max_reconnect_attempts=0)

        async def answer(msg):
            self.requests.append(msg.data)
            await nc.publish("browser.push", b"pushed by python")
            await msg.respond(b"pong:" + msg.data)
        await nc.subscribe("browser.svc", cb=answer)
        await interest_barrier(nc)  # subscribed on the server before the browser starts
        return nc

    def close(self):
        try:
            self.call(self.nc.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


def run_page(url: str, page: PageServer, profile: str, log_path: str,
             timeout: float = 45.0) -> str:
    """Open `url` in headless Chromium until the page posts its result; the
    browser (its own process group) is ended either way."""
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--enable-logging=stderr", "--user-data-dir=" + profile, url]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        try:
            posted = page.posted.wait(timeout)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    if not posted:
        with open(log_path, errors="replace") as f:
            console = [line for line in f if "CONSOLE" in line or "ERROR" in line][-30:]
        raise AssertionError("the page posted no result in %ss; chromium said:\n%s"
                             % (timeout, "".join(console)))
    return page.result


RESULT_RE = re.compile(r'<pre id="result" data-state="done">(.*)</pre>', re.S)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("compression", [True, False], ids=["compression_on", "compression_off"])
def test_nats_ws_in_headless_chromium(ws_start, nats_ws_bundle, tmp_path, compression):
    pytest.importorskip("nats")
    srv = ws_start("compression: %s" % ("true" if compression else "false"))
    tcp = RawConn(srv.host, srv.port)
    server_id = tcp.read_info()["server_id"]
    tcp.close()
    responder = Responder(srv.url)
    try:
        with PageServer(nats_ws_bundle) as page:
            url = "http://127.0.0.1:%d/index.html?ws=ws://127.0.0.1:%d" % (
                page.server_address[1], srv.ws_port)
            dom = run_page(url, page, str(tmp_path / "profile"), str(tmp_path / "chromium.log"))
    finally:
        responder.close()
    m = RESULT_RE.fullmatch(dom)
    assert m, dom[:2000]
    result = json.loads(html.unescape(m.group(1)))
    assert "error" not in result, result
    assert result == {
        "extensions": PMC_OFFER if compression else "",
        "server_id": server_id,
        "echo_small": "hello from the browser",
        "echo_big_length": 20000,
        "echo_big_intact": True,
        "reply": "pong:ping",
        "push": "pushed by python",
        "closed": True,
    }
    assert responder.requests == [b"ping"]

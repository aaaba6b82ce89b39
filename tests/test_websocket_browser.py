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

Once more over wss:// (compression on): the websocket block gets a `tls {}`
with the test CA's server certificate (tests/certs), and Chromium accepts
that one certificate only, by its public key: `--ignore-certificate-
errors-spki-list` with the SHA-256 of its SubjectPublicKeyInfo, never the
blanket `--ignore-certificate-errors`; a run without the pin is refused.
The page itself stays on http://127.0.0.1 (an http page may open wss://).

Every run also leaves a screenshot of the page with its result, taken from
the same browser through the DevTools protocol (`--remote-debugging-pipe`)
once the result is posted, in bench-results/ws_browser/ (ignored by git;
the run's summary lists the files).  A screenshot that cannot be taken or
written is a warning, never a failure.
"""
from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import html
import http.server
import json
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
import warnings

import pytest

from conftest import ROOT, RawConn, start_gnatsd, write_conf
# The same servers as tests/test_websocket.py: its `kind` fixture (over its
# WS_KINDS) and `ws_start` serve here unchanged.
from test_websocket import (PMC_OFFER, WS_KINDS, interest_barrier,  # noqa: F401
                            kind, ws_start)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NPM = shutil.which("npm")
PAGE_DIR = os.path.join(ROOT, "tests", "ws_browser")
NPM_DIR = os.path.join(ROOT, ".cache", "ws_browser")
CERTS = os.path.join(ROOT, "tests", "certs")
# Screenshots, one per case (bench-results/ is ignored by git).
SHOT_DIR = os.path.join(ROOT, "bench-results", "ws_browser")
BASH = shutil.which("bash")

WSS_LISTEN_RE = re.compile(rb"Listening for websocket clients on wss://(\S+):(\d+)")

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


def spki_pin(cert_path: str) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo, DER)) of a PEM certificate: the
    form Chromium's --ignore-certificate-errors-spki-list takes.  With the
    `cryptography` package where the venv has it, else the openssl CLI."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    except ImportError:
        der = spki_der_by_openssl(cert_path)
    else:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def spki_der_by_openssl(cert_path: str) -> bytes:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("neither the cryptography package nor the openssl CLI to pin the certificate")
    pem = subprocess.run([openssl, "x509", "-in", cert_path, "-noout", "-pubkey"],
                         check=True, capture_output=True, timeout=30).stdout
    return subprocess.run([openssl, "pkey", "-pubin", "-outform", "DER"], input=pem,
                          check=True, capture_output=True, timeout=30).stdout


class DevToolsPipe:
    """Chromium's --remote-debugging-pipe: DevTools protocol messages, JSON
    ended by a NUL, that Chromium reads from its fd 3 and answers on its fd 4.
    `wrap` puts the pipe's ends there (through bash, since dash takes
    single-digit fds only)."""

    def __init__(self):
        self.child_in, self.to_child = os.pipe()
        self.from_child, self.child_out = os.pipe()
        self.buf = b""
        self.last_id = 0

    def wrap(self, argv: list) -> list:
        return [BASH, "-c", 'exec "$0" "$@" 3<&%d 4>&%d %d<&- %d>&-' % (
            self.child_in, self.child_out, self.child_in, self.child_out), *argv]

    def started(self):
        """The child has its ends: close ours of them (EOF when it exits)."""
        os.close(self.child_in)
        os.close(self.child_out)

    def close(self):
        os.close(self.to_child)
        os.close(self.from_child)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 10.0) -> dict:
        self.last_id += 1
        msg = {"id": self.last_id, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.to_child, data):]
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self.buf:
                left = deadline - time.monotonic()
                # (poll, not select: a worker of the full suite has fds past 1024)
                poller = select.poll()
                poller.register(self.from_child, select.POLLIN)
                if left <= 0 or not poller.poll(left * 1000):
                    raise TimeoutError("no answer to %s in %ss" % (method, timeout))
                chunk = os.read(self.from_child, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed the DevTools pipe")
                self.buf += chunk
            raw, _, self.buf = self.buf.partition(b"\0")
            answer = json.loads(raw)
            if answer.get("id") == self.last_id:     # else an event: not asked for
                if "error" in answer:
                    raise RuntimeError("%s: %s" % (method, answer["error"]))
                return answer["result"]

    def screenshot(self, url: str) -> bytes:
        """A PNG of the page target whose URL is `url`, as it is now."""
        targets = self.call("Target.getTargets")["targetInfos"]
        page = [t for t in targets if t["type"] == "page" and t["url"] == url]
        assert page, "no page at %s among %s" % (url, [t["url"] for t in targets])
        session = self.call("Target.attachToTarget",
                            {"targetId": page[0]["targetId"], "flatten": True})["sessionId"]
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"},
                                          session)["data"])


def save_screenshot(devtools: DevToolsPipe, url: str, shot: str) -> str | None:
    """Write the page's screenshot to `shot`; a failure is a warning (the
    artifact is a nicety, the DOM is what the test checks)."""
    try:
        png = devtools.screenshot(url)
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), png[:16]
        os.makedirs(os.path.dirname(shot), exist_ok=True)
        with open(shot + ".tmp", "wb") as f:
            f.write(png)
        os.replace(shot + ".tmp", shot)
        return shot
    except Exception as exc:            # noqa: BLE001 -- any failure: note it, go on
        warnings.warn("no screenshot written to %s: %r" % (shot, exc))
        return None


def run_page(url: str, page: PageServer, profile: str, log_path: str, flags: tuple = (),
             shot: str | None = None, timeout: float = 45.0) -> tuple:
    """Open `url` in headless Chromium (with these extra flags) until the
    page posts its result; then, when `shot` is a path, screenshot the page
    into it.  The browser (its own process group) is ended either way.
    Returns (the posted DOM, the screenshot's path or None)."""
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--enable-logging=stderr", "--hide-scrollbars",
            "--window-size=760,420", "--user-data-dir=" + profile, *flags]
    devtools = None
    if shot is not None and BASH is None:
        warnings.warn("no screenshot written to %s: no bash to hand chromium its pipe" % shot)
    elif shot is not None:
        devtools = DevToolsPipe()
        argv = devtools.wrap(argv + ["--remote-debugging-pipe"])
    written = None
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv + [url], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True,
                                pass_fds=(devtools.child_in, devtools.child_out) if devtools else ())
        try:
            if devtools:
                devtools.started()
            posted = page.posted.wait(timeout)
            if posted and devtools:
                written = save_screenshot(devtools, url, shot)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            if devtools:
                devtools.close()
    if not posted:
        with open(log_path, errors="replace") as f:
            console = [line for line in f if "CONSOLE" in line or "ERROR" in line][-30:]
        raise AssertionError("the page posted no result in %ss; chromium said:\n%s"
                             % (timeout, "".join(console)))
    return page.result, written


RESULT_RE = re.compile(r'<pre id="result" data-state="done">(.*)</pre>', re.S)


def page_result(dom: str) -> dict:
    m = RESULT_RE.fullmatch(dom)
    assert m, dom[:2000]
    return json.loads(html.unescape(m.group(1)))


def browse(srv, ws_url: str, bundle: str, tmp_path, shot: str | None, record_property,
           flags: tuple = ()) -> tuple:
    """The page against `srv` (its websocket at `ws_url`), with the Python
    responder on its TCP port: (the page's result, the requests the
    responder saw).  The screenshot, when written, is recorded as an
    artifact (conftest lists them after the run)."""
    responder = Responder(srv.url)
    try:
        with PageServer(bundle) as page:
            url = "http://127.0.0.1:%d/index.html?ws=%s" % (page.server_address[1], ws_url)
            dom, written = run_page(url, page, str(tmp_path / "profile"),
                                    str(tmp_path / "chromium.log"), flags, shot)
    finally:
        responder.close()
    if written:
        print("screenshot:", written)
        record_property("artifact", os.path.relpath(written, ROOT))
    return page_result(dom), responder.requests


def server_id_of(srv) -> str:
    tcp = RawConn(srv.host, srv.port)
    try:
        return tcp.read_info()["server_id"]
    finally:
        tcp.close()


def expected(server_id: str, compression: bool) -> dict:
    return {
        "extensions": PMC_OFFER if compression else "",
        "server_id": server_id,
        "echo_small": "hello from the browser",
        "echo_big_length": 20000,
        "echo_big_intact": True,
        "reply": "pong:ping",
        "push": "pushed by python",
        "closed": True,
    }


@pytest.mark.timeout(240)
@pytest.mark.parametrize("compression", [True, False], ids=["compression_on", "compression_off"])
def test_nats_ws_in_headless_chromium(ws_start, nats_ws_bundle, tmp_path, record_property,
                                      kind, compression):
    pytest.importorskip("nats")
    srv = ws_start("compression: %s" % ("true" if compression else "false"))
    shot = os.path.join(SHOT_DIR, "ws-%s-compression_%s.png"
                        % (kind, "on" if compression else "off"))
    result, requests = browse(srv, "ws://127.0.0.1:%d" % srv.ws_port, nats_ws_bundle,
                              tmp_path, shot, record_property)
    assert "error" not in result, result
    assert result == expected(server_id_of(srv), compression)
    assert requests == [b"ping"]


# -- wss:// ----------------------------------------------------------------------------


def wss_conf(tmp_path, name: str = "wss.conf") -> str:
    return write_conf(tmp_path, (
        "websocket {\n  host: 127.0.0.1\n  port: -1\n  compression: true\n"
        "  tls {\n    cert_file: \"%s\"\n    key_file: \"%s\"\n  }\n}\n"
        % (os.path.join(CERTS, "server-cert.pem"), os.path.join(CERTS, "server-key.pem"))), name)


def wss_port(srv) -> int:
    m = srv.wait_for_log(WSS_LISTEN_RE)
    assert m.group(1) == b"127.0.0.1"
    return int(m.group(2))


def test_the_spki_pin_is_the_same_by_cryptography_and_by_openssl():
    """Both ways to the pin agree (so the fallback is not dead code)."""
    pytest.importorskip("cryptography")
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI")
    cert = os.path.join(CERTS, "server-cert.pem")
    by_openssl = base64.b64encode(hashlib.sha256(spki_der_by_openssl(cert)).digest()).decode()
    assert spki_pin(cert) == by_openssl
    assert len(base64.b64decode(by_openssl)) == 32


@pytest.mark.timeout(240)
def test_nats_ws_over_wss_in_headless_chromium(start, nats_ws_bundle, tmp_path, record_property,
                                               kind):
    """The same page over wss:// (compression on, so the deflated frames
    travel inside TLS); Chromium trusts the server's certificate by its
    public key only (the page's `negotiatedExtensions` and nats.ws's
    connection both go through TLS)."""
    pytest.importorskip("nats")
    srv = start("-c", wss_conf(tmp_path))
    port = wss_port(srv)
    pin = spki_pin(os.path.join(CERTS, "server-cert.pem"))
    shot = os.path.join(SHOT_DIR, "wss-%s-compression_on.png" % kind)
    result, requests = browse(srv, "wss://127.0.0.1:%d" % port, nats_ws_bundle, tmp_path, shot,
                              record_property, ("--ignore-certificate-errors-spki-list=" + pin,))
    assert "error" not in result, result
    assert result == expected(server_id_of(srv), True)
    assert requests == [b"ping"]


@pytest.mark.timeout(120)
def test_wss_without_the_pin_is_refused_by_chromium(nats_ws_bundle, tmp_path, record_property):
    """The control: the same wss:// page with no pin (or another key's pin)
    fails to connect, so the pin, not some leniency, is what lets it in."""
    pytest.importorskip("nats")
    srv = start_gnatsd("-c", wss_conf(tmp_path))
    try:
        port = wss_port(srv)
        other = spki_pin(os.path.join(CERTS, "wrong-cert.pem"))
        assert other != spki_pin(os.path.join(CERTS, "server-cert.pem"))
        result, requests = browse(srv, "wss://127.0.0.1:%d" % port, nats_ws_bundle, tmp_path,
                                  None, record_property,
                                  ("--ignore-certificate-errors-spki-list=" + other,))
    finally:
        srv.stop()
    assert set(result) == {"error"}, result
    assert requests == []
    # -202 is ERR_CERT_AUTHORITY_INVALID: refused for the certificate, not anything else.
    with open(tmp_path / "chromium.log", errors="replace") as f:
        assert "net_error -202" in f.read()

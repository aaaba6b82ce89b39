"""The monitor's dashboard and Prometheus metrics (issue 19).

`/` serves a browser the dashboard (its Accept asks for HTML) and everyone
else Go's index of links; `/metrics` is the Prometheus text format.  The
dashboard is checked in a real browser: headless Chromium (Debian's
`chromium`, which .ci/run installs) loads it while traffic flows, runs its
JavaScript, and the DOM it leaves (`--dump-dom`) shows the numbers /varz
gives; a screenshot is saved to bench-results/dashboard.png.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request

import pytest

from test_system_account import SYS_SUBS
from conftest import ROOT, RawConn, connected, start_gnatsd, t_ping_pong, write_conf

MON_RE = re.compile(rb"Starting http monitor on (\S+):(\d+)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def with_monitor(*args):
    srv = start_gnatsd("-m", "-1", *args)
    srv.mon_port = int(srv.wait_for_log(MON_RE).group(2))
    return srv


def get(srv, path: str, accept: str | None = None) -> tuple:
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (srv.mon_port, path))
    if accept is not None:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def varz(srv) -> dict:
    return json.loads(get(srv, "/varz")[2])


client = connected


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


# -- the page ------------------------------------------------------------------


def test_a_browser_gets_the_dashboard_and_curl_the_links():
    srv = with_monitor()
    try:
        status, kind, page = get(srv, "/", BROWSER_ACCEPT)
        assert (status, kind) == (200, "text/html; charset=utf-8")
        assert b"<script>" in page and b'const BASE = "";' in page
        assert b"https://" not in page.split(b"<footer")[0]     # nothing fetched elsewhere
        for accept in (None, "*/*"):
            status, kind, page = get(srv, "/", accept)
            assert status == 200 and b"<script>" not in page
            assert b"/varz" in page and b"/connz" in page
    finally:
        srv.stop()


def test_the_dashboard_respects_http_base_path(tmp_path):
    conf = write_conf(tmp_path, 'http_base_path: "/mon"\n')
    srv = with_monitor("-c", conf)
    try:
        page = get(srv, "/mon/", BROWSER_ACCEPT)[2]
        assert b'const BASE = "/mon";' in page
        assert b'href="/mon/connz"' in page and b'href="/mon/metrics"' in page
    finally:
        srv.stop()


# -- /metrics ------------------------------------------------------------------


def parse_metrics(text: str) -> dict:
    """{name: (type, documentation, [(labels, value)])}, with the official
    client's parser (which raises on a line the format does not allow)."""
    from prometheus_client.parser import text_string_to_metric_families
    return {f.name: (f.type, f.documentation, [(s.labels, s.value) for s in f.samples])
            for f in text_string_to_metric_families(text)}


def scrape(srv, query: str = "") -> dict:
    status, kind, body = get(srv, "/metrics" + query)
    assert (status, kind) == (200, "text/plain; version=0.0.4; charset=utf-8")
    for line in body.decode().splitlines():
        assert line and (line.startswith("# HELP ") or line.startswith("# TYPE ")
                         or re.match(r'^gnatsd_\w+\{[^}]*\} \S+$', line)), line
    return parse_metrics(body.decode())


def test_metrics_parse_and_match_varz():
    srv = with_monitor()
    try:
        sub, pub = client(srv), client(srv)
        sub.send(b"SUB m.* 1\r\n")
        t_ping_pong(sub)
        pub.send(b"PUB m.a 5\r\nhello\r\n" * 20)
        t_ping_pong(pub)
        first = scrape(srv)
        v = varz(srv)
        server_id = {"server_id": v["server_id"]}
        for key in ("in_msgs", "out_msgs", "in_bytes", "out_bytes", "connections",
                    "subscriptions", "total_connections", "slow_consumers"):
            kind, doc, samples = first["gnatsd_varz_" + key]
            assert doc and samples == [(server_id, float(v[key]))], key
        assert first["gnatsd_varz_in_msgs"][0] == "counter"
        assert first["gnatsd_varz_connections"][0] == "gauge"
        assert first["gnatsd_connz_num_connections"][2][0][1] == 2.0
        assert first["gnatsd_healthz_status"][2] == [(server_id, 1.0)]
        # (one client SUB, and the $SYS requests the server answers)
        assert first["gnatsd_subsz_num_subscriptions"][2][0][1] == 1.0 + SYS_SUBS
        # Counters only grow across scrapes.
        pub.send(b"PUB m.b 3\r\nabc\r\n" * 7)
        t_ping_pong(pub)
        second = scrape(srv)
        for name, (kind, _doc, samples) in second.items():
            if kind == "counter" and name in first:
                assert samples[0][1] >= first[name][2][0][1], name
        assert second["gnatsd_varz_in_msgs"][2][0][1] == first["gnatsd_varz_in_msgs"][2][0][1] + 7
    finally:
        srv.stop()


def test_per_connection_gauges_only_when_asked_and_bounded():
    srv = with_monitor()
    try:
        conns = [client(srv) for _ in range(3)]
        assert not any(name.startswith("gnatsd_connz_conn_") for name in scrape(srv))
        asked = scrape(srv, "?conns=2")
        samples = asked["gnatsd_connz_conn_out_msgs"][2]
        assert len(samples) == 2
        assert {"server_id", "cid", "name", "ip"} == set(samples[0][0])
        for c in conns:
            c.close()
    finally:
        srv.stop()


def test_metrics_prefix_and_switch(tmp_path):
    conf = write_conf(tmp_path, 'http_metrics_prefix: "nats"\n')
    srv = with_monitor("-c", conf)
    try:
        body = get(srv, "/metrics")[2].decode()
        assert "nats_varz_in_msgs{" in body and "gnatsd_" not in body
    finally:
        srv.stop()
    conf = write_conf(tmp_path, "http_metrics: false\n", "off.conf")
    srv = with_monitor("-c", conf)
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            get(srv, "/metrics")
        assert err.value.code == 404
    finally:
        srv.stop()


def test_label_values_are_escaped():
    srv = with_monitor()
    try:
        c = RawConn(srv.host, srv.port)
        c.read_info()
        c.send(b'CONNECT {"verbose":false,"name":"a \\"quoted\\" \\\\ name"}\r\n')
        t_ping_pong(c)
        samples = scrape(srv, "?conns=1")["gnatsd_connz_conn_in_msgs"][2]
        assert samples[0][0]["name"] == 'a "quoted" \\ name'
    finally:
        srv.stop()


def test_page_and_metrics_under_200_parallel_requests():
    srv = with_monitor()
    try:
        results = []
        go = threading.Event()

        def fetch(i):
            go.wait(10)
            try:
                if i % 2:
                    results.append(get(srv, "/metrics")[0])
                else:
                    results.append(get(srv, "/", BROWSER_ACCEPT)[0])
            except Exception as exc:        # the assertion below names it
                results.append(repr(exc))
        threads = [threading.Thread(target=fetch, args=(i,), daemon=True) for i in range(200)]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(30)
        assert results.count(200) == 200, [r for r in results if r != 200][:3]
    finally:
        srv.stop()


# -- in a browser --------------------------------------------------------------


def chromium(*args, timeout: float = 60) -> str:
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--disable-dev-shm-usage", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (.ci/run installs Debian's)")
@pytest.mark.timeout(180)
def test_the_dashboard_in_headless_chromium_shows_what_varz_says():
    srv = with_monitor()
    stop = threading.Event()
    try:
        sub = client(srv)
        sub.send(b"SUB live.> 1\r\n")
        t_ping_pong(sub)
        pub = client(srv)

        def traffic():
            n = 0
            while not stop.is_set():
                pub.send(b"PUB live.%d 16\r\n0123456789abcdef\r\n" % (n % 10) * 50)
                n += 1
                sub._fill(time.monotonic() + 0.005)
                sub.buf.clear()
                time.sleep(0.01)
        flowing = threading.Thread(target=traffic, daemon=True)
        flowing.start()
        before = varz(srv)
        url = "http://127.0.0.1:%d/" % srv.mon_port
        dom = chromium("--virtual-time-budget=6000", "--dump-dom", url)
        after = varz(srv)
        values = dict(re.findall(r'id="(\w+)"[^>]*data-value="([^"]*)"', dom))
        assert int(re.search(r'id="charts"[^>]*data-samples="(\d+)"', dom).group(1)) >= 2
        assert re.search(r'id="status" class="ok">live<', dom), dom[-2000:]
        # Stable numbers are /varz's exactly; moving ones lie between two reads.
        for key in ("connections", "subscriptions", "total_connections", "slow_consumers",
                    "routes"):
            assert int(values[key]) == before[key] == after[key], key
        for key in ("in_msgs", "out_msgs", "in_bytes", "out_bytes"):
            assert before[key] <= int(values[key]) <= after[key], key
        assert float(values["in_msgs_rate"]) > 0 and float(values["out_msgs_rate"]) > 0
        assert values["server_name"] if "server_name" in values else True
        assert before["server_name"] in dom
        # The top-connections table lists both clients.
        table = dom.split('id="top_msgs"')[1].split("</table>")[0]
        assert table.count("<tr>") == 1 + 2
        shot = os.path.join(ROOT, "bench-results", "dashboard.png")
        os.makedirs(os.path.dirname(shot), exist_ok=True)
        chromium("--virtual-time-budget=6000", "--window-size=1100,1250",
                 "--screenshot=" + shot, url)
        assert os.path.getsize(shot) > 10000
    finally:
        stop.set()
        srv.stop()

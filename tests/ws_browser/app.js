// The browser half of tests/test_websocket_browser.py.  Every step's outcome
// goes into one JSON object in #result; the test compares it with what the
// server and its Python responder must have done.
import { connect, StringCodec } from "./nats.js";

const params = new URLSearchParams(location.search);
const out = document.getElementById("result");
document.getElementById("target").textContent = "nats.ws \u2192 " + params.get("ws");
const sc = StringCodec();

// Printable pseudo-random text: it does not deflate to almost nothing, so a
// compressed echo still spans several of Go's 4096-byte browser frames.
function noise(n) {
  let x = 12345;
  const chars = [];
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    chars.push(String.fromCharCode(33 + ((x >> 16) % 94)));
  }
  return chars.join("");
}

// The extensions the server agreed to, seen on a bare WebSocket (Chromium
// always offers permessage-deflate; nats.ws does not expose its socket).
function negotiatedExtensions(url) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.onopen = () => { resolve(ws.extensions); ws.close(); };
    ws.onerror = () => resolve("error");
  });
}

async function run() {
  const url = params.get("ws");
  const res = { extensions: await negotiatedExtensions(url) };
  const nc = await connect({ servers: url, timeout: 5000 });
  res.server_id = nc.info.server_id;

  // Publish to ourselves: a short message and a long one.
  const echo = nc.subscribe("browser.echo", { max: 2 });
  const push = nc.subscribe("browser.push", { max: 1 });
  const big = noise(20000);
  nc.publish("browser.echo", sc.encode("hello from the browser"));
  nc.publish("browser.echo", sc.encode(big));
  const echoed = [];
  for await (const m of echo) echoed.push(sc.decode(m.data));
  res.echo_small = echoed[0];
  res.echo_big_length = echoed[1].length;
  res.echo_big_intact = echoed[1] === big;

  // Request/reply with the Python responder (a TCP client), which also
  // publishes to browser.push before it answers.
  const reply = await nc.request("browser.svc", sc.encode("ping"), { timeout: 5000 });
  res.reply = sc.decode(reply.data);
  for await (const m of push) res.push = sc.decode(m.data);

  await nc.close();
  res.closed = true;
  return res;
}

(async () => {
  let res;
  try {
    res = await run();
  } catch (e) {
    res = { error: String((e && e.message) || e) };
  }
  out.textContent = JSON.stringify(res, null, 2);   // one key a line, for the screenshot
  out.dataset.state = "done";
  await fetch("/result", { method: "POST", body: out.outerHTML });
})();

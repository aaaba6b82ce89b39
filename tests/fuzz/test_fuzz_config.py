"""Fuzz the config lexer/parser and the options built from it.

Inputs are config texts from a small grammar (the real keys and blocks,
every value syntax: sizes, durations, quoted and bare strings, escapes,
block strings, variables, includes, maps and arrays) and mutations of the
files in tests/conf_corpus (characters inserted, deleted, replaced,
pieces spliced).  Each text goes through `parse_config_text`, then from a
file through `options_from_config`, `fill_defaults` and `validate`.

The only exception allowed is ConfigError, and it must carry a line number,
except the errors that are about the file or the merged options as a whole
(gnatsd.py's and Go's alike, listed in POSITIONLESS below).
"""
from __future__ import annotations

import os

from hypothesis import given, strategies as st

from conftest import import_gnatsd
from fuzzing import FUZZ_SETTINGS, run_fuzzer

g = import_gnatsd()

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS_DIR = os.path.join(os.path.dirname(HERE), "conf_corpus")
CERTS = os.path.join(os.path.dirname(HERE), "certs")

# ConfigErrors with no line: the file as a whole, or the options after the
# merge (Go's validateOptions), or a cross-account check of the accounts
# block reported at the block's key (it has a line; listed for clarity).
POSITIONLESS = (
    "config has no values or is empty",
    "server name cannot contain spaces",
    "cannot be higher than max_pending",
    "config file is not UTF-8",
)

KEYS = sorted(set(g.CONFIG_KEYS) | set(g.CONFIG_BLOCKS) | set(g.UNSUPPORTED_KEYS) | {
    "account_token_position", "accounts", "advertise", "allow", "allow_responses",
    "authorization", "ca_file", "cert_file", "cipher_suites", "cluster_advertise",
    "connect_retries", "curve_preferences", "default_permissions", "deny", "expires",
    "handshake_first", "host", "insecure", "key_file", "listen", "max", "min_version",
    "name", "no_advertise", "pass", "password", "permissions", "pool_size", "port",
    "prefix", "publish", "response_type", "routes", "service", "stream", "subscribe",
    "timeout", "tls", "to", "token", "user", "username", "users", "verify",
    "verify_and_map", "account", "exports", "imports", "pinned_certs", "include",
    "unknown_key", "A", "B", "$G", "SYS",
})

BARE = st.sampled_from([
    "true", "false", "yes", "no", "on", "off", "0", "-1", "1", "4222", "65536", "1K", "1KB",
    "2MB", "1G", "3Ki", "5x", "2s", "100ms", "1h2m", "1.5", "1e3", "-0.5", "9223372036854775808",
    "-9223372036854775809", "nats://127.0.0.1:4222", "nats://u:p@h:1", "127.0.0.1:-1",
    "localhost", "foo.bar", "foo.*", "foo.>", ">", "a\\tb", "a\\x41", "a\\q", "foo#1",
    "1.2.3", "TLS1.2", "1.3", "0x10", "$", "-", "_",
    os.path.join(CERTS, "server-cert.pem"), os.path.join(CERTS, "server-key.pem"),
    os.path.join(CERTS, "ca.pem"), "/nonexistent/file.pem",
])
QUOTED = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
    .map(lambda s: '"%s"' % s.replace("\n", "")),
    st.text(max_size=12).map(lambda s: "'%s'" % s.replace("\n", "").replace("'", "")),
    st.sampled_from(['"\\x"', '"\\xZZ"', '"\\u0041"', '"a\\"b"', '""', "''", '"2m"', '"1s"',
                     '"-5s"', '"1x"', '"10"', '"127.0.0.1:4222"', '"a b"', '"$VAR"']),
)
VARIABLE = st.sampled_from(["$port", "$A", "$HOME", "$NOPE_NOT_SET", "$", "$a-b", "$PATH"])
BLOCK_STRING = st.sampled_from(["(\nfoo\n)", "(\n  x\n  )", "(no end", "(\n)"])
SCALAR = st.one_of(BARE, BARE, BARE, BARE, QUOTED, QUOTED, VARIABLE, BLOCK_STRING)
SEPARATOR = st.sampled_from([": ", " = ", " ", ":", "=", ":  ", " :", "\t"])


def values(children):
    items = st.lists(children, max_size=4)
    return st.one_of(
        items.map(lambda xs: "[" + ", ".join(xs) + "]"),
        items.map(lambda xs: "[\n  " + "\n  ".join(xs) + "\n]"),
        st.lists(st.tuples(st.sampled_from(KEYS), SEPARATOR, children), max_size=5)
        .map(lambda kvs: "{\n" + "\n".join(k + s + v for k, s, v in kvs) + "\n}"),
        st.lists(st.tuples(st.sampled_from(KEYS), SEPARATOR, children), max_size=3)
        .map(lambda kvs: "{" + ", ".join(k + s + v for k, s, v in kvs) + "}"),
    )


VALUE = st.recursive(SCALAR, values, max_leaves=12)


def _typed(convert):
    """Mostly well-typed values for a key of CONFIG_KEYS (so that parsing
    gets past it to the keys after it), sometimes anything."""
    name = convert.__name__
    if name == "_to_bool":
        good = st.sampled_from(["true", "false", "yes", "off"])
    elif name in ("_to_int", "_to_size"):
        good = st.sampled_from(["0", "1", "4222", "-1", "1MB", "64KB", "2G", "100", "1024"])
    else:
        good = st.one_of(QUOTED, st.sampled_from(["edge1", "localhost", "127.0.0.1", "A"]))
    return st.one_of(good, good, good, VALUE)


TYPED_ENTRY = st.one_of(*[
    st.tuples(st.just(key), SEPARATOR, _typed(convert)).map("".join)
    for key, (_attr, convert) in sorted(g.CONFIG_KEYS.items())
])
ENTRY = st.one_of(
    TYPED_ENTRY, TYPED_ENTRY, TYPED_ENTRY,
    st.tuples(st.sampled_from(KEYS), SEPARATOR, VALUE).map("".join),
    st.tuples(st.sampled_from(KEYS), SEPARATOR, VALUE).map("".join),
    st.sampled_from(["# comment", "// comment", "", "include ./inc_ok.conf",
                     "include 'inc_missing.conf'", "include inc_self.conf",
                     "include inc_bad.conf", "port: $port", "port = 4222 # c", "}", "{",
                     "listen: 127.0.0.1:4222", "accounts { A { users [{user: a, pass: b}] } }",
                     "authorization { users [{user: a, password: b, permissions: "
                     "{publish: {allow: [foo]}}}] }"]),
)
GRAMMAR_TEXT = st.lists(ENTRY, max_size=10).map("\n".join)


def _corpus() -> list:
    texts = []
    for name in sorted(os.listdir(CORPUS_DIR)):
        path = os.path.join(CORPUS_DIR, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
    return texts or [""]


CORPUS = _corpus()
JUNK_CHARS = st.text(alphabet=st.sampled_from(list("{}[]()=:;,#/\"'$\\\n\t x0.-") + ["\x00"]),
                     min_size=1, max_size=4)


@st.composite
def mutated_corpus(draw):
    text = draw(st.sampled_from(CORPUS))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(text)))
        if kind == 0:
            text = text[:pos] + draw(JUNK_CHARS) + text[pos:]
        elif kind == 1:
            text = text[:pos] + text[pos + draw(st.integers(1, 8)):]
        elif kind == 2:
            other = draw(st.sampled_from(CORPUS))
            a = draw(st.integers(0, len(other)))
            text = text[:pos] + other[a:a + draw(st.integers(1, 80))] + text[pos:]
        else:
            text = text[:pos]
    return text


TEXTS = st.one_of(GRAMMAR_TEXT, GRAMMAR_TEXT, mutated_corpus(), st.text(max_size=40))


def check_text(text: str, tmpdir: str) -> None:
    try:
        g.parse_config_text(text)
    except g.ConfigError as exc:
        assert exc.line > 0, "parse_config_text: no line in %r" % str(exc)
    path = os.path.join(tmpdir, "fuzz.conf")
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)
    try:
        g.options_from_config(path).fill_defaults().validate()
    except g.ConfigError as exc:
        if not any(p in exc.message for p in POSITIONLESS):
            assert exc.line > 0, "options_from_config: no line in %r" % str(exc)


def test_fuzz_config_errors_have_lines(tmp_path):
    tmpdir = str(tmp_path)
    (tmp_path / "inc_ok.conf").write_text("debug: true\nmax_payload: 1MB\n")
    (tmp_path / "inc_bad.conf").write_text("port: [\n")
    (tmp_path / "inc_self.conf").write_text("include inc_self.conf\n")
    count = [0]

    @FUZZ_SETTINGS
    @given(TEXTS)
    def prop(text):
        count[0] += 1
        check_text(text, tmpdir)

    assert run_fuzzer("config", prop, count) > 0

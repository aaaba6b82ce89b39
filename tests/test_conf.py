"""The config lexer/parser (chapter 2) and the config keys (chapter 3), in-process.

Go's conf/parse_test.go and server/opts_test.go, for the format the Go
server 2.x reads: `:`/`=`/blank separators, `#` and `//` comments, maps and
arrays (nested, comma or newline separated), single-quoted verbatim and
double-quoted escaped strings, block strings, numbers with size suffixes,
booleans in six spellings, durations, `include` and `$variables`.  Each
expectation here was checked against nats-server 2.9/2.15 (`-t -c`, or the
INFO a server sends); the black-box twins are in test_cli.py.
"""
from __future__ import annotations

import os

import pytest

from conftest import import_gnatsd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


gnatsd = import_gnatsd()
ConfigError = gnatsd.ConfigError
Options = gnatsd.Options


def parse(text: str) -> dict:
    return gnatsd.parse_config_text(text, "test.conf")


def options(tmp_path, text: str, name: str = "server.conf") -> "Options":
    path = tmp_path / name
    path.write_text(text)
    return gnatsd.options_from_config(str(path))


def parse_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


# -- the lexer and parser ----------------------------------------------------


def test_colon_equals_and_blank_all_separate_key_and_value():
    assert parse("a: 1\nb = 2\nc 3\nd:4\ne=5\n") == {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}


def test_hash_and_double_slash_comments_are_skipped():
    text = """
    # a comment
    // another comment
    a: 1 # after a value
    b: 2 // after a value
    c: [
      1   # inside an array
      // a whole line in an array
      2
    ]
    """
    assert parse(text) == {"a": 1, "b": 2, "c": [1, 2]}


def test_comment_characters_inside_a_value_belong_to_it():
    # Go reads `nats://h:4222` and `foo#1` as one word; a comment needs a
    # blank before it.  Quoted strings keep everything.
    cm = parse('url: nats://h:4222\nname: foo#1\nq: "x # y // z"\n')
    assert cm == {"url": "nats://h:4222", "name": "foo#1", "q": "x # y // z"}


def test_semicolons_and_commas_terminate_values():
    assert parse("a: 1; b: 2;\nm { x: 1, y: 2, }\n") == {"a": 1, "b": 2, "m": {"x": 1, "y": 2}}


def test_maps_nest_with_or_without_a_separator_before_the_brace():
    cm = parse("a { b: { c = { d: 1 } } }\ne: {f: 2}\ng = {h: 3}\n")
    assert cm == {"a": {"b": {"c": {"d": 1}}}, "e": {"f": 2}, "g": {"h": 3}}


def test_arrays_comma_or_newline_separated_and_nested():
    text = "a: [1, 2, 3]\nb: [\n  x\n  y\n]\nc: [[1, 2], [3, [4]]]\nd: []\n"
    assert parse(text) == {"a": [1, 2, 3], "b": ["x", "y"], "c": [[1, 2], [3, [4]]], "d": []}


def test_arrays_of_maps():
    assert parse("users: [\n  {user: a, password: b}\n  {user: c}\n]\n") == {
        "users": [{"user": "a", "password": "b"}, {"user": "c"}]}


def test_single_quotes_are_verbatim_double_quotes_decode_escapes():
    cm = parse(r"""s: 'a\tb'
d: "a\tb\n\r\"q\\z\x41"
""")
    assert cm["s"] == "a\\tb"
    assert cm["d"] == 'a\tb\n\r"q\\zA'


def test_hex_escapes_are_bytes_decoded_as_utf8():
    assert parse(r'd: "caf\xc3\xa9"') == {"d": "caf\u00e9"}


def test_bare_words_decode_escapes_too():
    assert parse(r"w: a\x41\\b") == {"w": "aA\\b"}


def test_an_unknown_escape_is_an_error_naming_the_line():
    err = parse_error('a: 1\nb: "x\\uy"\n')
    assert err.line == 2
    assert "Invalid escape character 'u'" in str(err)


def test_quoted_keys():
    assert parse("\"my key\": 1\n'other': 2\n") == {"my key": 1, "other": 2}


def test_block_string_ends_at_a_lone_closing_parenthesis():
    cm = parse("b (\n  line one ) not the end\n  line two\n)\nafter: 1\n")
    assert cm["b"] == "  line one ) not the end\n  line two"
    assert cm["after"] == 1


def test_numbers():
    assert parse("a: 42\nb: -7\nc: 1.5\nd: 0\n") == {"a": 42, "b": -7, "c": 1.5, "d": 0}
    assert isinstance(parse("a: 42")["a"], int)
    assert isinstance(parse("a: 1.5")["a"], float)


@pytest.mark.parametrize("word, value", [
    ("true", True), ("TRUE", True), ("True", True), ("yes", True), ("on", True), ("ON", True),
    ("false", False), ("FALSE", False), ("no", False), ("off", False), ("Off", False),
])
def test_booleans(word, value):
    assert parse("b: %s" % word)["b"] is value


def test_quoted_booleans_and_numbers_stay_strings():
    assert parse('a: "true"\nb: "42"\n') == {"a": "true", "b": "42"}


@pytest.mark.parametrize("word, value", [
    ("1K", 1000), ("1k", 1000), ("2M", 2 * 1000 ** 2), ("1G", 1000 ** 3), ("1T", 1000 ** 4),
    ("1P", 1000 ** 5), ("1E", 1000 ** 6),
    ("1KB", 1024), ("1kb", 1024), ("1Kb", 1024), ("1KiB", 1024), ("1ki", 1024),
    ("3MB", 3 * 1024 ** 2), ("1MiB", 1024 ** 2), ("1GB", 1024 ** 3), ("1GiB", 1024 ** 3),
    ("1TB", 1024 ** 4), ("1PB", 1024 ** 5), ("1EB", 1024 ** 6),
])
def test_size_suffixes(word, value):
    # K M G T P E are 1000-based; KB, KiB, Ki (any case) are 1024-based.
    assert parse("s: %s" % word)["s"] == value


def test_an_unknown_size_suffix_is_an_error():
    assert parse_error("s: 1X").line == 1


@pytest.mark.parametrize("word", ["2s", "100ms", "1h", "1h30m", "1.5s", "250us"])
def test_duration_words_stay_strings_for_the_option_to_read(word):
    assert parse("d: %s" % word) == {"d": word}


def test_unterminated_string_names_line_and_column():
    err = parse_error('a: 1\nb: "open\n')
    assert (err.line, err.column) == (2, 4)
    assert str(err).startswith("test.conf:2:4: ")


def test_unclosed_map_and_array_are_errors():
    assert "'}'" in str(parse_error("m {\n  a: 1\n"))
    assert "array" in str(parse_error("a: [1, 2\n"))


def test_a_value_without_a_key_is_an_error():
    assert parse_error("= 4222").line == 1


def test_a_key_without_a_value_is_an_error():
    assert parse_error("a: 1\nport:\n").line == 2


# -- variables ----------------------------------------------------------------


def test_variable_takes_the_value_of_an_earlier_key():
    assert parse("P = 4333\nport: $P\n")["port"] == 4333


def test_variables_are_block_scoped():
    # An inner block sees the outer variables ...
    cm = parse("u = derek\nauthorization {\n  user = $u\n}\n")
    assert cm["authorization"]["user"] == "derek"
    # ... but a variable set inside a block is invisible outside it.
    err = parse_error("authorization {\n  u = derek\n}\nuser_x = $u\n")
    assert "variable reference for 'u' on line 4 can not be found" in str(err)
    assert err.line == 4


def test_variable_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("GNATSD_TEST_PORT", "4555")
    monkeypatch.setenv("GNATSD_TEST_NAME", "from-env")
    cm = parse("port: $GNATSD_TEST_PORT\nname: $GNATSD_TEST_NAME\n")
    assert cm == {"port": 4555, "name": "from-env"}  # typed like a bare word


def test_a_config_variable_shadows_the_environment(monkeypatch):
    monkeypatch.setenv("GNATSD_TEST_X", "env")
    assert parse("GNATSD_TEST_X = file\nv: $GNATSD_TEST_X\n")["v"] == "file"


def test_an_undefined_variable_is_an_error(monkeypatch):
    monkeypatch.delenv("GNATSD_TEST_MISSING", raising=False)
    err = parse_error("a: 1\nport: $GNATSD_TEST_MISSING\n")
    assert "variable reference for 'GNATSD_TEST_MISSING' on line 2 can not be found" in str(err)


# -- include ------------------------------------------------------------------


def test_include_is_relative_to_the_including_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "limits.conf").write_text("max_payload: 2KB\ninclude more.conf\n")
    (tmp_path / "sub" / "more.conf").write_text("max_connections: 7\n")
    (tmp_path / "auth.conf").write_text("user: a\npassword: b\n")
    main = tmp_path / "main.conf"
    main.write_text('port: 4333\ninclude "sub/limits.conf"\n'
                    "authorization {\n  include 'auth.conf'\n}\n")
    cm = gnatsd.parse_config(str(main))
    assert cm == {"port": 4333, "max_payload": 2048, "max_connections": 7,
                  "authorization": {"user": "a", "password": "b"}}


def test_a_missing_include_is_an_error_naming_it(tmp_path):
    main = tmp_path / "main.conf"
    main.write_text("port: 4333\ninclude nothere.conf\n")
    with pytest.raises(ConfigError) as info:
        gnatsd.parse_config(str(main))
    assert "error parsing include file 'nothere.conf'" in str(info.value)
    assert info.value.line == 2


def test_errors_in_an_included_file_name_that_file(tmp_path):
    (tmp_path / "inner.conf").write_text("port: 1\nbogus: 2\n")
    with pytest.raises(ConfigError) as info:
        options(tmp_path, "include inner.conf\n")
    assert str(info.value) == '%s:2:1: unknown field "bogus"' % (tmp_path / "inner.conf")


def test_a_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        gnatsd.parse_config(str(tmp_path / "absent.conf"))


# -- keys to Options ------------------------------------------------------------


def test_every_supported_key_reaches_options(tmp_path):
    opts = options(tmp_path, """
        server_name: alpha
        host: 127.0.0.2
        port: 4333
        debug: true
        trace: yes
        logtime: off
        logtime_utc: on
        logfile: "/tmp/x.log"
        pid_file: /tmp/x.pid
        ports_file_dir: /tmp
        max_payload: 2MB
        max_control_line: 2KB
        max_connections: 100
        max_pending: 10MB
        max_subscriptions: 5
        max_traced_msg_len: 12
        ping_interval: "20s"
        ping_max: 3
        write_deadline: "5s"
        no_auth_user: bob
        client_advertise: "example.org:4222"
    """)
    assert (opts.server_name, opts.host, opts.port) == ("alpha", "127.0.0.2", 4333)
    assert (opts.debug, opts.trace, opts.logtime, opts.logtime_utc) == (True, True, False, True)
    assert opts.log_file == "/tmp/x.log"
    assert (opts.pid_file, opts.ports_file_dir) == ("/tmp/x.pid", "/tmp")
    assert opts.max_payload == 2 * 1024 * 1024
    assert opts.max_control_line == 2048
    assert opts.max_connections == 100
    assert opts.max_pending == 10 * 1024 * 1024
    assert opts.max_subscriptions == 5
    assert opts.max_traced_msg_len == 12
    assert (opts.ping_interval, opts.ping_max, opts.write_deadline) == (20.0, 3, 5.0)
    assert opts.no_auth_user == "bob"
    assert opts.client_advertise == "example.org:4222"
    assert opts.warnings == []


def test_key_aliases(tmp_path):
    opts = options(tmp_path, "net: 10.0.0.1\nlog_file: a.log\npidfile: a.pid\n"
                             "max_conn: 9\nmax_pending_size: 1000\nmax_subs: 4\n")
    assert (opts.host, opts.log_file, opts.pid_file) == ("10.0.0.1", "a.log", "a.pid")
    assert (opts.max_connections, opts.max_pending, opts.max_subscriptions) == (9, 1000, 4)


def test_key_names_are_case_insensitive(tmp_path):
    opts = options(tmp_path, "PORT: 4333\nMax_Payload: 1KB\n")
    assert (opts.port, opts.max_payload) == (4333, 1024)


@pytest.mark.parametrize("value, host, port", [
    ("127.0.0.1:4333", "127.0.0.1", 4333),
    ('"[::1]:4334"', "::1", 4334),
    ('"0.0.0.0:-1"', "0.0.0.0", -1),
    ("4335", None, 4335),
    ('":4336"', None, 4336),
])
def test_listen_sets_host_and_port(tmp_path, value, host, port):
    opts = options(tmp_path, "listen: %s\n" % value)
    assert (opts.host, opts.port) == (host, port)


def test_a_bad_listen_address_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="listen"):
        options(tmp_path, "listen: 127.0.0.1:http\n")


def test_authorization_user_and_password(tmp_path):
    opts = options(tmp_path, "authorization {\n  user: derek\n  password: \"s3 cr3t\"\n"
                             "  timeout: 2\n}\n")
    assert (opts.username, opts.password, opts.auth_timeout) == ("derek", "s3 cr3t", 2.0)
    assert opts.auth_required


def test_authorization_aliases_username_and_pass(tmp_path):
    opts = options(tmp_path, "authorization { username: a, pass: b }\n")
    assert (opts.username, opts.password) == ("a", "b")


def test_authorization_token(tmp_path):
    opts = options(tmp_path, "authorization {\n  token: \"3secret\"\n}\n")
    assert opts.authorization == "3secret"
    assert opts.auth_required


@pytest.mark.parametrize("value, seconds", [("2", 2.0), ("0.5", 0.5), ('"1.5s"', 1.5),
                                            ('"250ms"', 0.25)])
def test_authorization_timeout_is_seconds_or_a_duration(tmp_path, value, seconds):
    assert options(tmp_path, "authorization { timeout: %s }\n" % value).auth_timeout == seconds


def test_unknown_key_in_authorization_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        options(tmp_path, "port: 1\nauthorization {\n  user: a\n  bogus: 2\n}\n")
    assert str(info.value).endswith(':4:3: unknown field "bogus"')


def test_unknown_top_level_key_is_an_error_like_go(tmp_path):
    with pytest.raises(ConfigError) as info:
        options(tmp_path, "port: 4222\nfoo: 1\n")
    assert str(info.value) == '%s:2:1: unknown field "foo"' % (tmp_path / "server.conf")


def test_variable_definitions_are_not_unknown_fields(tmp_path):
    opts = options(tmp_path, "P = 4333\nport: $P\nauthorization {\n  U = derek\n"
                             "  user: $U\n  password: x\n}\n")
    assert (opts.port, opts.username) == (4333, "derek")


def test_an_unused_variable_is_an_unknown_field(tmp_path):
    with pytest.raises(ConfigError, match='unknown field "x"'):
        options(tmp_path, "x = 1\nport: 4222\n")


def test_redefining_a_used_variable_makes_the_new_key_unknown(tmp_path):
    # Go marks the definition a reference read, not the name.
    with pytest.raises(ConfigError) as info:
        options(tmp_path, "x: 2\nport: $x\nx: 3\n")
    assert info.value.line == 3


@pytest.mark.parametrize("value, seconds", [
    ('"2s"', 2.0), ("2s", 2.0), ('"100ms"', 0.1), ('"1h"', 3600.0), ('"1m30s"', 90.0),
])
def test_durations(tmp_path, value, seconds):
    opts = options(tmp_path, "ping_interval: %s\nwrite_deadline: %s\n" % (value, value))
    assert opts.ping_interval == pytest.approx(seconds)
    assert opts.write_deadline == pytest.approx(seconds)
    assert opts.warnings == []


def test_a_bare_integer_duration_is_seconds_with_gos_warning(tmp_path):
    opts = options(tmp_path, "ping_interval: 60\n")
    assert opts.ping_interval == 60.0
    assert opts.warnings == ['%s:1: invalid use of field "ping_interval": ping_interval '
                             'should be converted to a duration' % (tmp_path / "server.conf")]


def test_bare_1m_is_a_size_not_a_minute(tmp_path):
    # Go's lexer reads 1m as 1,000,000 before the option sees it.
    assert options(tmp_path, "ping_interval: 1m\n").ping_interval == 1_000_000.0


@pytest.mark.parametrize("text, message", [
    ('ping_interval: "bogus"', 'error parsing ping_interval: time: invalid duration "bogus"'),
    ('write_deadline: "5"', 'error parsing write_deadline: time: missing unit in duration "5"'),
    ("ping_interval: 1.5", "ping_interval"),
    ("ping_interval: true", "ping_interval"),
])
def test_bad_durations_are_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        options(tmp_path, text + "\n")
    assert message in str(info.value)


@pytest.mark.parametrize("text", [
    'port: "4222"', "port: 4222.0", "port: abc", "port: 0x10", "port: [1]",
    'debug: "true"', "debug: 1",
    'max_payload: "1MB"', "max_payload: 1.5", 'max_pending: "1MB"', "max_connections: {}",
    "authorization: 1",
])
def test_wrong_value_types_are_errors_not_crashes(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        options(tmp_path, text + "\n")
    assert info.value.line == 1


def test_max_payload_and_max_control_line_must_fit_in_int32(tmp_path):
    assert options(tmp_path, "max_payload: 2147483647\n").max_payload == 2 ** 31 - 1
    for key in ("max_payload", "max_control_line"):
        with pytest.raises(ConfigError, match="%s value is too big" % key):
            options(tmp_path, "%s: 2147483648\n" % key)
    # max_pending is an int64 in Go.
    assert options(tmp_path, "max_pending: 1T\n").max_pending == 1000 ** 4


def test_server_name_cannot_contain_spaces(tmp_path):
    with pytest.raises(ConfigError, match="server name cannot contain spaces"):
        options(tmp_path, 'server_name: "a b"\n')


def test_features_not_built_yet_are_warnings_naming_the_line(tmp_path):
    opts = options(tmp_path, "port: 4222\nmqtt: {port: 1883}\ngateway {\n  port: 7222\n}\n"
                             "jetstream: enabled\n")
    path = str(tmp_path / "server.conf")
    assert len(opts.warnings) == 3
    assert opts.warnings[0].startswith(path + ":2: ") and "MQTT" in opts.warnings[0]
    assert opts.warnings[1].startswith(path + ":3: ") and "gateway" in opts.warnings[1]
    assert opts.warnings[2].startswith(path + ":6: ") and "JetStream" in opts.warnings[2]


def test_the_shipped_default_conf_loads_without_warnings():
    opts = gnatsd.options_from_config(os.path.join(ROOT, "conf", "default.conf"))
    assert opts.port == 4222
    assert opts.http_port == 8222
    assert opts.warnings == []
    assert (opts.cluster_port, opts.cluster_auth, opts.routes) == (6222, ("ruser", "T0pS3cr3t"), [])


# -- merge, defaults, validation ----------------------------------------------


def test_flags_override_the_file_only_where_given(tmp_path):
    opts = options(tmp_path, "port: 4333\nmax_payload: 2KB\ndebug: true\n")
    opts.merge(Options(port=5444, debug=False)).fill_defaults()
    assert (opts.port, opts.max_payload, opts.debug) == (5444, 2048, False)


def test_fill_defaults_sets_every_unset_option_once():
    opts = Options().fill_defaults()
    assert (opts.host, opts.port) == ("0.0.0.0", 4222)
    assert opts.max_payload == 1024 * 1024
    assert opts.max_control_line == 4096
    assert opts.max_pending == 64 * 1024 * 1024
    assert opts.ping_interval == 120.0 and opts.ping_max == 2
    assert opts.logtime is True and opts.warnings == []
    assert Options(port=0).fill_defaults().port == -1


def test_max_payload_above_max_pending_is_refused():
    opts = Options(max_payload=2048, max_pending=1024).fill_defaults()
    with pytest.raises(ConfigError) as info:
        opts.validate()
    assert str(info.value) == "max_payload (2048) cannot be higher than max_pending (1024)"


def test_max_payload_over_8mb_is_a_warning():
    opts = Options(max_payload=9 * 1024 * 1024).fill_defaults().validate()
    assert opts.warnings == ["Maximum payloads over 8.00 MB are generally discouraged "
                             "and could lead to poor performance"]
    assert Options(max_payload=8 * 1024 * 1024).fill_defaults().validate().warnings == []


# -- every top-level key nats-server 2.15 reads ---------------------------------------
#
# The `case` labels of Go 2.15.1's processConfigFileLine (server/opts.go),
# each with a value Go takes.  gnatsd.py reads each (no warning) or, for a
# feature this build does not have, accepts it and names it in one startup
# warning: a config file written for Go always loads (issue 13).

# A self-signed operator JWT (its key's seed is the bytes 0..31), the
# sample value of the operator keys.
SAMPLE_OPERATOR_KEY = "OAB2CB576PHBBPQ5ODORRZ2LYCMWPZGWGCN2KDK7DXOIMZASKUY3QZVT"
SAMPLE_OPERATOR = '"' + (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJpYXQiOjE3NjUwMDAwMDAsImlzcyI6Ik9BQjJDQjU3NlBIQkJQUTVPRE9SUloyTFlDTVdQWkdXR0NOMktESzdEWE9JTVpBU0tVWTNRWlZUIiwianRpIjoiU0FNUExFIiwibmFtZSI6InNhbXBsZSIsInN1YiI6Ik9BQjJDQjU3NlBIQkJQUTVPRE9SUloyTFlDTVdQWkdXR0NOMktESzdEWE9JTVpBU0tVWTNRWlZUIiwibmF0cyI6eyJ0eXBlIjoib3BlcmF0b3IiLCJ2ZXJzaW9uIjoyfX0.-J9YOgwmVD7DToqH-xpd7fT9Pqd7fF3omHjy17dIaqi5_3fgAlFOVEEX54YKDKPAxm-KJ3UNQje_wUNoCOXqBQ") + '"'

GO_215_KEYS = {
    "listen": '"127.0.0.1:4333"', "client_advertise": '"h:1"', "port": "4333",
    "server_name": "n1", "host": "127.0.0.1", "net": "127.0.0.1", "debug": "true",
    "trace": "true", "trace_verbose": "true", "trace_headers": "true", "logtime": "false",
    "logtime_utc": "true", "mappings": '{ a: b }', "maps": '{ a: b }',
    "disable_sublist_cache": "true", "no_sublist_cache": "true",
    "accounts": "{ A { users = [ {user: a, password: a} ] } }", "default_sentinel": '"x"',
    "authorization": "{ user: u, password: p }", "http": '"127.0.0.1:8333"',
    "https": '"127.0.0.1:8334"', "http_port": "8333", "monitor_port": "8333",
    "https_port": "8334", "http_base_path": '"/m"', "cluster": "{ listen: 127.0.0.1:6333 }",
    "gateway": "{ name: g }", "leaf": "{ port: 7422 }", "leafnodes": "{ port: 7422 }",
    "store_dir": '"/tmp/js"', "storedir": '"/tmp/js"', "jetstream": "enabled",
    "logfile": '"/tmp/x.log"', "log_file": '"/tmp/x.log"', "logfile_size_limit": "1000",
    "log_size_limit": "1000", "logfile_max_num": "3", "log_max_num": "3", "syslog": "false",
    "remote_syslog": '"udp://127.0.0.1:514"', "pidfile": '"/tmp/x.pid"',
    "pid_file": '"/tmp/x.pid"', "ports_file_dir": '"/tmp"', "prof_port": "6060",
    "prof_block_rate": "1", "max_control_line": "4096", "max_payload": "65536",
    "max_pending": "67108864", "proxy_protocol": "true", "max_connections": "100",
    "max_conn": "100", "max_traced_msg_len": "10", "max_subscriptions": "10",
    "max_subs": "10", "max_sub_tokens": "10", "max_subscription_tokens": "10",
    "ping_interval": '"2m"', "ping_max": "2", "ocsp": "false",
    "tls": '{ cert_file: "%s", key_file: "%s" }' % (
        os.path.join(ROOT, "tests", "certs", "server-cert.pem"),
        os.path.join(ROOT, "tests", "certs", "server-key.pem")),
    "allow_non_tls": "true", "write_deadline": '"10s"', "write_timeout": "retry",
    "lame_duck_duration": '"30s"', "lame_duck_grace_period": '"10s"', "operator": SAMPLE_OPERATOR,
    "operators": SAMPLE_OPERATOR, "roots": SAMPLE_OPERATOR, "root": SAMPLE_OPERATOR,
    "root_operators": SAMPLE_OPERATOR, "root_operator": SAMPLE_OPERATOR, "resolver": "MEMORY",
    "account_resolver": "MEMORY", "accounts_resolver": "MEMORY", "resolver_tls": "{}",
    "resolver_preload": "{}", "resolver_pinned_accounts": "[]", "no_auth_user": "u",
    "system_account": "A", "system": "A", "no_system_account": "true", "no_system": "true",
    "no_sys_acc": "true", "no_header_support": "true", "trusted": '"%s"' % SAMPLE_OPERATOR_KEY,
    "trusted_keys": '["%s"]' % SAMPLE_OPERATOR_KEY, "connect_error_reports": "10", "reconnect_error_reports": "10",
    "websocket": "{ port: 8080 }", "ws": "{ port: 8080 }", "mqtt": "{ port: 1883 }",
    "server_tags": '["a"]', "server_metadata": "{ a: b }", "feature_flags": "{ a: true }",
    "default_js_domain": "{ A: d }", "ocsp_cache": "false", "no_fast_producer_stall": "true",
    "max_closed_clients": "100", "proxies": "{}",
}

# Keys whose sample value needs a neighbour to be valid.
_KEY_NEEDS = {
    "no_auth_user": "authorization { users = [ {user: u, password: p} ] }\n",
    "system_account": "accounts { A { users = [ {user: a, password: a} ] } }\n",
    "system": "accounts { A { users = [ {user: a, password: a} ] } }\n",
}


@pytest.mark.parametrize("key", sorted(GO_215_KEYS))
def test_every_key_go_215_reads_loads_or_warns(key, tmp_path):
    conf = tmp_path / "go.conf"
    conf.write_text(_KEY_NEEDS.get(key, "") + "%s: %s\n" % (key, GO_215_KEYS[key]))
    opts = gnatsd.options_from_config(str(conf))
    if key in gnatsd.UNSUPPORTED_KEYS:
        assert len(opts.warnings) == 1 and gnatsd.UNSUPPORTED_KEYS[key] in opts.warnings[0]
    else:
        assert key in gnatsd.CONFIG_KEYS or key in gnatsd.CONFIG_BLOCKS
        assert opts.warnings == []


@pytest.mark.parametrize("block", ["cluster { listen: 127.0.0.1:-1, %s }",
                                   "websocket { port: -1, no_tls: true, %s }",
                                   "leafnodes { port: -1, %s }"])
def test_an_unknown_field_of_an_authorization_block_names_its_line(block, tmp_path):
    """Each block's `authorization {}` takes its keys (and variables) and
    refuses any other with Go's unknown-field error (one reader,
    _read_block, serves the three)."""
    conf = tmp_path / "auth.conf"
    conf.write_text("pw: secret\n" + block % "authorization { user: a, password: $pw, bogus: 1 }"
                    + "\n")
    with pytest.raises(gnatsd.ConfigError, match=r':2:\d+: unknown field "bogus"'):
        gnatsd.options_from_config(str(conf))
    conf.write_text("pw: secret\n" + block % "authorization { user: a, password: $pw }" + "\n")
    gnatsd.options_from_config(str(conf))

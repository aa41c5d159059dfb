"""Field and operator semantics the upstream rules do not exercise, event-type indexing, outputs."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path
from typing import Any

import pytest

from webhook.runtime import rules
from webhook.runtime.engine import Alert, Engine
from webhook.runtime.rules import compiler, evttypes, parser


def m(cond: str, event: dict[str, Any]) -> bool:
    return rules.condition(cond)(event)


SOCK = {
    "fd.type": "ipv4",
    "fd.cip": "10.1.2.3",
    "fd.sip": "192.168.0.5",
    "fd.rip": "192.168.0.5",
    "fd.cport": 40000,
    "fd.sport": 443,
}
SOCK6 = {
    "fd.type": "ipv6",
    "fd.cip": "2001:db8::4",
    "fd.sip": "fd00::1",
    "fd.rip": "fd00::1",
    "fd.cport": 5555,
    "fd.sport": 8080,
}


@pytest.mark.parametrize(
    "op", ["=", "!=", "<", "contains", "icontains", "startswith", "endswith", "glob", "regex", "in", "pmatch"]
)
def test_a_missing_field_is_false_for_every_operator_and_not_makes_it_true(op: str) -> None:
    value = "(a, b)" if op in ("in", "pmatch") else ("1" if op == "<" else "x")
    assert not m(f"proc.name {op} {value}", {})
    assert m(f"not proc.name {op} {value}", {})


def test_regex_is_anchored_on_both_ends_like_re2_full_match() -> None:
    assert m("proc.cmdline regex 'curl .*-o.*'", {"proc.cmdline": "curl http://x -o /tmp/y"})
    assert not m("proc.cmdline regex 'curl'", {"proc.cmdline": "curl http://x"})
    assert m(r"proc.name regex '[a-z]+\\d{2}'", {"proc.name": "abc12"})  # libs: write \\d


def test_glob_and_iglob() -> None:
    assert m("fd.name glob '/etc/*.conf'", {"fd.name": "/etc/a/b.conf"})  # * crosses '/' (no FNM_PATHNAME)
    assert not m("fd.name glob '/etc/?.conf'", {"fd.name": "/etc/ab.conf"})
    assert m("fd.name iglob '/ETC/[ab]*'", {"fd.name": "/etc/apt"})


def test_pmatch_matches_whole_path_components() -> None:
    cond = "fd.name pmatch (/etc, /usr/lib/)"
    assert m(cond, {"fd.name": "/etc"})
    assert m(cond, {"fd.name": "/etc/passwd"})
    assert m(cond, {"fd.name": "/usr/lib/x/y"})
    assert not m(cond, {"fd.name": "/etcetera"})
    assert not m("fd.name pmatch ()", {"fd.name": "/etc"})  # Falco; sysdig 0.29 differs (README)


def test_transformers() -> None:
    assert m("tolower(proc.name) = bash", {"proc.name": "BaSh"})
    assert m("toupper(proc.name) in (BASH, SH)", {"proc.name": "sh"})
    assert m("basename(proc.exe) = curl", {"proc.exe": "/usr/bin/curl"})
    assert m("len(proc.cmdline) > 5", {"proc.cmdline": "123456"})
    assert not m("len(proc.cmdline) > 5", {"proc.cmdline": "12345"})
    encoded = base64.b64encode(b"rm -rf /").decode()
    assert m("b64(proc.args) contains 'rm -rf'", {"proc.args": encoded})
    assert not m("b64(proc.args) contains 'rm'", {"proc.args": "%%%not-base64"})
    assert m("tolower(proc.aname) = sshd", {"proc.aname[1]": "bash", "proc.aname[2]": "SSHD"})


def test_val_compares_two_fields_of_the_same_event() -> None:
    assert m("proc.name = val(proc.pname)", {"proc.name": "bash", "proc.pname": "bash"})
    assert not m("proc.name = val(proc.pname)", {"proc.name": "bash", "proc.pname": "sh"})
    assert not m("proc.name != val(proc.pname)", {"proc.name": "bash"})  # missing rhs: false
    assert m("fd.sport > val(fd.cport)", {"fd.sport": 8080, "fd.cport": 80})
    assert m(
        "proc.aname = val(proc.name)",
        {"proc.name": "bash", "proc.aname[3]": "bash", "proc.aname[1]": "x", "proc.aname[2]": "y"},
    )


def test_cidrs_ipv4_and_ipv6() -> None:
    assert m('fd.snet = "192.168.0.0/16"', SOCK)
    assert m('fd.cnet in ("10.0.0.0/8", "172.16.0.0/12")', SOCK)
    assert m('fd.net = "10.0.0.0/8"', SOCK)  # either side
    assert not m('fd.net != "10.0.0.0/8"', SOCK)  # != only if both sides are outside
    assert m('fd.rnet = "192.168.0.0/24"', SOCK)
    assert m('fd.snet = "fd00::/8"', SOCK6)
    assert m('fd.cnet = "2001:db8::/32"', SOCK6)
    assert not m('fd.cnet = "10.0.0.0/8"', SOCK6)
    assert m('fd.net in ("2001:db8::/32")', SOCK6)
    assert not m('fd.snet = "fd00::/8"', {"fd.type": "ipv6"})  # no server address: false
    assert m('not fd.snet = "fd00::/8"', {})


def test_fd_ip_and_fd_port_look_at_both_sides() -> None:
    assert m("fd.ip = 10.1.2.3", SOCK)
    assert m("fd.ip = 192.168.0.5", SOCK)
    assert m('fd.ip in ("8.8.8.8", "192.168.0.5")', SOCK)
    assert not m("fd.ip != 10.1.2.3", SOCK)
    assert m("fd.ip != 8.8.8.8", SOCK)
    assert m("fd.port = 443", SOCK)
    assert m("fd.port = 40000", SOCK)
    assert m('fd.ip = "2001:db8::4"', SOCK6)
    listening = {"fd.type": "ipv4", "fd.sip": "0.0.0.0", "fd.cport": 0, "fd.sport": 22}
    assert m("fd.port = 22", listening)
    assert not m("fd.port = 0", listening)
    assert not m("fd.ip = 10.1.2.3", {"fd.type": "file", "fd.cip": "10.1.2.3"})  # not a socket


def test_ip_fields_compare_addresses_not_text() -> None:
    assert m('fd.sip = "2001:0db8:0000::0003"', {"fd.sip": "2001:db8::3"})
    assert m("fd.cip in (10.0.0.1, 10.0.0.2)", {"fd.cip": "10.0.0.2"})


def test_ancestors_without_index_mean_any_ancestor_never_the_process() -> None:
    event = {"proc.name": "sh", "proc.aname[1]": "bash", "proc.aname[2]": "sshd"}
    assert m("proc.aname = sshd", event)
    assert m("proc.aname in (cron, bash)", event)
    assert not m("proc.aname = sh", event)
    assert m("proc.aname[0] = sh", event)
    assert m("proc.aname[2] startswith ss", event)
    assert not m("proc.aname exists", {"proc.name": "init"})


def test_numbers_booleans_and_exists() -> None:
    event = {"user.uid": 0, "evt.rawres": -2, "fd.num": 3, "container.privileged": True, "proc.tty": 34816}
    assert m("user.uid = 0 and evt.rawres < 0 and fd.num in (1, 2, 3)", event)
    assert m("proc.tty != 0 and fd.num >= 3 and fd.num <= 3 and evt.rawres > -3", event)
    assert m("container.privileged = true and not container.privileged = false", event)
    assert m("fd.num = 0x3", event)
    assert m("user.uid exists and not user.name exists", event)


def test_intersects_and_byte_operators() -> None:
    assert m("proc.args intersects (-V, -l)", {"proc.args": "-l"})
    assert m("fd.types intersects (ipv4, file)", {"fd.types": ["pipe", "file"]})
    assert not m("fd.types in (ipv4, file)", {"fd.types": ["pipe", "file"]})
    assert m("fd.types in (pipe, file)", {"fd.types": "pipe file"})
    assert m("evt.buffer bcontains 7f454c46", {"evt.buffer": "\x7fELF..."})
    assert m("evt.buffer bstartswith 7f45", {"evt.buffer": b"\x7fELF"})
    assert m("evt.arg.flags contains O_CREAT and evt.arg.flags icontains o_trunc", {"evt.arg.flags": "O_CREAT|O_TRUNC"})


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        ("fd.num contains 3", "operator 'contains' is not supported on number field 'fd.num'"),
        ("container.privileged = yes", "invalid bool value 'yes'"),
        ('fd.net = "300.0.0.0/8"', "invalid ipnet value"),
        ("fd.sip = notanip", "invalid ipaddr value"),
        ("fd.name regex '('", "invalid regex pattern"),
        ("proc.name in x_list", "undefined list 'x_list'"),
        ("len(fd.num) > 1", "transformer 'len' needs a string field"),
        ("proc.aname[x] = a", "takes a numeric index"),
        ("proc.name[2] = a", "does not take an argument"),
        ("container.mount.dest = a", "requires an argument"),
        ("proc.name = val(fd.num)", "have different types"),
    ],
)
def test_invalid_checks_are_load_errors(cond: str, message: str) -> None:
    with pytest.raises(rules.RulesError, match=message.replace("(", r"\(").replace("[", r"\[")):
        rules.condition(cond)


def test_event_types_are_derived_soundly_from_the_condition() -> None:
    def types(cond: str) -> evttypes.TypeSet:
        return evttypes.event_types(parser.parse(cond))

    assert types("evt.type in (open, openat) and fd.num > 0") == evttypes.TypeSet(frozenset({"open", "openat"}), False)
    assert types("evt.type = open or evt.type = close").names == {"open", "close"}
    assert types("not evt.type = open").neg
    assert "open" not in types("not evt.type = open")
    assert "open" in types("not (evt.type = open and fd.name = x)")  # the rule can still match open
    assert types("proc.name = x").neg
    assert types("evt.type != open").names == {"open", ""}


RULES = """
- rule: Open etc
  desc: d
  condition: evt.type in (open, openat) and fd.name startswith /etc
  output: "%proc.name opened %fd.name (uid=%user.uid ppid=%proc.aname[1] priv=%container.privileged)"
  priority: ERROR
  tags: [fs, mitre]
- rule: Not open
  desc: d
  condition: not evt.type = open and proc.name = cat
  output: cat %evt.type
  priority: debug
"""


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(RULES), encoding="utf-8")
    return Engine.load([path], clock=lambda: 5)


def test_engine_index_and_required_fields(engine: Engine) -> None:
    assert engine.event_types == frozenset({"open", "openat"})
    assert engine.matches_all_types
    assert {"fd.name", "proc.name", "evt.type", "proc.aname[1]", "user.uid"} <= engine.required_fields
    assert [a.rule for a in engine.process({"evt.type": "open", "fd.name": "/etc/x", "proc.name": "cat"})] == [
        "Open etc"
    ]
    assert [a.rule for a in engine.process({"evt.type": "read", "proc.name": "cat"})] == ["Not open"]
    assert [a.rule for a in engine.process({"proc.name": "cat"})] == ["Not open"]  # no evt.type at all
    assert engine.process({"evt.type": "openat", "fd.name": "/tmp"}) == []


def test_alerts_render_like_falco_and_serialise_to_falco_json(engine: Engine) -> None:
    event = {
        "evt.type": "open",
        "evt.num": 42,
        "evt.time": 1_700_000_000_123_456_789,
        "fd.name": "/etc/shadow",
        "proc.name": "cat",
        "user.uid": 0,
        "container.privileged": False,
    }
    (alert,) = engine.process(event)
    assert isinstance(alert, Alert)
    assert alert.output == "22:13:20.123456789: Error cat opened /etc/shadow (uid=0 ppid=<NA> priv=false)"
    assert alert.to_falco_json("node-1") == {
        "hostname": "node-1",
        "output": alert.output,
        "output_fields": {
            "container.privileged": False,
            "evt.num": 42,
            "evt.time": 1_700_000_000_123_456_789,
            "fd.name": "/etc/shadow",
            "proc.aname[1]": None,
            "proc.name": "cat",
            "user.uid": 0,
        },
        "priority": "Error",
        "rule": "Open etc",
        "source": "syscall",
        "tags": ["fs", "mitre"],
        "time": "2023-11-14T22:13:20.123456789Z",
    }
    (debug,) = engine.process({"evt.type": "read", "proc.name": "cat"})
    assert (debug.priority, debug.time) == ("Debug", 5)
    assert "evt.num" not in debug.output_fields


def test_shared_subconditions_are_evaluated_once_per_event() -> None:
    calls = []

    class Spy(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            calls.append(key)
            return super().get(key, default)

    tree = parser.parse("proc.cmdline contains x and fd.name startswith /a")
    other = parser.parse("proc.name = y")
    fn = compiler.compile_bucket([(0, compiler.And((tree, other))), (1, compiler.Or((other, tree)))], first=False)
    fn(Spy({"proc.cmdline": "x", "fd.name": "/a/b", "proc.name": "y"}))
    assert calls.count("proc.cmdline") == 1
    assert calls.count("fd.name") == 1


def test_values_of_the_wrong_type_are_coerced_not_fatal(engine: Engine) -> None:
    (alert,) = engine.process({"evt.type": "open", "fd.name": "/etc/x", "proc.name": 7, "user.uid": "0"})
    assert alert.output_fields["proc.name"] == 7  # output_fields keep what the source gave
    assert engine.process({"evt.type": "open", "fd.name": 5}) == []  # int.startswith: coerced to "5"
    assert engine.process({"evt.type": "openat", "fd.name": ["/etc", "x"]}) == []
    odd = engine.process({"evt.type": ["open"], "proc.name": "cat"})  # unhashable: coerced to a string
    assert [a.rule for a in odd] == ["Not open"]
    assert engine.eval_errors == 0


def test_rules_sharing_a_macro_fire_in_load_order_whatever_the_grouping(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        textwrap.dedent(
            """
            - macro: opened
              condition: evt.type = open and fd.num >= 0
            - rule: A
              desc: d
              condition: opened and fd.name startswith /etc
              output: a
              priority: INFO
            - rule: B
              desc: d
              condition: evt.type = open and proc.name = cat
              output: b
              priority: INFO
            - rule: C
              desc: d
              condition: opened and proc.name = cat
              output: c
              priority: INFO
            """
        ),
        encoding="utf-8",
    )
    event = {"evt.type": "open", "fd.num": 3, "fd.name": "/etc/x", "proc.name": "cat"}
    assert [a.rule for a in Engine.load([path]).process(event)] == ["A", "B", "C"]
    assert [a.rule for a in Engine.load([path], match="first").process(event)] == ["A"]
    assert [a.rule for a in Engine.load([path]).process({**event, "fd.num": -1})] == ["B"]


def test_a_key_holding_none_counts_as_missing() -> None:
    assert not m("proc.name exists", {"proc.name": None})
    assert not m("proc.name != x", {"proc.name": None})

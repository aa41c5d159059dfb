"""Property: the indexed engine (evt.type buckets, folding, shared sub-conditions, grouping by
leading conjunct, merged or-checks) matches exactly what plain per-rule evaluation matches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from webhook.runtime import rules
from webhook.runtime.engine import Engine

TYPES = ["open", "openat", "execve", "connect", None]
LEAVES = [
    "evt.type = open",
    "evt.type in (open, openat)",
    "evt.type != execve",
    "evt.type startswith open",
    "evt.type exists",
    "proc.name = cat",
    "proc.name in (cat, sh)",
    "proc.name startswith c",
    "proc.name != sh",
    "fd.name startswith /etc",
    "fd.name startswith /tmp",
    "fd.name contains passwd",
    "fd.name pmatch (/etc, /var)",
    "fd.num >= 0",
    "fd.num = 3",
    "shared_macro",
    "evt.type = connect",
    "proc.aname = sh",
    "proc.aname[1] = cat",
    "fd.name in (/tmp/x, /var)",
    "tolower(proc.name) = cat",
    "fd.name glob '/etc*'",
]
MACRO = "evt.type in (open, openat) and fd.num >= 0"


def conditions() -> st.SearchStrategy[str]:
    leaf = st.sampled_from(LEAVES)

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.builds(lambda a, b: f"({a} and {b})", inner, inner),
            st.builds(lambda a, b: f"({a} or {b})", inner, inner),
            st.builds(lambda a: f"not {a}", inner),
            st.builds(lambda a, b: f"shared_macro and {a} and {b}", inner, inner),
        )

    return st.recursive(leaf, extend, max_leaves=6)


def events() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "evt.type": st.sampled_from([t for t in TYPES if t]),
            "proc.name": st.sampled_from(["cat", "sh", "curl"]),
            "fd.name": st.sampled_from(["/etc/passwd", "/tmp/x", "/var", "/etcx"]),
            "fd.num": st.sampled_from([-1, 0, 3]),
            "proc.aname[1]": st.sampled_from(["sh", "cat"]),
        },
    )


@settings(
    max_examples=150,
    deadline=None,
    database=None,  # write nothing into the work tree
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(conds=st.lists(conditions(), min_size=1, max_size=6), evs=st.lists(events(), min_size=1, max_size=12))
def test_engine_matches_plain_evaluation(tmp_path: Path, conds: list[str], evs: list[dict[str, Any]]) -> None:
    text = f"- macro: shared_macro\n  condition: {MACRO}\n"
    for i, cond in enumerate(conds):
        text += f"- rule: R{i}\n  desc: d\n  condition: {cond}\n  output: o\n  priority: INFO\n  warn_evttypes: false\n"
    path = tmp_path / "prop.yaml"
    path.write_text(text, encoding="utf-8")
    plain = [rules.condition(c, [path]) for c in conds]
    for match in ("all", "first"):
        engine = Engine.load([path], match=match)
        for event in evs:
            want = [f"R{i}" for i, m in enumerate(plain) if m(event)]
            got = [a.rule for a in engine.process(event)]
            assert got == (want if match == "all" else want[:1]), (event, conds)

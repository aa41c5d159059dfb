"""Attacker-chosen text (object and container names, image references, messages that quote them,
manifest file names) made safe for the place it is shown in, without hiding it.

A character that would act instead of being read is written as a visible escape (``\\x1b``,
``\\u202e``), never dropped: a reviewer must see that a name holds an escape sequence, and two
names that differ only by a control character must still look different. Imports nothing of
the project.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Terminals act on C0/C1 controls and DEL (ESC starts CSI/OSC sequences that clear the screen,
# move the cursor, set the title; U+009B is a one-character CSI on some); bidirectional
# overrides and isolates reorder what is read (CVE-2021-42574, "Trojan Source"); line and
# paragraph separators break lines in some viewers; lone surrogates (a file name's undecodable
# bytes under Python's surrogateescape) cannot be encoded at all; U+FFFE/U+FFFF are
# noncharacters XML forbids.
_TERMINAL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]"
)
# What XML 1.0 (§2.2 Char) forbids outright; the rest is kept as it was for machine consumers.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# The Azure Pipelines agent runs a logging command found ANYWHERE in a line of a step's stdout or
# stderr (``message.IndexOf("##vso[")``), not only at its start as GitHub Actions does: a pod
# named ``x##vso[task.setvariable variable=PATH]/tmp/evil`` would set a variable for the steps
# that follow. Matched in any case, though the agent's match is exact: it costs nothing.
_LOG_COMMAND = re.compile(r"##vso\[", re.IGNORECASE)


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the file name's original byte
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def without_log_commands(text: str, bracket: str) -> str:
    """``text`` with the ``[`` of every ``##vso[`` written as ``bracket``: for serialized JSON
    ``\\u005b`` and for XML or HTML ``&#91;`` (the same string to a parser, inert in a CI log),
    for text a visible ``\\x5b``."""
    if "##" not in text:
        return text
    return _LOG_COMMAND.sub(lambda m: m.group()[:-1] + bracket, text)


def terminal(text: str) -> str:
    """``text`` on one line of a terminal or CI log: every control, bidi or unencodable
    character escaped, and no CI logging command."""
    return without_log_commands(_TERMINAL.sub(_escape, text), "\\x5b")


def json_document(value: Any) -> str:
    """A JSON-like value as an indented, key-sorted JSON document that strict parsers accept and
    a CI log cannot take a command from (see ``without_log_commands``)."""
    text = json.dumps(unicode_values(value), sort_keys=True, indent=2, allow_nan=False) + "\n"
    return without_log_commands(text, "\\u005b")


def terminal_lines(text: str) -> str:
    """Like ``terminal`` but keeps line feeds (messages of several lines)."""
    return "\n".join(terminal(line) for line in text.split("\n"))


def xml(text: str) -> str:
    """``text`` as XML 1.0 character data: the characters XML cannot hold escaped, the rest kept."""
    return _XML_FORBIDDEN.sub(_escape, text)


def unicode(text: str) -> str:
    """``text`` encodable as UTF-8 (JSON, files): lone surrogates escaped, the rest kept."""
    return _SURROGATE.sub(_escape, text)


def unicode_values(value: Any) -> Any:
    """A JSON-like value with ``unicode`` applied to every string, keys included: ``json.dumps``
    writes a lone surrogate as ``\\udcff``, which strict parsers (and I-JSON, RFC 7493) reject."""
    if isinstance(value, str):
        return unicode(value)
    if isinstance(value, dict):
        return {unicode_values(k): unicode_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unicode_values(v) for v in value]
    return value

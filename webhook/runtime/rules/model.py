"""What the rules loader produces: items with their source locations, and diagnostics.

Shared by ``loader`` (which fills a ``Collection``) and ``resolve`` (which reads it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Collection", "Diagnostic", "ExceptionDef", "ListDef", "Loc", "MacroDef", "RuleDef", "Text"]


@dataclass(frozen=True, slots=True)
class Loc:
    file: str
    line: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file  # line 0: the file as a whole


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """An error or warning: ``str()`` is ``file:line: message``; ``snippet`` is the offending text."""

    loc: Loc
    message: str
    snippet: str = ""

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}"

    def detail(self) -> str:
        """The message with the offending text under it, for people."""
        if not self.snippet:
            return str(self)
        text = "\n".join("    " + line for line in self.snippet.rstrip("\n").splitlines())
        return f"{self}\n{text}"


@dataclass
class Text:
    """Condition text assembled from pieces (append), each remembering where it came from."""

    text: str
    pieces: list[tuple[int, Loc]]

    def append(self, more: Text) -> None:
        offset = len(self.text) + 1
        self.text = f"{self.text} {more.text}"
        self.pieces.extend((start + offset, loc) for start, loc in more.pieces)

    def loc_at(self, pos: int) -> Loc:
        best = self.pieces[0][1]
        for start, loc in self.pieces:
            if start <= pos:
                best = loc
        return best


@dataclass
class ExceptionDef:
    name: str
    fields: str | list[str] | None
    comps: str | list[str] | None
    values: list[Any]
    loc: Loc


@dataclass
class ListDef:
    name: str
    items: list[str]
    loc: Loc
    used: bool = False


@dataclass
class MacroDef:
    name: str
    condition: Text
    loc: Loc
    used: bool = False


@dataclass
class RuleDef:
    name: str
    condition: Text
    output: str
    desc: str
    priority: str
    loc: Loc
    enabled: bool = True
    tags: list[str] = field(default_factory=list)
    source: str = "syscall"
    exceptions: list[ExceptionDef] = field(default_factory=list)
    warn_evttypes: bool = True
    skip_if_unknown_filter: bool = False


@dataclass
class Collection:
    """Everything the files define, in definition order (a redefinition keeps its place)."""

    lists: dict[str, ListDef] = field(default_factory=dict)
    macros: dict[str, MacroDef] = field(default_factory=dict)
    rules: dict[str, RuleDef] = field(default_factory=dict)
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)

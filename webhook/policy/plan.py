"""Reader for the plans and functions of a compiled rego-cpp bundle, from its binary form
("Rego Bundle Binary", https://microsoft.github.io/rego-cpp/cpp/rbb.html). Used at compile
time by ``policy.reads`` to learn which input paths the policies can reach.

Why the binary form: rego-cpp's JSON bundle writer corrupts the heap once aiohttp is loaded
(``free(): invalid size``), so the webhook cannot use it in-process. Every statement is decoded
into one of four shapes (``Dot``, ``Assign``, ``Call``, ``Other``) that name the locals each
reads; anything unexpected raises ``PlanFormatError`` and the caller then keeps the whole input.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

_MAGIC = b"REGOBUND"
_HEADER = len(_MAGIC) + 3 + 5 + 4 + 4  # versions, query plan, reserved, local count, crc32
_STATIC, _PLANS, _FUNCS = 1, 2, 3
_LOCAL, STRING, _TRUE, _FALSE = 1, 2, 3, 4
T = TypeVar("T")


class PlanFormatError(Exception):
    """The bytes are not a bundle this reader understands."""


@dataclass(frozen=True, slots=True)
class Operand:
    kind: int  # 1 local, 2 string (index into the string table), 3 true, 4 false
    index: int = 0

    @property
    def local(self) -> int | None:
        return self.index if self.kind == _LOCAL else None


@dataclass(frozen=True, slots=True)
class Dot:
    """``target = source[key]``."""

    source: Operand
    key: Operand
    target: int


@dataclass(frozen=True, slots=True)
class Assign:
    """``target = source`` (AssignVar, AssignVarOnce)."""

    source: Operand
    target: int


@dataclass(frozen=True, slots=True)
class Call:
    """``target = func(args...)``; a rule or function of the bundle gets input as args[0]."""

    func: str
    args: tuple[Operand, ...]
    target: int


@dataclass(frozen=True, slots=True)
class Other:
    """Any other statement: the locals it reads and the blocks it runs."""

    reads: tuple[int, ...]
    blocks: tuple[tuple[Statement, ...], ...] = ()


Statement = Dot | Assign | Call | Other
Blocks = tuple[tuple[Statement, ...], ...]


@dataclass(frozen=True, slots=True)
class Body:
    """A plan (entrypoint; input is local 0) or a function (input is its first parameter)."""

    name: str
    input_local: int | None
    blocks: Blocks


@dataclass(frozen=True, slots=True)
class Program:
    strings: tuple[str, ...]
    bodies: tuple[Body, ...]
    functions: frozenset[str]


def read(data: bytes) -> Program:
    """Decode plans, functions and the string table; raise ``PlanFormatError``."""
    try:
        return _Reader(data).program()
    except (struct.error, IndexError, UnicodeDecodeError, ValueError) as exc:
        raise PlanFormatError(str(exc)) from exc


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def program(self) -> Program:
        if not self.data.startswith(_MAGIC) or self.data[len(_MAGIC)] != 1 or self.data[len(_MAGIC) + 1] != 1:
            raise PlanFormatError("not a version 1 rego-cpp bundle")
        _size, static, plans, funcs, _data = struct.unpack_from("<5Q", self.data, _HEADER)
        strings = self._static(static)
        bodies = [Body(name, 0, blocks) for name, blocks in self._section(plans, _PLANS, self._plan)]
        functions: list[str] = []
        for name, params, blocks in self._section(funcs, _FUNCS, self._func):
            functions.append(name)
            bodies.append(Body(name, params[0] if params else None, blocks))
        return Program(tuple(strings), tuple(bodies), frozenset(functions))

    def _static(self, at: int) -> list[str]:
        self.pos = at
        self._expect(_STATIC)
        for _ in range(self._u32()):  # files: origin and text, not needed here
            self._string()
            self._string()
        return [self._string() for _ in range(self._u32())]

    def _section(self, table: int, section: int, item: Callable[[], T]) -> list[T]:
        # The header points at the section's name table, which starts with the section offset
        # and follows its last item: ending exactly there checks that every statement was
        # decoded with the right length.
        (self.pos,) = struct.unpack_from("<Q", self.data, table)
        self._expect(section)
        items = [item() for _ in range(self._u32())]
        if self.pos != table:
            raise PlanFormatError(f"section {section} decoded to byte {self.pos}, its table is at {table}")
        return items

    def _plan(self) -> tuple[str, Blocks]:
        return self._string(), self._blocks()

    def _func(self) -> tuple[str, list[int], Blocks]:
        name = self._string()
        for _ in range(self._byte()):  # path
            self._string()
        params = [self._u32() for _ in range(self._byte())]
        self._u32()  # result local
        return name, params, self._blocks()

    def _blocks(self) -> Blocks:
        return tuple(self._block() for _ in range(self._u32()))

    def _block(self) -> tuple[Statement, ...]:
        return tuple(self._statement() for _ in range(self._u32()))

    def _statement(self) -> Statement:
        kind = self._byte()
        self._location()
        if kind == 1:  # ArrayAppend: target (the array), value
            target = self._u32()
            return Other(_locals(self._operand(), target))
        if kind == 32:  # SetAdd: value, target (the set)
            value = self._operand()
            return Other(_locals(value, self._u32()))
        if kind in (2, 19):  # AssignInt, MakeNumberInt
            self.pos += 8
            self._u32()
            return Other(())
        if kind in (3, 4):  # AssignVarOnce, AssignVar
            source = self._operand()
            return Assign(source, self._u32())
        if kind == 5:  # Block
            return Other((), self._blocks())
        if kind == 6:  # Break
            self._u32()
            return Other(())
        if kind == 7:  # CallDynamic: path operands, args, target
            path, args = self._operands(), self._operands()
            self._u32()
            return Other(_locals(*path, *args))
        if kind == 8:  # Call
            func, args = self._string(), self._operands()
            return Call(func, tuple(args), self._u32())
        if kind == 9:  # Dot
            source, key = self._operand(), self._operand()
            return Dot(source, key, self._u32())
        if kind in (10, 23):  # Equal, NotEqual
            return Other(_locals(self._operand(), self._operand()))
        if kind in (11, 13, 14):  # IsArray, IsObject, IsSet
            return Other(_locals(self._operand()))
        if kind in (12, 15, 29, 30):  # IsDefined, IsUndefined, ResultSetAdd, ReturnLocal
            return Other((self._u32(),))
        if kind == 16:  # Len
            source = self._operand()
            self._u32()
            return Other(_locals(source))
        if kind in (17, 20):  # MakeArray (capacity), MakeNumberRef (string index)
            self.pos += 4
            self._u32()
            return Other(())
        if kind in (18, 21, 22, 28):  # MakeNull, MakeObject, MakeSet, ResetLocal
            self._u32()
            return Other(())
        if kind == 24:  # Not
            return Other((), (self._block(),))
        if kind in (25, 26):  # ObjectInsert, ObjectInsertOnce: key, value, target (object)
            key, value = self._operand(), self._operand()
            return Other(_locals(key, value, self._u32()))
        if kind == 27:  # ObjectMerge: a, b, target
            a, b = self._u32(), self._u32()
            self._u32()
            return Other((a, b))
        if kind == 31:  # Scan: source, key local, value local, body
            scanned = self._u32()
            self._u32()
            self._u32()
            return Other((scanned,), (self._block(),))
        if kind == 33:  # With: the local it rebinds (input), the value, a path, a body
            target, value = self._u32(), self._operand()
            self.pos += 4 * self._byte()
            return Other(_locals(value, target), (self._block(),))
        if kind == 0:  # Nop
            return Other(())
        raise PlanFormatError(f"unknown statement type {kind} at byte {self.pos}")

    def _location(self) -> None:
        tag = self._byte()
        if tag == 2:
            self.pos += 12
        elif tag != 1:
            raise PlanFormatError(f"unknown location tag {tag} at byte {self.pos}")

    def _operands(self) -> list[Operand]:
        return [self._operand() for _ in range(self._byte())]

    def _operand(self) -> Operand:
        kind = self._byte()
        if kind in (_LOCAL, STRING):
            return Operand(kind, self._u32())
        if kind in (_TRUE, _FALSE):
            return Operand(kind)
        raise PlanFormatError(f"unknown operand type {kind} at byte {self.pos}")

    def _expect(self, section: int) -> None:
        if self._byte() != section:
            raise PlanFormatError(f"section {section} not found at byte {self.pos - 1}")

    def _byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def _u32(self) -> int:
        (value,) = struct.unpack_from("<I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def _string(self) -> str:
        size = self._u32()
        if size > len(self.data) - self.pos:
            raise PlanFormatError(f"string of {size} bytes runs past the end at byte {self.pos}")
        value = self.data[self.pos : self.pos + size].decode()
        self.pos += size
        return value


def _locals(*items: Operand | int) -> tuple[int, ...]:
    out: list[int] = []
    for item in items:
        local = item if isinstance(item, int) else item.local
        if local is not None:
            out.append(local)
    return tuple(out)

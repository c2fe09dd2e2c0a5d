"""Each table's columns, declared once: the SELECT lists, row loaders and value writers.

A :class:`Table` pairs a model class (``viworks.backend.model``) with the columns
that fill it, in the class's field order, each with its :class:`Codec` (how the
value is stored: JSON as text, booleans as 0/1, floats as REAL) and whether it may
change after the row is written (``mutable``) or is written only by a method of
its own (``internal``). Everything else is derived from that declaration: the
SELECT list, the loader that turns a row into the model value (the only place
rows become values), the writer that turns Python values into stored ones, and
the sets of columns a create or an update accepts.

Pure: no I/O, nothing of Twisted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

import attrs
from attrs import AttrsInstance

T = TypeVar("T", bound=AttrsInstance)
V = TypeVar("V", bound=AttrsInstance)
Item = TypeVar("Item")

#: Rows per multi-row INSERT and ids per ``IN (...)`` list: at 5 parameters a row, far
#: below SQLite's 32766 and PostgreSQL's 65535 bound-parameter limits.
ROWS_PER_STATEMENT = 500


@overload
def encode_json(value: None) -> None: ...
@overload
def encode_json(value: Mapping[str, Any] | list[Any]) -> str: ...
@overload
def encode_json(value: Any) -> str | None: ...
def encode_json(value: Any) -> str | None:
    """JSON as stored: None stays SQL NULL (no value is not the JSON ``null``); sorted
    keys keep stored rows stable and diffable; ASCII (non-ASCII escaped), so the text's
    length is its size in bytes."""
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def decode_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _real(value: Any) -> float | None:
    # SQLite's RETURNING skips REAL affinity (an integral 10.0 comes back as the int
    # 10); reads through SELECT and PostgreSQL give floats.
    return None if value is None else float(value)


def _stored_bool(value: Any) -> int:
    # INTEGER in both engines: psycopg would send a bool as boolean.
    return int(bool(value))


@attrs.frozen
class Codec:
    """How a column's value is stored: ``load`` reads it back, ``dump`` writes it (None:
    as it is)."""

    name: str
    load: Callable[[Any], Any] | None = None
    dump: Callable[[Any], Any] | None = None


TEXT = Codec("text")
INT = Codec("int")
REAL = Codec("real", load=_real)
BOOL = Codec("bool", load=bool, dump=_stored_bool)
JSON = Codec("json", load=decode_json, dump=encode_json)


@attrs.frozen
class Column:
    """A column as the model sees it.

    ``mutable``: an update may set it after the row is created. ``internal``: only a
    method of its own writes it (a create refuses it too). ``expr``: a computed value
    (a join's), selected ``AS name``; never written.
    """

    name: str
    codec: Codec = TEXT
    mutable: bool = False
    internal: bool = False
    expr: str | None = None


class Table(Generic[T]):
    """The columns of ``name`` that make a ``model`` value, in the model's field order.

    ``alias`` prefixes the selected columns (a query joining other tables names this
    one ``FROM name alias``).
    """

    def __init__(
        self, name: str, model: type[T], columns: Sequence[Column], alias: str | None = None
    ) -> None:
        fields = tuple(f.name for f in attrs.fields(model))
        names = tuple(c.name for c in columns)
        if names != fields:
            raise TypeError(
                f"table {name}: columns {names} must be {model.__name__}'s fields {fields}"
            )
        self.name = name
        self.model = model
        self.columns = tuple(columns)
        prefix = "" if alias is None else alias + "."
        #: The SELECT (or RETURNING) list, in field order.
        self.select = ", ".join(
            f"{c.expr} AS {c.name}" if c.expr is not None else prefix + c.name for c in columns
        )
        #: Columns a create may write (in field order), and those an update may change.
        self.writable = tuple(c.name for c in columns if not c.internal and c.expr is None)
        self.mutable = frozenset(c.name for c in columns if c.mutable)
        self._loads = tuple(c.codec.load for c in columns)
        self._dumps = {c.name: c.codec.dump for c in columns if c.codec.dump is not None}

    def load(self, row: Sequence[Any]) -> T:
        """The model value of a row selected with :attr:`select`."""
        values = zip(self._loads, row, strict=True)
        return self.model(*[value if load is None else load(value) for load, value in values])

    def load_all(self, rows: Iterable[Sequence[Any]]) -> list[T]:
        return [self.load(row) for row in rows]

    def dump(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Python values -> stored ones (JSON as text, booleans as 0/1)."""
        dumps = self._dumps
        return {
            name: value if (dump := dumps.get(name)) is None else dump(value)
            for name, value in fields.items()
        }

    def dump_value(self, value: T) -> dict[str, Any]:
        """Every writable column of a model value, stored."""
        return self.dump({name: getattr(value, name) for name in self.writable})

    def check_update(self, fields: Iterable[str]) -> None:
        """ValueError for a field an update may not set."""
        unknown = set(fields) - self.mutable
        if unknown:
            raise ValueError(f"unknown or immutable {self.name} fields: {sorted(unknown)}")

    def view(self, model: type[V]) -> Table[V]:
        """The same table read into ``model`` (a subset of the columns, declared here)."""
        by_name = {c.name: c for c in self.columns}
        fields = [f.name for f in attrs.fields(model)]
        missing = [name for name in fields if name not in by_name]
        if missing:
            raise TypeError(f"table {self.name} has no columns {missing} for {model.__name__}")
        return Table(self.name, model, [by_name[name] for name in fields])


def batches(items: Sequence[Item]) -> Iterator[Sequence[Item]]:
    """``items`` in slices of at most :data:`ROWS_PER_STATEMENT`."""
    for start in range(0, len(items), ROWS_PER_STATEMENT):
        yield items[start : start + ROWS_PER_STATEMENT]


def marks(count: int) -> str:
    """``?, ?, ...``: ``count`` placeholders."""
    return ", ".join(["?"] * count)


def like_escape(text: str) -> str:
    """``text`` matched literally by ``LIKE ... ESCAPE '\\'``."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

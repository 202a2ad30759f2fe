"""PS3.4 C.2.2.2 attribute matching, parsed once and evaluated two ways.

A query value becomes a `Condition`; `Condition.sql(column)` is the SQLAlchemy clause that the
index answers, and `Condition.test(value)` is the same rule in Python (used for on-demand virtual
series, which have no rows, and by the tests to cross-check the SQL). Supported, per VR:

* universal matching: empty value (or a lone ``*``) matches everything;
* single value matching: exact; case-insensitive for PN (as Orthanc, unlike DCMTK), case-sensitive
  otherwise, leading/trailing spaces insignificant except for UI;
* wildcard matching: ``*`` and ``?`` in AE, CS, LO, LT, PN, SH, ST, UC, UR, UT values;
* range matching: ``A-B``, ``-B``, ``A-`` for DA and TM (a partial upper time such as ``12`` means
  up to 12:59:59.999999);
* list matching: backslash-separated values match if any matches (PS3.4 "list of UID" matching
  for UI, and the same rule for other VRs, as Orthanc does);
* numbers (IS, US, UL, SS, SL): single value or list, compared as integers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, and_, false, func, or_, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import literal

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM"})
INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL"})


class QueryError(ValueError):
    """A query identifier the SCP cannot process; the message names the attribute."""


# --- a case-sensitive LIKE that means the same on every backend --------------------------------
# SQLite's LIKE ignores ASCII case, PostgreSQL's does not; on SQLite we compile to GLOB instead.
class _Pattern:
    """A wildcard value split into literal runs and the wildcards between them."""

    def __init__(self, value: str) -> None:
        self.parts = re.split(r"([*?])", value)

    def like(self) -> str:
        out = []
        for part in self.parts:
            if part == "*":
                out.append("%")
            elif part == "?":
                out.append("_")
            else:
                out.append(part.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"))
        return "".join(out)

    def glob(self) -> str:
        out = []
        for part in self.parts:
            if part in ("*", "?"):
                out.append(part)
            else:
                out.append(re.sub(r"([*?\[])", r"[\1]", part))
        return "".join(out)

    def regex(self, ignore_case: bool) -> re.Pattern[str]:
        body = "".join(".*" if p == "*" else "." if p == "?" else re.escape(p) for p in self.parts)
        return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


class _CaseSensitiveLike(ColumnElement[bool]):
    type = Boolean()
    # The SQL text depends on the dialect and binds are made while compiling: don't cache it.
    inherit_cache = False

    def __init__(self, column: ColumnElement[Any], pattern: _Pattern) -> None:
        self.column = column
        self.pattern = pattern


@compiles(_CaseSensitiveLike)
def _compile_like(element: _CaseSensitiveLike, compiler: Any, **kw: Any) -> str:
    left = compiler.process(element.column, **kw)
    right = compiler.process(literal(element.pattern.like()), **kw)
    return f"{left} LIKE {right} ESCAPE '\\'"


@compiles(_CaseSensitiveLike, "sqlite")
def _compile_glob(element: _CaseSensitiveLike, compiler: Any, **kw: Any) -> str:
    left = compiler.process(element.column, **kw)
    return f"{left} GLOB {compiler.process(literal(element.pattern.glob()), **kw)}"


# --- conditions ---------------------------------------------------------------------------------
class Condition:
    """One attribute's matching rule: SQL clause on a column, and the same test in Python."""

    universal: bool = False

    def sql(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        raise NotImplementedError

    def test(self, value: Any) -> bool:
        raise NotImplementedError


class Universal(Condition):
    universal = True

    def sql(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        return true()

    def test(self, value: Any) -> bool:
        return True


@dataclass
class Exact(Condition):
    value: str
    ignore_case: bool = False

    def sql(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        if self.ignore_case:
            return func.lower(column) == self.value.lower()
        return column == self.value

    def test(self, value: Any) -> bool:
        text = "" if value is None else str(value)
        return text.lower() == self.value.lower() if self.ignore_case else text == self.value


@dataclass
class Wildcard(Condition):
    value: str
    ignore_case: bool = False

    def sql(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        pattern = _Pattern(self.value)
        if self.ignore_case:
            return func.lower(column).like(_Pattern(self.value.lower()).like(), escape="\\")
        return _CaseSensitiveLike(column, pattern)

    def test(self, value: Any) -> bool:
        text = "" if value is None else str(value)
        return _Pattern(self.value).regex(self.ignore_case).fullmatch(text) is not None


@dataclass
class Range(Condition):
    low: str | None
    high: str | None

    def sql(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        # An empty stored value has no date/time, so it is outside every range.
        clauses = [column != ""]
        if self.low is not None:
            clauses.append(column >= self.low)
        if self.high is not None:
            clauses.append(column <= self.high)
        return and_(*clauses)

    def test(self, value: Any) -> bool:
        text = "" if value is None else str(value)
        if not text:
            return False
        return (self.low is None or text >= self.low) and (self.high is None or text <= self.high)


@dataclass
class IntegerEquals(Condition):
    value: int

    def sql(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        return column == self.value

    def test(self, value: Any) -> bool:
        try:
            return value is not None and int(value) == self.value
        except (TypeError, ValueError):
            return False


@dataclass
class AnyOf(Condition):
    """List matching: an entity matches if any of the values matches."""

    options: list[Condition]

    def sql(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        exact = [c.value for c in self.options if isinstance(c, Exact) and not c.ignore_case]
        others = [c.sql(column) for c in self.options if not (isinstance(c, Exact) and not c.ignore_case)]
        if exact:
            others.insert(0, column.in_(exact))
        return or_(*others) if others else false()

    def test(self, value: Any) -> bool:
        return any(c.test(value) for c in self.options)


# --- parsing ------------------------------------------------------------------------------------
_DA_RE = re.compile(r"\d{4}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])")
_TM_RE = re.compile(r"([01]\d|2[0-3])([0-5]\d(([0-5]\d|60)(\.\d{1,6})?)?)?")


def _normalise_date(text: str, keyword: str) -> str:
    text = text.replace(".", "")  # ACR-NEMA style 2020.01.31 still shows up in old clients
    if not _DA_RE.fullmatch(text):
        raise QueryError(f"{keyword}: {text!r} is not a DA value (YYYYMMDD)")
    return text


def _normalise_time(text: str, keyword: str, upper: bool) -> str:
    text = text.replace(":", "")
    if not _TM_RE.fullmatch(text):
        raise QueryError(f"{keyword}: {text!r} is not a TM value (HHMMSS.FFFFFF)")
    if upper:
        # "-12" includes every time in hour 12: pad with the largest digits.
        return text + "595959.999999"[len(text):] if "." not in text else text.ljust(13, "9")
    return text


def _parse_range(text: str, vr: str, keyword: str) -> Condition:
    low_text, _, high_text = text.partition("-")
    low_text, high_text = low_text.strip(), high_text.strip()
    if not low_text and not high_text:
        return Universal()
    if vr == "DA":
        low = _normalise_date(low_text, keyword) if low_text else None
        high = _normalise_date(high_text, keyword) if high_text else None
    else:
        low = _normalise_time(low_text, keyword, upper=False) if low_text else None
        high = _normalise_time(high_text, keyword, upper=True) if high_text else None
    if low is not None and high is not None and low > high:
        raise QueryError(f"{keyword}: range {text!r} has its start after its end")
    return Range(low, high)


def _parse_single(text: str, vr: str, keyword: str) -> Condition:
    if vr != "UI":
        text = text.strip()
    if text == "" or (text == "*" and vr in WILDCARD_VRS):
        return Universal()
    if vr in RANGE_VRS:
        if "-" in text:
            return _parse_range(text, vr, keyword)
        if vr == "DA":
            return Exact(_normalise_date(text, keyword))
        # A single TM value matches that time at the precision given (PS3.4 C.2.2.2.1).
        low = _normalise_time(text, keyword, upper=False)
        return Range(low, _normalise_time(text, keyword, upper=True))
    if vr in INTEGER_VRS:
        try:
            return IntegerEquals(int(text))
        except ValueError:
            raise QueryError(f"{keyword}: {text!r} is not an integer") from None
    ignore_case = vr == "PN"
    if vr in WILDCARD_VRS and ("*" in text or "?" in text):
        return Wildcard(text, ignore_case=ignore_case)
    return Exact(text, ignore_case=ignore_case)


def parse_condition(raw: Any, vr: str, keyword: str) -> Condition:
    """The matching rule for one query attribute value (None/empty means universal)."""
    if vr == "SQ":
        raise QueryError(f"{keyword}: sequence values are matched by the caller, not here")
    if raw is None:
        return Universal()
    if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue":
        values = [str(v) for v in raw]
    else:
        values = str(raw).split("\\")
    conditions = [_parse_single(v, vr, keyword) for v in values]
    if len(conditions) == 1:
        return conditions[0]
    if any(c.universal for c in conditions):
        return Universal()
    return AnyOf(conditions)

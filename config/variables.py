"""Variables: the row type of the settings table, the declaration helper, and the loop that reads rows.

Generic: it knows no setting by name. ``config.settings`` declares each setting as a
dataclass field with ``setting(...)``; ``variables_of`` lists the rows from the
fields, and ``read_variables`` parses an environment against them, collecting one
line per invalid value instead of stopping at the first. A secret row's value never
appears in a line it produces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")
_VARIABLE = "wsupload.variable"  # the key in a field's metadata that holds its row


@dataclass(frozen=True)
class Variable(Generic[T]):
    """One row of the settings table: how a variable is read, checked and documented."""

    env: str
    parse: Callable[[str], T]
    default: str | None
    """The default as a user would write it (``"7d"``); ``None`` leaves the field ``None``."""
    meaning: str
    """The "meaning" cell of docs/configuration.md's table."""
    check: Callable[[T], bool] | None = None
    rule: str = ""
    """Completes "must be …" when ``check`` refuses a value."""
    shown: str = "{}"
    """The "default" cell of docs/configuration.md's table; ``{}`` stands for the default in backticks."""
    secret: bool = False
    """Never shown: not in ``repr``, and a bad value is described without quoting it."""
    required_by_worker: bool = False
    display: Callable[[str], str] | None = None
    """How a value is shown in a refusal's error line and in ``settings_repr`` (a URL with its
    password masked); default: quoted."""
    field: str = ""
    """The field it sets, filled in by ``variables_of`` once the class exists."""

    def read(self, text: str) -> T:
        """The value of ``text``, or ``ValueError`` saying why it is not acceptable."""
        value = self.parse(text)
        if self.check is not None and not self.check(value):
            raise ValueError(f"must be {self.rule}")
        return value

    def default_cell(self) -> str:
        return self.shown.replace("{}", f"`{self.default}`")


@overload
def setting(
    env: str,
    parse: Callable[[str], T],
    default: str,
    meaning: str,
    *,
    check: Callable[[T], bool] | None = ...,
    rule: str = ...,
    shown: str = ...,
    secret: bool = ...,
    display: Callable[[str], str] | None = ...,
) -> T: ...


@overload
def setting(
    env: str,
    parse: Callable[[str], T],
    default: None,
    meaning: str,
    *,
    shown: str,
    check: Callable[[T], bool] | None = ...,
    rule: str = ...,
    secret: bool = ...,
    required_by_worker: bool = ...,
    display: Callable[[str], str] | None = ...,
) -> T | None: ...


def setting(
    env: str,
    parse: Callable[[str], Any],
    default: str | None,
    meaning: str,
    *,
    check: Callable[[Any], bool] | None = None,
    rule: str = "",
    shown: str = "{}",
    secret: bool = False,
    required_by_worker: bool = False,
    display: Callable[[str], str] | None = None,
) -> Any:
    """Declare a dataclass field from its row; typed as the parsed value, like ``dataclasses.field``.

    The default is parsed and checked here, at import, so a default that its own
    variable would refuse cannot ship.
    """
    variable = Variable(env, parse, default, meaning, check, rule, shown, secret, required_by_worker, display)
    value = None if default is None else variable.read(default)
    return field(default=value, repr=not secret, metadata={_VARIABLE: variable})


def variables_of(cls: type[Any]) -> tuple[Variable[Any], ...]:
    """The rows of a dataclass whose every field is declared with ``setting(...)``, in field order."""
    rows = []
    for f in fields(cls):
        if _VARIABLE not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting(...)")
        rows.append(replace(f.metadata[_VARIABLE], field=f.name))
    return tuple(rows)


def settings_repr(settings: Any) -> str:
    """``repr`` of a dataclass declared with ``setting(...)``: no secret, and a value with a
    ``display`` (a URL) shown through it, so no password reaches a log line or a traceback."""
    shown = []
    for variable in variables_of(type(settings)):
        if variable.secret:
            continue
        value = getattr(settings, variable.field)
        text = variable.display(value) if variable.display and isinstance(value, str) else repr(value)
        shown.append(f"{variable.field}={text}")
    return f"{type(settings).__name__}({', '.join(shown)})"


def read_variables(
    variables: tuple[Variable[Any], ...], env: Mapping[str, str], *, worker: bool
) -> tuple[dict[str, Any], list[str]]:
    """The values set in ``env`` by field name (unset ones are left out), and one line per problem."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for variable in variables:
        raw = env.get(variable.env)
        if raw is None or not raw.strip():
            if worker and variable.required_by_worker:
                problems.append(f"{variable.env}: is required to run a worker (set it in the worker's environment)")
            continue  # the field keeps its default
        try:
            values[variable.field] = variable.read(raw)
        except ValueError as exc:
            # A secret's reason already says what is wrong; quoting the value would leak it.
            shown = "" if variable.secret else f" (got {(variable.display or repr)(raw.strip())})"
            problems.append(f"{variable.env}: {exc}{shown}")
    return values, problems

"""The one validator: declarative rules for every config table and spec, with one wording of errors.

Config sections, layer kinds, optimizers, schedules, regularizers, the CLI and the Keras import all check their
values here, so a mistake reads the same wherever it is made: the dotted path of the key, what was wrong, what
would be valid and, where names are involved, the closest valid name::

    optimizer.name: 'rmsporp' is not one of rmsprop, nadam, adamax, sgd, adam, adamw (did you mean 'rmsprop'?)
    train.epochs: -1 is out of range; it must be >= 0
    train.epochs: expected an integer, got float 2.5

A ``Rule`` checks one value; a table of ``Key`` (default + rule) describes one table; a ``SpecSchema``
describes a family of tables picked by name (``{"name": "adam", ...}``).
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cnnlab.errors import CnnlabError

REQUIRED: Any = object()  # a Key default: the key must be given


def parse_toml(text: str, what: str) -> dict[str, Any]:
    """Parse TOML text; a syntax error becomes one line: ``{what} is not valid TOML: ...``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CnnlabError(f"{what} is not valid TOML: {exc}") from None


def suggest(word: Any, options: list[str] | tuple[str, ...]) -> str:
    """Return `` (did you mean 'x'?)`` for the option closest to ``word``, or "" when none is close."""
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def show(value: Any) -> str:
    """Describe a value with its type for an error message: ``float 2.5``."""
    return f"{type(value).__name__} {value!r}"


def join(path: str, key: Any) -> str:
    """Return the dotted path of ``key`` below ``path``."""
    return f"{path}.{key}" if path else str(key)


def not_one_of(path: str, value: Any, options: list[str] | tuple[str, ...]) -> CnnlabError:
    """The error for a value outside a list of names, with a did-you-mean."""
    return CnnlabError(f"{path}: {value!r} is not one of {', '.join(options)}" + suggest(value, options))


def check_choice(path: str, value: Any, options: list[str] | tuple[str, ...]) -> Any:
    """Return ``value`` if it is one of ``options``, else raise ``not_one_of``."""
    if value not in options:
        raise not_one_of(path, value, options)
    return value


def unknown_key(path: str, what: str, valid: list[str], hint: str = "") -> CnnlabError:
    """The error for a key that does not belong, e.g. ``train.epohcs: unknown key; valid keys: epochs, ...``."""
    return CnnlabError(f"{path}: {what}; valid keys: {', '.join(valid)}" + suggest(path.rsplit(".", 1)[-1], valid)
                       + hint)


def expected_table(path: str, value: Any, what: str = "a table") -> CnnlabError:
    """The error for a value that should be a table."""
    return CnnlabError(f"{path or 'config'}: expected {what}, got {show(value)}")


# ---------------------------------------------------------------------------------------------------------
# Rules for one value


# type -> (the test a value of it passes, what the error says was expected); bools are never numbers
_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int), "an integer"),
    "number": (lambda v: isinstance(v, (int, float)), "a number"),
}


@dataclass(frozen=True)
class Rule:
    """How to check one value: its type, its range or its choices; ``optional`` also accepts None."""

    type: str  # int | number | bool | str | choice | any
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    fold_case: bool = False
    optional: bool = False
    convert: Callable[[str, Any], Any] | None = None  # type "any": a function (path, value) -> value

    def check(self, path: str, value: Any, as_float: bool = False) -> Any:
        """Return the checked value (an int becomes a float where ``as_float``); raise ``CnnlabError``."""
        if value is None and self.optional:
            return None
        if self.type == "choice":
            if self.fold_case and isinstance(value, str):
                value = value.lower()
            return check_choice(path, value, self.choices)
        if self.type == "any":
            return self.convert(path, value) if self.convert else value
        is_kind, expected = _TYPES[self.type]
        if isinstance(value, bool) != (self.type == "bool") or not is_kind(value):
            raise CnnlabError(f"{path}: expected {expected}, got {show(value)}")
        if self.type in ("bool", "str"):
            return value
        self._check_range(path, value)
        return float(value) if as_float else value

    def _check_range(self, path: str, value: float) -> None:
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high or math.isnan(value) or math.isinf(value):
            raise CnnlabError(f"{path}: {value} is out of range; it must be {self.bounds()}")

    def bounds(self) -> str:
        """Say the valid range in words: ``>= 0``, ``> 0``, ``>= 0 and < 1``; "finite" when unbounded."""
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts) or "finite"


def integer(low: int | None = None, high: int | None = None) -> Rule:
    """A whole number (not a bool, not a float) in ``[low, high]``."""
    return Rule("int", low, high)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Rule:
    """A finite real number (an int is accepted) inside the bounds."""
    return Rule("number", low, high, low_open, high_open)


def boolean() -> Rule:
    """true or false."""
    return Rule("bool")


def text() -> Rule:
    """Any string."""
    return Rule("str")


def choice(*values: str, fold_case: bool = False) -> Rule:
    """One of ``values`` (compared lower-cased where ``fold_case``)."""
    return Rule("choice", choices=tuple(values), fold_case=fold_case)


def custom(convert: Callable[[str, Any], Any]) -> Rule:
    """A value checked and converted by ``convert(path, value)``."""
    return Rule("any", convert=convert)


def optional(rule: Rule) -> Rule:
    """``rule``, or None."""
    return Rule(**{**rule.__dict__, "optional": True})


@dataclass(frozen=True)
class Key:
    """One key of a table: its default (``REQUIRED`` = must be given) and its rule."""

    default: Any
    rule: Rule

    def check(self, path: str, value: Any) -> Any:
        """Check ``value`` for this key; an int becomes a float where the default is a float."""
        return self.rule.check(path, value, as_float=isinstance(self.default, float))


# ---------------------------------------------------------------------------------------------------------
# Tables


def resolve_table(path: str, raw: Any, keys: Mapping[str, Key], *, what: str = "unknown key", owner: str = "",
                  skip: tuple[str, ...] = (), hint: str = "") -> dict[str, Any]:
    """Check a table against its keys and return it with every default filled in (in ``keys`` order).

    Args:
        path: the dotted path of the table, for messages.
        raw: the table as given.
        keys: the allowed keys.
        what: how an unknown key is described ("unknown key", "not a key of a conv layer").
        owner: who needs a missing required key ("a conv layer").
        skip: keys that the caller handles (they are allowed and left out of the result).
        hint: appended to the unknown-key message.

    Raises:
        CnnlabError: not a table, an unknown key, a missing required key or a bad value.
    """
    if not isinstance(raw, Mapping):
        raise expected_table(path, raw)
    valid = [k for k in keys if k not in skip]
    for key in raw:
        if key not in keys and key not in skip:
            raise unknown_key(join(path, key), what, valid, hint)
    out: dict[str, Any] = {}
    for key, spec in keys.items():
        if key in skip:
            continue
        if key in raw:
            out[key] = spec.check(join(path, key), raw[key])
        elif spec.default is REQUIRED:
            raise CnnlabError(f"{join(path, key)}: missing; {owner or path} needs {key!r}")
        else:
            out[key] = spec.default
    return out


@dataclass(frozen=True)
class SpecSchema:
    """A family of tables picked by a name key: ``{"name": "adam", "beta_1": 0.9}``.

    Attributes:
        section: the config section, for messages (``optimizer``).
        name_key: the key that picks the member (``name`` or ``kind``).
        members: per name, its keys (the name key left out).
        check: an optional cross-key check ``(section, name, params) -> None`` after the keys are resolved.
    """

    section: str
    name_key: str
    members: Mapping[str, Mapping[str, Key]]
    check: Callable[[str, str, dict[str, Any]], None] | None = field(default=None, compare=False)

    @property
    def names(self) -> list[str]:
        """The member names, in registry order."""
        return list(self.members)

    def defaults(self, name: str) -> dict[str, Any]:
        """The default of every key of member ``name`` (None where required)."""
        return {k: (None if key.default is REQUIRED else key.default) for k, key in self.members[name].items()}

    def resolve(self, spec: Any, path: str | None = None, hint: str = "") -> dict[str, Any]:
        """Turn a name or a table into the full table (name key first, every default filled in).

        Args:
            spec: a member name or a table with the name key.
            path: where the spec sits, for messages; default the section.
            hint: appended to the unknown-key message.

        Raises:
            CnnlabError: unknown name or key, a missing required key, or a bad value.
        """
        path = path or self.section
        if isinstance(spec, str):
            spec = {self.name_key: spec}
        if not isinstance(spec, Mapping):
            raise expected_table(path, spec, f"a name or a table with {self.name_key!r}")
        if self.name_key not in spec:
            raise CnnlabError(f"{path}.{self.name_key}: missing; valid values: {', '.join(self.names)}")
        name = choice(*self.names, fold_case=True).check(f"{path}.{self.name_key}", spec[self.name_key])
        params = resolve_table(path, spec, self.members[name], what=f"not a parameter of {name}",
                               owner=f"{self.section} {name!r}", skip=(self.name_key,), hint=hint)
        if self.check is not None:
            self.check(path, name, params)
        return {self.name_key: name, **params}

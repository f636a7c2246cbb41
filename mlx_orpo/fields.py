"""What one option of `TrainConfig` is: its kind, flag, choices and bounds (`FieldSpec`).

`config.FIELD_SPECS` holds one spec per field, made from the field's type hint and its `_opt(...)`
metadata. Validation, YAML reading, the CLI's flags and the app's form all read these specs, so a
field's kind, spelling, choices and range are written once, beside its default and help text.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass


def flag(name: str) -> str:
    """The long flag of a field: `learning_rate` -> `--learning-rate` (YAML keys take either spelling)."""
    return f"--{name.replace('_', '-')}"


_TRUE, _FALSE = ("true", "yes", "on", "y"), ("false", "no", "off", "n")
_NUMBER = re.compile(r"[+-]?(\d[\d_]*\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> int | float:
    """A number as a person writes it: 5, 0.1, or text such as '5e-5' or '1_000' (YAML 1.1 reads
    `5e-5` as a string). ValueError for anything else, booleans included."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value.strip().replace("_", ""))
    if _is_int(value) or isinstance(value, float):
        return value
    raise ValueError


def _read_int(value) -> int:
    number = _number(value)
    if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
        raise ValueError
    return int(number)


def _read_bool(value) -> bool:
    """true/false, or the words YAML 1.1 and people use for them (a quoted "false" is a string that
    Python would take as true)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError


def _read_text(value) -> str:
    if _is_int(value) or isinstance(value, float):
        return str(value)  # e.g. a memory size or a model name that happens to be a number
    if isinstance(value, str):
        return value
    raise ValueError


def _read_names(value) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if _is_names(value):
        return list(value)
    raise ValueError


def _is_names(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value)


def _read_mapping(value) -> dict[str, str]:
    """`key=value` pairs separated by commas or spaces ('prompt=question,chosen=good'), or a mapping
    (YAML's `columns: {prompt: question}`); keys and values are names (text)."""
    if isinstance(value, str):
        parts = [part for part in re.split(r"[,\s]+", value.strip()) if part]
        if not parts or not all(part.count("=") == 1 for part in parts):
            raise ValueError
        value = dict(part.split("=") for part in parts)
    if isinstance(value, dict):
        mapping = {_read_text(k).strip(): _read_text(v).strip() for k, v in value.items()}
        if _is_mapping(mapping):
            return mapping
    raise ValueError


def _is_mapping(value) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()))


def mapping_text(value: dict) -> str:
    """A mapping as the command line writes it: 'prompt=question,chosen=good'."""
    return ",".join(f"{k}={v}" for k, v in value.items())


@dataclass(frozen=True)
class Kind:
    """One kind of option value: what it is called in messages, which Python values are of it
    (validation), and how a written value reads as one (YAML, the app's form; ValueError when it does not)."""
    what: str
    accepts: Callable[[object], bool]
    read: Callable[[object], object]


KINDS = {
    bool: Kind("true or false", lambda v: isinstance(v, bool), _read_bool),
    int: Kind("an integer", _is_int, _read_int),
    float: Kind("a number", lambda v: _is_int(v) or isinstance(v, float), lambda v: float(_number(v))),
    str: Kind("text", lambda v: isinstance(v, str), _read_text),
    list: Kind("a list of names (e.g. q_proj v_proj)", _is_names, _read_names),
    dict: Kind("name=name pairs (e.g. prompt=question,chosen=good)", _is_mapping, _read_mapping),
}

_NUM = r"-?\d+(?:\.\d+)?"
_INTERVALS = (  # (pattern, match -> (low, low included, high, high included))
    (re.compile(rf"(>=|>) ({_NUM})"), lambda m: (float(m[2]), m[1] == ">=", math.inf, False)),
    (re.compile(rf"(<=|<) ({_NUM})"), lambda m: (-math.inf, False, float(m[2]), m[1] == "<=")),
    (re.compile(rf"in ([\[(])({_NUM}), ({_NUM})([\])])"),
     lambda m: (float(m[2]), m[1] == "[", float(m[3]), m[4] == "]")),
    (re.compile(rf"({_NUM})(?: \([\w ]+\))?"), lambda m: (float(m[1]), True, float(m[1]), True)),  # "-1 (all)"
)


@dataclass(frozen=True)
class Bound:
    """A field's range, written as its error message says it: '>= 0', '> 0', 'in [0, 1)', or
    alternatives joined by ' or ' ('-1 (all) or >= 1'). Each alternative is one interval."""
    text: str
    intervals: tuple[tuple[float, bool, float, bool], ...]

    @classmethod
    def parse(cls, text: str) -> Bound:
        intervals = []
        for part in text.split(" or "):
            found = [read(m) for pattern, read in _INTERVALS if (m := pattern.fullmatch(part.strip()))]
            if not found:
                raise ValueError(f"not a bound: {part!r} (in {text!r})")
            intervals.append(found[0])
        return cls(text, tuple(intervals))

    def admits(self, value: float) -> bool:
        return any((low < value or (closed_low and low == value)) and (value < high or (closed_high and value == high))
                   for low, closed_low, high, closed_high in self.intervals)

    @property
    def lowest(self) -> float | None:
        """The lowest value allowed or approached (a form's minimum); None when unbounded below."""
        low = min(interval[0] for interval in self.intervals)
        return None if low == -math.inf else low

    @property
    def highest(self) -> float | None:
        high = max(interval[2] for interval in self.intervals)
        return None if high == math.inf else high


def shown(value) -> str:
    """A value as the user would write it: lists as names separated by spaces, mappings as
    'key=value,key=value', None as '(none)'."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    if isinstance(value, dict):
        return mapping_text(value)
    return "(none)" if value is None else str(value)


def either(values) -> str:
    """'a', 'a or b', 'a, b or c'."""
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


@dataclass(frozen=True)
class FieldSpec:
    """One option as every front end needs it. The CLI's flags, YAML reading, `TrainConfig.validate`
    and the app's widgets are made from these."""
    name: str
    kind: type            # a key of KINDS: bool, int, float, str, list (of names) or dict (names to names)
    optional: bool        # None is a value (the help text says what None means)
    default: object
    help: str
    choices: tuple | None = None
    aliases: tuple = ()
    bounds: Bound | None = None
    words: tuple = ()     # words a text option takes besides free text (memory_budget: auto, off)

    @property
    def flag(self) -> str:
        return flag(self.name)

    @property
    def shown_default(self) -> str:
        """The default as the user would write it (lists as names separated by spaces)."""
        return shown(self.default)

    def args(self, value) -> list[str]:
        """The command-line words that give this option `value`, as the CLI reads them: `--flag value`,
        `--flag` or `--no-flag` for a switch, `--flag name name` for a list. ValueError for None, which no
        flag gives (leave the option out: None is every optional field's default)."""
        if value is None:
            raise ValueError(f"{self.flag}: no command-line value means None; leave the option out")
        if self.kind is bool:
            return [self.flag if value else f"--no-{self.flag[2:]}"]
        if self.kind is list:
            return [self.flag, *map(str, value)]
        return [self.flag, str(value)]

    def is_default(self, value) -> bool:
        if isinstance(value, (list, tuple)):  # validate() makes the default tuple a list
            return list(value) == list(self.default)
        return value == self.default

    def read(self, value, where: str):
        """A value as a person wrote it (in YAML, in a form's box) -> this option's value, by its kind:
        `5e-5` and '1e3' are numbers, 'false', 'no' and 'off' are false. ValueError naming `where` when
        it fits no reading of the kind."""
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{where} needs a value (default: {self.shown_default})")
        if value is False and "off" in self.words:
            return "off"  # YAML 1.1 reads the word off as false
        try:
            return KINDS[self.kind].read(value)
        except ValueError:
            raise ValueError(f"{where} must be {KINDS[self.kind].what}, got {value!r}") from None

    def check(self, value) -> None:
        """ValueError naming the flag unless `value` is of this option's kind, a finite number where it
        is one, one of its choices and within its bounds (a hand-edited config.json or a Python caller
        can give anything: `--learning-rate inf` would train to all-NaN adapters and exit 0)."""
        if value is None:
            if self.optional:
                return
            raise ValueError(f"{self.flag} needs a value (default: {self.shown_default})")
        kind = KINDS[self.kind]
        if not kind.accepts(value):
            raise ValueError(f"{self.flag} must be {kind.what}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{self.flag} must be a finite number, got {value}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.flag} must be {either(self.choices)}, got {value!r}")
        if self.bounds is not None and not self.bounds.admits(value):
            raise ValueError(f"{self.flag} must be {self.bounds.text}, got {value}")


def spec_of(f: dataclasses.Field, hint) -> FieldSpec:
    """A dataclass field made with `config._opt` -> its spec; its kind from its type hint."""
    args = typing.get_args(hint)
    optional = type(None) in args
    inner = next(a for a in args if a is not type(None)) if optional else hint
    kind = typing.get_origin(inner) if typing.get_origin(inner) in (list, dict) else inner
    if kind not in KINDS:
        raise TypeError(f"{f.name}: no reader for options of type {hint}")
    meta = f.metadata
    bounds = Bound.parse(meta["bounds"]) if "bounds" in meta else None
    return FieldSpec(f.name, kind, optional, f.default, meta["help"], meta.get("choices"),
                     tuple(meta.get("aliases", ())), bounds, tuple(meta.get("words", ())))

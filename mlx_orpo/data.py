"""Preference data: read a file, directory or Hub dataset into validated `PreferencePair`s.

    pairs, report = load_pairs("prefs.jsonl")
    train, valid, report = load_splits("my_dir/", eval_fraction=0.05, seed=0)

Supported layouts are listed in `FORMATS` and parsed in `mlx_orpo.data_formats`.
Every problem is a `DataError` naming the file, the row and what is wrong; with
`skip_bad_rows=True` bad rows are listed in `LoadReport.skipped` instead.
Nothing here prints or keeps state.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data_formats import FORMATS, RowError, check_columns, detect_format, map_columns, normalise_row
from .files import dangling_link

__all__ = ["FORMATS", "DataError", "LoadReport", "PreferencePair", "load_pairs", "load_splits", "read_columns"]

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
EVAL_SPLIT_NAMES = ("valid", "validation", "test")
# "org/name" or "name", optionally ":split"; anything else that does not exist is a missing file.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[dict, ...]  # chat messages; optional system first; ends with a user turn
    chosen: str  # preferred final assistant answer
    rejected: str  # dispreferred final assistant answer
    origin: str = ""  # "path:row", for messages


class DataError(ValueError):
    """Unusable data; the message names the file, the row and the problem."""


@dataclass
class LoadReport:
    source: str
    format: str
    rows: int  # rows read (including bad ones)
    pairs: int  # pairs kept
    skipped: list[str] = field(default_factory=list)  # one message per skipped row
    # Filled by load_splits: where the held-out pairs came from, and how many.
    eval_source: str = ""
    eval_pairs: int = 0
    duplicates: int = 0  # pairs (train and held-out together) that repeat an earlier one exactly
    duplicate_example: str = ""  # "where (same as where)" for the first of them
    ignored: list[str] = field(default_factory=list)  # a directory's data files not read, each "path (why)"


@dataclass(frozen=True)
class _Row:
    origin: str  # "path:row" as stored on the pair
    where: str  # "path, line 3" for messages
    value: Any  # the parsed row, or a RowError when it could not be parsed


# -- reading ----------------------------------------------------------------------


# Python's JSON reader recurses per level: a row nested a few thousand deep overflows its stack.
_TOO_DEEP = "JSON nested too deeply to be a preference row"


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text (byte offset {e.start}, line {line})") from None
    if not text.strip():
        raise DataError(f"{path}: empty file")
    return text


def _jsonl_rows(path: Path, text: str) -> Iterator[_Row]:
    if text.lstrip().startswith("["):  # a JSON array saved as .jsonl (often pretty-printed): read as one
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            data = e
        if isinstance(data, list):
            yield from _indexed_rows(path, data)
            return
        if isinstance(data, json.JSONDecodeError) and not _parses(text.lstrip().split("\n", 1)[0]):
            raise DataError(f"{path}: looks like a JSON array (it starts with '['), not JSON Lines (one object per "
                            f"line), but is not valid JSON: {data.msg} at line {data.lineno}, "
                            f"column {data.colno}") from None
    # split("\n"), not splitlines(): U+2028 and friends may sit inside JSON strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value: Any = json.loads(line)
        except json.JSONDecodeError as e:
            value = RowError(f"not valid JSON ({e.msg} at column {e.colno})")
        except RecursionError:
            value = RowError(_TOO_DEEP)
        yield _Row(f"{path}:{lineno}", f"{path}, line {lineno}", value)


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False
    return True


def _indexed_rows(path: Path | str, items: list) -> Iterator[_Row]:
    for i, item in enumerate(items):
        yield _Row(f"{path}:{i}", f"{path}, index {i}", item)


def _json_rows(path: Path, text: str) -> Iterator[_Row]:
    try:
        data = json.loads(text)
    except RecursionError:
        raise DataError(f"{path}: {_TOO_DEEP}") from None
    except json.JSONDecodeError as e:
        # Many ".json" files on the Hub are really JSON Lines.
        if e.msg == "Extra data":
            yield from _jsonl_rows(path, text)
            return
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    yield from _indexed_rows(path, data)


def _csv_rows(path: Path, text: str) -> Iterator[_Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for i, record in enumerate(reader, start=1):
            if None in record:  # more cells than header columns
                value: Any = RowError(f"has {len(record[None])} more cells than the header")
            else:
                value = {k: v for k, v in record.items()}
            yield _Row(f"{path}:{i}", f"{path}, row {i}", value)
    except csv.Error as e:
        raise DataError(f"{path}: not valid CSV near line {reader.line_num}: {e}") from None


def _parquet_rows(path: Path) -> Iterator[_Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        items = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for bad files
        raise DataError(f"{path}: not a readable parquet file: {e}") from None
    if not items:
        raise DataError(f"{path}: empty file (no rows)")
    yield from _indexed_rows(path, items)


def _file_rows(path: Path) -> list[_Row]:
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise DataError(f"{path}: unsupported extension '{path.suffix}' (expected {', '.join(EXTENSIONS)})")
    if ext == ".parquet":
        return list(_parquet_rows(path))
    text = _read_text(path)
    readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows}
    rows = list(readers[ext](path, text))
    if not rows:
        raise DataError(f"{path}: empty file (no rows)")
    return rows


def _hub_rows(name: str, split: str) -> list[_Row]:
    label = f"{name}[{split}]"
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split)
        items = list(ds)
    except Exception as e:  # offline, unknown name, unknown split, ...
        raise DataError(f"could not load Hub dataset {name} (split {split}): {e}") from None
    if not items:
        raise DataError(f"{label}: empty dataset")
    return list(_indexed_rows(label, items))


def _hub_split_names(name: str) -> list[str]:
    try:
        import datasets

        return list(datasets.get_dataset_split_names(name))
    except Exception as e:
        raise DataError(f"could not load Hub dataset {name}: {e}") from None


# -- resolving a source -----------------------------------------------------------


def _split_file(directory: Path, names: tuple[str, ...]) -> Path | None:
    """The one file of a directory's split (`names`: its aliases, e.g. valid/validation), None when
    there is none; DataError naming them when there are several, which would leave one unread."""
    found = [file for name in names for ext in EXTENSIONS if (file := directory / f"{name}{ext}").is_file()]
    if len(found) > 1:
        every = "both" if len(found) == 2 else "all"
        raise DataError(f"{directory}: {' and '.join(p.name for p in found)} are {every} {'/'.join(names)} files, "
                        "and only one would be read; keep one of them (or move the others out of the folder)")
    return found[0] if found else None


def _split_aliases(split: str) -> tuple[str, ...]:
    return ("valid", "validation") if split in ("valid", "validation") else (split,)


def _eval_split_names(train_split: str) -> list[str]:
    """Hub names for the held-out split: "train" -> validation/valid/test; "train_prefs" -> test_prefs, ..."""
    if "train" in train_split:
        return [train_split.replace("train", name, 1) for name in ("validation", "valid", "test")]
    return []


def _hub_parts(source: str) -> tuple[str, str | None]:
    name, _, split = source.partition(":")
    return name, split or None


def _is_hub_name(source: str) -> bool:
    return bool(_HUB_NAME.match(source)) and Path(source.partition(":")[0]).suffix.lower() not in EXTENSIONS


def _rows_for(source: str, split: str) -> tuple[str, list[_Row]]:
    """(label, rows) for a file, a directory's split, or a Hub dataset split."""
    path = Path(source).expanduser()
    if path.is_dir():
        file = _split_file(path, _split_aliases(split))
        if file is None:
            names = "/".join(_split_aliases(split))
            raise DataError(f"{path}: directory has no {names}{{{','.join(EXTENSIONS)}}} file")
        return str(file), _file_rows(file)
    if path.is_file():
        return str(path), _file_rows(path)
    if path.exists():
        raise DataError(f"{path}: not a regular file")
    if (link := dangling_link(path)) is not None:
        raise DataError(f"{source}: no such file ({link})")
    if _is_hub_name(source):
        name, hub_split = _hub_parts(source)
        return f"{name}[{hub_split or split}]", _hub_rows(name, hub_split or split)
    raise DataError(f"{source}: no such file")


def _check_unicode(prompt, chosen: str, rejected: str) -> None:
    """JSON may spell a lone UTF-16 surrogate ("\\ud800"), which is no Unicode text: the
    tokenizer stopped the run on it with a TypeError, even with --skip-bad-rows."""
    texts = [(f"prompt message {i + 1}", m["content"]) for i, m in enumerate(prompt)]
    for where, text in texts + [("'chosen'", chosen), ("'rejected'", rejected)]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise RowError(f"{where} holds a lone surrogate {text[e.start]!r} at character {e.start + 1} "
                           "(not valid Unicode text)") from None


def _columns_found(rows: list[_Row]) -> list[str]:
    """Every column (key) of the rows that are objects, in the order they first appear."""
    return list(dict.fromkeys(str(k) for row in rows if isinstance(row.value, dict) for k in row.value))


def _mapped_rows(rows: list[_Row], columns: dict[str, str], label: str) -> list[_Row]:
    """The rows with --columns applied; a mapped column that no row has is the file's fault, named."""
    found = _columns_found(rows)
    for role, column in columns.items():
        if found and column not in found:
            raise DataError(f"{label}: --columns {role}={column} names a column it does not have "
                            f"(its columns: {', '.join(found)})")

    def mapped(row: _Row) -> _Row:
        if isinstance(row.value, RowError):
            return row
        try:
            return _Row(row.origin, row.where, map_columns(row.value, columns))
        except RowError as e:
            return _Row(row.origin, row.where, e)
    return [mapped(row) for row in rows]


def _pairs_from_rows(rows: list[_Row], fmt: str, skip_bad_rows: bool, system: str | None, label: str,
                     columns: dict[str, str] | None = None):
    if columns:
        rows = _mapped_rows(rows, columns, label)
    if fmt == "auto":
        fmt, first_problem = None, None
        for row in rows:  # the first row that parses decides; a broken first row then reports its own fault
            if isinstance(row.value, RowError):  # unreadable: the message if no row is readable
                first_problem = first_problem or f"{row.where}: {row.value}"
                continue
            try:
                fmt = detect_format(row.value)
            except RowError as e:
                first_problem = first_problem or f"{row.where}: {e}"
            except RecursionError:
                first_problem = first_problem or f"{row.where}: {_TOO_DEEP}"
            if fmt:
                break
        if fmt is None:
            raise DataError(first_problem or f"{label}: cannot detect the format")
    pairs, skipped = [], []
    for row in rows:
        try:
            if isinstance(row.value, RowError):
                raise row.value
            try:
                prompt, chosen, rejected = normalise_row(row.value, fmt, system)
                _check_unicode(prompt, chosen, rejected)
            except RecursionError:
                raise RowError(_TOO_DEEP) from None
        except RowError as e:
            message = f"{row.where}: {e}"
            if not skip_bad_rows:
                raise DataError(message) from None
            skipped.append(message)
            continue
        pairs.append(PreferencePair(prompt, chosen, rejected, row.origin))
    if not pairs:
        raise DataError(f"{label}: no usable pairs ({len(skipped)} bad rows; first: {skipped[0]})")
    return pairs, LoadReport(label, fmt, len(rows), len(pairs), skipped)


def _check_format(format: str, columns: dict[str, str] | None = None) -> None:
    if format != "auto" and format not in FORMATS:
        raise DataError(f"unknown format '{format}'; expected 'auto' or one of: {', '.join(FORMATS)}")
    try:
        check_columns(columns)
    except ValueError as e:
        raise DataError(str(e)) from None


# -- public API -------------------------------------------------------------------


def load_pairs(
    source: str,
    *,
    format: str = "auto",
    split: str = "train",
    skip_bad_rows: bool = False,
    system: str | None = None,
    columns: dict[str, str] | None = None,
) -> tuple[list[PreferencePair], LoadReport]:
    """Read one split of `source` (file, directory or Hub "org/name[:split]") into pairs.

    `format` is "auto" (detected from the first readable row) or one of FORMATS.
    `split` picks `<split>.<ext>` in a directory or the Hub split; a file ignores it.
    `system` is prepended as a system message to rows that have none.
    `columns` ({role: column}, see data_formats.map_columns) renames the file's columns first.
    """
    _check_format(format, columns)
    label, rows = _rows_for(str(source), split)
    return _pairs_from_rows(rows, format, skip_bad_rows, system, label, columns)


def read_columns(source: str, split: str = "train") -> list[str]:
    """The columns of `source`'s rows (those that are objects), in the order they first appear: what
    a --columns mapping may name."""
    return _columns_found(_rows_for(str(source), split)[1])


def _held_out_source(source: str) -> str | None:
    """The validation split that comes with `source`, if any (a file, or "name:split"): a directory's
    valid (or validation) file, else its test file."""
    path = Path(source).expanduser()
    if path.is_dir():
        file = _split_file(path, _split_aliases("valid")) or _split_file(path, ("test",))
        return str(file) if file else None
    if path.exists() or not _is_hub_name(source):
        return None
    name, split = _hub_parts(source)
    available = _hub_split_names(name)
    for candidate in _eval_split_names(split or "train"):
        if candidate in available:
            return f"{name}:{candidate}"
    return None


def carve_eval(pairs: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Split off round(eval_fraction * n) items (at least 1 when n >= 2, never all).

    Uses its own `random.Random(seed)`; both parts keep the input order.
    eval_fraction == 0 means no held-out set.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(pairs)
    if n < 2 or eval_fraction == 0.0:
        return list(pairs), []
    k = min(max(1, round(n * eval_fraction)), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def data_source(cfg) -> str:
    """Where a run's (TrainConfig's) training pairs come from: --data, or the shipped demo set."""
    if cfg.data:
        return cfg.data
    from .demo_data import DEMO_DATA_PATH
    return str(DEMO_DATA_PATH)


def load_splits(
    source: str,
    *,
    eval_source: str | None = None,
    format: str = "auto",
    eval_fraction: float = 0.05,
    seed: int = 0,
    skip_bad_rows: bool = False,
    system: str | None = None,
    columns: dict[str, str] | None = None,
) -> tuple[list[PreferencePair], list[PreferencePair], LoadReport]:
    """(train pairs, held-out pairs, report).

    The held-out set is `eval_source` if given; else the directory's valid/validation/test
    file or the Hub dataset's validation/test split; else `eval_fraction` carved off with
    `random.Random(seed)`. The report's rows/pairs/skipped cover both parts;
    `eval_source` and `eval_pairs` say where the held-out pairs came from. `columns` maps both parts.
    """
    _check_format(format, columns)
    source = str(source)
    read = dict(format=format, skip_bad_rows=skip_bad_rows, system=system, columns=columns)
    train, report = load_pairs(source, **read)
    held_out = str(eval_source) if eval_source is not None else _held_out_source(source)
    if held_out is None:
        train, valid = carve_eval(train, eval_fraction, seed)
        report.eval_source = f"{eval_fraction:g} of {report.source} (seed {seed})" if valid else ""
    else:
        valid, eval_report = load_pairs(held_out, **read)
        report.rows += eval_report.rows
        report.skipped += eval_report.skipped
        report.eval_source = eval_report.source
    report.pairs = len(train) + len(valid)
    report.eval_pairs = len(valid)
    report.ignored = _unread_files(source, report.source, report.eval_source)
    report.duplicates, report.duplicate_example = _duplicates([*train, *valid])
    return train, valid, report


def _unread_files(source: str, train: str, held_out: str) -> list[str]:
    """The data files of a directory `source` other than the `train` and `held_out` ones read, each
    "path (why it was not read)"."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return []
    ignored = []
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS):
        if str(file) in (train, held_out):
            continue
        if file.stem in EVAL_SPLIT_NAMES:
            why = f"the held-out pairs are {held_out}" if held_out else "no held-out pairs"
        else:
            why = f"only train and {'/'.join(EVAL_SPLIT_NAMES)} files are read"
        ignored.append(f"{file} ({why})")
    return ignored


def _duplicates(pairs: list[PreferencePair]) -> tuple[int, str]:
    """(how many pairs repeat an earlier one exactly, "origin (same as origin)" for the first)."""
    seen, count, example = {}, 0, ""
    for pair in pairs:
        key = json.dumps([pair.prompt, pair.chosen, pair.rejected], sort_keys=True)
        if key in seen:
            count += 1
            example = example or f"{pair.origin} (same as {seen[key]})"
        else:
            seen[key] = pair.origin
    return count, example

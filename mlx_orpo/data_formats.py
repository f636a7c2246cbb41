"""The five preference-row layouts, each turned into (prompt messages, chosen, rejected), and the
column mapping (`--columns`) that renames a file's own columns to the keys the layouts read.

Pure functions over one already-parsed row (a dict). A bad row raises `RowError`
with the problem only; `mlx_orpo.data` adds the file and row, so messages here
never need to know where a row came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

FORMATS = ("prompt_strings", "trl_conversational", "ultrafeedback", "sharegpt", "hh")

ROLES = ("system", "user", "assistant")
# Tool turns cannot be rendered by every chat template and ORPO here trains on
# text answers only, so they are refused rather than silently dropped.
UNSUPPORTED_ROLES = ("tool", "function", "function_call", "observation", "ipython")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}

Messages = list[dict[str, str]]


class RowError(ValueError):
    """One row is unusable; the message states the problem, not the location."""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _require(row: dict, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in row:
        raise RowError(f"missing key '{key}' (found keys: {', '.join(map(str, row)) or 'none'})")
    value = row[key]
    if not isinstance(value, kind):
        raise RowError(f"'{key}' must be {what}, got {_type_name(value)}")
    return value


def _optional_system(row: dict) -> str | None:
    value = row.get("system")
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"'system' must be a string, got {_type_name(value)}")
    return value if value.strip() else None


def _message(msg: Any, where: str, role_key: str = "role", content_key: str = "content",
             roles: dict[str, str] | None = None) -> dict[str, str]:
    """Validate one message and return a clean {"role", "content"} copy.

    `roles` maps the row's role names to ours (ShareGPT's {"from": "human", "value": ...}
    turns use other keys and names); by default the names are ours already.
    """
    roles = roles or {role: role for role in ROLES}
    if not isinstance(msg, dict):
        raise RowError(f"{where} must be an object with '{role_key}' and '{content_key}', got {_type_name(msg)}")
    for key in (role_key, content_key):
        if key not in msg:
            raise RowError(f"{where} is missing key '{key}'")
    role, content = msg[role_key], msg[content_key]
    if not isinstance(role, str):
        raise RowError(f"{where} '{role_key}' must be a string, got {_type_name(role)}")
    if role in UNSUPPORTED_ROLES:
        raise RowError(f"{where} has unsupported role '{role}' (tool turns are not supported)")
    if role not in roles:
        raise RowError(f"{where} has unknown role '{role}' (expected one of {', '.join(roles)})")
    if not isinstance(content, str):
        raise RowError(f"{where} '{content_key}' must be a string, got {_type_name(content)}")
    return {"role": roles[role], "content": content}


def _messages(value: Any, key: str) -> Messages:
    if not isinstance(value, list):
        raise RowError(f"'{key}' must be a list of messages, got {_type_name(value)}")
    return [_message(m, f"'{key}' message {i + 1}") for i, m in enumerate(value)]


def _single_answer(value: Any, key: str) -> str:
    """TRL's chosen/rejected: a list holding one assistant message."""
    msgs = _messages(value, key)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in msgs) or "nothing"
        raise RowError(f"'{key}' must be exactly one assistant message, got {roles}")
    return msgs[0]["content"]


def _split_shared_prefix(chosen: Messages, rejected: Messages, what: str) -> tuple[Messages, str, str]:
    """Full conversations -> (shared prefix, final chosen answer, final rejected answer)."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    rest_c, rest_r = chosen[n:], rejected[n:]
    if not rest_c and not rest_r:
        raise RowError("chosen is identical to rejected")
    for side, rest in (("chosen", rest_c), ("rejected", rest_r)):
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            roles = ", ".join(m["role"] for m in rest) or "nothing"
            raise RowError(
                f"after the {what} shared by chosen and rejected, {side} continues with "
                f"{roles}; expected exactly one assistant message"
            )
    return chosen[:n], rest_c[0]["content"], rest_r[0]["content"]


# -- the five layouts -------------------------------------------------------------


def _prompt_strings(row: dict) -> tuple[Messages, str, str, str | None]:
    prompt = _require(row, "prompt", str, "a string")
    chosen = _require(row, "chosen", str, "a string")
    rejected = _require(row, "rejected", str, "a string")
    return [{"role": "user", "content": prompt}], chosen, rejected, _optional_system(row)


def _trl_conversational(row: dict) -> tuple[Messages, str, str, str | None]:
    prompt = _messages(_require(row, "prompt", list, "a list of messages"), "prompt")
    chosen = _single_answer(_require(row, "chosen", list, "a list of messages"), "chosen")
    rejected = _single_answer(_require(row, "rejected", list, "a list of messages"), "rejected")
    return prompt, chosen, rejected, _optional_system(row)


def _ultrafeedback(row: dict) -> tuple[Messages, str, str, str | None]:
    chosen = _messages(_require(row, "chosen", list, "a list of messages"), "chosen")
    rejected = _messages(_require(row, "rejected", list, "a list of messages"), "rejected")
    prompt, c, r = _split_shared_prefix(chosen, rejected, "conversation")
    # The `prompt` column is redundant with the conversation; use it only as a check.
    hint = row.get("prompt")
    if isinstance(hint, str) and hint.strip():
        user_turns = {m["content"].strip() for m in prompt if m["role"] == "user"}
        if user_turns and hint.strip() not in user_turns:
            raise RowError("'prompt' column does not match any user turn of the conversation")
    return prompt, c, r, None


def _sharegpt(row: dict) -> tuple[Messages, str, str, str | None]:
    def convert(turn: Any, where: str) -> dict[str, str]:
        return _message(turn, where, "from", "value", SHAREGPT_ROLES)

    turns = _require(row, "conversations", list, "a list of turns")
    prompt = [convert(t, f"conversations turn {i + 1}") for i, t in enumerate(turns)]
    answers = []
    for key in ("chosen", "rejected"):
        msg = convert(_require(row, key, dict, "an object {\"from\": \"gpt\", \"value\": ...}"), f"'{key}'")
        if msg["role"] != "assistant":
            raise RowError(f"'{key}' must come from gpt/assistant, got '{row[key]['from']}'")
        answers.append(msg["content"])
    return prompt, answers[0], answers[1], _optional_system(row)


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def _hh_turns(text: str, key: str) -> Messages:
    marks = list(_HH_TURN.finditer(text))
    if not marks:
        raise RowError(f"'{key}' has no 'Human:'/'Assistant:' turns")
    if text[: marks[0].start()].strip():
        raise RowError(f"'{key}' has text before its first 'Human:' turn")
    turns = []
    for mark, nxt in zip(marks, marks[1:] + [None]):
        body = text[mark.end() : nxt.start() if nxt else len(text)]
        role = "user" if mark.group(1) == "Human" else "assistant"
        turns.append({"role": role, "content": body.strip()})
    return turns


def _hh(row: dict) -> tuple[Messages, str, str, str | None]:
    chosen = _hh_turns(_require(row, "chosen", str, "a string"), "chosen")
    rejected = _hh_turns(_require(row, "rejected", str, "a string"), "rejected")
    prompt, c, r = _split_shared_prefix(chosen, rejected, "turns")
    return prompt, c, r, None


NORMALISERS: dict[str, Callable[[dict], tuple[Messages, str, str, str | None]]] = {
    "prompt_strings": _prompt_strings,
    "trl_conversational": _trl_conversational,
    "ultrafeedback": _ultrafeedback,
    "sharegpt": _sharegpt,
    "hh": _hh,
}


# -- column mapping (--columns) ------------------------------------------------------

# The keys a layout reads from a row, which --columns maps a file's own columns onto, and `label`: a
# column saying which of the two answers is preferred (1: the one mapped to chosen, 2: the other).
COLUMN_ROLES = ("prompt", "chosen", "rejected", "system", "conversations", "label")
_FIRST, _SECOND = "1", "2"


def check_columns(columns: dict[str, str] | None) -> None:
    """ValueError naming --columns unless each key is a role of COLUMN_ROLES and no column serves two
    roles (the kind, name=name pairs, is the field table's to check)."""
    if not columns:
        return
    for role, column in columns.items():
        if role not in COLUMN_ROLES:
            raise ValueError(f"--columns {role}={column}: '{role}' is not a role; map a column to "
                             f"{', '.join(COLUMN_ROLES)} (e.g. --columns prompt=question,chosen=good,rejected=bad)")
    taken: dict[str, str] = {}
    for role, column in columns.items():
        if column in taken:
            raise ValueError(f"--columns maps column '{column}' to both {taken[column]} and {role}")
        taken[column] = role


def _first_preferred(value: Any, columns: dict[str, str]) -> bool:
    """Whether a label value prefers the answer mapped to chosen: 1 or its column's name; 2 or the
    rejected column's name prefers the other."""
    first, second = columns.get("chosen", "chosen"), columns.get("rejected", "rejected")
    text = str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    if text is not None and re.fullmatch(r"[12]\.0*", text):  # 1.0 from a float column, or its CSV text
        text = text[0]
    if text in (_FIRST, first):
        return True
    if text in (_SECOND, second):
        return False
    raise RowError(f"label column '{columns['label']}' must be {_FIRST} ('{first}' preferred) or {_SECOND} "
                   f"('{second}' preferred), got {value!r}")


def map_columns(row: Any, columns: dict[str, str] | None) -> Any:
    """A row with its columns renamed as --columns says ({role: column}); with a label column, chosen
    and rejected swapped where the label prefers the second answer. Columns not mapped are kept."""
    if not columns or not isinstance(row, dict):
        return row  # a row that is no object is normalise_row's to refuse
    for role, column in columns.items():
        if column not in row:
            raise RowError(f"missing column '{column}' (--columns {role}={column})")
    mapped = {k: v for k, v in row.items() if k not in columns and k not in columns.values()}
    mapped.update({role: row[column] for role, column in columns.items() if role != "label"})
    if "label" in columns and not _first_preferred(row[columns["label"]], columns):
        if "chosen" not in mapped or "rejected" not in mapped:
            raise RowError(f"label column '{columns['label']}' needs both answers: map chosen and rejected")
        mapped["chosen"], mapped["rejected"] = mapped["rejected"], mapped["chosen"]
    return mapped


# -- detection and normalisation ----------------------------------------------------


def detect_format(row: Any) -> str:
    """Guess the layout from one row's keys and value types."""
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {_type_name(row)}")
    if "conversations" in row:
        return "sharegpt"
    if "chosen" in row and "rejected" in row:
        prompt, chosen = row.get("prompt"), row["chosen"]
        if isinstance(prompt, list):
            return "trl_conversational"
        if isinstance(chosen, list):  # full conversations, with or without a `prompt` string
            return "ultrafeedback"
        if isinstance(prompt, str) and isinstance(chosen, str):
            return "prompt_strings"
        if prompt is None and isinstance(chosen, str) and _HH_TURN.search(chosen):
            return "hh"
    keys = ", ".join(map(str, row)) or "none"
    raise RowError(f"cannot detect the format from keys ({keys}); pass format= one of {', '.join(FORMATS)}")


def normalise_row(row: Any, fmt: str, system: str | None = None) -> tuple[tuple[dict, ...], str, str]:
    """One parsed row -> (prompt messages, chosen, rejected), validated.

    Answers are stripped of surrounding whitespace. A system prompt (the row's
    `system` field, else the `system` argument) is prepended when the prompt has none.
    """
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {_type_name(row)}")
    prompt, chosen, rejected, row_system = NORMALISERS[fmt](row)

    sys_text = row_system or system
    if sys_text and not (prompt and prompt[0]["role"] == "system"):
        prompt = [{"role": "system", "content": sys_text}] + prompt
    if not prompt:
        raise RowError("prompt is empty")
    for i, msg in enumerate(prompt):
        if msg["role"] == "system" and i > 0:
            raise RowError(f"prompt message {i + 1} is a system message; only the first may be")
        if not msg["content"].strip() and msg["role"] != "system":
            raise RowError(f"prompt message {i + 1} ({msg['role']}) is empty")
    if prompt[-1]["role"] != "user":
        raise RowError(f"prompt must end with a user turn, but ends with {prompt[-1]['role']}")

    chosen, rejected = chosen.strip(), rejected.strip()
    if not chosen:
        raise RowError("chosen answer is empty")
    if not rejected:
        raise RowError("rejected answer is empty")
    if chosen == rejected:
        raise RowError("chosen is identical to rejected")
    return tuple(prompt), chosen, rejected

"""The Data tab's column mapping: a file whose columns are not the standard names (prompt, chosen,
rejected) gets a dropdown per role, filled with the file's columns and pre-set by a guess; the mapping
is `TrainConfig.columns` (`--columns`), which the library applies and checks (data_formats)."""

from __future__ import annotations

import gradio as gr

from mlx_orpo.data_formats import COLUMN_ROLES

# The roles offered (conversations is a ShareGPT file's own name: such files need no mapping).
ROLES = tuple(role for role in COLUMN_ROLES if role != "conversations")
NONE = "(none)"
LABELS = {"prompt": "Prompt", "chosen": "Chosen (preferred) answer", "rejected": "Rejected answer",
          "system": "System prompt (optional)",
          "label": "Preference label (optional): 1 prefers the first answer, 2 the second"}
# Column names other datasets use for each role, most telling first (matched ignoring case).
GUESSES = {
    "prompt": ("prompt", "question", "instruction", "input", "query", "context"),
    "chosen": ("chosen", "good", "better", "preferred", "output_1", "response_1", "answer_1", "response_a"),
    "rejected": ("rejected", "bad", "worse", "dispreferred", "output_2", "response_2", "answer_2", "response_b"),
    "system": ("system", "system_prompt"),
    "label": ("preference", "label", "winner"),
}
NUMBERED = ("output_1", "response_1", "answer_1", "response_a")  # two answers that a label ranks


def needs_mapping(columns: list[str]) -> bool:
    """A file whose rows are objects without both standard answer columns."""
    return bool(columns) and not {"chosen", "rejected"} <= set(columns)


def guess(columns: list[str]) -> dict[str, str]:
    """{role: column} for the roles whose usual names the file has (a label only beside numbered answers)."""
    by_lower = {c.lower(): c for c in columns}
    found = {}
    for role, names in GUESSES.items():
        column = next((by_lower[n] for n in names if n in by_lower and by_lower[n] not in found.values()), None)
        if column is not None:
            found[role] = column
    if found.get("chosen", "").lower() not in NUMBERED:
        found.pop("label", None)
    return found


def chosen_mapping(values) -> dict[str, str] | None:
    """The dropdowns' values (in ROLES order) -> {role: column}; None when nothing is chosen."""
    mapping = {role: value for role, value in zip(ROLES, values) if value and value != NONE}
    return mapping or None


def views(columns: list[str], mapping: dict | None) -> list:
    """The mapping box (shown for a file that needs it) and each role's dropdown."""
    choices = [NONE, *columns]
    mapping = mapping or {}
    return [gr.Group(visible=bool(columns)),
            *(gr.Dropdown(choices=choices, value=mapping.get(role, NONE)) for role in ROLES)]


def build() -> tuple[gr.Group, list[gr.Dropdown], gr.Button]:
    with gr.Group(visible=False, elem_id="data-mapping") as box:
        gr.Markdown("**Column mapping.** This file's columns are not named prompt / chosen / rejected: "
                    "choose which column plays each role (the run saves it as `--columns`).")
        with gr.Row():
            # Any name is taken: the library names a column the file lacks (data.load_pairs).
            dropdowns = [gr.Dropdown([NONE], value=NONE, label=LABELS[role], elem_id=f"data-map-{role}",
                                     allow_custom_value=True) for role in ROLES]
        apply = gr.Button("Apply mapping", elem_id="data-map-apply")
    return box, dropdowns, apply

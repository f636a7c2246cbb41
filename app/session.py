"""Per-browser-session state (kept in a gr.State) and the app-wide context."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .cache import Models
from .jobs import Jobs


@dataclass
class Context:
    """What every handler may touch: the runs directory, the shared model cache and the server's
    training job (one for every tab: the job belongs to the server, not to a browser session)."""
    runs_dir: Path
    max_upload_bytes: int
    models: Models
    uploaded: set = field(default_factory=set)  # paths Gradio's upload route handed out (build_app links it)
    jobs: Jobs | None = None
    chat_stops: set = field(default_factory=set)  # sessions whose chat Stop was pressed (chat_tab.chat ends it)

    def __post_init__(self):
        if self.jobs is None:
            self.jobs = Jobs(self.runs_dir)


@dataclass
class Session:
    data: str | None = None          # absolute path of an upload, or a Hub name; None: the demo set
    data_label: str = "the shipped demo set"
    pairs: list = field(default_factory=list)      # loaded pairs (for preview and token statistics)
    skipped: list = field(default_factory=list)    # the loader's messages for bad rows
    encoded: list = field(default_factory=list)    # the same pairs tokenized, untruncated
    encoded_model: str | None = None
    columns: dict | None = None      # the column mapping `data` is read with (the run's --columns)
    file_columns: list = field(default_factory=list)  # the chosen file's columns, when they need a mapping
    mapping_source: tuple | None = None  # (source, label) of that file, for Apply mapping
    mapping: dict | None = None      # the mapping its dropdowns show (a guess, or the last one applied)
    hist_layout: tuple | None = None  # the Data tab's histogram: (bin width, colour map) for its rows
    system_rows: int = 0             # pairs that carry their own system prompt
    replacement_rows: int = 0        # pairs whose text already holds U+FFFD in the source
    plan_inputs: dict = field(default_factory=dict)  # the Train tab's memory plan's data and tokenizer
    last_seen: tuple = ()            # what the Train tab last drew (run, file sizes, status time, running)

"""Per-browser-session state (kept in a gr.State) and the app-wide context."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .cache import Models
from .jobs import Job
from .runfiles import Rate


@dataclass
class Context:
    """What every handler may touch: the runs directory and the shared model cache."""
    runs_dir: Path
    max_upload_bytes: int
    models: Models
    uploaded: set = field(default_factory=set)  # paths Gradio's upload route handed out (build_app links it)


@dataclass
class Session:
    data: str | None = None          # absolute path of an upload, or a Hub name; None: the demo set
    data_label: str = "the shipped demo set"
    pairs: list = field(default_factory=list)      # loaded pairs (for preview and token statistics)
    skipped: list = field(default_factory=list)    # the loader's messages for bad rows
    encoded: list = field(default_factory=list)    # the same pairs tokenized, untruncated
    encoded_model: str | None = None
    job: Job | None = None
    rate: Rate = field(default_factory=Rate)
    last_seen: tuple = ()            # (config, metrics and log sizes, running) at the last refresh
    shown: tuple = ()                # (progress, status, eta, when) last drawn, for the ETA countdown

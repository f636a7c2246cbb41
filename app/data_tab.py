"""Data tab: bring a preference file (upload or Hub name), validate it, preview it
with the model's chat template, and see token lengths against the max length."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import gradio as gr
import pandas as pd

from mlx_orpo.config import FIELD_SPECS, TrainConfig
from mlx_orpo.data import DataError, load_pairs
from mlx_orpo.tokenize import encode_pairs, fit_pairs, render_prompt

from .paths import PathError, discard, received_upload, relative, store_upload
from .session import Context, Session

DEFAULTS = TrainConfig()
FIELD_HELP = FIELD_SPECS["max_length"].help
STATS_PAIRS = 2000          # token statistics on at most this many pairs
PREVIEW_PAIRS = 3
# owner/name[:split] only: a bare name may be a `datasets` builder ("json", "csv") that reads every
# such file in the app's working directory (a creds.csv there would be shown as data).
_HUB = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
EMPTY_BAD = pd.DataFrame(columns=["row", "problem"])
PREVIEW_COLUMNS = ["prompt (chat template)", "chosen", "rejected"]
EMPTY_PREVIEW = ""
FITS_COLOURS = {"≤ max length": "#3b82f6", "over max length": "#ef4444"}
EMPTY_HIST = None  # (an empty frame as a BarPlot's first value stops later bars from drawing in Gradio 6)


def _has_replacement(pair) -> bool:
    return any("\ufffd" in m["content"] for m in pair.prompt) or "\ufffd" in pair.chosen + pair.rejected


def _load(ctx: Context, session: Session, source: str, label: str) -> str:
    """Validate `source` into the session; return the report as Markdown."""
    pairs, report = load_pairs(source, skip_bad_rows=True)
    session.data, session.data_label = source, label
    session.pairs, session.skipped, session.encoded, session.encoded_model = pairs, report.skipped, [], None
    session.system_rows = sum(1 for p in pairs if p.prompt and p.prompt[0]["role"] == "system")
    session.replacement_rows = sum(1 for p in pairs if _has_replacement(p))
    skipped = len(report.skipped)
    notes = []
    if session.system_rows:
        notes.append(f"**{session.system_rows} pairs carry their own system prompt** (kept as written; "
                     "a --system prompt applies only to the others).")
    if session.replacement_rows:
        notes.append(f"**{session.replacement_rows} pairs contain U+FFFD (�)**, the mark of text lost to a "
                     "wrong encoding before this file was written; they train as they are.")
    return (f"**{label}** — format `{report.format}`: {report.rows} rows read, **{report.pairs} pairs** kept"
            + (f", **{skipped} bad rows** (listed below; training skips them)." if skipped else ", no bad rows.")
            + "".join(f"  \n{n}" for n in notes)
            + "\n\nThe Train tab will use this data.")


def bad_rows(ctx: Context, session: Session) -> pd.DataFrame:
    if not session.skipped:
        return EMPTY_BAD
    rows = []
    for message in session.skipped:
        message = message.replace(str(ctx.runs_dir.resolve()) + "/", "").replace(str(ctx.runs_dir) + "/", "")
        where, _, problem = message.partition(": ")
        rows.append((where, problem))
    return pd.DataFrame(rows, columns=["row", "problem"])


def _preview_html(rows: list[tuple[str, str, str]]) -> str:
    """A table whose cells keep their line breaks (a chat template is checked line by line)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in PREVIEW_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td><pre>{html.escape(cell)}</pre></td>" for cell in row) + "</tr>"
                   for row in rows)
    return f'<table class="orpo-preview"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def preview(ctx: Context, session: Session, model: str) -> str:
    if not session.pairs:
        return EMPTY_PREVIEW
    tok = ctx.models.tokenizer(model)
    return _preview_html([(render_prompt(tok, p.prompt), p.chosen, p.rejected)
                          for p in session.pairs[:PREVIEW_PAIRS]])


def token_stats(ctx: Context, session: Session, model: str, max_length: int) -> tuple[pd.DataFrame, str]:
    """Histogram of untruncated pair lengths, and what truncation does at max_length."""
    if not session.pairs:
        return EMPTY_HIST, ""
    max_length = int(max_length)
    if session.encoded_model != model:
        huge = 10 ** 9
        session.encoded, _ = encode_pairs(ctx.models.tokenizer(model), session.pairs[:STATS_PAIRS],
                                          max_length=huge, max_prompt_length=huge - 1, min_response_length=1)
        session.encoded_model = model
    cfg = TrainConfig(max_length=max_length)  # the trainer's truncation rule, as the trainer applies it
    _, fit = fit_pairs(session.encoded, max_length=max_length, max_prompt_length=cfg.prompt_budget,
                       min_response_length=cfg.min_response_length)
    truncated, dropped = fit.truncated, fit.dropped
    lengths = pd.Series([p.length for p in session.encoded])
    width = bin_width(int(lengths.max()), max_length)
    # A numeric axis: bins keep their numeric order and empty ones stay as gaps. Each row is a bin
    # start (a multiple of width, so the plot's bins of `width` hold exactly one row per colour).
    fits = (lengths <= max_length).map({True: "≤ max length", False: "over max length"})
    hist = (pd.DataFrame({"tokens": (lengths // width * width).astype(int), "fits": fits})
            .groupby(["tokens", "fits"]).size().rename("pairs").reset_index()[["tokens", "pairs", "fits"]])
    n = len(session.encoded)
    sampled = f" (first {n} of {len(session.pairs)})" if len(session.pairs) > n else ""
    text = (f"**At max length {max_length}:** {truncated} of {n} pairs{sampled} will be truncated, "
            f"**{dropped} dropped** (cannot keep {DEFAULTS.min_response_length} response tokens). "
            f"Pair length (prompt + longer answer): median {int(lengths.median())}, max {int(lengths.max())} tokens.")
    # x_bin and the colours present rebuild the chart when they change (Gradio fixes both when it draws).
    colours = {name: FITS_COLOURS[name] for name in FITS_COLOURS if name in set(hist["fits"])}
    return gr.BarPlot(hist, x_bin=width, color_map=colours), text


def bin_width(longest: int, max_length: int, bins: int = 20) -> int:
    """A bin width that divides max_length (or is a multiple of it), so that one bin edge is the max
    length and no bin holds pairs on both sides of it; about `bins` bins up to the longest pair."""
    raw = max(longest / bins, 1)
    if raw >= max_length:
        return max_length * math.ceil(raw / max_length)
    parts = max(int(max_length // raw), 1)
    while max_length % parts:
        parts -= 1
    return max_length // parts


def _analyse(ctx, session, model, max_length, load):
    """Run `load` (which fills the session) and every view; errors become a readable report."""
    try:
        report = load()
    except (DataError, PathError, OSError, ValueError) as exc:
        message = str(exc).replace(str(ctx.runs_dir.resolve()) + "/", "")
        session.data, session.data_label, session.pairs, session.skipped = None, "the shipped demo set", [], []
        report = f"⚠️ **Not usable:** {message}\n\nTraining would use the shipped demo set."
        return session, report, EMPTY_BAD, EMPTY_PREVIEW, EMPTY_HIST, ""
    try:
        hist, stats = token_stats(ctx, session, model, max_length)
        table = preview(ctx, session, model)
    except Exception as exc:  # e.g. a model whose tokenizer cannot be found
        return session, report + f"\n\n⚠️ Preview unavailable for model {model!r}: {exc}", \
            bad_rows(ctx, session), EMPTY_PREVIEW, EMPTY_HIST, ""
    return session, report, bad_rows(ctx, session), table, hist, stats


def upload(ctx: Context, session: Session, file, model: str, max_length: int):
    def load():
        if not file:
            raise ValueError("no file uploaded")
        path = received_upload(file if isinstance(file, str) else file.name, ctx.uploaded)
        try:
            stored = store_upload(ctx.runs_dir, str(path), path.name, ctx.max_upload_bytes)
        except (PathError, OSError):
            discard(path)
            raise
        try:
            return _load(ctx, session, str(stored.resolve()), relative(ctx.runs_dir, stored))
        except Exception as exc:  # whatever refused it, a refused upload is not kept
            discard(stored, path)
            if not isinstance(exc, (DataError, OSError, ValueError)):
                raise
            raise PathError(f"{exc}\n\nThe file was not kept.") from None
    return _analyse(ctx, session, model, max_length, load)


def hub(ctx: Context, session: Session, name: str, model: str, max_length: int):
    def load():
        name_ = (name or "").strip()
        if not _HUB.match(name_) or ".." in name_ or Path(name_.partition(":")[0]).exists():
            raise PathError(f"{name_!r} is not a Hub dataset name (owner/name[:split]); "
                            "upload local files instead")
        return _load(ctx, session, name_, f"Hub dataset {name_}")
    return _analyse(ctx, session, model, max_length, load)


def demo(ctx: Context, session: Session, model: str, max_length: int):
    from mlx_orpo.demo_data import DEMO_DATA_PATH

    def load():
        report = _load(ctx, session, str(DEMO_DATA_PATH), "the shipped demo set")
        session.data = None  # the trainer's own default
        return report
    return _analyse(ctx, session, model, max_length, load)


def restats(ctx: Context, session: Session, model: str, max_length: int):
    try:
        return token_stats(ctx, session, model, max_length)
    except Exception as exc:
        return EMPTY_HIST, f"⚠️ Token statistics unavailable: {exc}"


def build(ctx: Context, state: gr.State, model: gr.Dropdown) -> dict:
    gr.Markdown("Upload preference pairs (`.jsonl`, `.json`, `.csv`, `.parquet`: prompt/chosen/rejected, "
                "TRL conversational, UltraFeedback, ShareGPT or HH layouts), or name a Hub dataset. "
                f"Uploads up to {ctx.max_upload_bytes / 1e6:.0f} MB are stored under the runs directory.")
    with gr.Row():
        file = gr.File(label="Preference file", file_types=[".jsonl", ".json", ".csv", ".parquet"],
                       elem_id="data-file", scale=2)
        with gr.Column(scale=2):
            hub_name = gr.Textbox(label="…or a Hub dataset", placeholder="owner/name or owner/name:split")
            with gr.Row():
                hub_btn = gr.Button("Load from Hub")
                demo_btn = gr.Button("Use demo set")
    report = gr.Markdown("No data chosen yet: training will use the shipped demo set.", elem_id="data-report")
    bad = gr.Dataframe(EMPTY_BAD, label="Bad rows (skipped)", wrap=True, max_height=240, interactive=False)
    gr.Markdown(f"**Preview:** the first {PREVIEW_PAIRS} pairs, the prompt rendered with the model's chat "
                "template (line breaks as the model sees them).")
    table = gr.HTML(EMPTY_PREVIEW, elem_id="data-preview")
    with gr.Row():
        hist = gr.BarPlot(None, x="tokens", y="pairs", color="fits", title="Token lengths of pairs",
                          x_title="tokens (prompt + longer answer)", y_title="pairs", height=260, sort=None,
                          color_map=FITS_COLOURS, elem_id="data-hist")
        with gr.Column():
            max_length = gr.Number(DEFAULTS.max_length, label="Max length (tokens)", precision=0, minimum=16,
                                   info=FIELD_HELP, elem_id="data-max-length")
            stats = gr.Markdown()
    views = [state, report, bad, table, hist, stats]
    loaded = [
        file.upload(lambda s, f, m, n: upload(ctx, s, f, m, n), [state, file, model, max_length], views,
                    api_name="upload_data"),
        hub_btn.click(lambda s, h, m, n: hub(ctx, s, h, m, n), [state, hub_name, model, max_length], views,
                      api_name="hub_data"),
        demo_btn.click(lambda s, m, n: demo(ctx, s, m, n), [state, model, max_length], views, api_name="demo_data"),
    ]
    max_length.change(lambda s, m, n: restats(ctx, s, m, n), [state, model, max_length], [hist, stats],
                      api_name="token_stats", show_progress="hidden")
    model.change(lambda s, m, n: (*restats(ctx, s, m, n), _safe_preview(ctx, s, m)), [state, model, max_length],
                 [hist, stats, table], show_progress="hidden",
                 api_visibility="private")
    return {"report": report, "max_length": max_length, "loaded": loaded}


def _safe_preview(ctx, session, model):
    try:
        return preview(ctx, session, model)
    except Exception:
        return EMPTY_PREVIEW

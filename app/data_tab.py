"""Data tab: bring a preference file (upload or Hub name), validate it, preview it
with the model's chat template, and see token lengths against the max length."""

from __future__ import annotations

import html
import re
from pathlib import Path

import gradio as gr
import pandas as pd

from mlx_orpo.config import FIELD_SPECS, TrainConfig
from mlx_orpo.data import DataError, load_pairs, read_columns
from mlx_orpo.fields import mapping_text
from mlx_orpo.tokenize import encode_pairs, fit_pairs, render_prompt

from . import mapping
from .paths import PathError, discard, received_upload, relative, store_upload
from .session import Context, Session

DEFAULTS = TrainConfig()
FIELD_HELP = FIELD_SPECS["max_length"].help
STATS_PAIRS = 2000          # token statistics on at most this many pairs
MAX_BINS = 40               # histogram bars at most (the last holds the longest pairs)
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


def _read(ctx: Context, session: Session, source: str, label: str) -> str:
    """`_load`; a source that cannot be read as it is and whose columns need a mapping keeps them for
    the mapping's dropdowns (and `source` for Apply mapping), and is read again with a guessed mapping."""
    try:
        return _load(ctx, session, source, label)
    except DataError:
        found = read_columns(source)
        if not mapping.needs_mapping(found):
            raise
    session.file_columns, session.mapping_source = found, (source, label)
    session.mapping = mapping.guess(found) or None
    return _load(ctx, session, source, label, session.mapping)


def _load(ctx: Context, session: Session, source: str, label: str, columns: dict | None = None) -> str:
    """Validate `source` (its columns mapped by `columns`) into the session; return the report as Markdown."""
    pairs, report = load_pairs(source, skip_bad_rows=True, columns=columns)
    mapped = f" (columns {mapping_text(columns)})" if columns else ""
    session.data, session.data_label, session.columns = source, label + mapped, columns
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
    if columns:
        notes.append(f"Columns mapped: `{mapping_text(columns)}` (saved with the run as `--columns`).")
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
    """The histogram's rows (untruncated pair lengths) and what truncation does at max_length. The
    chart's bins and colours come after, from `hist_layout` (see there for why)."""
    if not session.pairs:
        session.hist_layout = None
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
    lengths = pd.Series([p.length for p in session.encoded])
    hist, width, clipped = length_histogram(lengths, max_length)
    n = len(session.encoded)
    sampled = f" (first {n} of {len(session.pairs)})" if len(session.pairs) > n else ""
    fits = int((lengths <= max_length).sum())
    last = f" The last bar also holds the {clipped} pairs over {MAX_BINS * width} tokens." if clipped else ""
    text = (f"**At max length {max_length}:** {fit.truncated} of {n} pairs{sampled} will be truncated, "
            f"**{fit.dropped} dropped** (cannot keep {DEFAULTS.min_response_length} response tokens); "
            f"{fits} fit (≤ max length). Pair length (prompt + longer answer): median {int(lengths.median())}, "
            f"max {int(lengths.max())} tokens.{last}")
    colours = {name: FITS_COLOURS[name] for name in FITS_COLOURS if name in set(hist["fits"])}
    session.hist_layout = (width, colours)
    return hist, text


def hist_layout(session: Session):
    """The histogram's bin width and colours, sent after its rows. Gradio 6 redraws a chart whose
    x_bin or colours change from the rows it holds at that moment, and an update that changes both
    the rows and the bins drew the old rows on the new bins (stale counts after Max length changed);
    rows first, then the layout, draws the new rows."""
    if session.hist_layout is None:
        return gr.skip()
    width, colours = session.hist_layout
    return gr.BarPlot(x_bin=width, color_map=colours)


def length_histogram(lengths: pd.Series, max_length: int) -> tuple[pd.DataFrame, int, int]:
    """(rows of (bin start, pairs, fits), bin width, pairs past the last bin). A bin holds the lengths
    in (start, start + width]: the max length is a bin edge, and a pair of exactly max length tokens,
    which fits, sits below it with the others that fit. Pairs past MAX_BINS bins join the last."""
    width = bin_width(int(lengths.max()), max_length)
    starts = (lengths - 1).clip(lower=0) // width * width
    clipped = int((starts >= MAX_BINS * width).sum())
    starts = starts.clip(upper=(MAX_BINS - 1) * width)
    fits = (lengths <= max_length).map({True: "≤ max length", False: "over max length"})
    # A numeric axis: bins keep their numeric order and empty ones stay as gaps. Each row is a bin
    # start (a multiple of width, so the plot's bins of `width` hold exactly one row per colour).
    hist = (pd.DataFrame({"tokens": starts.astype(int), "fits": fits})
            .groupby(["tokens", "fits"]).size().rename("pairs").reset_index()[["tokens", "pairs", "fits"]])
    return hist, width, clipped


def bin_width(longest: int, max_length: int, bins: int = 20) -> int:
    """A bin width that divides max_length, so that the max length is a bin edge and no bin holds pairs
    on both sides of it: about `bins` bins up to the longest pair, or max_length wide when that gives
    more (length_histogram then caps them at MAX_BINS)."""
    raw = max(longest / bins, 1)
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
        session.hist_layout, session.columns = None, None
        report = f"⚠️ **Not usable:** {message}\n\nTraining would use the shipped demo set."
        return session, report, EMPTY_BAD, EMPTY_PREVIEW, EMPTY_HIST, ""
    try:
        hist, stats = token_stats(ctx, session, model, max_length)
        table = preview(ctx, session, model)
    except Exception as exc:  # e.g. a model whose tokenizer cannot be found
        session.hist_layout = None
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
            return _read(ctx, session, str(stored.resolve()), relative(ctx.runs_dir, stored))
        except Exception as exc:
            if isinstance(exc, DataError) and session.mapping_source is not None:  # kept for its mapping
                raise DataError(f"{exc}\n\nChoose which of its columns plays each role below, then "
                                "press **Apply mapping**.") from None
            discard(stored, path)  # whatever else refused it, a refused upload is not kept
            if not isinstance(exc, (DataError, OSError, ValueError)):
                raise
            raise PathError(f"{exc}\n\nThe file was not kept.") from None
    return _analyse(ctx, session, model, max_length, _forget_mapping(session, load))


def hub(ctx: Context, session: Session, name: str, model: str, max_length: int):
    def load():
        name_ = (name or "").strip()
        if not _HUB.match(name_) or ".." in name_ or Path(name_.partition(":")[0]).exists():
            raise PathError(f"{name_!r} is not a Hub dataset name (owner/name[:split]); "
                            "upload local files instead")
        return _read(ctx, session, name_, f"Hub dataset {name_}")
    return _analyse(ctx, session, model, max_length, _forget_mapping(session, load))


def demo(ctx: Context, session: Session, model: str, max_length: int):
    from mlx_orpo.demo_data import DEMO_DATA_PATH

    def load():
        report = _load(ctx, session, str(DEMO_DATA_PATH), "the shipped demo set")
        session.data = None  # the trainer's own default
        return report
    return _analyse(ctx, session, model, max_length, _forget_mapping(session, load))


def apply_mapping(ctx: Context, session: Session, model: str, max_length: int, *roles):
    """Read the file again with the mapping the dropdowns show (in mapping.ROLES order)."""
    def load():
        if session.mapping_source is None:
            raise ValueError("upload a file whose columns need a mapping first")
        session.mapping = mapping.chosen_mapping(roles)
        if session.mapping is None:
            raise ValueError("choose a column for each role (at least prompt, chosen and rejected)")
        return _load(ctx, session, *session.mapping_source, session.mapping)
    return _analyse(ctx, session, model, max_length, load)


def _forget_mapping(session: Session, load):
    """`load` for new data: the last file's columns and mapping are forgotten first."""
    def fresh():
        session.file_columns, session.mapping_source, session.mapping = [], None, None
        return load()
    return fresh


def restats(ctx: Context, session: Session, model: str, max_length: int):
    try:
        return token_stats(ctx, session, model, max_length)
    except Exception as exc:
        session.hist_layout = None
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
    box, roles, apply = mapping.build()
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
        apply.click(lambda s, m, n, *r: apply_mapping(ctx, s, m, n, *r), [state, model, max_length, *roles], views,
                    api_name="map_columns"),
    ]
    layout = dict(fn=hist_layout, inputs=state, outputs=hist, show_progress="hidden", api_visibility="private")
    for event in loaded:
        event.then(**layout).then(lambda s: mapping.views(s.file_columns, s.mapping), state, [box, *roles],
                                  show_progress="hidden", api_visibility="private")
    max_length.change(lambda s, m, n: restats(ctx, s, m, n), [state, model, max_length], [hist, stats],
                      api_name="token_stats", show_progress="hidden").then(**layout)
    model.change(lambda s, m, n: (*restats(ctx, s, m, n), _safe_preview(ctx, s, m)), [state, model, max_length],
                 [hist, stats, table], show_progress="hidden", api_visibility="private").then(**layout)
    return {"report": report, "max_length": max_length, "loaded": loaded}


def _safe_preview(ctx, session, model):
    try:
        return preview(ctx, session, model)
    except Exception:
        return EMPTY_PREVIEW

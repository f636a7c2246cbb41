"""The whole page: a model picker above five tabs (Data, Train, Runs, Chat, Export)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from mlx_orpo.models import DEFAULT_MODEL, MODEL_ALIASES

from . import chat_tab, data_tab, export_tab, runs_tab, train_tab
from .cache import Models
from .session import Context, Session

GLUE = dict(queue=False, api_visibility="private")  # UI wiring, not part of the API
CSS = """
.orpo-progress { margin: 4px 0 8px; }
.orpo-bar { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.orpo-bar > div { height: 100%; background: var(--color-accent); transition: width .5s; }
.orpo-progress-text { font-size: 0.9em; margin-top: 4px; }
.orpo-clamp { display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow: hidden; }
.orpo-prompt[open] .orpo-clamp { display: none; }
.orpo-preview { width: 100%; table-layout: fixed; border-collapse: collapse; font-size: 0.85em; }
.orpo-preview th, .orpo-preview td { border: 1px solid var(--border-color-primary); padding: 4px; vertical-align: top; }
.orpo-preview th:first-child { width: 40%; }
.orpo-preview pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 1em; max-height: 18em;
                    overflow: auto; }
"""


def build_app(runs_dir: str | Path = "runs", max_upload_mb: float = 200, models: Models | None = None) -> gr.Blocks:
    runs = Path(runs_dir).expanduser().resolve()
    runs.mkdir(parents=True, exist_ok=True)
    ctx = Context(runs, int(max_upload_mb * 1e6), models or Models())
    ctx.jobs.watch()  # the ETA's record of step and evaluation times is the server's, tab or no tab
    with gr.Blocks(title="mlx-orpo") as demo:
        state = gr.State(Session())
        with gr.Row(equal_height=True):
            gr.Markdown(f"## mlx-orpo: ORPO preference tuning\nRuns directory: `{runs}`", elem_id="header")
            model = gr.Dropdown(list(MODEL_ALIASES), value=DEFAULT_MODEL, allow_custom_value=True,
                                label="Model (alias, local directory, .gguf file or Hub id)", elem_id="model",
                                scale=1)
        with gr.Tabs():
            with gr.Tab("Data", id="data"):
                data = data_tab.build(ctx, state, model)
            with gr.Tab("Train", id="train"):
                train = train_tab.build(ctx, state, model)
            with gr.Tab("Runs", id="runs") as runs_tab_:
                past = runs_tab.build(ctx)
            with gr.Tab("Chat", id="chat") as chat_tab_:
                chat = chat_tab.build(ctx)
            with gr.Tab("Export", id="export") as export_tab_:
                export = export_tab.build(ctx)

        # The two max-length boxes are one setting; .input fires on user edits only (no ping-pong).
        data["max_length"].input(lambda n: n, data["max_length"], train["max_length"], **GLUE)
        train["max_length"].input(lambda n: n, train["max_length"], data["max_length"], **GLUE)
        for event in data["loaded"]:  # other data: Start's line and its memory plan
            event.then(lambda s: train_tab.data_line(ctx, s), state, train["data_info"], **GLUE).then(
                *train["preview"], **GLUE)
        # Newly finished runs appear in the other tabs when they are opened.
        for tab, picker in ((runs_tab_, past["run"]), (chat_tab_, chat["run"]), (export_tab_, export["run"])):
            tab.select(lambda v: _keep(ctx, v), picker, picker, **GLUE)
        runs_tab_.select(lambda v: runs_tab.overlay_choices(ctx, v), past["other"], past["other"], **GLUE)
        # The Train form is built locked and filled once here (the data tab's max length follows it).
        fill, inputs, outputs = train["open"]
        demo.load(fill, inputs, outputs, **GLUE).then(lambda n: n, train["max_length"], data["max_length"], **GLUE)
        demo.load(lambda n: chat_tab.select_run(ctx, n), chat["run"], [chat["checkpoint"], chat["examples"],
                                                                         chat["pairs"]], **GLUE)
        demo.load(lambda n: chat_tab.checkpoint_choices(ctx, n), export["run"], export["checkpoint"], **GLUE)
        if past["run"].value:
            demo.load(past["show"], [past["run"], past["other"]], past["outputs"], **GLUE)
    ctx.uploaded = demo.upload_file_set  # the only files the Data tab will read
    return demo


def _keep(ctx: Context, current: str | None):
    """Fresh run choices, keeping the current pick (or the newest run)."""
    from .runfiles import list_runs

    names = list_runs(ctx.runs_dir)
    return gr.Dropdown(choices=names, value=current if current in names else (names[0] if names else None))


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 200,
           **kwargs):
    """Serve the app; only loopback unless `host` says otherwise. Gradio serves no files from the
    runs directory (it is not in allowed_paths): results are shown, not downloaded."""
    demo.queue(default_concurrency_limit=1)
    # The limit in bytes, equal to the Data tab's (Gradio reads "1mb" as 1,048,576 and cannot parse "0.5mb").
    return demo.launch(server_name=host, server_port=port, css=CSS, max_file_size=int(max_upload_mb * 1e6),
                       show_error=True, footer_links=["api"], ssr_mode=False, **kwargs)

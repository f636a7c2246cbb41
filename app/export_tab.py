"""Export tab: a run's adapters (final or a checkpoint) as HF, MLX, GGUF or PEFT files, via
`mlx_orpo.export.export`. Outputs go to <runs>/exports/."""

from __future__ import annotations

import threading
import time

import gradio as gr
import pandas as pd

from mlx_orpo.output import human_size

from . import runfiles
from .chat_tab import checkpoint_choices
from .paths import EXPORTS, PathError, child, relative, sanitise
from .session import Context

FORMATS = {"hf": "Hugging Face (fused safetensors)", "mlx": "MLX (fused, optionally re-quantised)",
           "gguf": "GGUF (llama.cpp / Ollama)", "peft": "PEFT adapter"}
EMPTY_FILES = pd.DataFrame(columns=["file", "size"])


def run_export(ctx: Context, name: str, checkpoint: str, fmt: str, gguf_type: str, bits: str, force: bool):
    """Yields (log text, files table, usage); the export runs in a worker thread."""
    from mlx_orpo.export import export

    if fmt not in FORMATS:
        raise gr.Error(f"unknown format {fmt!r}")
    try:
        run = runfiles.run_dir(ctx.runs_dir, name or "")
        adapters = runfiles.adapter_dir(run, checkpoint)
    except (PathError, FileNotFoundError) as exc:
        raise gr.Error(str(exc)) from None
    exports = ctx.runs_dir / EXPORTS
    exports.mkdir(exist_ok=True)
    suffix = "" if checkpoint in (None, "", "final") else f"-{checkpoint}"
    out_name = sanitise(f"{run.name}{suffix}-{fmt}" + (".gguf" if fmt == "gguf" else ""))
    out = child(exports, out_name, must_exist=False)
    lines, result, error = [f"exporting {run.name} ({checkpoint or 'final'}) as {FORMATS[fmt]} …"], [], []

    def work():
        try:
            result.append(export(adapters=str(adapters), format=fmt, out=str(out), force=force, gguf_type=gguf_type,
                                 bits=None if bits in ("", "none", None) else int(bits), progress=lines.append))
        except Exception as exc:  # disk full, unsupported model, existing output, ...
            error.append(f"{type(exc).__name__}: {exc}")

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    while worker.is_alive():
        yield "\n".join(map(str, lines[-30:])), EMPTY_FILES, ""
        time.sleep(0.5)
    if error:
        yield "\n".join(map(str, lines[-30:])) + f"\n⚠️ export failed: {error[0]}", EMPTY_FILES, ""
        return
    res = result[0]
    files = pd.DataFrame([(relative(ctx.runs_dir, p), human_size(size)) for p, size in res.files],
                         columns=["file", "size"])
    total = human_size(sum(size for _, size in res.files))
    lines.append(f"done: {len(res.files)} files, {total}, weights {res.dtype}")
    lines += [f"note: {n}" for n in getattr(res, "notes", [])]
    yield "\n".join(map(str, lines[-30:])), files, res.usage


def sizes(ctx: Context, name: str, checkpoint: str, gguf_type: str, bits: str):
    """(the sizes table, each format's button labelled with its size) before any export, from
    `mlx_orpo.export.estimate_sizes`: what each export would write into exports/ and whether it fits."""
    from mlx_orpo.export import estimate_sizes

    labels = [gr.Button(f"Export {fmt.upper()}") for fmt in FORMATS]
    try:
        adapters = runfiles.adapter_dir(runfiles.run_dir(ctx.runs_dir, name or ""), checkpoint)
        found = estimate_sizes(adapters, ctx.runs_dir / EXPORTS, gguf_type=gguf_type or "f16",
                               bits=None if bits in ("", "none", None) else int(bits))
    except (PathError, FileNotFoundError, ValueError, OSError, KeyError) as exc:
        message = str(exc) if name else "choose a run"
        return f"Sizes before export: unavailable ({message}).", *labels
    free = next(iter(found.values())).free
    rows = [f"| {FORMATS[fmt]} | {human_size(est.bytes)} | "
            + ("fits" if est.fits else f"⚠️ **not enough room** ({human_size(free)} free)") + " |"
            for fmt, est in found.items()]
    table = ("| Export | Size (estimated) | Room in exports/ |\n|---|---|---|\n" + "\n".join(rows)
             + f"\n\n{human_size(free)} free where exports are written.")
    return table, *(gr.Button(f"Export {fmt.upper()} · {human_size(found[fmt].bytes)}") for fmt in FORMATS)


def build(ctx: Context) -> dict:
    gr.Markdown("Exports are written under the runs directory, in `exports/`.")
    runs = runfiles.list_runs(ctx.runs_dir)
    with gr.Row():
        run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", scale=2, allow_custom_value=True,
                          elem_id="export-run")
        checkpoint = gr.Dropdown([], label="Adapters (final or a checkpoint)", scale=2, allow_custom_value=True)
    with gr.Row():
        gguf_type = gr.Dropdown(["f16", "f32", "q8_0"], value="f16", label="GGUF type", elem_id="export-gguf-type")
        bits = gr.Dropdown(["none", "4", "8"], value="none", label="MLX re-quantisation (bits)")
        force = gr.Checkbox(False, label="Replace an existing export")
    buttons = {}
    with gr.Row():
        for fmt in FORMATS:
            buttons[fmt] = gr.Button(f"Export {fmt.upper()}", elem_id=f"export-{fmt}")
    size_table = gr.Markdown("Sizes before export: choose a run.", elem_id="export-sizes")
    log = gr.Textbox(label="Progress", lines=6, interactive=False, elem_id="export-log")
    files = gr.Dataframe(EMPTY_FILES, label="Files written", interactive=False)
    usage = gr.Code(label="How to use it", language="shell")
    run.change(lambda n: checkpoint_choices(ctx, n), run, checkpoint, api_visibility="private")
    for option in (checkpoint, gguf_type, bits):
        option.change(lambda n, c, g, b: sizes(ctx, n, c, g, b), [run, checkpoint, gguf_type, bits],
                      [size_table, *buttons.values()], api_name="export_sizes" if option is checkpoint else None,
                      api_visibility="public" if option is checkpoint else "private", show_progress="hidden")
    for fmt, button in buttons.items():
        button.click(lambda n, c, g, b, f, fmt=fmt: (yield from run_export(ctx, n, c, fmt, g, b, f)),
                     [run, checkpoint, gguf_type, bits, force], [log, files, usage], api_name=f"export_{fmt}")
    return {"run": run, "checkpoint": checkpoint}


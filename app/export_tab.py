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


def build(ctx: Context) -> dict:
    gr.Markdown("Exports are written under the runs directory, in `exports/`.")
    runs = runfiles.list_runs(ctx.runs_dir)
    with gr.Row():
        run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", scale=2, allow_custom_value=True)
        checkpoint = gr.Dropdown([], label="Adapters (final or a checkpoint)", scale=2, allow_custom_value=True)
    with gr.Row():
        gguf_type = gr.Dropdown(["f16", "f32", "q8_0"], value="f16", label="GGUF type")
        bits = gr.Dropdown(["none", "4", "8"], value="none", label="MLX re-quantisation (bits)")
        force = gr.Checkbox(False, label="Replace an existing export")
    buttons = {}
    with gr.Row():
        for fmt in FORMATS:
            buttons[fmt] = gr.Button(f"Export {fmt.upper()}", elem_id=f"export-{fmt}")
    log = gr.Textbox(label="Progress", lines=6, interactive=False)
    files = gr.Dataframe(EMPTY_FILES, label="Files written", interactive=False)
    usage = gr.Code(label="How to use it", language="shell")
    run.change(lambda n: checkpoint_choices(ctx, n), run, checkpoint, api_visibility="private")
    for fmt, button in buttons.items():
        button.click(lambda n, c, g, b, f, fmt=fmt: (yield from run_export(ctx, n, c, fmt, g, b, f)),
                     [run, checkpoint, gguf_type, bits, force], [log, files, usage], api_name=f"export_{fmt}")
    return {"run": run, "checkpoint": checkpoint}


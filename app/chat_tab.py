"""Chat tab: one prompt to the base model and to base + a run's adapters (any checkpoint),
same sampling settings and seed, answers streamed side by side."""

from __future__ import annotations

import gradio as gr

from mlx_orpo.config import from_dict

from . import runfiles
from .paths import PathError
from .session import Context

EXAMPLES = 8


def checkpoint_choices(ctx: Context, name: str):
    try:
        run = runfiles.run_dir(ctx.runs_dir, name)
    except PathError:
        return gr.Dropdown(choices=[], value=None)
    names = ["final"] + runfiles.checkpoints(run)
    return gr.Dropdown(choices=names, value="final")


def held_out_prompts(ctx: Context, name: str) -> list[str]:
    """The last user turn of a few held-out pairs of the run (the same split the trainer used)."""
    from mlx_orpo.api import data_source
    from mlx_orpo.data import load_splits

    run = runfiles.run_dir(ctx.runs_dir, name)
    cfg = from_dict(runfiles.read_config(run))
    _, held, _ = load_splits(data_source(cfg), eval_source=cfg.eval_data, format=cfg.format,
                             eval_fraction=cfg.eval_fraction, seed=cfg.seed, skip_bad_rows=True, system=cfg.system)
    return [pair.prompt[-1]["content"] for pair in held[:EXAMPLES]]


def select_run(ctx: Context, name: str):
    """(checkpoint dropdown, examples) for a run."""
    try:
        samples = [[p] for p in held_out_prompts(ctx, name)] if name else []
    except Exception:  # data moved or unreadable: examples are a convenience
        samples = []
    return checkpoint_choices(ctx, name), gr.Dataset(samples=samples)


def _turn(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def chat(ctx: Context, name: str, checkpoint: str, prompt: str, max_tokens: int, temperature: float,
         top_p: float, seed: int):
    """Yields (base chat, adapter chat): the base answer streams first, then the adapter's."""
    from mlx_orpo.api import generate

    prompt = (prompt or "").strip()
    if not prompt:
        raise gr.Error("Type a prompt first.")
    try:
        run = runfiles.run_dir(ctx.runs_dir, name or "")
        adapter = runfiles.adapter_dir(run, checkpoint)
    except (PathError, FileNotFoundError) as exc:
        raise gr.Error(str(exc)) from None
    spec = runfiles.read_config(run).get("model")
    if not spec:
        raise gr.Error(f"{run.name} has no config.json yet (the run has not loaded its model)")
    messages = [{"role": "user", "content": prompt}]
    sampling = dict(max_tokens=int(max_tokens), temperature=float(temperature), top_p=float(top_p),
                    seed=int(seed), stream=True)
    label = f"{run.name} · {checkpoint or 'final'}"
    left, right = _turn(prompt, "…loading the base model"), _turn(prompt, "(waiting for the base model)")
    yield left, right
    for slot, adapter_path in ((0, None), (1, adapter)):
        current = [left, right]
        try:
            model, tokenizer = ctx.models.model(spec, adapter_path)
            text = ""
            for text in generate(model, tokenizer, messages, **sampling):
                current[slot] = _turn(prompt, text)
                yield current[0], current[1]
            current[slot] = _turn(prompt, text or "(empty answer)")
        except Exception as exc:  # model not found, out of memory, ...
            current[slot] = _turn(prompt, f"⚠️ {type(exc).__name__}: {exc}")
        left, right = current
        if slot == 0:
            right = _turn(prompt, f"…loading base + adapters ({label})")
        yield left, right


def build(ctx: Context) -> dict:
    runs = runfiles.list_runs(ctx.runs_dir)
    with gr.Row():
        run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", scale=2, allow_custom_value=True, elem_id="chat-run")
        checkpoint = gr.Dropdown([], label="Adapters (final or a checkpoint)", scale=2, allow_custom_value=True, elem_id="chat-ckpt")
        refresh = gr.Button("Refresh runs", scale=1)
    with gr.Row():
        max_tokens = gr.Slider(1, 1024, 128, step=1, label="Max new tokens")
        temperature = gr.Slider(0.0, 2.0, 0.0, step=0.05, label="Temperature (0: greedy)")
        top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Top-p")
        seed = gr.Number(0, label="Seed", precision=0)
    prompt = gr.Textbox(label="Prompt", placeholder="Ask something…", lines=2, elem_id="chat-prompt")
    examples = gr.Dataset(components=[prompt], samples=[], label="Held-out prompts (click to use)",
                          elem_id="chat-examples")
    send = gr.Button("Send to both", variant="primary", elem_id="chat-send")
    with gr.Row():
        base = gr.Chatbot(label="Base model", height=360, elem_id="chat-base")
        tuned = gr.Chatbot(label="Base + adapters", height=360, elem_id="chat-tuned")

    def refreshed():
        names = runfiles.list_runs(ctx.runs_dir)
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    refresh.click(refreshed, None, run, queue=False, api_visibility="private")
    run.change(lambda n: select_run(ctx, n), run, [checkpoint, examples], api_name="chat_run")
    examples.click(lambda sample: sample[0], examples, prompt, queue=False, api_visibility="private")
    inputs = [run, checkpoint, prompt, max_tokens, temperature, top_p, seed]
    send.click(lambda *a: (yield from chat(ctx, *a)), inputs, [base, tuned], api_name="chat")
    prompt.submit(lambda *a: (yield from chat(ctx, *a)), inputs, [base, tuned], api_visibility="private")
    return {"run": run, "checkpoint": checkpoint, "examples": examples}

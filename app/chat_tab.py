"""Chat tab: one prompt to the base model and to base + a run's adapters (any checkpoint), same
sampling settings and seed, both answers streamed side by side token by token.

For a held-out pair of the run, the pair's chosen and rejected answers stand beside the two
outputs, with each model's log odds of chosen over rejected (`mlx_orpo.api.score_pair`).

All MLX work of one chat (loading, generating, scoring) runs in one worker thread: Gradio steps a
generator from whichever thread is free, and MLX streams must be closed in the thread that
opened them ("[StreamContext] Destroyed in a different thread" otherwise).
"""

from __future__ import annotations

import html
import queue
import threading

import gradio as gr

from mlx_orpo.config import from_dict

from . import runfiles
from .paths import PathError
from .session import Context

EXAMPLES = 8
# A prompt of more than CLAMP_LINES lines or CLAMP_CHARS characters shows its first CLAMP_LINES
# rendered lines (CSS line clamp, so the height is bounded whatever the script and column width)
# and a "show more".
CLAMP_LINES = 3
CLAMP_CHARS = 80
EXAMPLE_CHARS = 140    # shown of each example prompt in the list
BASE, TUNED = 0, 1


def checkpoint_choices(ctx: Context, name: str):
    try:
        names = runfiles.adapter_choices(ctx.runs_dir, name)
    except PathError:
        return gr.Dropdown(choices=[], value=None)
    return gr.Dropdown(choices=names, value="final")


def held_out_pairs(ctx: Context, name: str) -> list[dict]:
    """The run's held-out pairs (the trainer's split), shortest first: {"prompt": messages,
    "chosen", "rejected"}; at most EXAMPLES."""
    from mlx_orpo.api import read_data

    cfg = from_dict(runfiles.read_config(runfiles.run_dir(ctx.runs_dir, name)))
    cfg.skip_bad_rows = True  # examples are a convenience: never fail on a bad row
    _, held, _ = read_data(cfg)
    size = lambda p: sum(len(m["content"]) for m in p.prompt) + len(p.chosen) + len(p.rejected)
    return [{"prompt": list(p.prompt), "chosen": p.chosen, "rejected": p.rejected}
            for p in sorted(held, key=size)[:EXAMPLES]]


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def select_run(ctx: Context, name: str):
    """(checkpoint dropdown, examples, held-out pairs) for a run."""
    try:
        pairs = held_out_pairs(ctx, name) if name else []
    except Exception:  # data moved or unreadable: examples are a convenience
        pairs = []
    samples = [[_short(p["prompt"][-1]["content"], EXAMPLE_CHARS)] for p in pairs]
    return checkpoint_choices(ctx, name), gr.Dataset(samples=samples), pairs


def pick_example(pairs: list[dict], index: int):
    """(prompt, the pair, its chosen answer, its rejected answer, the pair column shown, scores cleared)."""
    pair = pairs[index]
    return (pair["prompt"][-1]["content"], pair, pair["chosen"], pair["rejected"], gr.Column(visible=True),
            "")


def edited(prompt: str, pair: dict | None):
    """A prompt edited away from the held-out example's is a free prompt: no pair beside it."""
    if pair and pair["prompt"][-1]["content"].strip() == (prompt or "").strip():
        return gr.skip(), gr.skip()
    return None, gr.Column(visible=False)


def prompt_html(prompt: str) -> str:
    """The user bubble: a long prompt collapses to its first lines as rendered, with a "show more"."""
    if len(prompt) <= CLAMP_CHARS and prompt.count("\n") < CLAMP_LINES:
        return prompt
    text = html.escape(prompt)
    return (f'<details class="orpo-prompt"><summary><span class="orpo-clamp">{text}</span> <b>show more</b>'
            f"</summary>\n\n{text}</details>")


STOPPED_MARK = "⏹ *stopped*"


def cut_mark(tokens: int) -> str:
    return f"✂️ *cut at {tokens} tokens (Max new tokens)*"


def busy_buttons():
    return gr.Button(interactive=False), gr.Button(interactive=True)


def idle_buttons():
    return gr.Button(interactive=True), gr.Button(interactive=False)


def _turn(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt_html(prompt)}, {"role": "assistant", "content": answer}]


def _score_line(scores: dict) -> str:
    """Markdown: each model's log odds of chosen over rejected, and what tuning changed."""
    rows = ["| model | ℓ chosen | ℓ rejected | log odds chosen over rejected |", "|---|---|---|---|"]
    for label, key in (("base", "base"), ("base + adapters", "tuned")):
        s = scores.get(key)
        if s is not None:
            rows.append(f"| {label} | {s.chosen_logps:.3f} | {s.rejected_logps:.3f} | **{s.log_odds:+.3f}** |")
    text = "\n".join(rows)
    if scores.get("base") and scores.get("tuned"):
        moved = scores["tuned"].log_odds - scores["base"].log_odds
        toward = "toward the chosen answer" if moved > 0 else "toward the rejected answer" if moved < 0 else ""
        text += (f"\n\nTuning moved the log odds by **{moved:+.3f}** {toward} "
                 "(ℓ: mean log-probability per answer token; the log odds ratio is what ORPO's λ term raises).")
    return text


def _work(ctx: Context, spec: str, adapter, messages, sampling: dict, pair, cfg, out: queue.Queue,
          stop: threading.Event) -> None:
    """The worker thread: stream both answers, interleaved token by token, then score the pair.

    The base starts first; the tuned model loads after the base's first token (its weights are
    cached after the first chat), then both advance one token in turn. Sends (slot, text),
    ("status", slot, placeholder), ("error", slot, message), ("scores", dict), ("note", text) and
    finally ("done",).
    """
    from mlx_orpo.api import generate, score_pair
    from mlx_orpo.data import PreferencePair

    streams, models, texts, counts = {}, {}, {BASE: "", TUNED: ""}, {BASE: 0, TUNED: 0}
    ctx.models.generation.acquire()
    try:
        for slot, path in ((BASE, None), (TUNED, adapter)):
            if stop.is_set():
                return
            try:
                models[slot] = ctx.models.model(spec, path)
                out.put(("status", slot, "…reading the prompt"))
                streams[slot] = generate(*models[slot], messages, stream=True, **sampling)
                if slot == BASE:  # the base's first token before the tuned model loads
                    texts[BASE] = next(streams[BASE], texts[BASE])
                    counts[BASE] += 1
                    out.put((BASE, texts[BASE]))
            except Exception as exc:  # model not found, out of memory, ...
                out.put(("error", slot, f"⚠️ {type(exc).__name__}: {exc}"))
                out.put(("end", slot, 0))
                streams.pop(slot, None)
        while streams and not stop.is_set():
            for slot in list(streams):
                try:
                    texts[slot] = next(streams[slot])
                    counts[slot] += 1
                    out.put((slot, texts[slot]))
                except StopIteration:
                    del streams[slot]
                    out.put((slot, texts[slot] or "(empty answer)"))
                    out.put(("end", slot, counts[slot]))
                except Exception as exc:
                    del streams[slot]
                    out.put(("error", slot, f"⚠️ {type(exc).__name__}: {exc}"))
                    out.put(("end", slot, 0))
        if pair is not None and not stop.is_set():
            preference = PreferencePair(prompt=tuple(pair["prompt"]), chosen=pair["chosen"], rejected=pair["rejected"])
            scores = {}
            for slot, key in ((BASE, "base"), (TUNED, "tuned")):
                if slot in models:
                    try:
                        scores[key] = score_pair(*models[slot], preference, cfg)
                    except Exception as exc:
                        out.put(("note", f"⚠️ scoring with the {key} model failed: {exc}"))
            out.put(("scores", scores))
    finally:
        for stream in streams.values():
            stream.close()  # here, in the thread that opened its MLX stream
        ctx.models.generation.release()
        out.put(("done",))


def chat(ctx: Context, name: str, checkpoint: str, prompt: str, max_tokens: int, temperature: float,
         top_p: float, seed: int, pair: dict | None = None, session: str = ""):
    """Yields (base chat, adapter chat, scores Markdown) as both answers stream; an answer the token
    limit cut says so. Stop (`session` in ctx.chat_stops) ends the chat here, with each unfinished
    answer marked: the last update is this generator's own, so no streamed token can land after it."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise gr.Error("Type a prompt first.")
    try:
        run = runfiles.run_dir(ctx.runs_dir, name or "")
        adapter = runfiles.adapter_dir(run, checkpoint)
    except (PathError, FileNotFoundError) as exc:
        raise gr.Error(str(exc)) from None
    config = runfiles.read_config(run)
    spec = config.get("model")
    if not spec:
        raise gr.Error(f"{run.name} has no config.json yet (the run has not loaded its model)")
    # A held-out example keeps its whole conversation (system turn included) unless the prompt was edited.
    if pair and pair["prompt"][-1]["content"].strip() == prompt:
        messages = pair["prompt"]
    else:
        messages, pair = [{"role": "user", "content": prompt}], None
    sampling = dict(max_tokens=int(max_tokens), temperature=float(temperature), top_p=float(top_p),
                    seed=int(seed))
    label = f"{run.name} · {checkpoint or 'final'}"
    texts = {BASE: "…loading the base model", TUNED: f"…waiting for the base model's first token, then "
             f"loading base + adapters ({label})"}
    scores = "Scoring the pair's chosen and rejected answers after both outputs…" if pair else ""
    ended: list[int] = []
    ctx.chat_stops.discard(session)  # a Stop that came after the last chat ended
    yield _turn(prompt, texts[BASE]), _turn(prompt, texts[TUNED]), scores

    out, stop = queue.Queue(), threading.Event()
    worker = threading.Thread(target=_work, args=(ctx, spec, adapter, messages, sampling, pair,
                                                  from_dict(config), out, stop), daemon=True)
    worker.start()
    started = {BASE: False, TUNED: False}
    try:
        done = False
        while not done:
            if session in ctx.chat_stops:
                for slot in (BASE, TUNED):
                    if slot not in ended:
                        text = texts[slot]
                        texts[slot] = STOPPED_MARK if text.startswith("…") else f"{text}\n\n{STOPPED_MARK}"
                yield _turn(prompt, texts[BASE]), _turn(prompt, texts[TUNED]), scores
                return
            try:
                items = [out.get(timeout=0.2)]  # wakes to look for a Stop while a model loads
            except queue.Empty:
                continue
            while not out.empty():  # one update for everything that arrived since the last one
                items.append(out.get_nowait())
            for item in items:
                if item[0] == "done":
                    done = True
                elif item[0] in ("error", "status"):
                    texts[item[1]] = item[2]
                elif item[0] == "end":
                    ended = [*ended, item[1]]
                    if item[2] >= sampling["max_tokens"]:  # the stream ran to the limit (its last piece is a flush)
                        texts[item[1]] += "\n\n" + cut_mark(sampling["max_tokens"])
                elif item[0] == "scores":
                    scores = _score_line(item[1])
                elif item[0] == "note":
                    scores += "\n\n" + item[1]
                else:
                    slot, text = item
                    texts[slot] = text
                    if slot == BASE and not started[BASE]:
                        started[BASE] = True
                        if not started[TUNED]:
                            texts[TUNED] = f"…loading base + adapters ({label})"
                    started[slot] = True
            yield _turn(prompt, texts[BASE]), _turn(prompt, texts[TUNED]), scores
    finally:
        ctx.chat_stops.discard(session)
        stop.set()  # a chat cut off (Stop, a closed tab): the worker ends after its current token


def build(ctx: Context) -> dict:
    runs = runfiles.list_runs(ctx.runs_dir)
    pairs = gr.State([])     # the run's held-out pairs offered as examples
    chosen_pair = gr.State(None)
    with gr.Row():
        run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", scale=2, allow_custom_value=True,
                          elem_id="chat-run")
        checkpoint = gr.Dropdown([], label="Adapters (final or a checkpoint)", scale=2, allow_custom_value=True,
                                 elem_id="chat-ckpt")
        refresh = gr.Button("Refresh runs", scale=1)
    with gr.Row():
        max_tokens = gr.Slider(1, 1024, 128, step=1, label="Max new tokens", elem_id="chat-max-tokens")
        temperature = gr.Slider(0.0, 2.0, 0.0, step=0.05, label="Temperature (0: greedy)")
        top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Top-p")
        seed = gr.Number(0, label="Seed", precision=0)
    prompt = gr.Textbox(label="Prompt", placeholder="Ask something…", lines=2, max_lines=6, elem_id="chat-prompt")
    examples = gr.Dataset(components=[gr.Textbox(visible=False)], samples=[], type="index",
                          label="Held-out pairs of the run, shortest first (click: its prompt, and its chosen "
                                "and rejected answers beside the outputs)", elem_id="chat-examples")
    with gr.Row():
        send = gr.Button("Send to both", variant="primary", elem_id="chat-send", scale=3)
        halt = gr.Button("Stop", variant="stop", elem_id="chat-stop", scale=1, interactive=False)
    # The two answers get the whole width (about 680 px each at 1400 px); a held-out pair's own
    # answers stand in a row of their own below, not beside them.
    with gr.Row(equal_height=True):
        base = gr.Chatbot(label="Base model", height=420, elem_id="chat-base")
        tuned = gr.Chatbot(label="Base + adapters", height=420, elem_id="chat-tuned")
    with gr.Column(visible=False) as pair_col, gr.Row():
        chosen = gr.Textbox(label="Chosen answer (the data's)", lines=8, max_lines=16, interactive=False,
                            elem_id="chat-chosen")
        rejected = gr.Textbox(label="Rejected answer (the data's)", lines=8, max_lines=16,
                              interactive=False, elem_id="chat-rejected")
    scores = gr.Markdown(elem_id="chat-scores")

    def refreshed():
        names = runfiles.list_runs(ctx.runs_dir)
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    refresh.click(refreshed, None, run, queue=False, api_visibility="private")
    run.change(lambda n: select_run(ctx, n), run, [checkpoint, examples, pairs], api_name="chat_run")
    examples.click(pick_example, [pairs, examples], [prompt, chosen_pair, chosen, rejected, pair_col, scores],
                   queue=False, api_visibility="private")
    prompt.input(edited, [prompt, chosen_pair], [chosen_pair, pair_col], queue=False, api_visibility="private")
    inputs = [run, checkpoint, prompt, max_tokens, temperature, top_p, seed, chosen_pair]
    outputs = [base, tuned, scores]
    glue = dict(queue=False, api_visibility="private")

    def answer(name, ckpt, text, n, temp, p, seed_, pair, request: gr.Request):
        yield from chat(ctx, name, ckpt, text, n, temp, p, seed_, pair, session=request.session_hash or "")

    def halt_chat(request: gr.Request):
        ctx.chat_stops.add(request.session_hash or "")
        return gr.Button(interactive=False)

    # Send is off and Stop on while the models answer; Enter in the prompt box does what Send does.
    # A free prompt (typed, or an example edited) has no pair beside it.
    begun = gr.on([send.click, prompt.submit], edited, [prompt, chosen_pair], [chosen_pair, pair_col], **glue)
    begun = begun.then(busy_buttons, None, [send, halt], **glue)
    answering = begun.then(answer, inputs, outputs, api_name="chat")
    answering.then(idle_buttons, None, [send, halt], **glue)
    # Stop asks the chat to end itself (marking what it cut), rather than cancelling it from outside.
    halt.click(halt_chat, None, halt, **glue)
    return {"run": run, "checkpoint": checkpoint, "examples": examples, "pairs": pairs}

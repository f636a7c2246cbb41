"""The app's actions through its HTTP API (gradio_client), plus its path and form helpers.

The app runs in-process on a free loopback port with a temporary runs directory.
The training test runs the real CLI on SmolLM2-135M for three tiny steps.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from helpers import GOOD_ROWS, form, write_jsonl  # noqa: E402

from app import paths, runfiles  # noqa: E402
from app.estimate import estimate_memory  # noqa: E402
from app.form import FORM, choice_options, config_from_form, field_value, form_values  # noqa: E402
from app.session import Session  # noqa: E402
from app.train_tab import preview  # noqa: E402
from mlx_orpo.config import TrainConfig  # noqa: E402


def rows(plot) -> list:
    """A bar plot's data rows, whether the handler returned a frame or a component update around one."""
    return (plot.get("value") or plot)["data"] if plot.get("__type__") == "update" else plot["data"]


def points(plot) -> list[dict]:
    """The data points ({step, value, series}) of a curve plot (an Altair chart sent as Vega-Lite JSON)."""
    value = plot.get("value") if plot.get("__type__") == "update" else plot
    if not value:
        return []
    spec = json.loads(value["plot"])
    return [row for rows_ in spec.get("datasets", {}).values() for row in rows_]


# -- data ------------------------------------------------------------------------------


def test_upload_good_file_reports_pairs_bad_rows_preview_and_lengths(client, served, tmp_path):
    runs = served[1]
    path = write_jsonl(tmp_path / "my prefs.jsonl", GOOD_ROWS + [{"prompt": "no answers"}], ["not json"])
    report, bad, preview, hist, stats, *_ = client.predict(handle_file(str(path)), "smollm2-135m", 1024,
                                                           api_name="/upload_data")
    assert "4 pairs" in report and "2 bad rows" in report and "prompt_strings" in report
    assert [row[0] for row in bad["data"]] == ["uploads/my_prefs.jsonl, line 5", "uploads/my_prefs.jsonl, line 6"]
    assert "missing key 'chosen'" in bad["data"][0][1] and "not valid JSON" in bad["data"][1][1]
    assert (runs / "uploads" / "my_prefs.jsonl").is_file()  # stored under the runs dir, name sanitised
    # The preview keeps the template's line breaks (a <pre> per cell), escaped.
    assert "&lt;|im_start|&gt;user\nWhat is 2+2?&lt;|im_end|&gt;" in preview
    assert "&lt;|im_start|&gt;assistant\n</pre>" in preview
    assert "<pre>4.\n- Two plus two." in preview and "<pre>five</pre>" in preview
    assert sum(row[1] for row in rows(hist)) == 4
    assert [row[0] for row in rows(hist)] == sorted(row[0] for row in rows(hist))  # numeric bin starts
    assert "0 of 4 pairs will be truncated" in stats


def test_token_stats_count_truncation_at_the_chosen_max_length(client, tmp_path):
    long_rows = [{"prompt": "word " * 60, "chosen": "yes " * 40, "rejected": "no " * 40}] + GOOD_ROWS
    client.predict(handle_file(str(write_jsonl(tmp_path / "long.jsonl", long_rows))), "smollm2-135m", 1024,
                   api_name="/upload_data")
    hist, stats = client.predict("smollm2-135m", 64, api_name="/token_stats")
    assert "At max length 64:** 1 of 5 pairs will be truncated" in stats
    assert any(row[2] == "over max length" for row in rows(hist))


def test_columns_with_other_names_are_mapped_guessed_or_chosen(client, served, tmp_path):
    runs = served[1]
    other = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in GOOD_ROWS]
    report = client.predict(handle_file(str(write_jsonl(tmp_path / "qa.jsonl", other))), "smollm2-135m", 1024,
                            api_name="/upload_data")[0]
    assert "4 pairs" in report and "Columns mapped: `prompt=question,chosen=good,rejected=bad`" in report, report
    farm = [{"instruction": r["prompt"], "output_1": a, "output_2": b, "preference": p}
            for r, (a, b, p) in zip(GOOD_ROWS, [("x", "y", 1), ("y", "x", 2)] * 2)]
    report = client.predict(handle_file(str(write_jsonl(tmp_path / "farm.jsonl", farm))), "smollm2-135m", 1024,
                            api_name="/upload_data")[0]
    assert "4 pairs" in report and "label=preference" in report, report
    odd = [{"a": r["prompt"], "b": r["chosen"], "c": r["rejected"]} for r in GOOD_ROWS]
    report = client.predict(handle_file(str(write_jsonl(tmp_path / "odd.jsonl", odd))), "smollm2-135m", 1024,
                            api_name="/upload_data")[0]
    assert report.startswith("⚠️ **Not usable:**") and "Apply mapping" in report, report
    assert (runs / "uploads" / "odd.jsonl").is_file()  # kept, to be mapped
    report = client.predict("smollm2-135m", 1024, "a", "b", "c", "(none)", "(none)", api_name="/map_columns")[0]
    assert "4 pairs" in report and "Columns mapped: `prompt=a,chosen=b,rejected=c`" in report, report
    report = client.predict("smollm2-135m", 1024, "a", "b", "b", "(none)", "(none)", api_name="/map_columns")[0]
    assert "--columns maps column 'b' to both chosen and rejected" in report, report
    report = client.predict("smollm2-135m", 1024, "a", "b", "z", "(none)", "(none)", api_name="/map_columns")[0]
    assert "uploads/odd.jsonl: --columns rejected=z names a column it does not have (its columns: a, b, c)" \
        in report, report


def test_bad_file_gives_a_readable_report(client, served, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text("this is not json\nneither is this\n")
    report, bad, *_ = client.predict(handle_file(str(path)), "smollm2-135m", 1024, api_name="/upload_data")
    assert report.startswith("⚠️ **Not usable:** uploads/broken.jsonl")
    assert "not valid JSON" in report or "cannot detect the format" in report
    assert str(served[1]) not in report  # paths are shown relative to the runs dir
    assert not bad["data"] or bad["data"] == [["", ""]]


def test_uploads_of_a_wrong_type_or_too_large_are_refused(client, served, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(AppError, match="Invalid file type"):
        client.predict(handle_file(str(path)), "smollm2-135m", 1024, api_name="/upload_data")
    big = write_jsonl(tmp_path / "big.jsonl", GOOD_ROWS * 6000)  # over the 1 MB limit of this app
    with pytest.raises(Exception, match="(?i)too large|exceeds|size"):
        client.predict(handle_file(str(big)), "smollm2-135m", 1024, api_name="/upload_data")
    assert not (served[1] / "uploads" / "notes.txt").exists()
    assert not (served[1] / "uploads" / "big.jsonl").exists()


def test_demo_set_and_hub_name_checks(client):
    report = client.predict("smollm2-135m", 1024, api_name="/demo_data")[0]
    assert "demo set" in report and "pairs" in report
    for name in ("../../etc/passwd", "/etc/passwd", "a/b/c"):
        assert "not a Hub dataset name" in client.predict(name, "smollm2-135m", 1024, api_name="/hub_data")[0]


# -- runs directory confinement ---------------------------------------------------------


def test_no_request_reaches_outside_the_runs_dir(client, served):
    url, runs = served
    for bad in ("..", "../x", "/etc", "a/../..", ".hidden", "uploads/../.."):
        with pytest.raises(AppError, match="not a valid name"):
            client.predict(bad, "(none)", api_name="/show_run")
        with pytest.raises(AppError, match="not a valid name|does not exist"):
            client.predict(bad, "final", "hi", 8, 0.0, 1.0, 0, api_name="/chat")
    assert "Cannot resume" in client.predict("../..", api_name="/resume_training")
    import httpx

    (runs / "secret.txt").write_text("x")
    for target in (runs / "secret.txt", Path("/etc/passwd")):
        assert httpx.get(f"{url}gradio_api/file={target}").status_code in (403, 404)


def test_path_helpers_sanitise_and_confine(tmp_path):
    assert paths.sanitise("../../etc/pass wd.jsonl") == "pass_wd.jsonl"
    assert paths.sanitise("..") == "file"
    upload = tmp_path / "tmp.jsonl"
    upload.write_text("{}\n")
    stored = paths.store_upload(tmp_path, str(upload), "../../evil.jsonl", max_bytes=100)
    assert stored.parent == tmp_path / "uploads" and stored.name == "evil.jsonl"
    # The same content again is the file already stored, under any name; other content gets a new name.
    assert paths.store_upload(tmp_path, str(upload), "again.jsonl", max_bytes=100) == stored
    other = tmp_path / "other.jsonl"
    other.write_text("[]\n")
    assert paths.store_upload(tmp_path, str(other), "evil.jsonl", max_bytes=100).name == "evil-2.jsonl"
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == ["evil-2.jsonl", "evil.jsonl"]
    with pytest.raises(paths.PathError, match="over the upload limit"):
        paths.store_upload(tmp_path, str(upload), "big.jsonl", max_bytes=1)
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(paths.PathError):
        paths.child(tmp_path, "link")
    assert paths.new_run_dir(tmp_path, "../my run").name == "my_run"
    assert paths.new_run_dir(tmp_path, "uploads").name == "uploads-2"


# -- train form, estimate, curves --------------------------------------------------------


def test_train_form_maps_onto_train_config():
    cfg = config_from_form("smollm2-135m", form(iters=2, max_length=128, beta=0.2, bits="4"))
    assert (cfg.iters, cfg.max_length, cfg.beta, cfg.bits) == (2, 128, 0.2, 4)
    assert cfg.prompt_budget < 128
    assert config_from_form("", form(iters=None)).iters is None  # blank iterations: train for epochs
    with pytest.raises(ValueError, match="learning-rate"):
        config_from_form("smollm2-135m", form(learning_rate=0))
    with pytest.raises(ValueError, match="--batch-size must be an integer, got 2.5"):  # an int field
        config_from_form("smollm2-135m", form(batch_size=2.5))
    with pytest.raises(ValueError, match=r"--seed needs a value \(default: 0\)"):  # not optional
        config_from_form("smollm2-135m", form(seed=None))
    assert form_values(cfg.to_dict())[FORM.index("bits")] == "4"  # a saved config fills the form back


def test_the_form_reads_a_value_as_a_yaml_file_does(tmp_path):
    """One reader for both: what a box holds (a number, a word, text) means what it means in YAML."""
    from mlx_orpo.config import load_yaml

    typed = {"learning_rate": "5e-5", "iters": "1e3", "bits": "8", "grad_checkpoint": "no", "memory_budget": "12GB"}
    (tmp_path / "run.yaml").write_text("".join(f"{k}: {v}\n" for k, v in typed.items()))
    assert {k: field_value(k, v) for k, v in typed.items()} == load_yaml(tmp_path / "run.yaml")
    assert field_value("bits", "none") is None and field_value("iters", "") is None  # blank: the default


def test_form_and_cli_share_the_field_table():
    """The app's widgets and the CLI's flags come from config.FIELD_SPECS: same kinds, choices, bounds."""
    import gradio as gr

    from app.form import widget
    from mlx_orpo.config import FIELD_SPECS
    from mlx_orpo.train import build_parser

    actions = {a.dest: a for a in build_parser()._actions}
    kinds = {bool: gr.Checkbox, int: gr.Number, float: gr.Number, str: gr.Textbox}
    with gr.Blocks():
        for name in FORM:
            spec = FIELD_SPECS[name]
            made = widget(name, spec.default)
            assert isinstance(made, gr.Dropdown if spec.choices else kinds[spec.kind]), name
            if spec.kind is not bool:
                assert actions[name].type is spec.kind, name
            if isinstance(made, gr.Number):
                assert made.minimum == (spec.bounds.lowest if spec.bounds else None), name
    assert [value for _, value in choice_options("bits")] == ["none"] + [str(c) for c in actions["bits"].choices]


def test_the_app_launches_the_cli_with_its_resolved_config_as_yaml(tmp_path):
    from app.jobs import write_launch_config
    from mlx_orpo.train import build_parser, resolve_config

    cfg = config_from_form("smollm2-135m", form(iters=3, learning_rate=5e-5, bits="8", grad_checkpoint=True))
    path = write_launch_config(tmp_path, "/data/p.jsonl", cfg)
    args = build_parser().parse_args(["--config", str(path)])
    again = resolve_config(args)
    assert again.to_dict() == {**cfg.to_dict(), "output_dir": str(tmp_path), "data": "/data/p.jsonl"}
    # Only what the form changed is explicit, so the trainer's auto-fit may still change the rest
    # (batch, accumulation, checkpointing), as the app's memory preview shows it will.
    from mlx_orpo.train import explicit_settings

    assert explicit_settings(args) == {"iters", "learning_rate", "bits", "grad_checkpoint", "output_dir", "data"}


def test_warmup_longer_than_the_run_is_flagged():
    assert "longer than the run" in preview(Session(), "smollm2-135m", *form(iters=6, warmup_steps=10))
    assert "longer than the run" not in preview(Session(), "smollm2-135m", *form(iters=20, warmup_steps=10))


def test_histogram_bins_meet_the_max_length():
    from app.data_tab import bin_width

    for longest, max_length in ((5000, 1024), (300, 1024), (90, 128), (40000, 1024), (700, 1000), (6000, 300)):
        width = bin_width(longest, max_length)
        assert max_length % width == 0, (longest, max_length, width)  # the max length is a bin edge
        assert 5 <= longest / width <= 40 or width == max_length  # about 20 bins


def test_no_histogram_bin_holds_pairs_on_both_sides_of_the_max_length():
    import pandas as pd

    from app.data_tab import MAX_BINS, length_histogram

    lengths = pd.Series([1, 299, 300, 301, 599, 600, 601, 6000, 90000])
    hist, width, clipped = length_histogram(lengths, 300)
    assert width == 300 and clipped == 1  # 90000 tokens: past MAX_BINS bins, drawn in the last
    sides = hist.groupby("tokens")["fits"].nunique()
    assert (sides == 1).all(), hist
    fits = hist[hist["fits"] == "≤ max length"]
    assert fits["pairs"].sum() == 3 and fits["tokens"].max() + width == 300, hist  # 300 itself fits
    assert hist["tokens"].max() == (MAX_BINS - 1) * width and hist["pairs"].sum() == len(lengths)


def test_long_prompts_clamp_to_their_first_rendered_lines():
    from app.chat_tab import CLAMP_CHARS, prompt_html

    assert prompt_html("short") == "short"
    long = "请详细介绍长城的历史。" * 14  # 154 characters: under the old 160-character limit
    assert len(long) > CLAMP_CHARS and 'class="orpo-clamp"' in prompt_html(long) and "show more" in prompt_html(long)


def test_curve_charts_draw_points_and_give_every_series_a_colour():
    from app.plots import PALETTE, chart

    records = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_loss": 1.7}]
    frames = runfiles.curve_frames([("a", records), ("b", records)])
    spec = chart("loss", frames["loss"], ["a", "b"]).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["line", "point"]  # one eval point shows
    scale = spec["layer"][0]["encoding"]["color"]["scale"] if "encoding" in spec["layer"][0] else \
        spec["encoding"]["color"]["scale"]
    assert scale["domain"] == ["a · loss (train)", "a · loss (eval)", "b · loss (train)", "b · loss (eval)"]
    assert len(set(scale["range"])) == 4 and set(scale["range"]) <= set(PALETTE)


def test_memory_estimate_grows_with_batch_and_shrinks_with_bits(smollm2_dir):
    small = estimate_memory(TrainConfig(batch_size=1, max_length=256))
    big = estimate_memory(TrainConfig(batch_size=4, max_length=256))
    quant = estimate_memory(TrainConfig(batch_size=1, max_length=256, bits=4))
    assert 0.4 < small.weights_gb < 0.7  # 135M float32 parameters on the CPU
    assert big.activations_gb > 3 * small.activations_gb
    assert quant.weights_gb < small.weights_gb / 4


def test_curve_frames_put_train_and_eval_on_the_same_axes():
    records = [{"step": 1, "loss": 2.0, "nll_loss": 1.5, "log_odds_chosen": 0.1},
               {"step": 1, "eval_loss": 1.9, "eval_nll_loss": 1.4, "eval_log_odds_chosen": 0.2},
               {"step": 2, "loss": None, "nll_loss": 1.4}]  # a fully skipped window has null metrics
    frames = runfiles.curve_frames([("a", records)])
    assert set(frames["loss"]["series"]) == {"loss (train)", "NLL (train)", "loss (eval)", "NLL (eval)"}
    assert len(frames["loss"]) == 5
    overlay = runfiles.curve_frames([("a", records), ("b", records)])
    assert {"a · loss (train)", "b · loss (train)"} <= set(overlay["loss"]["series"])


def test_progress_reads_the_trainer_status(tmp_path):
    from mlx_orpo import rundir

    run = tmp_path / "r"
    run.mkdir()
    launched = 1000.0
    phase = lambda **kw: runfiles.progress(run, running=True, since=launched, **kw)
    assert phase().phase == runfiles.LOADING  # no status yet: the model is loading
    assert phase(resume=True).phase == runfiles.RESUMING
    (run / "status.json").write_text(json.dumps({"phase": "stopped", "step": 2, "time": launched - 50}))
    assert phase(resume=True).phase == runfiles.RESUMING  # the previous process's status, not this one's
    rundir.write_status(run, "loading")
    assert phase().phase == runfiles.COMPILING
    rundir.write_status(run, "training", step=3, total_steps=6, eval_pairs=4, step_seconds=2.0)
    assert (phase().phase, phase().step, phase().total) == (runfiles.TRAINING, 3, 6)
    rundir.write_status(run, "evaluating", step=3, total_steps=6, eval_done=2, eval_total=4, eval_seconds=1.0)
    assert phase().label == "evaluating: 2 of 4 held-out pairs"
    assert runfiles.progress(run, running=False).phase == "idle"


def test_eta_includes_the_evaluations_still_due():
    from mlx_orpo import rundir
    from mlx_orpo.rundir import Status

    rate = runfiles.Rate()
    cfg = {"eval_every": 5, "batch_size": 2, "grad_accum": 1}
    t = 1000.0
    p = lambda step, phase, **kw: runfiles.Progress(step, 20, phase, **kw)
    rate.observe(Status(rundir.TRAINING, t, step=1, step_seconds=None, eval_pairs=8))
    assert rate.eta(p(1, runfiles.TRAINING), cfg, now=t) is None  # the first step compiles: no measure yet
    assert runfiles.eta_text(None) == "estimating…"
    rate.observe(Status(rundir.TRAINING, t + 3, step=2, step_seconds=3.0, eval_pairs=8))
    # 18 steps at 3 s, and evaluations due at 5, 10, 15, 20 of 8 pairs, each estimated at a third of a
    # trained pair (3 s / 2 pairs / 3 = 0.5 s) until one is timed.
    assert rate.eta(p(2, runfiles.TRAINING), cfg, now=t + 3) == pytest.approx(18 * 3.0 + 4 * 8 * 0.5)
    rate.observe(Status(rundir.EVALUATING, t + 20, step=5, eval_done=4, eval_total=8, eval_seconds=8.0,
                        eval_pairs=8))  # measured: 2 s per pair
    left = rate.eta(p(5, runfiles.EVALUATING, eval_done=4, eval_total=8), cfg, now=t + 20)
    assert left == pytest.approx(4 * 2.0 + 15 * 3.0 + 3 * 8 * 2.0)
    # Counting down between status writes, never below what is certainly left after the current batch.
    later = rate.eta(p(5, runfiles.EVALUATING, eval_done=4, eval_total=8), cfg, now=t + 1000)
    assert later == pytest.approx(15 * 3.0 + 3 * 8 * 2.0)


def test_unknown_model_and_crashed_run_are_reported(client, monkeypatch):
    started = client.predict("", "no-such-model", *form(iters=1), api_name="/start_training")
    assert "Cannot start" in started and "not an alias" in started
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the run below must fail fast, offline
    started = client.predict("crash", "nobody-xyz/no-such-repo", *form(iters=1, max_length=128),
                             api_name="/start_training")
    assert "Started **crash**" in started
    out = _refresh_until(client, lambda out: "failed" in out[2] or "finished" in out[2], timeout=120)
    assert out[2].startswith("⚠️ **crash failed** (exit"), out[2]
    assert "nobody-xyz/no-such-repo" in out[2] or "error" in out[2].lower()


def test_stop_with_no_job_says_so(client):
    assert "No run is training" in client.predict(api_name="/stop_training")


# -- a real run: start, stop, resume, curves, chat ---------------------------------------


def _refresh_until(client, done, timeout=300):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        out = client.predict(api_name="/refresh_training")
        if isinstance(out[2], str):  # not a skipped update
            last = out
            if done(out):
                return out
        time.sleep(1.5)
    raise AssertionError(f"timed out; last refresh: {last and last[:3]}")


@pytest.mark.slow
def test_start_stop_resume_curves_and_chat(client, served, tmp_path):
    _, runs = served
    data = write_jsonl(tmp_path / "p.jsonl", GOOD_ROWS * 3, ["not json"])
    client.predict(handle_file(str(data)), "smollm2-135m", 128, api_name="/upload_data")
    values = form(iters=3, max_length=128, report_every=1, eval_every=1, save_every=1, warmup_steps=0)
    started = client.predict("app test", "smollm2-135m", *values, api_name="/start_training")
    assert "Started **app_test**" in started and "p.jsonl, skipping its 1 bad rows" in started
    run = runs / "app_test"
    assert (run / "launch.yaml").is_file()  # the CLI was given the resolved config as a file

    # The job is the server's: another session (a second tab) sees it, and cannot start a second one.
    other = Client(served[0], verbose=False)
    refused = other.predict("second", "smollm2-135m", *values, api_name="/start_training")
    assert "Cannot start" in refused and "app_test is training" in refused, refused
    assert not (runs / "second").exists()
    assert "app_test" in _refresh_until(other, lambda out: "app_test" in out[0])[0]

    _refresh_until(client, lambda out: runfiles.records(run))  # first record written
    assert "Stopping" in other.predict(api_name="/stop_training")  # Stop from the other tab
    out = _refresh_until(client, lambda out: "stopped" in out[2] or "failed" in out[2])
    assert re.search(r"stopped at step \d; checkpoint saved", out[2]), out[2]
    assert runfiles.checkpoints(run)

    assert "Resuming **app_test**" in client.predict("app_test", api_name="/resume_training")
    out = _refresh_until(client, lambda out: "finished" in out[2] or "failed" in out[2])
    assert "finished" in out[2], out[1]
    assert "step 3/3" in out[0] and "100%" in out[0]
    assert "train step 3/3" in out[1]  # log tail

    loss, log_odds = out[5], out[6]
    assert {"loss (train)", "loss (eval)", "NLL (train)", "NLL (eval)"} <= {r["series"] for r in points(loss)}
    assert {r["step"] for r in points(log_odds)} == {1, 2, 3}

    config, summary, *plots = client.predict("app_test", "(none)", api_name="/show_run")
    assert config["iters"] == 3 and config["data"].endswith("uploads/p.jsonl")
    assert "step 3/3" in summary and len(points(plots[0])) == len(points(loss))
    assert "app_test" in json.dumps(client.predict(api_name="/list_runs"))

    ckpt, examples = client.predict("app_test", api_name="/chat_run")
    assert ckpt["choices"][0][0] == "final" and examples["samples"]
    base, tuned, scores = client.predict("app_test", "final", "What is 2+2?", 8, 0.0, 1.0, 0, api_name="/chat")
    assert scores == ""  # a free prompt: no held-out pair to score
    for chat in (base, tuned):
        assert chat[0]["content"][0]["text"] == "What is 2+2?"
        answer = chat[1]["content"][0]["text"]
        assert answer and not answer.startswith("⚠️"), answer

    log, files, usage = client.predict("app_test", "final", "f16", "none", False, api_name="/export_peft")
    assert "export failed" not in log and files["data"] and usage, log
    assert all(row[0].startswith("exports/app_test-peft/") for row in files["data"])
    with pytest.raises(AppError, match="not a valid name"):
        client.predict("app_test", "../../..", "f16", "none", False, api_name="/export_hf")

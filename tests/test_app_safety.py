"""The app's file access through its HTTP API (gradio_client against the real server): only
uploaded files are read, refused uploads are deleted, /hub_data takes Hub ids only, a run that
is training cannot be resumed a second time, and a lone surrogate is a listed bad row."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from gradio_client import handle_file
from gradio_client.exceptions import AppError
from helpers import APP_MAX_LEN as MAX_LEN
from helpers import APP_MODEL as MODEL
from helpers import GOOD_ROWS, file_data, upload_raw, write_jsonl

from app import paths

SECRET = "SECRET-TOKEN-1234"


@pytest.fixture
def no_client_upload(monkeypatch):
    """gradio_client uploads the local file a FileData names before calling; a hostile page or
    process just sends the path. This makes the client send the path as given."""
    from gradio_client.client import Endpoint

    monkeypatch.setattr(Endpoint, "_upload_file", lambda self, f, data_index: f)


def everything(outputs) -> str:
    return json.dumps(outputs, ensure_ascii=False)


def refusal(client, request) -> str:
    """What /upload_data answers to `request`: Gradio's own refusal or the app's report."""
    try:
        outputs = client.predict(request, MODEL, MAX_LEN, api_name="/upload_data")
    except AppError as exc:
        return str(exc)
    assert SECRET not in everything(outputs) and "root:" not in everything(outputs)
    return outputs[0]


def test_upload_reads_only_files_uploaded_to_this_app(client, served, tmp_path, no_client_upload):
    """A path in Gradio's upload folder passes Gradio's own check (the folder is shared by every
    Gradio app of this user, and holds other sessions' files); the app reads only the paths its
    upload route handed out."""
    from gradio.utils import get_upload_folder

    runs = served[1]
    row = {"prompt": SECRET, "chosen": "Hello there, friend.", "rejected": "no"}
    foreign = Path(get_upload_folder()) / f"other-app-{os.getpid()}" / "private.jsonl"
    foreign.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(foreign, [row] * 3)
    try:
        answer = refusal(client, file_data(foreign))
        assert answer.startswith("⚠️ **Not usable:** that file was not uploaded to this app"), answer
        assert foreign.is_file()  # not ours to delete
    finally:
        shutil.rmtree(foreign.parent)
    # Outside the upload folder Gradio refuses first (directly, or after '..'); either way no row comes back.
    private = write_jsonl(tmp_path / "private.jsonl", [row] * 3)
    for path in (private, f"{get_upload_folder()}/../../{private.relative_to('/')}", "/etc/passwd"):
        answer = refusal(client, file_data(path))
        assert "not uploaded by a user" in answer or "not uploaded to this app" in answer, answer
    assert not (runs / "uploads" / "a.jsonl").exists() and not (runs / "uploads" / "private.jsonl").exists()


def test_received_upload_accepts_only_handed_out_paths(tmp_path):
    uploaded = tmp_path / "gradio" / "abc" / "prefs.jsonl"
    uploaded.parent.mkdir(parents=True)
    uploaded.write_text("{}\n")
    handed_out = {str(uploaded)}
    roundabout = tmp_path / "gradio" / "abc" / ".." / "abc" / "prefs.jsonl"
    assert paths.received_upload(str(roundabout), handed_out) == uploaded
    (tmp_path / "gradio" / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    for bad in (tmp_path / "gradio" / "link.jsonl", tmp_path / "secret.jsonl", "/etc/passwd"):
        with pytest.raises(paths.PathError, match="not uploaded to this app"):
            paths.received_upload(str(bad), handed_out)


def test_refused_uploads_are_deleted(client, served, tmp_path, no_client_upload):
    url, runs = served
    broken = tmp_path / "broken2.jsonl"
    broken.write_text("not json\nnor this\n")
    stored_by_gradio = upload_raw(url, broken)
    assert Path(stored_by_gradio).is_file()
    report = client.predict(file_data(stored_by_gradio, "broken2.jsonl"), MODEL, MAX_LEN, api_name="/upload_data")[0]
    assert report.startswith("⚠️ **Not usable:** uploads/broken2.jsonl") and "The file was not kept." in report
    assert not (runs / "uploads" / "broken2.jsonl").exists() and not Path(stored_by_gradio).exists()


def test_upload_over_the_size_limit_is_refused_with_a_clear_message(client, served, tmp_path):
    runs = served[1]
    big = write_jsonl(tmp_path / "big2.jsonl", GOOD_ROWS * 5000)  # about 1.5 MB, over this app's 1 MB
    with pytest.raises(Exception, match="exceeds the maximum file size of 1000000 bytes"):
        client.predict(handle_file(str(big)), MODEL, MAX_LEN, api_name="/upload_data")
    assert not (runs / "uploads" / "big2.jsonl").exists()


def test_hub_data_takes_owner_name_ids_only(client, tmp_path, monkeypatch):
    """`json` and `csv` are `datasets` builders that once loaded every such file in the app's
    working directory and quoted a creds.csv in the error."""
    (tmp_path / "creds.csv").write_text(f"prompt,chosen,rejected\n{SECRET},a,b\n")
    (tmp_path / "notes.json").write_text(json.dumps([{"prompt": SECRET, "chosen": "a", "rejected": "b"}]))
    monkeypatch.chdir(tmp_path)
    datasets = pytest.importorskip("datasets")
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or [])
    for name in ("json", "csv", "parquet", "text", "json:train", "creds.csv", "./creds.csv", "notes.json",
                 str(tmp_path / "creds.csv"), "../creds", "owner/name/extra"):
        outputs = client.predict(name, MODEL, MAX_LEN, api_name="/hub_data")
        assert "not a Hub dataset name (owner/name[:split])" in outputs[0], (name, outputs[0])
        assert SECRET not in everything(outputs)
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "local").mkdir()  # a local directory named like a Hub id is not read either
    assert "not a Hub dataset name" in client.predict("owner/local", MODEL, MAX_LEN, api_name="/hub_data")[0]
    assert calls == []


def test_resume_refuses_a_run_that_another_process_is_training(client, served):
    from mlx_orpo.runlock import RunLock

    runs = served[1]
    run = runs / "busy"
    (run / "checkpoints" / "step-000002").mkdir(parents=True)
    (run / "checkpoints" / "step-000002" / "state.json").write_text('{"step": 2}')
    (run / "config.json").write_text("{}")
    with RunLock(run):  # as the trainer holds it (here: this test process): the server's job
        status = client.predict("busy", api_name="/resume_training")
    assert status.startswith(f"⚠️ **Cannot resume:** busy is training (pid {os.getpid()})"), status
    assert "No run is training" in client.predict(api_name="/stop_training")  # nothing was launched


def test_lone_surrogate_in_an_upload_is_a_listed_bad_row(client, tmp_path):
    path = tmp_path / "surrogate.jsonl"
    rows = [json.dumps(r) for r in GOOD_ROWS]
    rows.insert(2, '{"prompt": "Hi", "chosen": "fine \\ud800 thanks", "rejected": "no"}')
    path.write_text("\n".join(rows) + "\n")
    report, bad, preview, _, stats = client.predict(handle_file(str(path)), MODEL, MAX_LEN,
                                                       api_name="/upload_data")
    assert "4 pairs" in report and "1 bad rows" in report, report
    assert bad["data"] == [["uploads/surrogate.jsonl, line 3",
                            "'chosen' holds a lone surrogate '\\ud800' at character 6 (not valid Unicode text)"]]
    assert preview.count("<tr>") == 1 + 3 and "0 of 4 pairs will be truncated" in stats

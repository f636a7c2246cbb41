"""Tests for mlx_orpo.data: format detection, normalisation, validation, splits, demo data."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest

from mlx_orpo import demo_data
from mlx_orpo.data import FORMATS, DataError, LoadReport, PreferencePair, load_pairs, load_splits
from mlx_orpo.measure import SHARED_DATA as SHARED_DPO


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def pair_rows(n: int):
    return [{"prompt": f"question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]


# -- format detection and normalisation ---------------------------------------------


def test_prompt_strings_with_row_system(tmp_path):
    rows = [
        {"prompt": "Hi?", "chosen": " Hello! \n", "rejected": "Go away."},
        {"prompt": "Sum 2+2?", "chosen": "4", "rejected": "5", "system": "Be exact."},
    ]
    pairs, report = load_pairs(write_jsonl(tmp_path / "a.jsonl", rows))
    assert report == LoadReport(str(tmp_path / "a.jsonl"), "prompt_strings", 2, 2, [])
    assert pairs[0] == PreferencePair((user("Hi?"),), "Hello!", "Go away.", f"{tmp_path / 'a.jsonl'}:1")
    assert pairs[1].prompt == (system("Be exact."), user("Sum 2+2?"))
    assert pairs[1].origin.endswith("a.jsonl:2")


def test_system_argument_only_fills_rows_without_one(tmp_path):
    rows = [
        {"prompt": "A?", "chosen": "a", "rejected": "b"},
        {"prompt": "B?", "chosen": "a", "rejected": "b", "system": "Row system."},
    ]
    pairs, _ = load_pairs(write_jsonl(tmp_path / "s.jsonl", rows), system="Default system.")
    assert pairs[0].prompt[0] == system("Default system.")
    assert pairs[1].prompt[0] == system("Row system.")
    assert len(pairs[1].prompt) == 2


def test_trl_conversational_multi_turn(tmp_path):
    row = {
        "prompt": [system("Be brief."), user("Hi"), assistant("Hello."), user("Capital of France?")],
        "chosen": [assistant("Paris.")],
        "rejected": [assistant("Lyon.")],
    }
    pairs, report = load_pairs(write_jsonl(tmp_path / "t.jsonl", [row]))
    assert report.format == "trl_conversational"
    assert pairs[0].prompt == tuple(row["prompt"])
    assert (pairs[0].chosen, pairs[0].rejected) == ("Paris.", "Lyon.")


def test_ultrafeedback_shared_prefix(tmp_path):
    conv = [user("Hi"), assistant("Hello."), user("Name a colour.")]
    row = {"prompt": "Hi", "chosen": conv + [assistant("Blue.")], "rejected": conv + [assistant("No.")],
           "score_chosen": 8.0, "score_rejected": 2.0}
    pairs, report = load_pairs(write_jsonl(tmp_path / "u.jsonl", [row]))
    assert report.format == "ultrafeedback"
    assert pairs[0].prompt == tuple(conv)
    assert (pairs[0].chosen, pairs[0].rejected) == ("Blue.", "No.")


def test_sharegpt_with_top_level_system(tmp_path):
    row = {
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
                          {"from": "human", "value": "2+2?"}],
        "chosen": {"from": "gpt", "value": "4"},
        "rejected": {"from": "gpt", "value": "22"},
        "system": "You are a calculator.",
    }
    path = tmp_path / "g.json"
    path.write_text(json.dumps([row]))
    pairs, report = load_pairs(str(path))
    assert report.format == "sharegpt"
    assert pairs[0].prompt == (system("You are a calculator."), user("Hi"), assistant("Hello."), user("2+2?"))
    assert pairs[0].origin == f"{path}:0"  # json rows are 0-based


def test_hh_multi_turn(tmp_path):
    shared = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:"
    row = {"chosen": shared + " It is 4.", "rejected": shared + " No idea."}
    pairs, report = load_pairs(write_jsonl(tmp_path / "h.jsonl", [row]))
    assert report.format == "hh"
    assert pairs[0].prompt == (user("Hi there"), assistant("Hello!"), user("What is 2+2?"))
    assert (pairs[0].chosen, pairs[0].rejected) == ("It is 4.", "No idea.")


def test_forced_format_overrides_detection(tmp_path):
    # Detection would say prompt_strings; forcing hh must parse the answers as dialogues.
    row = {"prompt": "ignored", "chosen": "\n\nHuman: Q\n\nAssistant: yes", "rejected": "\n\nHuman: Q\n\nAssistant: no"}
    path = write_jsonl(tmp_path / "f.jsonl", [row])
    assert load_pairs(path)[1].format == "prompt_strings"
    pairs, report = load_pairs(path, format="hh")
    assert report.format == "hh"
    assert pairs[0].prompt == (user("Q"),) and pairs[0].chosen == "yes"


# -- file types and sources ---------------------------------------------------------


def test_csv_rows_are_one_based(tmp_path):
    path = tmp_path / "p.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "chosen", "rejected"])
        w.writerow(["Q1, with comma?", "line one\nline two", "bad"])
        w.writerow(["Q2?", "good", "bad"])
    pairs, report = load_pairs(str(path))
    assert report.format == "prompt_strings" and report.pairs == 2
    assert pairs[0].prompt == (user("Q1, with comma?"),)
    assert pairs[0].chosen == "line one\nline two"
    assert pairs[1].origin == f"{path}:2"


def test_parquet_conversational(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"prompt": [user(f"q{i}")], "chosen": [assistant(f"yes {i}")], "rejected": [assistant(f"no {i}")]}
            for i in range(3)]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    pairs, report = load_pairs(str(path))
    assert report.format == "trl_conversational" and report.rows == 3
    assert pairs[2].prompt == (user("q2"),) and pairs[2].chosen == "yes 2"
    assert pairs[2].origin == f"{path}:2"


def test_json_file_that_is_really_jsonl(tmp_path):
    path = tmp_path / "lines.json"
    write_jsonl(path, pair_rows(3))
    pairs, _ = load_pairs(str(path))
    assert [p.chosen for p in pairs] == ["good 0", "good 1", "good 2"]


def test_shared_sharegpt_file_loads_300_pairs():
    if not SHARED_DPO.is_file():
        pytest.skip(f"shared data file absent: {SHARED_DPO}")
    pairs, report = load_pairs(str(SHARED_DPO))
    assert (report.format, report.rows, report.pairs, report.skipped) == ("sharegpt", 300, 300, [])
    assert all(p.prompt[-1]["role"] == "user" for p in pairs)
    assert sum(p.prompt[0]["role"] == "system" for p in pairs) == 80
    assert max(len(p.prompt) for p in pairs) > 5  # multi-turn rows survive


def test_hub_error_is_a_clear_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"could not load Hub dataset someorg/prefs .*offline"):
        load_pairs("someorg/prefs:train_prefs")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_pairs(str(tmp_path / "nope.jsonl"))
    path = write_jsonl(tmp_path / "ok.jsonl", pair_rows(2))
    with pytest.raises(DataError, match="unknown format 'dpo'.*prompt_strings.*hh"):
        load_pairs(path, format="dpo")


# -- validation: every message names file, row and problem ----------------------------

ROW_ERRORS = [
    ({"prompt": "Q", "chosen": "a"}, "missing key 'rejected'"),
    ({"prompt": "Q", "chosen": "a", "rejected": 3}, "'rejected' must be a string, got int"),
    ({"prompt": "Q", "chosen": "   \n", "rejected": "b"}, "chosen answer is empty"),
    ({"prompt": "Q", "chosen": "same", "rejected": "same "}, "chosen is identical to rejected"),
    ({"prompt": [user("Q"), assistant("A")], "chosen": [assistant("x")], "rejected": [assistant("y")]},
     "prompt must end with a user turn"),
    ({"prompt": [{"role": "narrator", "content": "Q"}], "chosen": [assistant("x")], "rejected": [assistant("y")]},
     "unknown role 'narrator'"),
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "observation", "value": "{}"}],
      "chosen": {"from": "gpt", "value": "x"}, "rejected": {"from": "gpt", "value": "y"}},
     "unsupported role 'observation'"),
    ({"chosen": [user("Q"), assistant("x"), user("more")], "rejected": [user("Q"), assistant("y")]},
     "chosen continues with assistant, user; expected exactly one assistant message"),
    ({"chosen": "\n\nHuman: Q\n\nAssistant: a", "rejected": "\n\nHuman: Q\n\nAssistant: a"},
     "chosen is identical to rejected"),
]


@pytest.mark.parametrize("bad_row, problem", ROW_ERRORS)
def test_bad_row_names_file_line_and_problem(tmp_path, bad_row, problem):
    # Row 1 is good in the bad row's own format so detection succeeds; the bad row is line 2.
    fmt_path = tmp_path / "probe.jsonl"
    good = {"prompt": "ok?", "chosen": "yes", "rejected": "no"}
    if "conversations" in bad_row:
        good = {"conversations": [{"from": "human", "value": "ok?"}],
                "chosen": {"from": "gpt", "value": "yes"}, "rejected": {"from": "gpt", "value": "no"}}
    elif isinstance(bad_row.get("prompt"), list):
        good = {"prompt": [user("ok?")], "chosen": [assistant("yes")], "rejected": [assistant("no")]}
    elif "prompt" not in bad_row:
        good = {"chosen": "\n\nHuman: ok?\n\nAssistant: yes", "rejected": "\n\nHuman: ok?\n\nAssistant: no"}
        if isinstance(bad_row["chosen"], list):
            good = {"chosen": [user("ok?"), assistant("yes")], "rejected": [user("ok?"), assistant("no")]}
    path = write_jsonl(fmt_path, [good, bad_row])
    with pytest.raises(DataError) as err:
        load_pairs(path)
    message = str(err.value)
    assert "probe.jsonl" in message and "line 2" in message and problem in message, message


def test_invalid_json_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(pair_rows(1)[0]) + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"broken.jsonl, line 3: not valid JSON"):
        load_pairs(str(path))


def test_bad_first_row_reports_itself_not_a_detection_failure(tmp_path):
    rows = pair_rows(2)
    del rows[0]["chosen"]
    with pytest.raises(DataError, match=r"first.jsonl, line 1: missing key 'chosen'"):
        load_pairs(write_jsonl(tmp_path / "first.jsonl", rows))


def test_undetectable_format(tmp_path):
    with pytest.raises(DataError, match=r"odd.jsonl, line 1: cannot detect the format from keys \(question, answer\)"):
        load_pairs(write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}]))


def test_csv_bad_row_number(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,chosen,rejected\nQ1,a,b\nQ2,,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv, row 2: chosen answer is empty"):
        load_pairs(str(path))


def test_parquet_null_is_wrong_type(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "Q", "chosen": "a", "rejected": "b"},
                                         {"prompt": "Q", "chosen": None, "rejected": "b"}]), path)
    with pytest.raises(DataError, match=r"nulls.parquet, index 1: 'chosen' must be a string, got null"):
        load_pairs(str(path))


def test_not_utf8_names_offset_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    first, second = b'{"prompt": "ok", "chosen": "a", "rejected": "b"}\n', b'{"prompt": "caf'
    path.write_bytes(first + second + b'\xe9"}\n')  # latin-1 e-acute
    offset = len(first) + len(second)
    with pytest.raises(DataError, match=rf"latin1.jsonl: not UTF-8 text \(byte offset {offset}, line 2\)"):
        load_pairs(str(path))


@pytest.mark.parametrize("name, content, problem", [
    ("empty.jsonl", "\n  \n", "empty file"),
    ("empty.json", "[]", "empty file"),
    ("empty.csv", "prompt,chosen,rejected\n", "empty file"),
    ("data.txt", "hello", "unsupported extension '.txt'"),
    ("obj.json", '{"train": []}', "expected a JSON list of objects, got dict"),
])
def test_file_level_errors(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_pairs(str(path))
    assert name in str(err.value) and problem in str(err.value)


def test_skip_bad_rows_counts_and_keeps_the_rest(tmp_path):
    rows = [json.dumps(r) for r in pair_rows(5)]
    rows[1] = "{oops"
    rows[3] = json.dumps({"prompt": "Q", "chosen": "x", "rejected": "x"})
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(rows) + "\n")
    pairs, report = load_pairs(str(path), skip_bad_rows=True)
    assert (report.rows, report.pairs, len(report.skipped)) == (5, 3, 2)
    assert [p.chosen for p in pairs] == ["good 0", "good 2", "good 4"]
    assert "mixed.jsonl, line 2: not valid JSON" in report.skipped[0]
    assert "mixed.jsonl, line 4: chosen is identical to rejected" in report.skipped[1]


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "allbad.jsonl", [{"prompt": "Q", "chosen": "", "rejected": "b"}] * 2)
    with pytest.raises(DataError, match="allbad.jsonl: no usable pairs"):
        load_pairs(path, skip_bad_rows=True)


# -- splits ------------------------------------------------------------------------


def test_carve_is_deterministic_disjoint_and_leaves_global_rng_alone(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", pair_rows(100))
    state = random.getstate()
    train, valid, report = load_splits(path, eval_fraction=0.1, seed=3)
    assert random.getstate() == state
    train2, valid2, _ = load_splits(path, eval_fraction=0.1, seed=3)
    assert (train, valid) == (train2, valid2)
    assert len(valid) == 10 and len(train) == 90
    assert not {p.origin for p in train} & {p.origin for p in valid}
    assert (report.pairs, report.eval_pairs) == (100, 10)
    _, valid_other_seed, _ = load_splits(path, eval_fraction=0.1, seed=4)
    assert valid_other_seed != valid


@pytest.mark.parametrize("n, fraction, expected_eval", [(2, 0.05, 1), (3, 0.9, 2), (1, 0.5, 0), (10, 0.0, 0)])
def test_carve_size_bounds(tmp_path, n, fraction, expected_eval):
    train, valid, _ = load_splits(write_jsonl(tmp_path / "n.jsonl", pair_rows(n)), eval_fraction=fraction)
    assert len(valid) == expected_eval and len(train) == n - expected_eval


def test_bad_eval_fraction(tmp_path):
    with pytest.raises(DataError, match="eval_fraction"):
        load_splits(write_jsonl(tmp_path / "x.jsonl", pair_rows(4)), eval_fraction=1.0)


def test_directory_uses_valid_jsonl(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", pair_rows(6))
    write_jsonl(tmp_path / "valid.jsonl", [{"prompt": "held?", "chosen": "out", "rejected": "in"}])
    train, valid, report = load_splits(str(tmp_path))
    assert len(train) == 6 and [p.chosen for p in valid] == ["out"]
    assert report.eval_source == str(tmp_path / "valid.jsonl")
    assert (report.rows, report.pairs, report.eval_pairs) == (7, 7, 1)
    assert load_pairs(str(tmp_path), split="validation")[0] == valid


def test_directory_without_train_file(tmp_path):
    write_jsonl(tmp_path / "valid.jsonl", pair_rows(2))
    with pytest.raises(DataError, match="directory has no train"):
        load_pairs(str(tmp_path))


def test_explicit_eval_source_wins(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", pair_rows(4))
    write_jsonl(tmp_path / "valid.jsonl", pair_rows(1))
    other = write_jsonl(tmp_path / "other.jsonl", pair_rows(3))
    train, valid, report = load_splits(str(tmp_path), eval_source=other)
    assert len(train) == 4 and len(valid) == 3 and report.eval_source == other


# -- demo data ---------------------------------------------------------------------


def test_demo_file_loads_and_matches_generator():
    pairs, report = load_pairs(str(demo_data.DEMO_DATA_PATH))
    assert report.format == "prompt_strings" and report.skipped == []
    assert len(pairs) >= 60
    assert demo_data.DEMO_DATA_PATH.stat().st_size < 60_000
    shipped = [json.loads(line) for line in demo_data.DEMO_DATA_PATH.read_text().splitlines()]
    assert shipped == demo_data.build_pairs()  # the committed file is up to date


def test_demo_styles_are_distinct():
    rows = demo_data.build_pairs()
    assert len({r["prompt"] for r in rows}) == len(rows)
    for r in rows:
        chosen, rejected = r["chosen"], r["rejected"]
        bullets = [line for line in chosen.splitlines() if line.startswith("- ")]
        assert 2 <= len(bullets) <= 3 and chosen.endswith("Hope that helps!")
        assert "\n" not in chosen.split("\n\n")[0]  # one direct sentence first
        assert "- " not in rejected and "Hope that helps" not in rejected
        assert len(chosen.split()) <= 60 and len(rejected.split()) <= 60


def test_write_demo_data_is_deterministic(tmp_path):
    a = demo_data.write_demo_data(tmp_path / "a.jsonl").read_bytes()
    b = demo_data.write_demo_data(tmp_path / "b.jsonl").read_bytes()
    assert a == b == demo_data.DEMO_DATA_PATH.read_bytes()


def test_every_format_is_detected_and_reads_to_the_same_pair():
    """One row per name in FORMATS, the same pair in each layout: each is detected as its own
    format and normalised to the same prompt and answers."""
    from mlx_orpo.data_formats import detect_format, normalise_row

    user, chosen, rejected = {"role": "user", "content": "Hi?"}, "Hello.", "Go away."
    rows = {
        "prompt_strings": {"prompt": "Hi?", "chosen": chosen, "rejected": rejected},
        "trl_conversational": {"prompt": [user], "chosen": [{"role": "assistant", "content": chosen}],
                               "rejected": [{"role": "assistant", "content": rejected}]},
        "ultrafeedback": {"chosen": [user, {"role": "assistant", "content": chosen}],
                          "rejected": [user, {"role": "assistant", "content": rejected}]},
        "sharegpt": {"conversations": [{"from": "human", "value": "Hi?"}], "chosen": {"from": "gpt", "value": chosen},
                     "rejected": {"from": "gpt", "value": rejected}},
        "hh": {"chosen": f"\n\nHuman: Hi?\n\nAssistant: {chosen}",
               "rejected": f"\n\nHuman: Hi?\n\nAssistant: {rejected}"},
    }
    assert sorted(rows) == sorted(FORMATS)
    for name, row in rows.items():
        assert detect_format(row) == name
        assert normalise_row(row, name) == ((user,), chosen, rejected), name


# -- text that is not Unicode -------------------------------------------------------


def test_a_lone_surrogate_is_a_bad_row_named_by_line(tmp_path):
    """JSON may spell "\\ud800", which no tokenizer can encode: it once ended the run in a
    TypeError from the tokenizer, even with --skip-bad-rows."""
    path = tmp_path / "prefs.jsonl"
    rows = [json.dumps(r) for r in pair_rows(2)]
    rows.insert(1, '{"prompt": "Hi", "chosen": "fine \\ud800 thanks", "rejected": "no"}')
    rows.append('{"prompt": "\\udfff", "chosen": "a", "rejected": "b"}')
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"prefs.jsonl, line 2: 'chosen' holds a lone surrogate '\\ud800' at "
                                        r"character 6 \(not valid Unicode text\)"):
        load_pairs(str(path))
    pairs, report = load_pairs(str(path), skip_bad_rows=True)
    assert [p.chosen for p in pairs] == ["good 0", "good 1"]
    assert [s.split(": ", 1)[0] for s in report.skipped] == [f"{path}, line 2", f"{path}, line 4"]
    assert "prompt message 1 holds a lone surrogate '\\udfff'" in report.skipped[1]
    for pair in pairs:  # what is kept encodes
        assert pair.chosen.encode() and pair.prompt[-1]["content"].encode()


# -- column mapping (--columns) ----------------------------------------------------------------------


def test_columns_map_other_names_onto_the_roles(tmp_path):
    rows = [{"question": f"q{i}?", "good": f"yes {i}", "bad": f"no {i}", "id": i} for i in range(3)]
    path = write_jsonl(tmp_path / "other.jsonl", rows)
    with pytest.raises(DataError, match="cannot detect the format"):
        load_pairs(path)
    pairs, report = load_pairs(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert report.format == "prompt_strings" and report.pairs == 3
    assert pairs[1].prompt == (user("q1?"),) and (pairs[1].chosen, pairs[1].rejected) == ("yes 1", "no 1")


def test_a_label_column_says_which_output_is_preferred(tmp_path):
    rows = [{"instruction": "Say hi.", "output_1": "Hi!", "output_2": "Go away.", "preference": 1},
            {"instruction": "Say bye.", "output_1": "Whatever.", "output_2": "Goodbye!", "preference": 2},
            {"instruction": "Count.", "output_1": "1 2 3", "output_2": "many", "preference": "output_1"},
            {"instruction": "Sky?", "output_1": "green", "output_2": "blue", "preference": "2"},
            {"instruction": "Sea?", "output_1": "wet", "output_2": "dry", "preference": 1.0}]
    path = tmp_path / "farm.csv"
    with path.open("w", newline="") as f:  # CSV: every label is text
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    columns = {"prompt": "instruction", "chosen": "output_1", "rejected": "output_2", "label": "preference"}
    for source in (str(path), write_jsonl(tmp_path / "farm.jsonl", rows)):
        pairs, _ = load_pairs(source, columns=columns)
        assert [(p.chosen, p.rejected) for p in pairs] == [
            ("Hi!", "Go away."), ("Goodbye!", "Whatever."), ("1 2 3", "many"), ("blue", "green"), ("wet", "dry")]


def test_a_label_that_prefers_neither_output_is_a_bad_row(tmp_path):
    rows = [{"q": "a?", "o1": "x", "o2": "y", "pref": 1}, {"q": "b?", "o1": "x", "o2": "y", "pref": 0}]
    path = write_jsonl(tmp_path / "tie.jsonl", rows)
    columns = {"prompt": "q", "chosen": "o1", "rejected": "o2", "label": "pref"}
    with pytest.raises(DataError, match=re.escape(f"{path}, line 2: label column 'pref' must be 1 ('o1' preferred)"
                                                  " or 2 ('o2' preferred), got 0")):
        load_pairs(path, columns=columns)
    pairs, report = load_pairs(path, columns=columns, skip_bad_rows=True)
    assert len(pairs) == 1 and len(report.skipped) == 1


def test_a_mapping_naming_a_missing_column_is_refused_by_name_and_file(tmp_path):
    path = write_jsonl(tmp_path / "other.jsonl", [{"question": "q?", "good": "a", "bad": "b"}])
    with pytest.raises(DataError, match=re.escape(f"{path}: --columns chosen=best names a column it does not have "
                                                  "(its columns: question, good, bad)")):
        load_pairs(path, columns={"prompt": "question", "chosen": "best", "rejected": "bad"}, skip_bad_rows=True)
    with pytest.raises(DataError, match=re.escape("--columns answer=good: 'answer' is not a role")):
        load_pairs(path, columns={"answer": "good"})
    with pytest.raises(DataError, match=re.escape("--columns maps column 'good' to both chosen and rejected")):
        load_pairs(path, columns={"chosen": "good", "rejected": "good"})


def test_a_row_without_a_mapped_column_is_a_bad_row(tmp_path):
    rows = [{"question": "q?", "good": "a", "bad": "b"}, {"question": "r?", "good": "a"}]
    path = write_jsonl(tmp_path / "other.jsonl", rows)
    with pytest.raises(DataError, match=re.escape(f"{path}, line 2: missing column 'bad' (--columns rejected=bad)")):
        load_pairs(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})


def test_columns_map_the_held_out_split_too(tmp_path):
    (tmp_path / "d").mkdir()
    other = lambda n: [{"question": f"q{i}?", "good": f"yes {i}", "bad": f"no {i}"} for i in range(n)]
    write_jsonl(tmp_path / "d" / "train.jsonl", other(4))
    write_jsonl(tmp_path / "d" / "valid.jsonl", other(2))
    train, valid, report = load_splits(str(tmp_path / "d"),
                                       columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert (len(train), len(valid), report.eval_pairs) == (4, 2, 2)


# -- what a directory or a file holds is read, or refused by name ---------------------------------

@pytest.mark.parametrize("names, refused", [
    (["train.jsonl", "train.json"], "train.jsonl and train.json are both train files"),
    (["train.jsonl", "valid.jsonl", "valid.csv"], "valid.jsonl and valid.csv are both valid/validation files"),
    (["train.jsonl", "valid.jsonl", "validation.jsonl"],
     "valid.jsonl and validation.jsonl are both valid/validation files"),
    (["train.jsonl", "test.jsonl", "test.parquet"], "test.jsonl and test.parquet are both test files"),
])
def test_a_directory_with_two_files_for_one_split_is_refused_naming_them(tmp_path, names, refused):
    for name in names:
        write_jsonl(tmp_path / name, pair_rows(2))  # (only the train file is read before the refusal)
    with pytest.raises(DataError, match=rf"{tmp_path}: {refused}, and only one would be read"):
        load_splits(str(tmp_path))


def test_the_files_a_directory_holds_but_a_run_does_not_read_are_listed(tmp_path):
    """mlx-lm's layout (train, valid, test): test is not read when valid is there, and says so; so is
    any other data file."""
    write_jsonl(tmp_path / "train.jsonl", pair_rows(4))
    write_jsonl(tmp_path / "valid.jsonl", pair_rows(1))
    write_jsonl(tmp_path / "test.jsonl", pair_rows(2))
    write_jsonl(tmp_path / "notes.jsonl", pair_rows(2))
    (tmp_path / "README.md").write_text("about")
    train, valid, report = load_splits(str(tmp_path))
    assert (len(train), len(valid)) == (4, 1)
    assert report.ignored == [f"{tmp_path / 'notes.jsonl'} (only train and valid/validation/test files are read)",
                              f"{tmp_path / 'test.jsonl'} (the held-out pairs are {tmp_path / 'valid.jsonl'})"]
    (tmp_path / "valid.jsonl").unlink()  # the test split is the held-out one then
    assert load_splits(str(tmp_path))[2].eval_source == str(tmp_path / "test.jsonl")


def test_a_jsonl_file_holding_a_json_array_is_read_as_one(tmp_path):
    path = tmp_path / "pretty.jsonl"
    path.write_text(json.dumps(pair_rows(3), indent=2))
    pairs, _ = load_pairs(str(path))
    assert [p.chosen for p in pairs] == ["good 0", "good 1", "good 2"] and pairs[1].origin == f"{path}:1"
    path.write_text(json.dumps(pair_rows(3), indent=2)[:-3])  # cut short
    with pytest.raises(DataError, match=r"pretty.jsonl: looks like a JSON array .*not valid JSON: .* at line \d+"):
        load_pairs(str(path))

"""Malformed schedule files: every one is a FormatError with a line and a column, or a schedule.

Inputs: arbitrary text, valid files cut short or edited at random, JSON documents with fields
replaced by values of the wrong type, huge numbers, unicode, NaN, deep nesting.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeblocks.errors import FormatError
from pipeblocks.generators import generate
from pipeblocks.ir import Schedule
from pipeblocks.ir.formats import json_io, loads, torch_csv

SAMPLES = {
    "csv": torch_csv.dumps(generate("zb-h1", 3, 4)),
    "csv-v": torch_csv.dumps(generate("zb-v", 2, 4)),
    "json": json_io.dumps(generate("interleaved-1f1b", 2, 4, 2)),
}
FORMAT = {"csv": "torch-csv", "csv-v": "torch-csv", "json": "json"}


def read(text: str, fmt: str | None) -> Schedule | FormatError:
    """Read; a FormatError is returned (with its location checked), anything else escapes."""
    try:
        return loads(text, fmt)
    except FormatError as e:
        assert e.line is not None and e.line >= 1, str(e)
        assert e.column is not None and e.column >= 1, str(e)
        assert "\n" not in str(e), "one line"
        return e


@given(st.text(max_size=200), st.sampled_from([None, "torch-csv", "json"]))
def test_arbitrary_text(text: str, fmt: str | None) -> None:
    """Any text: a schedule or a located one-line FormatError."""
    read(text, fmt)


@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_truncated_files(sample: str, data: st.DataObject) -> None:
    """A valid file cut anywhere reads or fails with a location; JSON cut short always fails."""
    text = SAMPLES[sample]
    cut = data.draw(st.integers(0, len(text) - 1))
    got = read(text[:cut], FORMAT[sample])
    if sample == "json" and cut < len(text.rstrip()):
        assert isinstance(got, FormatError)


edits = st.one_of(
    st.text(min_size=1, max_size=5),
    st.sampled_from(["9" * 30, "9" * 5000, "-1", "1e999", "NaN", "é", "\x00", "\u2028", "\ufeff",
                     ",", ";", "\n", "\r", '"', "[", "{", "}", "]", "(", ")OVERLAP_F_B", "I", "B",
                     "SEND_F", "1.5", "true", "null"]),
)


@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_random_edits(sample: str, data: st.DataObject) -> None:
    """Insertions, deletions and replacements anywhere: a schedule or a located FormatError."""
    text = SAMPLES[sample]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 4)))
        text = text[:i] + data.draw(edits) + text[j:]
    read(text, FORMAT[sample])


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(),
              st.text(max_size=8)),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@given(st.data())
def test_json_fields_of_the_wrong_kind(data: st.DataObject) -> None:
    """Replace one field (or one action) of a valid document with any JSON value: a located
    FormatError, or a schedule that round-trips; unknown keys and formats are refused."""
    doc = json.loads(SAMPLES["json"])
    where = data.draw(st.sampled_from(["format", "version", "name", "spec", "programs",
                                       "spec.num_ranks", "spec.num_microbatches",
                                       "spec.stages_per_rank", "spec.placement",
                                       "programs[0]", "programs[1][3]", "extra"]))
    value = data.draw(json_values)
    if where.startswith("spec."):
        doc["spec"][where[5:]] = value
    elif where == "programs[0]":
        doc["programs"][0] = value
    elif where == "programs[1][3]":
        doc["programs"][1][3] = value
    else:
        doc[where] = value
    text = json.dumps(doc, indent=data.draw(st.sampled_from([None, 1, 2])))
    got = read(text, "json")
    if where == "extra":
        assert isinstance(got, FormatError) and "unknown key 'extra'" in str(got)
    if where == "format" and value != "pipeblocks-schedule":
        assert isinstance(got, FormatError) and "not a pipeblocks schedule" in str(got)
    if isinstance(got, Schedule):  # what is accepted is a schedule we can write back
        assert json_io.loads(json_io.dumps(got)) == got


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("", 1, 1, "empty input"),
        ("0F0,0B0\n1F0,1Q0\n", 2, 5, "cell '1Q0' is not <stage><letter><microbatch>"),
        ("0F0,0RECV_F0\n", 1, 5, "is a communication action"),
        ("0F" + "9" * 40 + "\n", 1, 3, "microbatch number 9999"),
        ("0F0,0B0\n\n", 1, 1, "line 2 has no actions: every line is a rank, a blank one too"),
        ("0F0,(0B0;x)OVERLAP_F_B\n", 1, 10, "'x' inside the overlapped cell"),
        ("0F0\n1F0\n2F0\n4F1\n", 4, 1, "stage 4 implies 5 stages, not a multiple of the 4"),
        ("0F0,0F5000\n", 1, 5, "microbatch 5000 implies 5001 microbatches"),
        ("0F0,99999999999999B0\n", 1, 5, "stage 99999999999999 implies 100000000000000 stages"),
    ],
)
def test_csv_errors_by_hand(text: str, line: int, column: int, message: str) -> None:
    """Known malformed CSVs: the exact line, column and reason."""
    with pytest.raises(FormatError) as info:
        torch_csv.loads(text, path="s.csv")
    e = info.value
    assert (e.line, e.column) == (line, column), str(e)
    assert message in str(e)
    assert str(e).startswith(f"s.csv:{line}:{column}: ")


HEAD = '{"format": "pipeblocks-schedule", "version": 1, '
SPEC = '"spec": {"num_ranks": 1, "num_microbatches": 1, "stages_per_rank": 1, "placement": "loop"}'
PROGRAMS = '"programs": [["0F0", "0BW0"]]'


def _at(text: str, needle: str, last: bool = False) -> tuple[int, int]:
    """1-based line and column of ``needle`` in ``text``, found by plain search."""
    i = text.rindex(needle) if last else text.index(needle)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


@pytest.mark.parametrize(
    ("text", "needle", "message"),
    [
        ("{", (1, 2), "not valid JSON"),  # json's own position: after the brace
        ("[" * 100000, (1, 65), "nested too deep"),  # the 65th bracket: deeper than 64
        ('{"format": "csv"}', '"csv"', "not a pipeblocks schedule"),
        ('{"format": "pipeblocks-schedule", "version": 7}', "7", "version 7 is newer"),
        (HEAD + SPEC + ", " + PROGRAMS + ', "spec": 1}', "1}", "key 'spec' appears twice"),
        (HEAD + SPEC.replace('"num_ranks": 1', '"num_ranks": 1' + "0" * 30) + ", " + PROGRAMS
         + "}", "1000", "(out of range)"),
        (HEAD + SPEC.replace('"num_ranks": 1', '"num_ranks": NaN') + ", " + PROGRAMS + "}", "NaN",
         "not a finite number"),
        (HEAD + SPEC + ',\n "programs": [["0F0",\n "0BW0", "0F1"]]}', '"0F1"',
         "0F1 contradicts the spec"),
        (HEAD + SPEC + ', "programs": [["0F0", "0bw0"]]}', '"0bw0"', "not an action"),
        (HEAD + SPEC + ", " + PROGRAMS + ', "sprc": 1}', "1}", "unknown key 'sprc'"),
        (HEAD + SPEC + ', "programs": [["0F0", "0BW0"], []]}', "[[", "holds 2 programs"),
        (HEAD + SPEC.replace('"num_microbatches": 1', '"num_microbatches": 1000000000000')
         + ", " + PROGRAMS + "}", '{"num_ranks"', "programs hold only 2 actions"),
        (HEAD + '"spec": {"num_ranks": 1}, ' + PROGRAMS + "}", '{"num_ranks"',
         "spec lacks the key 'num_microbatches'"),
    ],
)
def test_json_errors_by_hand(text: str, needle: str | tuple[int, int], message: str) -> None:
    """Known malformed JSON: the reason, and the line and column of the offending value (found
    here by plain text search)."""
    with pytest.raises(FormatError) as info:
        json_io.loads(text)
    e = info.value
    assert message in str(e)
    if isinstance(needle, tuple):
        assert (e.line, e.column) == needle
    else:
        assert (e.line, e.column) == _at(text, needle, last=needle.endswith("}")), str(e)

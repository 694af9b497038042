"""Schedule files: exact round trips for every generator, golden snippets, detection."""

from __future__ import annotations

import json
import pathlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeblocks.errors import FormatError, SpecError
from pipeblocks.ir import Action, Pass, PipelineSpec, Placement, Schedule, grid
from pipeblocks.ir.formats import detect, dump, dumps, json_io, load, loads, torch_csv

F, B, W, BW = Pass.F, Pass.B, Pass.W, Pass.BW
DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "formats.md"


def _draw(data, names, sizes, schedule_of) -> Schedule:  # type: ignore[no-untyped-def]
    name = data.draw(st.sampled_from(names), label="generator")
    return schedule_of(name, *data.draw(st.sampled_from(sizes(name)), label="p, m, v"))


@given(data=st.data())
def test_torch_csv_round_trip_every_generator(  # type: ignore[no-untyped-def]
    data, generator_names, sizes, schedule_of
) -> None:
    """CSV: loads(dumps(s)) == s with the spec inferred from the cells (p >= 2, or a loop
    placement; one rank cannot tell loop from v), always with the placement given, and the
    text itself survives a second round."""
    s = _draw(data, generator_names, sizes, schedule_of)
    text = torch_csv.dumps(s)
    back = torch_csv.loads(text, placement=s.spec.placement)
    assert back == s
    assert torch_csv.dumps(back) == text
    if s.spec.num_ranks > 1 or s.spec.placement is Placement.LOOP:
        assert torch_csv.loads(text) == s
        assert load(text) == s


@given(data=st.data())
def test_json_round_trip_every_generator(  # type: ignore[no-untyped-def]
    data, generator_names, sizes, schedule_of
) -> None:
    """JSON: loads(dumps(s)) == s, the name survives, and the text is reproduced exactly."""
    s = _draw(data, generator_names, sizes, schedule_of)
    text = json_io.dumps(s)
    back = json_io.loads(text)
    assert back == s and back.name == s.name
    assert json_io.dumps(back) == text
    assert load(text) == s
    doc = json.loads(text)
    assert doc["programs"] == [[str(a) for a in prog] for prog in s.programs]


@given(data=st.data())
def test_csv_letters_are_pytorch_letters(data, generator_names, sizes, schedule_of) -> None:  # type: ignore[no-untyped-def]
    """Each CSV cell is the action with our B written I and our BW written B, cell by cell."""
    s = _draw(data, generator_names, sizes, schedule_of)
    rows = torch_csv.dumps(s).splitlines()
    ours_to_torch = {"F": "F", "B": "I", "W": "W", "BW": "B"}
    for prog, row in zip(s.programs, rows, strict=True):
        cells = row.split(",") if row else []
        assert cells == [f"{a.stage}{ours_to_torch[a.kind.value]}{a.mb}" for a in prog]


def _hand_zb() -> Schedule:
    """ZB-H1 for p=2, m=2 written out by hand from docs/design.md, "Generation rules"."""
    spec = PipelineSpec(2, 2)
    text = ["0F0 0F1 0B0 0W0 0B1 0W1", "1F0 1B0 1F1 1B1 1W0 1W1"]
    return Schedule(spec, tuple(tuple(map(Action.parse, t.split())) for t in text))


def test_golden_csv_split_backward() -> None:
    """A split-backward schedule writes I for B and keeps W."""
    assert torch_csv.dumps(_hand_zb()) == "0F0,0F1,0I0,0W0,0I1,0W1\n1F0,1I0,1F1,1I1,1W0,1W1\n"


def test_golden_csv_1f1b() -> None:
    """1F1B p=3 m=4 (the generator's docstring grid) as PyTorch CSV: fused backward is B."""
    from pipeblocks.generators import generate

    assert dumps(generate("1f1b", 3, 4), "torch-csv") == (
        "0F0,0F1,0F2,0B0,0F3,0B1,0B2,0B3\n"
        "1F0,1F1,1B0,1F2,1B1,1F3,1B2,1B3\n"
        "2F0,2B0,2F1,2B1,2F2,2B2,2F3,2B3\n"
    )


def test_golden_json_gpipe() -> None:
    """GPipe p=2 m=2 as JSON, byte for byte."""
    from pipeblocks.generators import generate

    assert dumps(generate("gpipe", 2, 2), "json") == (
        '{\n'
        '  "format": "pipeblocks-schedule",\n'
        '  "version": 1,\n'
        '  "name": "gpipe",\n'
        '  "spec": {"num_ranks": 2, "num_microbatches": 2, "stages_per_rank": 1, '
        '"placement": "loop"},\n'
        '  "programs": [\n'
        '    ["0F0", "0F1", "0BW0", "0BW1"],\n'
        '    ["1F0", "1F1", "1BW0", "1BW1"]\n'
        '  ]\n'
        '}\n'
    )


def test_reads_pytorch_style_csv_by_hand() -> None:
    """What PyTorch writes: idle (empty) cells, CRLF, spaces, I/W/B letters, an overlapped cell;
    V placement inferred (stages 0 and 3 on rank 0, 1 and 2 on rank 1)."""
    text = (
        "0F0,,0F1, 3F0 ,3I0,3W0,(3F1;0B0)OVERLAP_F_B,0I1,3I1,0W1,3W1,,\r\n"
        ",1F0,1F1,2F0,2I0,2W0,2F1,1B0,2I1,1I1,2W1,1W1\r\n"
    )
    s = torch_csv.loads(text)
    assert s.spec == PipelineSpec(2, 2, 2, Placement.V)
    assert [str(a) for a in s.programs[0]] == [
        "0F0", "0F1", "3F0", "3B0", "3W0", "3F1", "0BW0", "0B1", "3B1", "0W1", "3W1"]
    assert [str(a) for a in s.programs[1]] == [
        "1F0", "1F1", "2F0", "2B0", "2W0", "2F1", "1BW0", "2B1", "1B1", "2W1", "1W1"]


def test_spec_inference_and_hints() -> None:
    """Ranks from rows, stages and microbatches from the largest indices, loop before v;
    explicit hints override and are checked."""
    s = torch_csv.loads("0F0,1F0,0B0,1B0\n")  # one rank, two stages: loop and v both fit
    assert s.spec == PipelineSpec(1, 1, 2, Placement.LOOP)
    assert torch_csv.loads("0F0,1F0\n", placement="v").spec.placement is Placement.V
    s = torch_csv.loads("0F0\n1F0\n", stages_per_rank=2, num_microbatches=3)
    assert s.spec == PipelineSpec(2, 3, 2)
    with pytest.raises(FormatError, match=r":2:1: stage 2 does not exist"):
        torch_csv.loads("0F0\n2F0\n", stages_per_rank=1)
    with pytest.raises(FormatError, match=r":1:5: microbatch 1 does not exist"):
        torch_csv.loads("0F0,0F1\n", num_microbatches=1)
    with pytest.raises(SpecError, match="unknown placement 'zig'"):
        torch_csv.loads("0F0\n", placement="zig")


def test_placement_contradiction_names_line_and_column() -> None:
    """A cell on the wrong row fits no placement: the error points at the cell that broke the
    placement fitting longest, and names where each placement failed."""
    with pytest.raises(FormatError) as info:
        torch_csv.loads("0F0,3F0\n1F0,2F0,0F1\n")
    e = info.value
    assert (e.line, e.column) == (2, 9)
    assert "'loop' puts stage 3 on rank 1, not on line 1's rank 0 (column 5)" in str(e)
    assert "'v' puts stage 0 on rank 0, not on line 2's rank 1 (column 9)" in str(e)
    with pytest.raises(FormatError, match=r"<input>:1:1: cell '1F0' contradicts the placement: "
                       r"'loop' puts stage 1 on rank 1, not on line 1's rank 0; move the cell"):
        torch_csv.loads("1F0\n0F0\n", placement="loop")


def test_json_placement_contradicting_spec_is_located() -> None:
    """A JSON program holding a stage its spec puts elsewhere: FormatError at that string."""
    from pipeblocks.generators import generate

    bad = json_io.dumps(generate("1f1b", 2, 1)).replace('["0F0", "0BW0"]', '["1F0", "1BW0"]')
    with pytest.raises(FormatError) as info:
        json_io.loads(bad)
    assert (info.value.line, info.value.column) == (7, 6)
    assert "1F0 is in rank 0's program but the spec's placement 'loop'" in str(info.value)


def test_detection_and_files(tmp_path: pathlib.Path) -> None:
    """The format comes from the extension, else the content; dump/load use files."""
    from pipeblocks.generators import generate

    s = generate("zb-h1", 3, 4)
    for ext, fmt in ((".csv", "torch-csv"), (".json", "json")):
        path = tmp_path / f"s{ext}"
        dump(s, path)
        assert detect(path=path) == fmt
        assert load(path) == s and load(str(path)) == s
    (tmp_path / "s.txt").write_text(torch_csv.dumps(s))
    assert load(tmp_path / "s.txt", "torch-csv") == s
    assert detect(json_io.dumps(s)) == "json" and detect("0F0\n") == "torch-csv"
    dump(s, tmp_path / "grid.txt")
    assert (tmp_path / "grid.txt").read_text() == grid(s) + "\n"
    with pytest.raises(SpecError, match="ascii grids are for people"):
        loads("rank 0 | F0", "ascii")
    with pytest.raises(SpecError, match="cannot tell the format"):
        dump(s, tmp_path / "s.bin")
    assert loads(json_io.dumps(s), placement="loop", num_microbatches=4) == s  # agree
    with pytest.raises(SpecError, match="num_microbatches=5 disagrees with the JSON input, "
                                        "whose spec says num_microbatches=4"):
        loads(json_io.dumps(s), num_microbatches=5)
    with pytest.raises(FormatError, match="cannot read the file"):
        load(tmp_path / "absent.csv")


def test_bytes_that_are_not_utf8_are_located(tmp_path: pathlib.Path) -> None:
    """A file with invalid UTF-8 fails with the line and column of the bad byte."""
    path = tmp_path / "bad.csv"
    path.write_bytes(b"0F0,0B0\n1F0,\xff1B0\n")
    with pytest.raises(FormatError, match=r"bad.csv:2:5: byte 0xff is not UTF-8"):
        load(path)


def test_docs_schema_matches_code() -> None:
    """docs/formats.md shows the JSON Schema the reader enforces, verbatim."""
    text = DOCS.read_text()
    block = re.search(r"<!-- schema -->\n```json\n(.*?)```", text, re.S)
    assert block, "docs/formats.md lacks the schema block"
    assert json.loads(block.group(1)) == json_io.SCHEMA


def test_writes_only_what_the_schema_allows() -> None:
    """Every key dumps writes is in the schema, and every required key is written."""
    doc = json.loads(json_io.dumps(_hand_zb()))
    props = json_io.SCHEMA["properties"]
    assert set(json_io.SCHEMA["required"]) <= set(doc) <= set(props)
    assert set(doc["spec"]) == set(props["spec"]["properties"])
    pattern = re.compile(props["programs"]["items"]["items"]["pattern"])
    assert all(pattern.fullmatch(a) for prog in doc["programs"] for a in prog)


@pytest.mark.parametrize("p", [8, 16])
def test_round_trips_at_larger_sizes(p: int, generator_names) -> None:  # type: ignore[no-untyped-def]
    """Every generator at p = 8 and 16, m = 2p: CSV (spec inferred) and JSON round trips."""
    from pipeblocks.generators import generate

    for name in generator_names:
        s = generate(name, p, 2 * p)
        assert torch_csv.loads(torch_csv.dumps(s)) == s, name
        assert json_io.loads(json_io.dumps(s)) == s, name

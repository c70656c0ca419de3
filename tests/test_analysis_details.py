"""Details of the analysis of certify/predict results (analysis.py, tsv.py, cli/analyze.py) that
the broader tests leave open: the certification threshold and abstentions at the function level,
empty results, sidecar types, subset notes, TSV validation corners, resume and merge of rows, and
the analyze command's defaults and refusals. Every expected number is worked out by hand."""

import json
from pathlib import Path

import numpy as np
import pytest

from robustmaxup.certify import analysis, tsv
from robustmaxup.cli import main
from robustmaxup.errors import UserError

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"


def _write(path: Path, header: str, *rows: str, meta: dict | None = None) -> str:
    path.write_text("".join(line + "\n" for line in (header, *rows)))
    if meta is not None:
        Path(str(path) + ".json").write_text(json.dumps(meta))
    return str(path)


def _results(predict, correct, radius, label=None, **kw) -> analysis.CertifyResults:
    """Results built directly (the public dataclass), bypassing the TSV reader's checks."""
    predict = np.asarray(predict, dtype=np.int64)
    label = np.zeros_like(predict) if label is None else np.asarray(label, dtype=np.int64)
    return analysis.CertifyResults("r.tsv", "r.tsv", np.arange(len(predict)), label, predict,
                                   np.asarray(radius, dtype=np.float64), np.asarray(correct, dtype=np.int64), **kw)


# ----------------------------------------------------------------------------- numbers
def test_an_abstention_marked_correct_is_still_not_certified():
    """Results built without the reader: an abstention never counts, even with correct 1 and a
    radius, and a wrong row with a radius never counts; ACR = (0.5 + 0 + 0) / 3."""
    res = _results(predict=[-1, 0, 2], correct=[1, 1, 0], radius=[0.8, 0.5, 0.9], label=[-1, 0, 1])
    np.testing.assert_allclose(analysis.certified_accuracy(res, [0.0, 0.5, 0.6]), [1 / 3, 1 / 3, 0.0])
    assert analysis.average_certified_radius(res) == pytest.approx(0.5 / 3)


def test_a_file_with_no_rows_gives_nan_not_zero(tmp_path):
    """A header-only certify file: certified accuracy, ACR and abstain rate are undefined (nan),
    never a 0 that would read as a measured result."""
    res = analysis.read_certify_tsv(_write(tmp_path / "empty.tsv", HEADER))
    assert len(res) == 0
    acc = analysis.certified_accuracy(res, [0.0, 0.5])
    assert acc.shape == (2,) and np.isnan(acc).all()
    assert np.isnan(analysis.average_certified_radius(res))
    assert np.isnan(analysis.abstain_rate(res))


# ----------------------------------------------------------------------------- table rows
def test_two_files_with_one_name_are_labelled_by_path(tmp_path):
    """Columns are labelled by file name, by the full path only where two files share a name."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    row = "0\t1\t1\t0.500000\t1\t0:00:01.000"
    first, second = _write(tmp_path / "a" / "s.tsv", HEADER, row), _write(tmp_path / "b" / "s.tsv", HEADER, row)
    other = _write(tmp_path / "t.tsv", HEADER, row)
    results = [analysis.read_certify_tsv(p) for p in (first, second, other)]
    assert analysis.column_names(results) == [first, second, "t.tsv"]
    header, _ = analysis.summary_rows(results, [0.0])
    assert header == ["radius (>= r)", first, second, "t.tsv"]


def test_samples_row_appears_when_any_file_is_sequential(tmp_path):
    """A sequential file next to a fixed-n one: the samples/image row is there, the fixed file's
    number from its sidecar's n (100), the sequential one's the mean of n_used (200 and 400)."""
    seq = _write(tmp_path / "seq.tsv", HEADER + "\tn_used", "0\t1\t1\t0.500000\t1\t0:00:01.000\t200",
                 "1\t2\t2\t0.250000\t1\t0:00:01.000\t400")
    fixed = _write(tmp_path / "fixed.tsv", HEADER, "0\t1\t1\t0.500000\t1\t0:00:01.000",
                   "1\t2\t2\t0.250000\t1\t0:00:01.000", meta={"n": 100})
    results = [analysis.read_certify_tsv(p) for p in (fixed, seq)]
    _, body = analysis.summary_rows(results, [0.0])
    assert body[-1] == ["samples/image", "100", "300"]


def test_a_file_without_n_has_no_samples_number(tmp_path):
    """A fixed-n file without a sidecar next to a sequential one: its samples/image is unknown
    (nan), not 0."""
    seq = _write(tmp_path / "seq.tsv", HEADER + "\tn_used", "0\t1\t1\t0.500000\t1\t0:00:01.000\t200")
    bare = _write(tmp_path / "bare.tsv", HEADER, "0\t1\t1\t0.500000\t1\t0:00:01.000")
    results = [analysis.read_certify_tsv(p) for p in (seq, bare)]
    assert np.isnan(analysis.mean_samples(results[1]))
    assert analysis.summary_rows(results, [0.0])[1][-1] == ["samples/image", "200", "nan"]


def test_predict_summary_numbers(tmp_path):
    """4 predict rows: right, wrong, abstained, right: accuracy 2/4, abstain 1/4, accuracy among
    the 3 decided 2/3; samples/image from the sidecar's n."""
    path = _write(tmp_path / "p.tsv", "idx\tlabel\tpredict\tcorrect\ttime",
                  "0\t1\t1\t1\t0:00:00.100", "1\t2\t3\t0\t0:00:00.100", "2\t3\t-1\t0\t0:00:00.100",
                  "3\t4\t4\t1\t0:00:00.100", meta={"n": 1000})
    res = analysis.read_results(path)
    assert isinstance(res, analysis.PredictResults)
    header, body = analysis.predict_summary_rows([res])
    assert header == ["predict", "p.tsv"]
    assert body == [["accuracy", "0.500"], ["abstain", "0.250"], ["accuracy when not abstained", "0.667"],
                    ["images", "4"], ["samples/image", "1000"]]


# ----------------------------------------------------------------------------- differences
def test_the_same_images_in_another_order_are_not_a_difference(tmp_path):
    """Cohen et al.'s rows may come in any order: the same idx set is the same images."""
    a = _write(tmp_path / "a.tsv", HEADER, "0\t1\t1\t0.500000\t1\t0:00:01.000", "5\t2\t2\t0.1\t1\t0:00:01.000")
    b = _write(tmp_path / "b.tsv", HEADER, "5\t2\t2\t0.1\t1\t0:00:01.000", "0\t1\t1\t0.500000\t1\t0:00:01.000")
    c = _write(tmp_path / "c.tsv", HEADER, "0\t1\t1\t0.500000\t1\t0:00:01.000", "6\t2\t2\t0.1\t1\t0:00:01.000")
    read = analysis.read_certify_tsv
    assert analysis.differences([read(a), read(b)]) == []
    assert analysis.differences([read(a), read(c)]) == ["images"]


def test_an_unknown_setting_is_not_a_difference():
    """A file without a sidecar value (None) is not flagged against one with it; sequential
    files compare by n_max."""
    one = lambda name, **meta: _results([0], [1], [0.5], meta=meta)  # noqa: E731
    assert analysis.differences([one("a", sigma=0.25, n=100), one("b")]) == []
    seq = [one("a", n=100, sequential={"n_max": 1000}), one("b", n=100, sequential={"n_max": 5000})]
    assert analysis.differences(seq) == ["n (r.tsv n_max 1000, r.tsv n_max 5000)"]
    assert analysis.differences([one("a", sigma=0.25)]) == []


# ----------------------------------------------------------------------------- subset notes
@pytest.mark.parametrize("meta, n_used, expected", [
    ({"split": "test", "split_size": 3, "full_split": True}, None, "full test split (3 images)"),
    ({"split": "test", "split_size": 10, "full_split": True}, None, "3 of 10 test images"),
    ({"split": "test", "split_size": 10, "skip": 2, "max": 0}, None, "3 of 10 test images (skip 2, max 0)"),
    ({"split": "test", "split_size": 10}, None, "3 of 10 test images"),
    ({"split": "test", "split_size": 10, "complete": True}, None, "3 of 10 test images"),
    ({"split": "test", "split_size": 10}, [100, 200, 600], "3 of 10 test images; sequential, mean 300 samples/image"),
])
def test_subset_note(meta, n_used, expected):
    """The note on the images a file covers: full split only when every image is there, a max of
    0 is shown, a missing complete key is not an interrupted run, sequential mean of n_used."""
    res = _results([0, 0, 0], [1, 1, 1], [0.1, 0.2, 0.3], meta=meta,
                   n_used=None if n_used is None else np.asarray(n_used))
    assert res.subset_note() == expected


def test_subset_note_of_an_empty_sequential_file():
    """No rows: no mean of an empty n_used (which would be nan and warn)."""
    res = _results([], [], [], meta={"split": "test", "split_size": 10}, n_used=np.zeros(0, dtype=np.int64))
    assert res.subset_note() == "0 of 10 test images"


# ----------------------------------------------------------------------------- sidecars
@pytest.mark.parametrize("meta, key", [
    ({"n": True}, "n"),
    ({"skip": False}, "skip"),
    ({"n": 100.0}, "n"),
    ({"sigma": float("nan")}, "sigma"),
    ({"alpha": float("inf")}, "alpha"),
    ({"sequential": {"n_max": "many"}}, "sequential"),
    ({"sequential": {"n_max": 10.5}}, "sequential"),
])
def test_a_sidecar_with_a_wrong_type_is_refused(tmp_path, meta, key):
    """A bool where an int belongs, a float n, a non-finite sigma or alpha, or a sequential
    n_max that is not an int: the file is refused, naming the key."""
    path = _write(tmp_path / "a.tsv", HEADER, "0\t1\t1\t0.500000\t1\t0:00:01.000", meta=meta)
    with pytest.raises(UserError, match=f"sidecar .* is malformed: {key} is"):
        analysis.read_certify_tsv(path)


@pytest.mark.parametrize("meta", [{"sigma": 0.25, "n": 100, "alpha": 0.001, "full_split": True},
                                  {"sigma": 1, "sequential": {"n_max": None}}, {"sigma": None}])
def test_a_well_typed_sidecar_is_read(tmp_path, meta):
    """An int sigma, a bool full_split, a None value and an n_max of None are all well typed."""
    path = _write(tmp_path / "a.tsv", HEADER, "0\t1\t1\t0.500000\t1\t0:00:01.000", meta=meta)
    assert analysis.read_certify_tsv(path).meta == meta


# ----------------------------------------------------------------------------- reading
def test_a_certify_file_without_time_or_with_n_used_is_read(tmp_path):
    """The time column is optional (a radius makes a certify file); n_used is kept."""
    no_time = _write(tmp_path / "nt.tsv", "idx\tlabel\tpredict\tradius\tcorrect", "0\t1\t1\t0.5\t1",
                     "1\t2\t-1\t0\t0")
    res = analysis.read_results(no_time)
    assert isinstance(res, analysis.CertifyResults)
    np.testing.assert_allclose(analysis.certified_accuracy(res, [0.0]), [0.5])
    seq = _write(tmp_path / "s.tsv", HEADER + "\tn_used", "0\t1\t1\t0.5\t1\t0:00:01.000\t300")
    assert analysis.read_results(seq).n_used.tolist() == [300]


def test_markdown_escapes_backslashes_and_pipes():
    """A Markdown cell keeps its text: a backslash and a pipe are each escaped."""
    table = analysis.TABLE_FORMATS.get("markdown")(["x", "a\\b|c"], [["1", "2"]])
    assert table.splitlines()[0] == "| x | a\\\\b\\|c |"


# ----------------------------------------------------------------------------- tsv.py
@pytest.mark.parametrize("text", ["1_0", "0x1", " ", "1e", "--1"])
def test_a_radius_float_would_read_but_the_format_does_not_is_refused(tmp_path, text):
    """Radii are decimal numbers: Python-only spellings (``1_0``, ``0x1``) are refused as not a
    finite number, naming the column."""
    path = _write(tmp_path / "a.tsv", HEADER, f"0\t1\t1\t{text}\t1\t0:00:01.000")
    with pytest.raises(UserError, match="line 2 is a malformed row: column radius: .* finite number"):
        analysis.read_certify_tsv(path)


@pytest.mark.parametrize("column, row", [
    ("n_used", "0\t1\t1\t0.5\t1\t0:00:01.000\t-1"),
    ("idx", "9223372036854775808\t1\t1\t0.5\t1\t0:00:01.000\t5"),
    ("label", "0\t9223372036854775808\t1\t0.5\t0\t0:00:01.000\t5"),
    ("time", "0\t1\t1\t0.5\t1\t0:00:60.000\t5"),
    ("time", "0\t1\t1\t0.5\t1\t0:60:00.000\t5"),
])
def test_out_of_range_values_are_refused(tmp_path, column, row):
    """A negative n_used, an integer past int64 with 19 digits, 60 seconds or minutes."""
    path = _write(tmp_path / "a.tsv", HEADER + "\tn_used", row)
    with pytest.raises(UserError, match=f"column {column}:"):
        analysis.read_certify_tsv(path)


def test_the_largest_int64_is_read(tmp_path):
    """The upper bound is inclusive: idx 2**63 - 1 is a valid index."""
    path = _write(tmp_path / "a.tsv", HEADER, f"{2**63 - 1}\t1\t1\t0.5\t1\t0:00:01.000")
    assert analysis.read_certify_tsv(path).idx.tolist() == [2**63 - 1]


@pytest.mark.parametrize("seconds, text", [(0.0016, "0:00:00.002"), (1.9996, "0:00:02.000"),
                                           (3661.25, "1:01:01.250"), (90000, "25:00:00.000")])
def test_format_time_rounds_to_the_millisecond(seconds, text):
    assert tsv.format_time(seconds) == text


def test_a_row_round_trips_with_six_decimals():
    row = tsv.CertifyRow(idx=7, label=3, predict=3, radius=0.1234564, correct=1, time=1.25, n_used=40)
    assert row.to_line() == "7\t3\t3\t0.123456\t1\t0:00:01.250\t40"
    assert tsv.CertifyRow.from_line(row.to_line(), tsv.CERTIFY_SEQUENTIAL).radius == 0.123456


def test_write_rows_sorts_by_idx_and_merge_lets_later_files_win(tmp_path):
    """write_rows orders rows by idx whatever the input order; merge_rows: on the same idx the
    later file wins, and a missing file is skipped."""
    row = lambda i, p: tsv.CertifyRow(i, 1, p, 0.5 if p == 1 else 0.0, int(p == 1), 1.0)  # noqa: E731
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    assert tsv.write_rows(a, tsv.CERTIFY, [row(5, 1), row(2, 1), row(9, 1)]) == 3
    assert [line.split("\t")[0] for line in a.read_text().splitlines()] == ["idx", "2", "5", "9"]
    tsv.write_rows(b, tsv.CERTIFY, [row(5, -1)])
    merged = tsv.merge_rows([a, tmp_path / "missing.tsv", b], tsv.CERTIFY)
    assert sorted(merged) == [2, 5, 9] and merged[5].predict == -1 and merged[2].predict == 1


def test_read_rows_keeps_only_complete_lines_for_resume(tmp_path):
    """complete_bytes ends after the last newline; a torn last line is not a row."""
    head = HEADER + "\n" + "0\t1\t1\t0.500000\t1\t0:00:01.000\n"
    path = tmp_path / "a.tsv"
    path.write_bytes((head + "1\t2\t2\t0.7").encode())
    contents = tsv.read_rows(path, tsv.CERTIFY)
    assert list(contents.rows) == [0] and contents.complete_bytes == len(head.encode())


@pytest.mark.parametrize("text", [
    HEADER.replace("time", "seconds") + "\n",                        # another last column
    HEADER + "\tn_used\n",                                           # a sequential file
    "idx\tlabel\tpredict\tcorrect\ttime\n",                          # a predict file
])
def test_read_rows_refuses_another_header(tmp_path, text):
    """Resume reads only a file whose header is exactly the format's."""
    path = tmp_path / "a.tsv"
    path.write_text(text)
    with pytest.raises(UserError, match="does not start with the header"):
        tsv.read_rows(path, tsv.CERTIFY)


@pytest.mark.parametrize("line, column", [("", "idx"), ("0\t1\t1\t0.5\t1\t0:00:01.000\textra", "7")])
def test_read_rows_refuses_a_blank_line_or_an_extra_field(tmp_path, line, column):
    path = tmp_path / "a.tsv"
    path.write_text(f"{HEADER}\n{line}\n")
    with pytest.raises(UserError, match=f"line 2 is a malformed row: column {column}:"):
        tsv.read_rows(path, tsv.CERTIFY)


def test_read_any_skips_blank_lines_and_strips_header_names(tmp_path):
    """Cohen et al.'s files: blank lines are skipped and header names may carry spaces."""
    path = tmp_path / "a.tsv"
    path.write_text("idx \tlabel\tpredict\tradius\tcorrect\t time\r\n\n0\t1\t1\t0.5\t1\t0:00:01\n\n"
                    "1\t2\t2\t0.25\t1\t0:00:02\n")
    rows, columns = tsv.read_any(path)
    assert columns == ("idx", "label", "predict", "radius", "correct", "time")
    assert [(r.idx, r.radius) for r in rows] == [(0, 0.5), (1, 0.25)]


def test_read_certify_refuses_a_predict_file(tmp_path):
    path = _write(tmp_path / "p.tsv", "idx\tlabel\tpredict\tcorrect\ttime", "0\t1\t1\t1\t0:00:00.100")
    with pytest.raises(UserError, match="lacks column.*radius"):
        tsv.read_certify(path)


def test_a_torn_only_file_with_nul_bytes_is_binary(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(UserError, match="binary"):
        tsv.read_any(path)


def test_part_path_names_the_rank(tmp_path):
    assert tsv.part_path(tmp_path / "c.tsv", 0) == tmp_path / "c.tsv.rank0"


# ----------------------------------------------------------------------------- analyze command
def test_analyze_default_radii_are_0_to_2_in_quarters(tmp_path, capsys):
    """Without --radii: rows 0, 0.25, ..., 2; one row certified at 2.1 counts at every radius,
    one at 0 only at 0, the abstention at none."""
    path = _write(tmp_path / "a.tsv", HEADER, "0\t1\t1\t2.100000\t1\t0:00:01.000",
                  "1\t2\t2\t0.000000\t1\t0:00:01.000", "2\t3\t-1\t0.000000\t0\t0:00:01.000",
                  "3\t4\t4\t0.250000\t1\t0:00:01.000")
    assert main(["analyze", path, "--format", "csv", "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        "radius (>= r),a.tsv", "0,0.750", "0.25,0.500", "0.5,0.250", "0.75,0.250", "1,0.250", "1.25,0.250",
        "1.5,0.250", "1.75,0.250", "2,0.250", "ACR,0.588", "abstain,0.250", "images,4"]


@pytest.mark.parametrize("radius", ["nan", "inf", "-0.5"])
def test_analyze_refuses_radii_that_are_not_finite_and_nonnegative(tmp_path, capsys, radius):
    path = _write(tmp_path / "a.tsv", HEADER, "0\t1\t1\t0.5\t1\t0:00:01.000")
    assert main(["analyze", path, "--radii", "0", radius]) == 2
    assert "--radii must be finite and >= 0" in capsys.readouterr().err


def test_analyze_refuses_a_file_with_no_rows(tmp_path, capsys):
    """A header-only file gives no table (not a column of nan)."""
    good = _write(tmp_path / "a.tsv", HEADER, "0\t1\t1\t0.5\t1\t0:00:01.000")
    empty = _write(tmp_path / "e.tsv", HEADER)
    assert main(["analyze", good, empty]) == 2
    captured = capsys.readouterr()
    assert "e.tsv has no rows yet" in captured.err and "ACR" not in captured.out


def test_analyze_out_holds_the_notes_and_the_table(tmp_path, capsys):
    """--out gets what is printed: the subset note, the threshold legend and the table."""
    path = _write(tmp_path / "a.tsv", HEADER, "0\t1\t1\t0.5\t1\t0:00:01.000",
                  meta={"split": "test", "split_size": 10})
    out = tmp_path / "report.md"
    assert main(["analyze", path, "--radii", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    assert out.read_text().splitlines()[:2] == ["# a.tsv: 1 of 10 test images", f"# {analysis.THRESHOLD_NOTE}"]


def test_analyze_warns_about_an_incomplete_file(tmp_path, capsys):
    path = _write(tmp_path / "a.tsv", HEADER, "0\t1\t1\t0.5\t1\t0:00:01.000",
                  meta={"split": "test", "split_size": 10, "complete": False, "num_selected": 4})
    assert main(["analyze", path, "--radii", "0"]) == 0
    captured = capsys.readouterr()
    assert "is incomplete (an interrupted run)" in captured.err
    assert "INCOMPLETE: 1 of the 4 selected images" in captured.out

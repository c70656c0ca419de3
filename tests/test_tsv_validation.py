"""Garbled certify/predict TSV rows are refused where rows are read (tsv.py), with one line naming
the file, the line and the column; ours and Cohen et al.'s files are still read, with the right
numbers; a torn last line is still dropped for resume."""

import datetime
from pathlib import Path

import pytest

from robustmaxup.certify import analysis
from robustmaxup.certify.tsv import (
    CERTIFY, CERTIFY_SEQUENTIAL, PREDICT, CertifyRow, PredictRow, merge_rows, parse_time, read_certify,
    read_rows, write_rows,
)
from robustmaxup.cli import main
from robustmaxup.errors import UserError

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"
SEQ_HEADER = HEADER + "\tn_used"
GOOD = "0\t1\t1\t0.500000\t1\t0:00:01.000"  # line 2 of every garbled file; the bad row is line 3

# name: (header, bad row, column named, a fragment of the problem)
GARBLED = {
    "radius-inf": (HEADER, "1\t2\t2\tinf\t1\t0:00:01.000", "radius", "finite"),
    "radius-nan": (HEADER, "1\t2\t2\tnan\t1\t0:00:01.000", "radius", "finite"),
    "radius-overflow": (HEADER, "1\t2\t2\t1e999\t1\t0:00:01.000", "radius", "finite"),
    "radius-negative": (HEADER, "1\t2\t2\t-0.25\t1\t0:00:01.000", "radius", "negative"),
    "radius-text": (HEADER, "1\t2\t2\tabc\t1\t0:00:01.000", "radius", "finite"),
    "wrong-marked-correct": (HEADER, "1\t2\t3\t0.5\t1\t0:00:01.000", "correct", "predict 3 != label 2"),
    "right-marked-wrong": (HEADER, "1\t2\t2\t0.5\t0\t0:00:01.000", "correct", "predict 2 == label 2"),
    "correct-two": (HEADER, "1\t2\t2\t0.5\t2\t0:00:01.000", "correct", "0 or 1"),
    "abstain-radius": (HEADER, "1\t2\t-1\t0.5\t0\t0:00:01.000", "radius", "abstention"),
    "abstain-correct": (HEADER, "1\t2\t-1\t0.0\t1\t0:00:01.000", "correct", "abstention"),
    "abstain-label-minus-one": (HEADER, "1\t-1\t-1\t0.0\t1\t0:00:01.000", "label", ">= 0"),
    "predict-minus-two": (HEADER, "1\t2\t-2\t0.0\t0\t0:00:01.000", "predict", "-1 (abstain)"),
    "idx-negative": (HEADER, "-1\t2\t2\t0.5\t1\t0:00:01.000", "idx", ">= 0"),
    "idx-huge": (HEADER, "99999999999999999999\t2\t2\t0.5\t1\t0:00:01.000", "idx", "out of range"),
    "idx-float": (HEADER, "1.0\t2\t2\t0.5\t1\t0:00:01.000", "idx", "not an integer"),
    "time-h-mm": (HEADER, "1\t2\t2\t0.5\t1\t0:00", "time", "str(timedelta)"),
    "time-seconds": (HEADER, "1\t2\t2\t0.5\t1\t0.5", "time", "str(timedelta)"),
    "time-minutes-60": (HEADER, "1\t2\t2\t0.5\t1\t0:60:00", "time", "str(timedelta)"),
    "time-negative": (HEADER, "1\t2\t2\t0.5\t1\t-1 day, 23:59:59.500000", "time", "str(timedelta)"),
    "time-nan": (HEADER, "1\t2\t2\t0.5\t1\t0:00:nan", "time", "str(timedelta)"),
    "field-missing": (HEADER, "1\t2\t2\t0.5", "correct", "4 fields"),
    "field-extra": (HEADER, "1\t2\t2\t0.5\t1\t0:00:01.000\t7", "7", "extra field"),
    "n_used-text": (SEQ_HEADER, "1\t2\t2\t0.5\t1\t0:00:01.000\tmany", "n_used", "not an integer"),
    "n_used-negative": (SEQ_HEADER, "1\t2\t2\t0.5\t1\t0:00:01.000\t-5", "n_used", ">= 0"),
}


def _write(path: Path, header: str, *rows: str) -> str:
    path.write_text("".join(line + "\n" for line in (header, *rows)))
    return str(path)


def _assert_refused(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize("case", sorted(GARBLED))
def test_analyze_refuses_a_garbled_row(tmp_path, capsys, case):
    header, bad, column, problem = GARBLED[case]
    good_row = GOOD + ("\t100" if header == SEQ_HEADER else "")
    path = _write(tmp_path / "bad.tsv", header, good_row, bad)
    out, plot = tmp_path / "table.md", tmp_path / "curve.png"
    line = _assert_refused(capsys, ["analyze", path, "--out", str(out), "--plot", str(plot)],
                           "bad.tsv line 3", f"column {column}: ", problem, "regenerate the file")
    assert "malformed row" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tsv"]  # no --out, no --plot


def test_analyze_refuses_a_repeated_idx_naming_both_lines(tmp_path, capsys):
    path = _write(tmp_path / "dup.tsv", HEADER, GOOD, "1\t2\t2\t0.25\t1\t0:00:01.000",
                  "0\t1\t1\t0.500000\t1\t0:00:01.000")
    out = tmp_path / "t.md"
    _assert_refused(capsys, ["analyze", path, "--out", str(out)],
                    "dup.tsv lines 2 and 4 both have idx 0", "column idx", "regenerate the file")
    assert not out.exists()


def test_analyze_reads_every_file_before_writing(tmp_path, capsys):
    good = _write(tmp_path / "good.tsv", HEADER, GOOD)
    bad = _write(tmp_path / "bad.tsv", HEADER, GOOD, "1\t2\t2\tinf\t1\t0:00:01.000")
    out, plot = tmp_path / "t.md", tmp_path / "p.png"
    _assert_refused(capsys, ["analyze", good, bad, "--out", str(out), "--plot", str(plot)],
                    "bad.tsv line 3", "column radius")
    assert not out.exists() and not plot.exists()


def test_a_header_naming_a_column_twice_is_refused(tmp_path, capsys):
    path = _write(tmp_path / "twice.tsv", HEADER + "\tradius", GOOD + "\t0.9")
    _assert_refused(capsys, ["analyze", path], "twice.tsv line 1", "'radius' twice")


def _cohen_line(i: int, label: int, prediction: int, radius: float, seconds: float) -> str:
    """A row as locuslab/smoothing code/certify.py prints it."""
    time_elapsed = str(datetime.timedelta(seconds=seconds))
    return "{}\t{}\t{}\t{:.3}\t{}\t{}".format(i, label, prediction, radius, int(prediction == label),
                                            time_elapsed)


def test_cohen_files_are_read_with_the_right_numbers(tmp_path, capsys):
    # 0.512 certified, 1.25 certified (a whole-second time: no fraction), a wrong prediction,
    # an abstention (radius 0.0), and an image that took more than a day
    lines = [_cohen_line(0, 3, 3, 0.5123, 1.234567), _cohen_line(20, 1, 1, 1.25, 2.0),
             _cohen_line(40, 5, 6, 0.9, 0.5), _cohen_line(60, 2, -1, 0.0, 0.25),
             _cohen_line(80, 7, 7, 0.0001234, 86401.000001)]
    assert [line.rsplit("\t", 1)[1] for line in lines] == [
        "0:00:01.234567", "0:00:02", "0:00:00.500000", "0:00:00.250000", "1 day, 0:00:01.000001"]
    path = _write(tmp_path / "cohen.tsv", HEADER, *lines)
    res = analysis.read_certify_tsv(path)
    assert list(res.idx) == [0, 20, 40, 60, 80]
    assert analysis.average_certified_radius(res) == pytest.approx((0.512 + 1.25 + 0.000123) / 5)
    assert analysis.abstain_rate(res) == pytest.approx(0.2)
    rows, _ = read_certify(path)
    assert [r.time for r in rows] == pytest.approx([1.234567, 2.0, 0.5, 0.25, 86401.000001])
    assert main(["analyze", path, "--radii", "0", "0.5", "--format", "csv", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == (
        "radius (>= r),cohen.tsv\n0,0.600\n0.5,0.400\nACR,0.352\nabstain,0.200\nimages,5")


@pytest.mark.parametrize("seconds", [0, 0.5, 1.234567, 59.999999, 3599.5, 86399.999999, 86400,
                                     2 * 86400 + 3 * 3600 + 4 * 60 + 5.6])
def test_parse_time_reads_str_timedelta(seconds):
    assert parse_time(str(datetime.timedelta(seconds=seconds))) == pytest.approx(seconds, abs=1e-6)


def test_robustmaxup_files_are_read_with_the_right_numbers(tmp_path, capsys):
    rows = [CertifyRow(4, 1, 1, 0.75, 1, 1.25), CertifyRow(2, 3, -1, 0.0, 0, 0.5),
            CertifyRow(9, 0, 5, 0.4, 0, 90000.0)]  # a wrong one, then an image past 24 hours
    path = tmp_path / "ours.tsv"
    write_rows(path, CERTIFY, rows)
    assert path.read_text().splitlines()[3].endswith("\t25:00:00.000")
    assert read_rows(path, CERTIFY).rows == {r.idx: r for r in rows}
    assert sorted(read_certify(path)[0], key=lambda r: r.idx) == sorted(rows, key=lambda r: r.idx)
    seq = [CertifyRow(r.idx, r.label, r.predict, r.radius, r.correct, r.time, n_used=1000 + r.idx)
           for r in rows]
    seq_path = tmp_path / "seq.tsv"
    write_rows(seq_path, CERTIFY_SEQUENTIAL, seq)
    assert read_rows(seq_path, CERTIFY_SEQUENTIAL).rows == {r.idx: r for r in seq}
    for p in (path, seq_path):
        assert main(["analyze", str(p), "--radii", "0", "--format", "csv", "--quiet"]) == 0
        assert "ACR,0.250" in capsys.readouterr().out
    pred = [PredictRow(0, 1, 1, 1, 0.5), PredictRow(1, 2, -1, 0, 0.5), PredictRow(2, 2, 3, 0, 0.5)]
    pred_path = tmp_path / "pred.tsv"
    write_rows(pred_path, PREDICT, pred)
    assert read_rows(pred_path, PREDICT).rows == {r.idx: r for r in pred}


def test_resume_reader_refuses_garbled_rows_and_still_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "c.tsv"
    write_rows(path, CERTIFY, [CertifyRow(0, 1, 1, 0.5, 1, 1.0), CertifyRow(1, 2, -1, 0.0, 0, 1.0)])
    complete = len(path.read_bytes())
    with open(path, "a") as f:
        f.write("2\t1\t1\tin")  # a torn last line is dropped, even though it would be garbled
    got = read_rows(path, CERTIFY)
    assert sorted(got.rows) == [0, 1] and got.complete_bytes == complete
    for bad, column in [("2\t1\t1\tinf\t1\t0:00:01.000", "radius"), ("2\t1\t2\t0.5\t1\t0:00:01.000", "correct"),
                        ("2\t1\t1\t0.5\t1\t0.5", "time")]:
        path.write_text(CERTIFY.header + "\n" + GOOD + "\n" + bad + "\n")
        with pytest.raises(UserError, match=rf"c\.tsv line 3 is a malformed row: column {column}: .*resume=True"):
            read_rows(path, CERTIFY)
    path.write_text(CERTIFY.header + "\n" + GOOD + "\n" + GOOD + "\n")
    with pytest.raises(UserError, match="lines 2 and 3 both have idx 0"):
        read_rows(path, CERTIFY)
    pred = tmp_path / "p.tsv"
    pred.write_text(PREDICT.header + "\n0\t1\t1\t1\t0:00:01.000\n1\t1\t-1\t1\t0:00:01.000\n")
    with pytest.raises(UserError, match="line 3 is a malformed row: column correct: .*abstention"):
        read_rows(pred, PREDICT)
    pred.write_text(PREDICT.header + "\n0\t1\t1\t1\t0:00:01.000\n\n")
    with pytest.raises(UserError, match="line 3 is a malformed row: .*empty"):
        read_rows(pred, PREDICT)


# --- found missing by a mutation audit (2026-11-24) ----------------------------------------
def test_radius_has_six_decimals_and_round_trips():
    # rounded down: a file never claims a radius larger than was certified
    row = CertifyRow(idx=7, label=3, predict=3, radius=0.1234567, correct=1, time=1.25)
    assert row.to_line() == "7\t3\t3\t0.123456\t1\t0:00:01.250"
    back = CERTIFY.parse(row.to_line())
    assert back.radius == row.radius == 0.123456


def test_merge_rows_later_file_wins_on_the_same_idx(tmp_path):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    write_rows(a, CERTIFY, [CertifyRow(0, 1, 1, 0.5, 1), CertifyRow(1, 2, -1, 0.0, 0)])
    write_rows(b, CERTIFY, [CertifyRow(1, 2, 2, 0.25, 1)])
    rows = merge_rows([a, b, tmp_path / "absent.tsv"], CERTIFY)
    assert sorted(rows) == [0, 1]
    assert rows[1].predict == 2 and rows[1].radius == 0.25
    assert read_rows(a, CERTIFY).rows[1].predict == -1

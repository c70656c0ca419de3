"""runtime.checks (the one home of value checks) and runtime.io (atomic and exclusive writes),
tested directly; found missing by a mutation audit (2026-11-24)."""

from __future__ import annotations

import os

import pytest
import torch

from robustmaxup.errors import UserError
from robustmaxup.runtime.checks import FieldError, check_int, check_range
from robustmaxup.runtime.io import atomic_torch_save, atomic_write_text


@pytest.mark.parametrize("value", [True, False])
def test_check_int_refuses_bools(value):
    with pytest.raises(FieldError, match="^n0 must be an integer"):
        check_int("n0", value, minimum=0)


@pytest.mark.parametrize("value", [2.5, 0.1, -1.5])
def test_check_int_refuses_fractional_floats(value):
    with pytest.raises(FieldError, match="^n0 must be an integer"):
        check_int("n0", value)


def test_check_int_refuses_a_whole_float_naming_the_int():
    # accepted once, it reached range() and shapes unconverted where a caller dropped the result
    with pytest.raises(FieldError, match=r"^n0 must be an integer, got the float 3.0; write 3$"):
        check_int("n0", 3.0)


def test_check_range_open_lower_bound_excludes_the_bound():
    with pytest.raises(FieldError, match=r"must lie in \(0"):
        check_range("alpha", 0.0, 0.0, 1.0, lo_open=True, hi_open=True)
    with pytest.raises(FieldError, match=r"1\.0\)"):
        check_range("alpha", 1.0, 0.0, 1.0, lo_open=True, hi_open=True)
    assert check_range("x", 0.0, 0.0, 1.0) == 0.0  # closed bound: allowed


def test_atomic_write_text_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):  # fails halfway through writing
        atomic_write_text(path, "new\n" * 1000 + "\ud800")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_write_text_replaces_by_rename_not_in_place(tmp_path):
    path = tmp_path / "out.tsv"
    path.write_text("old\n")
    reader = open(path, encoding="utf-8")  # a reader that opened the old file keeps seeing it whole
    before = os.stat(path).st_ino
    atomic_write_text(path, "new\n")
    assert os.stat(path).st_ino != before and path.read_text() == "new\n"
    assert reader.read() == "old\n"
    reader.close()


def test_exclusive_atomic_save_never_replaces_an_existing_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"v": 1}, path, exclusive=True)
    with pytest.raises(UserError, match="already exists"):
        atomic_torch_save({"v": 2}, path, exclusive=True)
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


@pytest.mark.parametrize("clash, words", [("a.tsv", "the per-example TSV written beside out"),
                                          ("a.json.lock", "the lock file written beside out"),
                                          ("a.json", "the out file")])
def test_attack_save_adv_clash_names_the_file_it_would_overwrite(tmp_path, clash, words):
    from robustmaxup.attacks.runner import AttackPaths
    with pytest.raises(FieldError) as e:
        AttackPaths.for_output(tmp_path / "a.json", tmp_path / clash)
    assert e.value.field == "save_adv" and f"is also {words};" in e.value.problem
    assert list(tmp_path.iterdir()) == []


def test_check_distinct_defaults_to_the_field_name(tmp_path):
    from robustmaxup.runtime.io import check_distinct
    with pytest.raises(FieldError, match=r"^plot .* is also the out file;"):
        check_distinct([("out", tmp_path / "x"), ("plot", tmp_path / "x")])

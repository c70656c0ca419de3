"""Provenance: the git commit and dirty flag of the source tree, also where it was copied
without its ``.git`` (the environment fallback), and the resume rule."""

from __future__ import annotations

import datetime

import pytest
import torch

from robustmaxup.errors import UserError
from robustmaxup.runtime import records
from robustmaxup.train.config import recipe_overrides, recipe_values


@pytest.fixture(autouse=True)
def fresh_tree_state():
    """git is asked once per process (records._tree_state); these tests replace what it says."""
    records._tree_state.cache_clear()
    yield
    records._tree_state.cache_clear()


def test_provenance_reads_git_in_a_checkout():
    if records._git("rev-parse", "HEAD") is None:
        pytest.skip("not running from a git checkout")
    info = records.provenance("cpu")
    assert len(info["git_sha"]) == 40 and isinstance(info["git_dirty"], bool)
    assert info["device"].startswith("cpu")


def test_provenance_records_when_it_was_taken_in_utc():
    taken = datetime.datetime.fromisoformat(records.provenance()["time"])
    assert taken.tzinfo is not None
    assert abs(datetime.datetime.now(datetime.timezone.utc) - taken).total_seconds() < 60


def test_environment_names_the_commit_of_a_tree_copied_without_git(monkeypatch):
    monkeypatch.setattr(records, "_git", lambda *args: None)
    monkeypatch.delenv(records.GIT_SHA_ENV, raising=False)
    monkeypatch.delenv(records.GIT_DIRTY_ENV, raising=False)
    assert records.git_sha() is None and records.git_dirty() is None
    monkeypatch.setenv(records.GIT_SHA_ENV, " 0123abc\n")
    monkeypatch.setenv(records.GIT_DIRTY_ENV, "1")
    assert records.provenance()["git_sha"] == "0123abc"
    assert records.provenance()["git_dirty"] is True
    monkeypatch.setenv(records.GIT_DIRTY_ENV, "0")
    assert records.git_dirty() is False
    monkeypatch.setenv(records.GIT_DIRTY_ENV, "maybe")
    assert records.git_dirty() is None


def test_git_wins_over_the_environment(monkeypatch):
    monkeypatch.setattr(records, "_git", lambda *args: "" if args[0] == "status" else "f" * 40 + "\n")
    monkeypatch.setenv(records.GIT_SHA_ENV, "0123abc")
    monkeypatch.setenv(records.GIT_DIRTY_ENV, "1")
    assert records.git_sha() == "f" * 40 and records.git_dirty() is False


def test_check_resume_names_each_changed_setting():
    records.check_resume({"n": 10, "alpha": 0.001}, {"n": 10, "alpha": 0.001}, ["n", "alpha"], what="r")
    with pytest.raises(UserError, match=r"other settings: n \(1000, now 100\)"):
        records.check_resume({"n": 1000, "alpha": 0.001}, {"n": 100, "alpha": 0.001}, ["n", "alpha"],
                             what="r.tsv")
    # a dict-valued setting names only the entries that changed, however long the dict
    was = {"attack": "pgd", "norm": "L2", "eps": 0.5, "steps": 10, "step_size": 0.1, "loss": "ce"}
    with pytest.raises(UserError) as e:
        records.check_resume({"attack_config": was}, {"attack_config": {**was, "steps": 20}},
                             ["attack_config"], what="a.json")
    assert "attack_config.steps (10, now 20)" in str(e.value) and "norm" not in str(e.value)


# --- found missing by a mutation audit (2026-11-24) ----------------------------------------
@pytest.mark.parametrize("changed", ["a", "m", "z"])
def test_check_resume_compares_every_key(changed):  # kills M29
    saved = {"a": 1, "m": 2, "z": 3}
    with pytest.raises(UserError, match=rf"{changed} \("):
        records.check_resume(saved, {**saved, changed: 99}, sorted(saved), what="r")


@pytest.mark.parametrize("key", ["lr", "epochs", "weight_decay", "batch"])
def test_recipe_overrides_lists_every_value_given_over_the_recipe(key):  # kills M35
    vals = recipe_values("cohen")
    record = {**vals, "recipe": "cohen", key: vals[key] * 2}
    assert recipe_overrides(record) == {key: {"recipe": vals[key], "value": vals[key] * 2}}


def test_a_session_entry_is_plain_json_that_a_weights_only_load_accepts(tmp_path):
    entry = records.session({"torch": torch.__version__, "cudnn": 9}, from_epoch=3)
    assert entry == {"from_epoch": 3, "provenance": {"torch": str(torch.__version__), "cudnn": 9}}
    assert type(entry["provenance"]["torch"]) is str  # torch's TorchVersion is refused by weights_only
    torch.save({"sessions": [entry]}, tmp_path / "s.pt")
    assert torch.load(tmp_path / "s.pt", weights_only=True)["sessions"] == [entry]

"""Class indices are mapped by name, explicitly: output j of a loaded model scores the data's
class j (USER-NEEDS: foreign checkpoints "map class indices explicitly"; RobustBench #16, #105).

The end-to-end checks build a *relabelled twin* of a trained checkpoint: the final layer's rows
permuted by P and the recorded class names permuted the same way. It is the same classifier
under other indices, so certification and attacks must give the original's rows exactly, once
the outputs are mapped back by name (from the checkpoint's names, or from --class-order for a
file that records none); and different rows when nothing maps them, or the test could not fail.
"""

import json
from pathlib import Path

import pytest
import torch

from robustmaxup.checkpoints import build_model_for, class_order, load_model, map_classes, save_checkpoint
from robustmaxup.cli import main
from robustmaxup.data import load_split
from robustmaxup.errors import UserError

DIGITS = [str(i) for i in range(10)]
P = [3, 7, 0, 9, 1, 5, 8, 2, 6, 4]          # twin output i is original output P[i]
CERTIFY = ["--dataset", "digits", "--n0", "20", "--n", "200", "--batch", "100", "--alpha", "0.01",
           "--skip", "30", "--max", "12", "--device", "cpu", "--quiet"]
ATTACK = ["--dataset", "digits", "--attack", "pgd", "--eps", "0.1", "--steps", "3",
          "--n-examples", "12", "--batch", "6", "--quiet", "--device", "cpu"]


# ----------------------------------------------------------------------------- the mapping
def test_class_order_matches_names():
    assert class_order(DIGITS, DIGITS) is None
    assert class_order(["cat", "dog", "emu"], ["dog", "emu", "cat"]) == [1, 2, 0]
    with pytest.raises(UserError, match="'7' is not among them.*pass class_order with"):
        class_order(["0", "1", "2"], ["0", "7", "2"])
    with pytest.raises(UserError, match="they are 3, the data has 2"):
        class_order(["a", "b", "c"], ["a", "b"])
    with pytest.raises(UserError, match="twice"):
        class_order(["a", "a", "b"], ["a", "b", "c"])


def test_output_order_reorders_logits_and_joins_the_state():
    model = build_model_for("digits_cnn", "digits").eval()
    x = torch.rand(5, 1, 8, 8)
    base = model(x)
    model.set_output_order(P)
    assert torch.equal(model(x), base[:, P])
    assert torch.equal(model.state_dict()["output_order"], torch.tensor(P))
    model.set_output_order(list(range(10)))           # the identity: no reordering, no state key
    assert torch.equal(model(x), base) and "output_order" not in model.state_dict()
    with pytest.raises(ValueError, match="permutation"):
        model.set_output_order([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])


def test_map_classes_sources(caplog):
    model = build_model_for("digits_cnn", "digits").eval()
    shuffled = [DIGITS[p] for p in P]
    assert map_classes(model, {"classes": DIGITS}, DIGITS) == {"class_source": "checkpoint", "class_order": None}
    record = map_classes(model, {"classes": shuffled}, DIGITS)
    assert record["class_source"] == "checkpoint"
    assert [shuffled[i] for i in record["class_order"]] == DIGITS   # output order[j] is class j
    declared = map_classes(model, {}, DIGITS, declared=shuffled)
    assert declared == {"class_source": "declared", "class_order": record["class_order"]}
    assert map_classes(model, {"classes": shuffled}, DIGITS, declared=shuffled) == declared
    with pytest.raises(UserError, match="disagrees with the classes the checkpoint records"):
        map_classes(model, {"classes": DIGITS}, DIGITS, declared=shuffled)
    with caplog.at_level("INFO"):
        assert map_classes(model, {}, DIGITS) == {"class_source": "assumed", "class_order": None}
    assert "records no class names" in caplog.text and model.output_order is None


# ----------------------------------------------------------------------------- checkpoints
def _twin(original: str, path: Path, *, names: bool = True) -> str:
    """The original checkpoint's classifier with its outputs relabelled by P."""
    ckpt = torch.load(original, weights_only=True)
    state = dict(ckpt["model"])
    state["net.fc.weight"], state["net.fc.bias"] = state["net.fc.weight"][P], state["net.fc.bias"][P]
    ckpt = {**ckpt, "model": state}
    if names:
        ckpt["classes"] = [DIGITS[p] for p in P]
    else:
        ckpt.pop("classes", None)
    save_checkpoint(path, ckpt)
    return str(path)


@pytest.fixture(scope="module")
def original(digits_checkpoint, tmp_path_factory):
    """The shared digits checkpoint, recording its class names as training now does."""
    ckpt = torch.load(digits_checkpoint, weights_only=True)
    path = tmp_path_factory.mktemp("classes") / "original.pt"
    save_checkpoint(path, {**ckpt, "classes": DIGITS})
    return str(path)


@pytest.mark.parametrize("bad", [["0", "1"], DIGITS[:9] + ["0"], list(range(10)), "0123456789"])
def test_checkpoint_classes_are_checked(original, tmp_path, bad):
    ckpt = torch.load(original, weights_only=True)
    save_checkpoint(tmp_path / "bad.pt", {**ckpt, "classes": bad})
    with pytest.raises(UserError, match="classes"):
        load_model(tmp_path / "bad.pt")


def test_training_records_the_class_names(tmp_path):
    assert main(["train", "--dataset", "digits", "--arch", "digits_cnn", "--epochs", "1", "--max-train", "64",
                 "--max-eval", "16", "--batch", "32", "--quiet", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 0
    for name in ("last.pt", "best.pt"):
        _, meta = load_model(tmp_path / "run" / name)
        assert meta["classes"] == load_split("digits", "train").classes == DIGITS


# ----------------------------------------------------------------------------- end to end
def _certify(ckpt: str, out: Path, *extra: str) -> list[list[str]]:
    assert main(["certify", ckpt, *CERTIFY, "--out", str(out), *extra]) == 0
    return [line.split("\t")[:5] for line in out.read_text().splitlines()[1:]]   # time dropped


def test_certify_maps_a_relabelled_twin_back(original, tmp_path):
    ref = _certify(original, tmp_path / "ref.tsv")
    assert len({row[2] for row in ref}) >= 3          # several predicted classes: P is visible
    assert _certify(_twin(original, tmp_path / "twin.pt"), tmp_path / "twin.tsv") == ref
    sidecar = json.loads((tmp_path / "twin.tsv.json").read_text())
    assert sidecar["class_source"] == "checkpoint"
    assert [P[i] for i in sidecar["class_order"]] == list(range(10))   # undoes P
    bare = _twin(original, tmp_path / "bare.pt", names=False)
    assert _certify(bare, tmp_path / "bare.tsv") != ref                 # nothing maps it back
    shuffled = ",".join(DIGITS[p] for p in P)
    assert _certify(bare, tmp_path / "declared.tsv", "--class-order", shuffled) == ref
    (tmp_path / "names.txt").write_text("\n".join(DIGITS[p] for p in P) + "\n")
    assert _certify(bare, tmp_path / "file.tsv", "--class-order", str(tmp_path / "names.txt")) == ref


def test_resume_refuses_another_class_order(original, tmp_path, capsys):
    bare = _twin(original, tmp_path / "bare.pt", names=False)
    out = tmp_path / "c.tsv"
    _certify(bare, out)
    capsys.readouterr()
    shuffled = ",".join(DIGITS[p] for p in P)
    assert main(["certify", bare, *CERTIFY, "--out", str(out), "--resume", "--class-order", shuffled]) == 2
    assert "other settings: --class-order (None, now [" in capsys.readouterr().err


def test_predict_and_attack_map_the_twin_back(original, tmp_path):
    """PREDICT rows, and the attack's per-example rows and robust accuracy, are the original's."""
    twin, predict = _twin(original, tmp_path / "twin.pt"), [f for f in CERTIFY if f not in ("--n0", "20")]
    seen = {}
    for name, ckpt in (("ref", original), ("twin", twin)):
        assert main(["predict", ckpt, *predict, "--out", str(tmp_path / f"pred_{name}.tsv")]) == 0
        assert main(["attack", ckpt, *ATTACK, "--out", str(tmp_path / f"atk_{name}.json")]) == 0
        pred = [r.split("\t")[:4] for r in (tmp_path / f"pred_{name}.tsv").read_text().splitlines()]
        attack = (tmp_path / f"atk_{name}.tsv").read_text()
        robust = json.loads((tmp_path / f"atk_{name}.json").read_text())["robust_accuracy"]
        seen[name] = (pred, attack, robust)
    assert seen["twin"] == seen["ref"]
    assert json.loads((tmp_path / "atk_twin.json").read_text())["class_source"] == "checkpoint"


@pytest.mark.parametrize("value,message", [(",", "no class names"), ("0,1,2", "is not among them")])
def test_bad_class_order_is_one_line(original, tmp_path, capsys, value, message):
    bare = _twin(original, tmp_path / "bare.pt", names=False)
    assert main(["certify", bare, *CERTIFY, "--out", str(tmp_path / "x.tsv"), "--class-order", value]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x.tsv").exists()


@pytest.mark.parametrize("command", ["certify", "attack"])
def test_a_wrong_class_order_is_named_by_the_near_chance_warning(original, tmp_path, capsys, command):
    """A permuted model looks like chance under a wrong class order; the warning says which order
    to suspect (it used to say only "labels"): the assumed one, or the one --class-order gave."""
    bare = _twin(original, tmp_path / "bare.pt", names=False)      # outputs permuted by P, no names
    more = ["--skip", "1", "--max", "40"] if command == "certify" else ["--n-examples", "40"]
    flags = CERTIFY if command == "certify" else ATTACK
    out = tmp_path / ("x.tsv" if command == "certify" else "x.json")
    hint = "near chance; if the model is trained, check --dataset, the normalisation and the "
    cases = ((bare, [], "class order (assumed to be the data's; give the model's with --class-order)"),
             (bare, ["--class-order", ",".join(DIGITS)], "class order given with --class-order"),
             (bare, ["--class-order", ",".join(DIGITS[p] for p in P)], None))
    for ckpt, order, warned in cases:
        assert main([command, ckpt, *flags, *more, "--out", str(out), *order]) == 0
        err = capsys.readouterr().err
        assert (hint + warned in err) if warned else "near chance" not in err, err
        for extra in tmp_path.glob("x.*"):
            extra.unlink()


def test_class_order_may_not_contradict_the_checkpoints_own(original, tmp_path, capsys):
    shuffled = ",".join(DIGITS[p] for p in P)
    assert main(["certify", original, *CERTIFY, "--out", str(tmp_path / "x.tsv"), "--class-order", shuffled]) == 2
    err = capsys.readouterr().err
    assert "--class-order disagrees with the classes the checkpoint records" in err
    assert not (tmp_path / "x.tsv").exists()
    assert main(["certify", original, *CERTIFY, "--out", str(tmp_path / "y.tsv"), "--class-order",
                 ",".join(DIGITS)]) == 0                                   # the same names: fine

"""Errors and hints as a Python caller meets them (from a Python-API audit, 2026-11-25).

* A message names the arguments the reader can set in the reader's own spelling: ``resume=True``
  from Python, ``--resume`` on the command line (:func:`robustmaxup.errors.ref`); no library
  message or log line spells a flag literally (checked over the source).
* Wrong inputs that used to give a silent result are refused in one line: pixels outside
  [0, 1] or NaN given to ``Smooth``, a 1-channel image given to a 3-channel model, repeated
  indices, a misspelled training setting, a fractional seed, a string where a list belongs.
"""

from __future__ import annotations

import ast
import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from classifiers import Constant, gen
from robustmaxup.attacks import AttackConfig, evaluate
from robustmaxup.certify import Smooth, analysis
from robustmaxup.certify.runner import certify_dataset
from robustmaxup.checkpoints import build_model_for, load_model, resolve_sigma
from robustmaxup.cli.common import flag_for
from robustmaxup.data import ImageSplit, check_indices, get_info, load_split, select_indices
from robustmaxup.errors import UserError, flags_named, ref
from robustmaxup.models.fold import fold_batchnorm
from robustmaxup.runtime.checks import FieldError
from robustmaxup.train import TrainConfig

LIBRARY = Path(__file__).resolve().parents[1] / "robustmaxup"


def _cli(flags=None):
    """The wording ``robustmaxup.cli.common.run`` gives its commands."""
    return flags_named(lambda field: flag_for(field, flags))


# ----------------------------------------------------------------------------- ref
def test_ref_names_an_argument_as_python_or_as_a_flag():
    assert [ref("resume"), ref("resume", True), ref("sigma", 0.25), ref("precision", "fp32"),
            ref("lr_milestones", (30, 60))] == [
        "resume", "resume=True", "sigma=0.25", "precision='fp32'", "lr_milestones=(30, 60)"]
    with _cli({"batch_size": "--batch", "data_augment": "--no-data-augment"}):
        assert [ref("resume"), ref("resume", True), ref("sigma", 0.25), ref("precision", "fp32"),
                ref("lr_milestones", (30, 60)), ref("batch_size", 64), ref("data_augment", False)] == [
            "--resume", "--resume", "--sigma 0.25", "--precision fp32", "--lr-milestones 30 60",
            "--batch 64", "--no-data-augment"]
    assert ref("resume", True) == "resume=True"   # restored after the block


def test_the_cli_wording_ends_with_its_block_even_on_an_error():
    with pytest.raises(RuntimeError), _cli():
        assert ref("out") == "--out"
        raise RuntimeError
    assert ref("out") == "out"


def test_a_config_error_names_other_fields_for_each_reader():
    cfg = TrainConfig(dataset="digits", out="/tmp/unused", schedule="multistep", lr_milestones=())
    with pytest.raises(FieldError) as e:
        cfg.validate()
    assert str(e.value) == ("lr_milestones must name at least one epoch with schedule='multistep' "
                            "(e.g. lr_milestones=(30, 60)), or use another schedule")
    with _cli(), pytest.raises(FieldError) as e:
        cfg.validate()
    assert e.value.problem == ("must name at least one epoch with --schedule multistep "
                               "(e.g. --lr-milestones 30 60), or use another schedule")


def test_an_existing_output_names_resume_and_out_for_each_reader(untrained_ckpt, tmp_path):
    model, _ = load_model(untrained_ckpt, dataset="digits")
    out = tmp_path / "c.tsv"
    out.write_text("")
    call = lambda: certify_dataset(Smooth(model, 10, 0.25), load_split("digits", "test"), [0],  # noqa: E731
                                   n0=10, n=20, out=out, progress=False)
    with pytest.raises(UserError, match=r"pass resume=True to continue it .*another output \(out\)$"):
        call()
    with _cli(), pytest.raises(UserError, match=r"pass --resume to continue it .*another output \(--out\)$"):
        call()


def test_the_cli_line_names_flags(untrained_ckpt, tmp_path, capsys):
    from robustmaxup.cli import certify as certify_cli

    out = tmp_path / "c.tsv"
    out.write_text("")
    assert certify_cli.main([untrained_ckpt, "--dataset", "digits", "--out", str(out), "--max", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith("pass --resume to continue it (same settings only), "
                                                    "or choose another output (--out)")


def test_a_log_line_names_the_sigma_argument_for_each_reader(caplog):
    meta = {"hparams": {"sigma": 0.25}}
    with caplog.at_level(logging.WARNING, logger="robustmaxup"):
        resolve_sigma(0.5, meta, verb="certifying", missing_hint="")
        with _cli():
            resolve_sigma(0.5, meta, verb="certifying", missing_hint="")
    assert [r.getMessage() for r in caplog.records] == [
        "warning: certifying with sigma=0.5, but the checkpoint was trained with sigma 0.25",
        "warning: certifying with --sigma 0.5, but the checkpoint was trained with sigma 0.25"]


_MESSAGE_CALLS = {"UserError", "FieldError", "debug", "info", "warning", "error", "say", "warn_once"}
_FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _flag_strings_in_messages(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in _MESSAGE_CALLS:
                found += [(node.lineno, s) for arg in node.args for s in _strings(arg) if _FLAG.search(s)]
    return found


def test_no_library_message_spells_a_flag():
    """Errors and log lines below ``cli/`` name arguments with ``ref``, never ``--flag``."""
    bad = []
    for path in sorted(LIBRARY.rglob("*.py")):
        if "cli" in path.relative_to(LIBRARY).parts:
            continue
        bad += [f"{path.relative_to(LIBRARY)}:{line}: {s!r}"
                for line, s in _flag_strings_in_messages(ast.parse(path.read_text()))]
    assert not bad, "\n".join(bad)


def test_the_flag_scan_sees_errors_and_log_lines():
    source = ('raise UserError(f"{p} exists; pass --resume")\nlog.info("--resume: %s", p)\n'
              'raise FieldError("x", "see --max")\nx = "a --flag in data is fine"\n')
    assert [line for line, _ in _flag_strings_in_messages(ast.parse(source))] == [1, 2, 3]


def test_field_errors_pickle_with_both_parts():
    e = pickle.loads(pickle.dumps(FieldError("n0", "must be >= 1")))
    assert (type(e), e.field, e.problem, str(e)) == (FieldError, "n0", "must be >= 1", "n0 must be >= 1")


# ----------------------------------------------------------------------------- no silent results
@pytest.mark.parametrize("bad", [
    lambda x: x * 255, lambda x: x - 0.5, lambda x: x * float("nan"), lambda x: x + float("inf")])
@pytest.mark.parametrize("call", ["certify", "predict", "certify_sequential", "predict_sequential"])
def test_smooth_refuses_what_is_not_pixels(bad, call):
    smooth, x = Smooth(Constant(3), 10, 0.25), bad(torch.rand(1, 4, 4) * 0.5 + 0.25)
    args = {"certify": (10, 100, 1e-3, 100), "predict": (100, 1e-3, 100),
            "certify_sequential": (10, 1000, 1e-3, 100), "predict_sequential": (1000, 1e-3, 100)}[call]
    with pytest.raises(UserError, match=r"x must lie in \[0, 1\] \(pixels, normalisation inside the model\)"):
        getattr(smooth, call)(x, *args, generator=gen(0))
    getattr(smooth, call)(x.nan_to_num(0.5).clamp(0, 1), *args, generator=gen(0))   # pixels: fine


def test_smooth_certified_correct_refuses_what_is_not_pixels():
    with pytest.raises(UserError, match=r"x must lie in \[0, 1\]"):
        Smooth(Constant(3), 10, 0.25).certified_correct(torch.full((2, 1, 4, 4), 2.0), torch.tensor([3, 3]),
                                                        0.1, 100, 1e-3, 100, [gen(0), gen(1)])


def test_a_sequential_sample_cap_is_named_n_max():
    smooth = Smooth(Constant(3), 10, 0.25)
    for call in (lambda: smooth.certify_sequential(torch.rand(1, 4, 4), 10, 0, 1e-3, 100),
                 lambda: smooth.predict_sequential(torch.rand(1, 4, 4), 0, 1e-3, 100)):
        with pytest.raises(FieldError) as e:
            call()
        assert e.value.field == "n_max"


@pytest.mark.parametrize("alpha", ["0.001", None, 0.0, 1.0, float("nan")])
def test_alpha_must_be_a_probability_and_the_message_gives_an_example(alpha):
    with pytest.raises(FieldError, match=r"alpha must be a failure probability in \(0, 1\), .*e\.g\. alpha=0\.001"):
        Smooth(Constant(3), 10, 0.25).certify(torch.rand(1, 4, 4), 10, 100, alpha, 100)


def test_a_three_channel_model_refuses_one_channel_images():
    model = build_model_for("cifar_resnet20", "cifar10").eval()
    with pytest.raises(UserError, match=r"the model takes images \[B, 3, H, W\] .*got shape \(2, 1, 32, 32\)"):
        model(torch.rand(2, 1, 32, 32))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    folded, pairs = fold_batchnorm(model)   # the check is traced as a call: folding still works
    assert pairs > 0
    with pytest.raises(UserError, match=r"got shape \(2, 1, 32, 32\)"):
        folded(torch.rand(2, 1, 32, 32))
    digits = build_model_for("digits_cnn", "digits").eval()   # one mean: no channel count to check
    assert digits(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_repeated_indices_are_refused_before_anything_is_written(untrained_ckpt, tmp_path):
    with pytest.raises(FieldError, match="indices must name each example once, got 3 twice"):
        check_indices([3, 1, 3], 10)
    assert check_indices([3, 1, 2], 10) == [3, 1, 2]
    model, _ = load_model(untrained_ckpt, dataset="digits")
    out = tmp_path / "dup.tsv"
    with pytest.raises(FieldError, match="got 3 twice"):
        certify_dataset(Smooth(model, 10, 0.25), load_split("digits", "test"), [3, 3, 1], n0=10, n=20,
                        out=out, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value, problem", [(-5, r"must be -1 \(all images\) or an integer >= 1, got -5"),
                                            (0, r"must be -1 \(all images\) or an integer >= 1, got 0"),
                                            (1.5, r"must be an integer, got 1\.5")])
def test_max_images_says_minus_one_means_all(value, problem):
    with pytest.raises(FieldError, match=f"^max_images {problem}$"):
        select_indices(100, 1, value)
    assert select_indices(100, 1, -1) == list(range(100)) and select_indices(100, 1, np.int64(3)) == [0, 33, 66]


def test_a_misspelled_training_setting_is_refused_with_the_closest_name():
    base = dict(dataset="digits", out="/tmp/unused")
    with pytest.raises(FieldError, match=r"^epoch is neither a training setting nor an option of method "
                                         r"gaussian \(its options: sigma\); did you mean epochs\?$"):
        TrainConfig.from_flat({**base, "epoch": 3}).validate()
    with pytest.raises(FieldError, match=r"^copies is not an option of method gaussian \(its options: sigma\)$"):
        TrainConfig(**base, method_args={"copies": 4}).validate()
    with _cli(), pytest.raises(FieldError, match=r"did you mean --epochs\?$"):
        TrainConfig.from_flat({**base, "epoch": 3}).validate()
    with pytest.raises(FieldError, match="method_args must be a dict"):
        TrainConfig(**base, method_args=None).validate()
    TrainConfig(**base, method_args={"sigma": 0.5}).validate()


def test_evaluate_checks_its_seed_and_indices():
    model = build_model_for("digits_cnn", "digits").eval()
    x, y = load_split("digits", "test").batch([0, 1])
    config = AttackConfig(eps=0.1, attack="pgd", steps=1)
    for seed in (1.5, "0", None):
        with pytest.raises(FieldError) as e:
            evaluate(model, x, y, config, seed=seed)
        assert e.value.field == "seed"
    with pytest.raises(FieldError, match="indices must name one index per example: 2 examples but 1 indices"):
        evaluate(model, x, y, config, seed=0, indices=[0])


def test_an_attack_list_given_as_a_string_is_refused():
    model = build_model_for("digits_cnn", "digits").eval()
    x, y = load_split("digits", "test").batch([0])
    with pytest.raises(FieldError, match=r"attacks must be a list of attack names, e\.g\. \('apgd-ce',\)"):
        evaluate(model, x, y, AttackConfig(eps=0.1, version="custom", attacks="apgd-ce"), seed=0)


def test_own_tensors_need_one_name_per_class():
    x, y = load_split("digits", "test").batch([0, 1])
    with pytest.raises(FieldError, match=r"classes must be 10 distinct names for digits, got \['a', 'b'\]"):
        ImageSplit.from_tensors(x, y, get_info("digits"), classes=["a", "b"])


def test_analysis_refuses_radii_it_cannot_mean(tmp_path):
    col = np.ones(4, dtype=np.int64)
    res = analysis.CertifyResults("a", "a", col, col, col, np.array([0.1, 0.2, 0.3, 0.4]), col)
    for radii in ([float("nan")], [-0.1]):
        with pytest.raises(FieldError, match="radii must be >= 0 and finite"):
            analysis.certified_accuracy(res, radii)
    assert analysis.certified_accuracy(res, [0.0, 0.25]).tolist() == [1.0, 0.5]
    for top in (0, -1.0):
        with pytest.raises(FieldError, match="max_radius must be > 0"):
            analysis.plot_certified_accuracy([res], tmp_path / "p.png", max_radius=top)
    assert not (tmp_path / "p.png").exists()


def test_load_model_names_a_bad_device(untrained_ckpt):
    with pytest.raises(UserError, match="bad device 'gpu'"):
        load_model(untrained_ckpt, dataset="digits", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            load_model(untrained_ckpt, dataset="digits", device="cuda")


def test_a_run_is_evaluated_on_val_or_test_only(tmp_path):
    from robustmaxup.train import loop, setup

    run = setup(TrainConfig(dataset="digits", arch="digits_cnn", epochs=1, batch=32, out=str(tmp_path / "r"),
                            quiet=True, max_train=64, max_eval=32))
    try:
        with pytest.raises(FieldError, match="name must be one of val, test, got 'tset'"):
            loop.evaluate(run, "tset")
        assert 0.0 <= loop.evaluate(run, "test") <= 1.0
    finally:
        run.close()


@pytest.mark.parametrize("model_dtype, x_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_attacks_name_a_dtype_mismatch_instead_of_a_kernel_error(model_dtype, x_dtype):
    from robustmaxup.attacks import pgd, smooth_pgd

    model = build_model_for("digits_cnn", "digits").eval().to(model_dtype)
    x, y = load_split("digits", "test").batch([0, 1])
    x = x.to(x_dtype)
    match = rf"x is {x_dtype} but the model {model_dtype}; convert one of them"
    for call in (lambda: pgd(model, x, y, eps=0.1, steps=1),
                 lambda: smooth_pgd(model, x, y, eps=0.1, sigma=0.25, m=2, steps=1),
                 lambda: evaluate(model, x, y, AttackConfig(eps=0.1, attack="pgd", steps=1), seed=0)):
        with pytest.raises(FieldError, match=match):
            call()
    assert pgd(model, x.to(model_dtype), y, eps=0.1, steps=1).dtype == model_dtype   # matching: fine


def test_a_refused_resume_names_the_settings_a_user_sets_as_arguments():
    from robustmaxup.runtime.records import check_resume

    saved = {"n": 1000, "model_sha256": "a", "attack_config": {"eps": 0.1, "rule": "x"}}
    now = {"n": 100, "model_sha256": "b", "attack_config": {"eps": 0.2, "rule": "y"}}
    keys, args = ["n", "model_sha256", "attack_config"], ("n", "eps")
    with pytest.raises(UserError) as e:
        check_resume(saved, now, keys, what="r", arguments=args)
    detail = "the model's weights (sha256 a, now sha256 b), attack_config.rule ('x', now 'y')"
    assert str(e.value) == (f"cannot resume r: it was made with other settings: n (1000, now 100), "
                            f"{detail.replace(', attack', ', eps (0.1, now 0.2), attack')}; use the same "
                            "settings or another output")
    with _cli(), pytest.raises(UserError) as e:
        check_resume(saved, now, keys, what="r", arguments=args)
    assert "settings: --n (1000, now 100), the model's weights (sha256 a, now sha256 b), --eps (0.1, now " \
           "0.2), attack_config.rule ('x', now 'y');" in str(e.value)


def test_a_refused_resume_describes_a_record_key_in_words_and_shortens_hashes():
    from robustmaxup.runtime.records import check_resume

    saved = {"mode": "certify", "checkpoint_sha256": "0123456789abcdef" * 4, "n": 10}
    now = {"mode": "predict", "checkpoint_sha256": "fedcba9876543210" * 4, "n": 20}
    with _cli(), pytest.raises(UserError) as e:
        check_resume(saved, now, ["mode", "checkpoint_sha256", "n"], what="r", arguments=("n",))
    assert str(e.value) == (
        "cannot resume r: it was made with other settings: the command ('certify', now 'predict'), the "
        "checkpoint file's contents (sha256 0123456789ab, now sha256 fedcba987654), --n (10, now 20); use "
        "the same settings or another output")


def test_own_tensors_take_numpy_a_dataset_spec_and_one_label_per_image():
    x, y = load_split("digits", "test").batch([0, 1, 2])
    split = ImageSplit.from_tensors(x.numpy(), y.numpy(), get_info("digits"))
    assert torch.equal(split.batch([0, 1, 2])[0], x) and split.info == get_info("digits")
    with pytest.raises(FieldError, match=r"labels must be one per image: 3 images but labels of shape \(2,\)"):
        ImageSplit.from_tensors(x, y[:2], get_info("digits"))
    with pytest.raises(FieldError, match=r"info must be a dataset's DatasetSpec, e\.g\. get_info\('digits'\)"):
        ImageSplit.from_tensors(x, y, "digits")


def test_rows_in_memory_give_the_same_analysis_as_their_tsv(untrained_ckpt, tmp_path):
    model, _ = load_model(untrained_ckpt, dataset="digits")
    out = tmp_path / "c.tsv"
    rows = certify_dataset(Smooth(model, 10, 0.25), load_split("digits", "test"), [0, 5, 9], n0=10, n=50,
                           out=out, progress=False)
    mine, theirs = analysis.CertifyResults.from_rows(rows), analysis.read_certify_tsv(out)
    for field in ("idx", "label", "predict", "correct"):
        assert np.array_equal(getattr(mine, field), getattr(theirs, field)), field
    assert np.allclose(mine.radius, theirs.radius, atol=1e-6) and mine.n_used is None
    assert analysis.certified_accuracy(mine, [0.0, 0.1]).tolist() == \
        analysis.certified_accuracy(theirs, [0.0, 0.1]).tolist()
    assert len(analysis.CertifyResults.from_rows([])) == 0


@pytest.mark.parametrize("call, field", [
    (lambda s, x: Smooth("model", 10, 0.25), "base_classifier"),
    (lambda s, x: s.certify(x.numpy(), 10, 100, 1e-3, 100), "x"),
    (lambda s, x: s.certify(x, 10, 100, 1e-3, 100, generator=0), "generator"),
    (lambda s, x: s.certify_batch(x[None], 10, 100, 1e-3, 100, None), "generators"),
])
def test_smooth_names_an_argument_of_the_wrong_type(call, field):
    with pytest.raises(FieldError) as e:
        call(Smooth(Constant(3), 10, 0.25), torch.rand(1, 4, 4))
    assert e.value.field == field


def test_prediction_helpers_check_their_counts():
    from robustmaxup.attacks.result import predict, rescore

    model, x, y = Constant(3), torch.rand(4, 1, 4, 4), torch.full((4,), 3)
    with pytest.raises(FieldError, match="batch_size must be an integer >= 1"):
        predict(model, x, 0)
    with pytest.raises(FieldError, match="repeats must be an integer >= 1"):
        rescore(model, x, y, repeats=0)
    with pytest.raises(FieldError, match="generators must be one per example: 4 examples but 1"):
        predict(model, x, 2, [torch.Generator()])
    assert rescore(model, x, y, repeats=2, batch_size=3).all()


def test_radii_must_be_a_list():
    col = np.ones(2, dtype=np.int64)
    res = analysis.CertifyResults("a", "a", col, col, col, np.array([0.1, 0.3]), col)
    with pytest.raises(FieldError, match=r"radii must be a list of radii, e\.g\. \[0\.5\]"):
        analysis.certified_accuracy(res, 0.5)
    assert analysis.certified_accuracy(res, np.array([0.2])).tolist() == [0.5]

"""Exact details of the training config layer: former names, the perturbation spec and its flat
names, the learning-rate schedules at their boundaries, how layers (a recipe, a config.json,
flags) merge, and the parsing/serialisation helpers. Expected values are worked out by hand."""

from __future__ import annotations

import json

import pytest

from robustmaxup.errors import UserError
from robustmaxup.runtime.checks import FieldError
from robustmaxup.train import PerturbationSpec, TrainConfig, merge_flat, read_flat
from robustmaxup.train.config import (
    _flag, _is_method_key, _perturbation_key, core_options, lr_at, method_options,
    perturbation_options, recipe_overrides, renamed_message, upgrade_record,
)

# --------------------------------------------------------------------------------------------
# Former names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("old, message", [
    ("m", "was renamed --copies (one name for the number of noise/augmented copies of every method)"),
    ("eta", "was renamed --smoothmix-eta or --consistency-eta "
            "(SmoothMix's mixup weight, consistency's entropy weight)"),
    ("gamma", "was renamed --macer-gamma (MACER's hinge; the learning-rate decay is lr_gamma)"),
])
def test_renamed_message_names_every_replacement_as_a_flag_and_why(old, message):
    assert renamed_message(old, _flag) == message


def test_renamed_message_defaults_to_flat_names():
    assert renamed_message("beta") == ("was renamed trades_beta or macer_beta "
                                       "(TRADES' KL weight, MACER's inverse temperature)")


@pytest.mark.parametrize("layers", [
    ({"lr": 0.1}, {"gamma": 0.5}),                 # a flag layer
    ({"gamma": 0.5}, {"lr": 0.1}),                 # a config.json layer under the flags
    ({"recipe": "macer", "m": 4},),                # next to a recipe
])
def test_merge_refuses_a_former_name_in_any_layer(layers):
    """A former name is never merged silently (it would become an unused method option)."""
    with pytest.raises(FieldError) as e:
        merge_flat(*layers)
    assert e.value.field in ("gamma", "m") and "was renamed" in e.value.problem


def test_a_former_name_is_refused_even_where_a_method_switch_would_drop_it():
    """--m 4 saved under MACER, replayed with --method gaussian: refused, not silently lost."""
    with pytest.raises(FieldError) as e:
        TrainConfig.from_flat(merge_flat({"dataset": "digits", "out": "r", "method": "macer", "m": 4},
                                         {"method": "gaussian"}))
    assert e.value.field == "m"


# --------------------------------------------------------------------------------------------
# The weight perturbation
# --------------------------------------------------------------------------------------------

def test_perturbation_spec_fills_only_the_arguments_not_given():
    spec = PerturbationSpec("amp", {"steps": 3, "per_tensor": False})
    assert spec.args == {"eps": 0.5, "steps": 3, "step_size": 1.0, "per_tensor": False, "warmup": 0}
    assert spec == PerturbationSpec("amp", {"per_tensor": False, "steps": 3, "eps": 0.5})
    assert spec.flat() == {"amp_eps": 0.5, "amp_steps": 3, "amp_step_size": 1.0,
                           "amp_per_tensor": False, "amp_warmup": 0}


def test_perturbation_spec_names_the_first_unknown_option_in_flat_form():
    with pytest.raises(FieldError) as e:
        PerturbationSpec("awp", {"zeta": 1, "eps": 2, "gamma": 0.01})
    assert e.value.field == "awp_eps" and "gamma, warmup, restore_after_step" in e.value.problem
    with pytest.raises(UserError):
        PerturbationSpec("sam")


@pytest.mark.parametrize("key, hit", [
    ("awp_gamma", ("awp", "gamma")), ("awp_warmup", ("awp", "warmup")),
    ("awp_restore_after_step", ("awp", "restore_after_step")),
    ("amp_warmup", ("amp", "warmup")), ("amp_step_size", ("amp", "step_size")), ("amp_eps", ("amp", "eps")),
    ("awp_eps", None), ("amp_gamma", None), ("awpgamma", None), ("gamma", None), ("warmup", None),
    ("awp", None), ("lr_gamma", None), ("macer_gamma", None),
])
def test_perturbation_key_pairs_a_flat_name_with_its_own_perturbation(key, hit):
    assert _perturbation_key(key) == hit


@pytest.mark.parametrize("key, method", [
    ("sigma", True), ("warmup", True), ("awp_eps", True), ("lr", False), ("epochs", False),
    ("recipe", False), ("awp_gamma", False), ("amp_warmup", False),
])
def test_is_method_key(key, method):
    assert _is_method_key(key) is method


def test_from_flat_attaches_each_option_to_its_perturbation_and_the_rest_to_the_method():
    cfg = TrainConfig.from_flat({"dataset": "digits", "out": "r", "method": "smoothadv", "warmup": 3,
                                 "amp_warmup": 2, "amp_steps": 4, "lr": 0.5})
    assert cfg.perturbation == PerturbationSpec("amp", {"warmup": 2, "steps": 4})
    assert cfg.method_args == {"warmup": 3} and cfg.lr == 0.5
    assert cfg.perturbation.args["eps"] == 0.5  # AMP's default, filled in


def test_a_bare_perturbation_name_means_its_defaults():
    cfg = TrainConfig(dataset="digits", out="r", perturbation="awp")
    assert cfg.perturbation == PerturbationSpec("awp", {"gamma": 0.005, "warmup": 0, "restore_after_step": True})
    cfg = TrainConfig(dataset="digits", out="r", perturbation="amp")
    assert cfg.perturbation.name == "amp" and cfg.flat()["amp_eps"] == 0.5 and "awp_gamma" not in cfg.flat()


def test_flat_lists_method_options_before_perturbation_options_and_keeps_records_out():
    cfg = TrainConfig(dataset="digits", out="r", method="maxup", method_args={"copies": 2},
                      perturbation=PerturbationSpec("awp", {"gamma": 0.01}))
    keys = list(cfg.flat())
    assert keys[-4:] == ["copies", "awp_gamma", "awp_warmup", "awp_restore_after_step"]
    assert keys[0] == "dataset" and "method_args" not in keys and "perturbation" not in keys
    rec = {**cfg.flat(), "provenance": {"git_sha": "x"}, "recipe_overrides": {"lr": 1}}
    assert TrainConfig.from_flat(rec).method_args == {"copies": 2}


def test_config_copies_its_method_args():
    args = {"sigma": 0.5}
    cfg = TrainConfig(dataset="digits", out="r", method_args=args)
    cfg.method_args["sigma"] = 1.0
    assert args == {"sigma": 0.5}


def test_milestones_given_as_a_list_become_a_tuple():
    cfg = TrainConfig(dataset="digits", out="r", schedule="multistep", lr_milestones=[2, 5])
    assert cfg.lr_milestones == (2, 5)
    cfg.validate()


@pytest.mark.parametrize("flat, field", [
    ({"out": "r"}, "dataset"), ({"dataset": None, "out": "r"}, "dataset"), ({"dataset": "digits", "out": None}, "out"),
])
def test_from_flat_requires_dataset_and_out(flat, field):
    with pytest.raises(FieldError) as e:
        TrainConfig.from_flat(flat)
    assert e.value.field == field and e.value.problem == "is required"


# --------------------------------------------------------------------------------------------
# Learning-rate schedules at their boundaries
# --------------------------------------------------------------------------------------------

def _cfg(**kw):
    return TrainConfig(dataset="digits", out="r", **kw)


def test_step_schedule_by_hand():
    """lr_step 2, gamma 0.5, lr 0.8: epochs 0,1 -> 0.8; 2,3 -> 0.4; 4 -> 0.2 (decay exactly at
    multiples of lr_step); lr_step 1 decays every epoch from epoch 1."""
    cfg = _cfg(lr=0.8, lr_step=2, lr_gamma=0.5)
    assert [lr_at(cfg, e) for e in range(5)] == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2])
    cfg = _cfg(lr=1.0, lr_step=1, lr_gamma=0.5)
    assert [lr_at(cfg, e) for e in range(3)] == pytest.approx([1.0, 0.5, 0.25])


def test_multistep_schedule_by_hand():
    """Milestones (0-based epochs) 1, 3 and 4: the rate decays from the milestone epoch itself,
    once per milestone passed; a milestone at epoch 0 decays from the start."""
    cfg = _cfg(lr=2.0, schedule="multistep", lr_milestones=(1, 3, 4), lr_gamma=0.5)
    assert [lr_at(cfg, e) for e in range(6)] == pytest.approx([2.0, 1.0, 1.0, 0.5, 0.25, 0.25])
    cfg = _cfg(lr=1.0, schedule="multistep", lr_milestones=(0,), lr_gamma=0.1)
    assert [lr_at(cfg, e) for e in range(2)] == pytest.approx([0.1, 0.1])


def test_piecewise_schedule_by_hand():
    """epochs 4: t = 0, 0.25, 0.5, 0.75: exactly half goes to /10, exactly 3/4 to /100.
    epochs 10: t = 0.7 is still /10, t = 0.8 is /100."""
    cfg = _cfg(lr=0.2, schedule="piecewise", epochs=4)
    assert [lr_at(cfg, e) for e in range(4)] == pytest.approx([0.2, 0.2, 0.02, 0.002])
    cfg = _cfg(lr=1.0, schedule="piecewise", epochs=10)
    assert [lr_at(cfg, e) for e in (4, 5, 7, 8, 9)] == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01])


def test_cosine_schedule_by_hand():
    """epochs 2: factor (1 + cos(pi e / 2)) / 2 = 1, 1/2; the last epoch is not yet zero."""
    cfg = _cfg(lr=0.4, schedule="cosine", epochs=2)
    assert [lr_at(cfg, e) for e in range(2)] == pytest.approx([0.4, 0.2])
    cfg = _cfg(lr=1.0, schedule="cosine", epochs=3)
    assert lr_at(cfg, 2) == pytest.approx(0.25)   # (1 + cos(2pi/3)) / 2 = (1 - 1/2) / 2


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------

def test_later_layers_win_key_by_key():
    merged = merge_flat({"lr": 0.3, "epochs": 7, "sigma": 0.5}, {"lr": 0.2}, {"epochs": 3})
    assert merged == {"lr": 0.2, "epochs": 3, "sigma": 0.5}


def test_a_recipe_named_by_the_saved_layer_stays_under_the_flags():
    """config.json naming a recipe, then flags: flags > config.json > its recipe."""
    saved = {"recipe": "macer", "epochs": 3, "lr": 0.05}
    merged = merge_flat(saved, {"lr": 0.07})
    assert merged["lr"] == 0.07 and merged["epochs"] == 3 and merged["batch"] == 64
    assert merged["macer_gamma"] == 8.0 and merged["method"] == "macer"


def test_naming_the_same_method_again_drops_no_option():
    """A layer that names the method already chosen drops nothing, not even an option the method
    does not take (it stays, to be refused by the method, rather than silently vanish); only a
    new method drops the old one's options."""
    merged = merge_flat({"method": "gaussian", "sigma": 0.5, "copies": 4}, {"method": "gaussian", "lr": 1.0})
    assert merged == {"method": "gaussian", "sigma": 0.5, "copies": 4, "lr": 1.0}


def test_switching_method_keeps_core_keys_and_perturbation_options():
    merged = merge_flat({"method": "macer", "macer_beta": 3.0, "copies": 4, "lr": 0.3, "awp_gamma": 0.02,
                         "amp_warmup": 1},
                        {"method": "smoothadv"})
    assert merged == {"method": "smoothadv", "copies": 4, "lr": 0.3, "awp_gamma": 0.02, "amp_warmup": 1}


def test_setting_a_perturbation_option_drops_only_the_other_perturbation():
    base = {"awp_gamma": 0.02, "awp_warmup": 2, "warmup": 5, "lr": 0.3}
    merged = merge_flat(base, {"amp_eps": 0.25})
    assert merged == {"warmup": 5, "lr": 0.3, "amp_eps": 0.25}
    merged = merge_flat(base, {"awp_warmup": 1})
    assert merged == {"awp_gamma": 0.02, "awp_warmup": 1, "warmup": 5, "lr": 0.3}


def test_an_unknown_recipe_in_a_layer_is_refused():
    with pytest.raises(FieldError) as e:
        merge_flat({"recipe": "nonesuch"})
    assert e.value.field == "recipe" and "nonesuch" in e.value.problem


def test_recipe_overrides_of_a_record_without_a_known_recipe():
    assert recipe_overrides({"recipe": None, "lr": 3.0}) == {}
    assert recipe_overrides({"recipe": "nonesuch", "lr": 3.0}) == {}
    record = TrainConfig.from_recipe("cohen", dataset="digits", out="r", lr=0.5).flat()
    assert recipe_overrides(record) == {"lr": {"recipe": 0.1, "value": 0.5}}


# --------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------

def _write(tmp_path, data):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_read_flat_replays_the_values_and_drops_the_record(tmp_path):
    cfg = TrainConfig(dataset="digits", out="r", method="maxup", method_args={"copies": 2}, lr=0.3)
    path = _write(tmp_path, {**cfg.flat(), "provenance": {"git_sha": "x"}, "recipe_overrides": {},
                             "resume": True, "quiet": True})
    flat = read_flat(path)
    assert not {"provenance", "recipe_overrides", "resume", "quiet"} & set(flat)
    assert TrainConfig.from_flat(merge_flat(flat, {"epochs": 2})) == TrainConfig(
        dataset="digits", out="r", method="maxup", method_args={"copies": 2}, lr=0.3, epochs=2)


def test_read_flat_upgrades_an_old_record(tmp_path):
    flat = read_flat(_write(tmp_path, {"dataset": "digits", "out": "r", "method": "maxup", "alpha": 1.0, "k": 16}))
    assert flat["crop_padding"] == "zeros" and flat["mix_alpha"] is None and flat["k"] is None
    assert "alpha" not in flat   # renamed mix_alpha


def test_read_flat_lets_a_former_name_through_to_be_refused_with_its_hint(tmp_path):
    flat = read_flat(_write(tmp_path, {"dataset": "digits", "out": "r", "m": 4}))
    with pytest.raises(FieldError) as e:
        merge_flat(flat)
    assert e.value.field == "m" and "copies" in e.value.problem


@pytest.mark.parametrize("data, part", [
    ([1, 2], "holds a JSON list, not an object"),
    ({"dataset": "digits", "a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7},
     "it has keys no train option has (a, b, c, d, e and 2 more)"),
    ({"dataset": "digits", "zz": 1}, "it has keys no train option has (zz)"),
])
def test_read_flat_refuses_what_is_not_a_config(tmp_path, data, part):
    with pytest.raises(FieldError) as e:
        read_flat(_write(tmp_path, data))
    assert e.value.field == "config" and part in e.value.problem


@pytest.mark.parametrize("saved, alpha, k", [
    ({"augment": "gaussian", "alpha": 1.0, "k": 16}, None, None),    # gaussian uses neither
    ({"alpha": 1.0, "k": 16}, None, None),                            # no augment: gaussian
    ({"augment": "mixup", "alpha": 1.0, "k": 16}, 1.0, None),        # mixup uses alpha
    ({"augment": "kmixup", "alpha": 1.0, "k": 16}, 1.0, 16),         # kmixup uses both
    ({"augment": "gaussian", "alpha": 2.0, "k": 8}, 2.0, 8),         # values given: kept (refused later)
])
def test_upgrade_record_clears_maxups_unused_old_defaults(saved, alpha, k):
    out = upgrade_record({"method": "maxup", **saved})
    assert out["mix_alpha"] == alpha and out["k"] == k and "alpha" not in out


def test_upgrade_record_keeps_a_recorded_padding_and_other_methods():
    assert upgrade_record({"crop_padding": "reflect"})["crop_padding"] == "reflect"
    assert upgrade_record({"method": "kmixup", "alpha": 1.0, "k": 16}) == {
        "method": "kmixup", "mix_alpha": 1.0, "k": 16, "crop_padding": "zeros"}
    assert upgrade_record({"method": "mixup", "mix_alpha": 0.2}) == {
        "method": "mixup", "mix_alpha": 0.2, "crop_padding": "zeros"}


# --------------------------------------------------------------------------------------------
# Option descriptions
# --------------------------------------------------------------------------------------------

def test_core_option_descriptions():
    opts = {o.name: o for o in core_options()}
    assert opts["data_augment"].flag == "--no-data-augment" and opts["data_augment"].switch
    assert opts["lr_milestones"].type is int and opts["lr_milestones"].nargs == "+"
    assert opts["cache_dir"].flag == "--cache-dir" and opts["cache_dir"].type is str
    assert opts["eval_radius"].type is float and opts["lr"].type is float and opts["epochs"].type is int
    assert {n for n, o in opts.items() if o.required} == {"dataset", "out"}


def test_method_and_perturbation_option_descriptions():
    assert "num_classes" not in {o.name for o in method_options()}
    pert = {o.name: o for o in perturbation_options()}
    assert {n for n, o in pert.items() if o.main} == {"awp_gamma", "amp_eps"}
    assert pert["amp_step_size"].flag == "--amp-step-size" and pert["amp_step_size"].perturbation == "amp"
    assert pert["awp_warmup"].perturbation == "awp" and pert["awp_warmup"].type is int

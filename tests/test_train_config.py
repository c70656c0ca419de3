"""TrainConfig: the one flags <-> config mapping, layers, validation naming fields."""

from __future__ import annotations

import math

import pytest

from robustmaxup.runtime.checks import FieldError
from robustmaxup.train import PerturbationSpec, TrainConfig, merge_flat, options
from robustmaxup.train.config import core_options, method_options, perturbation_options

CONFIGS = {
    "plain": TrainConfig(dataset="digits", out="r"),
    "maxup": TrainConfig(dataset="cifar10", out="r", method="maxup", method_args={"sigma": 0.5, "copies": 8},
                         epochs=3, lr_gamma=0.2, nesterov=True, data_augment=False, val_size=0),
    "multistep joint": TrainConfig(dataset="digits", out="r", method="smoothadv", schedule="multistep",
                                   lr_milestones=(3, 7), step_structure="joint", recipe="smoothadv"),
    "awp": TrainConfig(dataset="digits", out="r", method="trades", method_args={"attack_steps": 1},
                       perturbation=PerturbationSpec("awp", {"warmup": 2, "gamma": 0.005})),
    "amp": TrainConfig(dataset="digits", out="r", method="gaussian", perturbation=PerturbationSpec(
        "amp", {"eps": 0.25, "steps": 3, "step_size": 0.5, "per_tensor": True, "warmup": 1})),
    "amp defaults": TrainConfig(dataset="digits", out="r", perturbation="amp"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_from_flat_inverts_flat(name):
    cfg = CONFIGS[name]
    assert TrainConfig.from_flat(cfg.flat()) == cfg
    assert TrainConfig.from_flat({**cfg.flat(), "provenance": {"git_sha": "x"}}) == cfg


def test_perturbation_arguments_are_flat_by_field_name():
    flat = CONFIGS["awp"].flat()
    assert flat["awp_gamma"] == 0.005 and flat["awp_warmup"] == 2 and "awp" not in flat
    flat = CONFIGS["amp"].flat()
    assert {k: v for k, v in flat.items() if k.startswith("amp_")} == {
        "amp_eps": 0.25, "amp_steps": 3, "amp_step_size": 0.5, "amp_per_tensor": True, "amp_warmup": 1}
    assert PerturbationSpec("awp").args == {"gamma": 0.005, "warmup": 0, "restore_after_step": True}
    with pytest.raises(FieldError) as e:
        PerturbationSpec("awp", {"eps": 1.0})
    assert e.value.field == "awp_eps"


def test_flat_names_do_not_collide():
    core = {o.name for o in core_options()}
    method = {o.name for o in method_options()}
    pert = {o.name for o in perturbation_options()}
    assert not (core & method) and not (core & pert) and not (method & pert)
    flags = [o.flag for o in options()]
    assert len(flags) == len(set(flags))


@pytest.mark.parametrize("field, value", [
    ("lr_gamma", math.nan), ("lr_gamma", 0.0), ("lr_gamma", math.inf), ("lr", -0.1), ("epochs", 0),
    ("batch", 0), ("momentum", 1.0), ("max_eval", -1), ("max_train", -1), ("workers", -1),
    ("val_size", -2), ("eval_batch", 0), ("schedule", "linear"), ("precision", "fp16"),
    ("lr_milestones", (5, 3)), ("lr_milestones", (-1,)), ("lr_milestones", (1.5,)), ("step_structure", "chunked"),
    ("recipe", "nonesuch"),
])
def test_validation_names_the_field(field, value):
    with pytest.raises(FieldError) as e:
        TrainConfig(dataset="digits", out="r", **{field: value}).validate()
    assert e.value.field == field


def test_val_size_minus_one_means_automatic():
    TrainConfig(dataset="digits", out="r", val_size=-1).validate()


def test_required_fields():
    with pytest.raises(FieldError) as e:
        TrainConfig.from_flat({"dataset": "digits"})
    assert e.value.field == "out"


def test_layers_later_wins_and_keep_choices_whole():
    base = CONFIGS["awp"].flat() | {"method": "maxup", "copies": 4, "sigma": 0.5}
    merged = merge_flat(base, {"lr": 0.1})
    assert merged["copies"] == 4 and merged["lr"] == 0.1 and merged["awp_gamma"] == 0.005
    merged = merge_flat(base, {"method": "gaussian", "amp_eps": 0.5})
    assert "copies" not in merged and merged["sigma"] == 0.5  # gaussian takes sigma, not copies
    assert not any(k.startswith("awp_") for k in merged) and merged["amp_eps"] == 0.5
    cfg = TrainConfig.from_flat(merged)
    assert cfg.perturbation == PerturbationSpec("amp", {"eps": 0.5}) and cfg.method_args == {"sigma": 0.5}


def test_lr_schedules():
    from robustmaxup.train import lr_at

    step = TrainConfig(dataset="d", out="r", lr=0.1, schedule="step", lr_step=30)
    assert [lr_at(step, e) for e in (0, 29, 30, 60)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    multi = TrainConfig(dataset="d", out="r", lr=0.01, schedule="multistep", lr_milestones=(199, 399))
    assert [lr_at(multi, e) for e in (0, 198, 199, 398, 399, 439)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])
    # Rice et al.: lr until half of the epochs, lr/10 until three quarters, then lr/100
    piece = TrainConfig(dataset="d", out="r", lr=0.1, schedule="piecewise", epochs=200)
    assert [lr_at(piece, e) for e in (0, 99, 100, 149, 150, 199)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_lr_milestones_round_trip_through_json():
    import json

    cfg = CONFIGS["multistep joint"]
    flat = json.loads(json.dumps(cfg.flat()))
    assert flat["lr_milestones"] == [3, 7] and TrainConfig.from_flat(flat) == cfg
    assert cfg.flat() == flat


def test_a_recipe_is_a_base_layer_under_the_values_given_with_it():
    cfg = TrainConfig.from_recipe("macer", dataset="digits", out="r", epochs=2, lbd=3.0)
    assert cfg == TrainConfig.from_flat(merge_flat({"recipe": "macer", "dataset": "digits", "out": "r",
                                                    "epochs": 2, "lbd": 3.0}))
    assert cfg.recipe == "macer" and cfg.epochs == 2 and cfg.method_args["lbd"] == 3.0
    assert cfg.batch == 64 and cfg.lr == 0.01 and cfg.lr_milestones == (199, 399)   # from the recipe
    # a saved config (all values resolved) replays to itself even though it names the recipe
    assert TrainConfig.from_flat(cfg.flat()) == cfg
    # a recipe given later wins over an earlier layer, the flags given with it win over both
    merged = merge_flat(cfg.flat(), {"recipe": "cohen", "epochs": 5})
    assert merged["method"] == "gaussian" and merged["epochs"] == 5 and merged["lr"] == 0.1
    assert "lbd" not in merged


@pytest.mark.parametrize("old, new", [("m", "copies"), ("m_train", "copies"), ("eta", "smoothmix_eta"),
                                      ("beta", "macer_beta"), ("awp", "awp_gamma"), ("amp", "amp_eps")])
def test_former_names_are_refused_with_the_new_one(old, new):
    with pytest.raises(FieldError) as e:
        TrainConfig.from_flat({"dataset": "digits", "out": "r", "method": "maxup", old: 1})
    assert e.value.field == old and new in str(e.value)

"""What an audit as a user who extends robustmaxup from Python found (2026-11-25): plugins for the
command line, registrations checked when they are made (not deep in a run), one-line errors for
unregistered names in checkpoints, splits that check their labels and class names, AutoAttack
on models with fewer than 10 classes, and messages that name the right argument. Registries are
global: every test removes what it registers. Expected lines are written by hand."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from typing import ClassVar

import pytest
import torch
from torch import nn

from robustmaxup.cli import main
from robustmaxup.data import DATASETS, ImageSplit, get_info
from robustmaxup.errors import UserError
from robustmaxup.methods.registry import METHODS, register_method
from robustmaxup.models import MODELS
from robustmaxup.runtime.checks import FieldError


@pytest.fixture
def registries():
    """Remove whatever a test registers in the datasets, models and methods registries."""
    before = {r: dict(r._items) for r in (DATASETS, MODELS, METHODS)}
    yield
    for registry, items in before.items():
        registry._items.clear()
        registry._items.update(items)


# ----------------------------------------------------------------------------- plugins
PLUGIN = '''
    import dataclasses
    import torch
    from torch import nn
    from robustmaxup.data import register_dataset, ImageSplit, get_info
    from robustmaxup.data.spec import DatasetSpec
    from robustmaxup.models import MODELS

    def read(spec, split, root, cache_dir):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        y = torch.arange(64) % 4
        x = (torch.rand(64, 3, 8, 8, generator=g) * 60 + y.view(-1, 1, 1, 1) * 60).to(torch.uint8)
        return ImageSplit(spec, split, x, y, ["a", "b", "c", "d"], source="plugin")

    register_dataset(DatasetSpec("plugds", 4, (3, 8, 8), (0.5,) * 3, (0.25,) * 3, read, bundled=True,
                                 default_arch="plugnet"))

    @MODELS.register("plugnet")
    def plugnet(num_classes, in_channels):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))
'''


def test_a_plugin_named_in_the_environment_reaches_every_command(tmp_path, monkeypatch, capsys, registries):
    (tmp_path / "myplug.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ROBUSTMAXUP_PLUGINS", "myplug")
    monkeypatch.delitem(sys.modules, "myplug", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "plugds", "--sigma", "0.25", "--epochs", "1", "--batch", "16",
                 "--val-size", "16", "--out", "run"]) == 0
    assert "training plugnet with gaussian on plugds" in capsys.readouterr().err
    assert main(["certify", "run/last.pt", "--dataset", "plugds", "--n0", "10", "--n", "50", "--batch", "50",
                 "--max", "4", "--out", "c.tsv"]) == 0
    assert len((tmp_path / "c.tsv").read_text().splitlines()) == 5


def test_a_plugin_that_fails_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_plug.py").write_text("raise RuntimeError('oops')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "broken_plug", raising=False)
    for name, why in [("broken_plug", "RuntimeError: oops"), ("no_such_plug", "ModuleNotFoundError")]:
        monkeypatch.setenv("ROBUSTMAXUP_PLUGINS", name)
        assert main(["train", "--help"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"robustmaxup: error: cannot import plugin {name} ")
        assert why in err[0]


def test_a_checkpoint_of_an_unregistered_model_says_to_register_it(digits_checkpoint, tmp_path):
    from robustmaxup.checkpoints import load_model

    ckpt = torch.load(digits_checkpoint, weights_only=True)
    for key, name, register in [("arch", "labnet", "MODELS.register"), ("dataset", "labdata", "register_dataset")]:
        path = tmp_path / f"{key}.pt"
        torch.save({**ckpt, key: name}, path)
        with pytest.raises(UserError, match=f"was made with {key} '{name}', which is not registered here "
                                            rf"\(known: .*\); register it first \(robustmaxup\..*{register}"):
            load_model(path)


def test_a_checkpoint_with_other_classes_names_what_was_asked(digits_checkpoint):
    from robustmaxup.checkpoints import load_model

    with pytest.raises(UserError, match="^checkpoint has 10 classes but num_classes=4 was given$"):
        load_model(digits_checkpoint, num_classes=4)
    with pytest.raises(UserError, match="^checkpoint was trained on 'digits', not 'cifar10'"):
        load_model(digits_checkpoint, dataset="cifar10", num_classes=10)


# ----------------------------------------------------------------------------- registering a method
def _method(**attrs):
    """A Method subclass built for one test (not registered)."""
    from robustmaxup.methods.base import Method

    namespace = {"__annotations__": {}, "__qualname__": attrs.pop("qualname", "Mine")}
    for key, (kind, value) in attrs.items():
        if key in ("name", "family"):
            namespace["__annotations__"][key] = ClassVar[str]
            namespace[key] = value
        else:
            namespace["__annotations__"][key] = kind
            if value is not dataclasses.MISSING:
                namespace[key] = value
    return dataclasses.dataclass(type("Mine", (Method,), namespace))


@pytest.mark.parametrize("attrs, message", [
    (dict(strength=(float, 0.5)), "method class Mine needs its own name"),
    (dict(name=(str, "mine"), family=(str, "smoothng"), sigma=(float, 0.25)),
     "family must be one of smoothing, adversarial, standard, got 'smoothng'; did you mean 'smoothing'?"),
    (dict(name=(str, "mine"), family=(str, "smoothing")), "a smoothing method needs a sigma option"),
    (dict(name=(str, "mine"), weights=(tuple, (1.0, 2.0))), "option weights has a tuple default"),
])
def test_a_method_is_checked_when_it_is_registered(attrs, message, registries):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        register_method(_method(**attrs))
    assert "mine" not in METHODS


def test_a_method_option_without_a_default_is_refused_at_registration(registries):
    from robustmaxup.methods.base import Method

    @dataclasses.dataclass(kw_only=True)
    class Required(Method):
        name: ClassVar[str] = "required"
        strength: float

    with pytest.raises(UserError, match="option strength needs a default"):
        register_method(Required)


def test_a_method_option_named_like_a_training_setting_is_one_line(registries, capsys):
    from robustmaxup.train import TrainConfig

    register_method(_method(name=(str, "lrmethod"), lr=(float, 0.5)))
    with pytest.raises(UserError, match="method lrmethod's option lr has the name of a training setting"):
        TrainConfig(dataset="digits", out="r", method="lrmethod").validate()
    assert main(["train", "--help"]) == 2  # every registered method's options are flags: no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["robustmaxup train: error: method lrmethod's option lr has the name of a training setting "
                   "(--lr): one name, one meaning, or config.json could not say which was set; rename the option"]


def test_a_registered_method_trains_from_the_command_line(registries, tmp_path, capsys, monkeypatch):
    import torch.nn.functional as F

    from robustmaxup.methods.base import LossOutput, Method

    @register_method
    @dataclasses.dataclass
    class LabelNoise(Method):
        name: ClassVar[str] = "labelnoise"
        family: ClassVar[str] = "smoothing"
        sigma: float = 0.25
        smoothing: float = dataclasses.field(default=0.1, metadata={"help": "label smoothing"})

        def loss(self, model, prepared):
            x, y = prepared
            logits = model(x + self.sigma * torch.randn_like(x))
            return LossOutput(F.cross_entropy(logits, y, label_smoothing=self.smoothing), logits.detach(), y)

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "digits", "--method", "labelnoise", "--smoothing", "0.2", "--epochs", "1",
                 "--max-train", "64", "--val-size", "32", "--batch", "32", "--out", "r"]) == 0
    assert "with labelnoise on digits" in capsys.readouterr().err
    assert main(["train", "--dataset", "digits", "--method", "labelnoise", "--copies", "2", "--out", "q"]) == 2
    assert "is not an option of method labelnoise" in capsys.readouterr().err


def test_registering_a_name_twice_is_one_error_unless_it_is_the_same_object_again(registries):
    from robustmaxup.registry import Registry

    fruit = Registry("fruit")

    def apple():
        return 1
    fruit.register("apple")(apple)
    fruit.register("apple")(apple)  # a module or notebook cell run again
    with pytest.raises(UserError, match="fruit 'apple' is registered twice"):
        fruit.register("apple")(lambda: 2)


# ----------------------------------------------------------------------------- splits
@pytest.mark.parametrize("labels, classes, message", [
    (torch.tensor([0.5, 1.5]), None, "labels must be integer class indices, got torch.float32"),
    (torch.tensor([0, 10]), None, r"labels must be class indices in \[0, 10\)"),
    (torch.tensor([0, 1]), ["a"] * 10, "classes must be 10 distinct names for digits"),
    (torch.tensor([0, 1]), ["a", "b"], "classes must be 10 distinct names for digits"),
    (torch.tensor([0, 1, 2]), None, "labels must be one per image: 2 images"),
])
def test_a_split_checks_its_labels_and_class_names(labels, classes, message):
    x = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(FieldError, match=message):
        ImageSplit.from_tensors(x, labels, get_info("digits"), classes=classes)
    with pytest.raises(FieldError, match=message):
        ImageSplit(get_info("digits"), "mine", x, labels, classes or [str(i) for i in range(10)])


# ----------------------------------------------------------------------------- attacks and Smooth
def _linear(k: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, k))


def test_autoattack_aims_at_the_classes_a_model_has():
    from robustmaxup.attacks.autoattack import run_autoattack

    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    result = run_autoattack(_linear(4), x, y, eps=0.1, norm="L2", version="standard", batch_size=4)
    assert result.robust.shape == (4,)
    with pytest.raises(UserError, match="AutoAttack's apgd-t needs a model with at least 4 classes"):
        run_autoattack(_linear(3), x, y % 3, eps=0.1, norm="L2", version="standard", batch_size=4)


def test_attack_config_eps_as_text_is_one_field_error():
    from robustmaxup.attacks import AttackConfig
    from robustmaxup.attacks.evaluation import check_config

    with pytest.raises(FieldError, match=r"^eps must be a number, got the string '8/255'; e.g. 8 / 255$"):
        check_config(AttackConfig(eps="8/255", attack="pgd"), (3, 8, 8))
    with pytest.raises(FieldError, match=r"^eps must be a finite number, got None$"):
        check_config(AttackConfig(eps=None, attack="pgd"), (3, 8, 8))


def test_a_number_given_as_text_shows_its_quotes():
    from robustmaxup.methods.registry import build_method

    with pytest.raises(FieldError, match=r"^sigma must be > 0 and finite, got '0.25'$"):
        build_method("gaussian", sigma="0.25")


def test_one_image_methods_name_their_own_arguments():
    from robustmaxup.certify import Smooth

    smooth = Smooth(_linear(4), 4, 0.25)
    x = torch.rand(3, 8, 8)
    with pytest.raises(FieldError, match=r"^x must be one image \[C, H, W\], got shape \(1, 3, 8, 8\)"):
        smooth.certify(x[None], 10, 100, 0.001, 100)
    with pytest.raises(FieldError, match="^generator must be a torch.Generator or None, got int$"):
        smooth.predict(x, 100, 0.001, 100, generator=0)


# ----------------------------------------------------------------------------- a run's contracts
def _cfg(**kw):
    from robustmaxup.train import TrainConfig

    return TrainConfig(dataset="digits", epochs=1, max_train=64, val_size=32, batch=32, **kw)


@pytest.mark.parametrize("builder, message", [
    (lambda k, c: nn.Sequential(nn.Flatten(), nn.Linear(c * 64, 7)),
     r"the model returns shape \(2, 7\) for 2 images; the data has 10 classes, so it must return \[2, 10\]"),
    (lambda k, c: _Pair(nn.Sequential(nn.Flatten(), nn.Linear(c * 64, k))), "the model returns a tuple"),
])
def test_a_model_with_the_wrong_output_is_named_before_training(builder, message, registries, tmp_path):
    from robustmaxup.train import setup

    MODELS.register("wrongnet")(builder)
    with pytest.raises(UserError, match=message):
        setup(_cfg(arch="wrongnet", out=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


class _Pair(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x), x


def test_splits_of_another_dataset_are_refused(tmp_path):
    from robustmaxup.data import load_split
    from robustmaxup.train import setup

    x = torch.zeros(40, 3, 8, 8)
    other = ImageSplit.from_tensors(x, torch.arange(40) % 10, dataclasses.replace(get_info("digits"), name="mine",
                                                                                  image_shape=(3, 8, 8)))
    with pytest.raises(UserError, match="the train split is of dataset mine, but the config trains on digits; "
                                        "set dataset='mine'"):
        setup(_cfg(arch="digits_cnn", out=str(tmp_path / "r")), splits={"train": other})
    with pytest.raises(UserError, match="split must be a robustmaxup split"):
        setup(_cfg(arch="digits_cnn", out=str(tmp_path / "q")), splits={"train": (x, torch.arange(40))})
    assert load_split("digits", "train")  # the real one still trains (below)


@pytest.mark.parametrize("returned, message", [
    (lambda out: out.loss, "returned a Tensor; it must return LossOutput"),
    (lambda out: dataclasses.replace(out, loss=out.loss.expand(3)), r"returned a loss of shape \(3,\)"),
    (lambda out: dataclasses.replace(out, targets=None), "returned logits without targets"),
    (lambda out: dataclasses.replace(out, targets=out.targets[:1]), r"returned logits \(\d+, 10\) and targets \(1,\)"),
])
def test_what_a_method_loss_returns_is_checked_in_one_line(returned, message, registries, tmp_path):
    from robustmaxup.methods.gaussian import Gaussian
    from robustmaxup.train import train

    @register_method
    @dataclasses.dataclass
    class Broken(Gaussian):
        name: ClassVar[str] = "broken"

        def loss(self, model, prepared):
            return returned(super().loss(model, prepared))

    with pytest.raises(UserError, match=f"^method broken's loss\\(\\) {message}"):
        train(_cfg(arch="digits_cnn", method="broken", out=str(tmp_path / "r"), quiet=True))

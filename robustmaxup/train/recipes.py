"""Recipes: each baseline trained the way its paper trained it, as DATA.

A :class:`Recipe` is a frozen record of a paper's published CIFAR-10 set-up: the architecture,
epochs, batch, learning rate and schedule, weight decay, momentum/Nesterov, the method's own
options and warm-ups, the weight perturbation, and how a loader batch becomes optimiser steps.
Every :class:`Setting` carries its source: a file and line of the authors' released code (or of
their README/EXPERIMENTS file and released logs), in the repository snapshot ``Recipe.repo``
names. A value the authors' code does not fix is marked ``OUR CHOICE`` or ``UNVERIFIED`` in its
source (:meth:`Recipe.unverified` lists them).

A recipe is a *base layer*: ``robustmaxup train --recipe smoothadv --epochs 10`` takes every
value from the recipe except those given explicitly; ``config.json`` records the recipe's name,
every resolved value and which values differ from the recipe. In Python::

    from robustmaxup.train import TrainConfig, train
    cfg = TrainConfig.from_recipe("smoothadv", dataset="cifar10", data_root="DATA", out="runs/sa")

The values are 0-based in epochs. Where a reference script counts epochs from 1, or steps its
scheduler after the epoch, the milestones are translated (and the translation is stated in the
source): e.g. SmoothMix's ``StepLR(step_size=50)`` stepped with the epoch index *after* each
epoch lowers the rate from 0-based epoch 51 on, so its recipe uses ``multistep`` at 51 and 101.

Not reproduced anywhere (differences of the whole engine, not of one recipe): the references
train in fp32 (robustmaxup's ``precision=auto`` uses bf16 autocast on CUDA: pass
``--precision fp32``), train on all 50,000 training images (robustmaxup holds out ``val_size``
images for ``best.pt`` selection: pass ``--val-size 0`` to train on all), keep the last short
batch of an epoch (robustmaxup drops it), and feed the model unnormalised or differently
normalised pixels (robustmaxup normalises inside the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from robustmaxup.errors import ref
from robustmaxup.registry import Registry

__all__ = ["Setting", "Recipe", "RECIPES", "recipe_values", "recipe_table", "run_differences", "UNVERIFIED_MARKS"]

#: markers of a source that is not a line of the authors' code
UNVERIFIED_MARKS = ("OUR CHOICE", "UNVERIFIED")


@dataclass(frozen=True)
class Setting:
    """One value of a recipe: the flat (flag) name, the value, and where it comes from."""

    key: str
    value: Any
    source: str

    @property
    def verified(self) -> bool:
        return not self.source.startswith(UNVERIFIED_MARKS)


@dataclass(frozen=True)
class Recipe:
    """A paper's CIFAR-10 training set-up (see module docstring).

    ``defaults`` names the method's options the recipe leaves at robustmaxup's default because
    the set-up does not use them (e.g. MaxUp's mixing α with Gaussian copies), with the reason;
    every other option of the method is a :class:`Setting`."""

    name: str
    method: str
    paper: str
    repo: str
    settings: tuple[Setting, ...]
    defaults: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    def values(self) -> dict[str, Any]:
        """The recipe as a flat layer: ``{"method": ..., key: value, ...}``."""
        out: dict[str, Any] = {"method": self.method}
        for s in self.settings:
            out[s.key] = list(s.value) if isinstance(s.value, tuple) else s.value
        return out

    def unverified(self) -> list[Setting]:
        """The settings not taken from the authors' code, README or released logs."""
        return [s for s in self.settings if not s.verified]


RECIPES: Registry[Recipe] = Registry("recipe")


def _add(recipe: Recipe) -> Recipe:
    keys = [s.key for s in recipe.settings]
    if len(keys) != len(set(keys)):
        raise KeyError(f"recipe {recipe.name!r} sets a key twice")
    RECIPES.register(recipe.name)(recipe)
    return recipe


def _s(key: str, value: Any, source: str) -> Setting:
    return Setting(key, value, source)


def recipe_values(name: str) -> dict[str, Any]:
    """The flat layer of recipe ``name`` (UserError listing the recipes for an unknown name)."""
    return RECIPES.get(name).values()


# --------------------------------------------------------------------------------------------
# Randomized smoothing
# --------------------------------------------------------------------------------------------

# Cohen, Rosenfeld & Kolter 2019: code/train.py of locuslab/smoothing.
_COHEN = (
    _s("arch", "cifar_resnet110", "README.md:222 (resnet110), code/architectures.py:25"),
    _s("epochs", 90, "code/train.py:24"),
    _s("batch", 256, "code/train.py:26"),
    _s("lr", 0.1, "code/train.py:28"),
    _s("schedule", "step", "code/train.py:69,72 (StepLR stepped with the epoch index before each epoch)"),
    _s("lr_step", 30, "code/train.py:30"),
    _s("lr_gamma", 0.1, "code/train.py:32"),
    _s("momentum", 0.9, "code/train.py:34"),
    _s("nesterov", False, "code/train.py:68 (plain SGD)"),
    _s("weight_decay", 1e-4, "code/train.py:36"),
    _s("data_augment", True, "code/datasets.py:49-52 (random crop, padding 4; horizontal flip)"),
    _s("step_structure", "reference", "code/train.py:90-124 (one SGD step per loader batch)"),
)

_add(Recipe(
    name="cohen", method="gaussian", repo="locuslab/smoothing@78a4d94",
    paper="Cohen, Rosenfeld & Kolter 2019, Certified Adversarial Robustness via Randomized Smoothing",
    settings=(_s("sigma", 0.25, "README.md:222 (the released CIFAR-10 model "
                                "models/cifar10/resnet110/noise_0.25)"),) + _COHEN,
))

_add(Recipe(
    name="maxup", method="maxup", repo="locuslab/smoothing@78a4d94 (Cohen's set-up)",
    paper="Gong, Ren, Ye & Liu 2020, MaxUp (arXiv 2002.09024)",
    settings=_COHEN + (
        _s("sigma", 0.25, "OUR CHOICE: Cohen et al.'s σ = 0.25 column"),
        _s("copies", 4, "OUR CHOICE: MaxUp's certification set-up was not released (the paper's "
                        "'code will be released soon'); Cohen's recipe with m = 4"),
        _s("augment", "gaussian", "OUR CHOICE: Gaussian copies, the randomized-smoothing use of MaxUp"),
    ),
    defaults=(("mix_alpha", "mixing copies only"), ("k", "k-mixup copies only"),
              ("score_batch", "memory knob, no effect on the result")),
    notes=("The MaxUp paper reports certification results but no released code or full set-up; "
           "every value is Cohen et al.'s except m = 4, all of it OUR CHOICE.",),
))

_add(Recipe(
    name="smoothadv", method="smoothadv", repo="Hadisalman/smoothing-adversarial@cff781d",
    paper="Salman et al. 2019, Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers",
    settings=(
        _s("sigma", 0.25, "data/certify/cifar10/PGD_10steps_multiNoiseSamples/8-multitrain/eps_255/"
                          "cifar10/resnet110/noise_0.25 (released log of the σ = 0.25 model)"),
        _s("arch", "cifar_resnet110", "README.md:69"),
        _s("epochs", 150, "README.md:69"),
        _s("batch", 256, "README.md:69"),
        _s("lr", 0.1, "code/train_pgd.py:42"),
        _s("schedule", "step", "code/train_pgd.py:146,176 (StepLR stepped with the epoch index before each epoch)"),
        _s("lr_step", 50, "README.md:69 (--lr_step_size 50)"),
        _s("lr_gamma", 0.1, "code/train_pgd.py:46"),
        _s("momentum", 0.9, "code/train_pgd.py:48"),
        _s("nesterov", False, "code/train_pgd.py:145 (plain SGD)"),
        _s("weight_decay", 1e-4, "code/train_pgd.py:50"),
        _s("data_augment", True, "code/datasets.py:77-78"),
        _s("smoothadv_eps", 255 / 256, "UNVERIFIED which sweep model is 'the' σ = 0.25 SmoothAdv: we take "
                                       "data/certify/.../PGD_10steps_multiNoiseSamples/8-multitrain/eps_255 "
                                       "(ACR 0.546 on its 500 logged images, among the best two of the "
                                       "sweep); ε = 255/256 by code/train_pgd.py:94"),
        _s("attack_steps", 10, "UNVERIFIED (the same sweep model: PGD_10steps)"),
        _s("copies", 8, "UNVERIFIED (the same sweep model: 8-multitrain)"),
        _s("multi_noise", True, "README.md:69 (--train-multi-noise); the sweep model's multiNoiseSamples"),
        _s("warmup", 10, "README.md:69 (--warmup 10); code/train_pgd.py:177"),
        _s("step_structure", "reference", "code/train_pgd.py:202-208,228-267 (m chunks of B/m examples, "
                                          "one SGD step each)"),
    ),
))

# SmoothMix (Jeong et al. 2021), jh-jeong/smoothmix: code/train.py and EXPERIMENTS.MD.
_SMOOTHMIX_COMMON = (
    _s("arch", "cifar_resnet110", "EXPERIMENTS.MD:77"),
    _s("epochs", 150, "EXPERIMENTS.MD:77"),
    _s("batch", 256, "code/train.py:28"),
    _s("lr", 0.1, "EXPERIMENTS.MD:77"),
    _s("schedule", "multistep", "EXPERIMENTS.MD:77 (--lr_step_size 50) with code/train.py:104 "
                                "(StepLR.step(epoch) after each epoch: the decay starts one epoch late)"),
    _s("lr_milestones", (51, 101), "code/train.py:104 with code/train_utils.py:127 (0-based epochs 51, 101)"),
    _s("lr_gamma", 0.1, "code/train.py:34"),
    _s("momentum", 0.9, "code/train.py:36"),
    _s("nesterov", False, "code/train_utils.py:126 (plain SGD)"),
    _s("weight_decay", 1e-4, "code/train.py:38"),
    _s("data_augment", True, "code/datasets.py:79-80"),
    _s("copies", 2, "EXPERIMENTS.MD:78 (--num-noise-vec 2)"),
    _s("attack_steps", 4, "EXPERIMENTS.MD:78 (--num-steps 4)"),
    _s("mix_step", 0, "EXPERIMENTS.MD:78 (--mix_step 0)"),
    _s("smoothmix_eta", 5.0, "EXPERIMENTS.MD:78 (--eta 5.0)"),
    _s("smoothmix_max_norm", 0.0, "code/train.py:66 (--maxnorm None: no bound)"),
    _s("warmup", 10, "code/train.py:67,89"),
    _s("step_structure", "reference", "code/train.py:114-118,158-198 (m chunks of B/m examples, one SGD step each)"),
)
_SMOOTHMIX_PAPER = ("Jeong et al. 2021, SmoothMix: Training Confidence-calibrated Smoothed "
                    "Classifiers for Certified Robustness")
for _name, _sigma, _alpha, _line in (("smoothmix", 0.25, 0.5, "77-78"), ("smoothmix_s0.5", 0.5, 1.0, "79-80"),
                                     ("smoothmix_s1.0", 1.0, 2.0, "81-82")):
    _add(Recipe(
        name=_name, method="smoothmix", repo="jh-jeong/smoothmix@cb1fd33", paper=_SMOOTHMIX_PAPER,
        settings=(_s("sigma", _sigma, f"EXPERIMENTS.MD:{_line} (--noise {_sigma})"),
                  _s("attack_step_size", _alpha, f"EXPERIMENTS.MD:{_line} (--alpha {_alpha})"))
        + _SMOOTHMIX_COMMON,
    ))

# Consistency regularization (Jeong & Shin 2020), jh-jeong/smoothing-consistency.
_CONSISTENCY_COMMON = (
    _s("arch", "cifar_resnet110", "data/certify/cifar10/consistency/cohen/num_2/.../cifar_resnet110"),
    _s("epochs", 150, "code/train_consistency.py:28"),
    _s("batch", 256, "code/train_consistency.py:30"),
    _s("lr", 0.1, "code/train_consistency.py:32"),
    _s("schedule", "multistep", "code/train_consistency.py:34 (--lr_step_size 50) with :105 "
                                "(StepLR.step(epoch) after each epoch: the decay starts one epoch late)"),
    _s("lr_milestones", (51, 101), "code/train_consistency.py:105 with code/train_utils.py:123 "
                                   "(0-based epochs 51, 101)"),
    _s("lr_gamma", 0.1, "code/train_consistency.py:36"),
    _s("momentum", 0.9, "code/train_consistency.py:38"),
    _s("nesterov", False, "code/train_utils.py:122 (plain SGD; the paper's appendix A.1 says Nesterov)"),
    _s("weight_decay", 1e-4, "code/train_consistency.py:40"),
    _s("data_augment", True, "code/datasets.py:71-72"),
    _s("copies", 2, "data/certify/cifar10/consistency/cohen/num_2/... (--num-noise-vec 2)"),
    _s("consistency_eta", 0.5, "code/train_consistency.py:60; data/certify/.../eta_0.5"),
    _s("step_structure", "reference", "code/train_consistency.py:115-119,140-176 (m chunks of B/m "
                                      "examples, one SGD step each)"),
)
_CONSISTENCY_PAPER = ("Jeong & Shin 2020, Consistency Regularization for Certified Robustness of "
                      "Smoothed Classifiers")
for _name, _sigma, _lbd, _why in (
        ("consistency", 0.25, 20.0, "UNVERIFIED which λ the paper's σ = 0.25 row used: logs exist for λ = 10 "
                                    "(ACR 0.544) and λ = 20 (ACR 0.552, taken): data/certify/cifar10/"
                                    "consistency/cohen/num_2/lbd_20.0/eta_0.5/cifar_resnet110/noise_0.25"),
        ("consistency_s0.5", 0.5, 10.0, "data/certify/cifar10/consistency/cohen/num_2/lbd_10.0/eta_0.5/"
                                        "cifar_resnet110/noise_0.50 (the only σ = 0.5 log)"),
        ("consistency_s1.0", 1.0, 10.0, "UNVERIFIED which λ the paper's σ = 1.0 row used: logs exist for λ = 5 "
                                        "(ACR 0.734) and λ = 10 (ACR 0.756, taken): data/certify/cifar10/"
                                        "consistency/cohen/num_2/lbd_10.0/eta_0.5/cifar_resnet110/noise_1.00")):
    _add(Recipe(
        name=_name, method="consistency", repo="jh-jeong/smoothing-consistency@a11954a",
        paper=_CONSISTENCY_PAPER,
        settings=(_s("sigma", _sigma, "data/certify/cifar10/consistency/cohen/num_2/.../noise_"
                                      f"{_sigma:.2f} (released log)"),
                  _s("lbd", _lbd, _why)) + _CONSISTENCY_COMMON,
    ))

_add(Recipe(
    name="macer", method="macer", repo="RuntianZ/macer@1b6837f",
    paper="Zhai et al. 2020, MACER: Attack-free and Scalable Robust Training via Maximizing Certified Radius",
    settings=(
        _s("sigma", 0.25, "main.py:47"),
        _s("arch", "cifar_resnet110", "main.py:91 (model.py:112-114: BasicBlock ResNet, [18, 18, 18])"),
        _s("epochs", 440, "main.py:39"),
        _s("batch", 64, "main.py:43"),
        _s("lr", 0.01, "main.py:46"),
        _s("schedule", "multistep", "main.py:137-138 (MultiStepLR [200, 400])"),
        _s("lr_milestones", (199, 399), "main.py:155-158 (scheduler.step() before each epoch counted from 1: "
                                        "the 200th epoch, 0-based 199, already runs at 0.001)"),
        _s("lr_gamma", 0.1, "main.py:138"),
        _s("momentum", 0.9, "main.py:136"),
        _s("nesterov", False, "main.py:135-136 (plain SGD)"),
        _s("weight_decay", 5e-4, "main.py:136"),
        _s("data_augment", True, "main.py:92-95"),
        _s("copies", 16, "main.py:41 (--gauss_num 16)"),
        _s("lbd", 12.0, "main.py:49"),
        _s("macer_gamma", 8.0, "main.py:51"),
        _s("macer_beta", 16.0, "main.py:53"),
        _s("step_structure", "reference", "macer.py:24-68 (no chunking: ONE step per loader batch of "
                                          "B examples x k copies; reference and joint coincide)"),
    ),
    notes=("Inputs: the reference feeds unnormalised [0, 1] pixels (main.py:92-99: ToTensor, no Normalize); robustmaxup "
           "normalises with Cohen et al.'s CIFAR-10 mean/std as the model's first layer. BatchNorm follows the "
           "first convolution, so only that layer's effective scale (its learning rate, weight decay and "
           "initialisation) differs; noise and attack budgets are in pixel space in both.",),
))

del _name, _sigma, _alpha, _line, _lbd, _why

# --------------------------------------------------------------------------------------------
# Adversarial training
# --------------------------------------------------------------------------------------------

_add(Recipe(
    name="pgd_at", method="pgd_at", repo="locuslab/robust_overfitting@c47a25c",
    paper="Rice, Wong & Kolter 2020, Overfitting in adversarially robust deep learning (PGD-AT of Madry et al.)",
    settings=(
        _s("arch", "preact_resnet18", "train_cifar.py:128,208-209"),
        _s("epochs", 200, "train_cifar.py:133"),
        _s("batch", 128, "train_cifar.py:131"),
        _s("lr", 0.1, "train_cifar.py:135"),
        _s("schedule", "piecewise", "train_cifar.py:134,248-255 (0.1 until half, 0.01 until 3/4, then "
                                    "0.001; the reference re-evaluates it every iteration, :308, "
                                    "robustmaxup per epoch)"),
        _s("momentum", 0.9, "train_cifar.py:230"),
        _s("nesterov", False, "train_cifar.py:230 (plain SGD)"),
        _s("weight_decay", 5e-4, "train_cifar.py:230"),
        _s("data_augment", True, "train_cifar.py:183,197 (crop of the 4-padded image, flip)"),
        _s("crop_padding", "reflect", "utils.py:27 (np.pad mode='reflect'), applied at train_cifar.py:197"),
        _s("norm", "Linf", "train_cifar.py:144"),
        _s("attack_eps", 8 / 255, "train_cifar.py:139,205"),
        _s("attack_steps", 10, "train_cifar.py:140"),
        _s("attack_step_size", 2 / 255, "train_cifar.py:142,206"),
        _s("attack_train_mode", True, "train_cifar.py:294,301-316 (the attack runs in the training loop, "
                                      "model in train mode)"),
        _s("eval_steps", 10, "train_cifar.py:366 (validation PGD with --attack-iters)"),
        _s("step_structure", "reference", "train_cifar.py:301-337 (one SGD step per loader batch)"),
    ),
    notes=("The reference attack's forwards (train mode, train_cifar.py:294,301-316) also update "
           "BatchNorm running statistics; robustmaxup freezes them during the attack.",
           "After each step the reference runs one more clean train-mode forward for its accuracy log "
           "(train_cifar.py:339), which also moves the BatchNorm running statistics toward clean "
           "data; robustmaxup does not (training is unchanged, evaluation-time statistics differ).",
           "Inputs: the reference normalises with std (0.2471, 0.2435, 0.2616) (utils.py:17-18, "
           "train_cifar.py:20-24); robustmaxup with Cohen et al.'s (0.2023, 0.1994, 0.2010) as the model's "
           "first layer (only the first convolution's effective scale differs: BatchNorm follows it).",),
))

_add(Recipe(
    name="trades", method="trades", repo="yaodongyu/TRADES@6e8e11b",
    paper="Zhang et al. 2019, Theoretically Principled Trade-off between Robustness and Accuracy",
    settings=(
        _s("arch", "wrn_34_10", "train_trades_cifar10.py:152 (models/wideresnet.py:51: depth 34, widen 10; "
                                "fan-out He init, :74-82)"),
        _s("epochs", 76, "train_trades_cifar10.py:20"),
        _s("batch", 128, "train_trades_cifar10.py:16"),
        _s("lr", 0.1, "train_trades_cifar10.py:24"),
        _s("schedule", "multistep", "train_trades_cifar10.py:137-147 (x0.1 from epoch 75, x0.01 from 90, "
                                    "x0.001 from 100, counted from 1: :155-157)"),
        _s("lr_milestones", (74, 89, 99), "train_trades_cifar10.py:140-145,155 (0-based)"),
        _s("lr_gamma", 0.1, "train_trades_cifar10.py:141-145"),
        _s("momentum", 0.9, "train_trades_cifar10.py:26"),
        _s("nesterov", False, "train_trades_cifar10.py:153 (plain SGD)"),
        _s("weight_decay", 2e-4, "train_trades_cifar10.py:22"),
        _s("data_augment", True, "train_trades_cifar10.py:59-63"),
        _s("norm", "Linf", "trades.py:25 (distance='l_inf')"),
        _s("attack_eps", 0.031, "train_trades_cifar10.py:30"),
        _s("attack_steps", 10, "train_trades_cifar10.py:32"),
        _s("attack_step_size", 0.007, "train_trades_cifar10.py:34"),
        _s("trades_beta", 6.0, "train_trades_cifar10.py:36"),
        _s("step_structure", "reference", "train_trades_cifar10.py:75-90 (one SGD step per loader batch)"),
    ),
    defaults=(("eval_steps", "robustmaxup's best.pt metric; the reference evaluates clean accuracy only"),),
    notes=("The reference runs the clean batch through the model twice per step in train mode, once for "
           "the cross-entropy and once for the KL target (trades.py:79-82); robustmaxup runs it once and "
           "uses it for both. Loss and gradients are the same; the reference's BatchNorm running statistics "
           "take two clean updates to one adversarial (robustmaxup one to one), so eval-mode accuracies "
           "may differ slightly.",
           "Inputs: the reference feeds unnormalised [0, 1] pixels (train_trades_cifar10.py:57-63: ToTensor, no Normalize); robustmaxup "
           "normalises with Cohen et al.'s CIFAR-10 mean/std as the model's first layer. BatchNorm follows the "
           "first convolution, so only that layer's effective scale (its learning rate, weight decay and "
           "initialisation) differs; noise and attack budgets are in pixel space in both."),
))

_add(Recipe(
    name="awp_at", method="pgd_at", repo="csdongxian/AWP@a7acf5d",
    paper="Wu, Xia & Wang 2020, Adversarial Weight Perturbation Helps Robust Generalization (AT-AWP)",
    settings=(
        _s("arch", "preact_resnet18", "AT_AWP/train_cifar10.py:130,216-218"),
        _s("epochs", 200, "AT_AWP/train_cifar10.py:136"),
        _s("batch", 128, "AT_AWP/train_cifar10.py:133"),
        _s("lr", 0.1, "AT_AWP/train_cifar10.py:138"),
        _s("schedule", "piecewise", "AT_AWP/train_cifar10.py:137,260-267 (the reference re-evaluates it "
                                    "every iteration, :321-322, robustmaxup per epoch)"),
        _s("momentum", 0.9, "AT_AWP/train_cifar10.py:240"),
        _s("nesterov", False, "AT_AWP/train_cifar10.py:240 (plain SGD)"),
        _s("weight_decay", 5e-4, "AT_AWP/train_cifar10.py:240"),
        _s("data_augment", True, "AT_AWP/train_cifar10.py:191,205"),
        _s("crop_padding", "reflect", "AT_AWP/utils.py:27 (np.pad mode='reflect'), applied at "
                                      "AT_AWP/train_cifar10.py:205"),
        _s("norm", "Linf", "AT_AWP/train_cifar10.py:148"),
        _s("attack_eps", 8 / 255, "AT_AWP/train_cifar10.py:142,213"),
        _s("attack_steps", 10, "AT_AWP/train_cifar10.py:143"),
        _s("attack_step_size", 2 / 255, "AT_AWP/train_cifar10.py:146,214"),
        _s("attack_train_mode", True, "AT_AWP/train_cifar10.py:329,338 (model.train() after each attack: "
                                      "the next batch is attacked in train mode; the first batch of "
                                      "each epoch after the first follows the test loop's model.eval(), "
                                      ":379, and is attacked in eval mode: robustmaxup attacks every "
                                      "batch in train mode)"),
        _s("eval_steps", 20, "AT_AWP/train_cifar10.py:144,392 (--attack-iters-test 20)"),
        _s("awp_gamma", 0.01, "AT_AWP/train_cifar10.py:162"),
        _s("awp_warmup", 0, "AT_AWP/train_cifar10.py:163"),
        _s("awp_restore_after_step", True, "AT_AWP/train_cifar10.py:340-363 (perturb, gradient, step, restore)"),
        _s("step_structure", "reference", "AT_AWP/train_cifar10.py:314-363 (one SGD step per loader batch)"),
    ),
    notes=("As in pgd_at: the reference attack's forwards and one clean train-mode forward per step "
           "(AT_AWP/train_cifar10.py:365) update BatchNorm running statistics; robustmaxup freezes "
           "them during the attack and runs no extra forward.",
           "Inputs: as in pgd_at, the reference normalises with std (0.2471, 0.2435, 0.2616) "
           "(AT_AWP/utils.py:17-18, AT_AWP/train_cifar10.py:20-25); robustmaxup with Cohen et al.'s.",),
))

_add(Recipe(
    name="awp_trades", method="trades", repo="csdongxian/AWP@a7acf5d",
    paper="Wu, Xia & Wang 2020, Adversarial Weight Perturbation Helps Robust Generalization (TRADES-AWP)",
    settings=(
        _s("arch", "wrn_34_10", "trades_AWP/train_trades_cifar.py:19 (models/wideresnet.py:97-98; "
                                "fan-out He init, :72-80)"),
        _s("epochs", 200, "trades_AWP/train_trades_cifar.py:24"),
        _s("batch", 128, "trades_AWP/train_trades_cifar.py:20"),
        _s("lr", 0.1, "trades_AWP/train_trades_cifar.py:33"),
        _s("schedule", "multistep", "trades_AWP/train_trades_cifar.py:260-269 (x0.1 from epoch 100, x0.01 "
                                    "from 150, counted from 1: :294-296)"),
        _s("lr_milestones", (99, 149), "trades_AWP/train_trades_cifar.py:263-266,294 (0-based)"),
        _s("lr_gamma", 0.1, "trades_AWP/train_trades_cifar.py:264-266"),
        _s("momentum", 0.9, "trades_AWP/train_trades_cifar.py:35"),
        _s("nesterov", False, "trades_AWP/train_trades_cifar.py:275 (plain SGD)"),
        _s("weight_decay", 5e-4, "trades_AWP/train_trades_cifar.py:31"),
        _s("data_augment", True, "trades_AWP/train_trades_cifar.py:85-89"),
        _s("norm", "Linf", "trades_AWP/train_trades_cifar.py:39"),
        _s("attack_eps", 8 / 255, "trades_AWP/train_trades_cifar.py:41,66"),
        _s("attack_steps", 10, "trades_AWP/train_trades_cifar.py:43"),
        _s("attack_step_size", 2 / 255, "trades_AWP/train_trades_cifar.py:45,67"),
        _s("trades_beta", 6.0, "trades_AWP/train_trades_cifar.py:47"),
        _s("awp_gamma", 0.005, "trades_AWP/train_trades_cifar.py:60"),
        _s("awp_warmup", 9, "trades_AWP/train_trades_cifar.py:62,179 (--awp-warmup 10 compared with the "
                            "epoch counted from 1: perturbed from 0-based epoch 9)"),
        _s("awp_restore_after_step", True, "trades_AWP/train_trades_cifar.py:179-206 (perturb, gradient, "
                                           "step, restore)"),
        _s("step_structure", "reference", "trades_AWP/train_trades_cifar.py:166-206 (one step per loader batch)"),
    ),
    defaults=(("eval_steps", "robustmaxup's best.pt metric; the reference evaluates clean accuracy only"),),
    notes=("As in trades: the reference runs the clean batch twice per step in train mode "
           "(trades_AWP/train_trades_cifar.py:189,192), robustmaxup once (same loss and gradients; "
           "BatchNorm running statistics lean less toward clean data).",
           "Inputs: the reference feeds unnormalised [0, 1] pixels (trades_AWP/train_trades_cifar.py:84-90: ToTensor, no Normalize); robustmaxup "
           "normalises with Cohen et al.'s CIFAR-10 mean/std as the model's first layer. BatchNorm follows the "
           "first convolution, so only that layer's effective scale (its learning rate, weight decay and "
           "initialisation) differs; noise and attack budgets are in pixel space in both."),
))

_add(Recipe(
    name="amp", method="standard", repo="hiyouga/AMP-Regularizer@87e689f",
    paper="Zheng, Zhang & Mao 2021, Regularizing Neural Networks via Adversarial Model Perturbation",
    settings=(
        _s("arch", "amp_preact_resnet18", "main.py:124 (models/preresnet.py:17,21,25: convolutions of the "
                                          "blocks with bias; :89-94: fan-out He init, zero biases)"),
        _s("epochs", 200, "main.py:125"),
        _s("batch", 50, "main.py:126"),
        _s("lr", 0.1, "main.py:127"),
        _s("schedule", "multistep", "main.py:99,104 (MultiStepLR stepped after each epoch)"),
        _s("lr_milestones", (100, 150), "main.py:135 (0-based: stepped after the epoch)"),
        _s("lr_gamma", 0.1, "main.py:136"),
        _s("momentum", 0.9, "main.py:131"),
        _s("nesterov", True, "main.py:98"),
        _s("weight_decay", 1e-4, "main.py:132"),
        _s("data_augment", True, "data_utils.py:39-40 (crop, flip)"),
        _s("crop_padding", "grey", "data_utils.py:39 (RandomCrop(32, padding=4, fill=128))"),
        _s("amp_eps", 0.5, "main.py:128"),
        _s("amp_step_size", 1.0, "main.py:129"),
        _s("amp_steps", 1, "main.py:130"),
        _s("amp_per_tensor", True, "amp.py:54-56 (each tensor clipped to norm eps)"),
        _s("amp_warmup", 0, "main.py:101-104 (no warm-up)"),
        _s("step_structure", "reference", "main.py:44-53 (one step per loader batch)"),
    ),
    notes=("The reference clips the gradient norm to 50 (main.py:51,134); robustmaxup does not.",
           "The reference's two train-mode closures per step (amp.py:47,59) update BatchNorm running "
           "statistics twice, at the weights and at the perturbed weights; robustmaxup once per step "
           "(the parameters follow the reference optimizer exactly).",
           "Inputs: the reference normalises with mean (125.3, 123.0, 113.9)/255 and std (63.0, 62.1, "
           "66.7)/255 (data_utils.py:12-13); robustmaxup with Cohen et al.'s as the model's first layer "
           "(only the first convolution's effective scale differs: BatchNorm follows it).",),
))


def run_differences(name: str, *, bf16: bool, held_out: int, changed: Sequence[str] = ()) -> str:
    """One line for the start of a run of recipe ``name``: the engine-wide differences from the
    authors' set-up that apply to it (module docstring), the recipe's values this run
    ``changed`` (given over it), and how many recipe notes there are."""
    found = ["inputs normalised inside the model", "the last short batch of an epoch dropped"]
    if bf16:
        found.insert(0, f"bf16 autocast ({ref('precision', 'fp32')} to match)")
    if held_out:
        found.insert(1 if bf16 else 0, f"{held_out} training images held out for best.pt "
                                       f"({ref('val_size', 0)} to train on all)")
    notes = len(RECIPES.get(name).notes)
    more = f"; {notes} recipe note(s): robustmaxup train --list-recipes" if notes else ""
    mine = f"; given over the recipe: {', '.join(map(ref, changed))}" if changed else ""
    return f"recipe {name}: the authors' set-up, except {', '.join(found)}{mine}{more}"


# --------------------------------------------------------------------------------------------
# The table of `robustmaxup train --list-recipes`
# --------------------------------------------------------------------------------------------

_SHOWN_CORE = ("arch", "epochs", "batch", "lr", "schedule", "lr_step", "lr_milestones", "lr_gamma",
               "momentum", "nesterov", "weight_decay", "data_augment", "crop_padding", "step_structure")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def recipe_table() -> str:
    """Every recipe as a Markdown table: name, method, the core training values, the method's and
    perturbation's own values, and the source repository (``*`` marks values not taken from the
    authors' code, README or logs: see each recipe's settings)."""
    lines = ["| recipe | method | training | method options | source |", "|---|---|---|---|---|"]
    for name in RECIPES:
        recipe = RECIPES.get(name)
        core, other = [], []
        for s in recipe.settings:
            text = f"{s.key}={_fmt(s.value)}" + ("" if s.verified else "*")
            (core if s.key in _SHOWN_CORE else other).append(text)
        lines.append(f"| {name} | {recipe.method} | {' '.join(core)} | {' '.join(other)} | {recipe.repo} |")
    lines.append("")
    lines.append("* = OUR CHOICE or UNVERIFIED against the authors' code (see robustmaxup/train/recipes.py).")
    lines.extend(_late_milestones())
    lines.append("")
    lines.append("Where a recipe's training differs from its reference code:")
    lines.extend(f"- {name}: {note}" for name in RECIPES for note in RECIPES.get(name).notes)
    return "\n".join(lines)


def _late_milestones() -> list[str]:
    """A note for each recipe whose authors' schedule has milestones at or past its last epoch
    (TRADES: 76 epochs, drops at 75, 90 and 100): kept as the authors wrote them; they act only
    when ``--epochs`` is raised."""
    notes = []
    for name in RECIPES:
        values = {s.key: s.value for s in RECIPES.get(name).settings}
        late = [m for m in values.get("lr_milestones") or () if m >= values.get("epochs", m + 1)]
        if late:
            notes.append(f"{name}: lr_milestones {','.join(map(str, late))} lie past its "
                         f"{values['epochs']} epochs, as in the authors' code; they act only with a "
                         f"larger {ref('epochs')}.")
    return notes

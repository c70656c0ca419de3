"""Details of the certify/predict TSV rows (robustmaxup.certify.tsv), index sampling
(robustmaxup.data.sampling), BatchNorm folding (robustmaxup.models.fold) and progress lines
(robustmaxup.runtime.progress) that the broader tests leave open. Each test pins one behaviour
found unguarded by a mutation audit; every expected value is worked out by hand (in the
comments), not copied from a run."""

from __future__ import annotations

import io
import logging

import pytest
import torch
from torch import nn

from robustmaxup.certify.tsv import (
    CERTIFY, CERTIFY_SEQUENTIAL, PREDICT_SEQUENTIAL, CertifyRow, PredictRow, parse_time, read_rows,
    read_sidecar,
)
from robustmaxup.data import ImageSplit, get_info, select_indices, train_val_split
from robustmaxup.errors import UserError
from robustmaxup.models.fold import fold_batchnorm
from robustmaxup.runtime import progress
from robustmaxup.runtime.progress import Progress, format_duration

# --------------------------------------------------------------------------------------------
# TSV rows
# --------------------------------------------------------------------------------------------


def test_certify_row_line_rounds_radius_and_time_and_keeps_a_zero_n_used():
    # 3725.0456 s = 3725046 ms = 1 h, 2 min, 5 s, 46 ms; radius down to 6 decimals; n_used 0 is a value
    row = CertifyRow(idx=7, label=3, predict=3, radius=0.5123456, correct=1, time=3725.0456, n_used=0)
    assert row.to_line() == "7\t3\t3\t0.512345\t1\t1:02:05.046\t0"
    back = CERTIFY_SEQUENTIAL.parse(row.to_line())
    assert back.n_used == 0 and back.radius == 0.512345 and back.time == 3725.046


def test_predict_row_line_keeps_column_order_and_a_zero_n_used():
    # idx label predict correct time n_used; an abstention is -1 with correct 0
    row = PredictRow(idx=4, label=2, predict=-1, correct=0, time=0.05, n_used=0)
    assert row.to_line() == "4\t2\t-1\t0\t0:00:00.050\t0"
    assert PREDICT_SEQUENTIAL.parse(row.to_line()) == row


def test_sequential_headers_are_cohen_columns_plus_n_used():
    assert CERTIFY_SEQUENTIAL.header == "idx\tlabel\tpredict\tradius\tcorrect\ttime\tn_used"
    assert PREDICT_SEQUENTIAL.header == "idx\tlabel\tpredict\tcorrect\ttime\tn_used"


def test_parse_time_reads_days_and_surrounding_spaces():
    assert parse_time("1 day, 2:03:04.5") == 86400 + 2 * 3600 + 3 * 60 + 4.5
    assert parse_time(" 0:00:01.250 ") == 1.25


def test_a_single_nul_byte_in_a_complete_line_makes_a_binary_file(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_bytes(CERTIFY.header.encode() + b"\n7\t3\x00\n")
    with pytest.raises(UserError, match="binary"):
        read_rows(path, CERTIFY)


def test_no_sidecar_is_none_but_a_dangling_sidecar_link_is_an_error(tmp_path):
    tsv = tmp_path / "c.tsv"
    assert read_sidecar(tsv) is None
    (tmp_path / "c.tsv.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(UserError, match="sidecar"):
        read_sidecar(tsv)


# --------------------------------------------------------------------------------------------
# Index sampling
# --------------------------------------------------------------------------------------------


def test_select_indices_refuses_zero_max_images():
    # 0 is neither "all" (-1) nor a count of images: an empty evaluation is never asked for
    with pytest.raises(UserError, match="max_images"):
        select_indices(10, 1, 0)


def test_train_val_split_names_both_parts():
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    split = ImageSplit(get_info("digits"), "train", torch.zeros(6, 1, 8, 8, dtype=torch.uint8), labels,
                       [str(i) for i in range(10)])
    train, val = train_val_split(split, 2, seed=0)
    assert (train.split, val.split) == ("train[-val]", "train[val]")
    assert (len(train), len(val)) == (4, 2) and sorted(val.labels.tolist()) == [0, 1]


# --------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------


def _conv_bn(bias: bool) -> nn.Sequential:
    """1x1 conv, weight 2 (bias 1), then BN: mean 3, var 3.75, eps 0.25 (sqrt(var + eps) = 2),
    gamma 4, beta 0.5, so the scale is s = 4 / 2 = 2."""
    conv, bn = nn.Conv2d(1, 1, 1, bias=bias), nn.BatchNorm2d(1, eps=0.25)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        if bias:
            conv.bias.fill_(1.0)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(3.75)
        bn.weight.fill_(4.0)
        bn.bias.fill_(0.5)
    return nn.Sequential(conv, bn)


@pytest.mark.parametrize("bias, want_bias", [(True, -3.5), (False, -5.5)])
def test_folding_a_1x1_conv_and_batchnorm_by_hand(bias, want_bias):
    # W' = W s = 4; b' = (b - mean) s + beta = (1 - 3) 2 + 0.5 = -3.5, or (0 - 3) 2 + 0.5 = -5.5
    model = _conv_bn(bias)
    folded, pairs = fold_batchnorm(model)
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert pairs == 1 and len(convs) == 1 and not folded.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert convs[0].weight.item() == 4.0 and convs[0].bias.item() == want_bias
    x = torch.tensor([1.0, -0.5]).view(2, 1, 1, 1)
    with torch.no_grad():
        assert folded(x).flatten().tolist() == [4.0 + want_bias, -2.0 + want_bias]


def test_a_batchnorm_without_running_statistics_is_not_folded():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, track_running_stats=False))
    folded, pairs = fold_batchnorm(model)
    assert pairs == 0 and isinstance(folded[1], nn.BatchNorm2d)
    x = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(folded(x), model.eval()(x))


def test_a_conv2d_before_a_batchnorm1d_is_not_folded():
    # an unbatched [3, 4, 4] input: the conv gives [4, 4, 4], which BatchNorm1d(4) reads as
    # [N=4, C=4, L=4] and normalises along the image rows, not the conv's output channels
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm1d(4))
    with torch.no_grad():
        model[1].running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        model[1].running_var.copy_(torch.tensor([4.0, 0.25, 1.0, 9.0]))
    folded, pairs = fold_batchnorm(model)
    assert pairs == 0
    x = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(folded(x), model.eval()(x))


def test_a_conv1d_whose_batchnorm_reads_other_features_is_not_folded():
    # an unbatched [2, 5] input: the conv gives [3, 5], which BatchNorm1d(5) reads as [N=3, C=5]
    model = nn.Sequential(nn.Conv1d(2, 3, 1), nn.BatchNorm1d(5))
    with torch.no_grad():
        model[1].running_var.fill_(4.0)
    folded, pairs = fold_batchnorm(model)
    assert pairs == 0
    x = torch.rand(2, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(folded(x), model.eval()(x))


# --------------------------------------------------------------------------------------------
# Progress lines
# --------------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("certify:")]


def test_a_closed_stderr_is_not_a_terminal(monkeypatch):
    closed = io.StringIO()
    closed.close()                       # isatty() on a closed stream raises ValueError
    monkeypatch.setattr(progress.sys, "stderr", closed)
    assert progress.stderr_is_terminal() is False


def test_format_duration_of_a_negative_time_is_zero():
    assert format_duration(-3.2) == "0s"


def test_updates_of_several_items_count_them_all(caplog):
    # 5 items at +4 s (the origin), 5 more at +8 s: 10 done, rate 5 / 4 = 1.25 img/s,
    # ETA 90 / 1.25 = 72 s
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        with Progress(100, desc="certify", unit="img", first_after=10, terminal=False, clock=clock) as bar:
            for _ in range(2):
                clock.t += 4.0
                bar.update(5)
    assert _lines(caplog) == ["certify: 10/100 img (10%), 1.25 img/s, ETA 1m 12s"]


def test_a_slow_rate_is_seconds_per_item_to_three_digits(caplog):
    # origin at the first item; the second 1.25 s later: 0.8 img/s = 1.25 s/img, ETA 8 / 0.8 = 10 s
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        with Progress(10, desc="certify", unit="img", first_after=2, terminal=False, clock=clock) as bar:
            clock.t += 1.0
            bar.update(1)
            clock.t += 1.25
            bar.update(1)
    assert _lines(caplog) == ["certify: 2/10 img (20%), 1.25 s/img, ETA 10s"]


def test_the_first_period_counts_from_entering_not_from_construction(caplog):
    clock = _Clock()
    bar = Progress(10, desc="certify", unit="img", every=60.0, terminal=False, clock=clock)
    clock.t += 50.0                       # set up long before the loop starts
    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        with bar:
            clock.t += 20.0               # 20 s into the loop: not yet a period
            bar.update(1)
            clock.t += 40.0               # 60 s into the loop: the first line
            bar.update(1)
    assert [line.split(" img")[0] for line in _lines(caplog)] == ["certify: 2/10"]


def test_an_update_at_the_instant_of_entering_has_no_rate_yet(caplog):
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        with Progress(10, desc="certify", unit="img", first_after=1, skip_first=False, terminal=False,
                      clock=clock) as bar:
            bar.update(1)                 # no time has passed: no rate, no ETA (and no division)
    assert _lines(caplog) == ["certify: 1/10 img (10%)"]

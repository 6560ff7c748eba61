import math

import pytest
import torch
import torch.nn.functional as F

from minseg.losses import build_loss

# 1 image, 2 classes, 2x2 pixels; logits chosen so softmax is easy to write down
LOGITS = torch.tensor([[[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]]])  # (1, 2, 2, 2)
TARGET = torch.tensor([[[0, 1], [1, 255]]])
P1 = torch.softmax(LOGITS, 1)[0, 1]  # class-1 probability per pixel


def test_cross_entropy_ignores_and_weights():
    loss = build_loss("ce")(LOGITS, TARGET)
    expected = -(math.log(P1[0, 0].item() * 0 + (1 - P1[0, 0].item())) + math.log(P1[0, 1]) + math.log(P1[1, 0])) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    weighted = build_loss("ce", num_classes=2, class_weights=[1.0, 3.0])(LOGITS, TARGET)
    manual = -(1 * math.log(1 - P1[0, 0]) + 3 * math.log(P1[0, 1]) + 3 * math.log(P1[1, 0])) / 7
    assert weighted.item() == pytest.approx(manual, rel=1e-6)


def _dice_losses_by_hand(logits):
    """1 - Dice of classes 0 and 1 (the ones TARGET holds) over TARGET's three labelled pixels."""
    probs = torch.softmax(logits, 1)[0]
    valid = [(0, 0), (0, 1), (1, 0)]
    per_class = []
    for c in (0, 1):
        p = torch.tensor([probs[c][i] for i in valid])
        g = torch.tensor([float(TARGET[0][i] == c) for i in valid])
        per_class.append(1 - (2 * (p * g).sum()) / ((p * p).sum() + (g * g).sum()))
    return per_class


def test_dice_squared_denominator_by_hand():
    per_class = _dice_losses_by_hand(LOGITS)
    expected = sum(per_class) / 2
    assert build_loss("dice")(LOGITS, TARGET).item() == pytest.approx(expected.item(), rel=1e-5)


def test_dice_averages_over_the_classes_in_the_target_only():
    """A class absent from the target scores Dice 0 whatever is predicted; counting it (with a rare class's large
    weight) shrank the present classes' Dice to a fraction of the loss."""
    logits = torch.cat([LOGITS, torch.zeros(1, 1, 2, 2)], dim=1)  # a third class, predicted but never true
    three = build_loss("dice", num_classes=3, class_weights=[1.0, 1.0, 10.0])
    per_class = _dice_losses_by_hand(logits)
    assert three(logits, TARGET).item() == pytest.approx((sum(per_class) / 2).item(), rel=1e-5)
    # the weights still weigh the present classes against each other
    weighted = build_loss("dice", num_classes=3, class_weights=[1.0, 3.0, 10.0])(logits, TARGET)
    assert weighted.item() == pytest.approx(((per_class[0] + 3 * per_class[1]) / 4).item(), rel=1e-5)
    # nothing labelled: no class present, no loss (not NaN)
    assert build_loss("dice")(LOGITS, torch.full_like(TARGET, 255)).item() == 0.0


def test_focal_reduces_to_ce_at_gamma_0_and_by_hand():
    ce = build_loss("ce")(LOGITS, TARGET)
    assert build_loss("focal", focal_gamma=0.0)(LOGITS, TARGET).item() == pytest.approx(ce.item(), rel=1e-6)
    pt = torch.tensor([1 - P1[0, 0], P1[0, 1], P1[1, 0]])
    alpha = torch.tensor([0.25, 0.75, 0.75])  # per-class alpha [0.25, 0.75] looked up by target
    expected = (-alpha * (1 - pt) ** 2 * pt.log()).mean()
    loss = build_loss("focal", num_classes=2, focal_gamma=2.0, focal_alpha=[0.25, 0.75])(LOGITS, TARGET)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_combined_losses():
    ce, dice, focal = (build_loss(n)(LOGITS, TARGET) for n in ("ce", "dice", "focal"))
    assert build_loss("ce_dice", dice_weight=0.5)(LOGITS, TARGET).item() == pytest.approx((ce + 0.5 * dice).item())
    assert build_loss("ce_focal")(LOGITS, TARGET).item() == pytest.approx((ce + focal).item())


def test_weighted_bce_per_image_weights():
    logits = torch.tensor([[[1.0, -1.0], [0.5, 2.0]]])  # (1, 2, 2) foreground logits
    target = torch.tensor([[[1, 0], [0, 0]]])
    hw, positives = 4, 1
    w_t, w_f = hw / positives, hw / (hw - positives)
    p = torch.sigmoid(logits)[0]
    expected = -(w_t * math.log(p[0, 0]) + w_f * (math.log(1 - p[0, 1]) + math.log(1 - p[1, 0]) + math.log(1 - p[1, 1]))) / 4
    assert build_loss("weighted_bce")(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # two-channel logits give the same loss
    two = torch.stack([torch.zeros_like(logits), logits], dim=1)
    assert build_loss("weighted_bce")(two, target).item() == pytest.approx(expected, rel=1e-6)
    # an image with no foreground: only background terms, weight 1
    empty = build_loss("weighted_bce")(logits, torch.zeros_like(target))
    assert empty.item() == pytest.approx(-F.logsigmoid(-logits).mean().item(), rel=1e-6)


def test_self_distillation():
    torch.manual_seed(0)
    vote, stages = torch.randn(4, 2), [torch.randn(4, 2) for _ in range(3)]
    target = torch.tensor([0, 1, 1, 0])
    loss = build_loss("self_distillation", beta=0.4)((vote, stages), target)
    teacher = torch.softmax(vote / 3, 1)
    expected = F.cross_entropy(vote, target)
    for s in stages:
        kl = F.kl_div(F.log_softmax(s / 3, 1), teacher, reduction="batchmean") * 9
        expected = expected + 0.6 * F.cross_entropy(s, target) + 0.4 * kl
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert build_loss("self_distillation")(vote, target).item() == pytest.approx(F.cross_entropy(vote, target).item())


def test_self_distillation_on_a_segmentation_skips_ignored_pixels():
    """build_loss did not pass ignore_index on (CE's -100): a 255 in a mask was an IndexError (a device assert on a
    GPU); the distillation term is a mean per valid pixel, not a sum per image."""
    torch.manual_seed(0)
    vote, stages = torch.randn(2, 3, 4, 4), [torch.randn(2, 3, 4, 4)]
    target = torch.randint(0, 3, (2, 4, 4))
    target[:, :2] = 255
    loss = build_loss("self_distillation", num_classes=3, beta=0.4)((vote, stages), target)
    valid = target != 255
    kl = F.kl_div(F.log_softmax(stages[0] / 3, 1), torch.softmax(vote / 3, 1), reduction="none").sum(1)
    expected = (F.cross_entropy(vote, target, ignore_index=255) + 0.6 * F.cross_entropy(stages[0], target,
                ignore_index=255) + 0.4 * kl[valid].mean() * 9)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_focal_loss_with_a_gamma_under_1_keeps_finite_gradients_on_confident_pixels():
    """(1 - p_t)^gamma has an infinite slope at p_t = 1 for 0 < gamma < 1; float32 reaches p_t = 1 at a logit
    margin of ~17, which a trained model reaches: the gradient was NaN and the member diverged."""
    logits = torch.tensor([[[[20.0]], [[0.0]], [[0.0]]]], requires_grad=True)
    loss = build_loss("focal", num_classes=3, focal_gamma=0.5)(logits, torch.zeros((1, 1, 1), dtype=torch.long))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_bad_loss_options():
    with pytest.raises(ValueError, match="unknown loss 'dicey'; choose from ce, dice"):
        build_loss("dicey")
    with pytest.raises(ValueError, match="one value per class \\(3\\), got 2 value\\(s\\)"):
        build_loss("ce", num_classes=3, class_weights=[1.0, 2.0])
    from minseg.train.config import LossSettings

    with pytest.raises(ValueError, match=r"class weights \[0, 0.0, 0\] are all 0: the loss would be 0"):
        LossSettings(class_weights=[0, 0.0, 0])
    with pytest.raises(ValueError, match="beta must be in"):
        build_loss("self_distillation", beta=1.5)


def test_class_weights_from_class_frequencies_by_hand():
    from minseg.losses import balanced_class_weights

    counts = [600, 300, 100, 0]  # shares 0.6, 0.3, 0.1; median of the present classes 0.3
    assert balanced_class_weights("median_frequency", counts) == pytest.approx([0.5, 1.0, 3.0, 3.0])
    assert balanced_class_weights("inverse_sqrt_frequency", counts) == pytest.approx(
        [0.7071, 1.0, 1.7321, 1.7321], abs=1e-4)  # the absent class: the largest weight of a present one
    with pytest.raises(ValueError, match="no labelled examples"):
        balanced_class_weights("median_frequency", [0, 0])
    # rounded to 4 significant digits, not 4 decimals: a dominant class's weight was 0.0 (out of the loss)
    assert balanced_class_weights("median_frequency", [10**6, 10, 10]) == pytest.approx([1e-5, 1.0, 1.0])
    with pytest.raises(ValueError):
        balanced_class_weights("inverse_frequency", counts)


def test_member_class_weights_come_from_the_training_data_or_the_config():
    from minseg.errors import InputError
    from minseg.train.config import MemberSettings

    def member(weights):
        return MemberSettings(name="m", model="unet", stages=[{"epochs": 1}],
                              loss={"name": "ce", "class_weights": weights})

    assert member([1.0, 2.0]).class_weights(None) == [1.0, 2.0]
    assert member(None).class_weights([5, 5]) is None
    assert member("median_frequency").class_weights([75, 25]) == pytest.approx([2 / 3, 2.0], abs=1e-4)
    with pytest.raises(InputError, match="member 'm': loss.class_weights median_frequency needs the training"):
        member("median_frequency").class_weights(None)
    with pytest.raises(ValueError, match="'sqrt_frequency' is not a weighting; give inverse_sqrt_frequency or "
                                         "median_frequency") as error:  # one message, not one per union branch
        member("sqrt_frequency")
    assert error.value.error_count() == 1
    for wrong in ([], [1.0, -0.5], [1, "x"], 3):
        with pytest.raises(ValueError, match="class weights|one weight per class"):
            member(wrong)


def test_cross_entropy_matches_torch_mean_reduction():
    """The explicit normaliser is PyTorch's own (the valid pixels' summed class weights), smoothing included."""
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    for weights, smoothing in ((None, 0.0), (None, 0.1), ([0.5, 1.0, 2.0, 4.0], 0.0), ([0.5, 1.0, 2.0, 4.0], 0.1)):
        loss = build_loss("ce", num_classes=4, class_weights=weights)
        loss.label_smoothing = smoothing
        expected = F.cross_entropy(logits, target, weight=None if weights is None else torch.tensor(weights),
                                   ignore_index=255, label_smoothing=smoothing)
        assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    # only zero-weight classes labelled: nothing to learn from, not a sum divided by ~0
    zero = build_loss("ce", num_classes=4, class_weights=[0.0, 1.0, 1.0, 1.0])
    zero.label_smoothing = 0.1
    assert zero(logits, torch.zeros_like(target)).item() == 0.0


@pytest.mark.parametrize("weights", [None, [1.0, 2.0]])
@pytest.mark.parametrize("name", ["ce", "dice", "focal", "ce_dice", "ce_focal", "weighted_bce", "self_distillation"])
def test_a_batch_with_every_pixel_ignored_gives_no_loss_and_no_gradient(name, weights):
    """A tile cut from an unlabelled margin: PyTorch's mean cross-entropy is 0/0 = NaN there, which failed the
    member as a diverged loss."""
    if name == "self_distillation":  # classification targets (N,)
        logits, target = torch.randn(4, 2, requires_grad=True), torch.full((4,), 255)
        loss = build_loss(name, num_classes=2, class_weights=weights)(logits, target)
    else:
        logits, target = torch.randn(2, 2, 4, 4, requires_grad=True), torch.full((2, 4, 4), 255)
        loss = build_loss(name, num_classes=2, class_weights=weights)(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_a_one_output_loss_scores_the_main_output_of_a_model_with_auxiliary_ones():
    """MFAF returns (vote, [stage logits]): trained with ce (not self_distillation) its worker died on
    'tuple' object has no attribute 'float'. Losses of one output score the main output, the first."""
    from minseg.losses import MainOutputLoss

    torch.manual_seed(0)
    vote, stage, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    for name in ("ce", "ce_dice", "focal"):
        loss = build_loss(name, num_classes=3)
        assert MainOutputLoss(loss)((vote, [stage]), target).item() == pytest.approx(loss(vote, target).item())
        assert MainOutputLoss(loss)(vote, target).item() == pytest.approx(loss(vote, target).item())
    with pytest.raises(ValueError, match="weighted_bce is the binary loss of one foreground class .* has 3 classes"):
        build_loss("weighted_bce", num_classes=3)
    build_loss("weighted_bce", num_classes=2)

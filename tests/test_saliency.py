"""Saliency, top-k masks, SSD's importances and the exact freeze, on networks small enough to compute by hand."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from unlearning.errors import UsageError
from unlearning.models import LeNet, RetrainMLP, SeedMLP
from unlearning.saliency import (
    RESET_SEED_OFFSET,
    ExactFreeze,
    class_selectivity,
    diagonal_fisher,
    frozen_share,
    last_layers_mask,
    mask_summary,
    per_class_share,
    recording_units,
    reinitialize,
    saliency_mask,
    saliency_scores,
    specificity,
    ssd_dampening,
    top_fraction_mask,
    unchanged_share,
    union,
    unit_activations,
    unit_mask,
    unit_selectivity,
    units_keeping_frozen,
    weight_unit_scores,
)


class TwoLayers(nn.Module):
    """``a`` reads features 0-2 and ``b`` features 3-5; with ``loss = sum of outputs`` a weight's gradient is the sum of its input."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 1, bias=False)
        self.b = nn.Linear(3, 1, bias=False)

    def forward(self, x):
        return self.a(x[:, :3]) + self.b(x[:, 3:])


def summed_output(logits, y):
    return logits.sum()


# Two batches of one sample: |Σ grad| = a (2, 0, 0), b (0, 6, 0); Σ grad² = a (2, 8, 0), b (32, 18, 0).
BATCHES = [(torch.tensor([[1.0, 2, 0, 4, 3, 0]]), torch.zeros(1)), (torch.tensor([[1.0, -2, 0, -4, 3, 0]]), torch.zeros(1))]


def as_lists(masks):
    return {name: m.flatten().tolist() for name, m in masks.items()}


def test_scores_are_hand_computed_gradients():
    abs_grad = saliency_scores(TwoLayers(), BATCHES, "abs_grad", summed_output)
    fisher = saliency_scores(TwoLayers(), BATCHES, "fisher", summed_output)
    assert as_lists(abs_grad) == {"a.weight": [2, 0, 0], "b.weight": [0, 6, 0]}
    assert as_lists(fisher) == {"a.weight": [2, 8, 0], "b.weight": [32, 18, 0]}


@pytest.mark.parametrize(
    ("score", "scope", "expected"),
    [
        ("abs_grad", "global", {"a.weight": [True, False, False], "b.weight": [False, True, False]}),
        ("fisher", "global", {"a.weight": [False, False, False], "b.weight": [True, True, False]}),
        ("fisher", "layer", {"a.weight": [False, True, False], "b.weight": [True, False, False]}),
    ],
)
def test_mask_keeps_the_right_weights(score, scope, expected):
    masks = saliency_mask(TwoLayers(), BATCHES, fraction=2 / 6, scope=scope, score=score, loss_fn=summed_output)
    assert as_lists(masks) == expected


def test_ties_go_to_the_lower_index_and_the_count_is_exact():
    scores = {"w": torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0]), "v": torch.tensor([3.0, 2.0])}
    assert as_lists(top_fraction_mask(scores, 3 / 7)) == {"w": [False, True, True, True, False], "v": [False, False]}
    for fraction in (0.01, 0.3, 0.5, 1.0):
        kept = sum(m.sum().item() for m in top_fraction_mask(scores, fraction).values())
        assert kept == max(1, round(fraction * 7))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_a_fraction_outside_zero_one_is_rejected(fraction):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        top_fraction_mask({"w": torch.ones(3)}, fraction)


def test_default_saliency_is_cross_entropy_in_eval_mode_and_batching_changes_only_fisher():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3)).train()
    x, y = torch.randn(12, 4), torch.randint(3, (12,))
    whole = [(x, y)]
    halves = [(x[:6], y[:6]), (x[6:], y[6:])]
    expected = torch.autograd.grad(nn.functional.cross_entropy(net.eval()(x), y, reduction="sum"), net[0].weight)[0].abs()
    net.train()
    for batches in (whole, halves):
        assert torch.allclose(saliency_scores(net, batches, "abs_grad")["0.weight"], expected, atol=1e-5)
    assert net.training  # the caller's mode is restored
    assert not torch.allclose(saliency_scores(net, whole, "fisher")["0.weight"], saliency_scores(net, halves, "fisher")["0.weight"])


def test_diagonal_fisher_is_the_mean_over_batches_of_squared_mean_gradients():
    net = nn.Linear(1, 2, bias=False)
    nn.init.zeros_(net.weight)  # softmax is (1/2, 1/2), so d CE / d W = (p - onehot(y)) x
    batches = [(torch.tensor([[1.0], [3.0]]), torch.tensor([0, 0])), (torch.tensor([[4.0]]), torch.tensor([1]))]
    # batch 1: mean gradient (-1, 1), squared (1, 1); batch 2: (2, -2), squared (4, 4); mean (2.5, 2.5)
    assert diagonal_fisher(net, batches)["weight"].flatten().tolist() == [2.5, 2.5]


def test_ssd_dampens_only_weights_far_more_important_to_the_forget_set():
    forget = {"w": torch.tensor([4.0, 1.0, 0.0, 9.0])}
    full = {"w": torch.tensor([1.0, 1.0, 0.0, 0.5])}
    assert torch.allclose(ssd_dampening(forget, full, alpha=2.0, lam=1.0)["w"], torch.tensor([0.25, 1.0, 1.0, 0.5 / 9]))
    assert torch.allclose(ssd_dampening(forget, full, alpha=2.0, lam=8.0)["w"], torch.tensor([1.0, 1.0, 1.0, 4.0 / 9]))


def test_mask_summary_counts_per_tensor_and_overall():
    summary = mask_summary({"a": torch.tensor([True, False, False, False]), "b": torch.tensor([True, True])})
    assert summary == {"a": 0.25, "b": 1.0, "all": 0.5}


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.Adam(params, lr=0.1, weight_decay=0.1),
        lambda params: torch.optim.AdamW(params, lr=0.1, weight_decay=0.1),
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1),
    ],
)
def test_exact_freeze_keeps_unselected_weights_bit_identical(make_optimizer):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    masks = {"0.weight": torch.rand(5, 4) < 0.5, "2.bias": torch.tensor([True, False, True])}  # 0.bias and 2.weight fully frozen
    optimizer = make_optimizer(net.parameters())
    freeze = ExactFreeze(net, masks)
    freeze.attach(optimizer)
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(torch.randn(8, 4)), torch.randint(3, (8,))).backward()
        optimizer.step()
    after = net.state_dict()
    for name, value in after.items():
        keep = masks.get(name, torch.zeros_like(value, dtype=torch.bool))
        assert torch.equal(value[~keep], before[name][~keep]), name
        assert (value[keep] != before[name][keep]).all(), name
    freeze.detach()
    optimizer.step()  # detached: weight decay and momentum move everything again
    assert not torch.equal(net.state_dict()["2.weight"], before["2.weight"])


def _train_frozen_units(masks: dict[str, torch.Tensor], row_grads: bool, autocast: bool = False) -> tuple[dict[str, torch.Tensor], int]:
    """Five Adam steps of a SeedMLP under ``ExactFreeze(masks)``, with the frozen units' weight gradient skipped or, as
    autograd alone would, computed and masked; the final weights and the FLOPs of the last backward pass."""
    torch.manual_seed(0)
    net = SeedMLP()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=0.01)
    freeze = ExactFreeze(net, masks)
    if not row_grads:
        freeze.row_grads = []
    freeze.attach(optimizer)
    for _ in range(5):
        optimizer.zero_grad()
        x, y = torch.randn(32, 784), torch.randint(10, (32,))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = nn.functional.cross_entropy(net(x), y)
        with FlopCounterMode(display=False) as counter:
            loss.backward()
        optimizer.step()
    freeze.detach()
    return {k: v.clone() for k, v in net.state_dict().items()}, counter.get_total_flops()


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_frozen_units_cost_no_weight_gradient_and_change_no_bit(autocast):
    torch.manual_seed(1)
    first = torch.zeros(50, 784, dtype=torch.bool)
    first[1:16] = True  # 15 units train, 35 stay frozen: the masked reset's first layer
    first[0, :100] = True  # a partly frozen unit still gets its gradient, masked
    everything = {name: torch.ones_like(p, dtype=torch.bool) for name, p in SeedMLP().named_parameters()}
    masks = everything | {"features.1.weight": first, "features.3.weight": torch.rand(40, 50) < 0.5}
    skipped, skipped_flops = _train_frozen_units(masks, row_grads=True, autocast=autocast)
    computed, computed_flops = _train_frozen_units(masks, row_grads=False, autocast=autocast)
    for name in computed:
        assert torch.equal(skipped[name], computed[name]), name
    # the first layer's weight gradient is 2·32·784 FLOPs a row; 34 rows of it are never computed, and every other
    # layer (no whole row of features.3 frozen: each keeps some of its weights) costs what it did
    assert computed_flops - skipped_flops == 34 * 2 * 32 * 784


def test_exact_freeze_detached_gives_the_linear_layers_their_own_forward_back():
    net = SeedMLP()
    freeze = ExactFreeze(net, {"features.1.weight": torch.zeros(50, 784, dtype=torch.bool)})
    freeze.attach(torch.optim.SGD(net.parameters(), lr=0.1))
    assert [module for module, _ in freeze.row_grads] == [m for m in net.modules() if isinstance(m, nn.Linear)]  # unmasked: frozen whole
    assert "forward" in net.features[1].__dict__
    freeze.detach()
    assert not any("forward" in m.__dict__ for m in net.modules())


def test_exact_freeze_rejects_masks_for_parameters_the_net_lacks():
    with pytest.raises(ValueError, match="head.weight"):
        ExactFreeze(nn.Linear(2, 2), {"head.weight": torch.ones(2, 2, dtype=torch.bool)})


def test_specificity_divides_forget_by_retain_importance_and_floors_unused_weights():
    forget = {"w": torch.tensor([4.0, 1.0, 3.0])}
    retain = {"w": torch.tensor([2.0, 0.5, 0.0])}  # the last weight serves no retain sample: as specific as the smallest retain use allows
    assert specificity(forget, retain)["w"].tolist() == [2.0, 2.0, 6.0]


def test_unit_mask_takes_whole_first_layer_units_by_their_summed_score():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    scores = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    scores["0.weight"][2] = 5.0
    scores["0.bias"][0] = 9.0
    scores["2.weight"][:] = 100.0  # later layers never count
    assert weight_unit_scores(net, scores).tolist() == [9.0, 0.0, 15.0, 0.0]
    masks = unit_mask(net, weight_unit_scores(net, scores), 0.5)
    assert masks["0.weight"].all(1).tolist() == [True, False, True, False] and not masks["0.weight"][[1, 3]].any()
    assert masks["0.bias"].tolist() == [True, False, True, False] and not masks["2.weight"].any() and not masks["2.bias"].any()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        unit_mask(net, weight_unit_scores(net, scores), 0.0)
    with pytest.raises(UsageError, match="3 unit scores for a layer of 4 units"):
        unit_mask(net, torch.ones(3), 0.5)


def test_unit_selectivity_finds_units_that_fire_for_the_class_or_fall_silent_for_it():
    retain = torch.tensor([[1.0, 2.0, 0.0, 5.0], [3.0, 2.0, 2.0, 7.0]])  # means 2, 2, 1, 6; stds 1.41, 0, 1.41, 1.41
    forget = torch.tensor([[2.0, 9.0, 1.0, 0.0], [2.0, 9.0, 1.0, 0.0]])  # unit 1 fires for the class, unit 3 falls silent
    selectivity = unit_selectivity(forget, retain)
    assert selectivity[0] == 0 and selectivity[2] == 0  # same mean: no detector, however spread
    assert selectivity[1] > 1e6 and selectivity[3] == pytest.approx(6 / 2**0.5)  # no spread at all counts as sharpest


def test_class_selectivity_also_counts_what_tells_the_forget_classes_apart_from_each_other():
    retain = torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])  # means 1, std 1.41 on every unit
    forget = torch.tensor([[1.0, 0.0, 5.0], [1.0, 0.0, 5.0], [1.0, 2.0, 5.0], [1.0, 2.0, 5.0]])
    labels = torch.tensor([3, 3, 5, 5])  # unit 1 sets 3 apart from 5 and neither from the retain samples
    one = class_selectivity(forget[:2], labels[:2], retain, [3])
    assert torch.equal(one, unit_selectivity(forget[:2], retain))  # one class: its selectivity against the retain samples
    two = class_selectivity(forget, labels, retain, [3, 5])
    assert two[0] == 0 and two[1] > 1e6 and two[2] == pytest.approx(4 / 2**0.5)


def test_unit_activations_are_one_number_per_unit_after_each_activation():
    torch.manual_seed(0)
    mlp = SeedMLP()
    x = torch.randn(6, 1, 28, 28)
    first, second = unit_activations(mlp, x, layers=2, batch_size=4)
    assert torch.equal(first, torch.relu(mlp.features[1](x.flatten(1)))) and torch.equal(second, torch.relu(mlp.features[3](first)))
    cnn = LeNet()
    (acts,) = unit_activations(cnn, x)
    assert acts.shape == (6, 16) and torch.allclose(acts, torch.relu(cnn.features[0](x)).mean((2, 3)))
    assert not mlp.features[1]._forward_hooks  # the hooks are gone after


def test_recording_units_keeps_the_activations_of_every_pass_in_order_and_lets_go_after():
    """What a Fisher's passes record is what :func:`unit_activations` would compute for the same samples."""
    torch.manual_seed(0)
    x = torch.randn(7, 1, 28, 28)
    for net, layers in ((SeedMLP(), 3), (LeNet(), 2)):
        with recording_units(net, layers) as recorded:
            net(x[:3]).sum().backward()  # with gradients, as the Fisher runs
            net(x[3:])
            assert recorded == []  # filled on exit
        assert [r.shape for r in recorded] == [a.shape for a in unit_activations(net, x, layers)]
        assert all(torch.allclose(r, a, atol=1e-5) and not r.requires_grad for r, a in zip(recorded, unit_activations(net, x, layers)))
        assert not any(m._forward_hooks for m in net.modules())


def test_unit_activations_read_a_dropout_network_in_eval_mode_and_leave_its_mode_as_it_was():
    """Ranked in train mode, a dropout network's units would be ranked on one draw of dropout masks: the ranking of
    the Fisher's recorded passes (eval mode) and this one would then differ."""
    torch.manual_seed(0)
    net, x = RetrainMLP(), torch.randn(64, 1, 28, 28)
    expected = unit_activations(net.eval(), x, layers=2)
    net.train()
    assert all(torch.equal(a, b) for a, b in zip(unit_activations(net, x, layers=2), expected)) and net.training
    with recording_units(net, 2) as recorded:
        diagonal_fisher(net, [(x, torch.zeros(64, dtype=torch.long))])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(recorded, expected)) and net.training


def test_unit_mask_of_a_later_layer_takes_its_rows():
    net = SeedMLP()
    masks = unit_mask(net, torch.arange(40.0), 0.25, layer=1)
    assert masks["features.3.weight"].all(1).nonzero().flatten().tolist() == list(range(30, 40))
    assert masks["features.3.bias"].sum() == 10 and sum(int(m.sum()) for m in masks.values()) == 10 * 50 + 10


def test_units_keeping_frozen_drops_the_least_scored_units_of_the_layers_with_frozen_weights_alone():
    """SeedMLP (43 350 weights, 785 a first-layer unit) with its later layers training whole: a frozen half needs 28 of
    the first layer's 50 units kept, so of 26 asked for, its 22 best-scored are reset, while the later layers keep theirs."""
    net = SeedMLP()
    scores = [torch.randperm(width, generator=torch.Generator().manual_seed(width)).float() for width in (50, 40, 30, 20)]
    later = last_layers_mask(net, 4)
    asked, share = units_keeping_frozen(net, scores, 0.52, later, None)  # no floor: every layer takes its 52%
    assert share == 0.52 and asked[0]["features.1.weight"].all(1).sum() == 26
    units, share = units_keeping_frozen(net, scores, 0.52, later, 0.5)
    first = units[-1]["features.1.weight"].all(1)  # the capped layers come last
    assert share == 22 / 50 and first.sum() == 22
    assert torch.equal(first, scores[0] >= 28)  # the top 22 of the ranking (scores 0-49): the least scored dropped first
    assert [torch.equal(u[k], a[k]) for u, a in zip(units, asked[1:]) for k in a] == [True] * (3 * len(later))  # later layers as asked
    assert 0.5 <= frozen_share(union(later, *units)) < 0.5 + 785 / 43_350  # the largest reset that keeps the half
    assert units_keeping_frozen(net, scores, 0.3, later, 0.5)[1] == 0.3  # 15 units leave 64% frozen: nothing to cut
    with pytest.raises(ValueError, match=r"already leave 0.0% frozen, under min_frozen 0.5"):
        units_keeping_frozen(net, scores, 0.3, last_layers_mask(net, 5), 0.5)


def test_reinitialize_draws_the_layers_own_init_into_the_masked_entries_only():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    masks = {name: torch.rand_like(p) < 0.3 for name, p in net.named_parameters()}
    rng = torch.get_rng_state()
    reinitialize(net, masks, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
    torch.manual_seed(7 + RESET_SEED_OFFSET)
    fresh = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).state_dict()  # what reset_parameters draws
    torch.manual_seed(7)
    born = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).state_dict()  # a net a run seeded with 7 starts from
    for name, value in net.state_dict().items():
        assert torch.equal(value[masks[name]], fresh[name][masks[name]]), name
        assert torch.equal(value[~masks[name]], before[name][~masks[name]]), name
        assert not masks[name].any() or not torch.equal(value[masks[name]], born[name][masks[name]]), name  # not the run's own init
    again = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    again.load_state_dict(before)
    reinitialize(again, masks, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values()))  # the same on every rank


def test_per_class_share_compounds_and_keeps_one_class_exact():
    assert per_class_share(0.25, 1) == 0.25
    assert per_class_share(0.25, 2) == pytest.approx(0.4375)
    assert per_class_share(0.5, 3) == pytest.approx(0.875) and per_class_share(1.0, 2) == 1.0
    with pytest.raises(ValueError, match="at least one class"):
        per_class_share(0.25, 0)


def test_unchanged_share_counts_entries_equal_bit_for_bit():
    before = {"w": torch.tensor([0.0, 1.0, 2.0, 3.0]), "b": torch.tensor([5.0])}
    after = {"w": torch.tensor([-0.0, 1.0, 2.5, 3.0]), "b": torch.tensor([5.0])}  # -0.0 == 0.0, but not bit for bit
    assert unchanged_share(before, after) == 3 / 5 and unchanged_share(before, before) == 1
    with pytest.raises(ValueError, match=r"different tensors: \['b'\]"):
        unchanged_share(before, {"w": after["w"]})
    with pytest.raises(ValueError, match=r"w: shape \(4,\) against \(2,\)"):
        unchanged_share(before, {"w": torch.zeros(2), "b": after["b"]})


def test_a_fisher_of_some_parameters_costs_no_gradient_of_the_others_and_equals_the_whole_ones_entries():
    """The reset's ranking needs the later layers' Fishers alone: autograd then never computes the first layer's weight
    gradient (nor the gradient its output gets back), and what it computes is the whole Fisher's, bit for bit."""
    torch.manual_seed(0)
    net, x, y = SeedMLP(), torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    later = [name for name, _ in net.named_parameters() if not name.startswith("features.1.")]
    with FlopCounterMode(display=False) as whole:
        full = diagonal_fisher(net, batches)
    with FlopCounterMode(display=False) as part:
        some = diagonal_fisher(net, batches, later)
    assert list(some) == later and all(torch.equal(some[name], full[name]) for name in later)
    # per batch of 32: the first layer's weight gradient (2·32·784·50) and its output's gradient (2·32·40·50)
    assert whole.get_total_flops() - part.get_total_flops() == 2 * (2 * 32 * 784 * 50 + 2 * 32 * 40 * 50)

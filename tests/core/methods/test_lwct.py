import copy

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from squeezer.core.artifacts.sqz import encode_state, round_for_storage
from squeezer.core.config import AccuracyTarget, CompressConfig, LwctConfig
from squeezer.core.errors import Cancelled
from squeezer.core.methods.lwct import (
    build_working_module,
    compress_lwct,
    global_magnitude_masks,
    initial_sigma,
    learned_sigmas,
    materialize,
    prunable_layers,
    rank_layers,
    shadow_state,
    working_weights,
)
from squeezer.core.train import STEP_RULE, fit, optimizer_for

pytestmark = pytest.mark.slow  # trains models: in the full suite, not the fast tier


def _blobs(n=256, features=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, features, generator=g), y


def test_sigma_sgd_keeps_weights_ternary_within_mask_and_learns_sigma():
    torch.manual_seed(0)
    x, y = _blobs()
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    masks = {name: torch.rand_like(layer.weight) > 0.5 for name, layer in prunable_layers(model).items()}
    mask = masks["0"]
    sigma0 = initial_sigma(model[0].weight, mask)
    working = build_working_module(model, shadow_state(model), masks, {"0": None})
    shadow_before = shadow_state(working)

    fit(working, x, y, epochs=2, lr=0.05, batch_size=32, seed=0)

    sigma = learned_sigmas(working)["0"]
    weights, shadow = working_weights(working), shadow_state(working)
    assert sigma != pytest.approx(sigma0)
    assert torch.all(weights["0"][~mask] == 0) and torch.all(shadow["0.weight"][~mask] == 0)
    assert torch.allclose(weights["0"][mask].abs(), torch.tensor(sigma))
    assert not torch.equal(shadow["0.weight"], shadow_before["0.weight"])
    assert torch.all(weights["2"][~masks["2"]] == 0)  # the float layer stays pruned
    assert not torch.equal(weights["2"], shadow_before["2.weight"]) and torch.equal(weights["2"], shadow["2.weight"])


def test_constrained_weights_have_the_gradients_of_the_composed_ops():
    """The step rule's straight-through gradients against the same maths written as differentiable tensor ops."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.Linear(8, 3))
    masks = {name: torch.rand_like(layer.weight) > 0.4 for name, layer in prunable_layers(model).items()}
    working = build_working_module(model, shadow_state(model), masks, {"0": None, "3": 0.2})
    x, target = torch.randn(5, 2, 6, 6), torch.randint(0, 3, (5,))
    nn.functional.cross_entropy(working(x), target).backward()
    optimizer_for(working, lr=0.0, momentum=0.0, weight_decay=0.0).step()  # the rule moves the gradients

    layers, state, steps = prunable_layers(working), working.state_dict(), working.__dict__[STEP_RULE]
    shadows = {
        name: state.get(f"{name}.lwct_shadow", layer.weight).detach().clone().requires_grad_()
        for name, layer in layers.items()
    }
    sigmas = {name: state[f"{name}.lwct_sigma"].clone().requires_grad_() for name in ("0", "3")}
    reference = copy.deepcopy(model)
    for name, layer in prunable_layers(reference).items():
        masked = shadows[name] * masks[name].float()
        if name in sigmas:  # the value of σ·sign(W), the gradient of W⊙m to W
            masked = torch.sign(shadows[name].detach()) * sigmas[name].abs() + masked - masked.detach()
        del layer.weight
        layer.weight = masked
    nn.functional.cross_entropy(reference(x), target).backward()
    kept = {name: masks[name].flatten().nonzero().squeeze(1) for name in sigmas}
    constrained_grads = dict(zip(steps.names, steps.shadow.grad.split([len(k) for k in steps.kept]), strict=True))
    for name, layer in layers.items():
        if name in sigmas:  # W's gradient at the kept positions (the pruned ones get none), σ's averaged over them
            assert layer.weight.grad is None  # a computed weight is never stepped itself
            assert torch.allclose(constrained_grads[name], shadows[name].grad.flatten()[kept[name]], atol=1e-6)
            sigma_grad = steps.sigma.grad[steps.names.index(name)]
            assert torch.allclose(sigma_grad, sigmas[name].grad / len(kept[name]), rtol=1e-4)
        else:
            assert torch.allclose(layer.weight.grad, shadows[name].grad, atol=1e-6)


def test_constrained_weights_follow_their_parameters_through_a_step_a_rollback_and_a_copy():
    torch.manual_seed(0)
    x, y = _blobs()
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    masks = {name: torch.rand_like(layer.weight) > 0.5 for name, layer in prunable_layers(model).items()}
    working = build_working_module(model, shadow_state(model), masks, {"0": None, "2": None})

    def computed(module):
        state = module.state_dict()
        return {name: torch.sign(state[f"{name}.lwct_shadow"]) * state[f"{name}.lwct_sigma"].abs() for name in masks}

    start = copy.deepcopy(working.state_dict())
    fit(working, x, y, epochs=1, lr=0.05, batch_size=32, seed=0)
    trained = {name: weight.clone() for name, weight in working_weights(working).items()}
    assert all(torch.equal(trained[name], weight) for name, weight in computed(working).items())
    working.load_state_dict(start)  # core.train.fit_guarded's rollback
    assert all(torch.equal(working_weights(working)[name], weight) for name, weight in computed(working).items())
    assert not torch.equal(working_weights(working)["0"], trained["0"])
    incomplete = {key: value for key, value in start.items() if key != "0.lwct_sigma"}
    assert working.load_state_dict(incomplete, strict=False).missing_keys == ["0.lwct_sigma"]
    twin = copy.deepcopy(working)
    fit(twin, x, y, epochs=1, lr=0.05, batch_size=32, seed=0)  # trains the copy's own layers, not the original's
    assert all(torch.equal(working_weights(twin)[name], trained[name]) for name in trained)
    assert all(torch.equal(working_weights(working)[name], weight) for name, weight in computed(working).items())


def test_constrained_channels_last_weights_train_in_place():
    """The rule writes a constrained weight's kept positions through a flat view, which a channels-last weight has
    not: it is laid out again, and still trains."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(64, 3)).to(memory_format=torch.channels_last)
    masks = {name: torch.rand_like(layer.weight) > 0.5 for name, layer in prunable_layers(model).items()}
    working = build_working_module(model, shadow_state(model), masks, {"0": None})
    x, y = torch.randn(64, 2, 6, 6), torch.randint(0, 3, (64,))
    before = working_weights(working)["0"].clone()
    fit(working, x, y, epochs=2, lr=0.05, batch_size=16, seed=0)
    weight, sigma = working_weights(working)["0"], learned_sigmas(working)["0"]
    assert not torch.equal(weight, before)
    assert torch.all(weight[~masks["0"]] == 0) and torch.allclose(weight[masks["0"]].abs(), torch.tensor(sigma))


def test_global_threshold_hits_requested_sparsity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 64), nn.Linear(64, 10))
    weights = {name: layer.weight for name, layer in prunable_layers(model).items()}
    total = sum(w.numel() for w in weights.values())
    for sparsity in (0.5, 0.9, 0.97):
        masks = global_magnitude_masks(weights, sparsity)
        pruned = sum(int((~m).sum()) for m in masks.values())
        assert pruned / total == pytest.approx(sparsity, abs=0.005)
    per_layer = {n: 1 - float(m.float().mean()) for n, m in global_magnitude_masks(weights, 0.9).items()}
    assert len({round(s, 2) for s in per_layer.values()}) > 1  # one global threshold, non-homogeneous per layer


def test_ranking_follows_intra_layer_sparsity():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10), nn.Linear(10, 10))
    with torch.no_grad():
        for layer, scale in zip(model, (1.0, 0.1, 0.5), strict=False):
            layer.weight.copy_(torch.randn(10, 10) * scale)
    masks = global_magnitude_masks({n: layer.weight for n, layer in prunable_layers(model).items()}, 0.6)
    sparsities = {n: 1 - float(m.float().mean()) for n, m in masks.items()}
    ranking = rank_layers("sparsity", sparsities, {n: 100 for n in masks})
    assert ranking == ["0", "2", "1"]  # least sparse = most significant first
    assert rank_layers("size", sparsities, {"0": 300, "1": 10, "2": 20}) == ["1", "2", "0"]
    assert rank_layers("sensitivity", sparsities, {n: 1 for n in masks}, {"0": 0.5, "1": 4.0, "2": 1.0}) == [
        "1",
        "2",
        "0",
    ]


def test_fit_raises_cancelled_when_asked_to_stop():
    x, y = _blobs()
    calls = []

    def stop_on_third_step():
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(Cancelled):
        fit(nn.Linear(16, 4), x, y, epochs=5, lr=0.01, batch_size=32, should_stop=stop_on_third_step)
    assert len(calls) == 3


def test_fit_is_deterministic_on_cpu():
    x, y = _blobs()
    states = []
    for _ in range(2):
        torch.manual_seed(1)
        model = nn.Linear(16, 4)
        fit(model, x, y, epochs=2, lr=0.05, batch_size=32, seed=7, max_samples=128)
        states.append(model.weight.detach().clone())
    assert torch.equal(*states)


def _quick_config(max_drop: float = 1.0, **lwct) -> CompressConfig:
    settings = {"sparsity_grid": [0.5, 0.8, 0.9], "prune_epochs": 2, "epochs_per_step": 2, "lr": 0.02, **lwct}
    return CompressConfig(device="cpu", target=AccuracyTarget(max_drop=max_drop), lwct=LwctConfig(**settings))


def test_lwct_on_digits_meets_one_point_budget_quickly(digits_model, digits):
    events = []
    result = compress_lwct(digits_model, digits, _quick_config(), on_event=events.append)

    assert result.target_met and result.baseline_accuracy - result.accuracy <= 1.0
    steps = [e for e in events if e.stage == "step"]
    assert len(steps) == len(result.trials) and {"step", "accuracy", "compression_ratio", "accepted", "layers"} <= set(
        steps[0].data
    )
    assert all(0 <= e.fraction <= 1 for e in events)
    best = max(t.compression_ratio for t in result.trials if t.accepted)
    assert best > 10
    ternary = [layer for layer in result.layers if layer.representation == "ternary"]
    assert ternary
    weights = dict(result.module.named_modules())
    for layer in ternary:
        values = weights[layer.name].weight.detach().abs().unique()
        assert set(values.tolist()) <= {0.0, torch.tensor(layer.sigma, dtype=torch.float32).item()}


def test_lwct_stops_with_cancelled(digits_model, digits):
    calls = []

    def stop_after_ten_steps():
        calls.append(1)
        return len(calls) > 10

    with pytest.raises(Cancelled):
        compress_lwct(digits_model, digits, _quick_config(), should_stop=stop_after_ten_steps)


def test_lwct_resumes_from_checkpoint(digits_model, digits, tmp_path):
    stop = []
    first_events = []

    def on_event(event):
        first_events.append(event)
        if event.stage == "checkpoint" and len([e for e in first_events if e.stage == "checkpoint"]) == 2:
            stop.append(True)  # stop once the first ternary step has been checkpointed

    with pytest.raises(Cancelled):
        compress_lwct(
            digits_model,
            digits,
            _quick_config(),
            on_event=on_event,
            should_stop=lambda: bool(stop),
            checkpoint_dir=tmp_path,
        )
    checkpoints = [e for e in first_events if e.stage == "checkpoint"]
    assert checkpoints and (tmp_path / "lwct.json").exists()
    assert not [e for e in first_events if str(tmp_path) in e.message + repr(e.data)]  # no server path in an event
    done_steps = len([e for e in first_events if e.stage == "step"])

    second_events = []
    result = compress_lwct(
        digits_model, digits, _quick_config(), on_event=second_events.append, checkpoint_dir=tmp_path
    )
    assert not [e for e in second_events if e.stage == "prune"]
    assert any(e.stage == "checkpoint" and "resumed" in e.message for e in second_events)
    assert [t.step for t in result.trials] == list(range(1, len(result.trials) + 1))
    assert len(result.trials) > done_steps - 1
    assert result.target_met


def test_float_layers_are_rounded_to_their_stored_precision_unless_out_of_its_range():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with torch.no_grad():
        base[2].weight[0, 0] = 1e6  # beyond float16's largest value
    masks = {name: torch.ones_like(layer.weight, dtype=torch.bool) for name, layer in prunable_layers(base).items()}
    working = build_working_module(base, shadow_state(base), masks, {})
    plain = materialize(working, base, "float16")
    assert torch.equal(plain[0].weight, base[0].weight.half().float())
    assert not torch.equal(plain[0].weight, base[0].weight)
    assert torch.equal(plain[2].weight, base[2].weight)  # kept float32 rather than turned infinite
    assert torch.equal(plain[0].bias, base[0].bias.half().float())  # biases in float16 too
    assert torch.equal(materialize(working, base)[0].weight, base[0].weight)
    assert torch.equal(materialize(working, base)[0].bias, base[0].bias)  # float32 storage: biases too
    codes = materialize(working, base, "int8")[0].weight / (base[0].weight.abs().max() / 127)
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.abs().max() <= 127.001  # on one int8 grid


def test_group_walk_needs_fewer_stages_than_the_layer_walk(digits_model, digits):
    """With a budget every layer fits in, the layer walk trains one stage per layer, the group walk 1 + 2 + 2."""
    results = {}
    for walk in ("layer", "group"):
        config = _quick_config(walk=walk, sparsity=0.5, prune_epochs=1, epochs_per_step=1, min_steps_per_stage=0)
        config.target.max_drop = 100.0
        results[walk] = compress_lwct(digits_model, digits, config)
    stages = {walk: [t.layers for t in result.trials if t.stage == "ternary"] for walk, result in results.items()}
    assert len(stages["layer"]) == 5 and all(len(layers) == 1 for layers in stages["layer"])
    assert [len(layers) for layers in stages["group"]] == [1, 2, 2]
    assert sum(stages["group"], []) == sum(stages["layer"], [])  # the same layers, in the same order
    for result in results.values():
        assert {layer.representation for layer in result.layers} == {"ternary"}


@pytest.mark.parametrize(
    ("group_training", "epochs"),
    [("sqrt", [2, 3, 3]), ("linear", [2, 4, 4]), ("paced", [2, 2, 2])],
)
def test_a_group_stage_trains_longer_the_more_layers_it_constrains(digits_model, digits, group_training, epochs):
    """Groups of 1, 2 and 2 layers at 2 epochs per single-layer stage: 2·√n epochs rounded up (sqrt) or 2·n (linear);
    paced stops after its first round, which a 100-point budget always paces."""
    config = _quick_config(sparsity=0.5, prune_epochs=1, min_steps_per_stage=0, group_training=group_training)
    config.target.max_drop = 100.0
    events = []
    compress_lwct(digits_model, digits, config, on_event=events.append)
    stages = []
    for event in events:
        if event.stage == "train" and "layers" in event.data:
            stages.append(0)
        elif event.stage == "train" and "epoch" in event.data:
            stages[-1] = event.data["epoch"]
    assert stages == epochs


def test_a_paced_group_stage_trains_until_it_keeps_its_share_of_the_budget(digits_model, digits):
    """With no budget left to share, a paced stage of n layers runs all n rounds unless one recovers the accuracy it
    started from: every round before the last is behind the pace, the last is on it or the n-th."""
    config = _quick_config(max_drop=0.0, sparsity=0.5, prune_epochs=1, min_steps_per_stage=0, group_training="paced")
    events = []
    compress_lwct(digits_model, digits, config, on_event=events.append)
    stages: list[tuple[int, list]] = []
    for event in events:
        if event.stage == "train" and "layers" in event.data:
            stages.append((len(event.data["layers"]), []))
        elif event.stage == "train" and "round" in event.data:
            stages[-1][1].append(event.data)
    grouped = [(size, rounds) for size, rounds in stages if size > 1]
    assert grouped, "the walk tried at least one group"
    for size, rounds in grouped:
        assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1)) and len(rounds) <= size
        assert all(r["accuracy"] < r["pace"] for r in rounds[:-1])
        assert rounds[-1]["accuracy"] >= rounds[-1]["pace"] or len(rounds) == size


def test_a_pruned_layer_packs_only_its_kept_weights(digits_model, digits):
    """A pruned weight is +0.0 in the result (W·0 would leave −0.0 where W < 0, which packs as a kept value and once
    doubled the reference's file), so each sparse layer's packed index holds at most its kept weights."""
    result = compress_lwct(digits_model, digits, _quick_config(3.0, min_steps_per_stage=0))
    pruned = [layer for layer in result.layers if layer.sparsity > 0]
    assert pruned
    representations = {f"{layer.name}.weight": (layer.representation, layer.sigma) for layer in result.layers}
    encoded = encode_state(result.module.state_dict(), representations)
    for layer in pruned:
        entry, _ = encoded[f"{layer.name}.weight"]
        kept = round((1 - layer.sparsity) * layer.params)
        assert entry["enc"] in ("sparse", "ternary") and entry["nnz"] <= kept, (layer.name, entry, kept)


def test_options_that_lost_their_experiment_are_refused_by_name():
    """lwct.tighten and group_training=fixed are gone: asking for them is a validation error naming them, while the
    default tighten=false that stored dumps of a config hold changes nothing."""
    with pytest.raises(ValidationError, match="lwct.tighten was removed"):
        LwctConfig(tighten=True)
    with pytest.raises(ValidationError, match="group_training=fixed was removed"):
        CompressConfig(lwct={"group_training": "fixed"})
    assert LwctConfig(tighten=False) == LwctConfig()
    assert "tighten" not in LwctConfig.model_fields and "tighten" not in LwctConfig().model_dump()


def test_grid_search_puts_float_layers_on_coarser_grids_within_the_budget(digits_model, digits):
    """The two most significant layers stay float (preserve=2); after the walk each tries int4 … int7 by evaluation
    alone, then the biases try int4 … int8 together (they are float16), and the result keeps a coarser grid only
    within the budget and packs smaller than int8 storage."""
    config = _quick_config(3.0, preserve=2, min_steps_per_stage=0)
    result = compress_lwct(digits_model, digits, config)
    grid_trials = [t for t in result.trials if t.stage == "grid"]
    assert [t.stage for t in result.trials[-len(grid_trials) :]] == ["grid"] * len(grid_trials)
    assert all(t.accepted for t in grid_trials) and len(grid_trials) == 2
    assert result.target_met and result.baseline_accuracy - result.accuracy <= 3.0
    assert result.accuracy == result.trials[-1].accuracy
    assert grid_trials[1].compression_ratio > grid_trials[0].compression_ratio
    coarsened = set(grid_trials[0].layers)
    floats = {layer.name: layer for layer in result.layers if layer.representation != "ternary"}
    assert coarsened and coarsened <= set(floats)
    weights = dict(result.module.named_modules())
    for name in coarsened:
        assert len(weights[name].weight.detach().abs().unique()) <= 64  # on int7's grid or coarser (0 included)
    for name in grid_trials[1].layers:  # biases on an int8 grid or coarser: codes times one scale
        bias = weights[name].bias.detach()
        assert round_for_storage(bias, "int8").equal(bias) or len(bias.abs().unique()) <= 64, name

    int8_only = compress_lwct(
        digits_model, digits, config.model_copy(update={"lwct": config.lwct.model_copy(update={"grid_search": False})})
    )
    assert "grid" not in {t.stage for t in int8_only.trials}
    assert result.trials[-1].compression_ratio > int8_only.trials[-1].compression_ratio
    assert sum(floats[n].bits for n in coarsened) < sum(
        layer.bits for layer in int8_only.layers if layer.name in coarsened
    )


def test_a_grad_scaler_unscales_before_the_step_rule_moves_the_gradients():
    """fit's mixed-precision path (CUDA) steps through a GradScaler; the rule must see unscaled gradients."""
    torch.manual_seed(0)
    x, y = _blobs(n=64)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    masks = {name: torch.rand_like(layer.weight) > 0.5 for name, layer in prunable_layers(model).items()}
    trained = []
    for scale in (None, 2.0**12):
        working = build_working_module(model, shadow_state(model), masks, {"0": None})
        optimizer = optimizer_for(working, lr=0.05, momentum=0.9, weight_decay=0.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale or 1.0, enabled=scale is not None)
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(nn.functional.cross_entropy(working(x), y)).backward()
            scaler.step(optimizer)
            scaler.update()
        trained.append((shadow_state(working), learned_sigmas(working)))
    (plain_state, plain_sigmas), (scaled_state, scaled_sigmas) = trained
    assert all(torch.allclose(plain_state[key], scaled_state[key], atol=1e-6) for key in plain_state)
    assert scaled_sigmas["0"] == pytest.approx(plain_sigmas["0"], rel=1e-5)

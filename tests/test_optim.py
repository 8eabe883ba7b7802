"""Tests for cnnlab.optim: Keras-3 update rules against hand-written numpy, schedules, state, errors."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from cnnlab import optim, optim_specs
from cnnlab.errors import CnnlabError
from cnnlab.optim import (
    OPTIMIZER_DEFAULTS,
    REGULARIZER_DEFAULTS,
    SCHEDULE_DEFAULTS,
    get_optimizer,
    get_regularizer,
    get_schedule,
    regularization_loss,
)

STEPS = 4
SHAPE = (2, 3)


def _gradients(n: int = STEPS) -> list[np.ndarray]:
    """Fixed gradients of changing size and sign, so amsgrad, Adamax's max and momentum all matter."""
    rng = np.random.default_rng(7)
    scales = [3.0, 1.0, 0.25, 2.0, 0.5, 1.5]
    return [rng.normal(size=SHAPE) * scales[i % len(scales)] for i in range(n)]


W0 = np.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]])


# ---------------------------------------------------------------------------------------------------
# Keras 3 reference formulas in plain numpy (written from keras/src/optimizers/*.py, not from optim.py)
# ---------------------------------------------------------------------------------------------------

def ref_rmsprop(w, grads, lrs, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):
    velocity, buffer, average = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        velocity = rho * velocity + (1 - rho) * g * g
        if centered:
            average = rho * average + (1 - rho) * g
            denominator = velocity - average * average + epsilon
        else:
            denominator = velocity + epsilon
        increment = lr * g / np.sqrt(denominator)
        if momentum > 0:
            buffer = momentum * buffer + increment
            w = w - buffer
        else:
            w = w - increment
    return w


def ref_sgd(w, grads, lrs, momentum=0.0, nesterov=False):
    m = np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        if momentum == 0:
            w = w - lr * g
            continue
        m = momentum * m - lr * g
        w = w + (momentum * m - lr * g if nesterov else m)
    return w


def ref_adam(w, grads, lrs, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, weight_decay=None):
    m, v, v_hat = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        if weight_decay is not None:
            w = w - w * weight_decay * lr
        alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        m = m + (g - m) * (1 - beta_1)
        v = v + (g * g - v) * (1 - beta_2)
        if amsgrad:
            v_hat = np.maximum(v_hat, v)
            w = w - m * alpha / (np.sqrt(v_hat) + epsilon)
        else:
            w = w - m * alpha / (np.sqrt(v) + epsilon)
    return w


def ref_adamw(w, grads, lrs, weight_decay=0.004, **kwargs):
    return ref_adam(w, grads, lrs, weight_decay=weight_decay, **kwargs)


def ref_nadam(w, grads, lrs, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    m, v, u_product = np.zeros_like(w), np.zeros_like(w), 1.0
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        u_t = beta_1 * (1.0 - 0.5 * 0.96**t)
        u_t_1 = beta_1 * (1.0 - 0.5 * 0.96 ** (t + 1))
        u_product = u_product * u_t
        u_product_t_1 = u_product * u_t_1
        m = m + (g - m) * (1 - beta_1)
        v = v + (g * g - v) * (1 - beta_2)
        m_hat = u_t_1 * m / (1 - u_product_t_1) + (1 - u_t) * g / (1 - u_product)
        v_hat = v / (1 - beta_2**t)
        w = w - m_hat * lr / (np.sqrt(v_hat) + epsilon)
    return w


def ref_adamax(w, grads, lrs, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    m, u = np.zeros_like(w), np.zeros_like(w)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = m + (g - m) * (1 - beta_1)
        u = np.maximum(beta_2 * u, np.abs(g))
        w = w - lr * m / ((1 - beta_1**t) * (u + epsilon))
    return w


REFERENCES = {
    "rmsprop": ref_rmsprop, "sgd": ref_sgd, "adam": ref_adam, "adamw": ref_adamw,
    "nadam": ref_nadam, "adamax": ref_adamax,
}

NON_DEFAULT = [
    {"name": "rmsprop", "momentum": 0.8},
    {"name": "rmsprop", "centered": True},
    {"name": "rmsprop", "centered": True, "momentum": 0.5, "rho": 0.5, "epsilon": 1e-3},
    {"name": "sgd", "momentum": 0.9},
    {"name": "sgd", "momentum": 0.9, "nesterov": True, "learning_rate": 0.1},
    {"name": "sgd", "nesterov": True},
    {"name": "adam", "amsgrad": True},
    {"name": "adam", "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3, "learning_rate": 0.01},
    {"name": "adamw", "weight_decay": 0.1, "learning_rate": 0.01, "amsgrad": True},
    {"name": "nadam", "beta_1": 0.8, "beta_2": 0.99},
    {"name": "adamax", "beta_2": 0.5, "epsilon": 1e-3},
]

INVERSE_TIME = {"name": "inverse_time", "initial": 0.001, "decay_steps": 1, "decay_rate": 0.001}


def _run(opt: torch.optim.Optimizer, w: torch.Tensor, grads: list[np.ndarray]) -> None:
    for g in grads:
        w.grad = torch.as_tensor(g, dtype=w.dtype).clone()
        opt.step()


def _keras_case(spec: dict, schedule=None, dtype=torch.float64) -> tuple[np.ndarray, np.ndarray]:
    """Return (our parameters, the numpy reference) after STEPS updates."""
    name = spec["name"]
    w = torch.nn.Parameter(torch.tensor(W0, dtype=dtype))
    opt = get_optimizer(spec, [w], schedule)
    grads = _gradients()
    hyper = {k: v for k, v in spec.items() if k not in ("name", "learning_rate", "flavour")}
    sched = get_schedule(schedule) if schedule is not None else None
    lrs = [sched(t) if sched else spec.get("learning_rate", OPTIMIZER_DEFAULTS[name]["learning_rate"])
           for t in range(STEPS)]
    _run(opt, w, grads)
    assert opt.iterations == STEPS
    return w.detach().numpy(), REFERENCES[name](W0.copy(), grads, lrs, **hyper)


@pytest.mark.parametrize("name", sorted(OPTIMIZER_DEFAULTS))
def test_keras_defaults_match_reference(name):
    ours, ref = _keras_case({"name": name})
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12)
    assert not np.allclose(ours, W0)


@pytest.mark.parametrize("spec", NON_DEFAULT, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_keras_non_defaults_match_reference(spec):
    ours, ref = _keras_case(spec)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPTIMIZER_DEFAULTS))
def test_keras_with_schedule_and_float32(name):
    schedule = {"name": "inverse_time", "initial": 0.01, "decay_steps": 1, "decay_rate": 0.5}
    ours, ref = _keras_case({"name": name}, schedule)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12)
    ours32, ref32 = _keras_case({"name": name}, schedule, dtype=torch.float32)
    np.testing.assert_allclose(ours32, ref32, rtol=1e-5, atol=1e-6)


def test_rmsprop_epsilon_sits_inside_the_square_root():
    g = 1e-4
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = get_optimizer("rmsprop", [w])
    w.grad = torch.full((1,), g, dtype=torch.float64)
    opt.step()
    inside = -0.001 * g / math.sqrt(0.1 * g * g + 1e-7)
    assert w.item() == pytest.approx(inside, rel=1e-12)
    assert w.item() != pytest.approx(-0.001 * g / (math.sqrt(0.1 * g * g) + 1e-7), rel=1e-2)


def test_every_optimizer_has_a_reference_and_non_default_case():
    assert set(REFERENCES) == set(OPTIMIZER_DEFAULTS)
    assert {spec["name"] for spec in NON_DEFAULT} == set(OPTIMIZER_DEFAULTS)


def test_defaults_are_keras_3():
    assert OPTIMIZER_DEFAULTS["rmsprop"] == {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0,
                                             "epsilon": 1e-7, "centered": False, "flavour": "keras"}
    assert OPTIMIZER_DEFAULTS["sgd"]["learning_rate"] == 0.01
    assert OPTIMIZER_DEFAULTS["adamw"]["weight_decay"] == 0.004
    assert all(d["flavour"] == "keras" and "learning_rate" in d for d in OPTIMIZER_DEFAULTS.values())


# ---------------------------------------------------------------------------------------------------
# torch flavour
# ---------------------------------------------------------------------------------------------------

TORCH_TWINS = {
    "rmsprop": (torch.optim.RMSprop, {"momentum": 0.5, "centered": True},
                {"alpha": 0.9, "eps": 1e-7, "momentum": 0.5, "centered": True}),
    "nadam": (torch.optim.NAdam, {"beta_1": 0.8}, {"betas": (0.8, 0.999), "eps": 1e-7}),
    "adamax": (torch.optim.Adamax, {}, {"betas": (0.9, 0.999), "eps": 1e-7}),
    "sgd": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, {"momentum": 0.9, "nesterov": True}),
    "adam": (torch.optim.Adam, {"amsgrad": True}, {"betas": (0.9, 0.999), "eps": 1e-7, "amsgrad": True}),
    "adamw": (torch.optim.AdamW, {}, {"betas": (0.9, 0.999), "eps": 1e-7, "weight_decay": 0.004}),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZER_DEFAULTS))
def test_torch_flavour_equals_torch_optimizer(name):
    cls, ours_extra, torch_kwargs = TORCH_TWINS[name]
    schedule = get_schedule({"name": "exponential", "initial": 0.01, "decay_steps": 2, "decay_rate": 0.5})
    w_ours = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float32))
    w_twin = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float32))
    ours = get_optimizer({"name": name, "flavour": "torch", **ours_extra}, [w_ours], schedule)
    twin = cls([w_twin], lr=schedule(0), **torch_kwargs)
    assert isinstance(ours, cls)
    for step, g in enumerate(_gradients()):
        for group in twin.param_groups:
            group["lr"] = schedule(step)
        w_ours.grad = torch.as_tensor(g, dtype=torch.float32)
        w_twin.grad = torch.as_tensor(g, dtype=torch.float32)
        ours.step()
        twin.step()
    assert torch.equal(w_ours, w_twin)
    assert ours.iterations == STEPS
    assert ours.current_lr() == schedule(STEPS)


def test_torch_flavour_rejects_keys_without_torch_meaning():
    with pytest.raises(CnnlabError, match=r"optimizer\.rho: has no meaning for torch's 'adam'"):
        optim_specs.torch_kwargs("adam", {"rho": 0.9})
    with pytest.raises(CnnlabError, match=r"optimizer\.nesterov: torch's SGD needs momentum > 0"):
        w = torch.nn.Parameter(torch.ones(2))
        get_optimizer({"name": "sgd", "flavour": "torch", "nesterov": True}, [w])


# ---------------------------------------------------------------------------------------------------
# Optimizer + schedule, state
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flavour", optim.FLAVOURS)
def test_optimizer_follows_schedule(flavour):
    schedule = get_schedule({"name": "inverse_time", "initial": 0.1, "decay_steps": 1, "decay_rate": 0.5})
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = get_optimizer({"name": "sgd", "flavour": flavour}, [w], schedule)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert opt.iterations == 0 and opt.current_lr() == schedule(0)
    for k in range(1, 6):
        before = w.detach().clone()
        w.grad = g.clone()
        opt.step()
        assert opt.iterations == k
        torch.testing.assert_close(w.detach() - before, -schedule(k - 1) * g, rtol=1e-12, atol=0)
        assert opt.current_lr() == schedule(k)


def test_constant_learning_rate_without_schedule():
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = get_optimizer({"name": "sgd", "learning_rate": 0.25}, [w])
    w.grad = torch.ones(2, dtype=torch.float64)
    opt.step()
    opt.step()
    assert opt.current_lr() == 0.25
    torch.testing.assert_close(w.detach(), torch.full((2,), -0.5, dtype=torch.float64))


def _to_plain(state: dict) -> tuple[dict[str, torch.Tensor], str]:
    """Split a state dict the way a checkpoint does: tensors for safetensors, the rest as JSON."""
    tensors = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            assert isinstance(value, torch.Tensor), (key, type(value))
            tensors[f"{index}.{key}"] = value.clone()
    groups = json.dumps(state["param_groups"])  # raises on anything that is not plain data
    return tensors, groups


def _from_plain(tensors: dict[str, torch.Tensor], groups: str) -> dict:
    state: dict = {}
    for key, value in tensors.items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    return {"state": state, "param_groups": json.loads(groups)}


ROUND_TRIP = [
    {"name": "rmsprop", "momentum": 0.8, "centered": True},
    {"name": "nadam"},
    {"name": "adamax"},
    {"name": "sgd", "momentum": 0.9, "nesterov": True},
    {"name": "adam", "amsgrad": True},
    {"name": "adamw"},
]


@pytest.mark.parametrize("flavour", optim.FLAVOURS)
@pytest.mark.parametrize("name", sorted(OPTIMIZER_DEFAULTS))
def test_state_dict_round_trip_is_bit_identical(name, flavour):
    spec = {**next(s for s in ROUND_TRIP if s["name"] == name), "flavour": flavour}
    grads = _gradients(5)
    torch.manual_seed(0)
    start = torch.randn(3, 3)
    params_a = [torch.nn.Parameter(start.clone()), torch.nn.Parameter(torch.zeros(3))]
    opt_a = get_optimizer(spec, params_a, INVERSE_TIME)
    for g in grads[:3]:
        params_a[0].grad = torch.as_tensor(np.vstack([g, g[:1] * 2]), dtype=torch.float32)
        params_a[1].grad = torch.as_tensor(g[1], dtype=torch.float32)
        opt_a.step()
    saved = _to_plain(copy.deepcopy(opt_a.state_dict()))
    params_b = [torch.nn.Parameter(p.detach().clone()) for p in params_a]
    opt_b = get_optimizer(spec, params_b, INVERSE_TIME)
    assert opt_b.iterations == 0
    opt_b.load_state_dict(_from_plain(*saved))
    opt_b.load_state_dict(_from_plain(*saved))  # loading twice must not double anything
    assert opt_b.iterations == 3 and isinstance(opt_b.iterations, int)
    assert opt_b.current_lr() == opt_a.current_lr()
    for g in grads[3:]:
        for params, opt in ((params_a, opt_a), (params_b, opt_b)):
            params[0].grad = torch.as_tensor(np.vstack([g, g[:1] * 2]), dtype=torch.float32)
            params[1].grad = torch.as_tensor(g[1], dtype=torch.float32)
            opt.step()
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)
    assert opt_a.iterations == opt_b.iterations == 5
    assert len(opt_b._optimizer_step_pre_hooks) == len(opt_b._optimizer_step_post_hooks) == 1


@pytest.mark.parametrize("name", sorted(OPTIMIZER_DEFAULTS))
def test_optimizer_config_round_trips(name):
    spec = next(s for s in NON_DEFAULT if s["name"] == name)
    opt = get_optimizer(spec, [torch.nn.Parameter(torch.ones(2))])
    config = opt.get_config()
    assert config == {"name": name, **{**OPTIMIZER_DEFAULTS[name], **spec}}
    json.dumps(config)
    assert get_optimizer(config, [torch.nn.Parameter(torch.ones(2))]).get_config() == config
    assert get_optimizer(opt, []) is opt


@pytest.mark.parametrize("flavour", optim.FLAVOURS)
def test_optimizer_config_carries_its_schedule_as_keras_does(flavour):
    spec = {"name": "rmsprop", "momentum": 0.5, "flavour": flavour}
    opt = get_optimizer(spec, [torch.nn.Parameter(torch.ones(2))], schedule=INVERSE_TIME)
    config = opt.get_config()
    assert config["learning_rate"] == {**INVERSE_TIME, "staircase": False}
    clone = get_optimizer(json.loads(json.dumps(config)), [torch.nn.Parameter(torch.ones(2))])
    assert clone.get_config() == config
    assert clone.schedule(12194) == opt.schedule(12194) == pytest.approx(0.001 / (1 + 0.001 * 12194))
    assert f"{clone.schedule(12194):.4e}" == "7.5792e-05"  # the articles' printout at that step
    assert clone.current_lr() == pytest.approx(0.001)


def test_learning_rate_as_a_schedule_table_is_checked_with_its_path():
    with pytest.raises(CnnlabError, match=r"^optimizer\.learning_rate\.decay_rate: -1 is out of range; it must be >= 0$"):
        get_optimizer({"name": "adam", "learning_rate": {**INVERSE_TIME, "decay_rate": -1}}, [])


@pytest.mark.parametrize("flavour", optim.FLAVOURS)
def test_copy_and_pickle_keep_schedule_and_counter(flavour):
    import pickle

    w = torch.nn.Parameter(torch.ones(3))
    opt = get_optimizer({"name": "adam", "flavour": flavour}, [w], INVERSE_TIME)
    w.grad = torch.ones(3)
    opt.step()
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone.iterations == 1 and clone.current_lr() == opt.current_lr()
        clone.param_groups[0]["params"][0].grad = torch.ones(3)
        clone.step()
        assert clone.iterations == 2 and clone.get_config() == opt.get_config()
    assert opt.iterations == 1


def test_optimizer_name_only_and_case():
    opt = get_optimizer("RMSprop", [torch.nn.Parameter(torch.ones(2))])
    assert isinstance(opt, optim.KerasRMSprop) and opt.current_lr() == 0.001


def test_params_without_gradient_are_left_alone():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = get_optimizer("adam", [a, b])
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b, torch.ones(2)) and not torch.equal(a, torch.ones(2))
    assert opt.iterations == 1


def test_closure_loss_is_returned():
    w = torch.nn.Parameter(torch.tensor([2.0]))
    opt = get_optimizer("sgd", [w])

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 4.0
    torch.testing.assert_close(w.detach(), torch.tensor([2.0 - 0.01 * 4.0]))


# ---------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------

SCHEDULE_EXAMPLES = {
    "constant": {"name": "constant", "learning_rate": 0.01},
    "inverse_time": INVERSE_TIME,
    "exponential": {"name": "exponential", "initial": 0.1, "decay_steps": 10, "decay_rate": 0.5},
    "cosine": {"name": "cosine", "initial": 0.01, "decay_steps": 100, "alpha": 0.1, "warmup_steps": 10,
               "warmup_target": 0.1},
    "one_cycle": {"name": "one_cycle", "max_lr": 0.1, "total_steps": 50},
}


@pytest.mark.parametrize("name", sorted(SCHEDULE_DEFAULTS))
def test_schedule_config_round_trips(name):
    schedule = get_schedule(SCHEDULE_EXAMPLES[name])
    config = schedule.get_config()
    assert set(config) == {"name", *SCHEDULE_DEFAULTS[name]}
    json.dumps(config)
    again = get_schedule(config)
    assert [again(s) for s in range(0, 200, 7)] == [schedule(s) for s in range(0, 200, 7)]
    assert all(isinstance(schedule(s), float) and schedule(s) > 0 for s in range(0, 200, 7))
    assert set(optim.SCHEDULE_REQUIRED[name]) <= set(SCHEDULE_EXAMPLES[name])


def test_schedule_callable_passes_through():
    fn = lambda step: 0.5  # noqa: E731
    assert get_schedule(fn) is fn
    assert get_schedule("constant")(123) == 0.001


def test_inverse_time_article_values():
    lr = get_schedule(INVERSE_TIME)
    assert lr(0) == 0.001
    assert lr(12194) == pytest.approx(7.5792e-05, rel=1e-4)
    assert lr(12194) == pytest.approx(7.57920279e-05, rel=1e-6)  # the articles print Keras' float32
    assert lr(75040) == pytest.approx(1.31509732e-05, rel=1e-6)
    assert lr(938) == pytest.approx(0.001 / (1 + 0.938), rel=1e-15)


def test_staircase():
    inverse = get_schedule({**INVERSE_TIME, "decay_steps": 10, "decay_rate": 0.5, "staircase": True})
    assert [inverse(s) for s in (0, 9, 10, 19, 25)] == [0.001, 0.001, 0.001 / 1.5, 0.001 / 1.5, 0.001 / 2]
    expo = get_schedule({"name": "exponential", "initial": 0.1, "decay_steps": 10, "decay_rate": 0.5,
                         "staircase": True})
    assert [expo(s) for s in (0, 9, 10, 29, 30)] == [0.1, 0.1, 0.05, 0.025, 0.1 * 0.5**3]


def test_exponential_smooth():
    expo = get_schedule(SCHEDULE_EXAMPLES["exponential"])
    for step in (0, 1, 5, 17, 1000):
        assert expo(step) == pytest.approx(0.1 * 0.5 ** (step / 10), rel=1e-14)


def _cosine_hand(step, initial, decay_steps, alpha=0.0, warmup_steps=0, warmup_target=None):
    """Keras CosineDecay.__call__ written out by hand."""
    def decay(s, start):
        return start * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * s / decay_steps)) + alpha)

    if warmup_target is None:
        return decay(min(step, decay_steps), initial)
    step = min(step, decay_steps + warmup_steps)
    if step < warmup_steps:
        return (warmup_target - initial) * step / warmup_steps + initial
    return decay(step - warmup_steps, warmup_target)


@pytest.mark.parametrize("params", [
    {"initial": 0.1, "decay_steps": 100},
    {"initial": 0.1, "decay_steps": 100, "alpha": 0.2},
    {"initial": 0.0, "decay_steps": 50, "warmup_steps": 10, "warmup_target": 0.1},
    {"initial": 0.01, "decay_steps": 100, "alpha": 0.1, "warmup_steps": 10, "warmup_target": 0.1},
    {"initial": 0.01, "decay_steps": 30, "warmup_target": 0.05},
])
def test_cosine_matches_keras_formula(params):
    if params["initial"] == 0.0:
        params = {**params, "initial": 1e-9}
    lr = get_schedule({"name": "cosine", **params})
    for step in [0, 1, 5, 9, 10, 11, 30, 59, 60, 99, 100, 109, 110, 111, 500]:
        assert lr(step) == pytest.approx(_cosine_hand(step, **params), rel=1e-12, abs=1e-15)
    assert lr(10**6) == lr(10**6 + 1)


@pytest.mark.parametrize("params", [
    {"max_lr": 0.1, "total_steps": 100},
    {"max_lr": 0.01, "total_steps": 37, "pct_start": 0.4, "div_factor": 10.0, "final_div_factor": 100.0},
    {"max_lr": 1.0, "total_steps": 7},
    {"max_lr": 0.5, "total_steps": 20, "pct_start": 0.0},
    {"max_lr": 0.5, "total_steps": 1},
])
def test_one_cycle_matches_torch(params):
    torch_params = {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4, **params}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, anneal_strategy="cos", three_phase=False,
                                                    cycle_momentum=False, **torch_params)
    expected = [scheduler.get_last_lr()[0]]
    for _ in range(params["total_steps"]):
        opt.step()
        scheduler.step()
        expected.append(scheduler.get_last_lr()[0])
    lr = get_schedule({"name": "one_cycle", **params})
    ours = [lr(step) for step in range(params["total_steps"] + 1)]
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=0)
    assert lr(params["total_steps"] + 5) == ours[-1]


def test_one_cycle_edge_cases_torch_cannot_compute():
    # torch divides by zero when a phase is empty; we take the phase's end value instead.
    rising_only = get_schedule({"name": "one_cycle", "max_lr": 0.5, "total_steps": 20, "pct_start": 1.0})
    assert rising_only(0) == pytest.approx(0.5 / 25) and rising_only(19) == pytest.approx(0.5)
    empty_first = get_schedule({"name": "one_cycle", "max_lr": 0.5, "total_steps": 4, "pct_start": 0.25})
    assert empty_first(0) == pytest.approx(0.5)
    assert empty_first(3) == pytest.approx(0.5 / 25 / 1e4)


@pytest.mark.parametrize(("spec", "message"), [
    ({**INVERSE_TIME, "decay_steps": 0}, r"schedule\.decay_steps: 0 is out of range; it must be > 0"),
    ({**INVERSE_TIME, "decay_rate": -1}, r"schedule\.decay_rate: -1 is out of range; it must be >= 0"),
    ({**INVERSE_TIME, "initial": "big"}, r"schedule\.initial: expected a number, got str 'big'"),
    ({**INVERSE_TIME, "staircase": 1}, r"schedule\.staircase: expected true or false, got int 1"),
    ({"name": "inverse_time", "initial": 0.1}, r"schedule\.decay_steps: missing; schedule 'inverse_time' needs 'decay_steps'"),
    ({"name": "one_cycle", "max_lr": 0.1, "total_steps": 0}, r"schedule\.total_steps: 0 is out of range"),
    ({"name": "one_cycle", "max_lr": 0.1, "total_steps": 2.5}, r"total_steps: expected an integer, got float 2\.5"),
    ({"name": "one_cycle", "max_lr": 0.1, "total_steps": 9, "pct_start": 1.5}, r"it must be >= 0 and <= 1"),
    ({"name": "cosine", "initial": 0.1, "decay_steps": 9, "alpha": 2}, r"schedule\.alpha: 2 is out of"),
    ({"name": "cosine", "initial": 0.1, "decay_steps": 9, "warmup_steps": -1}, r"warmup_steps: -1 is out"),
    ({"name": "cosine", "initial": 0.1}, r"schedule\.decay_steps: missing"),
    ({**INVERSE_TIME, "decay": 1}, r"schedule\.decay: not a parameter of inverse_time; valid keys: "
                                   r"initial, decay_steps, decay_rate, staircase"),
    ({"name": "inverse_tim"}, r"schedule\.name: 'inverse_tim' is not one of .* \(did you mean "
                              r"'inverse_time'\?\)"),
    ("polynomial", r"schedule\.name: 'polynomial' is not one of constant, inverse_time"),
    ({"initial": 0.1}, r"schedule\.name: missing"),
])
def test_schedule_errors(spec, message):
    with pytest.raises(CnnlabError, match=message) as info:
        get_schedule(spec)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------
# Regularizers
# ---------------------------------------------------------------------------------------------------

W = torch.tensor([1.0, -2.0, 3.0])
REGULARIZER_CASES = {
    "none": ({"kind": "none"}, None),
    "l1": ({"kind": "l1", "factor": 0.1}, 0.6),
    "l2": ({"kind": "l2", "factor": 0.1}, 1.4),
    "l1_l2": ({"kind": "l1_l2", "l1": 0.1, "l2": 0.01}, 0.6 + 0.14),
}


@pytest.mark.parametrize("kind", sorted(REGULARIZER_DEFAULTS))
def test_regularizer_values(kind):
    spec, expected = REGULARIZER_CASES[kind]
    reg = get_regularizer(spec)
    if expected is None:
        assert reg is None
        assert regularization_loss(reg, [W]).item() == 0.0
        return
    assert reg(W).item() == pytest.approx(expected, rel=1e-6)
    assert reg.applies_to == "dense"
    config = reg.get_config()
    assert config == {**REGULARIZER_DEFAULTS[kind], **spec}
    assert get_regularizer(config).get_config() == config
    assert get_regularizer(reg) is reg
    total = regularization_loss(reg, [W, 2 * W])
    assert total.dim() == 0 and total.item() == pytest.approx(reg(W).item() + reg(2 * W).item(), rel=1e-6)


def test_l2_has_no_half_and_gradient_is_two_factor_w():
    w = torch.nn.Parameter(W.clone())
    regularization_loss(get_regularizer({"kind": "l2", "factor": 0.1, "applies_to": "all"}), [w]).backward()
    torch.testing.assert_close(w.grad, 0.2 * W)


def test_regularizer_defaults_and_applies_to():
    assert get_regularizer("l2").factor == 0.01
    assert get_regularizer({"kind": "l1", "applies_to": "conv"}).applies_to == "conv"
    assert get_regularizer(None) is None
    assert get_regularizer({"kind": "none", "applies_to": "all"}) is None
    empty = regularization_loss(get_regularizer("l2"), [])
    assert empty.dim() == 0 and empty.item() == 0.0


@pytest.mark.parametrize(("spec", "message"), [
    ({"kind": "l22"}, r"regularizer\.kind: 'l22' is not one of none, l1, l2, l1_l2 \(did you mean 'l2'\?\)"),
    ({"kind": "l3"}, r"regularizer\.kind: 'l3' is not one of none, l1, l2, l1_l2$"),
    ({"kind": "l2", "factor": -0.1}, r"regularizer\.factor: -0\.1 is out of range; it must be >= 0"),
    ({"kind": "l2", "applies_to": "dens"}, r"regularizer\.applies_to: 'dens' is not one of dense, conv, "
                                           r"all \(did you mean 'dense'\?\)"),
    ({"kind": "l2", "l2": 0.1}, r"regularizer\.l2: not a parameter of l2; valid keys: factor, "
                                r"applies_to"),
    (3, r"regularizer: expected a name or a table"),
])
def test_regularizer_errors(spec, message):
    with pytest.raises(CnnlabError, match=message):
        get_regularizer(spec)


# ---------------------------------------------------------------------------------------------------
# Optimizer errors
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "message"), [
    ("rmsporp", r"^optimizer\.name: 'rmsporp' is not one of rmsprop, nadam, adamax, sgd, adam, adamw "
                r"\(did you mean 'rmsprop'\?\)$"),
    ("lion", r"^optimizer\.name: 'lion' is not one of rmsprop, nadam, adamax, sgd, adam, adamw$"),
    ({"name": "adam", "momentum": 0.5}, r"^optimizer\.momentum: not a parameter of adam; valid keys: "
                                        r"learning_rate, beta_1, beta_2, epsilon, amsgrad, flavour$"),
    ({"name": "rmsprop", "momentun": 0.5}, r"\(did you mean 'momentum'\?\)"),
    ({"name": "rmsprop", "learning_rate": 0}, r"optimizer\.learning_rate: 0 is out of range; it must be > 0"),
    ({"name": "rmsprop", "learning_rate": True}, r"optimizer\.learning_rate: expected a number, got bool True"),
    ({"name": "rmsprop", "momentum": 1.0}, r"optimizer\.momentum: 1\.0 is out of range; it must be >= 0 and < 1"),
    ({"name": "sgd", "momentum": -0.1}, r"optimizer\.momentum: -0\.1 is out of range"),
    ({"name": "rmsprop", "rho": 1.5}, r"optimizer\.rho: 1\.5 is out of range; it must be >= 0 and < 1"),
    ({"name": "rmsprop", "epsilon": 0}, r"optimizer\.epsilon: 0 is out of range; it must be > 0"),
    ({"name": "rmsprop", "centered": "yes"}, r"optimizer\.centered: expected true or false, got str 'yes'"),
    ({"name": "adam", "beta_2": 1}, r"optimizer\.beta_2: 1 is out of range"),
    ({"name": "adamw", "weight_decay": -1}, r"optimizer\.weight_decay: -1 is out of range; it must be >= 0"),
    ({"name": "adam", "flavour": "jax"}, r"optimizer\.flavour: 'jax' is not one of keras, torch"),
    ({"learning_rate": 0.1}, r"optimizer\.name: missing; valid values: rmsprop"),
    (None, r"optimizer: expected a name or a table"),
])
def test_optimizer_errors(spec, message):
    with pytest.raises(CnnlabError, match=message) as info:
        get_optimizer(spec, [torch.nn.Parameter(torch.ones(1))])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec, message", [
    ({"name": "adam", "momentum": 0.9}, "optimizer.momentum: not a parameter of adam"),
    ({"name": "rmsprop", "rho": 1.5}, "optimizer.rho"),
    ({"name": "sgd", "nesterov": True, "flavour": "torch"}, "optimizer.nesterov"),
])
def test_check_optimizer_gives_the_same_errors_as_building_one(spec, message):
    for check in (optim.check_optimizer, lambda s: optim.get_optimizer(s, [torch.nn.Parameter(torch.zeros(1))])):
        with pytest.raises(CnnlabError, match=message):
            check(spec)
    assert optim.check_optimizer("adam")["beta_2"] == 0.999

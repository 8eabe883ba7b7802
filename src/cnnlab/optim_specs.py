"""The optimizer, schedule and regularizer specs: names, keys, defaults and checks, without torch.

``cnnlab.config`` validates a config's specs here, so checking a config (``cnnlab summary``, ``cnnlab config``)
never imports torch; ``cnnlab.optim`` builds the optimizers, schedules and regularizers on these specs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.schema import REQUIRED, Key, Rule, SpecSchema, boolean, choice, custom, integer, number, optional

FLAVOURS = ("keras", "torch")
APPLIES_TO = ("dense", "conv", "all")

_POSITIVE = number(0.0, low_open=True)
_NON_NEGATIVE = number(0.0)
_FRACTION = number(0.0, 1.0, high_open=True)


def _learning_rate(path: str, value: Any) -> float | dict[str, Any]:
    """A positive number, or (as Keras' ``learning_rate``) a schedule table."""
    if isinstance(value, Mapping):
        return SCHEDULES.resolve(value, path)
    return _POSITIVE.check(path, value, as_float=True)


# One rule per hyper-parameter name, whichever optimizer, schedule or regularizer has it.
_RULES: dict[str, Rule] = {
    "learning_rate": custom(_learning_rate), "rho": _FRACTION, "momentum": _FRACTION, "epsilon": _POSITIVE,
    "centered": boolean(), "beta_1": _FRACTION, "beta_2": _FRACTION, "nesterov": boolean(),
    "amsgrad": boolean(), "weight_decay": _NON_NEGATIVE, "flavour": choice(*FLAVOURS, fold_case=True),
    "initial": _POSITIVE, "decay_steps": _POSITIVE, "decay_rate": _NON_NEGATIVE, "staircase": boolean(),
    "alpha": number(0.0, 1.0), "warmup_steps": integer(0), "warmup_target": optional(_POSITIVE),
    "max_lr": _POSITIVE, "total_steps": integer(1), "pct_start": number(0.0, 1.0),
    "div_factor": _POSITIVE, "final_div_factor": _POSITIVE,
    "factor": _NON_NEGATIVE, "l1": _NON_NEGATIVE, "l2": _NON_NEGATIVE,
    "applies_to": choice(*APPLIES_TO, fold_case=True),
}


def _members(defaults: dict[str, dict[str, Any]]) -> dict[str, dict[str, Key]]:
    return {name: {k: Key(d, _RULES[k]) for k, d in keys.items()} for name, keys in defaults.items()}


_BETAS = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}


def _check_torch_flavour(path: str, name: str, hyper: dict[str, Any]) -> None:
    if hyper["flavour"] == "torch":
        torch_kwargs(name, {k: v for k, v in hyper.items() if k not in ("flavour", "learning_rate")})


OPTIMIZERS = SpecSchema("optimizer", "name", _members({
    "rmsprop": {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False,
                "flavour": "keras"},
    "nadam": {"learning_rate": 0.001, **_BETAS, "flavour": "keras"},
    "adamax": {"learning_rate": 0.001, **_BETAS, "flavour": "keras"},
    "sgd": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False, "flavour": "keras"},
    "adam": {"learning_rate": 0.001, **_BETAS, "amsgrad": False, "flavour": "keras"},
    "adamw": {"learning_rate": 0.001, "weight_decay": 0.004, **_BETAS, "amsgrad": False, "flavour": "keras"},
}), check=_check_torch_flavour)

SCHEDULES = SpecSchema("schedule", "name", _members({
    "constant": {"learning_rate": 0.001},
    "inverse_time": {"initial": REQUIRED, "decay_steps": REQUIRED, "decay_rate": REQUIRED, "staircase": False},
    "exponential": {"initial": REQUIRED, "decay_steps": REQUIRED, "decay_rate": REQUIRED, "staircase": False},
    "cosine": {"initial": REQUIRED, "decay_steps": REQUIRED, "alpha": 0.0, "warmup_steps": 0,
               "warmup_target": None},  # Keras' default: no warmup
    "one_cycle": {"max_lr": REQUIRED, "total_steps": REQUIRED, "pct_start": 0.3, "div_factor": 25.0,
                  "final_div_factor": 1e4},
}))

REGULARIZERS = SpecSchema("regularizer", "kind", _members({
    "none": {"applies_to": "dense"},
    "l1": {"factor": 0.01, "applies_to": "dense"},
    "l2": {"factor": 0.01, "applies_to": "dense"},
    "l1_l2": {"l1": 0.0, "l2": 0.0, "applies_to": "dense"},
}))

# Plain views of the registries: every key with its default (None = required, or cosine's no-warmup None).
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {n: OPTIMIZERS.defaults(n) for n in OPTIMIZERS.names}
SCHEDULE_DEFAULTS: dict[str, dict[str, Any]] = {n: SCHEDULES.defaults(n) for n in SCHEDULES.names}
REGULARIZER_DEFAULTS: dict[str, dict[str, Any]] = {n: REGULARIZERS.defaults(n) for n in REGULARIZERS.names}
SCHEDULE_REQUIRED: dict[str, tuple[str, ...]] = {
    n: tuple(k for k, key in keys.items() if key.default is REQUIRED) for n, keys in SCHEDULES.members.items()}


_BETA_NAMES = {"beta_1": "betas", "beta_2": "betas", "epsilon": "eps"}
# Keras key -> torch keyword, per optimizer; a Keras key missing here has no torch meaning.
TORCH_KEYWORDS: dict[str, dict[str, str]] = {
    "rmsprop": {"rho": "alpha", "momentum": "momentum", "epsilon": "eps", "centered": "centered"},
    "nadam": _BETA_NAMES,
    "adamax": _BETA_NAMES,
    "sgd": {"momentum": "momentum", "nesterov": "nesterov"},
    "adam": {**_BETA_NAMES, "amsgrad": "amsgrad"},
    "adamw": {**_BETA_NAMES, "amsgrad": "amsgrad", "weight_decay": "weight_decay"},
}


def torch_kwargs(name: str, hyper: dict[str, Any]) -> dict[str, Any]:
    """Map Keras hyper-parameter names to the keywords of torch's optimizer ``name``."""
    mapping = TORCH_KEYWORDS[name]
    kwargs: dict[str, Any] = {}
    for key, value in hyper.items():
        if key not in mapping:
            raise CnnlabError(f"optimizer.{key}: has no meaning for torch's {name!r}; remove it or use "
                              f"flavour 'keras' (torch keys: {', '.join(mapping)})")
        kwargs[mapping[key]] = value
    if "betas" in kwargs:
        kwargs["betas"] = (hyper["beta_1"], hyper["beta_2"])
    if name == "sgd" and hyper["nesterov"] and hyper["momentum"] == 0:
        raise CnnlabError("optimizer.nesterov: torch's SGD needs momentum > 0 for nesterov; set momentum "
                          "or nesterov = false")
    return kwargs


def check_optimizer(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """Validate an optimizer spec without building an optimizer; return it with every default filled in.

    Raises:
        CnnlabError: unknown name or key, or a value out of range (the same messages as ``get_optimizer``).
    """
    return OPTIMIZERS.resolve(spec)

"""Optimizers, learning-rate schedules and weight regularizers with Keras 3 semantics.

Users bring Keras hyper-parameters, so the default ``flavour="keras"`` optimizers reproduce Keras 3's
update rules (``keras/src/optimizers/*.py``) on torch tensors; ``flavour="torch"`` wraps torch's own
optimizer of the same name instead. Either way the optimizer owns the schedule: before each update it
sets the learning rate to ``schedule(iterations)`` and afterwards counts the step, and the counter lives
in the state dict so a resumed run continues the schedule exactly.

Everything is built from plain data (a name or a dict) and turns back into plain data with
``get_config()``. The specs themselves (names, keys, defaults, checks) live in the torch-free
``cnnlab.optim_specs``, so that validating a config does not import torch; they are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from cnnlab import native
from cnnlab.errors import CnnlabError
from cnnlab.optim_specs import (APPLIES_TO, FLAVOURS, OPTIMIZER_DEFAULTS, OPTIMIZERS, REGULARIZER_DEFAULTS,
                                REGULARIZERS, SCHEDULE_DEFAULTS, SCHEDULE_REQUIRED, SCHEDULES, check_optimizer,
                                torch_kwargs)

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "REGULARIZERS",
    "OPTIMIZER_DEFAULTS",
    "SCHEDULE_DEFAULTS",
    "SCHEDULE_REQUIRED",
    "REGULARIZER_DEFAULTS",
    "FLAVOURS",
    "APPLIES_TO",
    "Schedule",
    "Regularizer",
    "check_optimizer",
    "get_schedule",
    "get_optimizer",
    "get_regularizer",
    "regularization_loss",
]

# ---------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------

class Schedule:
    """A learning rate as a pure function of the number of optimizer steps done.

    Build one with :func:`get_schedule`; ``get_config()`` gives back the plain dict spec.
    """

    name: str = ""

    def __init__(self, **params: Any) -> None:
        """Store already validated parameters as attributes.

        Args:
            **params: the schedule's parameters, as in ``SCHEDULE_DEFAULTS[name]``.
        """
        self._params = dict(params)
        for key, value in params.items():
            setattr(self, key, value)

    def __call__(self, step: int) -> float:
        """Return the learning rate for the update that follows ``step`` finished updates."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """Return the plain dict spec that rebuilds this schedule."""
        return {"name": self.name, **self._params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """A fixed learning rate."""

    name = "constant"

    def __call__(self, step: int) -> float:
        """Return ``learning_rate`` whatever the step."""
        return float(self.learning_rate)


def _progress(step: int, decay_steps: float, staircase: bool) -> float:
    p = step / decay_steps
    return float(math.floor(p)) if staircase else p


class InverseTime(Schedule):
    """Keras ``InverseTimeDecay``: ``initial / (1 + decay_rate * step / decay_steps)``."""

    name = "inverse_time"

    def __call__(self, step: int) -> float:
        """Return the decayed learning rate at ``step``."""
        return self.initial / (1.0 + self.decay_rate * _progress(step, self.decay_steps, self.staircase))


class Exponential(Schedule):
    """Keras ``ExponentialDecay``: ``initial * decay_rate ** (step / decay_steps)``."""

    name = "exponential"

    def __call__(self, step: int) -> float:
        """Return the decayed learning rate at ``step``."""
        return self.initial * self.decay_rate ** _progress(step, self.decay_steps, self.staircase)


class Cosine(Schedule):
    """Keras ``CosineDecay`` with its optional linear warmup from ``initial`` to ``warmup_target``."""

    name = "cosine"

    def _decay(self, step: float, start_lr: float) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return start_lr * ((1.0 - self.alpha) * cosine + self.alpha)

    def __call__(self, step: int) -> float:
        """Return the learning rate at ``step``, holding the last value after the decay ends."""
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            return (self.warmup_target - self.initial) * step / self.warmup_steps + self.initial
        return self._decay(step - self.warmup_steps, self.warmup_target)


class OneCycle(Schedule):
    """torch ``OneCycleLR`` (cosine annealing, two phases) as a pure function of the step.

    Matches torch's value for every step in ``[0, total_steps]``; later steps keep the value of
    ``total_steps``.
    """

    name = "one_cycle"

    def __call__(self, step: int) -> float:
        """Return the learning rate at ``step``."""
        step = min(step, self.total_steps)
        start_lr = self.max_lr / self.div_factor
        phases = ((self.pct_start * self.total_steps - 1.0, start_lr, self.max_lr),
                  (self.total_steps - 1.0, self.max_lr, start_lr / self.final_div_factor))
        begin = 0.0
        for i, (end, lr_from, lr_to) in enumerate(phases):
            if step <= end or i == len(phases) - 1:
                # torch divides by zero here when a phase is empty; reaching its end is the sensible value.
                pct = (step - begin) / (end - begin) if end != begin else 1.0
                return lr_to + (lr_from - lr_to) / 2.0 * (math.cos(math.pi * pct) + 1.0)
            begin = end
        raise AssertionError("unreachable")


_SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (Constant, InverseTime, Exponential, Cosine, OneCycle)
}


def get_schedule(spec: str | Mapping[str, Any] | Callable[[int], float]) -> Callable[[int], float]:
    """Build a learning-rate schedule.

    Args:
        spec: a name (``"constant"``), a dict such as ``{"name": "inverse_time", "initial": 0.001,
            "decay_steps": 1, "decay_rate": 0.001}``, or any callable ``step -> lr`` (returned as is).

    Returns:
        A callable mapping the number of optimizer steps done to the learning rate of the next step.

    Raises:
        CnnlabError: unknown name or key, missing required parameter, or a value out of range.
    """
    if callable(spec):
        return spec
    params = SCHEDULES.resolve(spec)
    return _SCHEDULES[params.pop("name")](**params)


# ---------------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------------

def _before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    lr = opt.current_lr()
    for group in opt.param_groups:
        group["lr"] = lr


def _after_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    done = opt.iterations + 1
    for group in opt.param_groups:
        group["iterations"] = done


class _Scheduled:
    """Mixin for torch optimizers: learning rate from a schedule, step counter in the param groups."""

    param_groups: list[dict[str, Any]]

    def _attach(self, schedule: Callable[[int], float], config: dict[str, Any]) -> None:
        # The counter sits in every param group (a plain int) so state_dict()/load_state_dict() carry it.
        self._schedule = schedule
        self._config = config
        self.defaults["iterations"] = 0
        for group in self.param_groups:
            group.setdefault("iterations", 0)
            group["lr"] = self.current_lr()
        # Module-level hook functions (not bound methods) keep the optimizer picklable and copyable.
        self._register_hooks()

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim.Optimizer pickles only defaults/state/param_groups; keep the schedule too.
        state = super().__getstate__()
        state.update(_schedule=self._schedule, _config=self._config)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # load_state_dict() goes through here too, when the hooks are already in place.
        super().__setstate__(state)
        self._register_hooks()

    def _register_hooks(self) -> None:
        if _before_step not in self._optimizer_step_pre_hooks.values():
            self.register_step_pre_hook(_before_step)
        if _after_step not in self._optimizer_step_post_hooks.values():
            self.register_step_post_hook(_after_step)

    @property
    def iterations(self) -> int:
        """Number of optimizer steps done (0 for a freshly built optimizer)."""
        return int(self.param_groups[0].get("iterations", 0))

    @property
    def schedule(self) -> Callable[[int], float]:
        """The learning-rate schedule driving this optimizer."""
        return self._schedule

    def current_lr(self) -> float:
        """Return the learning rate the next step will use, ``schedule(iterations)``."""
        return float(self._schedule(self.iterations))

    def get_config(self) -> dict[str, Any]:
        """Return the plain dict spec (name, flavour and every hyper-parameter) of this optimizer.

        As in Keras, ``learning_rate`` is the schedule's own config when a schedule drives the optimizer (a
        constant one gives its number), so ``get_optimizer(opt.get_config(), params)`` rebuilds the same
        schedule. A plain callable schedule has no config; the spec's ``learning_rate`` is kept then.
        """
        config = dict(self._config)
        schedule = self._schedule
        if isinstance(schedule, Constant):
            config["learning_rate"] = float(schedule.learning_rate)
        elif isinstance(schedule, Schedule):
            config["learning_rate"] = schedule.get_config()
        return config


def _undecorated(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` without the ``functools.wraps`` wrapper around it (itself where there is none)."""
    return getattr(method, "__wrapped__", method)


class _KerasOptimizer(_Scheduled, torch.optim.Optimizer):
    """Base of the Keras-3 update rules: lazy zero state, closure handling, foreach lists."""

    slots: tuple[str, ...] = ()

    # torch wraps these four in torch._disable_dynamo, whose first call imports torch._dynamo (about 1 s of a
    # command's start-up) only to keep torch.compile from tracing them; cnnlab compiles no optimizer.
    zero_grad = _undecorated(torch.optim.Optimizer.zero_grad)
    add_param_group = _undecorated(torch.optim.Optimizer.add_param_group)
    state_dict = _undecorated(torch.optim.Optimizer.state_dict)
    load_state_dict = _undecorated(torch.optim.Optimizer.load_state_dict)

    def __init__(self, params: Any, hyper: dict[str, Any]) -> None:
        """Create the optimizer over ``params`` with hyper-parameters ``hyper`` (already validated)."""
        super().__init__(params, {"lr": 0.0, **hyper})

    def _slots(self, group: dict[str, Any]) -> tuple[str, ...]:
        return self.slots

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one update to every parameter that has a gradient.

        Args:
            closure: optional function that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            names = self._slots(group)
            states = [self._state(p, names) for p in params]
            slots = {name: [s[name] for s in states] for name in names}
            grads = [p.grad for p in params]
            self._update(group, params, grads, slots, group["lr"], group["iterations"] + 1)
        return loss

    def _state(self, p: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        state = self.state[p]
        for name in names:
            if name not in state:
                state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _update(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
                slots: dict[str, list[torch.Tensor]], lr: float, t: int) -> None:
        raise NotImplementedError


class KerasRMSprop(_KerasOptimizer):
    """Keras 3 RMSprop: epsilon inside the square root; momentum accumulates the lr-scaled increment."""

    def _slots(self, group: dict[str, Any]) -> tuple[str, ...]:
        names = ("velocity",)
        names += ("momentum",) if group["momentum"] > 0 else ()
        return names + (("average_gradient",) if group["centered"] else ())

    def _update(self, group, params, grads, slots, lr, t):  # noqa: D102 - documented on the class
        rho, velocity = group["rho"], slots["velocity"]
        fused = native.fused_steps()
        if fused and not group["centered"] and fused.rmsprop_step(
                params, grads, velocity, slots.get("momentum"), lr, rho, group["momentum"], group["epsilon"]):
            return
        torch._foreach_mul_(velocity, rho)
        torch._foreach_addcmul_(velocity, grads, grads, value=1 - rho)
        denominator = torch._foreach_add(velocity, group["epsilon"])
        if group["centered"]:
            average = slots["average_gradient"]
            torch._foreach_mul_(average, rho)
            torch._foreach_add_(average, grads, alpha=1 - rho)
            torch._foreach_addcmul_(denominator, average, average, value=-1.0)
        torch._foreach_sqrt_(denominator)
        if group["momentum"] > 0:
            buffers = slots["momentum"]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_addcdiv_(buffers, grads, denominator, value=lr)
            torch._foreach_sub_(params, buffers)
        else:
            torch._foreach_addcdiv_(params, grads, denominator, value=-lr)


class KerasSGD(_KerasOptimizer):
    """Keras 3 SGD: ``m = momentum*m - lr*g; w += m`` (nesterov: ``w += momentum*m - lr*g``)."""

    def _slots(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum",) if group["momentum"] != 0 else ()

    def _update(self, group, params, grads, slots, lr, t):  # noqa: D102
        momentum = group["momentum"]
        if momentum == 0:
            torch._foreach_add_(params, grads, alpha=-lr)
            return
        buffers = slots["momentum"]
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, grads, alpha=-lr)
        if group["nesterov"]:
            torch._foreach_add_(params, buffers, alpha=momentum)
            torch._foreach_add_(params, grads, alpha=-lr)
        else:
            torch._foreach_add_(params, buffers)


def _adam_moments(group: dict[str, Any], grads: list[torch.Tensor], m: list[torch.Tensor],
                  v: list[torch.Tensor]) -> None:
    """Keras' ``m += (g - m) * (1 - beta_1)`` and ``v += (g^2 - v) * (1 - beta_2)``."""
    torch._foreach_lerp_(m, grads, 1 - group["beta_1"])
    torch._foreach_lerp_(v, torch._foreach_mul(grads, grads), 1 - group["beta_2"])


class KerasAdam(_KerasOptimizer):
    """Keras 3 Adam: ``alpha = lr*sqrt(1-beta_2^t)/(1-beta_1^t)``, ``w -= alpha*m/(sqrt(v)+eps)``."""

    def _slots(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum", "velocity") + (("velocity_hat",) if group["amsgrad"] else ())

    def _update(self, group, params, grads, slots, lr, t):  # noqa: D102
        m, v = slots["momentum"], slots["velocity"]
        alpha = lr * math.sqrt(1 - group["beta_2"] ** t) / (1 - group["beta_1"] ** t)
        decay = self._decay(group, lr)
        fused = native.fused_steps()
        if fused and not group["amsgrad"] and fused.adam_step(
                params, grads, m, v, alpha, group["beta_1"], group["beta_2"], group["epsilon"], decay):
            return
        if decay != 1.0:
            torch._foreach_mul_(params, decay)
        _adam_moments(group, grads, m, v)
        if group["amsgrad"]:
            torch._foreach_maximum_(slots["velocity_hat"], v)
            v = slots["velocity_hat"]
        denominator = torch._foreach_sqrt(v)
        torch._foreach_add_(denominator, group["epsilon"])
        torch._foreach_addcdiv_(params, m, denominator, value=-alpha)

    def _decay(self, group: dict[str, Any], lr: float) -> float:
        """The factor every weight is multiplied by before the step (1: none)."""
        return 1.0


class KerasAdamW(KerasAdam):
    """Keras 3 AdamW: ``w -= w * weight_decay * lr`` on every variable, then the Adam step."""

    def _decay(self, group: dict[str, Any], lr: float) -> float:  # noqa: D102
        return 1 - group["weight_decay"] * lr if group["weight_decay"] else 1.0


class KerasNadam(_KerasOptimizer):
    """Keras 3 Nadam with its momentum cache ``u_t = beta_1 * (1 - 0.5 * 0.96 ** t)``."""

    slots = ("momentum", "velocity")

    def _update(self, group, params, grads, slots, lr, t):  # noqa: D102
        beta_1 = group["beta_1"]
        u_t = beta_1 * (1.0 - 0.5 * 0.96 ** t)
        u_next = beta_1 * (1.0 - 0.5 * 0.96 ** (t + 1))
        # Running product of all u_1..u_t: Keras keeps it in an optimizer variable, we in the param group.
        u_product = group.get("u_product", 1.0) * u_t
        group["u_product"] = u_product
        m, v = slots["momentum"], slots["velocity"]
        _adam_moments(group, grads, m, v)
        m_hat = torch._foreach_mul(m, u_next / (1 - u_product * u_next))
        torch._foreach_add_(m_hat, grads, alpha=(1 - u_t) / (1 - u_product))
        denominator = torch._foreach_mul(v, 1 / (1 - group["beta_2"] ** t))
        torch._foreach_sqrt_(denominator)
        torch._foreach_add_(denominator, group["epsilon"])
        torch._foreach_addcdiv_(params, m_hat, denominator, value=-lr)


class KerasAdamax(_KerasOptimizer):
    """Keras 3 Adamax: ``u = max(beta_2*u, |g|)``, ``w -= lr*m / ((1-beta_1^t) * (u+eps))``."""

    slots = ("momentum", "norm")

    def _update(self, group, params, grads, slots, lr, t):  # noqa: D102
        m, u = slots["momentum"], slots["norm"]
        torch._foreach_lerp_(m, grads, 1 - group["beta_1"])
        torch._foreach_mul_(u, group["beta_2"])
        torch._foreach_maximum_(u, torch._foreach_abs(grads))
        denominator = torch._foreach_add(u, group["epsilon"])
        torch._foreach_addcdiv_(params, m, denominator, value=-lr / (1 - group["beta_1"] ** t))


_KERAS_CLASSES: dict[str, type[_KerasOptimizer]] = {
    "rmsprop": KerasRMSprop, "nadam": KerasNadam, "adamax": KerasAdamax,
    "sgd": KerasSGD, "adam": KerasAdam, "adamw": KerasAdamW,
}


def _scheduled(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """torch's optimizer class ``base`` driven by a schedule (``TorchRMSprop`` for ``torch.optim.RMSprop``)."""
    name = f"Torch{base.__name__}"
    return type(name, (_Scheduled, base), {"__doc__": f"torch's {base.__name__} driven by a schedule.",
                                           "__module__": __name__, "__qualname__": name})


_TORCH_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    name: _scheduled(getattr(torch.optim, cls)) for name, cls in (
        ("rmsprop", "RMSprop"), ("nadam", "NAdam"), ("adamax", "Adamax"), ("sgd", "SGD"), ("adam", "Adam"),
        ("adamw", "AdamW"))}
globals().update({cls.__name__: cls for cls in _TORCH_CLASSES.values()})  # importable (and picklable) by name

def get_optimizer(spec: str | Mapping[str, Any] | torch.optim.Optimizer, params: Any,
                  schedule: str | Mapping[str, Any] | Callable[[int], float] | None = None,
                  ) -> torch.optim.Optimizer:
    """Build an optimizer that sets its own learning rate from a schedule before every step.

    Args:
        spec: a name (``"rmsprop"``), a dict such as ``{"name": "rmsprop", "momentum": 0.5}`` with the
            keys of ``OPTIMIZER_DEFAULTS[name]`` (``flavour`` picks Keras 3's rule or torch's optimizer),
            or an already built optimizer, returned as is.
        params: the parameters (or torch param-group dicts) to optimize.
        schedule: anything :func:`get_schedule` accepts; None means the spec's ``learning_rate``: a
            constant, or (as in Keras) a schedule table. A schedule takes precedence over ``learning_rate``.

    Returns:
        A ``torch.optim.Optimizer`` with ``iterations`` (steps done), ``current_lr()`` and
        ``get_config()``.

    Raises:
        CnnlabError: unknown name or key, or a value out of range.
    """
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    hyper = OPTIMIZERS.resolve(spec)
    config = dict(hyper)
    name, flavour, rate = hyper.pop("name"), hyper.pop("flavour"), hyper.pop("learning_rate")
    if schedule is None:
        schedule = rate if isinstance(rate, dict) else Constant(learning_rate=rate)
    schedule = get_schedule(schedule)
    if flavour == "keras":
        opt = _KERAS_CLASSES[name](params, hyper)
    else:
        opt = _TORCH_CLASSES[name](params, lr=1.0, **torch_kwargs(name, hyper))
    opt._attach(schedule, config)
    return opt


# ---------------------------------------------------------------------------------------------------
# Regularizers
# ---------------------------------------------------------------------------------------------------

class Regularizer:
    """A Keras weight penalty on kernels; ``applies_to`` says which layers' kernels (dense, conv, all)."""

    kind: str = ""
    keras_name: str = ""  # Keras's class of the same penalty, which ``repr`` shows (default: the class's name)

    def __init__(self, applies_to: str = "dense", **params: float) -> None:
        """Store the validated parameters.

        Args:
            applies_to: which kernels the training loop sums the penalty over.
            **params: the penalty factors, as in ``REGULARIZER_DEFAULTS[kind]``.
        """
        self.applies_to = applies_to
        self._params = dict(params)
        for key, value in params.items():
            setattr(self, key, value)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        """Return the penalty of one kernel as a 0-dim tensor."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """Return the plain dict spec that rebuilds this regularizer."""
        return {"kind": self.kind, **self._params, "applies_to": self.applies_to}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "kind")
        return f"{self.keras_name or type(self).__name__}({args})"


# The built-in kinds: Keras's class of the same penalty, and the penalty of one kernel ``w`` given the factors
# (Keras's L2 has no one-half, unlike torch's weight_decay).
_PENALTIES: dict[str, tuple[str, Callable[..., torch.Tensor]]] = {
    "l1": ("L1", lambda w, factor: factor * w.abs().sum()),
    "l2": ("L2", lambda w, factor: factor * w.square().sum()),
    "l1_l2": ("L1L2", lambda w, l1, l2: l1 * w.abs().sum() + l2 * w.square().sum()),
}


class _BuiltIn(Regularizer):
    """A built-in kind, ``l1``, ``l2`` or ``l1_l2``: its penalty from ``_PENALTIES``."""

    def __init__(self, kind: str, applies_to: str = "dense", **params: float) -> None:
        super().__init__(applies_to, **params)
        self.kind = kind
        self.keras_name, self._penalty = _PENALTIES[kind]

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        """Return the penalty of one kernel as a 0-dim tensor."""
        return self._penalty(weight, **self._params)


def get_regularizer(spec: str | Mapping[str, Any] | Regularizer | None) -> Regularizer | None:
    """Build a weight regularizer.

    Args:
        spec: a kind (``"l2"``), a dict such as ``{"kind": "l2", "factor": 0.001, "applies_to": "dense"}``,
            an already built regularizer (returned as is), or None.

    Returns:
        A callable ``kernel -> penalty`` with ``.applies_to`` and ``get_config()``, or None for kind
        ``"none"`` (or a None spec).

    Raises:
        CnnlabError: unknown kind or key, or a value out of range.
    """
    if spec is None or isinstance(spec, Regularizer):
        return spec
    params = REGULARIZERS.resolve(spec)
    kind = params.pop("kind")
    if kind == "none":
        return None
    return _BuiltIn(kind, **params)


def regularization_loss(regularizer: Callable[[torch.Tensor], torch.Tensor] | None,
                        kernels: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum a regularizer's penalty over kernels.

    Args:
        regularizer: the penalty per kernel, or None.
        kernels: the weight tensors to penalize (kernels only; the caller leaves biases out).

    Returns:
        A 0-dim tensor; zero (on the kernels' device, if any) when there is nothing to sum.
    """
    kernels = list(kernels)
    if regularizer is None or not kernels:
        device = kernels[0].device if kernels else None
        return torch.zeros((), device=device)
    total = regularizer(kernels[0])
    for kernel in kernels[1:]:
        total = total + regularizer(kernel)
    return total

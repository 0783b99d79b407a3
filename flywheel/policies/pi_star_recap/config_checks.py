"""Make every field of the seed's document say what it does when it would otherwise do nothing.

The seed's commands pass flags that this implementation accepts but cannot honour as written: a hub
name as `vlm_model_name` (nothing is ever downloaded), IQL settings under the default `recap`
estimator, a 3.35 B-parameter default preset on a CPU. Each check here logs a warning that names the
field, its value and what is used instead, at the moment it matters:

- `check_config` when the config is made (IQL-only fields under `recap`, RECAP-only fields under `iql`);
- `check_build` and `check_training_batch` (build_checks.py) when the policy is built and when it
  first trains.

The IQL-only fields default to None so that a value the user typed can be told from a default: the
seed's own values (iql_expectile=0.7, ...) equal the IQL defaults. Under `recap` a given value is
warned about and cleared, so the saved config records that it was not used and reloading a checkpoint
is silent; under `iql` the defaults below fill what was left unset.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flywheel.policies.pi_star_recap.configuration_pi_star_recap import PiStarRECAPConfig

log = logging.getLogger(__name__)

# Fields read only by the in-policy IQL critics: (value under iql when unset, what it sets).
IQL_ONLY: dict[str, tuple[float, str]] = {
    "iql_expectile": (0.7, "the expectile of the V critic"),
    "iql_temperature": (0.5, "the temperature of the IQL advantage weights"),
    "iql_discount": (0.99, "the discount of the Q critics' target"),
    "iql_target_tau": (0.005, "the Polyak rate of the target Q critics"),
    "iql_hidden_dim": (256, "the width of the IQL critics"),
    "iql_max_weight": (100.0, "the clip of the IQL advantage weights"),
    "q_lr": (3e-4, "the learning rate of the Q critics"),
    "v_lr": (3e-4, "the learning rate of the V critic"),
}
# Fields read only when the prompt carries the advantage indicator (recap), with their defaults.
RECAP_ONLY: dict[str, tuple[float, str]] = {
    "advantage_dropout": (0.3, "how often the advantage indicator is dropped in training"),
    "cfg_scale": (1.0, "the classifier-free guidance between indicator and no indicator"),
}


def check_config(cfg: PiStarRECAPConfig) -> None:
    """Fill or clear the estimator-specific fields, warning about each given one that does nothing."""
    if cfg.advantage_estimator == "iql":
        for name, (default, _) in IQL_ONLY.items():
            if getattr(cfg, name) is None:
                setattr(cfg, name, default)
        _reset_unused(cfg, RECAP_ONLY, "iql", "the prompt carries no advantage indicator under IQL")
        return
    if _saved_before_none_defaults(cfg):
        for name in IQL_ONLY:
            setattr(cfg, name, None)
        return
    for name, (_, purpose) in IQL_ONLY.items():
        value = getattr(cfg, name)
        if value is not None:
            log.warning(
                "pi_star_recap: %s=%r has no effect with advantage_estimator='recap': it sets %s, and "
                "the policy has those critics only with --policy.advantage_estimator=iql (under recap "
                "the advantages come from the value function of `flywheel label`). Ignored, saved as None.",
                name,
                value,
                purpose,
            )
            setattr(cfg, name, None)


def _saved_before_none_defaults(cfg: PiStarRECAPConfig) -> bool:
    """A config.json saved before these fields defaulted to None holds every one at its IQL default;
    reloading such a checkpoint (a hot-swap of an older model) should not warn eight times."""
    return all(getattr(cfg, name) == default for name, (default, _) in IQL_ONLY.items())


def _reset_unused(cfg: Any, fields: dict[str, tuple[float, str]], estimator: str, why: str) -> None:
    for name, (default, purpose) in fields.items():
        value = getattr(cfg, name)
        if value != default:
            log.warning(
                "pi_star_recap: %s=%r has no effect with advantage_estimator=%r: it sets %s, and %s. "
                "Ignored, saved as %r.",
                name,
                value,
                estimator,
                purpose,
                why,
                default,
            )
            setattr(cfg, name, default)


def default_of(cfg: Any, name: str) -> Any:
    """The config class's own default of a field (one place states it: the dataclass)."""
    return next(f.default for f in dataclasses.fields(cfg) if f.name == name)

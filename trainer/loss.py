"""The ECHO loss: PPO-clip GRPO on action tokens plus lambda times the environment cross-entropy.

    L = L_policy(action tokens) + kl_coef * KL(action tokens) + lambda * L_env(observation bodies)

`echo_loss` is a pure function of tensors: per-token log-probs of the current policy (one
forward pass serves both terms), the sampler's log-probs, advantages and masks in; a scalar loss
and a metrics dict out. Normalisation, which decides what the numbers mean:

- Policy term: token-mean over all action tokens of the batch (sum of per-token clipped
  surrogates / number of action tokens), as in DAPO and SkyRL's "token_mean": every action
  token weighs the same, so long episodes are not down-weighted per token. The KL term (k3
  estimator against the reference policy) uses the same normaliser.
- Env term: for each sequence, the mean of -logprob over its observation-body tokens (so a
  rollout that printed 10k lines does not drown one that printed 10), then the mean over the
  sequences that have any observation token. No ratio, clip or KL, as in the paper.
- Warning tokens (harness text) and template tokens never enter the loss; the CE on warning
  tokens is logged as `warning_ce` to show how predictable they are.

Distributed / accumulated batches: the two denominators (action-token count, number of
sequences with observations) are taken from `normalizers`. Pass `global_normalizers(...)`, the
counts over the whole global batch divided by the world size; then averaging gradients over
ranks (what DDP and FSDP do) equals the gradient of the single-process loss on the whole batch,
because each sequence's per-sequence env normalisation is local to the rank that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

LossMode = Literal["grpo", "echo", "env-only"]
PAPER_ENV_COEF = 0.05  # lambda of the reference implementation


@dataclass(frozen=True)
class EchoLossConfig:
    """Knobs of `echo_loss`.

    mode:     "echo" = policy + lambda * env; "grpo" = policy only (the env CE is still computed
              and logged); "env-only" = lambda * env only, the verifier-free mode.
    env_coef: lambda. None means the mode's default: 0.05 for "echo" (the paper's value), 1.0 for
              "env-only" (the term stands alone, so its scale is just the learning rate's), and
              0 for "grpo", which rejects any other value.
    clip_eps_low / clip_eps_high: PPO ratio clip range [1 - low, 1 + high].
    kl_coef:  weight of the k3 KL estimate to the reference policy on action tokens (0 = off,
              as in the paper; needs ref_logprobs when > 0).
    """

    mode: LossMode = "echo"
    env_coef: float | None = None
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_coef: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("grpo", "echo", "env-only"):
            raise ValueError(f"mode must be 'grpo', 'echo' or 'env-only', got {self.mode!r}")
        if self.mode == "grpo" and self.env_coef not in (None, 0, 0.0):
            raise ValueError("mode 'grpo' means lambda = 0; use mode 'echo' for a non-zero env_coef")
        if self.env_coef is not None and self.env_coef < 0:
            raise ValueError(f"env_coef must be >= 0, got {self.env_coef}")
        if self.clip_eps_low < 0 or self.clip_eps_high < 0 or self.kl_coef < 0:
            raise ValueError("clip_eps_low, clip_eps_high and kl_coef must be >= 0")

    @property
    def resolved_env_coef(self) -> float:
        if self.mode == "grpo":
            return 0.0
        if self.env_coef is not None:
            return float(self.env_coef)
        return PAPER_ENV_COEF if self.mode == "echo" else 1.0


@dataclass(frozen=True)
class LossNormalizers:
    """The denominators of the loss terms for this rank / micro-batch.

    action_tokens: divides the summed per-token policy (and KL) terms.
    observation_sequences: divides the summed per-sequence env CE.
    """

    action_tokens: float
    observation_sequences: float

    @classmethod
    def from_masks(cls, action_mask: torch.Tensor, observation_mask: torch.Tensor) -> LossNormalizers:
        """Counts of the local batch: the right denominators when it is the whole batch."""
        counts = _counts(action_mask, observation_mask)
        return cls(action_tokens=float(counts[0]), observation_sequences=float(counts[1]))


def global_normalizers(
    action_mask: torch.Tensor, observation_mask: torch.Tensor, group: dist.ProcessGroup | None = None
) -> LossNormalizers:
    """Counts over all ranks' batches divided by the world size (one all-reduce).

    With these, the mean over ranks of each rank's loss is the single-process loss on the union
    of the batches, so gradient averaging (DDP/FSDP) gives the single-process gradient.
    """
    counts = _counts(action_mask, observation_mask).to(torch.float64)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
    world = dist.get_world_size(group)
    return LossNormalizers(action_tokens=float(counts[0]) / world, observation_sequences=float(counts[1]) / world)


def _counts(action_mask: torch.Tensor, observation_mask: torch.Tensor) -> torch.Tensor:
    n_action = action_mask.bool().sum()
    n_obs_sequences = observation_mask.bool().any(dim=-1).sum()
    return torch.stack([n_action, n_obs_sequences])


def echo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: torch.Tensor,
    observation_mask: torch.Tensor,
    warning_mask: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    config: EchoLossConfig = EchoLossConfig(),
    normalizers: LossNormalizers | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ECHO / GRPO / env-only loss on one batch.

    logprobs:      [B, T] current-policy log-prob of each token (`sequence_logprobs`), with grad.
    old_logprobs:  [B, T] log-probs of the policy that sampled the actions (sampler or recomputed);
                   only read at action positions.
    advantages:    [B] per sequence (broadcast over tokens) or [B, T] per token.
    action_mask, observation_mask, warning_mask: [B, T] bool/0-1 masks aligned with `logprobs`.
    ref_logprobs:  [B, T] reference-policy log-probs; needed only when config.kl_coef > 0.
    normalizers:   denominators; None = counts of this batch (see module doc for distributed use).

    Returns (loss, metrics). Metrics are local-batch means as floats: policy_loss, env_ce,
    warning_ce, kl, clip_fraction, approx_kl, env_coef, env_to_policy_ratio (|lambda*env| /
    |policy|), n_action_tokens, n_obs_tokens, n_obs_sequences, loss.
    """
    action = action_mask.bool()
    observation = observation_mask.bool()
    warning = warning_mask.bool() if warning_mask is not None else torch.zeros_like(action)
    if action.shape != logprobs.shape or observation.shape != logprobs.shape or warning.shape != logprobs.shape:
        raise ValueError(f"masks must have the shape of logprobs {tuple(logprobs.shape)}")
    if config.kl_coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs")
    normalizers = normalizers or LossNormalizers.from_masks(action, observation)
    advantages = advantages[:, None] if advantages.dim() == 1 else advantages

    per_token_policy, ratio = _clipped_surrogate(logprobs, old_logprobs, advantages, action, config)
    policy_term = per_token_policy.sum() / _positive(normalizers.action_tokens)
    kl_term = _kl_term(logprobs, ref_logprobs, action, normalizers) if config.kl_coef > 0 else None
    env_per_sequence = per_sequence_ce(logprobs, observation)
    env_term = env_per_sequence.sum() / _positive(normalizers.observation_sequences)

    env_coef = config.resolved_env_coef
    if config.mode == "env-only":
        loss = env_coef * env_term
    else:
        loss = policy_term + (config.kl_coef * kl_term if kl_term is not None else 0.0)
        if config.mode == "echo":
            loss = loss + env_coef * env_term

    metrics = _metrics(
        logprobs,
        ratio,
        advantages,
        action,
        observation,
        warning,
        per_token_policy,
        env_per_sequence,
        kl_term,
        env_coef,
        config,
    )
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def _clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    action: torch.Tensor,
    config: EchoLossConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token -min(r A, clip(r) A) on action tokens, 0 elsewhere; and the ratio r.

    `where` (not multiplication by the mask) keeps garbage old log-probs at non-action
    positions from turning into inf * 0 = NaN.
    """
    log_ratio = torch.where(action, logprobs - old_logprobs, torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - config.clip_eps_low, 1.0 + config.clip_eps_high)
    per_token = -torch.minimum(ratio * advantages, clipped * advantages)
    return torch.where(action, per_token, torch.zeros_like(per_token)), ratio


def _kl_term(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, action: torch.Tensor, normalizers: LossNormalizers
) -> torch.Tensor:
    """k3 estimate of KL(policy || reference): exp(ref - lp) - (ref - lp) - 1, token-mean."""
    delta = torch.where(action, ref_logprobs - logprobs, torch.zeros_like(logprobs))
    per_token = torch.exp(delta) - delta - 1.0
    return per_token.sum() / _positive(normalizers.action_tokens)


def per_sequence_ce(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] mean -logprob over each sequence's masked tokens; 0 (still graph-connected to
    `logprobs`) for sequences without any, so a batch without observations backpropagates.

    The one definition of the environment CE: the loss, SFT and held-out evaluation all use it,
    so their numbers mean the same thing. `where` (not a product) keeps -inf outside the mask out.
    """
    mask = mask.bool()
    summed = -torch.where(mask, logprobs, torch.zeros_like(logprobs)).sum(dim=-1)
    return summed / mask.sum(dim=-1).clamp(min=1).to(logprobs.dtype)


def mean_sequence_ce(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scalar: `per_sequence_ce` averaged over the sequences with at least one masked token
    (a sequence without any says nothing about the CE); a graph-connected 0 when none has one."""
    n_sequences = int(mask.bool().any(dim=-1).sum())
    return per_sequence_ce(logprobs, mask).sum() / max(n_sequences, 1)


def _positive(count: float) -> float:
    return count if count > 0 else 1.0


@torch.no_grad()
def _metrics(
    logprobs: torch.Tensor,
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    action: torch.Tensor,
    observation: torch.Tensor,
    warning: torch.Tensor,
    per_token_policy: torch.Tensor,
    env_per_sequence: torch.Tensor,
    kl_term: torch.Tensor | None,
    env_coef: float,
    config: EchoLossConfig,
) -> dict[str, float]:
    n_action = int(action.sum())
    n_obs_sequences = int(observation.any(dim=-1).sum())
    policy = float(per_token_policy.sum()) / max(n_action, 1)
    env_ce = float(env_per_sequence.sum()) / max(n_obs_sequences, 1)
    warning_sequences = int(warning.any(dim=-1).sum())
    warning_ce = float(per_sequence_ce(logprobs, warning).sum()) / max(warning_sequences, 1)
    # Tokens whose gradient the clip removed: ratio beyond the bound on the side the advantage pushes.
    advantages = advantages.expand_as(ratio)
    clipped = ((ratio > 1 + config.clip_eps_high) & (advantages > 0)) | (
        (ratio < 1 - config.clip_eps_low) & (advantages < 0)
    )
    log_ratio = torch.log(ratio)
    approx_kl = ((ratio - 1) - log_ratio)[action].sum()  # k3 estimate of KL(old || current)
    return {
        "policy_loss": policy,
        "env_ce": env_ce,
        "warning_ce": warning_ce,
        "kl": float(kl_term) if kl_term is not None else 0.0,
        "clip_fraction": float((clipped & action).sum()) / max(n_action, 1),
        "approx_kl": float(approx_kl) / max(n_action, 1),
        "env_coef": env_coef,
        "env_to_policy_ratio": abs(env_coef * env_ce) / max(abs(policy), 1e-8),
        "n_action_tokens": float(n_action),
        "n_obs_tokens": float(observation.sum()),
        "n_obs_sequences": float(n_obs_sequences),
    }


@dataclass(frozen=True)
class LambdaSchedule:
    """The env coefficient lambda as a function of the optimizer step.

    kind "constant": `initial` forever.
    kind "linear":   from `initial` at step 0 to `final` at `decay_steps`, then `final`.
    kind "step":     `initial * step_factor ** (step // step_every)`.

    A schedule is useful because lambda needs a sweep: the paper uses 0.05, and another team saw
    a much larger model collapse at 0.05 but train stably at 0.005.
    """

    kind: Literal["constant", "linear", "step"] = "constant"
    initial: float = PAPER_ENV_COEF
    final: float = 0.0
    decay_steps: int = 1000
    step_every: int = 100
    step_factor: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "linear", "step"):
            raise ValueError(f"kind must be 'constant', 'linear' or 'step', got {self.kind!r}")
        if self.initial < 0 or self.final < 0 or self.step_factor < 0:
            raise ValueError("initial, final and step_factor must be >= 0")
        if self.decay_steps <= 0 or self.step_every <= 0:
            raise ValueError("decay_steps and step_every must be positive")

    def lambda_at(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.kind == "constant":
            return self.initial
        if self.kind == "linear":
            progress = min(step / self.decay_steps, 1.0)
            return self.initial + (self.final - self.initial) * progress
        return self.initial * self.step_factor ** (step // self.step_every)

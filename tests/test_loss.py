"""echo_loss against values worked out by hand on 2 sequences x 5 tokens.

Token roles (P prompt, A action, W harness warning, O observation body):

    seq 0:  P  A  A  O  O      advantage +1.0
    seq 1:  P  A  W  O  A      advantage -0.5

Current log-probs lp, and importance ratios r = exp(lp - old) on the action tokens:

    seq 0:  lp = [0, -1.0, -0.5, -2.0, -0.2]    r(pos1) = 1.0, r(pos2) = 1.5
    seq 1:  lp = [0, -0.3, -1.5, -0.7, -1.0]    r(pos1) = 0.5, r(pos4) = 1.1

Policy term, clip [0.8, 1.2], per action token -min(r A, clip(r) A):
    seq0 pos1: -min(1.0, 1.0)           = -1.0
    seq0 pos2: -min(1.5, 1.2)           = -1.2   (clipped: r > 1.2 with A > 0)
    seq1 pos1: -min(-0.25, -0.4)        =  0.4   (clipped: r < 0.8 with A < 0)
    seq1 pos4: -min(-0.55, -0.55)       =  0.55
    token mean over 4 action tokens: (-1.0 - 1.2 + 0.4 + 0.55) / 4 = -1.25 / 4 = -0.3125

Env term, per-sequence mean CE over observation tokens, then mean over sequences:
    seq0: (2.0 + 0.2) / 2 = 1.1      seq1: 0.7 / 1 = 0.7      env = (1.1 + 0.7) / 2 = 0.9
Warning CE (logged only): seq1 pos2: 1.5
"""

import math

import pytest
import torch

from trainer.loss import (
    EchoLossConfig,
    LambdaSchedule,
    LossNormalizers,
    echo_loss,
    mean_sequence_ce,
    per_sequence_ce,
)

POLICY = -0.3125
ENV = 0.9


def make_batch() -> dict[str, torch.Tensor]:
    lp = torch.tensor([[0.0, -1.0, -0.5, -2.0, -0.2], [0.0, -0.3, -1.5, -0.7, -1.0]], requires_grad=True)
    ratios = torch.tensor([[1.0, 1.0, 1.5, 1.0, 1.0], [1.0, 0.5, 1.0, 1.0, 1.1]])
    old = lp.detach() - torch.log(ratios)
    old[0, 0] = float("nan")  # garbage outside action tokens must not leak into the loss
    return {
        "logprobs": lp,
        "old_logprobs": old,
        "advantages": torch.tensor([1.0, -0.5]),
        "action_mask": torch.tensor([[0, 1, 1, 0, 0], [0, 1, 0, 0, 1]], dtype=torch.bool),
        "observation_mask": torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 1, 0]], dtype=torch.bool),
        "warning_mask": torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 0, 0]], dtype=torch.bool),
    }


def test_echo_loss_value_and_metrics_match_hand_computation():
    batch = make_batch()
    loss, metrics = echo_loss(**batch, config=EchoLossConfig(mode="echo", env_coef=0.05))
    assert loss.item() == pytest.approx(POLICY + 0.05 * ENV, abs=1e-6)  # -0.3125 + 0.045 = -0.2675
    assert metrics["policy_loss"] == pytest.approx(POLICY, abs=1e-6)
    assert metrics["env_ce"] == pytest.approx(ENV, abs=1e-6)
    assert metrics["warning_ce"] == pytest.approx(1.5, abs=1e-6)
    assert metrics["clip_fraction"] == pytest.approx(2 / 4)
    # approx KL(old||new), k3 = (r - 1) - ln r per action token, mean over 4 tokens:
    # 0 + (0.5 - ln 1.5) + (-0.5 + ln 2) + (0.1 - ln 1.1)
    expected_kl = (0.5 - math.log(1.5) - 0.5 + math.log(2) + 0.1 - math.log(1.1)) / 4
    assert metrics["approx_kl"] == pytest.approx(expected_kl, abs=1e-6)
    assert metrics["env_to_policy_ratio"] == pytest.approx(0.05 * 0.9 / 0.3125, abs=1e-5)  # 0.144
    assert metrics["n_action_tokens"] == 4
    assert metrics["n_obs_tokens"] == 3
    assert metrics["n_obs_sequences"] == 2


def test_echo_loss_gradient_matches_hand_computation():
    batch = make_batch()
    loss, _ = echo_loss(**batch, config=EchoLossConfig(mode="echo", env_coef=0.05))
    loss.backward()
    # Unclipped action tokens: d(-r A)/d lp = -r A, over 4 tokens. Clipped tokens: 0.
    #   seq0 pos1: -1.0 * 1.0 / 4 = -0.25          seq1 pos4: -1.1 * -0.5 / 4 = 0.1375
    # Env tokens: -lambda / n_sequences / n_obs_tokens_of_sequence.
    #   seq0 pos3, pos4: -0.05 / 2 / 2 = -0.0125   seq1 pos3: -0.05 / 2 / 1 = -0.025
    expected = torch.tensor([[0.0, -0.25, 0.0, -0.0125, -0.0125], [0.0, 0.0, 0.0, -0.025, 0.1375]])
    torch.testing.assert_close(batch["logprobs"].grad, expected, atol=1e-6, rtol=0)


def test_lambda_zero_is_exactly_grpo():
    echo_batch, grpo_batch = make_batch(), make_batch()
    echo, _ = echo_loss(**echo_batch, config=EchoLossConfig(mode="echo", env_coef=0.0))
    grpo, grpo_metrics = echo_loss(**grpo_batch, config=EchoLossConfig(mode="grpo"))
    assert grpo.item() == pytest.approx(POLICY, abs=1e-6)
    assert torch.equal(echo, grpo)
    echo.backward()
    grpo.backward()
    assert torch.equal(echo_batch["logprobs"].grad, grpo_batch["logprobs"].grad)
    assert grpo_metrics["env_ce"] == pytest.approx(ENV, abs=1e-6)  # still logged under GRPO


def test_env_only_is_mean_per_sequence_ce_and_lambda_scales_it():
    batch = make_batch()
    loss, _ = echo_loss(**batch, config=EchoLossConfig(mode="env-only"))
    assert loss.item() == pytest.approx(ENV, abs=1e-6)  # weight 1 by default
    loss.backward()
    # No policy gradient at all: action tokens get 0; env tokens -1 / 2 / n_obs(seq).
    expected = torch.tensor([[0.0, 0.0, 0.0, -0.25, -0.25], [0.0, 0.0, 0.0, -0.5, 0.0]])
    torch.testing.assert_close(batch["logprobs"].grad, expected, atol=1e-6, rtol=0)
    scaled, _ = echo_loss(**make_batch(), config=EchoLossConfig(mode="env-only", env_coef=0.5))
    assert scaled.item() == pytest.approx(0.45, abs=1e-6)


def test_clip_zeroes_gradient_only_on_the_side_the_advantage_pushes():
    # One action token, ratio 1.5 (outside [0.8, 1.2]).
    lp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    old = lp.detach() - math.log(1.5)
    masks = dict(action_mask=torch.tensor([[False, True]]), observation_mask=torch.zeros(1, 2, dtype=torch.bool))
    # A > 0: surrogate min(1.5, 1.2) = 1.2 is the clipped constant, loss = -1.2, no gradient.
    loss, metrics = echo_loss(lp, old, torch.tensor([1.0]), **masks, config=EchoLossConfig(mode="grpo"))
    loss.backward()
    assert loss.item() == pytest.approx(-1.2, abs=1e-6)
    assert lp.grad[0, 1].item() == 0.0
    assert metrics["clip_fraction"] == 1.0
    # A < 0: min(-1.5, -1.2) = -1.5 is the unclipped term, loss = 1.5, gradient -r A = 1.5.
    lp.grad = None
    loss, metrics = echo_loss(lp, old, torch.tensor([-1.0]), **masks, config=EchoLossConfig(mode="grpo"))
    loss.backward()
    assert loss.item() == pytest.approx(1.5, abs=1e-6)
    assert lp.grad[0, 1].item() == pytest.approx(1.5, abs=1e-6)
    assert metrics["clip_fraction"] == 0.0
    # Asymmetric clip: eps_high 0.6 puts 1.5 inside the range, so A > 0 keeps its gradient -1.5.
    lp.grad = None
    loss, _ = echo_loss(lp, old, torch.tensor([1.0]), **masks, config=EchoLossConfig(mode="grpo", clip_eps_high=0.6))
    loss.backward()
    assert lp.grad[0, 1].item() == pytest.approx(-1.5, abs=1e-6)


def test_batch_without_observations_gives_graph_connected_zero():
    batch = make_batch()
    batch["observation_mask"] = torch.zeros_like(batch["observation_mask"])
    loss, metrics = echo_loss(**batch, config=EchoLossConfig(mode="env-only"))
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.equal(batch["logprobs"].grad, torch.zeros(2, 5))
    assert metrics["env_ce"] == 0.0 and metrics["n_obs_tokens"] == 0
    # In echo mode the loss is the policy term alone and backward still works.
    batch = make_batch()
    batch["observation_mask"] = torch.zeros_like(batch["observation_mask"])
    loss, _ = echo_loss(**batch, config=EchoLossConfig(mode="echo", env_coef=0.05))
    loss.backward()
    assert loss.item() == pytest.approx(POLICY, abs=1e-6)


def test_per_sequence_ce_and_its_mean_over_sequences_with_observations():
    batch = make_batch()
    lp, observation = batch["logprobs"], batch["observation_mask"]
    # seq0: (2.0 + 0.2) / 2 = 1.1, seq1: 0.7 / 1 = 0.7 (module doc); the mean is ENV = 0.9.
    torch.testing.assert_close(per_sequence_ce(lp, observation), torch.tensor([1.1, 0.7]), atol=1e-6, rtol=0)
    assert mean_sequence_ce(lp, observation).item() == pytest.approx(ENV, abs=1e-6)
    # A sequence without observations scores 0 and is left out of the mean (not averaged in as 0).
    only_first = observation.clone()
    only_first[1] = False
    torch.testing.assert_close(per_sequence_ce(lp, only_first), torch.tensor([1.1, 0.0]), atol=1e-6, rtol=0)
    assert mean_sequence_ce(lp, only_first).item() == pytest.approx(1.1, abs=1e-6)
    # Float 0/1 masks mean the same as bool ones; -inf outside the mask does not leak in.
    assert mean_sequence_ce(lp, observation.float()).item() == pytest.approx(ENV, abs=1e-6)
    masked_out = lp.detach().clone()
    masked_out[0, 0] = float("-inf")
    assert mean_sequence_ce(masked_out, observation).item() == pytest.approx(ENV, abs=1e-6)
    # No observation at all: 0, still connected to the graph.
    none = mean_sequence_ce(lp, torch.zeros_like(observation))
    assert none.item() == 0.0 and none.grad_fn is not None


def test_per_token_advantages_equal_broadcast_sequence_advantages():
    per_sequence, _ = echo_loss(**make_batch())
    batch = make_batch()
    batch["advantages"] = torch.tensor([[1.0] * 5, [-0.5] * 5])
    per_token, _ = echo_loss(**batch)
    assert torch.equal(per_sequence, per_token)


def test_kl_term_uses_k3_estimator_on_action_tokens():
    batch = make_batch()
    ref = batch["logprobs"].detach().clone()
    ref[0, 1] += math.log(2.0)  # action token: k3 = e^{ln 2} - ln 2 - 1 = 1 - ln 2
    ref[0, 3] += 5.0  # observation token: ignored by the KL term
    loss, metrics = echo_loss(**batch, ref_logprobs=ref, config=EchoLossConfig(mode="grpo", kl_coef=0.1))
    expected_kl = (1 - math.log(2.0)) / 4
    assert metrics["kl"] == pytest.approx(expected_kl, abs=1e-6)
    assert loss.item() == pytest.approx(POLICY + 0.1 * expected_kl, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logprobs"):
        echo_loss(**make_batch(), config=EchoLossConfig(kl_coef=0.1))


def test_split_batch_with_global_normalizers_reproduces_whole_batch_gradient():
    whole = make_batch()
    loss, _ = echo_loss(**whole)
    loss.backward()
    # Two "ranks" of one sequence each; the global counts are 4 action tokens and 2 sequences
    # with observations, divided by world size 2. Averaging the two gradients gives the whole.
    normalizers = LossNormalizers(action_tokens=4 / 2, observation_sequences=2 / 2)
    shards = []
    for row in range(2):
        part = {k: v[row : row + 1] for k, v in make_batch().items()}
        part["logprobs"] = part["logprobs"].detach().requires_grad_()
        shard_loss, _ = echo_loss(**part, normalizers=normalizers)
        shard_loss.backward()
        shards.append(part["logprobs"].grad)
    averaged = torch.cat(shards) / 2
    torch.testing.assert_close(averaged, whole["logprobs"].grad, atol=1e-7, rtol=0)


def test_config_rejects_contradictions():
    with pytest.raises(ValueError, match="grpo"):
        EchoLossConfig(mode="grpo", env_coef=0.05)
    with pytest.raises(ValueError, match="mode"):
        EchoLossConfig(mode="sft")  # type: ignore[arg-type]
    assert EchoLossConfig().resolved_env_coef == 0.05
    assert EchoLossConfig(mode="env-only").resolved_env_coef == 1.0


def test_lambda_schedules():
    constant = LambdaSchedule(kind="constant", initial=0.05)
    assert constant.lambda_at(0) == 0.05 and constant.lambda_at(10_000) == 0.05
    # Linear 0.05 -> 0.005 over 100 steps: halfway = 0.05 + (0.005 - 0.05) * 0.5 = 0.0275.
    linear = LambdaSchedule(kind="linear", initial=0.05, final=0.005, decay_steps=100)
    assert linear.lambda_at(0) == pytest.approx(0.05)
    assert linear.lambda_at(50) == pytest.approx(0.0275)
    assert linear.lambda_at(100) == pytest.approx(0.005)
    assert linear.lambda_at(250) == pytest.approx(0.005)
    # Step decay x0.5 every 10 steps: steps 0-9 -> 0.05, 10-19 -> 0.025, 20-29 -> 0.0125.
    step = LambdaSchedule(kind="step", initial=0.05, step_every=10, step_factor=0.5)
    assert step.lambda_at(9) == pytest.approx(0.05)
    assert step.lambda_at(10) == pytest.approx(0.025)
    assert step.lambda_at(25) == pytest.approx(0.0125)
    with pytest.raises(ValueError):
        LambdaSchedule(kind="linear", decay_steps=0)

"""Group-normalised advantages against hand-computed values."""

import math

import pytest
import torch

from trainer.advantages import group_advantages


def test_group_normalised_advantages_hand_values():
    # Groups interleaved on purpose: a = [1, 0, 0, 1], b = [0.5] * 3, c = [1, 0].
    rewards = [1.0, 0.5, 0.0, 1.0, 0.5, 0.0, 0.5, 1.0, 0.0]
    groups = ["a", "b", "a", "c", "b", "a", "b", "a", "c"]
    advantages = group_advantages(rewards, groups, eps=0.0)
    # a: mean 0.5, deviations +-0.5, unbiased std = sqrt(4 * 0.25 / 3) = sqrt(1/3) -> +-0.5 * sqrt(3)
    a = 0.5 * math.sqrt(3)
    # c: mean 0.5, deviations +-0.5, unbiased std = sqrt(2 * 0.25 / 1) = sqrt(0.5) -> +-sqrt(0.5)
    c = math.sqrt(0.5)
    expected = torch.tensor([a, 0.0, -a, c, 0.0, -a, 0.0, a, -c])
    torch.testing.assert_close(advantages, expected, atol=1e-6, rtol=0)


def test_equal_rewards_give_exact_zero_even_with_rounding():
    # mean(0.1, 0.1, 0.1) is not exactly 0.1 in floating point; the group must still be 0, not
    # (rounding error) / eps.
    advantages = group_advantages([0.1, 0.1, 0.1, 0.7], ["g", "g", "g", "single"])
    assert torch.equal(advantages, torch.zeros(4))


def test_without_std_scaling_advantages_are_centred_rewards():
    advantages = group_advantages([3.0, 1.0, 2.0], [7, 7, 7], scale_by_std=False)
    torch.testing.assert_close(advantages, torch.tensor([1.0, -1.0, 0.0]))


def test_eps_guards_the_division():
    # Two rewards 1e-7 apart: std ~7e-8, so eps=1e-6 dominates and keeps the advantages small.
    advantages = group_advantages([0.0, 1e-7], ["g", "g"], eps=1e-6)
    assert advantages.abs().max() < 0.1


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="group ids"):
        group_advantages([1.0, 0.0], ["g"])

"""Group-normalised advantages (GRPO): each rollout is scored against its siblings.

The G rollouts of one task form a group; a rollout's advantage is its reward minus the group's
mean, divided by the group's standard deviation (optional, as in Dr. GRPO, which drops it to
avoid up-weighting near-uniform groups). A group whose rewards are all equal teaches the policy
term nothing and gets exactly zero, never the division noise of (r - mean) / (tiny + eps).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def group_advantages(
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable],
    *,
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """[N] advantages for N rollouts with rewards and group ids (any hashables, any order).

    std is the unbiased sample standard deviation (torch's default, as in TRL's GRPO); groups of
    one rollout, like groups of equal rewards, get 0.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
    if rewards.numel() != len(group_ids):
        raise ValueError(f"{rewards.numel()} rewards but {len(group_ids)} group ids")
    advantages = torch.zeros_like(rewards)
    for members in _group_members(group_ids).values():
        index = torch.tensor(members)
        group = rewards[index]
        if group.numel() < 2 or bool((group == group[0]).all()):
            continue
        centred = group - group.mean()
        advantages[index] = centred / (group.std() + eps) if scale_by_std else centred
    return advantages.to(torch.float32)


def _group_members(group_ids: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    members: dict[Hashable, list[int]] = {}
    for position, group_id in enumerate(group_ids):
        members.setdefault(group_id, []).append(position)
    return members

"""Harbor's reward contract, checked on the file contents alone."""

import pytest

from taskforge.verify import (
    InvalidRewardError,
    RewardFileEmptyError,
    RewardFileNotFoundError,
    parse_reward,
    scalar_reward,
)


def test_reward_txt_is_read_as_a_float():
    assert parse_reward(None, b"1\n") == {"reward": 1.0}
    assert parse_reward(None, b" 0.25 ") == {"reward": 0.25}


def test_reward_json_wins_over_reward_txt():
    assert parse_reward(b'{"reward": 0.5, "style": 1}', b"1") == {"reward": 0.5, "style": 1.0}


@pytest.mark.parametrize(
    ("reward_json", "reward_txt", "error"),
    [
        (None, None, RewardFileNotFoundError),
        (None, b"", RewardFileEmptyError),
        (None, b"  \n", RewardFileEmptyError),
        (None, b"nan", InvalidRewardError),
        (None, b"passed", InvalidRewardError),
        (b"", None, RewardFileEmptyError),
        (b"[1]", None, InvalidRewardError),
        (b'{"reward": NaN}', None, InvalidRewardError),
        (b'{"reward": "1"}', b"1", InvalidRewardError),
        (b"{}", None, InvalidRewardError),
    ],
)
def test_unusable_rewards_are_named_errors(reward_json, reward_txt, error):
    with pytest.raises(error):
        parse_reward(reward_json, reward_txt)


def test_scalar_reward_prefers_the_reward_key_else_the_mean():
    assert scalar_reward({"reward": 0.0, "partial": 1.0}) == 0.0
    assert scalar_reward({"a": 1.0, "b": 0.0}) == 0.5


def test_toolchain_changes_name_what_the_verifier_runs_through_and_nothing_else():
    from taskforge.verify import toolchain_changes

    grading = [
        "/usr/bin/python3",  # replaced (a symlink written through lands on python3.11)
        "/usr/bin/python3.11",
        "/usr/local/bin/python3",  # shadowed: /usr/local/bin comes first on PATH
        "/bin/bash",
        "/usr/local/bin/pytest",
        "/etc/ld.so.preload",  # a library loaded into every process
        "/conftest.py",  # pytest reads conftest.py files up to the root
        "/usr/lib/python3/dist-packages/_pytest/main.py",
        "/usr/local/lib/python3.11/site-packages/hook.pth",  # runs at interpreter start
        "/usr/lib/python3.11/sitecustomize.py",
        "/lib/x86_64-linux-gnu/libc.so.6",
    ]
    ordinary = [
        "/usr/local/bin/mytool",  # a task may install its own commands
        "/usr/bin/x/python3",  # not on PATH
        "/app/python3",
        "/app/conftest.py",  # a project's own tests
        "/usr/lib/python3.11/json/__init__.py",
        "/tmp/bash",
        "/usr/bin",  # the directory itself changes whenever a file in it does
    ]
    assert toolchain_changes(grading + ordinary) == grading

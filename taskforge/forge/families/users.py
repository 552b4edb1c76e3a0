"""User-account family: onboard accounts from a CSV, offboard others, UIDs, expiry dates, SSH keys."""

from __future__ import annotations

import datetime
import random

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family, bent
from taskforge.forge.common import add_group, add_user, bullets, csv_text, pick, test_module

SHELLS = ["/bin/bash", "/bin/sh", "/usr/sbin/nologin"]

ACCOUNTS_TEST = """
import datetime
import grp
import pwd


def shadow_field(user, index):
    for line in read_text("/etc/shadow").splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields[index]
    raise AssertionError(f"{user} has no /etc/shadow entry")


def test_created_accounts():
    for user, want in EXPECTED["users"].items():
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise AssertionError(f"user {user} does not exist") from None
        assert entry.pw_dir == f"{EXPECTED['home_base']}/{user}", f"{user}: home {entry.pw_dir}"
        assert os.path.isdir(entry.pw_dir), f"{user}: home directory {entry.pw_dir} missing"
        assert os.stat(entry.pw_dir).st_uid == entry.pw_uid, f"{user}: home directory not owned by the user"
        assert entry.pw_shell == want["shell"], f"{user}: shell {entry.pw_shell}, expected {want['shell']}"
        assert entry.pw_gecos.split(",")[0] == want["full_name"], f"{user}: full name {entry.pw_gecos!r}"
        for group in want["groups"]:
            try:
                entry_of_group = grp.getgrnam(group)
            except KeyError:
                raise AssertionError(f"group {group} does not exist") from None
            # "member of": a supplementary member, or the group is the user's primary group
            member = user in entry_of_group.gr_mem or entry.pw_gid == entry_of_group.gr_gid
            assert member, f"{user} is not in group {group}"
        if want.get("uid") is not None:
            assert entry.pw_uid == want["uid"], f"{user}: uid {entry.pw_uid}, expected {want['uid']}"
        if want.get("expires"):
            days = (datetime.date.fromisoformat(want["expires"]) - datetime.date(1970, 1, 1)).days
            assert shadow_field(user, 7) == str(days), f"{user}: account expiry is not {want['expires']}"
        if EXPECTED["policy"] == "expire":
            assert shadow_field(user, 2) == "0", f"{user}: the password is not marked as expired (change at first login)"
        if EXPECTED["policy"] == "inactive":
            assert shadow_field(user, 6) == str(EXPECTED["inactive_days"]), f"{user}: the password inactivity period is not {EXPECTED['inactive_days']} days"


def test_removed_accounts():
    for user in EXPECTED["removed"]:
        try:
            pwd.getpwnam(user)
        except KeyError:
            pass
        else:
            raise AssertionError(f"user {user} should have been removed")
        assert not os.path.exists(f"/home/{user}"), f"/home/{user} should have been removed"
    for user in EXPECTED["kept"]:
        pwd.getpwnam(user)


def test_ssh_keys():
    for user, key in EXPECTED["keys"].items():
        entry = pwd.getpwnam(user)
        ssh = os.path.join(entry.pw_dir, ".ssh")
        path = os.path.join(ssh, "authorized_keys")
        assert read_text(path).strip() == key, f"{path} does not hold the key from the onboarding folder"
        for p, mode in ((ssh, 0o700), (path, 0o600)):
            st = os.stat(p)
            assert st.st_uid == entry.pw_uid, f"{p} is not owned by {user}"
            assert st.st_mode & 0o777 == mode, f"{p}: mode {st.st_mode & 0o777:o}, expected {mode:o}"
    assert EXPECTED["users"], "accounts are checked"
"""


class UserAccounts(Family):
    name = "user_accounts"
    domain = "system_operations"
    summary = "create and remove Unix accounts from an onboarding list (groups, shells, UIDs, expiry, SSH keys)"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        names = pick(rng, pools.PEOPLE, 8)
        rng.shuffle(names)
        new_users = names[: rng.randint(2, 4)]
        leaving = names[4 : 4 + rng.randint(1, 2)] if difficulty != "easy" else []
        staying = names[6:7] if difficulty != "easy" else []
        folder = rng.choice(["/home/user/onboarding", "/srv/hr/onboarding", "/root/onboarding"])
        csv_path = f"{folder}/{rng.choice(['accounts.csv', 'new_accounts.csv', 'users.csv'])}"
        header = ["username", "full_name", "shell", "groups"]
        if difficulty == "hard":
            header += ["uid", "expires"]
        home_base = rng.choice(["/home", "/home/staff", "/srv/home"])
        keys_dir = rng.choice(["keys", "pubkeys", "ssh"])
        common = rng.choice(pools.GROUPS + [None, None])
        policy = rng.choice([None, "expire", "inactive"])
        inactive_days = rng.choice([7, 14, 30])
        rows, users, keys = [], {}, {}
        uids = sorted(rng.sample(range(2001, 2999), len(new_users)))
        files: dict[str, str] = {}
        for i, user in enumerate(new_users):
            full = f"{user.capitalize()} {rng.choice(pools.SURNAMES)}"
            shell = rng.choice(SHELLS)
            groups = pick(rng, pools.GROUPS, rng.randint(1, 3))
            row = [user, full, shell, ";".join(groups)]
            want = {"full_name": full, "shell": shell, "groups": sorted(set(groups) | ({common} if common else set()))}
            if difficulty == "hard":
                expires = datetime.date(2027, 1, 1) + datetime.timedelta(days=rng.randint(0, 700))
                row += [str(uids[i]), expires.isoformat()]
                want.update(uid=uids[i], expires=expires.isoformat())
                random_part = "".join(
                    rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") for _ in range(43)
                )
                key = f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{random_part} {user}@laptop"
                files[f"{folder}/{keys_dir}/{user}.pub"] = key + "\n"
                keys[user] = key
            rows.append(row)
            users[user] = want
        files[csv_path] = csv_text(header, rows)
        # some groups exist already, one the accounts need does not ("create missing groups" is tested)
        needed = sorted({g for want in users.values() for g in want["groups"]})
        setup = [add_group(g) for g in pick(rng, pools.GROUPS, 2) if g != needed[0]]
        offboard = None
        if leaving:
            offboard = f"{folder}/{rng.choice(['offboarding.txt', 'leavers.txt', 'remove.txt'])}"
            files[offboard] = "".join(f"{u}\n" for u in leaving)
            setup += [add_user(u, shell="/bin/bash", home=True) for u in leaving + staying]

        rules = [
            f"home directory `{home_base}/<username>`; login shell and full name (comment field) from the file",
            "member of the groups in the `groups` column (`;`-separated)"
            + (f" and of `{common}`" if common else "")
            + "; create missing groups",
        ]
        if policy == "expire":
            rules.append("password expired, so it must be changed at first login")
        elif policy == "inactive":
            rules.append(f"password inactivity period of {inactive_days} days")
        if difficulty == "hard":
            rules += [
                "user ID from the `uid` column, account expiry date from the `expires` column",
                (
                    f"`{folder}/{keys_dir}/<username>.pub` installed as `~/.ssh/authorized_keys` (`.ssh` mode `700`, "
                    "the file `600`, both owned by the user)"
                ),
            ]
        instruction = (
            f"Create the user accounts listed in `{csv_path}` (CSV with a header line), each with:\n{bullets(rules)}\n"
        )
        if offboard:
            instruction += f"\nThen delete the accounts listed in `{offboard}` and their home directories.\n"

        sol = [
            (
                f"tail -n +2 {csv_path} | while IFS=, read -r user full shell "
                f"groups{' uid expires' if difficulty == 'hard' else ''}; do"
            ),
            f'  groups="$groups{";" + common if common else ""}"',
            '  for g in ${groups//;/ }; do getent group "$g" >/dev/null || groupadd "$g"; done',
            f"  mkdir -p {home_base}",
            f'  useradd -m -d {home_base}/$user -s "$shell" -c "$full" -G "${{groups//;/,}}"'
            + (' -u "$uid" -e "$expires"' if difficulty == "hard" else "")
            + ' "$user"',
        ]
        if policy == "expire":
            sol.append('  passwd -e "$user" >/dev/null')
        elif policy == "inactive":
            sol.append(f'  chage -I {inactive_days} "$user"')
        if difficulty == "hard":
            sol += [
                f'  install -d -m 700 -o "$user" -g "$user" {home_base}/$user/.ssh',
                (
                    f'  install -m 600 -o "$user" -g "$user" {folder}/{keys_dir}/$user.pub '
                    f"{home_base}/$user/.ssh/authorized_keys"
                ),
            ]
        sol.append("done")
        if offboard:
            sol.append(
                f'while read -r user; do [ -n "$user" ] && userdel -r "$user" 2>/dev/null || true; done < {offboard}'
            )
        solution = "\n".join(sol) + "\n"
        near_misses = {"no_full_name": bent(solution, ' -c "$full"', "")}
        if difficulty == "hard":
            near_misses["ignores_uid_column"] = bent(solution, ' -u "$uid"', "")
        else:
            near_misses["skips_missing_groups"] = bent(solution, sol[2] + "\n", "")
        if offboard:
            near_misses["keeps_leaver_homes"] = bent(solution, 'userdel -r "$user"', 'userdel "$user"')
        expected = {
            "users": users,
            "removed": leaving,
            "kept": staying,
            "keys": keys,
            "home_base": home_base,
            "policy": policy,
            "inactive_days": inactive_days,
        }
        tests = test_module(self.name, expected, ACCOUNTS_TEST)
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[home_base],
            files=files,
            setup=setup,
            near_misses=near_misses,
        )

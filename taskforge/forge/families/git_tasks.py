"""Git families: branch reports, merge conflicts, tags/cherry-picks/reverts, changelogs from commits."""

from __future__ import annotations

import random

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family
from taskforge.forge.common import bullets, heredoc, pick, python_block, test_module
from taskforge.forge.families.gitrepo import History, line_change, person

TOPICS = [
    "login",
    "cache",
    "export",
    "retry",
    "search",
    "metrics",
    "billing",
    "docs",
    "upload",
    "i18n",
    "audit",
    "alerts",
]
MAIN_FILES = ["src/app.py", "README.md", "docs/guide.md", "setup.cfg"]


def _repo_path(rng: random.Random, app: str) -> str:
    return rng.choice([f"/home/user/repos/{app}", f"/srv/git/{app}", f"/home/user/{app}"])


class GitBranchReport(Family):
    name = "git_branch_report"
    domain = "development_tooling"
    summary = "report on a git repository: commits per author, ahead/behind counts, merged branches, changed files"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        repo = _repo_path(rng, app)
        h = History(repo, rng)
        authors = pick(rng, pools.PEOPLE, rng.randint(3, 4))
        h.commit("Initial commit", authors[0], {"README.md": f"# {app}\n"})
        n_main = rng.randint(5, 9)
        # easy has one merged and one unmerged branch, so "non-merge" and "reachable from main" both matter
        topics = pick(
            rng, TOPICS, 2 if difficulty == "easy" else rng.randint(3, 5) if difficulty == "hard" else rng.randint(2, 4)
        )
        kinds = {t: rng.choice(["feature", "bugfix", "chore"]) for t in topics}
        names = {t: f"{kinds[t]}/{t}" for t in topics}
        forks = {t: rng.randint(0, n_main - 2) for t in topics}
        merged = set(rng.sample(topics, min(len(topics) - 1, rng.randint(1, 2)))) if topics else set()
        # iterate in list order, never over the set: set order depends on PYTHONHASHSEED
        merge_at = {t: rng.randint(forks[t] + 1, n_main - 1) for t in topics if t in merged}
        extra_after_merge = {t for t in topics if t in merged and difficulty == "hard" and rng.random() < 0.4}
        for i in range(n_main):
            h.commit(h.new_subject(), rng.choice(authors), line_change(h, rng.choice(MAIN_FILES)))
            for t in topics:
                if merge_at.get(t) == i:
                    h.merge(names[t], rng.choice(authors))
                    if t in extra_after_merge:
                        h.checkout(names[t])
                        h.commit(h.new_subject(), rng.choice(authors), line_change(h, f"src/{t}.py"))
                        h.checkout("main")
                if forks[t] == i:
                    h.branch(names[t])
                    for _ in range(rng.randint(1, 4)):
                        path = rng.choice([f"src/{t}.py", f"tests/test_{t}.py", f"docs/{t}.md"])
                        h.commit(h.new_subject(), rng.choice(authors), line_change(h, path))
                    h.checkout("main")
        main = h.ancestors(h.heads["main"])
        out_dir = rng.choice(pools.OUT_DIRS)
        if difficulty == "easy":
            key = rng.choice(["name", "email"])
            out = f"{out_dir}/{app}_{rng.choice(['authors', 'contributors', 'commit_counts'])}.csv"
            counts: dict[str, int] = {}
            for cid in main:
                c = h.commits[cid]
                if len(c.parents) < 2:
                    who = person(c.author)[0 if key == "name" else 1]
                    counts[who] = counts.get(who, 0) + 1
            rows = sorted(([a, n] for a, n in counts.items()), key=lambda r: (-r[1], r[0]))
            column = "author" if key == "name" else "email"
            fmt = "%an" if key == "name" else "%ae"

            def count_authors(log_args: str) -> str:
                return (
                    f"mkdir -p {out_dir}\ncd {repo}\n"
                    f"{{ echo {column},commits; git log {log_args} --format='{fmt}' "
                    "| sort | uniq -c | sort -k1,1nr -k2 "
                    f'| awk \'{{ n=$1; $1=""; sub(/^ /, ""); print $0 "," n }}\'; }} > {out}\n'
                )

            solution = count_authors("main --no-merges")
            near_misses = {
                "counts_merge_commits": count_authors("main"),
                "counts_all_branches": count_authors("--all --no-merges"),
            }
            instruction = (
                f"`{repo}` is a git repository. Write `{out}` with the header `{column},commits`: "
                f"one row per author {key} with the number of non-merge commits "
                f"reachable from `main` that they authored, most commits first, ties by {key}.\n"
            )
            expected = {"path": out, "header": [column, "commits"], "rows": rows}
            body = """
                def test_author_counts():
                    check_csv_table(EXPECTED["path"], EXPECTED["header"], EXPECTED["rows"], {"commits"}, ordered=True)
                """
            helpers = ("csv",)
        elif difficulty == "medium":
            out = f"{out_dir}/{app}_{rng.choice(['branches', 'branch_status', 'divergence'])}.json"
            prefix = rng.choice([None, "feature/", "bugfix/", "chore/"])
            if prefix and (
                not any(names[t].startswith(prefix) for t in topics) or all(names[t].startswith(prefix) for t in topics)
            ):
                prefix = None  # the prefix must select some branches and leave out others
            listed = [t for t in topics if not prefix or names[t].startswith(prefix)]
            if all(
                len(h.ancestors(h.heads[names[t]]) - main) == len(main - h.ancestors(h.heads[names[t]])) for t in listed
            ):
                h.checkout(names[listed[0]])  # one more commit, so that ahead and behind differ somewhere
                h.commit(h.new_subject(), rng.choice(authors), line_change(h, f"src/{listed[0]}.py"))
                h.checkout("main")
            report = {}
            for t in listed:
                b = h.ancestors(h.heads[names[t]])
                report[names[t]] = {"ahead": len(b - main), "behind": len(main - b)}
            which = f"whose name starts with `{prefix}`" if prefix else "other than `main`"
            instruction = (
                f"`{repo}` is a git repository with a `main` branch and other local branches. Write `{out}`: "
                "a JSON object with one key per local branch "
                f'{which}, whose value is `{{"ahead": <number of commits on the branch that are not on main>, '
                '"behind": <number of commits on main that are not on the branch>}` '
                "(merge commits count like any other commit).\n"
            )

            def divergence(refs: str, count: str = "git rev-list --count") -> str:
                return (
                    f"mkdir -p {out_dir}\ncd {repo}\n"
                    f"for b in $(git for-each-ref --format='%(refname:short)' {refs}); do\n"
                    f'  jq -n --arg b "$b" --argjson a "$({count} main..$b)" --argjson z '
                    f"\"$({count} $b..main)\" '{{($b): {{ahead: $a, behind: $z}}}}'\n"
                    f"done | jq -s add > {out}\n"
                )

            solution = divergence(f"refs/heads/{prefix}" if prefix else "refs/heads/ | grep -vx main")
            merges = {c for c in h.commits if len(h.commits[c].parents) > 1}
            near_misses = {}
            if any((h.ancestors(h.heads[b]) ^ main) & merges for b in report):  # a merge commit is counted
                near_misses["skips_merge_commits"] = divergence(
                    f"refs/heads/{prefix}" if prefix else "refs/heads/ | grep -vx main",
                    "git rev-list --count --no-merges",
                )
            if any(v["ahead"] != v["behind"] for v in report.values()):
                near_misses["ahead_behind_swapped"] = divergence(
                    f"refs/heads/{prefix}" if prefix else "refs/heads/ | grep -vx main"
                ).replace("{($b): {ahead: $a, behind: $z}}", "{($b): {ahead: $z, behind: $a}}")
            if prefix:
                near_misses["ignores_prefix"] = divergence("refs/heads/ | grep -vx main")
            else:
                near_misses["includes_main"] = divergence("refs/heads/")
            expected = {"path": out, "report": report}
            body = """
                def test_branch_counts():
                    data = load_json(EXPECTED["path"])
                    got = {b: {"ahead": int(v["ahead"]), "behind": int(v["behind"])} for b, v in data.items()}
                    assert got == EXPECTED["report"], f"{got} != {EXPECTED['report']}"
                """
            helpers = ("json",)
        else:
            out = f"{out_dir}/{app}_{rng.choice(['branch_audit', 'branch_review', 'stale_branches'])}.json"
            fully = sorted(names[t] for t in topics if not (h.ancestors(h.heads[names[t]]) - main))
            key = rng.choice(["name", "email"])
            unmerged = {}
            for t in topics:
                tip = h.heads[names[t]]
                only = h.ancestors(tip) - main
                if not only:
                    continue
                per: dict[str, int] = {}
                for cid in only:
                    name = person(h.commits[cid].author)[0 if key == "name" else 1]
                    per[name] = per.get(name, 0) + 1
                top_author = sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
                base_tree = h.trees[h.merge_base(tip, h.heads["main"])]
                tip_tree = h.trees[tip]
                changed = sorted(p for p in set(base_tree) | set(tip_tree) if base_tree.get(p) != tip_tree.get(p))
                unmerged[names[t]] = {"ahead": len(only), "top_author": top_author, "files": changed}
            instruction = (
                (
                    f"Audit the local branches of the git repository `{repo}` against `main` and write "
                    f"`{out}`, a JSON object with:\n"
                )
                + bullets(
                    [
                        "`merged`: sorted names of the branches whose commits are all on `main`",
                        (
                            "`unmerged`: for every other branch, "
                            '`{"ahead": <its commits not on main>, "top_author": <author '
                        )
                        + key
                        + " with most of those commits, ties by "
                        + key
                        + '>, "files": <sorted paths that differ from its merge base with main>}`',
                    ]
                )
                + "\n"
            )

            def audit(author_format: str, diff_range: str) -> str:
                return f"mkdir -p {out_dir}\n" + python_block(f"""
                    import collections, json, subprocess
                    def git(*args):
                        return subprocess.run(["git", "-C", {repo!r}, *args], capture_output=True, text=True, check=True).stdout.split("\\n")
                    branches = [b for b in git("for-each-ref", "--format=%(refname:short)", "refs/heads/") if b and b != "main"]
                    report = {{"merged": [], "unmerged": {{}}}}
                    for b in sorted(branches):
                        authors = [a for a in git("log", "--format={author_format}", f"main..{{b}}") if a]
                        if not authors:
                            report["merged"].append(b)
                            continue
                        counts = collections.Counter(authors)
                        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
                        files = sorted(f for f in git("diff", "--name-only", f"{diff_range}") if f)
                        report["unmerged"][b] = {{"ahead": len(authors), "top_author": top, "files": files}}
                    json.dump(report, open({out!r}, "w"), indent=2)
                    """)

            fmt = "%an" if key == "name" else "%ae"
            solution = audit(fmt, "main...{b}")
            near_misses = {
                "diffs_against_main_tip": audit(fmt, "main..{b}"),
                "top_author_by_other_key": audit("%ae" if key == "name" else "%an", "main...{b}"),
            }
            expected = {"path": out, "merged": fully, "unmerged": unmerged}
            body = """
                def test_branch_audit():
                    data = load_json(EXPECTED["path"])
                    assert sorted(data["merged"]) == EXPECTED["merged"], f"merged {sorted(data['merged'])} != {EXPECTED['merged']}"
                    got = data["unmerged"]
                    assert sorted(got) == sorted(EXPECTED["unmerged"]), f"unmerged branches {sorted(got)} != {sorted(EXPECTED['unmerged'])}"
                    for branch, want in EXPECTED["unmerged"].items():
                        assert int(got[branch]["ahead"]) == want["ahead"], f"{branch}: ahead {got[branch]['ahead']} != {want['ahead']}"
                        assert got[branch]["top_author"] == want["top_author"], f"{branch}: top_author {got[branch]['top_author']} != {want['top_author']}"
                        assert sorted(got[branch]["files"]) == want["files"], f"{branch}: files {sorted(got[branch]['files'])} != {want['files']}"
                """
            helpers = ("json",)
        tests = test_module(self.name, expected, body, helpers=helpers)
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[out],
            setup=h.script(),
            near_misses=near_misses,
        )


SETTING_KEYS = [
    "port",
    "timeout",
    "workers",
    "log_level",
    "cache_size",
    "max_retries",
    "region",
    "pool_size",
    "theme",
    "batch_size",
]


def _setting(rng: random.Random, key: str) -> str:
    if key == "log_level":
        return rng.choice(["debug", "info", "warning", "error"])
    if key == "region":
        return rng.choice(pools.REGIONS)
    if key == "theme":
        return rng.choice(["light", "dark", "contrast", "auto"])
    return str(rng.randint(1, 9000))


def _other_value(rng: random.Random, key: str, exclude: set[str]) -> str:
    """A value for `key` that differs from every value in `exclude`."""
    while True:
        value = _setting(rng, key)
        if value not in exclude:
            return value


def _settings_text(app: str, values: dict[str, str]) -> str:
    return f"# {app} settings\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


MERGE_TEST = """
def parse_settings(text):
    values = {}
    for line in text.splitlines():
        line = line.strip()
        assert not line.startswith(("<<<<<<<", ">>>>>>>", "=======")), f"conflict marker left: {line!r}"
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {line!r}"
        values[key.strip()] = value.strip()
    return values


def test_merge_commit():
    repo = EXPECTED["repo"]
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main", "main is not checked out"
    parents = (git(repo, "rev-list", "--parents", "-n", "1", "main") or "").split()
    assert len(parents) == 3, "the tip of main is not a merge commit with two parents"
    assert git(repo, "log", "-1", "--format=%s", parents[1]) == EXPECTED["main_subject"], "the merge's first parent is not the old tip of main"
    assert git(repo, "log", "-1", "--format=%s", parents[2]) == EXPECTED["feature_subject"], f"the merge's second parent is not the tip of {EXPECTED['feature']}"
    if EXPECTED["merge_subject"]:
        assert git(repo, "log", "-1", "--format=%s", "main") == EXPECTED["merge_subject"], "wrong merge commit message"
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == "", "the working tree has uncommitted changes"


def test_resolved_files():
    repo = EXPECTED["repo"]
    for path, want in EXPECTED["settings"].items():
        text = git(repo, "show", f"main:{path}")
        assert text is not None, f"{path} is missing from main"
        assert parse_settings(text) == want, f"{path}: {parse_settings(text)} != {want}"
    for path, want in EXPECTED["files"].items():
        text = git(repo, "show", f"main:{path}")
        assert text is not None and text.strip() == want.strip(), f"{path} on main does not hold the expected content"
"""


class GitMergeConflict(Family):
    name = "git_merge_conflict"
    domain = "development_tooling"
    summary = "merge a feature branch into main and resolve conflicting settings by stated rules"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        repo = _repo_path(rng, app)
        h = History(repo, rng)
        authors = pick(rng, pools.PEOPLE, 2)
        topic = rng.choice(TOPICS)
        feature = f"feature/{topic}"
        files_n = 1 if difficulty == "easy" else 2
        paths = pick(rng, ["config/settings.ini", "config/app.conf", "deploy/values.conf", "settings.conf"], files_n)
        base: dict[str, dict[str, str]] = {}
        for p in paths:
            keys = pick(rng, SETTING_KEYS, rng.randint(6, 8))
            base[p] = {k: _setting(rng, k) for k in keys}
        h.commit(
            "Initial commit",
            authors[0],
            {"README.md": f"# {app}\n", **{p: _settings_text(app, v) for p, v in base.items()}},
        )
        h.commit(h.new_subject(), authors[1], line_change(h, "src/app.py"))
        ours = {p: dict(v) for p, v in base.items()}
        theirs = {p: dict(v) for p, v in base.items()}
        rules: dict[str, dict[str, str]] = {}  # path -> key -> side that wins
        default_side = rng.choice(["main", "feature"])
        for p in paths:
            keys = list(base[p])
            rng.shuffle(keys)
            n_conflict = 1 if difficulty == "easy" else rng.randint(2, 3)
            conflict, main_only, feat_only = (
                keys[:n_conflict],
                keys[n_conflict : n_conflict + 1],
                keys[n_conflict + 1 : n_conflict + 2],
            )
            for k in conflict:
                a = _other_value(rng, k, {base[p][k]})
                b = _other_value(rng, k, {base[p][k], a})
                ours[p][k], theirs[p][k] = a, b
                rules.setdefault(p, {})[k] = rng.choice(["main", "feature"]) if difficulty == "hard" else default_side
            for k in main_only:
                ours[p][k] = _other_value(rng, k, {base[p][k]})
            for k in feat_only:
                theirs[p][k] = _other_value(rng, k, {base[p][k]})
        extra_files: dict[str, str] = {}
        h.branch(feature)
        h.commit(h.new_subject(), authors[0], {p: _settings_text(app, v) for p, v in theirs.items()})
        if difficulty == "hard":
            doc = f"docs/{topic}.md"
            extra_files[doc] = f"# {topic}\n\nNotes {rng.randint(100, 999)}.\n"
            h.commit(h.new_subject(), authors[1], {doc: extra_files[doc]})
        feature_subject = h.commits[h.heads[feature]].subject
        h.checkout("main")
        h.commit(h.new_subject(), authors[1], {p: _settings_text(app, v) for p, v in ours.items()})
        main_subject = h.commits[h.heads["main"]].subject

        final = {}
        for p in paths:
            values = {}
            for k in base[p]:
                if k in rules.get(p, {}):
                    values[k] = ours[p][k] if rules[p][k] == "main" else theirs[p][k]
                elif ours[p][k] != base[p][k]:
                    values[k] = ours[p][k]
                else:
                    values[k] = theirs[p][k]
            final[p] = values
        merge_subject = f"Merge {feature} into main" if difficulty == "hard" else None
        file_list = " and ".join(f"`{p}`" for p in paths)
        lines = [
            (
                f"merge the branch `{feature}` into `main` with a merge commit (main stays checked "
                "out, nothing left uncommitted)"
            ),
            "a setting changed on only one side keeps that change",
        ]
        if difficulty == "hard":
            for p in paths:
                for k, side in rules[p].items():
                    lines.append(
                        f"`{k}` in `{p}`, changed on both sides: keep the value from "
                        f"`{'main' if side == 'main' else feature}`"
                    )
            lines.append(f"the merge commit message is exactly `{merge_subject}`")
        else:
            lines.append(
                "a setting changed on both sides takes the value from "
                f"`{'main' if default_side == 'main' else feature}`"
            )
        instruction = (
            f"`{repo}` is a git repository. Its `main` and `{feature}` branches both changed {file_list} "
            f"(`key = value` lines).\n\n{bullets(lines)}\n"
        )
        if difficulty == "hard":
            rule = {
                p: {k: "ours" if side == "main" else "theirs" for k, side in keys.items()} for p, keys in rules.items()
            }
        else:
            rule = "ours" if default_side == "main" else "theirs"
        commit = f"git commit -q -m '{merge_subject}'\n" if merge_subject else "git commit -q --no-edit\n"
        start = f"cd {repo}\ngit checkout -q main\n"
        merge = f"git merge --no-ff {feature} || true  # stops at the conflicting settings\n"
        solution = start + merge + _resolve_settings(rule) + commit
        one_side = "ours" if rule == "ours" or difficulty == "hard" else "theirs"
        near_misses = {
            "takes_one_side": (
                start
                + merge
                + f"git diff --name-only --diff-filter=U | xargs git checkout --{one_side} --\ngit add -A\n"
                + commit
            ),
            "squash_merge": start + f"git merge --squash {feature} || true\n" + _resolve_settings(rule) + commit,
        }
        if merge_subject:
            near_misses["default_merge_message"] = start + merge + _resolve_settings(rule) + "git commit -q --no-edit\n"
        expected = {
            "repo": repo,
            "feature": feature,
            "main_subject": main_subject,
            "feature_subject": feature_subject,
            "merge_subject": merge_subject,
            "settings": final,
            "files": extra_files,
        }
        tests = test_module(self.name, expected, MERGE_TEST, helpers=("git",))
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[repo],
            setup=h.script(),
            near_misses=near_misses,
        )


def _resolve_settings(rule: str | dict[str, dict[str, str]]) -> str:
    """Resolves the conflicted `key = value` files key by key from the merge's three index stages.

    A key changed on one side keeps that change; a key changed on both sides takes the side `rule`
    names ("ours" is main, "theirs" the feature branch), for all keys or per file and key.
    """
    if isinstance(rule, str):
        rules, both_changed = "", f"value = {rule}[key]"
    else:
        rules = f"RULES = {rule!r}  # file -> key -> the side that wins where both changed"
        both_changed = "value = ours[key] if RULES[path][key] == 'ours' else theirs[key]"
    return (
        python_block(f"""
            import subprocess
            {rules}
            def git(*args):
                return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout
            def settings(text):
                pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
                return {{k.strip(): v.strip() for k, v in pairs}}
            for path in git("diff", "--name-only", "--diff-filter=U").split():
                base, ours, theirs = (settings(git("show", f":{{stage}}:{{path}}")) for stage in (1, 2, 3))
                comment = git("show", f":2:{{path}}").splitlines()[0]
                lines = [comment]
                for key in ours:
                    if theirs[key] in (base[key], ours[key]):
                        value = ours[key]
                    elif ours[key] == base[key]:
                        value = theirs[key]
                    else:
                        {both_changed}
                    lines.append(f"{{key}} = {{value}}")
                with open(path, "w") as handle:
                    handle.write("\\n".join(lines) + "\\n")
                git("add", path)
            """)
        + "\n"
    )


RELEASE_TEST = """
def sha_of_subject(repo, subject, ref="--all"):
    for line in (git(repo, "log", ref, "--format=%H%x09%s") or "").splitlines():
        sha, _, text = line.partition("\\t")
        if text == subject:
            return sha
    raise AssertionError(f"no commit with subject {subject!r}")


def test_release_tag():
    repo, tag = EXPECTED["repo"], EXPECTED["tag"]
    assert git(repo, "cat-file", "-t", tag) == "tag", f"{tag} is missing or not an annotated tag"
    assert git(repo, "rev-parse", f"{tag}^{{commit}}") == EXPECTED["tag_sha"], f"{tag} does not point to the commit {EXPECTED['tag_subject']!r}"
    assert git(repo, "tag", "-l", "--format=%(contents)", tag).strip() == EXPECTED["tag_message"], f"{tag} has the wrong message"


def test_release_branch():
    repo, branch = EXPECTED["repo"], EXPECTED["branch"]
    if not branch:
        assert EXPECTED["tag"]
        return
    assert git(repo, "log", "-1", "--format=%s", branch) == EXPECTED["pick_subject"], f"the tip of {branch} is not the cherry-picked fix"
    assert git(repo, "rev-parse", f"{branch}~1") == EXPECTED["tag_sha"], f"{branch} does not start at the tagged commit"
    path, text = EXPECTED["pick_file"]
    assert git(repo, "show", f"{branch}:{path}") == text.strip(), f"{path} on {branch} lacks the fix"


def test_revert_and_cleanup():
    repo = EXPECTED["repo"]
    if not EXPECTED["revert_subject"]:
        assert EXPECTED["tag"]
        return
    assert git(repo, "log", "-1", "--format=%s", "main") == f'Revert "{EXPECTED["revert_subject"]}"', "the tip of main is not the revert"
    assert git(repo, "rev-parse", "main~1") == EXPECTED["main_sha"], "the revert must sit directly on the old tip of main"
    files = (git(repo, "ls-tree", "-r", "--name-only", "main") or "").splitlines()
    assert sorted(files) == EXPECTED["files_after_revert"], "main's files after the revert are not as expected"
    assert git(repo, "rev-parse", "-q", "--verify", f"refs/tags/{EXPECTED['old_tag']}") is None, f"tag {EXPECTED['old_tag']} still exists"
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main", "main is not checked out"
"""


class GitReleaseTag(Family):
    name = "git_release_tag"
    domain = "development_tooling"
    summary = "tag a release commit, branch from the tag, cherry-pick a fix, revert a commit, delete a tag"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        repo = _repo_path(rng, app)
        h = History(repo, rng)
        authors = pick(rng, pools.PEOPLE, 3)
        h.commit("Initial commit", authors[0], {"README.md": f"# {app}\n"})
        n = rng.randint(6, 10)
        own_files: dict[int, str] = {}
        for i in range(n):
            path = f"src/{rng.choice(TOPICS)}_{i}.py"
            cid = h.commit(h.new_subject(), rng.choice(authors), {path: f"# {path}\nVALUE = {rng.randint(0, 999)}\n"})
            own_files[cid] = path
        main_ids = sorted(own_files)
        target = rng.choice(main_ids[1:-2])
        major, minor, patch = rng.randint(0, 3), rng.randint(0, 12), rng.randint(0, 9)
        version = f"{major}.{minor}.{patch}"
        tag = f"v{version}"
        tag_message = f"Release {version}"
        expected = {
            "repo": repo,
            "tag": tag,
            "tag_subject": h.commits[target].subject,
            "tag_message": tag_message,
            "branch": None,
            "revert_subject": None,
        }
        lines = [
            (
                f"create the annotated tag `{tag}` with the message `{tag_message}` on the commit whose subject "
                f"is `{h.commits[target].subject}`"
            )
        ]
        sol = [
            f"cd {repo}",
            "sha() { git log --all --format='%H%x09%s' | awk -F'\\t' -v s=\"$1\" '$2 == s { print $1; exit }'; }",
            f"git tag -a {tag} -m '{tag_message}' \"$(sha '{h.commits[target].subject}')\"",
        ]
        near_misses: dict[str, str] = {}
        if difficulty != "easy":
            fix_topic = rng.choice(TOPICS)
            hotfix = f"hotfix/{fix_topic}"
            h.checkout("main")
            # the hotfix branch forks from an earlier commit; its fix adds a file, so it applies anywhere
            h.lines.append(f"git checkout -q -b {hotfix} $(git rev-list --reverse main | sed -n {rng.randint(1, 3)}p)")
            h.heads[hotfix] = None
            pick_path = f"patches/{fix_topic}-{rng.randint(100, 999)}.patch"
            pick_text = f"fix for {fix_topic}: {rng.randint(10**5, 10**6)}\n"
            h.lines.append("mkdir -p patches")
            pick_subject = h.new_subject()
            h.lines.append(heredoc(pick_path, pick_text))
            h.lines.append(f"git add -A && {h.author_env(authors[1])} git commit -q -m '{pick_subject}'")
            second = h.new_subject()
            h.lines.append(heredoc("HOTFIX_NOTES.md", f"notes {rng.randint(0, 999)}\n"))
            h.lines.append(f"git add -A && {h.author_env(authors[2])} git commit -q -m '{second}'")
            h.lines.append("git checkout -q main")
            branch = f"release/{major}.{minor}"
            lines.append(
                f"create the branch `{branch}` starting at that tag, and cherry-pick onto it the commit of `{hotfix}` "
                f"whose subject is `{pick_subject}` (only that one)"
            )
            sol += [
                f"git checkout -q -b {branch} {tag}",
                f"git cherry-pick \"$(sha '{pick_subject}')\"",
                "git checkout -q main",
            ]
            near_misses["picks_whole_hotfix_branch"] = (
                "\n".join([*sol[:-2], f"git cherry-pick main..{hotfix}", "git checkout -q main"]) + "\n"
            )
            expected.update(branch=branch, pick_subject=pick_subject, pick_file=[pick_path, pick_text])
        if difficulty == "hard":
            revert = rng.choice([c for c in main_ids if c != target])
            old_major = max(0, major - 1)
            old_tag = f"v{old_major}.{rng.randint(0, 9)}.{rng.randint(0, 9)}-rc1"
            h.lines.append(f"git tag {old_tag} $(git rev-list --reverse main | sed -n 2p)")
            lines.append(
                f"on `main`, revert the commit whose subject is `{h.commits[revert].subject}` with a new revert commit "
                "(git's default message), leaving `main` checked out and clean"
            )
            lines.append(f"delete the obsolete tag `{old_tag}`")
            sol += [f"git revert --no-edit \"$(sha '{h.commits[revert].subject}')\"", f"git tag -d {old_tag}"]
            near_misses["keeps_old_tag"] = "\n".join(sol[:-1]) + "\n"
            files_after = sorted(set(h.trees[h.heads["main"]]) - {own_files[revert]})
            expected.update(revert_subject=h.commits[revert].subject, files_after_revert=files_after, old_tag=old_tag)
        # SHAs are only known once the build has run: the test looks them up by subject then.
        instruction = f"`{repo}` is a git repository (the commit subjects are unique).\n\n{bullets(lines)}\n"
        body = RELEASE_TEST.replace(
            'EXPECTED["tag_sha"]', 'sha_of_subject(EXPECTED["repo"], EXPECTED["tag_subject"], EXPECTED["tag"])'
        )
        body = body.replace(
            'EXPECTED["main_sha"]', 'sha_of_subject(EXPECTED["repo"], EXPECTED["last_main_subject"], "main")'
        )
        expected["last_main_subject"] = h.commits[h.heads["main"]].subject
        solution = "\n".join(sol) + "\n"
        tag_line = sol[2]
        near_misses["lightweight_tag"] = solution.replace(
            tag_line, tag_line.replace(f"-a {tag} -m '{tag_message}'", tag)
        )
        near_misses["tags_head"] = solution.replace(tag_line, f"git tag -a {tag} -m '{tag_message}'")
        tests = test_module(self.name, expected, body, helpers=("git",))
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[repo],
            setup=h.script(),
            near_misses=near_misses,
        )


CHANGE_TYPES = ["feat", "fix", "docs", "chore", "refactor", "test"]
SCOPES = ["api", "cli", "db", "ui", "auth", "build"]

CHANGELOG_TEST = """
def parse_notes(path):
    heading, sections, current = None, {}, None
    for raw in read_text(path).splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("### "):
            current = sections.setdefault(line[4:].strip(), [])
        elif line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith(("- ", "* ")):
            assert current is not None, f"bullet outside a section: {line!r}"
            current.append(line[2:].strip())
    return heading, sections


def test_release_notes():
    heading, sections = parse_notes(EXPECTED["path"])
    assert heading == EXPECTED["heading"], f"heading {heading!r} != {EXPECTED['heading']!r}"
    assert sections == EXPECTED["sections"], f"{sections} != {EXPECTED['sections']}"
    if EXPECTED["last_section"]:
        assert list(sections)[-1] == EXPECTED["last_section"], f"the last section is {list(sections)[-1]!r}, expected {EXPECTED['last_section']!r}"


def test_version_file():
    if EXPECTED["version_file"]:
        assert read_text(EXPECTED["version_file"]).strip() == EXPECTED["heading"], "VERSION does not hold the next version"
    else:
        assert EXPECTED["sections"]
"""


class ChangelogFromGit(Family):
    name = "changelog_from_git"
    domain = "development_tooling"
    summary = "write release notes from conventional commits since the last tag, and compute the next version"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        repo = _repo_path(rng, app)
        h = History(repo, rng)
        authors = pick(rng, pools.PEOPLE, 3)
        h.commit("chore: initial commit", authors[0], {"README.md": f"# {app}\n"})
        for i in range(rng.randint(2, 4)):  # the first is a feat or fix: commits before the tag must be left out
            h.commit(
                h.new_subject(f"{rng.choice(CHANGE_TYPES[:2] if i == 0 else CHANGE_TYPES)}: "),
                rng.choice(authors),
                line_change(h, rng.choice(MAIN_FILES)),
            )
        major, minor, patch = rng.randint(0, 4), rng.randint(0, 9), rng.randint(0, 9)
        tag = f"v{major}.{minor}.{patch}"
        h.lines.append(f"git tag -a {tag} -m 'Release {major}.{minor}.{patch}'")
        entries = []  # (type, description, breaking) in commit order
        branch_topic = rng.choice(TOPICS) if difficulty != "easy" else None
        n = rng.randint(5, 9)
        branch_at = rng.randint(1, n - 2) if branch_topic else -1
        breaking_left = rng.randint(1, 2) if difficulty == "hard" else 0

        def conventional() -> None:
            nonlocal breaking_left
            kind = rng.choice(CHANGE_TYPES)
            scope = rng.choice(SCOPES) if difficulty != "easy" and rng.random() < 0.5 else None
            prefix = f"{kind}({scope})" if scope else kind
            breaking = breaking_left > 0 and kind in ("feat", "fix", "refactor") and rng.random() < 0.6
            style = rng.choice(["bang", "footer"]) if breaking else None
            subject = h.new_subject(f"{prefix}{'!' if style == 'bang' else ''}: ")
            body = (
                f"BREAKING CHANGE: {rng.choice(['config keys renamed', 'old endpoint removed', 'drops Python 3.8'])}"
                if style == "footer"
                else ""
            )
            h.commit(
                subject,
                rng.choice(authors),
                line_change(h, rng.choice(MAIN_FILES if h.current == "main" else [f"src/{branch_topic}.py"])),
                body=body,
            )
            entries.append((kind, subject.split(": ", 1)[1], breaking))
            if breaking:
                breaking_left -= 1

        for i in range(n):
            conventional()
            if i == branch_at:
                h.branch(f"feature/{branch_topic}")
                for _ in range(rng.randint(1, 3)):
                    conventional()
                h.checkout("main")
                conventional()
                h.merge(f"feature/{branch_topic}", rng.choice(authors))
        if difficulty == "hard" and not any(b for _, _, b in entries):
            h.commit(h.new_subject("feat!: "), authors[0], line_change(h, "src/app.py"))
            entries.append(("feat", h.commits[h.heads["main"]].subject.split(": ", 1)[1], True))
        if not any(k in ("feat", "fix") for k, _, _ in entries):
            h.commit(h.new_subject("fix: "), authors[1], line_change(h, "src/app.py"))
            entries.append(("fix", h.commits[h.heads["main"]].subject.split(": ", 1)[1], False))
        if all(k in ("feat", "fix") for k, _, _ in entries):  # a commit of another type, to be skipped
            h.commit(h.new_subject("docs: "), authors[2], line_change(h, "docs/guide.md"))
            entries.append(("docs", h.commits[h.heads["main"]].subject.split(": ", 1)[1], False))

        newest_first = rng.random() < 0.4
        ordered = list(reversed(entries)) if newest_first else entries
        feat_title = rng.choice(["Features", "New Features", "Added"])
        fix_title = rng.choice(["Bug Fixes", "Fixes", "Fixed"])
        brk_title = rng.choice(["Breaking Changes", "BREAKING CHANGES"])
        features = [d for k, d, _ in ordered if k == "feat"]
        fixes = [d for k, d, _ in ordered if k == "fix"]
        breaking = [d for _, d, b in ordered if b]
        sections = {}
        if features:
            sections[feat_title] = features
        if fixes:
            sections[fix_title] = fixes
        version_file = None
        heading = "Unreleased"
        if difficulty == "hard":
            if breaking:
                sections[brk_title] = breaking
                heading = f"{major + 1}.0.0"
            elif features:
                heading = f"{major}.{minor + 1}.0"
            else:
                heading = f"{major}.{minor}.{patch + 1}"
            version_file = f"{repo}/VERSION"
        out = f"{rng.choice(pools.OUT_DIRS)}/{app}-{rng.choice(['release-notes', 'changes', 'notes'])}.md"
        order = "newest commit first" if newest_first else "oldest commit first"
        rules = [
            (
                f"cover the non-merge commits on `main` since the tag `{tag}`; subjects follow Conventional Commits "
                "(`type(scope)!: description`, scope and `!` optional)"
            ),
            (
                f"`### {feat_title}` lists the descriptions of `feat` commits and `### {fix_title}` those of `fix` "
                f"commits, one `- ` bullet each, {order}; skip other types and empty sections"
            ),
        ]
        if difficulty == "hard":
            rules.append(
                f"`### {brk_title}` (last) also lists the breaking commits: `!` after the type or scope, "
                "or a `BREAKING CHANGE:` line in the body"
            )
            rules.insert(
                0,
                (
                    f"start with `## <version>`: the next semantic version after `{tag}`, without the `v` (major if "
                    f"anything breaks, else minor if there is a feature, else patch); write it to `{version_file}` too"
                ),
            )
        else:
            rules.insert(0, "start with the heading `## Unreleased`")
        instruction = f"`{repo}` is a git repository. Write release notes to `{out}` (Markdown):\n{bullets(rules)}\n"
        titles = {"feat": feat_title, "fix": fix_title, "breaking": brk_title if difficulty == "hard" else None}

        def notes(**bend: bool) -> str:
            return f"mkdir -p {out.rsplit('/', 1)[0]}\n" + _release_notes_python(
                repo, tag, out, version_file, titles, newest_first, **bend
            )

        solution = notes()
        near_misses = {"ignores_tag": notes(since_tag=False), "lists_other_types": notes(other_types=True)}
        if difficulty == "hard":
            near_misses["breaking_not_last"] = notes(breaking_last=False)
        expected = {
            "path": out,
            "heading": heading,
            "sections": sections,
            "version_file": version_file,
            "last_section": brk_title if brk_title in sections else None,
        }
        tests = test_module(self.name, expected, CHANGELOG_TEST)
        outputs = [out] + ([version_file] if version_file else [])
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=outputs,
            setup=h.script(),
            extra={"commits": len(entries)},
            near_misses=near_misses,
        )


def _release_notes_python(
    repo: str,
    tag: str,
    out: str,
    version_file: str | None,
    titles: dict[str, str | None],
    newest_first: bool,
    *,
    since_tag: bool = True,
    other_types: bool = False,
    breaking_last: bool = True,
) -> str:
    """The changelog program. titles: section title per kind ("breaking": None when not asked for).

    The keyword flags each bend one rule (near-miss solutions): the tag's range, skipping other
    types, the breaking section last.
    """
    log_args = ["log", "--no-merges", "--format=%s%x1f%b%x1e", f"{tag}..main" if since_tag else "main"]
    if not newest_first:
        log_args.insert(1, "--reverse")
    sections = [(titles["feat"], "feat"), (titles["fix"], "fix")]
    if titles["breaking"]:
        sections.insert(len(sections) if breaking_last else 0, (titles["breaking"], "breaking"))
    lines = [
        "import re, subprocess",
        f"log = subprocess.run([{', '.join(repr(a) for a in ['git', '-C', repo, *log_args])}], "
        "capture_output=True, text=True, check=True)",
        "found = {}",
        'for record in log.stdout.split("\\x1e"):',
        '    subject, _, body = record.strip("\\n").partition("\\x1f")',
        '    m = re.match(r"^(\\w+)(\\([^)]*\\))?(!)?: (.*)$", subject)',
        "    if not m:",
        "        continue",
        "    kind, bang, desc = m.group(1), m.group(3), m.group(4)",
        "    found.setdefault(kind, []).append(desc)",
    ]
    if titles["breaking"]:
        lines += [
            '    if bang or re.search(r"^BREAKING CHANGE:", body, re.M):',
            '        found.setdefault("breaking", []).append(desc)',
            f'major, minor, patch = map(int, {tag[1:]!r}.split("."))',
            'if found.get("breaking"):',
            '    version = f"{major + 1}.0.0"',
            'elif found.get("feat"):',
            '    version = f"{major}.{minor + 1}.0"',
            "else:",
            '    version = f"{major}.{minor}.{patch + 1}"',
            f"open({version_file!r}, 'w').write(version + '\\n')",
            'parts = [f"## {version}", ""]',
        ]
    else:
        lines.append('parts = ["## Unreleased", ""]')
    if other_types:
        extra = [(kind, kind) for kind in ("docs", "chore", "refactor", "test")]
        lines.append(f"for title, kind in {sections + extra!r}:")
    else:
        lines.append(f"for title, kind in {sections!r}:")
    lines += [
        "    if found.get(kind):",
        '        parts += [f"### {title}", *[f"- {d}" for d in found[kind]], ""]',
        f"open({out!r}, 'w').write('\\n'.join(parts))",
    ]
    return python_block("\n".join(lines))

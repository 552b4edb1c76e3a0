"""Skeletons: one template with new data gives one skeleton; a different program another."""

from taskforge.forge.skeleton import instruction_skeleton, skeleton_key, solution_skeleton

INSTRUCTION_A = """`/srv/data/sales` holds the CSV files `2024-03.csv`, `2024-04.csv` of `berlin`.

- write `/home/user/out/totals.csv` with the header `region,total`: one row per `region`, the sum of `amount`
- numbers rounded to 2 decimals
- rows sorted by total, largest first
"""
# The same template: other paths, another month list (three files, not two), other columns and numbers.
INSTRUCTION_A2 = """`/opt/data/orders` holds the CSV files `2024-07.csv`, `2024-08.csv` and `2024-09.csv` of `osaka`.

- write `/srv/reports/sums.csv` with the header `product,total`: one row per `product`, the sum of `units`
- numbers rounded to 3 decimals
- rows sorted by total, largest first
"""
# Another program over the same data: a filter and a count instead of a sum, no sorting.
INSTRUCTION_B = """`/srv/data/sales` holds the CSV files `2024-03.csv`, `2024-04.csv` of `berlin`.

- write `/home/user/out/totals.csv` with the header `region,count`: one row per `region`, the number of rows
- count only rows whose `status` is `completed`
"""

SOLUTION_A = """#!/bin/bash
# Reference solution, run by the oracle agent only.
set -euo pipefail
mkdir -p /home/user/out
chown -R deploy:ops /opt/billing  # the owner first
chmod 0640 /opt/billing/conf/app.conf /opt/billing/conf/db.conf
cat > /home/user/out/notes.txt <<'DATA'
alpha 12
beta 7
DATA
python3 - <<'PY'
import json
rows = [["alice", 3], ["bob", 5]]
json.dump(dict(rows), open("/home/user/out/users.json", "w"), indent=2)
PY
"""
# Same program, new data: other paths, users, modes, file list and heredoc contents; no comments.
SOLUTION_A2 = """#!/bin/bash
set -euo pipefail
mkdir -p /srv/reports
chown -R webapp:finance /srv/ledger
chmod 600 /srv/ledger/conf/cache.conf /srv/ledger/conf/mail.conf /srv/ledger/conf/queue.conf
cat > /srv/reports/notes.txt <<'DATA'
gamma 1
DATA
python3 - <<'PY'
import json
rows = [["carol", 9], ["dave", 1], ["erin", 4]]
json.dump(dict(rows), open("/srv/reports/people.json", "w"), indent=2)
PY
"""
# A different program: the same first steps, then setgid and an ACL instead of writing a JSON file.
SOLUTION_B = """#!/bin/bash
set -euo pipefail
mkdir -p /home/user/out
chown -R deploy:ops /opt/billing
chmod 0640 /opt/billing/conf/app.conf /opt/billing/conf/db.conf
chmod 2770 /opt/billing/logs
setfacl -m u:alice:r /opt/billing/conf/app.conf
"""


def test_same_instruction_template_with_new_data_has_one_skeleton():
    assert instruction_skeleton(INSTRUCTION_A) == instruction_skeleton(INSTRUCTION_A2)
    assert "/srv" not in instruction_skeleton(INSTRUCTION_A)


def test_a_different_instruction_has_another_skeleton():
    assert instruction_skeleton(INSTRUCTION_A) != instruction_skeleton(INSTRUCTION_B)


def test_same_solution_template_with_new_data_has_one_skeleton():
    skeleton = solution_skeleton(SOLUTION_A)
    assert skeleton == solution_skeleton(SOLUTION_A2)
    assert "alpha" not in skeleton and "Reference" not in skeleton and "the owner" not in skeleton
    assert "json.dump" in skeleton  # the program itself stays


def test_a_different_solution_has_another_skeleton():
    assert solution_skeleton(SOLUTION_A) != solution_skeleton(SOLUTION_B)
    assert skeleton_key(solution_skeleton(SOLUTION_A)) != skeleton_key(solution_skeleton(SOLUTION_B))


def test_whitespace_does_not_matter_but_reordered_steps_do():
    spaced = SOLUTION_A.replace("mkdir -p", "mkdir   -p").replace("\n", "\n\n")
    assert solution_skeleton(spaced) == solution_skeleton(SOLUTION_A)
    lines = SOLUTION_B.splitlines()
    swapped = "\n".join([*lines[:5], lines[6], lines[5]])
    assert solution_skeleton(swapped) != solution_skeleton(SOLUTION_B)


def test_python_heredoc_keeps_its_code_a_data_heredoc_does_not():
    program = "python3 - <<'PY'\nprint(sum(range(10)))\nPY\n"
    assert solution_skeleton(program) != solution_skeleton(program.replace("sum", "max"))
    data = "cat > /tmp/a <<'DATA'\nprint(sum(range(10)))\nDATA\n"
    assert solution_skeleton(data) == solution_skeleton(data.replace("sum", "max"))

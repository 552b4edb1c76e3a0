"""`taskforge export --engine skyrl`: files read back against SkyRL's Harbor dataset contract, and one
exported row's task run through our sandbox.

SkyRL's HarborTaskDataset lives in its examples/ (NovaSky-AI/SkyRL examples/train_integrations/harbor/
dataset.py), not in an installable package, so these tests check the contract it implements: every
immediate subdirectory of a data.train_data / data.val_data folder that holds instruction.md is one
row {"prompt": dir, "env_class": None, "env_extras": {"data_source": dir}, "uid": str}.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from taskforge.agent.scripted import OracleAgent
from taskforge.export import ExportError, SkyRLRow, export, read_config, read_rows
from taskforge.forge.generate import generate
from taskforge.tasks import load_task
from taskforge.trial import run_trial

from .conftest import REPO_ROOT

SAMPLE = REPO_ROOT / "tasks" / "sample"
SMALL_TASKS = ["csv_cleanup-easy-7ac6cd5a41", "env_merge-easy-edd97da4d7"]


def skyrl_listing(folder: Path) -> set[str]:
    """The task dirs SkyRL's HarborTaskDataset makes rows of: subdirectories holding instruction.md."""
    return {str(d) for d in folder.iterdir() if d.is_dir() and (d / "instruction.md").is_file()}


def test_export_keeps_generates_split_and_writes_the_papers_settings(tmp_path):
    generate(
        n=6, seed=3, out_dir=tmp_path / "set", families=["csv_cleanup"], difficulties=["easy"], val=2, progress=False
    )
    split_of = {
        json.loads(line)["name"]: split
        for split in ("train", "val")
        for line in (tmp_path / "set" / split / "manifest.jsonl").read_text().splitlines()
    }
    result = export("skyrl", tmp_path / "set", tmp_path / "out")

    rows = read_rows(tmp_path / "out")
    assert {r.task_name: r.split for r in rows} == split_of
    config = read_config(tmp_path / "out")
    assert (config.n_train, config.n_val) == (4, 2)
    for split, folders in (("train", config.train_data), ("val", config.val_data)):
        assert len(folders) == 1
        assert skyrl_listing(Path(folders[0])) == {r.task_dir for r in rows if r.split == split}
    for row in rows:
        assert set(row.skyrl.model_dump()) == {"prompt", "env_class", "env_extras", "uid"}
        assert row.skyrl.prompt == row.skyrl.env_extras["data_source"] == row.task_dir
        assert row.skyrl.env_class is None
        assert Path(row.verifier) == Path(row.task_dir) / "tests" / "test.sh" and Path(row.verifier).is_file()
        assert load_task(Path(row.task_dir)).name == row.task_name  # a Harbor task as it was
    assert sorted(int(r.skyrl.uid) for r in rows if r.split == "val") == [0, 1]

    hp = config.hyperparameters
    assert (hp.n_samples_per_prompt, hp.echo_lambda, hp.max_turns, hp.max_model_len) == (16, 0.05, 16, 16384)
    raw = yaml.safe_load(Path(result.config_path).read_text())
    assert raw["hyperparameters"]["echo_lambda"] == 0.05
    for flag in (
        "generator.n_samples_per_prompt=16",
        "++harbor_trial_config.agent.kwargs.max_turns=16",
        "+generator.engine_init_kwargs.max_model_len=16384",
        f"data.train_data=['{config.train_data[0]}']",
        f"data.val_data=['{config.val_data[0]}']",
    ):
        assert flag in config.overrides
    # launch.sh is valid bash, and the shell hands Hydra each override as one unchanged word.
    launch = Path(result.launch_path).read_text()
    subprocess.run(["bash", "-n", result.launch_path], check=True)
    echo = launch.split("\nuv run --isolated --extra fsdp --extra harbor -m ", 1)[1]
    words = subprocess.run(
        ["bash", "-c", "printf '%s\\n' " + echo.split(" ", 1)[1]], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert words == config.overrides


def test_export_of_a_kept_json_takes_only_the_kept_tasks(tmp_path):
    kept = tmp_path / "kept.json"
    kept.write_text(
        json.dumps(
            {
                "kept": [{"task_name": f"taskforge/{n}", "task_path": str(SAMPLE / n)} for n in SMALL_TASKS],
                "dropped": ["taskforge/csv_join-hard-64a69edffc"],
            }
        )
    )
    export("skyrl", kept, tmp_path / "out")
    rows = read_rows(tmp_path / "out")
    assert sorted(Path(r.source_dir).name for r in rows) == SMALL_TASKS
    assert {r.split for r in rows} == {"train"}
    config = read_config(tmp_path / "out")
    assert config.val_data == [] and "trainer.eval_interval=-1" in config.overrides
    assert not any(o.startswith("data.val_data") for o in config.overrides)


def test_export_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ExportError, match="exports skyrl .* and verl"):
        export("nemo-rl", SAMPLE / SMALL_TASKS[0], tmp_path / "a")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(ExportError, match="not empty"):
        export("skyrl", SAMPLE / SMALL_TASKS[0], tmp_path / "busy")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ExportError, match="kept.json"):
        export("skyrl", tmp_path / "bad.json", tmp_path / "b")


def test_export_command_prints_the_launch_and_imports_no_torch(tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys; from taskforge.commands import app\n"
        f"try:\n    app(['export', '--engine', 'skyrl', '--out', '{out}', '{SAMPLE / SMALL_TASKS[0]}'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'export imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "exported 1 train + 0 val tasks for skyrl" in proc.stdout
    assert "examples.train_integrations.harbor.entrypoints.main_harbor" in proc.stdout
    assert "generator.n_samples_per_prompt=16" in proc.stdout


# The columns verl-recipe's echo/prepare_data.py writes and its agent loop and RLHFDataset read.
VERL_COLUMNS = {"prompt", "data_source", "reward_model", "extra_info"}
VERL_EXTRA_INFO = {"split", "index", "id", "task_binary"}


def test_verl_export_writes_the_echo_recipes_rows_and_the_papers_settings(tmp_path):
    generate(
        n=6, seed=3, out_dir=tmp_path / "set", families=["csv_cleanup"], difficulties=["easy"], val=2, progress=False
    )
    import pyarrow.parquet as pq  # after generate's worker processes: pyarrow's thread pool and fork() do not mix

    result = export("verl", tmp_path / "set", tmp_path / "out")
    config = read_config(tmp_path / "out")
    assert config.engine == "verl" and (config.n_train, config.n_val) == (4, 2)
    for split, n in (("train", 4), ("val", 2)):
        table = pq.read_table(tmp_path / "out" / f"{split}.parquet", use_threads=False)
        assert set(table.column_names) == VERL_COLUMNS
        assert str(table.schema.field("extra_info").type.field("task_binary").type) == "binary"
        rows = table.to_pylist()
        assert [r["extra_info"]["index"] for r in rows] == list(range(n))
        for row in rows:
            assert set(row["extra_info"]) == VERL_EXTRA_INFO and row["extra_info"]["split"] == split
            assert [m["role"] for m in row["prompt"]] == ["system", "user"]
            assert row["reward_model"] == {"style": "rule", "ground_truth": ""}
            task_dir = tmp_path / "out" / split / row["extra_info"]["id"].split("/", 1)[1]
            assert row["prompt"][1]["content"] == (task_dir / "instruction.md").read_text().strip()
    # lambda and the paper's settings, in the recipe's keys, after its run_echo.sh's own
    assert "actor_rollout_ref.echo_aux_token_loss_coeff=0.05" in config.overrides
    assert {"actor_rollout_ref.rollout.n=16", "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=16"} <= set(
        config.overrides
    )
    assert "actor_rollout_ref.rollout.max_model_len=16384" in config.overrides
    launch = Path(result.launch_path).read_text()
    assert "bash recipe/echo/run_echo.sh" in launch and f"VAL_FILES={tmp_path / 'out' / 'val.parquet'}" in launch
    assert "trainer.val_before_train=False" not in launch  # there is a val set to validate on
    assert {r.split for r in read_rows(tmp_path / "out")} == {"train", "val"}


def test_skyrl_echo_export_writes_echo_terminals_rows_and_lambda_as_world_model_coeff(tmp_path):
    generate(
        n=6, seed=3, out_dir=tmp_path / "set", families=["csv_cleanup"], difficulties=["easy"], val=2, progress=False
    )
    import pyarrow.parquet as pq  # after generate's worker processes: pyarrow's thread pool and fork() do not mix

    result = export("skyrl-echo", tmp_path / "set", tmp_path / "out")
    config = read_config(tmp_path / "out")
    assert config.engine == "skyrl-echo" and (config.n_train, config.n_val) == (4, 2)
    for split in ("train", "val"):
        table = pq.read_table(tmp_path / "out" / f"{split}.parquet", use_threads=False)
        # TerminalAgentTaskDataset's required columns (its dataset.py)
        assert set(table.column_names) == {"prompt", "path", "task_binary"}
        assert str(table.schema.field("task_binary").type) == "binary"
        for row in table.to_pylist():
            assert [m["role"] for m in row["prompt"]] == ["system", "user"] and row["path"].startswith("taskforge/")
    assert "trainer.algorithm.world_model_coeff=0.05" in config.overrides
    assert f"data.val_data=['{tmp_path / 'out' / 'val.parquet'}']" in config.overrides
    assert {"generator.n_samples_per_prompt=16", "generator.max_turns=16", "generator.max_context_tokens=16384"} <= set(
        config.overrides
    )
    launch = Path(result.launch_path).read_text()
    assert "examples.train_integrations.echo_terminal.entrypoint --config" in launch and "OUTPUT_DIR=" in launch


@pytest.mark.docker
@pytest.mark.parametrize("engine", ["skyrl", "verl", "skyrl-echo"])
def test_an_exported_rows_task_runs_through_our_sandbox(tmp_path, base_image, engine):
    export(engine, SAMPLE / SMALL_TASKS[0], tmp_path / "out")
    (row,) = read_rows(tmp_path / "out")
    if engine == "skyrl":
        skyrl_row = SkyRLRow.model_validate(row.skyrl.model_dump())
        task_dir = Path(skyrl_row.prompt)  # what Harbor receives as task.path
    else:  # the row's task_binary, unpacked: what the echo recipe / echo_terminal build the sandbox from
        import io
        import tarfile

        import pyarrow.parquet as pq

        (parquet_row,) = pq.read_table(row.parquet_row.parquet, use_threads=False).to_pylist()
        binary = parquet_row["extra_info"]["task_binary"] if engine == "verl" else parquet_row["task_binary"]
        task_dir = tmp_path / "unpacked"
        with tarfile.open(fileobj=io.BytesIO(binary), mode="r:gz") as archive:
            names = set(archive.getnames())
            archive.extractall(task_dir, filter="data")
        assert {"task.toml", "environment/Dockerfile", "tests/test.sh"} <= names
    task = load_task(task_dir)
    record = run_trial(task, OracleAgent(), tmp_path / "trial")
    assert record.error_type is None, record.error_message
    assert record.reward == 1.0
    assert Path(row.verifier).read_text().startswith("#!")

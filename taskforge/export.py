"""Hand a task set to an engine that trains beyond one node: `taskforge export --engine E SET`.

Engines and what confirmed their format (read with the project's search/fetch tools; no code copied):

- SkyRL's Harbor integration (NovaSky-AI/SkyRL @ a9564572, examples/train_integrations/harbor/):
  `dataset.py: HarborTaskDataset` takes `data.train_data` / `data.val_data`, lists of folders, and
  makes one row per immediate subdirectory holding `instruction.md`; a row is
  {"prompt": <task dir>, "env_class": None, "env_extras": {"data_source": <task dir>}, "uid": <index>},
  and Harbor runs the task (its tests/test.sh is the verifier) from that path
  (`harbor_trial_config/default.yaml`: SkyRL sets `task.path` from the prompt). The launch flags are
  those of `run_codecontest.sh` and the knobs of `harbor_trial_config/default.yaml`
  (agent.kwargs.max_turns, agent.kwargs.model_info.max_input_tokens, agent.kwargs.temperature,
  environment.type/override_cpus/override_memory_mb).
- ECHO formats confirmed (helper research, 2026-12-03; no code copied):
  * SkyRL's ECHO: the paper authors' `echo_terminal` integration (SkyRL PR 1716, open, commit efd864b9
    on refs/pull/1716/head, not on main) takes lambda as `trainer.algorithm.world_model_coeff` (with
    `world_loss_normalization: full_observation_tokens` and `generator.world_loss_target: env_only` in
    its qwen3_8b_rl_wm05.yaml) and reads parquet rows {prompt: chat messages, path, task_binary:
    gzipped tar of the Harbor task dir}, over an example config its entrypoint merges overrides into
    (`--engine skyrl-echo`). `--engine skyrl` runs SkyRL main's Harbor GRPO, which has no such key.
  * verl-recipe's `echo` recipe (verl-project/verl-recipe PR 142, merged): `python3 -m
    recipe.echo.main_ppo` with `+actor_rollout_ref.echo_aux_token_loss_coeff=0.05`, parquet rows
    {prompt: [system, user = instruction.md], data_source, reward_model: {style: rule, ground_truth: ""},
    extra_info: {split, index, id, task_binary}}, run in Modal sandboxes.
  `export --engine verl` and `--engine skyrl-echo` write those rows (_export_parquet).

The exported folders hold copies of the tasks, so the export is self-contained and can be rsynced
to a cluster; rows.jsonl names each row's Harbor task dir and verifier, split by split.
"""

from __future__ import annotations

import gzip
import io
import shlex
import shutil
import tarfile
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field

from taskforge.tasks import Task, TaskLoadError, discover_task_dirs, load_task

Engine = Literal["skyrl", "skyrl-echo", "verl"]
ENGINES: tuple[str, ...] = ("skyrl", "skyrl-echo", "verl")
Split = Literal["train", "val"]
CONFIG_FILE = "skyrl-echo.yaml"
LAUNCH_FILE = "launch.sh"
ROWS_FILE = "rows.jsonl"


class ExportError(ValueError):
    """A task set that cannot be exported; the message names the input and the fix."""


class EchoHyperparameters(BaseModel):
    """The paper's public settings (docs: shared/reference/echo.md), carried into the engine's config."""

    n_samples_per_prompt: int = 16  # rollouts per prompt
    echo_lambda: float = 0.05
    max_turns: int = 16
    max_model_len: int = 16_384  # context, tokens
    lr: float = 1.0e-6
    train_batch_size: int = 16  # prompts per step
    update_epochs_per_batch: int = 2
    use_kl_loss: bool = False
    temperature: float = 0.8
    cpus: int = 1
    memory_mb: int = 1024


class SkyRLRow(BaseModel):
    """One row as SkyRL's HarborTaskDataset yields it (examples/train_integrations/harbor/dataset.py)."""

    prompt: str  # the task directory
    env_class: None = None
    env_extras: dict[str, str]  # {"data_source": <task directory>}
    uid: str


class ParquetRowRef(BaseModel):
    """Where a task's row is in a parquet export (verl, skyrl-echo): the file, the row index, its id."""

    parquet: str
    index: int
    id: str


class ExportRow(BaseModel):
    """One exported task: its split, its Harbor task dir and verifier, and the engine's row."""

    split: Split
    task_name: str
    task_dir: str  # the exported copy, absolute
    verifier: str  # task_dir/tests/test.sh
    source_dir: str  # where it was read from
    skyrl: SkyRLRow | None = None
    parquet_row: ParquetRowRef | None = None


class SkyRLExportConfig(BaseModel):
    """skyrl-echo.yaml: what was exported, the hyperparameters and the SkyRL launch."""

    engine: Engine = "skyrl"
    source: str
    train_data: list[str]
    val_data: list[str]
    n_train: int
    n_val: int
    model: str
    hyperparameters: EchoHyperparameters
    overrides: list[str] = Field(description="Hydra overrides for SkyRL's main_harbor entry point")
    launch: str
    notes: list[str]


class ParquetExportConfig(BaseModel):
    """verl-echo.yaml / skyrl-echo-terminal.yaml: what was exported as parquet rows, the hyperparameters
    and the engine's ECHO launch."""

    engine: Engine
    source: str
    train_files: list[str]
    val_files: list[str]
    n_train: int
    n_val: int
    model: str
    hyperparameters: EchoHyperparameters
    overrides: list[str] = Field(description="overrides after the engine's own config (later ones win)")
    launch: str
    notes: list[str]


class ExportResult(BaseModel):
    out_dir: str
    config_path: str
    launch_path: str
    rows_path: str
    config: SkyRLExportConfig | ParquetExportConfig


def read_task_set(source: Path) -> list[tuple[Split, Task]]:
    """(split, task) for every task of `source`: a filter run's kept.json (its kept tasks), a generate
    output with train/ and val/ (the split as generate wrote it), or any folder of tasks (all train).
    A task whose folder is named val (generate --val's held-out set) is val wherever it is read from."""
    source = Path(source)
    if source.is_file():
        try:
            dirs = discover_task_dirs([source])  # a filter run's kept.json
        except TaskLoadError as exc:
            raise ExportError(str(exc)) from None
    elif (source / "train").is_dir() and not (source / "task.toml").is_file():
        dirs = discover_task_dirs([source / "train"])
        if (source / "val").is_dir():
            dirs += discover_task_dirs([source / "val"])
    else:
        try:
            dirs = discover_task_dirs([source])
        except TaskLoadError as exc:
            raise ExportError(str(exc)) from None
    out: list[tuple[Split, Task]] = []
    for d in dirs:
        try:
            task = load_task(d)
        except TaskLoadError as exc:
            raise ExportError(str(exc)) from None
        out.append(("val" if task.path.parent.name == "val" else "train", task))
    return out


def skyrl_overrides(train_dir: Path, val_dir: Path | None, model: str, hp: EchoHyperparameters) -> list[str]:
    """Hydra overrides of SkyRL's main_harbor (keys as in its run_codecontest.sh and
    harbor_trial_config/default.yaml)."""
    served = model.rstrip("/").split("/")[-1]
    overrides = [f"data.train_data=['{train_dir}']"]
    if val_dir is not None:
        overrides.append(f"data.val_data=['{val_dir}']")
    overrides += [
        f"trainer.policy.model.path={model}",
        f"generator.served_model_name={served}",
        "hydra.searchpath=['file://examples/train_integrations/harbor']",
        "+harbor_trial_config=default",
        # Harbor's docker environment runs the task containers; default.yaml's is daytona (a paid service).
        "++harbor_trial_config.environment.type=docker",
        f"++harbor_trial_config.environment.override_cpus={hp.cpus}",
        f"++harbor_trial_config.environment.override_memory_mb={hp.memory_mb}",
        f"++harbor_trial_config.agent.kwargs.max_turns={hp.max_turns}",
        f"++harbor_trial_config.agent.kwargs.temperature={hp.temperature}",
        f"++harbor_trial_config.agent.kwargs.model_info.max_input_tokens={hp.max_model_len}",
        f"+generator.engine_init_kwargs.max_model_len={hp.max_model_len}",
        f"generator.n_samples_per_prompt={hp.n_samples_per_prompt}",
        "trainer.algorithm.advantage_estimator=grpo",
        f"trainer.algorithm.use_kl_loss={str(hp.use_kl_loss).lower()}",
        f"trainer.policy.optimizer_config.lr={hp.lr}",
        f"trainer.train_batch_size={hp.train_batch_size}",
        f"trainer.policy_mini_batch_size={hp.train_batch_size}",
        f"trainer.update_epochs_per_batch={hp.update_epochs_per_batch}",
    ]
    if val_dir is None:
        # main_harbor builds an eval set only when eval_interval > 0 and val_data is set.
        overrides.append("trainer.eval_interval=-1")
    return overrides


def _shell_word(arg: str) -> str:
    """arg as one shell word, readable: Hydra's list values keep their single quotes inside double ones."""
    if not any(c in arg for c in '"$`\\!') and "'" in arg:
        return f'"{arg}"'
    return shlex.quote(arg)


def skyrl_launch(overrides: list[str]) -> str:
    """The command run from a SkyRL checkout (its Harbor example's entry point and extras)."""
    args = " \\\n  ".join(_shell_word(o) for o in overrides)
    return (
        "uv run --isolated --extra fsdp --extra harbor "
        f"-m examples.train_integrations.harbor.entrypoints.main_harbor \\\n  {args}"
    )


def _copy_tasks(source: Path, out_dir: Path) -> tuple[list[tuple[Split, Task, Path]], dict[str, int]]:
    """Copies every task of `source` to out_dir/<split>/<name> (refusing a non-empty out_dir and two
    tasks of one name in a split): (split, task, copy) in order, and the count per split."""
    tasks = read_task_set(source)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir}: not empty; export into a new folder (or remove it)")
    names: dict[tuple[str, str], Path] = {}
    for split, task in tasks:
        key = (split, task.path.name)
        if key in names:
            raise ExportError(f"two tasks would land in {split}/{task.path.name}: {names[key]} and {task.path}")
        names[key] = task.path
    copied = []
    counts = {"train": 0, "val": 0}
    for split, task in tasks:
        dest = out_dir / split / task.path.name
        # Copy, do not link: engines list subdirectories of each data folder (is_dir follows links, but a
        # cluster that receives the export by rsync would get dangling links).
        shutil.copytree(task.path, dest, symlinks=False)
        copied.append((split, task, dest))
        counts[split] += 1
    if not counts["train"]:
        raise ExportError(f"{source}: no training task (only val/); export a set with training tasks")
    return copied, counts


def _export_row(split: Split, task: Task, dest: Path, **engine_row) -> ExportRow:
    """The rows.jsonl line of one exported task; engine_row is skyrl= or parquet_row=."""
    verifier = str(dest / "tests" / "test.sh")
    return ExportRow(
        split=split, task_name=task.name, task_dir=str(dest), verifier=verifier, source_dir=str(task.path), **engine_row
    )


def _write_export(
    out_dir: Path, rows: list[ExportRow], config: SkyRLExportConfig | ParquetExportConfig, config_name: str, header: str
) -> ExportResult:
    """rows.jsonl, the config YAML and launch.sh (header, then config.launch) of an export."""
    with (out_dir / ROWS_FILE).open("w") as f:
        for row in rows:
            f.write(row.model_dump_json() + "\n")
    config_path = out_dir / config_name
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, width=120))
    launch_path = out_dir / LAUNCH_FILE
    launch_path.write_text("#!/usr/bin/env bash\n" + header + "set -euo pipefail\n" + config.launch + "\n")
    launch_path.chmod(0o755)
    return ExportResult(
        out_dir=str(out_dir),
        config_path=str(config_path),
        launch_path=str(launch_path),
        rows_path=str(out_dir / ROWS_FILE),
        config=config,
    )


def export_skyrl(
    source: Path, out_dir: Path, *, model: str = "Qwen/Qwen3-8B", hp: EchoHyperparameters | None = None
) -> ExportResult:
    """Writes out_dir/{train,val}/<task>/ (copies), rows.jsonl, skyrl-echo.yaml and launch.sh."""
    hp = hp or EchoHyperparameters()
    out_dir = Path(out_dir).resolve()
    copied, counters = _copy_tasks(source, out_dir)
    rows: list[ExportRow] = []
    uids = {"train": 0, "val": 0}
    for split, task, dest in copied:
        skyrl = SkyRLRow(prompt=str(dest), env_extras={"data_source": str(dest)}, uid=str(uids[split]))
        rows.append(_export_row(split, task, dest, skyrl=skyrl))
        uids[split] += 1
    train_dir = out_dir / "train"
    val_dir = out_dir / "val" if counters["val"] else None
    overrides = skyrl_overrides(train_dir, val_dir, model, hp)
    launch = skyrl_launch(overrides)
    config = SkyRLExportConfig(
        source=str(Path(source).resolve()),
        train_data=[str(train_dir)],
        val_data=[str(val_dir)] if val_dir else [],
        n_train=counters["train"],
        n_val=counters["val"],
        model=model,
        hyperparameters=hp,
        overrides=overrides,
        launch=launch,
        notes=[
            "Run the launch from a SkyRL checkout (NovaSky-AI/SkyRL) with Harbor installed (--extra harbor).",
            "uid is the row's index within its split, as SkyRL's HarborTaskDataset numbers rows "
            "(in its own listing order).",
            f"echo_lambda={hp.echo_lambda} is for the paper authors' echo_terminal integration (SkyRL PR 1716, "
            "not on SkyRL main), whose key is trainer.algorithm.world_model_coeff and whose rows are parquet "
            "(prompt, path, task_binary): the launch as written trains SkyRL main's Harbor GRPO with the "
            "paper's other settings.",
        ],
    )
    header = f"# Run from a SkyRL checkout: cd SkyRL && bash {out_dir / LAUNCH_FILE}\n"
    return _write_export(out_dir, rows, config, CONFIG_FILE, header)


def read_rows(out_dir: Path) -> list[ExportRow]:
    return [ExportRow.model_validate_json(line) for line in (Path(out_dir) / ROWS_FILE).read_text().splitlines()]


def read_config(out_dir: Path) -> SkyRLExportConfig | ParquetExportConfig:
    out_dir = Path(out_dir)
    for name in PARQUET_CONFIG_FILES.values():
        if (out_dir / name).is_file():
            return ParquetExportConfig.model_validate(yaml.safe_load((out_dir / name).read_text()))
    return SkyRLExportConfig.model_validate(yaml.safe_load((out_dir / CONFIG_FILE).read_text()))


# verl-recipe's echo recipe (verl-project/verl-recipe echo/: run_echo.sh, prepare_data.py, modal_sandbox.py).
PARQUET_CONFIG_FILES = {"verl": "verl-echo.yaml", "skyrl-echo": "skyrl-echo-terminal.yaml"}
AGENT_SYSTEM_PROMPT = (
    "You are a Linux terminal agent. Run commands to complete the user's task, check the result, "
    "and call done when the task is complete."
)
VERL_DATA_SOURCE = "taskforge"


def task_binary(task_dir: Path) -> bytes:
    """The task directory as a gzipped tar, members relative to it (task.toml, environment/, tests/,
    ...), with fixed owners and times so the same task gives the same bytes."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed:
        with tarfile.open(fileobj=compressed, mode="w", dereference=True) as archive:
            for path in sorted(task_dir.iterdir()):
                archive.add(path, arcname=path.name, recursive=True, filter=normalise)
    return buffer.getvalue()


def chat_prompt(task_dir: Path) -> list[dict[str, str]]:
    """The episode's opening messages: the agent's system prompt, then the task's instruction.md."""
    instruction = (task_dir / "instruction.md").read_text(encoding="utf-8").strip()
    return [{"role": "system", "content": AGENT_SYSTEM_PROMPT}, {"role": "user", "content": instruction}]


def verl_row(task: Task, task_dir: Path, split: Split, index: int) -> dict:
    """One row as verl's RLHFDataset reads it, with the fields the echo recipe's agent loop uses:
    the chat prompt, data_source, reward_model, and extra_info carrying the task as task_binary."""
    return {
        "prompt": chat_prompt(task_dir),
        "data_source": VERL_DATA_SOURCE,
        "reward_model": {"style": "rule", "ground_truth": ""},  # the task's own verifier scores it
        "extra_info": {"split": split, "index": index, "id": task.name, "task_binary": task_binary(task_dir)},
    }


def verl_overrides(hp: EchoHyperparameters, has_val: bool) -> list[str]:
    """Hydra overrides after run_echo.sh's own (the later override wins): the paper's settings, in the
    recipe's keys (actor_rollout_ref.echo_aux_token_loss_coeff is lambda; the script adds it with +)."""
    overrides = [
        f"actor_rollout_ref.echo_aux_token_loss_coeff={hp.echo_lambda}",
        f"actor_rollout_ref.rollout.n={hp.n_samples_per_prompt}",
        f"actor_rollout_ref.rollout.multi_turn.max_assistant_turns={hp.max_turns}",
        f"actor_rollout_ref.rollout.max_model_len={hp.max_model_len}",
        f"actor_rollout_ref.rollout.temperature={hp.temperature}",
        f"actor_rollout_ref.actor.optim.lr={hp.lr}",
        f"actor_rollout_ref.actor.use_kl_loss={hp.use_kl_loss}",
        f"actor_rollout_ref.actor.ppo_epochs={hp.update_epochs_per_batch}",
        f"data.train_batch_size={hp.train_batch_size}",
    ]
    if not has_val:  # the script validates before training and every 20 steps
        overrides += ["trainer.val_before_train=False", "trainer.test_freq=-1"]
    return overrides


def skyrl_echo_row(task: Task, task_dir: Path, split: Split, index: int) -> dict:
    """One row as SkyRL's echo_terminal TerminalAgentTaskDataset reads it (its dataset.py: prompt =
    chat messages, path = the task's id, task_binary = the Harbor task dir as a gzipped tar)."""
    return {
        "prompt": chat_prompt(task_dir),
        "path": task.name,
        "task_binary": task_binary(task_dir),
    }


def skyrl_echo_overrides(files: dict[str, Path], model: str, hp: EchoHyperparameters) -> list[str]:
    """OmegaConf dotlist overrides over the integration's example config (its entrypoint merges them
    into --config), in its keys (configs/qwen3_8b_rl_wm05.yaml): lambda is trainer.algorithm.world_model_coeff."""
    overrides = [f"data.train_data=['{files['train']}']"]
    overrides.append(f"data.val_data=['{files['val']}']" if "val" in files else "data.val_data=[]")
    overrides += [
        f"tokenizer_path={model}",
        f"trainer.policy.model.path={model}",
        f"trainer.algorithm.world_model_coeff={hp.echo_lambda}",
        "trainer.algorithm.world_loss_normalization=full_observation_tokens",
        f"trainer.algorithm.use_kl_loss={str(hp.use_kl_loss).lower()}",
        f"trainer.policy.optimizer_config.lr={hp.lr}",
        f"trainer.train_batch_size={hp.train_batch_size}",
        f"trainer.policy_mini_batch_size={hp.train_batch_size}",
        f"trainer.update_epochs_per_batch={hp.update_epochs_per_batch}",
        f"generator.n_samples_per_prompt={hp.n_samples_per_prompt}",
        f"generator.max_turns={hp.max_turns}",
        f"generator.max_context_tokens={hp.max_model_len}",
        f"generator.sampling_params.temperature={hp.temperature}",
        f"generator.docker_cpus={hp.cpus}",
        f"generator.docker_memory_mb={hp.memory_mb}",
        "generator.world_loss_target=env_only",
    ]
    if "val" not in files:
        overrides.append("trainer.eval_interval=-1")
    return overrides


def _export_parquet(engine: str, source: Path, out_dir: Path, model: str, hp: EchoHyperparameters) -> ExportResult:
    """Task copies, train.parquet / val.parquet (one row per task in the engine's format), rows.jsonl,
    the engine's config YAML and launch.sh."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    make_row = {"verl": verl_row, "skyrl-echo": skyrl_echo_row}[engine]
    out_dir = Path(out_dir).resolve()
    copied, counts = _copy_tasks(source, out_dir)
    tables: dict[str, list[dict]] = {"train": [], "val": []}
    rows: list[ExportRow] = []
    for split, task, dest in copied:
        index = len(tables[split])
        tables[split].append(make_row(task, dest, split, index))
        ref = ParquetRowRef(parquet=str(out_dir / f"{split}.parquet"), index=index, id=task.name)
        rows.append(_export_row(split, task, dest, parquet_row=ref))
    files = {}
    for split, split_rows in tables.items():
        if split_rows:
            files[split] = out_dir / f"{split}.parquet"
            pq.write_table(pa.Table.from_pylist(split_rows), files[split])
    base_image_note = (
        "Each Dockerfile starts FROM taskforge's base image, built locally by `bash setup.sh env`: build it on "
        "every machine that runs the task containers, or push it to a registry they pull from and point the FROM "
        "lines there."
    )
    if engine == "verl":
        overrides = verl_overrides(hp, "val" in files)
        env = {
            "MODEL_PATH": model,
            "TRAIN_FILES": str(files["train"]),
            "VAL_FILES": str(files.get("val", files["train"])),  # the script needs one; unused without val
        }
        command = "bash recipe/echo/run_echo.sh"
        header = "# Run from a verl checkout with verl-recipe at recipe/: cd verl && bash launch.sh\n"
        notes = [
            "Run the launch from a verl checkout with verl-recipe at recipe/ (verl-recipe's echo README), with "
            "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET set: the recipe's agent loop runs each task in a Modal sandbox "
            "built from the task_binary's environment/Dockerfile and scores it with tests/test.sh.",
            base_image_note,
        ]
    else:
        overrides = skyrl_echo_overrides(files, model, hp)
        env = {"OUTPUT_DIR": str(out_dir / "skyrl-output"), "PYTHONPATH": "."}
        command = (
            "python -m examples.train_integrations.echo_terminal.entrypoint "
            "--config examples/train_integrations/echo_terminal/configs/qwen3_8b_rl_wm05.yaml"
        )
        header = "# Run from a SkyRL checkout of PR 1716 (echo_terminal): cd SkyRL && bash launch.sh\n"
        notes = [
            "The echo_terminal integration is SkyRL PR 1716 (open; refs/pull/1716/head, commit efd864b9), not SkyRL "
            "main: check it out first. Its example config supplies placement and engine settings (8 GPUs); the "
            "overrides carry this export's data and the paper's settings.",
            base_image_note,
        ]
    launch = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" {command} \\\n  "
    launch += " \\\n  ".join(_shell_word(o) for o in overrides)
    config = ParquetExportConfig(
        engine=engine,
        source=str(Path(source).resolve()),
        train_files=[str(files["train"])],
        val_files=[str(files["val"])] if "val" in files else [],
        n_train=counts["train"],
        n_val=counts["val"],
        model=model,
        hyperparameters=hp,
        overrides=overrides,
        launch=launch,
        notes=notes,
    )
    return _write_export(out_dir, rows, config, PARQUET_CONFIG_FILES[engine], header)


def export(engine: str, source: Path, out_dir: Path, *, model: str = "Qwen/Qwen3-8B") -> ExportResult:
    if engine not in ENGINES:
        raise ExportError(
            f"--engine {engine}: taskforge exports skyrl (SkyRL's Harbor integration), skyrl-echo (its echo_terminal "
            "integration) and verl (verl-recipe's echo recipe), the engines whose dataset formats it could "
            "confirm; see docs/export.md"
        )
    if engine == "skyrl":
        return export_skyrl(source, out_dir, model=model)
    return _export_parquet(engine, source, out_dir, model, EchoHyperparameters())

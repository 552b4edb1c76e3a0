"""A persistent bash session over one-shot execs, kept in a state file in the container.

Each command runs as its own `bash` through DockerSandbox.exec (so it gets the sandbox's
timeout, process-group kill and output cap), wrapped so that the session carries over:

    source the saved exported variables; cd to the saved directory; eval the command;
    on exit (normal, `exit N`, `set -e`, or SIGTERM from the timeout): save pwd and `export -p`

What persists: the working directory and exported variables (`export X=1`, `cd /app`,
`source venv/bin/activate`'s PATH). What does not: plain shell variables, functions, aliases and
shell options (`set -e`), and stdin is empty (no interactive programs). Background processes
(`server &`) keep running in the container. A command that `exec`s another program or is killed
with SIGKILL leaves the state as it was before it.

Why not tmux: a state file costs nothing per command (the exec is the one round trip), gives an
exact exit code and clean output (no prompt or echo to scrape), and cannot be wedged by a
program waiting for input. terminus-2 (`--backend harbor`) is the tmux-driven alternative.
"""

from __future__ import annotations

from taskforge.sandbox.base import ExecResult, Sandbox

STATE_DIR = "/tmp/.taskforge/shell"
# Commands travel in an environment variable; Linux caps one at 128 KiB (MAX_ARG_STRLEN).
MAX_COMMAND_BYTES = 120_000

_SESSION_SCRIPT = r"""
__tf_state=/tmp/.taskforge/shell
__tf_cmd=$TF_USER_CMD
unset TF_USER_CMD TF_CMD TF_TIMEOUT TF_HEAD TF_TAIL TF_COLLECT TF_COLLECT_MAX
__tf_save() {
  mkdir -p "$__tf_state" 2>/dev/null &&
  pwd >"$__tf_state/cwd.new" 2>/dev/null && export -p >"$__tf_state/env.new" 2>/dev/null &&
  mv -f "$__tf_state/env.new" "$__tf_state/env" && mv -f "$__tf_state/cwd.new" "$__tf_state/cwd"
} 2>/dev/null
trap __tf_save EXIT
if [ -f "$__tf_state/env" ]; then . "$__tf_state/env" >/dev/null 2>&1; fi
if [ -f "$__tf_state/cwd" ]; then cd "$(cat "$__tf_state/cwd")" 2>/dev/null; fi
eval "$__tf_cmd"
"""


class PersistentShell:
    """Runs commands in `sandbox` as one continuing bash session (see the module doc)."""

    def __init__(self, sandbox: Sandbox, *, workdir: str | None = None):
        self.sandbox = sandbox
        self.workdir = workdir

    def run(self, command: str, timeout_sec: float) -> ExecResult:
        if len(command.encode()) > MAX_COMMAND_BYTES:
            raise CommandTooLongError(
                f"the command is {len(command.encode())} bytes; the limit is {MAX_COMMAND_BYTES}: "
                "write long files in several steps"
            )
        return self.sandbox.exec(
            _SESSION_SCRIPT, timeout_sec, workdir=self.workdir, env={"TF_USER_CMD": command}, mark_truncation=False
        )

    def reset(self) -> None:
        """Forgets the saved directory and variables."""
        self.sandbox.exec(f"rm -rf {STATE_DIR}", 30)


class CommandTooLongError(ValueError):
    """A command too long to pass to the container in one exec."""

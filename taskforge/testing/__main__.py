"""`python -m taskforge.testing --script competent TASKS...`: a scripted OpenAI-compatible server until Ctrl-C.

The entry point lives here, not in openai_server, so that scripts depends on openai_server and never the reverse.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from taskforge.tasks import discover_task_dirs
from taskforge.testing.openai_server import ScriptedOpenAIServer, Stall
from taskforge.testing.scripts import competent, hopeless


def main() -> None:
    """Serve a scripted agent (competent: solves TASKS with their own solutions; hopeless) and print its base URL."""
    parser = argparse.ArgumentParser(prog="python -m taskforge.testing", description=main.__doc__)
    parser.add_argument("tasks", nargs="*", type=Path, help="task dirs the competent script can solve")
    parser.add_argument("--script", choices=["competent", "hopeless"], default="competent")
    parser.add_argument("--model", default="test-model")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each reply takes")
    args = parser.parse_args()
    script = competent(discover_task_dirs(args.tasks)) if args.script == "competent" else hopeless()
    if args.delay:
        inner = script
        script = lambda request: Stall(args.delay, inner(request))  # noqa: E731
    with ScriptedOpenAIServer(script, models=[args.model]) as server:
        print(server.base_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

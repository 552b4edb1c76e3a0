"""The `taskforge` entry point; the commands live in taskforge/commands/."""

from taskforge.commands import app

if __name__ == "__main__":
    app()

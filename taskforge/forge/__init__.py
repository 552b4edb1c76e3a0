"""Procedural task generation: families of tasks with their own ground truth, and the generator.

from taskforge.forge import generate
generate(n=600, seed=1, out_dir=Path("tasks/gen"), val=60)
"""

from taskforge.forge.base import DIFFICULTIES, DOMAINS, GENERATOR_VERSION, Draft, Family

__all__ = ["DIFFICULTIES", "DOMAINS", "GENERATOR_VERSION", "Draft", "Family", "generate"]


def __getattr__(name):
    if name == "generate":
        from taskforge.forge.generate import generate

        return generate
    raise AttributeError(name)

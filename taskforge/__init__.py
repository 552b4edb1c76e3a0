"""taskforge: verified terminal tasks, a frontier-model solvability filter and the ECHO trainer."""

__version__ = "0.1.0"

# The image every generated task builds FROM. envs/build-base.sh builds it (offline when no
# registry answers); bump the tag when envs/base/ changes in a way old tasks must not see.
BASE_IMAGE = "taskforge/base:1"

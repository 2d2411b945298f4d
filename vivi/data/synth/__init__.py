"""The built-in video world (`vivi synth`) and the mini-VTAB task suite rendered from it.

- :func:`render_corpus` writes H.264 videos of scenes (frames -> shots -> videos) and their
  ground truth (cuts, transitions, per-shot object and light attributes).
- :func:`build_suite` writes the mini-VTAB suite (natural / specialized / structured tasks)
  rendered by the same generator from held-out seeds; :data:`TASKS` describes its tasks.

docs/WORLD.md explains the design.
"""

from vivi.data.synth.corpus import render_corpus
from vivi.data.synth.objects import CLASS_NAMES
from vivi.data.synth.scenes import SCENE_NAMES
from vivi.data.synth.tasks import TASKS, TaskSpec, build_suite

__all__ = ["render_corpus", "build_suite", "TASKS", "TaskSpec", "CLASS_NAMES", "SCENE_NAMES"]

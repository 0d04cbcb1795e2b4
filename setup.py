"""Everything is in pyproject.toml; this only ships the repository's recipes/ in the wheel.

``build_py`` copies ``recipes/`` (per-host recipes, DeepSpeed configs, LLaMA-Factory's dataset_info.json) into the
built package as ``scale_plugins/recipes``, where ``scale-plugins recipes --dest DIR`` reads it. An editable install
reads the repository's folder instead. MANIFEST.in puts ``recipes/`` in the sdist, so a wheel built from it has them.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithRecipes(build_py):
    def run(self):
        super().run()
        source = Path(__file__).resolve().parent / "recipes"
        if not self.editable_mode and source.is_dir():
            target = Path(self.build_lib) / "scale_plugins" / "recipes"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*", "__pycache__"))


setup(cmdclass={"build_py": BuildPyWithRecipes})

"""Generates exec_sandbox/_proto from the repository's proto/ files with protoc before building.

Everything else is declared in pyproject.toml.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from genproto import generate  # noqa: E402


class BuildWithProtos(build_py):
    def run(self) -> None:
        generate()
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})

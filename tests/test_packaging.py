"""Packaging facts: the licence, the optional extras, one version, the changelog."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import robustfeat

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_license_file_matches_pyproject():
    text = (ROOT / "LICENSE").read_text()
    assert PROJECT["license"] == {"text": "MIT"}
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the robustfeat authors" in text


def test_optional_parts_are_extras_and_the_test_extra_has_them():
    core = names(PROJECT["dependencies"])
    extras = PROJECT["optional-dependencies"]
    assert names(extras["cam"]) == {"grad-cam"}
    assert names(extras["tensorboard"]) == {"tensorboard"}
    assert not core & {"grad-cam", "tensorboard"}  # only the picture / logging features need them
    assert names(extras["cam"]) | names(extras["tensorboard"]) <= names(extras["test"])


def test_one_version_in_the_package_the_metadata_and_the_changelog():
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "robustfeat.__version__"}
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert f"## [{robustfeat.__version__}] - " in changelog

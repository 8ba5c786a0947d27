"""What a user installs: extras that compose, one version string, Makefile targets that exist."""

from __future__ import annotations

import re

import tomllib
from conftest import REPO


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_keras_weights_have_an_extra_for_h5py_and_extras_do_not_repeat_each_other():
    extras = _project()["optional-dependencies"]
    assert any(r.startswith("h5py") for r in extras["keras"])
    owners: dict[str, str] = {}
    for extra, requirements in extras.items():
        for requirement in requirements:
            name = re.split(r"[<>=\[;]", requirement)[0].strip()
            assert name not in owners or name == "inceptionv3", f"{name} is in both [{owners[name]}] and [{extra}]"
            owners[name] = extra
    assert "inceptionv3[keras,onnx,int8,serve,grpc,explain]" in extras["test"]


def test_the_version_lives_in_one_place():
    import inceptionv3

    project = _project()
    assert "version" not in project and "version" in project["dynamic"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", inceptionv3.__version__)


def test_every_phony_make_target_exists_and_the_demo_skips_the_test_stack():
    makefile = (REPO / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M).group(1).split()
    defined = set(re.findall(r"^([a-z-]+):", makefile, re.M))
    assert set(phony) <= defined, set(phony) - defined
    demo_recipe = makefile[makefile.index("$(DEMO_STAMP):"):makefile.index("\ndemo:")]
    assert "'.[openvino]'" in demo_recipe and "test" not in demo_recipe

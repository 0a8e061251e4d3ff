"""Every dependency is pinned exactly, and pyproject.toml and environment.yml pin the same versions."""

import re
import tomllib

from doge_from_scratch.paths import PROJECT_ROOT


def test_pyproject_and_environment_pin_the_same_versions():
    deps = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    unpinned = [d for d in deps if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][A-Za-z0-9.+]*", d)]
    assert not unpinned, f"pyproject.toml: not pinned exactly: {unpinned}"
    env = re.findall(r"^\s+- ([A-Za-z0-9_.\-]+==\S+)$", (PROJECT_ROOT / "environment.yml").read_text(), re.M)
    assert sorted(deps) == sorted(env), (f"only in pyproject.toml: {sorted(set(deps) - set(env))}; "
                                         f"only in environment.yml: {sorted(set(env) - set(deps))}")

"""``xlib_pipeline.lazy_exports``: a package's names load their module on first access.

Each test writes a real package into a temporary folder and imports it; the core's and the
plugins' own packages are walked in a fresh interpreter.
"""

from __future__ import annotations

import importlib
import itertools
import json
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlib_pipeline import lazy_exports
from xlib_pipeline._entrypoints import entry_points

_COUNTER = itertools.count()

INIT = """
from xlib_pipeline import lazy_exports

EAGER = 1
__all__ = ["EAGER", "alpha", "beta", "gamma", "Missing", "sep"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "alpha": "._one",
        "beta": "._one",
        "gamma": "._two",
        "Missing": "._two",
        "sep": "os.path",
    },
)
"""


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A fresh package ``lazypkgN`` whose ``_one`` and ``_two`` modules load lazily."""
    name = f"lazypkg{next(_COUNTER)}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text(textwrap.dedent(INIT))
    (root / "_one.py").write_text("alpha = 'a'\nbeta = ['b']\n")
    (root / "_two.py").write_text("gamma = 'g'\n")  # no Missing: a broken table entry
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_names_load_their_module_on_first_access(package: ModuleType) -> None:
    name = package.__name__
    assert f"{name}._one" not in sys.modules
    assert f"{name}._two" not in sys.modules
    beta = package.beta
    assert beta == ["b"]
    assert f"{name}._one" in sys.modules
    assert f"{name}._two" not in sys.modules  # only the module the name lives in
    assert vars(package)["beta"] is beta  # stored: the next access is a plain read
    assert package.beta is beta


def test_from_import_and_absolute_modules(package: ModuleType) -> None:
    import os.path

    namespace: dict[str, object] = {}
    exec(f"from {package.__name__} import gamma, sep", namespace)
    assert namespace["gamma"] == "g"
    assert namespace["sep"] == os.path.sep


def test_dir_lists_lazy_and_loaded_names(package: ModuleType) -> None:
    listed = dir(package)
    assert {"EAGER", "alpha", "beta", "gamma", "Missing", "sep", "__all__"} <= set(listed)
    assert listed == sorted(listed)


def test_unknown_name_is_the_usual_attribute_error(package: ModuleType) -> None:
    with pytest.raises(
        AttributeError, match=rf"module '{package.__name__}' has no attribute 'zeta'"
    ):
        _ = package.zeta
    assert not hasattr(package, "zeta")
    with pytest.raises(ImportError, match="zeta"):
        exec(f"from {package.__name__} import zeta", {})


def test_broken_table_entry_names_package_name_and_module(package: ModuleType) -> None:
    with pytest.raises(AttributeError) as info:
        _ = package.Missing
    text = str(info.value)
    assert package.__name__ in text and "'Missing'" in text
    assert f"'{package.__name__}._two'" in text and "does not define it" in text


@pytest.mark.parametrize(
    ("exports", "message"),
    [
        ({"not a name": "._x"}, "'not a name' is not a Python identifier"),
        ({"x": ""}, "export 'x' must name a module"),
        ({"x": "."}, "export 'x' must name a module"),
        ({"x": 3}, "export 'x' must name a module"),
    ],
)
def test_bad_tables_are_refused_with_the_package_and_key(
    exports: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        lazy_exports("some.package", exports)  # type: ignore[arg-type]
    assert "some.package" in str(info.value)


def test_package_must_be_a_name() -> None:
    with pytest.raises(TypeError, match="package must be a module name"):
        lazy_exports("", {})


@settings(max_examples=30, deadline=None)
@given(order=st.lists(st.sampled_from(["alpha", "beta", "gamma", "sep"]), max_size=8))
def test_any_access_order_gives_the_module_values(order: list[str]) -> None:
    """Model: the values are those of the defining modules, whatever the access order; a
    module is imported exactly when one of its names was used; ``dir`` always holds every
    exported name exactly once."""
    import os.path

    model = {"alpha": "a", "beta": ["b"], "gamma": "g", "sep": os.path.sep}
    home = {"alpha": "_one", "beta": "_one", "gamma": "_two"}
    name = f"lazypkg{next(_COUNTER)}"
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / name
        root.mkdir()
        (root / "__init__.py").write_text(textwrap.dedent(INIT))
        (root / "_one.py").write_text("alpha = 'a'\nbeta = ['b']\n")
        (root / "_two.py").write_text("gamma = 'g'\n")
        sys.path.insert(0, folder)
        try:
            pkg = importlib.import_module(name)
            for attr in order:
                assert getattr(pkg, attr) == model[attr]
                listed = dir(pkg)
                assert len(listed) == len(set(listed))
                assert set(model) <= set(listed)
            assert {k for k in model if k in vars(pkg)} == set(order)
            loaded = {m for m in ("_one", "_two") if f"{name}.{m}" in sys.modules}
            assert loaded == {home[a] for a in order if a in home}
        finally:
            sys.path.remove(folder)
            for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[mod]


PACKAGES = [
    "xlib_pipeline",
    "xlibrary.pipeline",
    *sorted({ep.value.split(":")[0].split(".")[0] for ep in entry_points("xlib_pipeline")}),
]


@pytest.mark.parametrize("package_name", PACKAGES)
def test_every_public_name_resolves_in_a_fresh_process(package_name: str) -> None:
    """``from pkg import X`` works for every X in ``__all__``, and ``dir`` lists them all."""
    script = textwrap.dedent(
        f"""
        import importlib, json
        pkg = importlib.import_module({package_name!r})
        missing = [n for n in pkg.__all__ if n not in dir(pkg)]
        unresolved = []
        for n in pkg.__all__:
            try:
                exec(f"from {package_name} import {{n}}", {{}})
            except ImportError as exc:
                unresolved.append(f"{{n}}: {{exc}}")
        star = {{}}
        exec("from {package_name} import *", star)
        print(json.dumps([missing, unresolved, sorted(set(pkg.__all__) - set(star))]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    missing, unresolved, not_starred = json.loads(out.strip().splitlines()[-1])
    assert missing == [], f"dir({package_name}) lacks {missing}"
    assert unresolved == [], f"{package_name}: {unresolved}"
    assert not_starred == []

"""README.md's list of modules is the one the modules' docstrings make.

`make docs` (`python -m testkit.architecture --write`) rewrites the list; these tests
fail while a module is missing from it, listed under a name it no longer has, or
described by a docstring it no longer starts with.
"""

from __future__ import annotations

from pathlib import Path

from testkit import architecture

FIX = f"run `{architecture.COMMAND}` (or `make docs`) and commit README.md"


def test_every_product_module_starts_with_a_docstring_that_says_what_it_holds() -> None:
    modules = architecture.all_modules()

    without = [module.path for module in modules if module.summary is None]

    assert modules
    assert not without, (
        f"modules without a docstring whose first line says what they hold: {without}"
    )


def test_the_readme_lists_every_module_with_its_docstring() -> None:
    readme = architecture.README.read_text(encoding="utf-8")

    listed = architecture.current_section(readme).splitlines()
    generated = architecture.render(architecture.groups()).splitlines()

    missing = [line for line in generated if line not in listed]
    stale = [line for line in listed if line not in generated]
    assert listed == generated, (
        f"README.md's list of modules is stale: {FIX}.\nmissing: {missing}\nstale: {stale}"
    )


def _tree(root: Path, files: dict[str, str]) -> Path:
    (root / "pyproject.toml").write_text('[tool.importlinter]\nroot_packages = ["low", "high"]\n')
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_new_module_gets_its_line_under_its_package(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "low/__init__.py": '"""The bottom layer."""\n',
            "low/a.py": '"""What a holds: one sentence\nwrapped over two lines. More."""\n',
            "high/__init__.py": '"""The top layer."""\n',
            "high/pages/b.py": '"""A page run by path."""\n',
            "high/sub/__init__.py": '"""A package of its own."""\n',
            "high/sub/c.py": "x = 1\n",
        },
    )

    text = architecture.render(architecture.groups(root))

    assert text == (
        "**`low/`** — The bottom layer.\n\n"
        "- `low/a.py`: What a holds: one sentence wrapped over two lines.\n\n"
        "**`high/`** — The top layer.\n\n"
        "- `high/pages/b.py`: A page run by path.\n\n"
        "**`high/sub/`** — A package of its own.\n\n"
        "- `high/sub/c.py`"
    )
    missing = [m.path for m in architecture.all_modules(root) if m.summary is None]
    assert missing == ["high/sub/c.py"]


def test_writing_replaces_only_the_text_between_the_markers() -> None:
    readme = f"intro\n{architecture.START}\nold line\n{architecture.END}\noutro\n"

    written = architecture.replace_section(readme, "new line")

    assert written == f"intro\n{architecture.START}\nnew line\n{architecture.END}\noutro\n"
    assert architecture.current_section(written) == "new line"

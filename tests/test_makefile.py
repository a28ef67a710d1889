"""`make test` installs what the tests drive from Debian, or says in one line why it did not.

The README's second command must pass by itself on a fresh machine: as root on Debian it
installs Chromium before the tests; elsewhere it installs nothing, exits 0 and the browser
tests are skipped with one line that says why (`testkit.browser.chromium_missing`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make") or "make"


def make(*args: str, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAKE, "--no-print-directory", "-s", *args],
        cwd=ROOT,
        env={"PATH": path, "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_test_installs_the_debian_packages_before_running_the_tests() -> None:
    dry = make("-n", "test", path="/usr/bin:/bin")

    assert dry.returncode == 0, dry.stderr
    assert "apt-get" in dry.stdout and "install" in dry.stdout
    assert dry.stdout.index("apt-get") < dry.stdout.index("pytest")


def test_without_apt_a_missing_package_is_one_line_and_no_failure(tmp_path: Path) -> None:
    # A PATH with make, sh and the tools the recipe uses, but no apt-get nor dpkg-query.
    for tool in ("sh", "grep", "id", "env", "sudo"):
        found = shutil.which(tool)
        if found:
            (tmp_path / tool).symlink_to(found)

    done = make("packages", "DEBIAN_PACKAGES=no-such-package-stepwise", path=str(tmp_path))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        "make: not Debian, so not installing no-such-package-stepwise: "
        "the tests that need it are skipped"
    ]


def test_an_installed_package_is_left_alone() -> None:
    done = make("packages", "DEBIAN_PACKAGES=coreutils", path="/usr/sbin:/usr/bin:/sbin:/bin")

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""

"""Headless Chromium for the tests of pages (Debian's chromium; tests skip without it):
render a file, return its screenshot and what its console said."""

import os
import re
import shutil
import subprocess

import pytest

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
# without the background-networking flags Chromium tries to reach Google's hosts
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]
CONSOLE = re.compile(r":(INFO|WARNING|ERROR):CONSOLE[^\]]*\] (.*)")


def render(page: str, tmp_dir: str, size=(1300, 3000)):
    """(screenshot path, [console messages]) of the page at `page` (a file)."""
    if not BROWSER:
        pytest.skip("no chromium (apt-get install chromium)")
    shot = os.path.join(tmp_dir, "screenshot.png")
    out = subprocess.run([BROWSER, *FLAGS, f"--user-data-dir={os.path.join(tmp_dir, 'profile')}",
                          f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}",
                          "file://" + os.path.abspath(page)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return shot, [m.group(2) for m in CONSOLE.finditer(out.stderr)]

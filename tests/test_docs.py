"""The documentation site: ``mkdocs build --strict`` (pages, links, anchors, API pages from the docstrings)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_lab.config import project_root

ROOT = project_root()


@pytest.mark.slow
def test_the_site_builds_strictly_with_api_pages(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (site / "api" / "pipeline" / "index.html").read_text()
    assert "ClassConditionalPipeline" in api and "generate_with_seed" in api, "the API pages come from the docstrings"
    assert (site / "guidance_sweep.png").is_file() and (site / "sampling" / "index.html").is_file()


def test_readme_links_to_pages_that_exist() -> None:
    """The README's relative links (as GitHub follows them) reach files of the checkout."""
    links = re.findall(r"\]\(((?:docs|notebooks)/[^)#]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    assert "docs/sampling.md" in links and "docs/export.md" in links
    assert [link for link in links if not (ROOT / link).is_file()] == []

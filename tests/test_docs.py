"""The documentation site builds, and every Python snippet in it runs.

(a) `mkdocs build --strict` (broken links, pages missing from the nav, API pages whose
    docstrings do not render: all errors in strict mode) into a temporary site folder.
(b) Every ```python block of every docs/**/*.md page and of README.md is executed, each
    page's blocks in order in one namespace, in a subprocess per page whose working
    directory is a temporary folder (runs and files a snippet writes land there). A block
    opts out only with the line `<!-- docs-test: skip (reason) -->` right above it.

Costs: the strict build about 2 s; the snippets about a minute on a shared 2-core machine
(each page pays a fresh `import torch`). Fails, not skips, when mkdocs is missing: it is in
the `test` extra.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGE_TIMEOUT_S = 240          # one page's snippets together; the slowest takes ~20 s here

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*$")
SKIP = re.compile(r"^\s*<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->\s*$")
MARKER = re.compile(r"docs-test")


def python_blocks(text: str, name: str = "<page>"):
    """[(first line number, source, skip reason or None)] for each ```python block of a
    Markdown text. A fence's indentation (a block inside a list item) is removed. Raises
    ValueError for an unclosed fence or a malformed docs-test marker, so that a typo cannot
    silently turn a block's test off."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group("indent"), m.group("lang"), i
        j = i + 1
        while j < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[j]):
            j += 1
        if j == len(lines):
            raise ValueError(f"{name}:{start + 1}: unclosed ``` fence")
        if lang == "python":
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            reason = None
            if k >= 0 and MARKER.search(lines[k]):
                skip = SKIP.match(lines[k])
                if skip is None:
                    raise ValueError(f"{name}:{k + 1}: malformed marker {lines[k].strip()!r}; "
                                     "write <!-- docs-test: skip (the reason) -->")
                reason = skip.group("reason").strip()
            source = textwrap.dedent("\n".join(lines[start + 1:j]))
            blocks.append((start + 2, source, reason))
        i = j + 1
    return blocks


def pages():
    return sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# Runs one page's blocks in order in one namespace; names the failing block.
RUNNER = r"""
import json, sys, traceback
page, blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for line, source in blocks:
    try:
        exec(compile(source, f"{page}:{line}", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"DOCS-TEST FAILURE: {page}, the python block starting at line {line}", file=sys.stderr)
        sys.exit(1)
print(f"ran {len(blocks)} blocks of {page}")
"""


def test_strict_build(tmp_path):
    """The site builds with `mkdocs build --strict` (which is what the docs extra runs)."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                             str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert result.returncode == 0, (
        "mkdocs build --strict failed (install the docs tools with pip install -e \".[docs]\"):\n"
        + result.stdout[-4000:] + result.stderr[-8000:])
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "ctpg" / "index.html").is_file()


def test_nav_covers_every_page():
    """Every Markdown page under docs/ is in mkdocs.yml's nav, and every nav entry exists."""
    import yaml

    def entries(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from entries(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from entries(value)

    nav = set(entries(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert not on_disk - nav, f"pages missing from mkdocs.yml's nav: {sorted(on_disk - nav)}"
    assert not nav - on_disk, f"nav entries without a page: {sorted(nav - on_disk)}"


def test_readme_is_a_front_page():
    """README.md stays a front page (<= 300 lines) whose relative links all resolve."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300, "README.md grew past 300 lines: move the detail into docs/"
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_block_extraction():
    """The extractor finds blocks, honours a reasoned skip and refuses a reasonless one."""
    text = ("intro\n```python\nx = 1\n```\n\n<!-- docs-test: skip (trains for minutes) -->\n"
            "```python\ntrain()\n```\n```bash\nls\n```\n- item\n\n    ```python\n    y = 2\n    ```\n")
    blocks = python_blocks(text)
    assert [(b[1], b[2]) for b in blocks] == [("x = 1", None), ("train()", "trains for minutes"),
                                               ("y = 2", None)]
    with pytest.raises(ValueError, match="malformed marker"):
        python_blocks("<!-- docs-test: skip -->\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match="unclosed"):
        python_blocks("```python\nx = 1\n")


PAGES_WITH_CODE = [p for p in pages() if python_blocks(p.read_text(), page_id(p))]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=page_id)
def test_page_snippets_run(page, tmp_path):
    """Each page's python blocks, in order, in one fresh interpreter."""
    blocks = [(line, src) for line, src, reason in python_blocks(page.read_text(), page_id(page))
              if reason is None]
    if not blocks:
        pytest.skip("every block on this page is marked docs-test: skip")
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([page_id(page), blocks]))
    runner = tmp_path / "run_blocks.py"
    runner.write_text(RUNNER)
    work = tmp_path / "cwd"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"), MPLBACKEND="Agg",
               # one thread, as the trainer runs by default: the fastest for these sizes
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        result = subprocess.run([sys.executable, str(runner), str(spec)], cwd=work, env=env,
                                capture_output=True, text=True, timeout=PAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{page_id(page)}: its python blocks ran past {PAGE_TIMEOUT_S} s; make the "
                    "snippets smaller or mark a genuinely long one <!-- docs-test: skip (reason) -->")
    assert result.returncode == 0, f"{page_id(page)}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"

"""The README and docs/ as a reader meets them: a short README, and every link between the
pages leads somewhere (a file that exists, a heading that exists)."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted([os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md"))])
FENCED = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def anchors(path, level="#+"):
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(rf"^{level} (.+)$", FENCED.sub("", read(path)), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def links(path):
    return LINK.findall(FENCED.sub("", read(path)))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_link_of_a_page_resolves(page):
    broken = []
    for link in links(page):
        if re.match(r"[a-z]+:", link):  # https:, mailto:: outside the repository
            continue
        target, _, anchor = link.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
        if not os.path.exists(path):
            broken.append(f"{link}: no file {os.path.relpath(path, ROOT)}")
        elif anchor and (not path.endswith(".md") or anchor not in anchors(path)):
            broken.append(f"{link}: no heading #{anchor} in {os.path.relpath(path, ROOT)}")
    assert not broken, broken


def test_the_readme_is_short_and_links_every_docs_page():
    readme = read(os.path.join(ROOT, "README.md"))
    assert len(readme.splitlines()) <= 250
    linked = {os.path.normpath(link.partition("#")[0]) for link in links(os.path.join(ROOT, "README.md"))}
    pages = {os.path.relpath(p, ROOT) for p in PAGES if os.path.basename(p) != "README.md"}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"
    contents = readme[readme.index("## Contents"):]
    contents = contents[:contents.index("\n## ", 1)]
    sections = anchors(os.path.join(ROOT, "README.md"), level="##") - {"contents"}
    assert set(re.findall(r"\]\(#([^)]+)\)", contents)) == sections

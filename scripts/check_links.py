#!/usr/bin/env python3
"""Checks that every relative link in the Markdown manual resolves: the file
exists, and an #anchor names a heading of that file (GitHub's slugs).
Exits non-zero naming each broken link."""
import re
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
pages = [root / "README.md", root / "BENCHMARKS.md", *sorted((root / "docs").glob("*.md")),
         *sorted(root.glob("examples/*/README.md")), *sorted(root.glob("helm/*/README.md"))]


def slug(text: str) -> str:
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^#{1,6} (.*)", line)):
            found.add(slug(m.group(1)))
    return found


broken = []
for page in pages:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{page.relative_to(root)}: {target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{page.relative_to(root)}: {target} (no such heading)")
for line in broken:
    print(f"  broken link: {line}")
print(f"links: {len(pages)} pages checked, {len(broken)} broken")
sys.exit(1 if broken else 0)

"""mkdocs hooks of this site (mkdocs.yml ``hooks:``), run at build time.

* ``cli.md`` is generated from the ``tad`` argument parser: the ``--help`` of every command and sub-command,
  so the reference cannot drift from the code.
* The records and generated pages under ``results/`` (and ``benchmarks/results/``) are added to the site
  under the same paths, so the guides link to them and the results pages keep their relative links.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
#: repository folders published beside the guides, with the file types the site carries
PUBLISHED = {"results": (".md", ".png", ".json", ".txt", ".log"), "benchmarks/results": (".md", ".png", ".json")}


def cli_reference() -> str:
    """Markdown: ``tad --help`` and the help of every sub-command, depth first, in the parser's order."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width: a fixed width keeps the page stable
    from tad_plugin.cli import build_parser

    lines = ["# Command-line reference", "",
             "Generated from the `tad` argument parser when this site is built (`tad COMMAND --help` prints the "
             "same).", ""]

    def walk(parser: argparse.ArgumentParser, name: str, depth: int) -> None:
        lines.extend([f"{'#' * min(depth, 6)} `{name}`", "", "```text", parser.format_help().rstrip(), "```", ""])
        for action in parser._actions:  # argparse keeps sub-parsers only here
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    walk(child, f"{name} {sub}", depth + 1)

    walk(build_parser(), "tad", 2)
    return "\n".join(lines) + "\n"


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "cli.md", content=cli_reference()))
    for folder, suffixes in PUBLISHED.items():
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in suffixes:
                uri = path.relative_to(ROOT).as_posix()
                if files.get_file_from_path(uri) is None:
                    files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Links are written to be right in the repository; on the site the guides sit at the root beside
    ``results/`` and ``benchmarks/``: a guide's ``../results/X`` becomes ``results/X``, a results page's
    ``../docs/X.md`` (as many ``../`` as it is deep) becomes ``../X.md``."""
    uri = page.file.src_uri
    if uri.startswith(("results/", "benchmarks/")):
        depth = uri.count("/")
        return markdown.replace("../" * depth + "docs/", "../" * depth)
    return re.sub(r"\]\(\.\./(results|benchmarks)/", r"](\1/", markdown)

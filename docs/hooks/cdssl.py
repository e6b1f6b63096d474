"""MkDocs hooks of the matgl-cdssl site (``hooks:`` in mkdocs.yml): pages generated at build time, and links.

- ``cli.md``: the help of every ``cdssl`` command and subcommand, from ``matgl_cdssl.cli.build_parser()``;
- ``api.md``: its ``<!-- public-api -->`` marker becomes one mkdocstrings block per name of ``matgl_cdssl.__all__``;
- ``api/<module>.md``: one mkdocstrings page per module of ``matgl_cdssl``, added to the nav under "API reference";
- ``models/<name>.md``: the model card of each shipped weight, ``matgl_cdssl/pretrained/<name>/README.md``;
- ``javascripts/mathjax.js``: MathJax settings for ``pymdownx.arithmatex`` (MathJax itself loads from a CDN when a
  page is viewed; the build needs no network);
- links to files outside ``docs/``: a model card's README becomes a link to its page, any other repository file
  becomes its path in code (the site has no copy of it);
- pages still being produced (:data:`PENDING`): nav entries and links to them are dropped, with a note in the log,
  while their files do not exist, so that ``mkdocs build --strict`` checks everything else.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.cdssl")

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "matgl_cdssl"
PENDING: tuple[str, ...] = ()
"""Docs paths (files, or folders ending in ``/``) that other work is still producing."""

MATHJAX = """window.MathJax = {
  tex: {inlineMath: [["\\\\(", "\\\\)"]], displayMath: [["\\\\[", "\\\\]"]], processEscapes: true,
        processEnvironments: true},
  options: {ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex"},
};
document$.subscribe(() => {
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
"""

_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)


# ---- what is generated ---------------------------------------------------------------------------------------------
def _modules() -> list[str]:
    """Public modules and subpackages of the package (no leading underscore), in the order of the layers."""
    found = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    order = ["data", "method", "hub", "apps", "analysis", "bench", "cli"]
    public = [m for m in found if not m.startswith("_")]
    return sorted(public, key=lambda m: (order.index(m) if m in order else len(order), m))


def _model_cards() -> dict[str, Path]:
    """``models/<name>.md`` -> the README.md of each shipped weight."""
    return {f"models/{p.parent.name}.md": p for p in sorted((PACKAGE / "pretrained").glob("*/README.md"))}


def _public_api() -> str:
    """One ``::: target`` block per name of ``matgl_cdssl.__all__``, at the path where it is defined."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    names: list[str] = []
    where: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("matgl_cdssl"):
            for alias in node.names:
                where[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            names = list(ast.literal_eval(node.value))
    missing = [name for name in names if name not in where]
    if missing:
        raise ValueError(
            f"{PACKAGE / '__init__.py'}: __all__ names {missing} that no 'from matgl_cdssl... import' binds"
        )
    blocks = []
    for name in names:  # documented under the package's own name: the module pages hold the defining paths
        blocks += [
            f"::: matgl_cdssl.{name}",
            "    options:",
            "      show_root_heading: true",
            "      heading_level: 2",
            "",
        ]
    return "\n".join(blocks)


def _cli_reference() -> str:
    """Markdown with the help text of ``cdssl`` and of each of its subcommands, as ``--help`` prints it."""
    from matgl_cdssl.cli import build_parser

    lines = [
        "# Command line: `cdssl`",
        "",
        "The console script `cdssl` (`python -m matgl_cdssl.cli`) is installed with the package. This page is "
        "generated from `matgl_cdssl.cli.build_parser()` when the site is built; `cdssl COMMAND --help` prints the "
        "same.",
        "",
    ]

    def walk(parser: argparse.ArgumentParser, depth: int) -> None:
        title = parser.prog
        lines.extend([f"{'#' * min(depth, 4)} `{title}`", "", "```text", parser.format_help().rstrip(), "```", ""])
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                seen: set[int] = set()
                for sub in action.choices.values():
                    if id(sub) not in seen:  # aliases share a parser
                        seen.add(id(sub))
                        walk(sub, depth + 1)

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "102"  # argparse wraps at COLUMNS - 2: the same text on every machine
    try:
        walk(build_parser(), 2)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(lines)


def _module_page(module: str) -> str:
    return f"# `matgl_cdssl.{module}`\n\n::: matgl_cdssl.{module}\n    options:\n      show_root_heading: false\n"


# ---- hooks ---------------------------------------------------------------------------------------------------------
def _pending(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in PENDING)


def _prune_nav(nav: Any, docs: Path) -> Any:
    """Drop nav entries of pending pages whose files do not exist; expand ``API reference: api.md``."""
    if isinstance(nav, list):
        return [item for item in (_prune_nav(i, docs) for i in nav) if item is not None]
    if isinstance(nav, dict):
        out = {}
        for title, value in nav.items():
            if title == "API reference" and value == "api.md":
                value = [{"Public API": "api.md"}] + [{f"matgl_cdssl.{m}": f"api/{m}.md"} for m in _modules()]
            value = _prune_nav(value, docs)
            if value not in (None, []):
                out[title] = value
        return out or None
    if isinstance(nav, str) and _pending(nav) and not (docs / nav).exists():
        log.info("nav: leaving out %s, which does not exist yet", nav)
        return None
    return nav


def on_config(config: Any) -> Any:
    """Prune and expand the nav."""
    config["nav"] = _prune_nav(config["nav"], Path(config["docs_dir"]))
    return config


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages: the CLI reference, module pages, model cards and the MathJax settings."""
    generated = {"cli.md": _cli_reference(), "javascripts/mathjax.js": MATHJAX}
    generated.update({f"api/{m}.md": _module_page(m) for m in _modules()})
    generated.update({uri: path.read_text() for uri, path in _model_cards().items()})
    for uri, content in generated.items():
        if files.get_file_from_path(uri) is not None:
            raise ValueError(f"docs/{uri} exists, but the site generates {uri}: delete the file")
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Fill in the public API; rewrite links that leave docs/ or point to pending pages that do not exist yet."""
    if page.file.src_uri == "api.md":
        markdown = markdown.replace("<!-- public-api -->", _public_api())
    source = page.file.abs_src_path
    if source is None:  # generated: the model cards
        source = str(_model_cards().get(page.file.src_uri, Path(config["docs_dir"]) / page.file.src_uri))
    docs = Path(config["docs_dir"]).resolve()
    cards = {path.resolve(): uri for uri, path in _model_cards().items()}
    here = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match) -> str:
        bang, text, target = match.groups()
        url, _, anchor = target.partition("#")
        if not url or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url) or url.startswith("/"):
            return match.group(0)
        resolved = (Path(source).parent / url).resolve()
        if resolved in cards:
            new = posixpath.relpath(cards[resolved], here or ".")
            return f"{bang}[{text}]({new}{'#' + anchor if anchor else ''})"
        if docs in resolved.parents or resolved == docs:
            inside = resolved.relative_to(docs).as_posix()
            if _pending(inside) and not resolved.exists():
                log.info("%s: %s does not exist yet; its link is left out", page.file.src_uri, inside)
                return text
            return match.group(0)
        if ROOT in resolved.parents and resolved.exists():
            path = resolved.relative_to(ROOT).as_posix()
            return text if path in text else f"{text} (`{path}`)"
        return match.group(0)

    parts, last = [], 0
    for fence in _FENCE.finditer(markdown):  # leave code blocks alone
        parts += [_LINK.sub(rewrite, markdown[last : fence.start()]), fence.group(0)]
        last = fence.end()
    parts.append(_LINK.sub(rewrite, markdown[last:]))
    return "".join(parts)

"""Griffe extension of the API pages (mkdocs.yml, mkdocstrings ``extensions``): matgl-style docstrings for griffe.

- ``Example:`` (matgl's and timm's singular heading) is read as an examples section, so that ``>>>`` lines render as
  code instead of as Markdown text;
- Sphinx roles (``:func:`~matgl_cdssl.data.read_structures```) render as code (``read_structures``), as Sphinx shows
  them.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const|ref):`(~?)([^`]+)`")


def _role(match: re.Match) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class MatglDocstrings(Extension):
    """Rewrite ``Example:`` headings and Sphinx roles in every docstring before it is parsed."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        """Edit the docstring of each loaded object."""
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_role, _EXAMPLE.sub(r"\1Examples:", obj.docstring.value))

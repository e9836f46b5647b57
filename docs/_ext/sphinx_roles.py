"""Griffe extension for the API reference (mkdocs.yml): render Sphinx roles as code.

The docstrings cross-reference with Sphinx roles (:func:`compute`, :class:`~a.B`), which Markdown
shows literally. This turns each into a code span (`compute`, `B`) when the docs are built; the
source is not changed.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const|ref):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):  # ~a.b.C shows as C, as in Sphinx
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx cross-reference roles in every docstring as Markdown code spans."""

    def _fix(self, obj: Any) -> None:
        docstring = getattr(obj, "docstring", None)
        if docstring is not None and ":" in docstring.value:
            docstring.value = _ROLE.sub(_code, docstring.value)

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        self._fix(obj)

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        self._fix(obj)

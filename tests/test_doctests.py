"""The ``>>>`` examples in optzoo's docstrings run as tests: one test per docstring.

Every module of the package is imported and its examples are collected with
``doctest.DocTestFinder`` (only objects defined in that module, so a re-exported factory is
run once, where it lives). Each docstring is one test, named by its object
(``optzoo.muon.scale_by_muon``), that fails with doctest's own report of the example and the
output it got. Options: ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``, nothing else, so an
example shows exactly what a user sees.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import optzoo

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    return ["optzoo", *(m.name for m in pkgutil.walk_packages(optzoo.__path__, "optzoo."))]


def _examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for name in _modules():
        found += [t for t in finder.find(importlib.import_module(name)) if t.examples]
    return sorted(found, key=lambda t: t.name)


EXAMPLES = _examples()


def test_examples_are_collected():
    # The package documents its optimizers with examples; finding none means the collection
    # broke (e.g. a module stopped importing), not that there is nothing to run.
    assert len(EXAMPLES) >= 20, [t.name for t in EXAMPLES]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda t: t.name)
def test_docstring_example(example: doctest.DocTest):
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    runner.run(example, out=report.append)
    assert runner.failures == 0, "".join(report)

"""The README's ``pycon`` blocks are doctests: a newcomer's first snippet must run as written."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```pycon\n(.*?)```", README.read_text(), re.S)


def test_readme_has_a_doctest_block():
    assert _blocks(), "README.md lost its runnable ```pycon example"


def test_readme_pycon_blocks_run_as_written():
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    parser = doctest.DocTestParser()
    for i, block in enumerate(_blocks()):
        test = parser.get_doctest(block, {}, f"README.md[{i}]", str(README), 0)
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, result

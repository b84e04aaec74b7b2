"""docs/testing.md shows the example applications' tests exactly as the suite runs them."""

from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_the_documented_examples_are_the_ones_the_suite_runs():
    doc = (ROOT / "docs" / "testing.md").read_text()
    for name in ("test_sync_openai.py", "test_asyncio_openai.py", "test_anthropic.py"):
        code = (ROOT / "tests" / "testing" / "apps" / name).read_text()
        assert f"```python\n{code}```" in doc, name

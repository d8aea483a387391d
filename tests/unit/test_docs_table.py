"""docs/configuration.md's table is the settings rows rendered, and the command that rewrites it works."""

from pathlib import Path

import pytest

from wsupload.config import docs_table
from wsupload.config.settings import VARIABLES


def test_the_docs_table_is_current() -> None:
    text = docs_table.PAGE.read_text(encoding="utf-8")
    assert docs_table.current_table(text) == docs_table.render_table(), (
        f"docs/configuration.md's table differs from config/settings.py: run `{docs_table.REGENERATE}`"
    )


def test_the_table_has_one_row_per_variable_in_order() -> None:
    rows = docs_table.render_table().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{v.env}`" for v in VARIABLES]


def test_a_stale_table_is_reported_then_rewritten_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before, after = "# Title\n\nIntro.\n\n", "\n## Next\n\nMore.\n"
    stale = before + "| variable | default | meaning |\n| --- | --- | --- |\n| `OLD` | `1` | gone |\n" + after
    path = tmp_path / "configuration.md"
    path.write_text(stale, encoding="utf-8")

    assert docs_table.main(["--check", str(path)]) == 1
    assert "make docs" in capsys.readouterr().err
    assert path.read_text(encoding="utf-8") == stale

    assert docs_table.main([str(path)]) == 0
    assert path.read_text(encoding="utf-8") == before + docs_table.render_table() + after
    assert docs_table.main(["--check", str(path)]) == 0


def test_a_page_without_the_table_is_an_error() -> None:
    with pytest.raises(ValueError, match="no line starting"):
        docs_table.current_table("# Title\n\nNo table here.\n")

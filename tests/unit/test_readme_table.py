"""The README's configuration table is the settings rows rendered, and the command that rewrites it works."""

from pathlib import Path

import pytest

from wsupload.config import readme
from wsupload.config.settings import VARIABLES


def test_the_readme_table_is_current() -> None:
    text = readme.README.read_text(encoding="utf-8")
    assert readme.current_table(text) == readme.render_table(), (
        f"README.md's configuration table differs from config/settings.py: run `{readme.REGENERATE}`"
    )


def test_the_table_has_one_row_per_variable_in_order() -> None:
    rows = readme.render_table().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{v.env}`" for v in VARIABLES]


def test_a_stale_table_is_reported_then_rewritten_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before, after = "# Title\n\nIntro.\n\n", "\n## Next\n\nMore.\n"
    stale = before + "| variable | default | meaning |\n| --- | --- | --- |\n| `OLD` | `1` | gone |\n" + after
    path = tmp_path / "README.md"
    path.write_text(stale, encoding="utf-8")

    assert readme.main(["--check", str(path)]) == 1
    assert "make readme" in capsys.readouterr().err
    assert path.read_text(encoding="utf-8") == stale

    assert readme.main([str(path)]) == 0
    assert path.read_text(encoding="utf-8") == before + readme.render_table() + after
    assert readme.main(["--check", str(path)]) == 0


def test_a_readme_without_the_table_is_an_error() -> None:
    with pytest.raises(ValueError, match="no line starting"):
        readme.current_table("# Title\n\nNo table here.\n")

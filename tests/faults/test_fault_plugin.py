"""A method plugin that cannot be imported: one line naming the file, the line and the error."""

from __future__ import annotations

import pytest

from peft_bench.cli import main


@pytest.mark.parametrize(
    "source,line,error",
    [
        ("import math\n\nSCALE = 1 / 0\n", 3, "ZeroDivisionError: division by zero"),
        (
            "import no_such_package_for_peft_bench\n",
            1,
            "ModuleNotFoundError: No module named 'no_such_package_for_peft_bench'",
        ),
        ("x = 1\ndef build(:\n", 2, "SyntaxError"),
    ],
    ids=["raises", "imports-missing", "syntax"],
)
def test_a_plugin_that_fails_to_import_gives_one_line(tmp_path, source, line, error, capsys):
    plugin = tmp_path / "my_method.py"
    plugin.write_text(source)
    assert main(["methods", "--plugin", str(plugin)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{plugin}, line {line}" in err and error in err, err

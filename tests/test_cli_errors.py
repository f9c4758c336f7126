"""A user's mistake is one line and exit 2; a bug is a traceback (exit 1); --debug shows the traceback of both."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from peft_bench.cli import main
from peft_bench.launch import plan


def test_a_users_mistake_is_one_line_and_exit_2(capsys):
    assert main(["run", "--methods", "no_such_method", "--no-table"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()] and "unknown method 'no_such_method'" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback_of_a_users_mistake(capsys):
    assert main(["--debug", "run", "--methods", "no_such_method", "--no-table"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("peft-bench: error: unknown method")


def test_a_bug_is_not_passed_off_as_a_users_mistake(monkeypatch):
    def broken(args):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(plan, "run_configs", broken)
    with pytest.raises(ValueError, match="internal invariant"):  # not exit 2 and one line
        main(["run", "--no-table"])


def test_a_bug_ends_the_command_with_a_traceback_and_exit_1(tmp_path):
    script = textwrap.dedent("""
        import sys
        from peft_bench.cli import main
        from peft_bench.launch import plan

        def broken(args):
            raise ValueError("an internal invariant broke")

        plan.run_configs = broken
        sys.exit(main(["run", "--no-table"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: an internal invariant broke" in done.stderr

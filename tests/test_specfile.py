"""The shared TOML loader: a key's line within its own table; syntax errors with their line."""
from pathlib import Path

import pytest

from jrbench.errors import UserError
from jrbench.specfile import parse_spec_text, read_spec

TEXT = '''name = "x"            # line 1
[base]
batch_size = 64
paths = [
  "a",                # batch_size = 1 inside a value is no key
]
note = """
batch_size = 2
"""
[attack]
batch_size = 500      # line 11
inline = {steps = 3}
[[case]]
name = "jacobian-n1"
[[case]]
name = "jacobian-exact"
max_ratio = 20        # line 17
[case.extra]
a.b = 1
'''


def test_keys_are_found_in_their_own_table():
    f = parse_spec_text(TEXT, "t.toml")
    assert f.line(("base",), "batch_size") == 3 and f.line(("attack",), "batch_size") == 11
    assert f.line((), "name") == 1 and f.line(("case", 0), "name") == 14 and f.line(("case", 1), "name") == 16
    assert f.line(("case", 1), "max_ratio") == 17 and f.line(("case", 1, "extra", "a"), "b") == 19
    assert f.line(("attack", "inline"), "steps") == 12   # an inline table: its key's line
    assert f.line(("attack",)) == 10 and f.line(("case", 1)) == 15 and f.line(("nothing",), "x") is None
    assert str(f.error("bad", ("case", 1), "max_ratio")) == "t.toml, line 17: bad"


def test_syntax_errors_and_missing_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"^t.toml, line 3, column 5: not valid TOML: Invalid value\.$"):
        parse_spec_text('a = 1\nb = 2\nc = \n', "t.toml")
    with pytest.raises(UserError, match=r"^t.toml, line 2 \(the end\): not valid TOML: Unclosed array"):
        parse_spec_text('a = [1,\n2\n', "t.toml")
    with pytest.raises(UserError, match="cannot read the gate spec"):
        read_spec(tmp_path / "missing.toml", "gate spec")
    assert read_spec(Path(__file__).resolve().parents[1] / "benchmarks" / "overhead_gate.toml").doc["baseline"]

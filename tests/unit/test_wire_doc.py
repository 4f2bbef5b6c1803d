"""docs/wire-format.md against the code: the dead-letter reasons table names every reason a worker
can write (and no other), its `hello` example gives the documented reason, and an `expired` result's
`probs` is the documented byte."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import msgpack
import pytest

from protocol.entries import decode_entries, decode_window
from protocol.results import Result, encode_result
from protocol.wire import Limits, WireError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "wire-format.md"
WIRE_MODULES = [ROOT / "protocol" / n for n in ("wire.py", "entries.py", "results.py", "span.py")]
STAGES = ROOT / "worker" / "stages.py"
#: Functions whose WireError is not a dead letter: encoders (the caller's own mistake, raised before
#: anything is sent) and result decoders (``bad_result``, a consumer reading a malformed result).
NOT_DEAD_LETTER = re.compile(r"^(encode_\w+|decode_result|decode_multi_result)$")


def doc_reasons() -> dict[str, str]:
    """The table after ``<!-- dead-reasons -->``: reason -> rule."""
    text = DOC.read_text()
    table = text.split("<!-- dead-reasons -->", 1)[1].lstrip().split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    out = {}
    for row in rows:
        m = re.match(r"\| `([a-z_]+)` \| (.+) \|$", row)
        assert m, row
        out[m.group(1)] = m.group(2)
    return out


def _wire_error_reasons(path: Path) -> set[str]:
    """Reasons of the ``WireError(...)`` calls a worker's decoding can reach in ``path``."""
    tree = ast.parse(path.read_text())
    # unpack_limited(raw, limit, what) raises WireError(f"bad_{what}", ...): its callers' `what`s.
    whats = {str(c.args[2].value) for c in ast.walk(tree) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
             and c.func.id == "unpack_limited" and len(c.args) == 3 and isinstance(c.args[2], ast.Constant)}
    found: set[str] = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or NOT_DEAD_LETTER.match(fn.name):
            continue
        for c in ast.walk(fn):
            if not (isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "WireError" and c.args):
                continue
            arg = c.args[0]
            if isinstance(arg, ast.Constant):
                found.add(str(arg.value))
            else:  # the f-string f"bad_{what}"
                assert ast.unparse(arg) == "f'bad_{what}'", ast.unparse(arg)
                found |= {f"bad_{w}" for w in whats}
    return found


def code_reasons() -> set[str]:
    """Every ``dead.reason`` the code can write."""
    reasons: set[str] = set()
    for path in WIRE_MODULES:
        reasons |= _wire_error_reasons(path)
    multi = (ROOT / "protocol" / "entries.py").read_text() + (ROOT / "protocol" / "results.py").read_text()
    reasons |= set(re.findall(r'\n\s*reason = .* else "(\w+)"\n', multi))  # encode_dead_windows: "mixed"
    reasons |= set(re.findall(r': "(\w+)" for i in', multi))  # decode_multi's per-window bad reasons
    stages = STAGES.read_text()
    reasons |= set(re.findall(r'self\.dead\(\w+, "(\w+)"', stages))
    reasons |= set(re.findall(r'reason="(\w+)"', stages))
    reasons |= set(re.findall(r'bad\[\w+\] = "(\w+)"', stages))
    return reasons


def test_code_reasons_found() -> None:
    """The scan itself finds what it should (so the comparison below is not vacuous)."""
    found = code_reasons()
    assert {"bad_x", "bad_meta", "bad_version", "nonfinite", "max_deliveries", "predict_failed", "mixed",
            "bad_cids", "too_many_windows"} <= found
    assert "bad_result" not in found  # only the result decoders raise it


def test_dead_reason_table_matches_code() -> None:
    documented, code = set(doc_reasons()), code_reasons()
    assert not code - documented, f"reasons the code can write but the doc's table lacks: {sorted(code - documented)}"
    assert not documented - code, f"reasons in the doc's table the code never writes: {sorted(documented - code)}"


def test_hello_example_gives_documented_reason() -> None:
    rule = doc_reasons()["bad_x"]
    assert '`hello` is `bad_x` "trailing data after x"' in rule
    fields = {b"v": b"1", b"x": b"hello", b"ts": b"1764230400000000"}
    with pytest.raises(WireError) as ei:
        decode_window(fields, Limits(), n_features=1)
    assert (ei.value.reason, ei.value.detail) == ("bad_x", "trailing data after x")
    (err,) = decode_entries([fields], Limits(), 1)  # the worker's path
    assert isinstance(err, WireError) and err.reason == "bad_x" and err.detail == "trailing data after x"


@pytest.mark.parametrize("dtype", [[1], {"a": 1}, 3, None])
def test_unhashable_or_odd_dtype_is_bad_dtype(dtype: object) -> None:
    """An array or map as dtype used to raise TypeError (unhashable) out of the decoder."""
    x = msgpack.packb({"dtype": dtype, "shape": [1, 1], "data": b"\0" * 4}, use_bin_type=True)
    (err,) = decode_entries([{b"v": b"1", b"x": x, b"ts": b"1"}], Limits(), 1)
    assert isinstance(err, WireError) and err.reason == "bad_dtype"


def test_expired_probs_is_the_documented_byte() -> None:
    text = DOC.read_text()
    (hexed,) = re.findall(r"<!-- example:expired_probs -->\s*```text\n(.*?)```", text, re.S)
    r = Result("1-0", "c", "expired", -1, "", [], "m", "w", 0, 0, 0, 0, 1, 0)
    fields = encode_result(r)
    assert fields[b"probs"] == bytes.fromhex(hexed.strip()) == b"\x90"
    assert fields[b"class"] == b"" and fields[b"label"] == b"-1"

"""One list of error codes (config.error_codes) for the REST API and the signaling socket: every
code the code can answer with is on it, so clients can rely on the list."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from config.api_errors import CODES
from config.error_codes import ERROR_CODES

ROOT = Path(__file__).resolve().parents[1]
APPS = ("accounts", "calls", "config", "integrations", "relays", "signaling")
RAISERS = {"ProtocolError", "CallError", "TicketError", "error_body", "emit_error", "Conflict"}

pytestmark = pytest.mark.smoke


def codes_in_source() -> dict[str, str]:
    """code -> where: the first argument of the raisers above, `code=` keywords, `code` and
    `default_code` class attributes, {"code": …} dicts, and (code, message) pairs of tickets."""
    found: dict[str, str] = {}
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" in path.parts or path.name == "forms.py":
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                values = []
                if isinstance(node, ast.Call):
                    f = node.func
                    name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                    if name in RAISERS and node.args:
                        values.append(node.args[0])
                    values += [kw.value for kw in node.keywords if kw.arg in ("code", "expired")]
                elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target = node.targets[0]
                    if isinstance(target, ast.Name) and target.id in ("code", "default_code"):
                        values.append(node.value)
                elif isinstance(node, ast.Dict):
                    values += [
                        v
                        for k, v in zip(node.keys, node.values, strict=True)
                        if getattr(k, "value", None) == "code"
                    ]
                for value in values:
                    if isinstance(value, ast.Tuple) and value.elts:
                        value = value.elts[0]
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        found.setdefault(value.value, str(path.relative_to(ROOT)))
    return found


def test_every_code_answered_is_on_the_one_list():
    found = codes_in_source()
    assert len(found) > 30  # the scan sees the code
    missing = {code: where for code, where in found.items() if code not in ERROR_CODES}
    assert not missing, f"codes not in config/error_codes.py: {missing}"
    assert set(CODES.values()) <= set(ERROR_CODES)


def test_the_list_has_no_codes_nothing_answers_with():
    found = set(codes_in_source()) | set(CODES.values()) | {"invalid", "error"}
    assert set(ERROR_CODES) - found == set()

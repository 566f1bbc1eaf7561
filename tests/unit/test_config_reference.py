"""docs/configuration.md is generated from `Settings` and must not drift from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from fraudstream.config import Settings

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "python scripts/config_reference.py > docs/configuration.md"


def _script() -> ModuleType:
    path = ROOT / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_is_described(name: str) -> None:
    description = Settings.model_fields[name].description
    assert description and description.strip(), (
        f"Settings.{name} has no description: add an attribute docstring (a string on the "
        f"line after the field) in src/fraudstream/config.py, then run `{REGENERATE}`"
    )


def test_secrets_say_they_are_never_logged() -> None:
    for name, field in Settings.model_fields.items():
        if "SecretStr" in str(field.annotation):
            assert "never logged" in (field.description or ""), name


def test_the_reference_lists_every_setting_once() -> None:
    text = _script().render()
    for name in Settings.model_fields:
        assert text.count(f"| `{name.upper()}` |") == 1, name


def test_bounds_and_defaults_read_as_typed() -> None:
    script = _script()
    assert script.render_default(None) == "unset"
    assert script.render_default(False) == "`false`"
    assert script.render_default(1000.0) == "`1000`"
    assert script.render_default(".fraudstream/state") == "`.fraudstream/state`"
    batch = Settings.model_fields["batch_size"].metadata
    assert script.render_bounds(batch) == "(1 to 100,000)"
    rate = Settings.model_fields["transactions_per_second"].metadata
    assert script.render_bounds(rate) == "(more than 0)"


def test_docs_configuration_md_is_up_to_date() -> None:
    doc = ROOT / "docs" / "configuration.md"
    current = doc.read_text(encoding="utf-8") if doc.is_file() else ""
    assert current == _script().render(), (
        f"docs/configuration.md is out of date: run `{REGENERATE}`"
    )

"""Access to Mirakl Connect's published OpenAPI bundle for contract tests.

The bundle is not vendored (it is Mirakl's document, not ours): it is read
from ``../shared/spec`` beside the repository, or from ``$MIRAKL_SPEC_DIR``,
and tests that need it are skipped when it is absent.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_FILE = "mirakl-connect-openapi.yaml"
_DOC_URI = "urn:mirakl-connect-openapi"
_SKIP_REASON = (
    "../shared/spec not found: contract checks need Mirakl Connect's OpenAPI bundle beside the repo"
)

__all__ = ["load_schema_validator", "spec_dir", "spec_or_skip"]

# RFC 3339 section 5.6; checked here because jsonschema only checks
# "date-time" when the optional rfc3339-validator package is installed.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")
_FORMATS = FormatChecker()


@_FORMATS.checks("date-time")
def _is_datetime(value: object) -> bool:
    return not isinstance(value, str) or bool(_RFC3339.match(value))


def spec_dir() -> Path:
    """Where the bundle is expected: ``$MIRAKL_SPEC_DIR`` or ``<repo>/../shared/spec``."""
    override = os.environ.get("MIRAKL_SPEC_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "shared" / "spec"


@functools.cache
def _load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        document: dict[str, Any] = yaml.safe_load(handle)
    return document


def spec_or_skip() -> dict[str, Any]:
    """The parsed OpenAPI document, or skip the calling test when it is missing."""
    path = spec_dir() / SPEC_FILE
    if not path.is_file():
        pytest.skip(_SKIP_REASON)
    return _load(path)


@functools.cache
def _registry(path: Path) -> Registry[Any]:
    resource = Resource.from_contents(_load(path), default_specification=DRAFT202012)
    return Registry().with_resource(_DOC_URI, resource)


def load_schema_validator(schema_name: str) -> Draft202012Validator:
    """A Draft 2020-12 validator for ``#/components/schemas/<schema_name>``.

    ``$ref``s resolve against the whole document, so nested schemas
    (``Money``, ``ErrorItem``, ...) are checked exactly as published.
    ``date-time`` formats are checked too (RFC 3339).
    """
    document = spec_or_skip()
    if schema_name not in document["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in the spec")
    path = spec_dir() / SPEC_FILE
    schema = {"$ref": f"{_DOC_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(
        schema,
        registry=_registry(path),
        format_checker=_FORMATS,
    )

"""Config mistakes name the key (with the mapping key msgspec leaves out) and what is allowed there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from webhook import config, errors


def _error(text: str) -> str:
    with pytest.raises(errors.ConfigError) as info:
        config.parse(yaml.safe_load(text), source="c.yaml")
    return str(info.value)


def test_an_unknown_check_names_the_key_and_the_known_checks_whatever_its_value() -> None:
    for text in ("checks: {bogus: 1}", "checks: {bogus: {mode: warn}}", "checks: {images: {}, bogus: []}"):
        message = _error(text)
        assert "`checks.bogus`" in message
        assert "privilege, runtimeclass, images, gpu, rego" in message


def test_an_unknown_top_level_key_lists_the_allowed_sections() -> None:
    message = _error("serverr: {listen: '127.0.0.1:1'}")
    assert message.startswith("c.yaml: unknown key `serverr` (allowed: ")
    for section in ("server", "checks", "namespaces", "images", "quota", "policy", "audit", "monitor"):
        assert section in message
    assert "base_dir" not in message  # set by the loader, not a key a user writes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("namespaces: {prod: 3}", "key `namespaces.prod`: Expected `object`, got `int`"),
        ("namespaces: {dev: {}, prod: {labelz: {}}}", "unknown key `namespaces.prod.labelz` (allowed: labels)"),
        ("namespaces: {prod: {labels: {a: 1}}}", "key `namespaces.prod.labels.a`: Expected `str`, got `int`"),
        ("checks: {gpu: {}, images: {mode: loud}}", "key `checks.images.mode`: Invalid enum value 'loud' (allowed: en"),
        ("exemptions: [{namespaces: [a]}, {namespacez: [b]}]", "unknown key `exemptions[1].namespacez` (allowed:"),
        ("checks: 3", "key `checks`: Expected `object`, got `int`"),
    ],
)
def test_a_wrong_value_under_a_mapping_names_the_mapping_key(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_a_mapping_key_that_does_not_read_back_after_a_dot_is_not_spliced_into_the_path() -> None:
    message = _error('namespaces: {"a.b": {labelz: 1}}')
    assert "`namespaces.*.labelz`" in message  # not the misleading namespaces.a.b.labelz


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("serverr: {}\n", encoding="utf-8")
    with pytest.raises(errors.ConfigError, match=rf"^{path}: unknown key `serverr` \(allowed: audit, checks"):
        config.load(path)


def test_a_key_that_is_not_text_says_to_quote_it() -> None:
    message = _error("namespaces: {prod: {labels: {1: a}}}")
    assert (
        message == "c.yaml: key `namespaces.prod.labels`: a key there is not text (Expected `str`, got `int`); quote it"
    )

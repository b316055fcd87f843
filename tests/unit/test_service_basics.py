"""ids, settings, display helpers and field coercion."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightabaco import ids
from lightabaco.config import Settings, SettingsError
from lightabaco.protocol.errors import ValidationError
from lightabaco.protocol.fields import FieldSpec, boolean, parse
from lightabaco.protocol.serialize import display_time, to_case, under_to_camel


def test_ids_are_abaco_hashids_and_aliases_are_not():
    new = ids.new_id()
    assert new.isalnum() and 10 <= len(new) <= 14
    assert ids.is_hashid(new)
    assert not ids.is_hashid("jane") and not ids.is_hashid("dots.in.name") and not ids.is_hashid("")
    assert ids.dbid("DEV-DEVELOP", new) == f"DEV-DEVELOP_{new}"
    assert ids.display_id(f"DEV_X_{new}") == new


def test_settings_precedence_and_validation(tmp_path: Path):
    env = {"LIGHTABACO_PORT": "9001", "LIGHTABACO_WORKERS": "3", "LIGHTABACO_AUTOSCALING": "false",
           "LIGHTABACO_HOME": str(tmp_path)}
    s = Settings.from_env(environ=env, port=9100)
    assert s.port == 9100 and s.workers == 3 and s.autoscaling is False and s.home == tmp_path
    assert Settings.from_env(environ=s.to_env()).workers == 3
    with pytest.raises(SettingsError, match="LIGHTABACO_CASE"):
        Settings.from_env(environ={}, case="kebab")
    with pytest.raises(SettingsError, match="not a valid int"):
        Settings.from_env(environ={"LIGHTABACO_PORT": "eighty"})
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings.from_env(environ={}, colour="blue")


def test_display_time_and_case():
    assert display_time(None) == "None" and display_time(0) == "None"
    assert display_time(1588196813.393) == "2020-04-29T21:46:53.393Z"
    assert display_time(1588196813.0) == "2020-04-29T21:46:53.000Z"
    assert under_to_camel("default_environment") == "defaultEnvironment"
    assert under_to_camel("_links") == "_links"
    obj = {"status_message": "", "max_workers": None, "_links": {"self_link": 1}}
    assert to_case(obj, "camel") == {"statusMessage": "", "_links": {"self_link": 1}}
    assert to_case(obj, "snake") is obj


def test_field_coercion_follows_flask_restful():
    specs = [FieldSpec("image", "str", required=True, help="The image."),
             FieldSpec("stateless", "bool", True, "Whether stateless."),
             FieldSpec("max_workers", "int", None, "How many."),
             FieldSpec("hints", "list", list, "Hints."),
             FieldSpec("default_environment", "dict", dict, "Env.")]
    out = parse({"image": {"a": 1}, "stateless": "False", "maxWorkers": "16", "hints": ("a", "b")},
                specs, "snake", "Invalid actor description")
    assert out == {"image": "{'a': 1}", "stateless": False, "max_workers": 16, "hints": ["a", "b"],
                   "default_environment": {}}
    assert boolean("TRUE") is True and boolean(0) is False
    with pytest.raises(ValueError):
        boolean("abcd")
    with pytest.raises(ValidationError, match="'stateless': 'Whether stateless.'"):
        parse({"image": "x", "stateless": "abcd"}, specs, "snake", "Invalid actor description")
    with pytest.raises(ValidationError, match="'defaultEnvironment'"):
        parse({"image": "x", "defaultEnvironment": "abcd"}, specs, "camel", "Invalid actor description")
    with pytest.raises(ValidationError, match="'image'"):
        parse({}, specs, "snake", "Invalid actor description")
    with pytest.raises(ValidationError, match="max_workers"):
        parse({"image": "x", "max_workers": 1.5}, specs, "snake", "Invalid actor description")

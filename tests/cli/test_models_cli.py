"""`medlens models`: the table and the JSON list agree with the registry."""

from __future__ import annotations

import json

from medlens.models.registry import all_models


def test_models_json_lists_every_registered_model(cli):
    code, out, _ = cli("models", "--json")
    assert code == 0
    listed = json.loads(out)
    specs = all_models()
    assert [m["name"] for m in listed] == [s.name for s in specs]
    by_name = {m["name"]: m for m in listed}
    # both kinds are present and described (deep networks and classical estimators)
    assert {"cnn-small", "elm"} <= set(by_name)
    assert by_name["cnn-small"]["kind"] == "deep" and by_name["elm"]["kind"] == "classical"
    for m in listed:
        assert set(m) == {"name", "kind", "dims", "tasks", "description"}
        assert m["dims"] and set(m["dims"]) <= {2, 3}
        assert m["tasks"] and m["description"]


def test_models_table_names_every_model(cli):
    code, out, _ = cli("models")
    assert code == 0
    for spec in all_models():
        assert spec.name in out
    assert "deep" in out and "classical" in out

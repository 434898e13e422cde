"""Home Assistant's side of MQTT discovery, for the tests: how Home Assistant 2026.11.0 reads a
device-based discovery payload (homeassistant/components/mqtt/discovery.py), checked against
``homeassistant_discovery.schema.json``, and its templates rendered as it renders them.

Home Assistant itself needs Python 3.14 and cannot run here; the tables and the steps below are
taken from that version's source, the schema from its validation schemas.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
from jinja2.sandbox import ImmutableSandboxedEnvironment

SCHEMA = json.loads((Path(__file__).parent / "homeassistant_discovery.schema.json").read_text())

# components/mqtt/abbreviations.py, the entries whose full name the schema knows: any other
# abbreviation stays as it is and the schema rejects it as an unknown key.
ABBREVIATIONS = {
    "avty": "availability", "avty_mode": "availability_mode", "avty_t": "availability_topic",
    "avty_tpl": "availability_template", "cdevs": "child_devices", "cmd_t": "command_topic", "cmps": "components",
    "def_ent_id": "default_entity_id", "dev": "device", "dev_cla": "device_class", "e": "encoding",
    "en": "enabled_by_default", "ent_cat": "entity_category", "ent_pic": "entity_picture", "exp_aft": "expire_after",
    "frc_upd": "force_update", "grp": "group", "ic": "icon", "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template", "lrst_val_tpl": "last_reset_value_template",
    "msg_exp_int": "message_expiry_interval", "o": "origin", "off_dly": "off_delay", "ops": "options",
    "p": "platform", "pl_avail": "payload_available", "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off", "pl_on": "payload_on", "stat_cla": "state_class", "stat_t": "state_topic",
    "sug_dsp_prc": "suggested_display_precision", "t": "topic", "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement", "val_tpl": "value_template", "vis": "visible_by_default",
}
DEVICE_ABBREVIATIONS = {"cns": "connections", "cu": "configuration_url", "ids": "identifiers", "mf": "manufacturer",
                        "mdl": "model", "mdl_id": "model_id", "hw": "hw_version", "sw": "sw_version",
                        "sa": "suggested_area", "sn": "serial_number"}
ORIGIN_ABBREVIATIONS = {"sw": "sw_version", "url": "support_url"}
# components/mqtt/schemas.py SHARED_OPTIONS: given at the top level, they go into every component
# that does not set them itself.
SHARED_OPTIONS = ("availability", "availability_mode", "availability_template", "availability_topic",
                  "command_topic", "encoding", "message_expiry_interval", "payload_available",
                  "payload_not_available", "state_topic", "qos")


def _expand(mapping: dict[str, Any], table: dict[str, str]) -> None:
    for key in set(table).intersection(mapping):
        mapping[table[key]] = mapping.pop(key)


def _expand_entity(config: dict[str, Any]) -> None:
    _expand(config, ABBREVIATIONS)
    for availability in config.get("availability") or []:
        if isinstance(availability, dict):
            _expand(availability, ABBREVIATIONS)


def entities(payload: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each component of a device discovery payload as Home Assistant sets it up, by component id:
    (platform, its config with the device, the origin and the shared options merged in).

    Raises jsonschema.ValidationError where Home Assistant would refuse the payload or drop an option."""
    payload = copy.deepcopy(payload)
    _expand_entity(payload)
    if isinstance(payload.get("origin"), dict):
        _expand(payload["origin"], ORIGIN_ABBREVIATIONS)
    if isinstance(payload.get("device"), dict):
        _expand(payload["device"], DEVICE_ABBREVIATIONS)
    for config in (payload.get("components") or {}).values():
        if isinstance(config, dict):
            _expand_entity(config)
    jsonschema.validate(payload, SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    out = {}
    for component_id, given in payload["components"].items():
        config = dict(given)
        platform = config.pop("platform")
        config["device"], config["origin"] = payload["device"], payload["origin"]
        config.update({k: payload[k] for k in SHARED_OPTIONS if k in payload and k not in config})
        jsonschema.validate(config, {"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{platform}"},
                            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        out[component_id] = (platform, config)
    return out


# Home Assistant renders templates in an immutable sandbox; a template that reads a field the
# status does not have fails here, where Home Assistant would log a warning and show nothing.
TEMPLATES = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)


def render(template: str, status: dict[str, Any]) -> str:
    """What a value or availability template makes of a status message (``value_json``), as Home
    Assistant stores it: a string, stripped; a sensor's "None" is Home Assistant's unknown."""
    return TEMPLATES.from_string(template).render(value_json=status, value=json.dumps(status)).strip()


def shown(config: dict[str, Any], statuses: dict[str, dict[str, Any]]) -> str | None:
    """The state a user sees for an entity, given the last retained message on each topic:
    None while it is unavailable."""
    topic = config.get("availability_topic")
    if topic and render(config["availability_template"], statuses[topic]) != config.get("payload_available",
                                                                                          "online"):
        return None
    return render(config["value_template"], statuses[config["state_topic"]])

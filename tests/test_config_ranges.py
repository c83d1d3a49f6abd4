"""Every field of the config schema has its valid range or choices next to its definition, and
the command line refuses a value outside it in one line naming the field and the range, before
TensorFlow builds anything and before any run folder exists. The table is generated from the
schema, so a new field is covered as soon as it is declared."""
import dataclasses
import os
import typing

import pytest
import yaml

from epsilon_resnet import config as config_lib
from epsilon_resnet.cli import cifar_main
from cli_helpers import exit_code, one_line_error, write_tiny_config

SECTIONS = [(f.name, f.type) for f in dataclasses.fields(config_lib.Config)]
FREE_TEXT = {("data", "dir")}  # a folder name: any text


def schema_fields():
    """(section, field, its type without Optional) of every field of the schema."""
    for section, cls in SECTIONS:
        for field in dataclasses.fields(cls):
            kind = next(t for t in (typing.get_args(field.type) or (field.type,)) if t is not type(None))
            yield section, field, kind


def outside(field, kind):
    """(label, value, the allowed values as the error names them) just outside a field's range on
    each side it has (a schedule's epochs too), or not among its choices."""
    if "choices" in field.metadata:
        choices = field.metadata["choices"]
        yield "not a choice", max(choices) + 1 if kind is int else "nonsense", "must be one of"
        return
    allowed, meta = field.metadata["range"], field.metadata
    number = int if kind is int or meta["each"] is int else float
    sides = []
    if allowed.low is not None:
        sides.append(("below", number(allowed.low if allowed.low_open else allowed.low - 1)))
    if allowed.high is not None:
        sides.append(("above", number(allowed.high if allowed.high_open else allowed.high + 1)))
    for label, value in sides:
        yield label, [[0, value]] if meta["points"] else [value] if meta["each"] else value, str(allowed)
    if meta["points"]:
        yield "epoch below", [[-1, allowed.low + 1]], str(config_lib.EPOCHS)


CASES = [pytest.param(section, field.name, value, allowed, id=f"{section}.{field.name}-{label}")
         for section, field, kind in schema_fields() if (section, field.name) not in FREE_TEXT
         for label, value, allowed in (outside(field, kind) if field.metadata else ())]


def test_every_field_but_free_text_declares_its_range_or_choices():
    undeclared = [f"{section}.{field.name}" for section, field, kind in schema_fields()
                  if kind in (int, float, str, list) and (section, field.name) not in FREE_TEXT
                  and not {"range", "choices"} & set(field.metadata)]
    assert not undeclared
    assert len(CASES) >= 30


@pytest.mark.parametrize("section, key, value, allowed", CASES)
def test_a_value_outside_its_range_is_refused_in_one_line_before_any_folder(
        tmp_path, monkeypatch, capsys, tiny_cifar, section, key, value, allowed):
    monkeypatch.chdir(tmp_path)
    path = write_tiny_config(str(tmp_path), tiny_cifar)
    with open(path) as f:
        raw = yaml.safe_load(f)
    raw[section][key] = value
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    assert exit_code(cifar_main, "--config", path, "-o", "x") == 1
    err = one_line_error(capsys)
    assert f"{section}.{key} " in err and allowed in err, err
    assert os.listdir(tmp_path) == ["tiny.yaml"]


def test_a_network_too_large_for_the_memory_is_refused_with_the_estimate(tmp_path, monkeypatch, capsys,
                                                                         tiny_cifar):
    """-n 1000000 hung building the graph: now refused at once, with the two numbers compared."""
    monkeypatch.chdir(tmp_path)
    assert exit_code(cifar_main, "--config", write_tiny_config(str(tmp_path), tiny_cifar), "-n", 1000000,
                     "-o", "x") == 1
    err = one_line_error(capsys)
    assert "the network of 3000000 residual blocks needs at least 2,790.5 GiB" in err, err
    available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 30
    assert f"more than the {available:,.1f} GiB of memory of this machine" in err
    assert sorted(os.listdir(tmp_path)) == ["tiny.yaml"]

"""YAML as Dodo reads it: PyYAML's safe loader, except that a key given twice in one mapping is an
error. PyYAML keeps the last of them without a word, so a config with a second `training:` section
(appended to override a setting) dropped every setting of the first, and a states file with two
`states:` lists simulated only the second (outside probe, round 22). YAML merge keys (`<<: *base`)
are no duplicates: a key given beside a merge overrides the merged one, as YAML says."""
from __future__ import annotations

import yaml

_MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing a mapping that names one key twice (a ConstructorError)."""


def _refuse_repeated_keys(loader: UniqueKeyLoader, node: yaml.MappingNode) -> None:
    first_line = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:  # an unhashable key: the constructor's own error says so
            continue
        line = key_node.start_mark.line + 1
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice in one mapping, at line {first_line[key]} and at line {line}: "
                            "the later would replace the earlier without a word; keep one", key_node.start_mark)
        first_line[key] = line


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode):
    _refuse_repeated_keys(loader, node)
    return (yield from loader.construct_yaml_map(node))


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def safe_load(text):
    """yaml.safe_load, refusing a key given twice in one mapping (yaml.YAMLError)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass

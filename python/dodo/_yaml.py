"""YAML as Dodo reads it: PyYAML's safe loader, except that a key given twice in one mapping is an
error. PyYAML keeps the last of them without a word, so a config with a second `training:` section
(appended to override a setting) dropped every setting of the first, and a states file with two
`states:` lists simulated only the second (outside probe, round 22). YAML merge keys (`<<: *base`)
are no duplicates: a key given beside a merge overrides the merged one, as YAML says."""
from __future__ import annotations

import re

import yaml

_MERGE_TAG = "tag:yaml.org,2002:merge"


#: Most nodes a document may stand for once its aliases are expanded, beyond 100 per node written:
#: a few lines of anchors, each aliasing the one before twice, stand for 2^40 values (a "billion
#: laughs" document). PyYAML shares the aliased objects, so loading is cheap, but any reader that walks
#: the values (`dodo study`'s check of its overrides' keys) ran for ever (outside probe, round 38).
MAX_EXPANDED_NODES = 1_000_000


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing a mapping that names one key twice (a ConstructorError), and a
    document whose aliases expand it beyond MAX_EXPANDED_NODES (and 100 times its own nodes)."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _refuse_alias_expansion(node)
        return node


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return node.value  # a SequenceNode's


def _refuse_alias_expansion(root) -> None:
    """A ConstructorError when the node graph under ``root`` (aliases are shared nodes) stands for more
    than MAX_EXPANDED_NODES nodes written out, and more than 100 times the nodes it holds. Linear in
    the nodes held (scalars, most of them, are counted where they stand); a recursive alias (a node
    inside itself) counts once."""
    if isinstance(root, yaml.ScalarNode):
        return
    sizes: dict[int, int] = {}  # id of a node -> the nodes it stands for, written out
    visiting, stack, scalars = set(), [root], 0
    while stack:
        node = stack[-1]
        key = id(node)
        if key in sizes:
            stack.pop()
            continue
        children = _children(node)
        if key not in visiting:
            visiting.add(key)
            pending = [child for child in children if not isinstance(child, yaml.ScalarNode)
                       and id(child) not in sizes and id(child) not in visiting]
            if pending:
                stack.extend(pending)
                continue
        stack.pop()
        visiting.discard(key)
        total = 1
        for child in children:
            if isinstance(child, yaml.ScalarNode):
                total += 1
                scalars += 1
            else:
                total += sizes.get(id(child), 1)  # not there: a node inside itself
        # Capped: the exact count of a deep document is a number of hundreds of digits.
        sizes[key] = min(total, 1 << 62)
    expanded, held = sizes[id(root)], len(sizes) + scalars
    limit = max(MAX_EXPANDED_NODES, 100 * held)
    if expanded > limit:
        where, node = _largest_value(root, sizes, limit)
        raise yaml.constructor.ConstructorError(
            None, None, f"{'the value of ' + where if where else 'the document'} stands for more than "
                        f"{min(sizes[id(node)], 10**18):,} values through its aliases (*name), the whole document "
                        f"holding {held:,}: a \"billion laughs\" file?; write the values out, or alias each one "
                        "fewer times", node.start_mark)


def _largest_value(root, sizes: dict, limit: int):
    """(dotted path, node) of the deepest value under ``root`` that alone stands for more than ``limit``
    nodes: its keys joined by '.', list positions as [i] (the config key a refusal names)."""
    path, node, seen = "", root, set()
    while id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            labelled = [(key.value if isinstance(key, yaml.ScalarNode) else "?", value) for key, value in node.value]
            step = "{}"
        elif isinstance(node, yaml.SequenceNode):
            labelled = [(f"[{index}]", value) for index, value in enumerate(node.value)]
            step = ""
        else:
            break
        big = [(label, child) for label, child in labelled if sizes.get(id(child), 1) > limit]
        if not big:
            break
        label, node = big[0]
        path += (("." if path else "") + str(label)) if step else label
    return path, node


def _refuse_repeated_keys(loader: UniqueKeyLoader, node: yaml.MappingNode) -> None:
    first_line: dict[object, int] = {}
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


def _without_sexagesimal_numbers() -> dict:
    """UniqueKeyLoader's implicit resolvers with YAML 1.1's base-60 numbers taken out of the int and
    float ones: PyYAML read `epochs: 1:30` as 90 and `lr: 1:30.0` as 90.0 without a word (a time of
    day, a ratio or a range written by hand became a number), where YAML 1.2 and most readers
    keep them text. Such a scalar now stays a string, which each typed setting refuses naming the
    key (data-loss probe, round four). Other YAML 1.1 forms (`0x1f`, `1_000`) are unambiguous and stay."""
    numeric = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
    table = {}
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items():
        table[first] = [(tag, re.compile(r"^(?![^:]*:)" + regexp.pattern[1:], regexp.flags) if tag in numeric else regexp)
                        for tag, regexp in resolvers]
    return table


UniqueKeyLoader.yaml_implicit_resolvers = _without_sexagesimal_numbers()


def safe_load(text):
    """yaml.safe_load, refusing a key given twice in one mapping (yaml.YAMLError)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass

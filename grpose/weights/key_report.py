"""Readable key reports for weight tools: keys grouped by UNet block or top-level module, with counts."""

from __future__ import annotations

_BLOCK_CONTAINERS = {"down_blocks": 2, "up_blocks": 2, "mid_block": 1}  # how many indices name one block


def module_group(key: str) -> tuple[str, str]:
    """Split a parameter key into (group, sub-module): the group is one UNet block (`down_blocks.1.resnets.0`,
    `mid_block.attentions.0`) or a top-level module (`pose_encoder`, `controlnet_down_blocks`)."""
    parts = key.split(".")
    cut = 1
    depth = _BLOCK_CONTAINERS.get(parts[0])
    if depth:
        numeric = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
        if len(numeric) >= depth:
            cut = numeric[depth - 1] + 1
    return ".".join(parts[:cut]), ".".join(parts[cut:-1])


def format_key_groups(keys: list[str], verbose: bool = False, width: int = 118) -> list[str]:
    """One line per group: name, tensor count, and the sub-modules it holds (all keys when verbose)."""
    groups: dict[str, list[str]] = {}
    members: dict[str, list[str]] = {}
    for key in keys:
        group, sub = module_group(key)
        groups.setdefault(group, []).append(key)
        if sub and sub not in members.setdefault(group, []):
            members[group].append(sub)
    lines = []
    for group, group_keys in groups.items():
        line = f"    {group:<34} {len(group_keys):>4}  {', '.join(members.get(group, []))}".rstrip()
        if not verbose and len(line) > width:
            line = line[: width - 3] + "..."
        lines.append(line)
        if verbose:
            lines.extend(f"        {k}" for k in group_keys)
    return lines


def format_key_report(sections: dict[str, list[str]], verbose: bool = False) -> str:
    """Counts and grouped key lists, one section per (title, keys)."""
    lines = []
    for title, keys in sections.items():
        lines.append(f"{title}: {len(keys)} tensors")
        lines.extend(format_key_groups(keys, verbose))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Export / import of trained adapters
# ----------------------------------------------------------------------------------------------------------------

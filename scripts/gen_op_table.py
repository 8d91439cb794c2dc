"""Print the supported-op table (Markdown) from the rule registry; README's table is pasted from this."""

from collections import defaultdict

from graphprune.analysis import rules  # noqa: F401 - registers rules
from graphprune.analysis.registry import RULES


def main():
    by_rule = defaultdict(list)
    for (domain, op), rule in RULES.items():
        by_rule[id(rule)].append((domain, op, rule))
    rows = []
    for items in by_rule.values():
        rule = items[0][2]
        ops = ", ".join(f"{d + '::' if d else ''}{op}" for d, op, _ in sorted(items, key=lambda x: x[1]))
        rows.append((rule.family, ops, rule.doc))
    print("| family | ops | rule |")
    print("|---|---|---|")
    for fam, ops, doc in sorted(rows):
        print(f"| {fam} | {ops} | {doc} |")


if __name__ == "__main__":
    main()

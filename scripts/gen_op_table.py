"""Print the supported-op table (Markdown) from the rule registry; README's table is pasted from this."""

from graphprune.analysis import rules  # noqa: F401 - registers rules
from graphprune.analysis.registry import rule_table


def main():
    print("| family | ops | rule |")
    print("|---|---|---|")
    for fam, ops, doc in rule_table():
        print(f"| {fam} | {ops} | {doc} |")


if __name__ == "__main__":
    main()

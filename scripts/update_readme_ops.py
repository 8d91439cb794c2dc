"""Replace the supported-op table in README.md with the one generated from the rule registry."""

import io
from contextlib import redirect_stdout
from pathlib import Path

from gen_op_table import main as gen

ROOT = Path(__file__).resolve().parent.parent


def run():
    buf = io.StringIO()
    with redirect_stdout(buf):
        gen()
    table = buf.getvalue().strip()
    readme = ROOT / "README.md"
    text = readme.read_text()
    start = text.index("## Supported ops")
    end = text.index("## Known limits")
    head = text[start:end].split("\n\n")[0:2]  # heading + intro paragraph
    block = "\n\n".join(head) + "\n\n" + table + "\n\n"
    readme.write_text(text[:start] + block + text[end:])


if __name__ == "__main__":
    run()

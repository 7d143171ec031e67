"""Write the payment state machine's definition into the CloudFormation template.

`statemachine/payment.asl.json` is the one source of the flow. The template carries
it as `Definition:` (YAML, so cfn-lint validates it as ASL, which it cannot do inside
a `DefinitionString: !Sub` string), between two marker comments; its `${...}`
placeholders are filled by `DefinitionSubstitutions` at deploy time.

    python deploy/aws/build.py           # rewrite the block
    python deploy/aws/build.py --check   # exit 1 if the template is out of date (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

import yaml  # type: ignore[import-untyped,unused-ignore]

from statemachine.asl import load_definition

TEMPLATE: Final = Path(__file__).resolve().parent / "paystep.yaml"
BEGIN: Final = "# BEGIN GENERATED DEFINITION"
END: Final = "# END GENERATED DEFINITION"


def definition_block(definition: dict[str, Any], indent: int) -> str:
    """`Definition:` and the document as YAML, indented to sit under `Properties:`."""
    text = yaml.safe_dump(
        {"Definition": definition},
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=10_000,  # never fold a long string: keeps diffs one line per value
    )
    pad = " " * indent
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


def render(template: str, definition: dict[str, Any]) -> str:
    lines = template.splitlines(True)
    begin = next((i for i, line in enumerate(lines) if line.strip().startswith(BEGIN)), None)
    end = next((i for i, line in enumerate(lines) if line.strip().startswith(END)), None)
    if begin is None or end is None or end < begin:
        raise SystemExit(f"{TEMPLATE}: markers {BEGIN!r} ... {END!r} not found in order")
    indent = len(lines[begin]) - len(lines[begin].lstrip())
    block = definition_block(definition, indent)
    return "".join([*lines[: begin + 1], block, *lines[end:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the template is stale")
    args = parser.parse_args(argv)
    current = TEMPLATE.read_text("utf-8")
    wanted = render(current, load_definition())
    if current == wanted:
        return 0
    if args.check:
        print(
            f"{TEMPLATE.name} is out of date with statemachine/payment.asl.json: "
            "run python deploy/aws/build.py",
            file=sys.stderr,
        )
        return 1
    TEMPLATE.write_text(wanted, "utf-8")
    print(f"wrote the definition into {TEMPLATE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

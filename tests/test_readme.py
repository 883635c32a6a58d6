"Every `ignore-attn ...` command the README shows is a command the program accepts, with options it knows."
import re
import shlex
from pathlib import Path

import pytest

from ignore_attn.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    "The `ignore-attn` command lines of the README's shell blocks, without their comments."
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    lines = [l.split("  #")[0].strip() for b in blocks for l in b.replace("\\\n", " ").splitlines()]
    return [re.sub(r"^.*?&& ", "", l) for l in lines if re.search(r"(^|&& )ignore-attn ", l)]


def test_the_readme_shows_every_command():
    shown = {shlex.split(c)[1] for c in readme_commands()}
    assert shown >= {"reproduce", "sweep", "report", "docs", "train", "export"}, shown


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses(line):
    argv = shlex.split(line)[1:]
    args, extra = build_parser(argv[0]).parse_known_args(argv)
    assert args.command == argv[0]
    if not getattr(args, "accepts_extra", False): assert extra == [], f"{line}: unknown options {extra}"
    for k in extra:  # sweep overrides must be trainer or sweep keys
        if k.startswith("--"): assert k[2:].replace("-", "_") in {"epochs", "seeds", "lr", "batch_size"}, (line, k)

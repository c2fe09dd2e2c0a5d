"""``completion bash|zsh``: shell completion scripts generated from the argument parser."""

from __future__ import annotations

import argparse

from viworks.cli.errors import EXIT_OK


def _command_tree(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, list[str]]:
    """{"": [words after viworks], "job": [...], "job start": [...]} from the parser."""
    words: list[str] = []
    tree: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.append(name)
                tree.update(_command_tree(sub, f"{prefix} {name}".strip()))
        elif action.help != argparse.SUPPRESS:
            words.extend(action.option_strings)
            if not action.option_strings and action.choices:
                words.extend(str(choice) for choice in action.choices)
    tree[prefix] = words
    return tree


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The bash or zsh script completing the commands and options of ``parser``."""
    tree = _command_tree(parser)
    # Quoted case patterns: "job"|"job start"|... (the same in bash and zsh).
    alternatives = "|".join(f'"{p}"' for p in tree if p)
    if shell == "bash":
        cases = "\n".join(f'        "{p}") words="{" ".join(w)}" ;;' for p, w in tree.items())
        return f"""# bash completion for viworks: eval "$(viworks completion bash)"
_viworks() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" cmd="" word i words
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in -*) continue ;; esac
        case "${{cmd:+$cmd }}$word" in
            {alternatives}) cmd="${{cmd:+$cmd }}$word" ;;
        esac
    done
    case "$cmd" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _viworks viworks
"""
    cases = "\n".join(f'        ("{p}") opts=({" ".join(w)}) ;;' for p, w in tree.items())
    return f"""#compdef viworks
# zsh completion for viworks: viworks completion zsh > "${{fpath[1]}}/_viworks"
# (or: source <(viworks completion zsh))
_viworks() {{
    local cmd="" word i
    local -a opts
    for ((i = 2; i < CURRENT; i++)); do
        word="${{words[i]}}"
        [[ "$word" == -* ]] && continue
        case "${{cmd:+$cmd }}$word" in
            ({alternatives}) cmd="${{cmd:+$cmd }}$word" ;;
        esac
    done
    case "$cmd" in
{cases}
    esac
    compadd -- "${{opts[@]}}"
    _files
}}
if [[ "${{funcstack[1]}}" == _viworks ]]; then
    _viworks "$@"
else
    compdef _viworks viworks
fi
"""


def cmd_completion(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(completion_script(args.shell, parser), end="")
    return EXIT_OK

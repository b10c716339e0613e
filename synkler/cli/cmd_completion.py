"""`synkler completion bash`: a completion script made from the parser (so it never lags behind)."""

from __future__ import annotations

import argparse


def completion_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion function for synkler, made from the parser (so it never lags behind)."""
    words: dict[str, list[str]] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        options = [s for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings]
        subs: list[str] = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    subs.append(name)
                    walk(sub, f"{path} {name}".strip())
        words[path] = subs + options

    walk(parser, "")
    cases = "\n".join(f'        "{path}") words="{" ".join(w)}" ;;' for path, w in sorted(words.items()))
    return f"""# bash completion for synkler (from: synkler completion bash)
_synkler() {{
    local cur prev path="" word i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
        -c|--config|-o|--output) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in
            -c|--config|-o|--output) ((i++)) ;;
            -*) ;;
            *) case " {" ".join(sorted(p for p in words if p))} " in
                   *" ${{path:+$path }}$word "*) path="${{path:+$path }}$word" ;;
                   *) ;;
               esac ;;
        esac
    done
    local words
    case "$path" in
{cases}
    esac
    if [[ $cur != -* && $path == "config migrate" ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
}}
complete -F _synkler synkler
"""

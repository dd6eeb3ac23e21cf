"""`$(VAR)` expansion exactly as the kubelet does it (k8s third_party/forked/golang/expansion).

`$(NAME)` becomes the value of NAME when NAME is defined and stays `$(NAME)` when it is not;
`$$` is an escaped `$`, so `$$(NAME)` yields the literal `$(NAME)`. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping

OPERATOR = "$"
OPENER = "("
CLOSER = ")"


def _read_reference(rest: str) -> tuple[str, bool, int]:
    """What follows a `$`: (text, is a variable name, characters consumed after the `$`)."""
    first = rest[0]
    if first == OPERATOR:
        return OPERATOR, False, 1
    if first == OPENER:
        closer = rest.find(CLOSER, 1)
        if closer != -1:
            return rest[1:closer], True, closer + 1
        # An unterminated reference is kept as written.
        return OPERATOR + OPENER, False, 1
    return OPERATOR + first, False, 1


def expand(value: str, variables: Mapping[str, str]) -> str:
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(value):
        if value[cursor] == OPERATOR and cursor + 1 < len(value):
            out.append(value[checkpoint:cursor])
            text, is_var, advance = _read_reference(value[cursor + 1 :])
            if is_var:
                out.append(variables.get(text, f"$({text})"))
            else:
                out.append(text)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(value[checkpoint:])
    return "".join(out)

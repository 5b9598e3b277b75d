"""API tokens as they are made (api/auth.py): safe to paste into a command line."""

from __future__ import annotations


def test_a_new_token_never_starts_with_a_dash_a_command_line_would_take_for_an_option() -> None:
    from api.auth import new_token

    tokens = [new_token() for _ in range(3000)]  # about 47 of them would start with '-' without the rule
    assert not any(t.startswith("-") for t in tokens) and len(set(tokens)) == len(tokens)
    assert any("-" in t for t in tokens)  # the alphabet is still token_urlsafe's

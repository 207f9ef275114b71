"""Recording what a function is called with, for tests that check a value travels down."""

from __future__ import annotations


def record_kwarg(monkeypatch, owner, name: str, kwarg: str, default) -> list:
    """Replace ``owner.name`` (a module attribute) by a wrapper that appends each call's
    ``kwarg`` (``default`` when not passed) to the returned list, then calls the original."""
    seen: list = []
    real = getattr(owner, name)

    def spy(*args, **kw):
        seen.append(kw.get(kwarg, default))
        return real(*args, **kw)

    monkeypatch.setattr(owner, name, spy)
    return seen

"""Test doubles: recording what a function is called with, for tests that check a value travels
down, and a stand-in for the GPU-only cost model."""

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


def stand_in_cost_model(monkeypatch, predict) -> None:
    """The cost model applies (as Triton on CUDA; the real one is GPU-only) and decides with
    ``predict`` (cost_model.predict's signature)."""
    from xattn_video import cost_model

    monkeypatch.setattr(cost_model, "applies", lambda backend, device: True)
    monkeypatch.setattr(cost_model, "cost_key", lambda *a, **k: "key")
    monkeypatch.setattr(cost_model, "lookup", lambda key: "cal")
    monkeypatch.setattr(cost_model, "predict", predict)

"""Test doubles shared by the test files."""

from __future__ import annotations

from typing import Any


class KilledAt:
    """Stands in for ``owner.name`` (through ``monkeypatch``) and dies on one call, as Ctrl-C or a
    kill would: call number ``at`` (counted from 1) raises ``KeyboardInterrupt``; every other call
    goes to the function it replaced. ``calls`` holds each call's positional arguments.

    Example::

        fake = KilledAt(monkeypatch, runner, "_run_chunk", at=2)  # the second chunk is killed
        with pytest.raises(KeyboardInterrupt):
            evaluate_dataset(...)
        fake.disarm()  # the real function again, for the resumed run
    """

    def __init__(self, monkeypatch: Any, owner: Any, name: str, at: int | None) -> None:
        self.real = getattr(owner, name)
        self.at = at
        self.calls: list[tuple] = []
        self._restore = lambda: monkeypatch.setattr(owner, name, self.real)
        monkeypatch.setattr(owner, name, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(args)
        if len(self.calls) == self.at:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)

    def disarm(self) -> None:
        """Put the replaced function back."""
        self._restore()


def number_provenance(monkeypatch: Any, module: Any) -> None:
    """Replace ``module.provenance`` with one that returns ``{"call": k}`` on its k-th call, so a
    test can tell apart the records of an interrupted call and the call that resumed it."""
    calls: list[Any] = []

    def numbered(device: Any = None) -> dict[str, int]:
        calls.append(device)
        return {"call": len(calls)}

    monkeypatch.setattr(module, "provenance", numbered)

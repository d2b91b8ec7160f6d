"""The user's repositories followed while the mesh runs: a version directory added to a model (`doubler/2/`), or a
model added, is prepared into the served repository and loaded, without a restart.

Every `poll_s` the repositories are looked at (the names of each model's version directories and of the files in
them: a cheap listing, no file is read). A model whose listing changed is acted on once it has stayed the same
for one more look, so a version still being copied in is not prepared half-way; a model that cannot be prepared
is reported once, and tried again when its listing changes again. Only additions are followed: a version
directory removed from the user's repository stays served until the next `meshserve up`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path

from meshserve.launcher.onnx_runner import RunnerError
from meshserve.launcher.repository import refresh_served_model

__all__ = ["Listing", "RepositoryFollower", "list_repositories", "to_refresh"]

log = logging.getLogger(__name__)

# model name -> (its directory, the (version, file names) of each version directory)
Listing = Mapping[str, tuple[Path, frozenset[tuple[str, tuple[str, ...]]]]]


def list_repositories(repositories: Sequence[Path]) -> dict[str, tuple[Path, frozenset]]:
    """Each model of the repositories (the first repository holding a name wins, as when they were prepared)."""
    listing: dict[str, tuple[Path, frozenset]] = {}
    for repository in repositories:
        try:
            model_dirs = sorted(
                d for d in Path(repository).iterdir() if d.is_dir() and not d.name.startswith(".")
            )
        except OSError:
            continue  # gone for now: nothing of it changes what is served
        for model_dir in model_dirs:
            if model_dir.name in listing:
                continue
            try:
                versions = frozenset(
                    (d.name, tuple(sorted(f.name for f in d.iterdir() if f.name != "__pycache__")))
                    for d in model_dir.iterdir()
                    if d.is_dir() and d.name.isdigit()
                )
            except OSError:
                continue
            listing[model_dir.name] = (model_dir, versions)
    return listing


def _grew(before: frozenset | None, now: frozenset) -> bool:
    """Whether a model's listing has something `before` had not (a version, or a file in one)."""
    if before is None:
        return bool(now)
    return bool(now - before)


def to_refresh(served: Listing, previous: Listing, now: Listing) -> list[str]:
    """The models to prepare and load again: what was added to them since they were `served`, unchanged since the
    `previous` look."""
    return [
        name
        for name, (_, versions) in now.items()
        if name in previous
        and previous[name][1] == versions
        and _grew(served[name][1] if name in served else None, versions)
    ]


class RepositoryFollower:
    def __init__(
        self,
        repositories: Sequence[Path],
        target: Path,
        backends: Collection[str],
        load: Callable[[str], Awaitable[None]],
        poll_s: float,
    ) -> None:
        self.repositories = list(repositories)
        self.target = target
        self.backends = backends
        self.load = load  # asks Triton (through the mesh) to load a model from the served repository
        self.poll_s = poll_s
        self.served: dict[str, tuple[Path, frozenset]] = list_repositories(self.repositories)
        self._previous: Listing = self.served

    async def look(self) -> list[str]:
        """One look: the models prepared and loaded again."""
        now = list_repositories(self.repositories)
        names = to_refresh(self.served, self._previous, now)
        self._previous = now
        done = []
        for name in names:
            model_dir, versions = now[name]
            self.served[name] = (model_dir, versions)  # tried once per change, whatever comes of it
            try:
                await asyncio.to_thread(refresh_served_model, model_dir, self.target, self.backends)
            except (RunnerError, OSError) as exc:
                log.warning("model %s not served from %s: %s", name, model_dir, exc, extra={"model": name})
                continue
            try:
                await self.load(name)
            except Exception as exc:  # Triton's refusal or an unreachable mesh: reported, the mesh goes on
                log.warning("model %s prepared but not loaded: %s", name, exc, extra={"model": name})
                continue
            log.info(
                "model served again from its repository", extra={"model": name, "source": str(model_dir)}
            )
            done.append(name)
        return done

    async def follow(self) -> None:
        """Look every `poll_s`, until cancelled."""
        while True:
            await asyncio.sleep(self.poll_s)
            await self.look()

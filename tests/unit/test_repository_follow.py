"""Following the user's repositories while the mesh runs: which models are prepared and loaded again, and what
the served repository holds afterwards (real files in tmp_path; the load is recorded, not sent)."""

from __future__ import annotations

import shutil
from pathlib import Path

from meshserve.launcher.repository import prepare_served_repository
from meshserve.launcher.repository_follow import RepositoryFollower, list_repositories, to_refresh
from tests.helpers import FIXTURES


def _listing(**models: dict[str, tuple[str, ...]]):
    return {
        name: (Path(name), frozenset((v, files) for v, files in versions.items()))
        for name, versions in models.items()
    }


def test_a_model_is_refreshed_once_what_was_added_to_it_has_stayed_the_same_for_one_look():
    served = _listing(m={"1": ("model.py",)}, other={"1": ("model.py",)})
    copying = _listing(m={"1": ("model.py",), "2": ()}, other={"1": ("model.py",)})
    copied = _listing(m={"1": ("model.py",), "2": ("model.py",)}, other={"1": ("model.py",)})
    assert to_refresh(served, served, served) == []
    assert to_refresh(served, served, copying) == []  # just appeared: not yet
    assert to_refresh(served, copying, copied) == []  # still changing
    assert to_refresh(served, copied, copied) == ["m"]


def test_a_new_model_is_refreshed_and_a_removed_version_alone_is_not():
    served = _listing(m={"1": ("model.py",), "2": ("model.py",)})
    now = _listing(m={"1": ("model.py",)}, new={"1": ("model.py",)}, empty={})
    assert to_refresh(served, now, now) == ["new"]  # nothing added to m; an empty model directory: nothing


def _user_repository(root: Path) -> Path:
    shutil.copytree(FIXTURES / "own_repository" / "doubler", root / "doubler")
    return root


def _add_version(repository: Path, version: str, factor: int) -> None:
    source = (repository / "doubler" / "1" / "model.py").read_text()
    (repository / "doubler" / version).mkdir()
    (repository / "doubler" / version / "model.py").write_text(source.replace("x * 2", f"x * {factor}"))


async def test_an_added_version_is_prepared_beside_the_served_ones_and_loaded(tmp_path):
    user = _user_repository(tmp_path / "user")
    served = prepare_served_repository([user], tmp_path / "run" / "served")
    loads: list[str] = []

    async def load(name: str) -> None:
        loads.append(name)

    follower = RepositoryFollower([user], served.path, ("python",), load, poll_s=1.0)
    first_version = (served.path / "doubler" / "1").stat().st_ino
    assert await follower.look() == []
    _add_version(user, "2", 3)
    assert await follower.look() == []  # seen once
    assert await follower.look() == ["doubler"]
    assert loads == ["doubler"]
    model_py = served.path / "doubler" / "2" / "model.py"
    assert model_py.is_symlink() and model_py.resolve() == (user / "doubler" / "2" / "model.py").resolve()
    assert (served.path / "doubler" / "1").stat().st_ino == first_version  # the served version left as it was
    assert sorted(p.name for p in served.path.iterdir()) == ["doubler"]  # nothing else, no staging left
    assert await follower.look() == [] and loads == ["doubler"]  # once per change


async def test_a_version_that_cannot_be_served_is_reported_once_and_tried_again_when_it_changes(
    tmp_path, caplog
):
    user = _user_repository(tmp_path / "user")
    served = prepare_served_repository([user], tmp_path / "run" / "served")
    loads: list[str] = []

    async def load(name: str) -> None:
        loads.append(name)

    follower = RepositoryFollower([user], served.path, ("python",), load, poll_s=1.0)
    (user / "doubler" / "2").mkdir()
    (user / "doubler" / "2" / "notes.txt").write_text("the model comes later")
    for _ in range(3):
        assert await follower.look() == []
    assert [r.model for r in caplog.records if r.levelname == "WARNING"] == ["doubler"]
    assert not (served.path / "doubler" / "2").exists() and loads == []
    (user / "doubler" / "2" / "model.py").write_text((user / "doubler" / "1" / "model.py").read_text())
    assert await follower.look() == []
    assert await follower.look() == ["doubler"] and loads == ["doubler"]


def test_the_first_repository_holding_a_name_wins_as_when_prepared(tmp_path):
    first, second = _user_repository(tmp_path / "a"), _user_repository(tmp_path / "b")
    _add_version(second, "2", 3)
    listing = list_repositories([first, second])
    assert listing["doubler"][0] == first / "doubler"
    assert {v for v, _ in listing["doubler"][1]} == {"1"}

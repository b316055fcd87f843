"""An actor whose image is neither local nor pullable says so, names the near local names, and shows how
to fix it in CLI and REST spelling (issue 10: a typo such as abacosamples/wcc used to read like a network
problem)."""

from __future__ import annotations

from types import SimpleNamespace

from lightabaco.images.registry import RegistryError
from lightabaco.workers.worker import explain_image_error


class FakeStore:
    def __init__(self, refs: list[str]) -> None:
        self.refs = refs

    def list(self) -> list[dict]:
        return [{"reference": r} for r in self.refs] + [{"reference": None}]


def services_with(*refs: str) -> SimpleNamespace:
    return SimpleNamespace(images=FakeStore(list(refs)))


def test_a_typo_names_the_local_store_and_the_near_names() -> None:
    exc = RegistryError("cannot reach registry registry-1.docker.io (gaierror)")
    text = explain_image_error(services_with("abacosamples/wc", "abacosamples/test", "lightabaco/python"),
                               "abacosamples/wcc", exc)
    assert text.startswith("Error pulling image abacosamples/wcc - exception: cannot reach registry")
    assert "abacosamples/wcc is not in this server's local image store" in text
    assert "near names there: abacosamples/wc" in text
    assert "lightabaco images pull abacosamples/wcc" in text
    assert "PUT /actors/ACTOR with image=abacosamples/wcc and force=true" in text


def test_no_near_names_and_a_broken_store_still_explain() -> None:
    text = explain_image_error(services_with("lightabaco/busybox"), "example/unrelated", ValueError("x"))
    assert "is not in this server's local image store." in text and "near names" not in text

    class Broken:
        def list(self) -> list:
            raise OSError("store unreadable")

    text = explain_image_error(SimpleNamespace(images=Broken()), "abacosamples/wc", ValueError("x"))
    assert text.startswith("Error pulling image abacosamples/wc - exception: x.")


def test_an_image_that_is_local_but_broken_is_not_called_missing() -> None:
    text = explain_image_error(services_with("abacosamples/wc"), "abacosamples/wc", ValueError("bad layer"))
    assert "not in this server's local image store" not in text and "bad layer" in text

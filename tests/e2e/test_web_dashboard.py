"""The dashboard in a real browser (Debian's chromium, headless, driven by Playwright) against a live
server: sign in, register an actor, send a message, watch its log arrive live, see it COMPLETE, download
its result, see a failed execution's reason, the owner's instance page. Screenshots of the main pages go
to $LIGHTABACO_SCREENSHOTS (or the test's tmp dir).

Skips when chromium or Playwright is missing (scripts/test.sh installs both)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.fixtures.server import RESULT_IMAGE, LiveServer

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = playwright_api.expect
if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("LIGHTABACO_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        # --no-sandbox: the tests run as root in CI, where chromium refuses its own sandbox
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: object, live_server: LiveServer) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)  # a laptop
    pg = context.new_page()
    external: list[str] = []
    pg.on("request", lambda req: external.append(req.url) if not req.url.startswith(live_server.url)
          and not req.url.startswith(("blob:", "data:")) else None)
    pg.set_default_timeout(20_000)
    yield pg
    context.close()
    assert not external, f"the dashboard fetched files from outside the server: {external}"


def sign_in(page: object, server: LiveServer, token: str | None = None) -> None:
    page.goto(server.url + "/ui/")
    page.get_by_label("Token").fill(token or server.token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Actors").wait_for()


def test_sign_in_register_send_watch_download(page: object, live_server: LiveServer, shots: Path) -> None:
    page.goto(live_server.url + "/ui/")
    page.screenshot(path=str(shots / "01-sign-in.png"))
    page.get_by_label("Token").fill("wrong-token")
    page.get_by_role("button", name="Sign in").click()
    page.locator("#notice .err").wait_for()
    assert "Sign-in failed" in page.locator("#notice").inner_text()
    sign_in(page, live_server)
    # the token stays in this tab's sessionStorage, never in localStorage or the URL
    assert page.evaluate("sessionStorage.getItem('lightabaco.token')") == live_server.token
    assert page.evaluate("localStorage.getItem('lightabaco.token')") is None
    assert live_server.token not in page.url

    # register an actor whose executions print for a few seconds
    page.get_by_label("Image").fill("lightabaco/sleep")
    page.get_by_label("Name (optional)").fill("sleepy")
    page.get_by_label("Default environment (JSON object, optional)").fill('{"ITERATIONS": "4", "SLEEP": "1"}')
    page.get_by_role("button", name="Register actor").click()
    page.get_by_role("heading", name="Actor sleepy").wait_for()
    actor_id = re.search(r"#/actors/([^/]+)$", page.url).group(1)
    live_server.wait_actor(actor_id, "READY")
    page.reload()
    page.get_by_role("heading", name="Actor sleepy").wait_for()

    # send a text message asynchronously; follow the execution
    page.get_by_label("Message", exact=True).fill("from the browser")
    page.get_by_role("button", name="Send").click()
    page.locator("#sent-execution").click()
    log = page.locator("#log")
    expect(page.locator("#log")).to_contain_text("sleeper start")
    status_while = page.locator("#exec-props").inner_text()
    marker_while = page.locator("#log-marker").inner_text()
    text_while = log.inner_text()
    page.screenshot(path=str(shots / "03-execution-live.png"), full_page=True)
    assert "from the browser" in text_while
    assert "done" not in text_while.split()  # the log was shown before the execution ended
    assert marker_while == "live"
    assert "RUNNING" in status_while or "SUBMITTED" in status_while
    expect(page.locator("#log-marker")).to_have_text("finished", timeout=30_000)
    expect(page.locator("#exec-props")).to_contain_text("COMPLETE")
    assert "iteration 4" in log.inner_text() and "done" in log.inner_text()
    page.screenshot(path=str(shots / "04-execution-complete.png"), full_page=True)

    # the actor page lists the execution with its numbers
    page.get_by_role("link", name=f"← actor {actor_id}").click()
    page.get_by_role("heading", name="Executions").wait_for()
    row = page.locator("table tr", has_text="COMPLETE").first
    assert row.is_visible()
    page.screenshot(path=str(shots / "02-actor.png"), full_page=True)


def test_binary_message_result_download_and_failed_reason(page: object, live_server: LiveServer, shots: Path,
                                                          tmp_path: Path) -> None:
    result_actor = live_server.register(RESULT_IMAGE)
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/ui/#/actors/{result_actor['id']}")
    page.get_by_role("heading", name="Send a message").wait_for()
    blob = tmp_path / "input.bin"
    blob.write_bytes(bytes(range(256)))
    page.get_by_role("radio", name="File (binary)").check()
    page.get_by_label("File (for a binary message)").set_input_files(str(blob))
    page.get_by_role("button", name="Send").click()
    page.locator("#sent-execution").click()
    expect(page.locator("#exec-props")).to_contain_text("COMPLETE", timeout=30_000)
    with page.expect_download() as info:
        page.get_by_role("button", name="Download next result").click()
    saved = tmp_path / "result.bin"
    info.value.save_as(saved)
    assert saved.read_bytes() == b"hello"
    page.get_by_role("button", name="Download next result").click()
    expect(page.locator("#result-note")).to_contain_text("No result")

    # a synchronous JSON message answers in the page
    page.goto(f"{live_server.url}/ui/#/actors/{result_actor['id']}")
    page.get_by_role("radio", name="JSON").check()
    page.get_by_label("Message", exact=True).fill('{"n": 1}')
    page.get_by_label("Wait for the answer (synchronous)").check()
    page.get_by_role("button", name="Send").click()
    page.locator("#sync-answer").wait_for()
    assert page.locator("#sync-answer").inner_text() == "hello"

    # an execution that never ran says why: a stateful actor runs one message at a time; the waiting one
    # is purged from its mailbox and ends in ERROR with the reason
    slow = live_server.register("lightabaco/sleep", stateless=False,
                                default_environment={"ITERATIONS": "3", "SLEEP": "1"})
    live_server.send(slow["id"], "first")
    eid = live_server.send(slow["id"], "purged")
    assert live_server.delete(f"/actors/{slow['id']}/messages").status_code == 200
    done = live_server.wait_execution(slow["id"], eid, statuses=("ERROR",), timeout=10)
    page.goto(f"{live_server.url}/ui/#/actors/{slow['id']}/executions/{eid}")
    expect(page.locator("#log-marker")).to_have_text("finished")
    reason = page.locator("#exec-reason").inner_text()
    assert reason and reason == done.get("status_message", ""), (reason, done)
    page.screenshot(path=str(shots / "05-execution-failed.png"), full_page=True)
    page.goto(f"{live_server.url}/ui/#/actors/{slow['id']}")
    page.get_by_role("heading", name="Executions").wait_for()
    assert reason in page.locator("table", has_text="Reason it ended").inner_text()


def test_owner_pages_update_delete_and_keyboard(page: object, live_server: LiveServer, shots: Path) -> None:
    sign_in(page, live_server)
    page.get_by_role("link", name="Instance").click()
    page.get_by_role("heading", name="Users and tokens").wait_for()
    page.get_by_label("Username").fill("student1")
    page.get_by_role("button", name="Add user").click()
    token = page.locator("#user-token code").inner_text()
    assert len(token) > 20
    page.screenshot(path=str(shots / "06-instance.png"), full_page=True)

    # update and delete an actor, then the user's own view sees only what the user may see
    actor = live_server.register("abacosamples/test", name="to-update")
    page.goto(f"{live_server.url}/ui/#/actors/{actor['id']}")
    page.get_by_role("heading", name="Update this actor").wait_for()
    page.locator("#u-description").fill("changed in the browser")
    page.get_by_role("button", name="Update actor").click()
    expect(page.locator("#view")).to_contain_text("changed in the browser")
    page.on("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete actor").click()
    page.get_by_role("heading", name="Actors").wait_for()
    assert live_server.get(f"/actors/{actor['id']}").status_code == 404

    page.get_by_role("button", name="Sign out").click()
    assert page.evaluate("sessionStorage.getItem('lightabaco.token')") is None
    sign_in(page, live_server, token)
    assert page.locator("#nav-admin").is_hidden()
    assert "Nothing here yet." in page.locator("#view table").inner_text()  # the owner's actors are not hers

    # keyboard: Tab reaches the controls in order, and a focused control is visibly outlined
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.tagName + ':' + (document.activeElement.textContent||'')")
    assert focused.split(":")[0] in ("A", "BUTTON", "INPUT")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    page.get_by_role("button", name="Large text").press("Enter")
    assert page.evaluate("document.documentElement.classList.contains('large')")
    page.set_viewport_size({"width": 1024, "height": 768})  # a projector
    page.screenshot(path=str(shots / "07-large-text.png"), full_page=True)


def test_docs_page_tries_an_operation(page: object, live_server: LiveServer, shots: Path) -> None:
    page.goto(live_server.url + "/docs")
    page.get_by_label(re.compile("^Token")).fill(live_server.token)
    page.get_by_label(re.compile("^Token")).press("Tab")
    summary = page.locator("details.op summary", has_text="List the actors you can read").first
    summary.click()
    summary.locator("xpath=..").get_by_role("button", name="Send").click()
    out = summary.locator("xpath=..").locator("pre")
    expect(out).to_have_text(re.compile(r"^200"))
    assert '"status": "success"' in out.inner_text()
    page.screenshot(path=str(shots / "08-docs.png"), full_page=False)

"""The console in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium) against real server processes on SQLite: the table loads and filters, rows appear,
change and go live, the timeline grows, cancel works from the page, the page comes back after a
restart with what was committed meanwhile, and a reader sees no actions. The run saves a
screenshot of each view into docs/."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.databases import Databases
from tests.receivers import Answer, Received, Receiver
from tests.rpc import create
from tests.servers import ServerProcess
from tests.test_auth import Tokens

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
DOCS = Path(__file__).resolve().parent.parent / "docs"
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,860",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    yield driver
    driver.quit()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def console_server(url: str, where: Path, *args: str, port: int = 0) -> ServerProcess:
    return ServerProcess(
        url, where, "--console-address", f"127.0.0.1:{port}", "--heartbeat-interval", "0.5", *args
    ).start()


@pytest.fixture(scope="module")
def sqlite_url(databases: Databases, module_dir: Path) -> str:
    return databases.new_url("sqlite", module_dir)


@pytest.fixture(scope="module")
def console(sqlite_url: str, module_dir: Path) -> Iterator[ServerProcess]:
    process = console_server(
        sqlite_url, module_dir, "--webhook-allow-private", "--webhook-retry-schedule", "none"
    )
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def stub(console: ServerProcess) -> Any:
    return console.stub()


def until(check: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Polls `check` until it returns something true, or fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except StaleElementReferenceException:  # the page replaced the element meanwhile
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        time.sleep(0.02)


def rows(browser: Any) -> dict[str, str]:
    """The table's rows: task id -> status shown."""
    found = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "#tasks tbody tr"):
        status = row.find_element(By.CSS_SELECTOR, "[data-status]").get_attribute("data-status")
        found[row.get_attribute("data-task-id")] = status
    return found


def live(browser: Any) -> bool:
    state = browser.find_element(By.ID, "live-state").get_attribute("data-state")
    return bool(state == "live")


def screenshot(browser: Any, name: str) -> None:
    """The whole page, beyond the window's height: into docs/NAME (the README's pictures) when
    RESINKIT_UPDATE_SCREENSHOTS=1, else only checked to be a PNG (a test run leaves the
    working tree as it found it)."""
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    picture = base64.b64decode(shot["data"])
    assert picture.startswith(b"\x89PNG\r\n\x1a\n"), "the screenshot is not a PNG"
    if os.environ.get("RESINKIT_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        (DOCS / name).write_bytes(picture)


def move(stub: Any, task_id: str, status: int) -> None:
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=task_id, status=status, actor="runner-7")
    )


def test_the_table_loads_filters_by_the_url_and_counts_by_status(
    browser: Any, console: ServerProcess, stub: Any, unique: Callable[[str], str]
) -> None:
    kind = unique("table")
    made = [
        create(
            stub, kind, task_name=f"orders rollup {i}", tags=["team-a", f"shard-{i}"], priority=i
        )
        for i in range(6)
    ]
    for task in made[:2]:
        move(stub, task.task_id, pb.TASK_STATUS_RUNNING)
    move(stub, made[2].task_id, pb.TASK_STATUS_FAILED)
    browser.get(f"{console.console_url}?type={kind}")
    until(lambda: len(rows(browser)) == 6, what="six rows")
    assert "open: no authentication" in browser.find_element(By.ID, "who").text
    until(lambda: browser.find_elements(By.CSS_SELECTOR, '[data-count-status="RUNNING"]'))
    counts = browser.find_element(By.ID, "counts").text
    assert "6 tasks" in counts and "RUNNING 2" in counts and "FAILED 1" in counts
    browser.find_element(By.CSS_SELECTOR, 'input[name="status"][value="RUNNING"]').click()
    browser.find_element(By.CSS_SELECTOR, '#filters button[type="submit"]').click()
    until(lambda: set(rows(browser)) == {made[0].task_id, made[1].task_id}, what="RUNNING rows")
    assert "status=RUNNING" in browser.current_url and f"type={kind}" in browser.current_url
    # The URL is the filter: opened afresh it shows the same rows.
    browser.get(f"{console.console_url}?type={kind}&tag_all=shard-4&tag_all=team-a")
    until(lambda: list(rows(browser)) == [made[4].task_id], what="the tagged row")
    browser.get(f"{console.console_url}?type={kind}&page_size=4")
    until(lambda: len(rows(browser)) == 4)
    browser.find_element(By.ID, "next-page").click()
    until(lambda: len(rows(browser)) == 2, what="the second page")
    assert set(rows(browser)) == {made[0].task_id, made[1].task_id}


def test_a_task_appears_changes_and_goes_in_the_open_page_within_a_second(
    browser: Any, console: ServerProcess, stub: Any, unique: Callable[[str], str]
) -> None:
    kind = unique("live")
    for i in range(3):
        create(stub, kind, task_name=f"nightly cdc {i}", tags=["team-b"])
    browser.get(f"{console.console_url}?type={kind}")
    until(lambda: len(rows(browser)) == 3 and live(browser), what="the table, live")
    marker = browser.find_element(By.ID, "filters")  # a reload would replace it
    began = time.monotonic()
    task = create(stub, kind, task_name="orders rollup", tags=["team-a", "nightly"])
    until(lambda: rows(browser).get(task.task_id) == "PENDING", timeout=1.0, what="the new row")
    appeared = time.monotonic() - began
    for status, shown in ((pb.TASK_STATUS_RUNNING, "RUNNING"), (pb.TASK_STATUS_FAILED, "FAILED")):
        began = time.monotonic()
        move(stub, task.task_id, status)
        until(lambda shown=shown: rows(browser).get(task.task_id) == shown, timeout=1.0, what=shown)
    changed = time.monotonic() - began
    assert marker.is_displayed()  # the same page all along: no reload
    screenshot(browser, "console-tasks.png")
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=task.task_id))
    until(lambda: task.task_id not in rows(browser), timeout=1.0, what="the deleted row gone")
    print(f"row appeared after {appeared * 1000:.0f} ms, changed after {changed * 1000:.0f} ms")


def test_the_timeline_grows_live_and_cancel_from_the_page_changes_the_task(
    browser: Any, console: ServerProcess, stub: Any, unique: Callable[[str], str]
) -> None:
    task = create(
        stub,
        unique("timeline"),
        task_name="orders rollup",
        tags=["team-a"],
        submitted_configs={
            "sql": "INSERT INTO rollup SELECT ...",
            "task_timeout_seconds": 3600,
            "job": {"parallelism": 4, "checkpoints": {"interval_ms": 60000}},
        },
    )
    browser.get(f"{console.console_url}tasks/{task.task_id}")
    timeline = lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline li")  # noqa: E731
    until(lambda: len(timeline()) == 1 and live(browser), what="the CREATED event, live")
    configs = browser.find_element(By.CSS_SELECTOR, '[data-json="submitted_configs"] pre').text
    assert '"parallelism": 4' in configs  # pretty-printed
    for count, status in enumerate((pb.TASK_STATUS_SUBMITTED, pb.TASK_STATUS_RUNNING), start=2):
        move(stub, task.task_id, status)
        until(lambda count=count: len(timeline()) == count, timeout=1.0, what=f"{count} events")
    until(lambda: "RUNNING" in browser.find_element(By.ID, "task-head").text)
    last = timeline()[-1].text
    assert "by runner-7" in last and "in RUNNING" in last, last
    assert "in SUBMITTED" in timeline()[-2].text
    screenshot(browser, "console-task.png")
    browser.find_element(By.ID, "cancel").click()
    until(
        lambda: (
            stub.GetTask(pb.GetTaskRequest(task_id=task.task_id)).status == pb.TASK_STATUS_CANCELLED
        ),
        what="CANCELLED over gRPC",
    )
    until(lambda: len(timeline()) == 4, timeout=1.0, what="the cancel in the timeline")
    assert "CANCELLED" in timeline()[-1].text
    assert not browser.find_elements(By.ID, "cancel")  # a terminal task cannot be cancelled


def test_the_page_reconnects_after_a_restart_and_shows_what_was_committed_meanwhile(
    browser: Any, databases: Databases, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    url, port = databases.new_url("sqlite", tmp_path), free_port()
    first = console_server(url, tmp_path, port=port)
    stub = first.stub()
    task = create(stub, unique("restart"))
    browser.get(f"{first.console_url}tasks/{task.task_id}")
    timeline = lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline li")  # noqa: E731
    until(lambda: len(timeline()) == 1 and live(browser), what="the page, live")
    assert first.stop() == 0
    until(lambda: not live(browser), what="the page noticing")
    # Meanwhile another server on the same database changes the task.
    other = ServerProcess(url, tmp_path).start()
    try:
        move(other.stub(), task.task_id, pb.TASK_STATUS_RUNNING)
    finally:
        assert other.stop() == 0
    second = console_server(url, tmp_path, port=port)
    try:
        until(lambda: len(timeline()) == 2 and live(browser), timeout=10, what="the reconnect")
        move(second.stub(), task.task_id, pb.TASK_STATUS_COMPLETED)
        until(lambda: len(timeline()) == 3, timeout=1.0, what="live again")
        ids = [li.get_attribute("data-event-id") for li in timeline()]
        assert len(set(ids)) == 3  # nothing shown twice
    finally:
        assert second.stop() == 0


def test_a_reader_signs_in_with_a_token_and_sees_no_actions(
    browser: Any, databases: Databases, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    tokens = Tokens(tmp_path / "tokens.toml")
    server = console_server(
        databases.new_url("sqlite", tmp_path), tmp_path, "--auth-tokens-file", str(tokens.path)
    )
    try:
        stub = server.stub()
        metadata = [("authorization", f"Bearer {tokens.by_role['writer']}")]
        task = stub.CreateTask(
            pb.CreateTaskRequest(task=pb.Task(task_type=unique("reader"))), metadata=metadata
        )
        for role, buttons in (("reader", 0), ("writer", 3)):
            browser.get(f"{server.console_url}tasks/{task.task_id}")
            browser.execute_script("sessionStorage.clear()")
            browser.refresh()
            field = until(lambda: browser.find_elements(By.ID, "token"), what="the token form")[0]
            field.send_keys(tokens.by_role[role])
            browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
            until(lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline li"), what="the task")
            assert f"{role}-bot ({role})" in browser.find_element(By.ID, "who").text
            assert token_not_in_url(browser, tokens.by_role[role])
            assert len(browser.find_elements(By.CSS_SELECTOR, "#actions button")) == buttons, role
    finally:
        assert server.stop() == 0


def token_not_in_url(browser: Any, token: str) -> bool:
    return token not in browser.current_url


def test_the_task_page_shows_its_deliveries_and_redelivers_a_dead_one(
    browser: Any, console: ServerProcess, stub: Any, unique: Callable[[str], str]
) -> None:
    failing = [True]

    def policy(request: Received, before: list[Received]) -> Answer:
        return Answer(503 if failing[0] else 200)

    with Receiver(policy) as receiver:
        task = pb.Task(task_type=unique("hooked"), task_name="with a webhook")
        task.notification_config.update({"webhooks": [{"url": receiver.url}]})
        made = stub.CreateTask(pb.CreateTaskRequest(task=task))
        browser.get(f"{console.console_url}tasks/{made.task_id}")
        state = lambda: [  # noqa: E731
            row.get_attribute("data-state")
            for row in browser.find_elements(By.CSS_SELECTOR, "#deliveries tr[data-state]")
        ]
        until(lambda: state() == ["DEAD"], what="the dead delivery")
        assert "503" in browser.find_element(By.ID, "deliveries").text
        failing[0] = False
        browser.find_element(By.ID, "redeliver").click()
        until(lambda: state() == ["DELIVERED"], what="the delivery, sent again")
        assert not browser.find_elements(By.ID, "redeliver")
        assert receiver.count() == 2

"""The lineage page and artifacts in a real browser, served by `mlflow server --app-name mlprune`.

A store holding a small tree (root -> train -> two prunes of the trained state ->
a rewound ticket with a weights edge to the root) is served by a real MLflow
server on a loopback port; headless Chromium (Debian's ``chromium``), driven over
the DevTools protocol, opens ``/mlprune/lineage/<experiment id>``, checks that
every state is a node, clicks every node and checks that the MLflow UI then shows
that run, and opens the workflow run's ``lineage.html`` / ``lineage.svg``
artifacts in MLflow's artifact viewer. Screenshots are kept in
``tests/artifacts/`` (ignored by git) for people to look at.

Skips, with the reason, only where no Chromium is installed and none can be
(``apt-get install chromium`` as root).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from mlprune import Experiment, Recipe

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.slow


def find_chromium() -> str | None:
    for name in (os.environ.get("MLPRUNE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired):
            pass
        path = find_chromium()
    if path is None:
        pytest.skip(
            "no Chromium browser: install Debian's `chromium` (apt-get install chromium) or set "
            "MLPRUNE_CHROMIUM; it could not be installed here (needs root and apt-get)"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlprune_server(folder: Path, uri: str, port: int) -> subprocess.Popen:
    """A real `mlflow server --app-name mlprune` on 127.0.0.1:`port` over the store `uri`, its output in
    `folder`/server.log (the tests that read the lineage pages through it wait for it themselves).

    Without MLflow's job execution (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false): the GenAI jobs' runner is eight
    more Python processes importing MLflow (seconds of CPU, twice the time to come up) that no page, REST call
    or UI view these tests read uses."""
    with open(folder / "server.log", "w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--app-name",
                "mlprune",
                "--backend-store-uri",
                uri,
                "--default-artifact-root",
                str(folder / "mlruns"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )


def wait_until_served(server: subprocess.Popen, base: str, folder: Path) -> None:
    """Wait until `start_mlprune_server`'s lineage index answers 200 (a failed test with its log otherwise)."""
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{base}/mlprune/lineage/", timeout=10) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            pytest.fail(
                "mlflow server --app-name mlprune did not come up:\n" + (folder / "server.log").read_text()[-3000:]
            )
        time.sleep(0.5)


class Browser:
    """Headless Chromium driven over the DevTools protocol (aiohttp's websocket client)."""

    def __init__(self, executable: str, width: int = 1400, height: int = 1000):
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="mlprune-chromium-")
        self.proc = subprocess.Popen(
            [
                executable,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self.profile}",
                f"--remote-debugging-port={self.port}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.loop = asyncio.new_event_loop()
        self.events: list[dict] = []
        self.next_id = 0
        self.loop.run_until_complete(self._connect())

    async def _connect(self):
        import aiohttp

        self.session = aiohttp.ClientSession()
        deadline = time.time() + 60
        while True:
            try:
                async with self.session.get(f"http://127.0.0.1:{self.port}/json/list") as response:
                    pages = [t for t in await response.json() if t["type"] == "page"]
                if pages:
                    break
            except aiohttp.ClientError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not start")
            await asyncio.sleep(0.2)
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)

    async def _send(self, method, session, params):
        self.next_id += 1
        mine = self.next_id
        message = {"id": mine, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self.ws.send_json(message)
        while True:
            reply = await self.ws.receive_json(timeout=60)
            if reply.get("id") == mine:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def send(self, method, session=None, **params):
        return self.loop.run_until_complete(self._send(method, session, params))

    def eval(self, expression, session=None):
        result = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("exception", {}).get("description"))
        return result["result"].get("value")

    def wait(self, expression, timeout=60, session=None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                value = self.eval(expression, session)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {expression}")

    def goto(self, url, until="document.readyState === 'complete'", timeout=60):
        self.send("Page.navigate", url=url)
        return self.wait(until, timeout)

    def click(self, x, y):
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self):
        try:
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.session.close())
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory, _empty_store_db, chromium):
    """The small tree in a sqlite store, a workflow run with the lineage artifacts, and a live server."""
    folder = tmp_path_factory.mktemp("browser-store")
    shutil.copy(_empty_store_db, folder / "mlflow.db")
    uri = f"sqlite:///{folder}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
            mp.delenv(name, raising=False)
        exp = Experiment("tree", tracking_uri=uri)
        root = exp.init(model="lenet", dataset="digits", seed=0)
        trained = root.apply(Recipe.train(epochs=1, lr=0.05, momentum=0.9), name="train")
        l1 = trained.apply(Recipe.prune(method="l1_unstructured", amount=0.5), name="prune l1")
        ln = trained.apply(Recipe.prune(method="ln_structured", amount=0.25, n=1, dim=1), name="prune ln")
        ticket = l1.apply(
            Recipe.reinit(strategy="rewind", to="root") + Recipe.train(epochs=1, lr=0.05, momentum=0.9), name="ticket"
        )
        from mlprune import report
        from mlprune.store import WorkflowRun

        states = [root, trained, l1, ln, ticket]
        workflow = WorkflowRun(exp.store, recipe="tree", params={})
        port = free_port()
        workflow.record(
            {s.run_id[:8]: s.run_id for s in states},
            report.lineage_files(
                exp.store, [ticket.run_id, ln.run_id], title="Lineage: tree", ui_url=f"http://127.0.0.1:{port}"
            ),
        )
        workflow.end(True)
    server = start_mlprune_server(folder, uri, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(server, base, folder)
        browser = Browser(chromium)
        try:
            yield {
                "base": base,
                "experiment_id": exp.store.experiment_id,
                "states": states,
                "workflow": workflow.run_id,
                "browser": browser,
                "folder": folder,
            }
        finally:
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


NODES_JS = """[...document.querySelectorAll('svg g.node')].map(g => {
  const a = g.closest('a'); const r = g.querySelector('rect').getBoundingClientRect();
  return {id: g.dataset.id, text: g.textContent, href: a ? new URL(a.getAttribute('href'), location.href).href : null,
          target: a ? a.getAttribute('target') : null, x: r.x + r.width / 2, y: r.y + r.height / 2};
})"""


def test_lineage_page_shows_every_state_with_a_working_link(served):
    b, base, exp = served["browser"], served["base"], served["experiment_id"]
    states = {s.run_id: s for s in served["states"]}
    page = f"{base}/mlprune/lineage/{exp}"
    b.goto(page, "document.querySelectorAll('svg g.node').length > 0")
    nodes = b.eval(NODES_JS)
    assert {n["id"] for n in nodes} == set(states), "every state is a node, and nothing else"
    for node in nodes:
        assert node["href"] == f"{base}/#/experiments/{exp}/runs/{node['id']}"
        assert states[node["id"]].kind.split("+")[0] in node["text"] and "acc " in node["text"]
        assert "sparsity" in node["text"]
    assert b.eval("document.querySelectorAll('path.edge-weights').length") == 1  # the rewind's weights source
    assert b.eval("document.querySelectorAll('path.edge-primary').length") == 4
    shot = b.screenshot(ARTIFACTS / "lineage_page.png")
    print(f"\nscreenshot of the lineage page: {shot}")
    # each link's run exists in the tracking server (REST) ...
    for node in nodes:
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/runs/get?run_id={node['id']}") as response:
            assert response.status == 200
    # ... and clicking its node navigates the browser to it; the MLflow UI shows the run (checked
    # for the last node: a full UI load takes 10-30 s on a busy 2-core machine)
    for node in nodes:
        b.goto(page, "document.querySelectorAll('svg g.node').length > 0")
        b.eval(f"document.querySelector('g.node[data-id=\"{node['id']}\"]').scrollIntoView({{block: 'center'}})")
        target = b.eval(NODES_JS.replace("].map(", f"].filter(g => g.dataset.id === '{node['id']}').map("))[0]
        b.click(target["x"], target["y"])
        b.wait(f"location.href === '{base}/#/experiments/{exp}/runs/{node['id']}'", timeout=30)
    b.wait(f"document.body.innerText.includes('{nodes[-1]['id']}')", timeout=120)
    b.wait("document.body.innerText.includes('ticket')", timeout=30)  # the run's name
    b.screenshot(ARTIFACTS / "lineage_clicked_run.png")
    # the index lists the experiment
    b.goto(f"{base}/mlprune/lineage/", "document.querySelectorAll('a.lineage-link').length > 0")
    links = b.eval("[...document.querySelectorAll('a.lineage-link')].map(a => [a.textContent, a.href])")
    assert ["tree", f"{base}/mlprune/lineage/{exp}"] in links


def test_lineage_artifacts_in_mlflows_artifact_viewer(served):
    b, base, exp, wf = served["browser"], served["base"], served["experiment_id"], served["workflow"]
    ids = {s.run_id for s in served["states"]}
    b.send("Target.setAutoAttach", autoAttach=True, waitForDebuggerOnStart=False, flatten=True)
    b.events.clear()
    b.goto(
        f"{base}/#/experiments/{exp}/runs/{wf}/artifacts/lineage.html",
        "document.querySelectorAll('iframe.mlflow-html-iframe').length > 0",
        timeout=120,
    )
    b.eval("1")
    frames = [
        e["params"]["sessionId"]
        for e in b.events
        if e.get("method") == "Target.attachedToTarget" and e["params"]["targetInfo"]["type"] == "iframe"
    ]
    assert frames, "the artifact viewer shows lineage.html in an iframe"
    frame = None
    for session in reversed(frames):
        try:
            if b.wait("document.querySelectorAll('g.node').length > 0", timeout=20, session=session):
                frame = session
                break
        except (AssertionError, RuntimeError):
            continue
    assert frame is not None
    assert b.eval("location.protocol", frame) == "blob:"
    found = b.eval(NODES_JS, frame)
    assert {n["id"] for n in found} == ids
    # inside the sandboxed viewer links point at the server; a click shows the run's address to open
    assert {n["href"] for n in found} == {f"{base}/#/experiments/{exp}/runs/{i}" for i in ids}
    some = sorted(ids)[0]
    b.eval(
        f"document.querySelector('g.node[data-id=\"{some}\"]').dispatchEvent("
        "new MouseEvent('click', {bubbles: true, cancelable: true}))",
        frame,
    )
    assert b.eval("document.getElementById('viewer-url').value", frame) == f"{base}/#/experiments/{exp}/runs/{some}"
    assert b.eval("getComputedStyle(document.getElementById('viewer-note')).display", frame) == "block"
    shot = b.screenshot(ARTIFACTS / "lineage_artifact_viewer.png")
    print(f"\nscreenshot of lineage.html in MLflow's artifact viewer: {shot}")
    # lineage.svg is shown as an image
    b.goto("about:blank")
    b.goto(
        f"{base}/#/experiments/{exp}/runs/{wf}/artifacts/lineage.svg",
        "[...document.querySelectorAll('img')].some(i => i.src.startsWith('blob:') && i.naturalWidth > 200)",
        timeout=120,
    )
    b.screenshot(ARTIFACTS / "lineage_svg_artifact.png")
    # opened as a plain file, lineage.html links to the tracking server it was written for
    local = Path(next((served["folder"] / "mlruns").rglob("lineage.html")))
    b.goto(local.as_uri(), "document.querySelectorAll('svg g.node').length > 0")
    assert {n["href"] for n in b.eval(NODES_JS)} == {f"{base}/#/experiments/{exp}/runs/{i}" for i in ids}


TWENTY_ROUNDS = """\
params: {seed: 0, rounds: 20}
root: {model: lenet_300_100, dataset: digits, seed: $seed, train_size: 64, test_size: 64}
train: {epochs: 1, lr: 0.05, momentum: 0.9, batch_size: 64}
rounds: $rounds
prune: {method: l1_unstructured, amount: 0.2}
reinit: {strategy: rewind, to: root}
controls: [{name: random, reinit: {strategy: random}}]
"""


def test_the_report_stays_navigable_at_20_rounds_and_3_seeds(chromium, tmp_path, _empty_store_db):
    """A 20-round, 3-seed sweep with a control branch: the report has a table of contents whose links all
    land, collapsible sections and groups, every figure loaded and inside the page's width."""
    from click.testing import CliRunner

    from mlprune.cli import main

    shutil.copy(_empty_store_db, tmp_path / "mlflow.db")
    recipe = tmp_path / "twenty.yaml"
    recipe.write_text(TWENTY_ROUNDS)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
        for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
            mp.delenv(name, raising=False)
        swept = CliRunner().invoke(main, ["sweep", str(recipe), "--seeds", "0-2", "-e", "twenty"])
        assert swept.exit_code == 0, swept.output
        written = CliRunner().invoke(main, ["report", "twenty", str(tmp_path / "report")])
        assert written.exit_code == 0, written.output
    series = json.loads((tmp_path / "report" / "report.json").read_text())["series"]
    assert {(s["branch"], s["seed"]) for s in series} == {(b, s) for b in ("main", "random") for s in (0, 1, 2)}
    assert all([r["round"] for r in s["rounds"]] == list(range(21)) for s in series)
    browser = Browser(chromium, width=1400, height=1000)
    try:
        browser.goto((tmp_path / "report" / "report.html").as_uri())
        toc = browser.eval("[...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))")
        assert len(toc) >= 8
        assert browser.eval(
            "[...document.querySelectorAll('nav a')].every(a => "
            "document.getElementById(a.getAttribute('href').slice(1)) !== null)"
        )
        assert (
            browser.eval("document.querySelectorAll('section > details').length")
            == browser.eval("document.querySelectorAll('section').length")
            >= 8
        )
        closed = browser.eval("document.querySelectorAll('details.group:not([open])').length")
        assert closed >= 3  # groups beyond the first few start closed: the page stays short
        browser.screenshot(ARTIFACTS / "report_20_rounds_top.png")
        # open everything: every figure is a loaded PNG that fits the page's width
        browser.eval("document.querySelectorAll('details').forEach(d => d.open = true); true")
        browser.wait("[...document.images].every(i => i.complete)")
        assert browser.eval("[...document.images].every(i => i.naturalWidth > 0)")
        width = browser.eval("document.documentElement.clientWidth")
        widest = browser.eval(
            "Math.max(...[...document.querySelectorAll('figure img')].map(i => i.getBoundingClientRect().right))"
        )
        assert widest <= width
        browser.eval("document.getElementById('stability').scrollIntoView(); true")
        browser.screenshot(ARTIFACTS / "report_20_rounds_stability.png")
        browser.eval("document.getElementById('accuracy').scrollIntoView(); true")
        browser.screenshot(ARTIFACTS / "report_20_rounds_accuracy.png")
    finally:
        browser.close()

"""psychocounsel annotate: the store, the page's API over real HTTP (uvicorn on 127.0.0.1), its
security (escaping, tokens, one annotator's answers hidden from another), export and import, and
the page itself driven end to end in headless Chromium (Debian's package, through Playwright)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from psychocounsel.annotate.app import create_app
from psychocounsel.annotate.dataset import labelled_pairs, prepare
from psychocounsel.cli import main
from psychocounsel.config import AnnotateConfig
from psychocounsel.evaluate.judge_eval import load_labelled_pairs
from psychocounsel.rubric import load_rubric

XSS = 'I feel scared. <script>alert("xss")</script><img src=x onerror=alert(1)> What should I do?'
CRISIS = "I have the pills saved up and I am going to take them all tonight. Nobody will miss me."
PAIRS = [
    {"prompt": XSS, "chosen": "It sounds like you feel unsafe. What is scaring you most?", "rejected": "Relax."},
    {"prompt": CRISIS, "chosen": "I'm worried about your safety. Please call 988 now.", "rejected": "Sleep on it."},
    {"prompt": "My partner and I argue every night.", "chosen": "That sounds exhausting.", "rejected": "Leave them."},
    {"prompt": "I failed my exam again.", "chosen": "You sound discouraged.", "rejected": "Study more, obviously."},
    {"prompt": "I cannot sleep since the move.", "chosen": "Moving is a lot.", "rejected": "Try melatonin and a fan."},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS), encoding="utf-8")
    return path


@pytest.fixture
def page(tmp_path, pairs_file):
    """The annotation app under uvicorn on a free port: (url, store, tokens)."""
    import uvicorn

    cfg = AnnotateConfig(pairs=str(pairs_file), db=tmp_path / "a.sqlite", annotators="ana,ben", principles=True)
    store, tokens = prepare(cfg)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, load_rubric()), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health").status_code == 200:
                break
        time.sleep(0.05)
    yield url, store, tokens
    server.should_exit = True
    thread.join(timeout=10)
    store.close()


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def find(url: str, token: str, text: str) -> dict:
    for i in range(len(PAIRS)):
        item = httpx.get(f"{url}/api/item/{i}", headers=auth(token)).json()
        if text in item["speech"]:
            return item
    raise AssertionError(f"no item holds {text!r}")


# -- the store and the API -----------------------------------------------------------------------


def test_prepare_screens_samples_and_resumes(tmp_path, pairs_file):
    cfg = AnnotateConfig(pairs=str(pairs_file), db=tmp_path / "a.sqlite", annotators="ana", sample=4, seed=1)
    store, tokens = prepare(cfg)
    items = store.items()
    assert len(items) == 4 and set(tokens) == {"ana"}
    levels = {i.prompt: i.crisis for i in items}
    assert levels.get(CRISIS, "crisis") == "crisis" and all(v == "none" for k, v in levels.items() if k != CRISIS)
    assert all(i.length_robust == (len(i.chosen) <= len(i.rejected)) for i in items)
    store.close()
    again, tokens = prepare(cfg)  # the same store: no new pairs, no new token
    assert [i.pair_id for i in again.items()] == [i.pair_id for i in items] and tokens == {}
    with pytest.raises(Exception, match="holds pairs from"):
        prepare(cfg.model_copy(update={"pairs": str(tmp_path / "other.jsonl")}))


def test_trl_conversational_pairs_are_shown_as_text(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in PAIRS
    ]
    path = tmp_path / "trl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    store, _ = prepare(AnnotateConfig(pairs=str(path), db=tmp_path / "t.sqlite", annotators="ana"))
    assert sorted(i.prompt for i in store.items()) == sorted(p["prompt"] for p in PAIRS)
    assert {i.crisis for i in store.items() if i.prompt == CRISIS} == {"crisis"}
    store.close()


def test_blinded_order_and_sides_differ_by_annotator_and_hold_across_visits(page):
    url, store, tokens = page
    orders = {
        n: [httpx.get(f"{url}/api/item/{i}", headers=auth(t)).json()["pair_id"] for i in range(5)]
        for n, t in tokens.items()
    }
    assert sorted(orders["ana"]) == sorted(orders["ben"]) and orders["ana"] != orders["ben"]
    assert orders["ana"] == [store.order("ana")[i].pair_id for i in range(5)]
    sides = [store.chosen_first("ana", p) for p in orders["ana"]] + [
        store.chosen_first("ben", p) for p in orders["ben"]
    ]
    assert any(sides) and not all(sides)  # reply 1 is the chosen one only some of the time
    item = httpx.get(f"{url}/api/item/0", headers=auth(tokens["ana"])).json()
    assert not {"chosen", "rejected", "model", "score", "margin"} & set(item)  # nothing that unblinds


def test_answers_are_stored_at_once_in_the_pairs_terms(page):
    url, store, tokens = page
    item = httpx.get(f"{url}/api/item/0", headers=auth(tokens["ana"])).json()
    body = {
        "pair_id": item["pair_id"],
        "preference": "A",
        "scores": {"A": {"empathy": 5}, "B": {"empathy": 2}},
        "comment": "ok",
    }
    progress = httpx.put(f"{url}/api/answer", json=body, headers=auth(tokens["ana"])).json()
    assert progress["done"] == 1 and progress["total"] == 5
    [saved] = store.all_answers()
    first = store.chosen_first("ana", item["pair_id"])
    assert saved["label"] == ("chosen" if first else "rejected")
    a, b = ("chosen", "rejected") if first else ("rejected", "chosen")
    assert saved["scores"] == {a: {"empathy": 5}, b: {"empathy": 2}}
    back = httpx.get(f"{url}/api/item/0", headers=auth(tokens["ana"])).json()["answer"]
    assert (
        back["preference"] == "A"
        and back["scores"] == {"A": {"empathy": 5}, "B": {"empathy": 2}}
        and back["comment"] == "ok"
    )
    me = httpx.get(f"{url}/api/me", headers=auth(tokens["ana"])).json()
    assert me["done"] == 1 and me["next"] == 1 and me["principles"] is True


def test_a_crisis_speech_carries_the_notice_and_resources(page):
    url, _, tokens = page
    item = find(url, tokens["ana"], "pills saved up")
    assert item["crisis"] == "crisis" and item["resources"]
    calm = find(url, tokens["ana"], "partner and I argue")
    assert calm["crisis"] == "none" and calm["resources"] == []


# -- security ------------------------------------------------------------------------------------


def test_every_api_call_needs_a_valid_token(page):
    url, store, _ = page
    for method, path in [("GET", "/api/me"), ("GET", "/api/item/0"), ("GET", "/api/rubric"), ("PUT", "/api/answer")]:
        for headers in ({}, auth("not-a-token"), {"Authorization": "Basic abc"}):
            r = httpx.request(method, f"{url}{path}", headers=headers, json={"pair_id": "x"})
            assert r.status_code == 401, (method, path, headers)
    assert store.all_answers() == []
    token_hashes = [r[0] for r in store._q("SELECT token_sha256 FROM annotators")]
    assert all(len(h) == 64 for h in token_hashes)  # hashes, not tokens


def test_an_annotator_cannot_read_or_write_anothers_answers(page):
    url, store, tokens = page
    pid = httpx.get(f"{url}/api/item/0", headers=auth(tokens["ana"])).json()["pair_id"]
    httpx.put(
        f"{url}/api/answer",
        json={"pair_id": pid, "preference": "tie", "comment": "ana's note"},
        headers=auth(tokens["ana"]),
    )
    for i in range(5):
        item = httpx.get(f"{url}/api/item/{i}", headers=auth(tokens["ben"])).json()
        assert item["answer"] is None  # ben sees none of ana's answers
    httpx.put(f"{url}/api/answer", json={"pair_id": pid, "preference": "A"}, headers=auth(tokens["ben"]))
    mine = {a["annotator"]: a for a in store.all_answers()}
    assert mine["ana"]["label"] == "tie" and mine["ana"]["comment"] == "ana's note"  # ben's answer is his own row
    assert set(mine) == {"ana", "ben"}


def test_the_page_never_holds_data_and_forbids_inline_script(page):
    url, _, tokens = page
    html = httpx.get(url)
    assert html.status_code == 200 and '<script src="/static/page.js"' in html.text
    csp = html.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    item = find(url, tokens["ana"], "<script>")
    assert item["speech"] == XSS  # the API returns the text as data; page.js only uses textContent
    assert "innerHTML" not in (Path(__file__).parents[1] / "src/psychocounsel/annotate/static/page.js").read_text()
    assert httpx.get(f"{url}/static/..%2Fstore.py").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"pair_id": "nope", "preference": "A"},
        {"preference": "A"},
        {"pair_id": "x", "preference": "C"},
        {"pair_id": "x", "scores": {"A": {"empathy": 9}}},
        {"pair_id": "x", "scores": {"A": {"kindness": 3}}},
        {"pair_id": "x", "scores": {"C": {"empathy": 3}}},
        {"pair_id": "x", "comment": "x" * 5000},
        {"pair_id": "x", "unknown": 1},
    ],
)
def test_bad_answers_are_4xx_and_store_nothing(page, body):
    url, store, tokens = page
    if body.get("pair_id") == "x":
        body["pair_id"] = store.items()[0].pair_id
    r = httpx.put(f"{url}/api/answer", json=body, headers=auth(tokens["ana"]))
    assert 400 <= r.status_code < 500 and store.all_answers() == []


# -- export, import, stats -----------------------------------------------------------------------


def _answer_all(url: str, store, tokens: dict, choose) -> None:
    for name, token in tokens.items():
        for i in range(5):
            item = httpx.get(f"{url}/api/item/{i}", headers=auth(token)).json()
            first = store.chosen_first(name, item["pair_id"])
            pref = choose(name, i, first)
            httpx.put(f"{url}/api/answer", json={"pair_id": item["pair_id"], "preference": pref}, headers=auth(token))


def test_export_import_and_stats_from_the_command_line(page, tmp_path, capsys):
    url, store, tokens = page
    _answer_all(url, store, tokens, lambda name, i, first: "A" if first else "B")  # everyone picks the chosen
    db = str(store.path)
    assert main(["annotate", "export", "--db", db, "--out", str(tmp_path / "a.csv")]) == 0
    assert main(["annotate", "export", "--db", db, "--out", str(tmp_path / "a.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and {r["label"] for r in rows} == {"chosen"}
    assert "speech" not in rows[0] and "prompt" not in rows[0]  # ids and labels, no text
    assert (tmp_path / "a.csv").read_text().count("\n") == 11
    assert main(["annotate", "import", "--db", db, "--out", str(tmp_path / "labelled.jsonl")]) == 0
    labelled = load_labelled_pairs(tmp_path / "labelled.jsonl")  # what eval-judge reads
    assert len(labelled) == 5 and {r["label"] for r in labelled} == {"A"}
    capsys.readouterr()
    assert main(["annotate", "stats", "--db", db, "--run-dir", str(tmp_path / "run"), "--judge", "rater"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["answers_per_annotator"] == {"ana": 5, "ben": 5} and stats["pairs"] == 5
    assert stats["pairwise"]["ana|ben"]["agreement"] == 1.0 and stats["vs_reference"]["ana"]["agreement"] == 1.0
    judged = stats["vs_judges"]["rater"]["annotators_majority"]
    assert judged["n"] >= 4 and 0.0 <= judged["agreement"] <= 1.0  # the rater judged (almost) every pair
    robust = sum(len(p["chosen"]) <= len(p["rejected"]) for p in PAIRS)
    assert stats["length_robust_pairs"] == robust and stats["length_robust"]["vs_reference"]["ana"]["n"] == robust
    assert json.loads((tmp_path / "run" / "annotation_stats.json").read_text()) == stats
    from psychocounsel.report import write_report

    html = write_report(tmp_path / "run").read_text()
    assert "<h2>Annotators</h2>" in html and "ana &amp; ben: kappa" in html


def test_consensus_skips_pairs_the_annotators_split_on(page):
    url, store, tokens = page
    _answer_all(
        url, store, tokens, lambda name, i, first: ("A" if first else "B") if name == "ana" else ("B" if first else "A")
    )
    rows, split = labelled_pairs(store)
    assert rows == [] and split == 5


def test_command_errors_are_one_line(tmp_path, pairs_file, capsys):
    assert main(["annotate", "stats", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert main(["annotate", "serve", "--pairs", str(pairs_file), "--db", str(tmp_path / "b.sqlite")]) == 2
    assert "name at least one annotator" in capsys.readouterr().err
    (tmp_path / "junk.sqlite").write_text("not a database " * 100)
    assert main(["annotate", "export", "--db", str(tmp_path / "junk.sqlite"), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert (
        main(
            [
                "annotate",
                "serve",
                "--pairs",
                str(tmp_path / "nope.jsonl"),
                "--annotators",
                "a",
                "--db",
                str(tmp_path / "c.sqlite"),
            ]
        )
        == 2
    )


# -- the page in a real browser ------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    return sync_playwright


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: apt-get install chromium (.ci/run does)")
@pytest.mark.skipif(_playwright() is None, reason="the playwright package is not installed (make dev installs it)")
def test_the_page_end_to_end_in_chromium(page, tmp_path):
    url, store, tokens = page
    alerts: list[str] = []
    with _playwright()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # root in CI needs no sandbox
        tab = browser.new_page(viewport={"width": 1200, "height": 900})
        tab.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
        tab.goto(url)
        tab.fill("#token", "wrong-token")
        tab.click("#signin-button")
        tab.wait_for_selector("#signin-error:not([hidden])")
        tab.fill("#token", tokens["ana"])
        tab.click("#signin-button")
        tab.wait_for_selector("#annotate:not([hidden])")
        progress = tab.locator("#progress-text")
        tab.click("#pick-A")  # by click; with principle scores on, the page stays for them
        progress.filter(has_text="1 of 5 done").wait_for()
        tab.keyboard.press("ArrowRight")
        progress.filter(has_text="pair 2").wait_for()
        tab.click("#principles > summary")  # the optional principle scores, folded away until asked for
        tab.check("input[name='score-B-empathy'][value='4']")  # saved at once
        tab.locator("#saved", has_text="Saved").wait_for()
        _screenshot(tab, tmp_path / "annotate.png")
        tab.keyboard.press("2")  # by keyboard
        progress.filter(has_text="2 of 5 done").wait_for()
        tab.keyboard.press("ArrowRight")
        tab.keyboard.press("3")
        progress.filter(has_text="3 of 5 done · pair 3").wait_for()
        tab.keyboard.press("ArrowRight")
        progress.filter(has_text="pair 4").wait_for()
        tab.click("#flag")
        tab.locator("#flag[aria-pressed='true']").wait_for()
        tab.locator("#saved", has_text="Saved").wait_for()
        tab.reload()  # a closed or reloaded tab loses nothing and resumes where it stopped
        progress.filter(has_text="3 of 5 done · pair 4").wait_for()
        assert tab.locator("#flag").get_attribute("aria-pressed") == "true"
        tab.keyboard.press("ArrowLeft")
        progress.filter(has_text="pair 3").wait_for()
        assert tab.locator("#pick-tie.selected").count() == 1
        xss_index = next(i for i, it in enumerate(store.order("ana")) if it.prompt == XSS)
        crisis_index = next(i for i, it in enumerate(store.order("ana")) if it.prompt == CRISIS)
        _goto(tab, crisis_index)
        assert tab.locator("#crisis").is_visible() and "Crisis notice" in tab.locator("#crisis").inner_text()
        _goto(tab, xss_index)
        # every text is shown as text: the <script> speech runs nothing and adds no element
        assert tab.locator("#speech").inner_text() == XSS and tab.locator("#speech script, #speech img").count() == 0
        _screenshot(tab, tmp_path / "annotate_escaped.png")
        browser.close()
    assert alerts == []
    assert main(["annotate", "export", "--db", str(store.path), "--out", str(tmp_path / "export.jsonl"), "-q"]) == 0
    exported = [json.loads(line) for line in (tmp_path / "export.jsonl").read_text().splitlines()]
    scored = [r for r in exported if any(k.startswith("score_") for k in r)]
    assert [{k: v for k, v in r.items() if k.startswith("score_")} for r in scored] == [
        {f"score_{'rejected' if store.chosen_first('ana', scored[0]['pair_id']) else 'chosen'}_empathy": 4}
    ]
    labels = {a["pair_id"]: a for a in store.all_answers() if a["annotator"] == "ana"}
    assert {(r["pair_id"], r["label"], r["flagged"]) for r in exported} == {
        (p, a["label"], a["flagged"]) for p, a in labels.items()
    }
    order = store.order("ana")
    first = [store.chosen_first("ana", it.pair_id) for it in order]
    assert labels[order[0].pair_id]["label"] == ("chosen" if first[0] else "rejected")  # clicked reply 1
    assert labels[order[1].pair_id]["label"] == ("rejected" if first[1] else "chosen")  # pressed 2
    assert labels[order[1].pair_id]["scores"] == {("rejected" if first[1] else "chosen"): {"empathy": 4}}
    assert labels[order[2].pair_id]["label"] == "tie"
    assert labels[order[3].pair_id]["flagged"] is True and labels[order[3].pair_id]["label"] is None
    assert (tmp_path / "annotate.png").stat().st_size > 10_000


def _screenshot(tab, path: Path) -> None:
    """Save a full-page screenshot; also into $PSYCHOCOUNSEL_SCREENSHOTS when set (the README's)."""
    tab.screenshot(path=str(path), full_page=True)
    if os.environ.get("PSYCHOCOUNSEL_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["PSYCHOCOUNSEL_SCREENSHOTS"]) / path.name)


def _goto(tab, index: int) -> None:
    """Move with the arrow keys to pair ``index`` (1-based in the progress text)."""
    for _ in range(10):
        text = tab.locator("#progress-text").inner_text()
        at = int(text.rsplit("pair ", 1)[1]) - 1
        if at == index:
            return
        tab.keyboard.press("ArrowRight" if at < index else "ArrowLeft")
        tab.locator("#progress-text").filter(has_text=f"pair {at + (2 if at < index else 0)}").wait_for()
    raise AssertionError(f"could not reach pair {index}")

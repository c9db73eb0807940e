"""Judge backends against a local chat-completions server (429, 500, a timeout, a garbage reply), the
stand-in judge, and ``merge-search mtbench run`` end to end with that server as judge.

Run as a script (``python tests/objectives/mtbench/test_mtbench_judges.py PORTFILE LOGFILE SCRIPT``) this file is the server:
stdlib ``http.server`` on 127.0.0.1 (a thread per request, like any real server, so a slow reply does
not hold up the others), stopping by itself after 60 s or 400 requests.
``SCRIPT`` is a comma list of behaviours for the first requests (``429``, ``500``, ``timeout``, ``garbage``);
every later request gets a reply whose rating is a checksum of the last message, so tests can tell that
each reply went back to the item that asked for it.
"""

from __future__ import annotations

import json
import socket
import os
import subprocess
import sys
import time
from pathlib import Path

KEY_ENV, KEY = "MTBENCH_TEST_JUDGE_KEY", "sk-test-secret-0123456789"


def expected_rating(messages: list[dict]) -> int:
    return sum(map(ord, messages[-1]["content"])) % 10 + 1


def serve(port_file: str, log_file: str, script: str) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    plan = [s for s in script.split(",") if s]
    state = {"n": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            auth_ok = self.headers.get("Authorization") == f"Bearer {os.environ.get('EXPECT_KEY', '')}"
            with lock, open(log_file, "a") as f:
                n, state["n"] = state["n"], state["n"] + 1
                what = plan[n] if n < len(plan) else "ok"
                f.write(json.dumps({"n": n, "what": what, "path": self.path, "auth_ok": auth_ok,
                                    "model": req.get("model"), "temperature": req.get("temperature")}) + "\n")
            if os.environ.get("EXPECT_KEY") and not auth_ok:
                return self._send(401, b'{"error": "bad key"}')
            if what in ("429", "500"):
                return self._send(int(what), b'{"error": "try later"}', {"Retry-After": "0"})
            if what == "garbage":
                return self._send(200, b"<html>not json")
            if what == "timeout":
                time.sleep(1.5)
            reply = f"Urteil: passt. Rating: [[{expected_rating(req['messages'])}]]"
            body = {"id": f"r{n}", "object": "chat.completion", "model": req.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]}
            self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.timeout = 0.5
    Path(port_file).write_text(str(server.server_address[1]))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and state["n"] < 400:
        server.handle_request()
    server.server_close()


if __name__ == "__main__":
    serve(*sys.argv[1:4])
    sys.exit(0)

import pytest

from objectives.errors import UserError
from objectives.mtbench.config import JudgeConfig
from objectives.mtbench.judges import JudgeItem, StandInJudge, judge_answers, keyword_verdict, make_judge
from objectives.mtbench.prompts import builtin_prompts
from objectives.mtbench.questions import Keywords, Question, load_questions
from objectives.mtbench.scores import STANDIN_LABEL, compute_scores
from search.cli import main


@pytest.fixture
def judge_server(tmp_path):
    """``start(script, expect_key=None) -> (base_url, log_path)``; servers are stopped at teardown."""
    procs = []

    def start(script: str, expect_key: str | None = None):
        port_file, log = tmp_path / f"port{len(procs)}", tmp_path / f"log{len(procs)}.jsonl"
        env = {**os.environ, "EXPECT_KEY": expect_key or ""}
        procs.append(subprocess.Popen([sys.executable, __file__, str(port_file), str(log), script], env=env))
        for _ in range(100):
            if port_file.exists() and port_file.read_text():
                return f"http://127.0.0.1:{port_file.read_text()}/v1", log
            time.sleep(0.05)
        raise RuntimeError("test judge server did not start")

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def _cfg(url: str, **kw) -> JudgeConfig:
    base = dict(backend="openai", base_url=url, model="judge-x", api_key_env=KEY_ENV, concurrency=3, retries=4,
                backoff_s=0.01, timeout_s=0.5)
    return JudgeConfig(**{**base, **kw})


def _items(n: int) -> list[JudgeItem]:
    q = Question("1", "writing", ("Frage eins", "Frage zwei"))
    return [JudgeItem(q, 0, (f"Antwort {i}", ""), ({"role": "user", "content": f"Bitte bewerten: Antwort {i}"},))
            for i in range(n)]


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_http_judge_retries_429_500_timeout_garbage(judge_server, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    url, log = judge_server("429,500,timeout,garbage", expect_key=KEY)
    items = _items(6)
    replies = make_judge(_cfg(url)).judge(items)
    assert [int(r.split("[[")[1].split("]]")[0]) for r in replies] == [expected_rating(list(i.messages)) for i in items]
    entries = _log(log)
    assert [e["what"] for e in entries[:4]] == ["429", "500", "timeout", "garbage"]
    assert len(entries) == 4 + 6  # each fault cost exactly one retry
    assert all(e["auth_ok"] and e["path"] == "/v1/chat/completions" and e["temperature"] == 0 for e in entries)
    assert KEY not in caplog.text and all(KEY not in r for r in replies)


def test_http_judge_gives_up_and_reply_is_counted_unparsed(judge_server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    url, log = judge_server(",".join(["500"] * 6) + ",garbage")  # 2 items x 3 attempts, all failing
    q = Question("1", "math", ("a", "b"))
    replies = judge_answers(make_judge(_cfg(url, retries=2, concurrency=1)), (q,), {"1": ["x", "y"]}, builtin_prompts("de"))
    assert all(r["judge_reply"].startswith("$ERROR$ HTTP 500") for r in replies) and len(_log(log)) == 6
    scores = compute_scores(replies, [q])
    assert scores["counts"] == {"first_turn": 0, "second_turn": 0, "unparsed_first_turn": 1, "unparsed_second_turn": 1}
    assert scores["first_turn"] is None and scores["average"] is None


def test_http_judge_bad_key_is_user_error(judge_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "wrong")
    url, _ = judge_server("", expect_key=KEY)
    with pytest.raises(UserError, match=f"HTTP 401.*{KEY_ENV}"):
        make_judge(_cfg(url)).judge(_items(2))


def test_openai_backend_needs_url_and_model():
    from objectives.mtbench.config import MTBenchConfig
    from objectives.schema import validate

    with pytest.raises(UserError, match="base_url"):
        validate(MTBenchConfig, {"judge": {"backend": "openai"}}, "cfg")


def test_standin_judge_is_labelled_and_tracks_overlap():
    q = Question("1", "writing", ("f1", "f2"), ("Der Hund spielt im Garten.", "Der Hund schläft."))
    good = JudgeItem(q, 0, ("Der Hund spielt im Garten.", ""), ())
    bad = JudgeItem(q, 1, ("", "Xyz qqq."), ())
    r_good, r_bad = StandInJudge().judge([good, bad])
    assert STANDIN_LABEL in r_good and "[[10]]" in r_good and "[[1]]" in r_bad


@pytest.mark.parametrize("answer, ok", [
    ("vierzehn.", True), ("Die größte Zahl ist Vierzehn.", True),
    ("vier.", False),                      # a prefix of the right word is another word
    ("vierzehn oder vier.", False),        # hedging names a contradicting option
    ("Ich weiß es nicht.", False), ("", False),
])
def test_keyword_verdict_matches_whole_words(answer, ok):
    keys = Keywords(accept=("vierzehn",), reject=("vier", "zwei"))
    verdict, why = keyword_verdict(answer, keys)
    assert verdict is ok and why


def test_standin_judge_rates_keyword_turns_by_the_reference_key_word(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "artikel", "turns": ["Artikel zu Brauung?", "Und zu Klimchen?"],
                                "reference": ["die Brauung.", "das Klimchen."],
                                "keywords": [{"accept": ["die Brauung"], "reject": ["der Brauung", "das Brauung"]},
                                             {"accept": ["das Klimchen"], "reject": ["der Klimchen", "die Klimchen"]}]}) + "\n")
    [q] = load_questions(path)
    items = [JudgeItem(q, t, ("Die Brauung.", "die Klimchen."), ()) for t in (0, 1)]
    first, second = StandInJudge().judge(items)
    assert "[[10]]" in first and "[[1]]" in second and "contradicts" in second
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "category": "x", "turns": ["a", "b"], "keywords": [{"reject": ["y"]}]}))
    with pytest.raises(UserError, match="keywords"):
        load_questions(bad)


def test_mtbench_run_end_to_end_with_http_judge(world, judge_server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    url, log = judge_server("429,timeout", expect_key=KEY)
    out = tmp_path / "run"
    rc = main(["mtbench", "run", "--model", str(world.base), "--name", "base", "--questions", str(world.mtbench_questions),
               "--limit", "3", "--max-new-tokens", "12", "--out", str(out), "--judge", "openai", "--judge-url", url,
               "--judge-model", "judge-x", "--judge-api-key-env", KEY_ENV, "--judge-backoff", "0.01",
               "--judge-timeout", "0.5", "--no-judge-probe", "--json"])  # the scripted faults are for the run
    assert rc == 0
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [1, 2, 3]
    assert all(a["model_id"] == "base" and len(a["choices"][0]["turns"]) == 2 for a in answers)
    replies = json.loads((out / "judge-replies.json").read_text())
    assert [(r["question_id"], r["turn_number"]) for r in replies] == [(q, t) for t in (0, 1) for q in ("1", "2", "3")]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["counts"] == {"first_turn": 3, "second_turn": 3, "unparsed_first_turn": 0, "unparsed_second_turn": 0}
    assert scores["average"] == pytest.approx((scores["first_turn"] + scores["second_turn"]) / 2)
    assert "label" not in scores and len(_log(log)) == 6 + 2
    assert all(KEY not in p.read_text() for p in out.rglob("*") if p.is_file())  # the reply cache too
    qs = load_questions(world.mtbench_questions, 3)
    assert set(scores["categories"]) == {q.category for q in qs}


def _silent_port() -> int:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # a port on which nothing listens
    return port


@pytest.mark.parametrize("probe", [True, False])
def test_a_judge_that_never_answers_is_a_failure_not_null_scores(world, tmp_path, capsys, probe):
    """Nothing listens on the judge URL. With the probe the run stops before judging, in one line; without it
    every judgment is unparsed, so the run exits 2 and says so, and scores.json records the counts (it used
    to exit 0 with every score null)."""
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": i, "model_id": "m", "choices": [{"turns": ["a", "b"]}]})
                               + "\n" for i in (1, 2)), encoding="utf-8")
    out = tmp_path / "run"
    rc = main(["mtbench", "run", "--answers", str(answers), "--questions", str(world.mtbench_questions), "--limit",
               "2", "--out", str(out), "--judge", "openai", "--judge-url", f"http://127.0.0.1:{_silent_port()}/v1",
               "--judge-model", "j", "--judge-retries", "0", "--judge-timeout", "2"]
              + ([] if probe else ["--no-judge-probe"]))
    assert rc == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    if probe:
        assert "did not answer a probe request" in last and not (out / "judge-replies.json").exists()
        return
    assert last.startswith("merge-search: error: MT-Bench") and "not one judgment could be rated" in last
    counts = json.loads((out / "scores.json").read_text())["counts"]
    assert counts == {"first_turn": 0, "second_turn": 0, "unparsed_first_turn": 2, "unparsed_second_turn": 2}


def test_local_hf_judge_replies_in_order(world):
    judge = make_judge(JudgeConfig(backend="hf", model=str(world.base), max_new_tokens=8, batch_size=2))
    q = load_questions(world.mtbench_questions)[0]
    replies = judge_answers(judge, (q,), {q.question_id: ["Der Hund spielt.", "Der Hund lacht."]}, builtin_prompts("de"))
    assert [(r["question_id"], r["turn_number"]) for r in replies] == [(q.question_id, 0), (q.question_id, 1)]
    assert all(isinstance(r["judge_reply"], str) for r in replies)


def test_http_judging_resumes_from_kept_replies_and_retries_failed_ones(judge_server, monkeypatch, tmp_path):
    from objectives.mtbench.cache import ReplyCache
    from objectives.mtbench.judges import judge_scope

    monkeypatch.delenv(KEY_ENV, raising=False)
    url, log = judge_server("500")  # the first request fails and is not retried
    cfg = _cfg(url, retries=0, concurrency=1)
    qs = tuple(Question(str(i), "math", (f"Frage {i}", f"Nachfrage {i}")) for i in range(3))
    answers = {q.question_id: [f"a{q.question_id}", f"b{q.question_id}"] for q in qs}
    path = tmp_path / "judgments.jsonl"

    def judged():
        return judge_answers(make_judge(cfg), qs, answers, builtin_prompts("de"),
                             cache=ReplyCache(path, judge_scope(cfg)))

    first = judged()
    assert [r["judge_reply"].startswith("$ERROR$") for r in first] == [True] + [False] * 5
    assert len(_log(log)) == 6
    second = judged()
    assert len(_log(log)) == 6 + 1  # only the failed item is asked again
    assert not any(r["judge_reply"].startswith("$ERROR$") for r in second)
    assert second[1:] == first[1:]  # the kept replies, unchanged
    judged()
    assert len(_log(log)) == 7  # everything kept: nothing asked
    cfg = _cfg(url, retries=0, concurrency=1, model="judge-y")  # another judge model: everything asked
    judged()
    assert len(_log(log)) == 7 + 6

"""MT-Bench on the demo world with the offline stand-in judge: base, one expert and a merge (a recipe merged
in memory), then the comparison table and chart. Plus generation contracts (turn 2 sees turn 1, per-category
temperatures, stop at ``<|im_end|>``)."""

from __future__ import annotations

import json

import pytest
import yaml

from objectives.mtbench.config import MTBenchConfig
from objectives.mtbench.generate import LocalChatModel, generate_answers
from objectives.mtbench.questions import load_questions
from objectives.mtbench.scores import STANDIN_LABEL
from search.cli import main


class Recorder:
    """A chat model that records what it was asked and answers with a counter."""

    def __init__(self):
        self.calls = []

    fingerprint = None

    def reply_all(self, conversations, temperatures, max_new_tokens, desc="", on_reply=None):
        self.calls.append((conversations, temperatures, max_new_tokens))
        return [f"A{len(self.calls)}-{i}" for i in range(len(conversations))]


class Crashing:
    """Answers ``conv[-1]`` reversed, one reply at a time; raises after ``crash_after`` replies."""

    def __init__(self, crash_after: int | None = None, fingerprint: str = "model-a"):
        self.crash_after, self.fingerprint, self.asked = crash_after, fingerprint, []

    def reply_all(self, conversations, temperatures, max_new_tokens, desc="", on_reply=None):
        out = []
        for i, conv in enumerate(conversations):
            if self.crash_after is not None and len(self.asked) >= self.crash_after:
                raise KeyboardInterrupt("killed")
            self.asked.append(conv[-1]["content"])
            out.append(conv[-1]["content"][::-1])
            on_reply(i, out[-1])
        return out


def test_second_turn_sees_first_answer_and_category_temperatures(world):
    qs = load_questions(world.mtbench_questions)
    rec = Recorder()
    cfg = MTBenchConfig(max_new_tokens=33, system_prompt="SYS", temperatures={"zahlen": 0.0, "artikel": 0.1},
                        default_temperature=0.7)
    answers = generate_answers(rec, qs, cfg)
    (first, t1, n1), (second, t2, _) = rec.calls
    assert n1 == 33 and t1 == t2
    assert dict(zip([q.category for q in qs], t1)) == {"zahlen": 0.0, "artikel": 0.1, "verben": 0.7, "alltag": 0.7}
    default = MTBenchConfig()  # MT-Bench's own categories: FastChat's temperatures
    assert [default.temperature(c) for c in ("writing", "roleplay", "math", "reasoning", "stem", "humanities")] == \
        [0.7, 0.7, 0.0, 0.0, 0.1, 0.1]
    q0 = qs[0]
    assert second[0] == [{"role": "system", "content": "SYS"}, {"role": "user", "content": q0.turns[0]},
                         {"role": "assistant", "content": "A1-0"}, {"role": "user", "content": q0.turns[1]}]
    assert answers[q0.question_id] == ["A1-0", "A2-0"]


def test_local_model_stops_at_im_end(world):
    model = LocalChatModel.from_pretrained(world.base, batch_size=4)
    assert model.tok.convert_tokens_to_ids("<|im_end|>") in model.eos
    convs = [[{"role": "user", "content": "Schreibe einen Satz über die Katze."}],
             [{"role": "user", "content": "Was ist zwei plus drei?"}]]
    out = model.reply_all(convs, [0.0, 0.0], max_new_tokens=150)
    # the demo model answers one short sentence and then emits <|im_end|>: far fewer than 150 characters
    assert all(0 < len(a) < 100 and "<|im_" not in a and "assistant" not in a for a in out)


def test_demo_world_base_expert_merge_and_compare(world, tmp_path, capsys):
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(yaml.safe_dump({
        "merge_method": "dare_ties", "base_model": str(world.base), "dtype": "float32",
        "models": [{"model": str(world.experts[s]), "parameters": {"density": 0.7, "weight": 0.5}}
                   for s in ("zahlen", "artikel")],
    }))
    runs = {"base": world.base, "zahlen": world.experts["zahlen"], "merge": recipe}
    for name, source in runs.items():
        rc = main(["mtbench", "run", "--model", str(source), "--name", name, "--questions", str(world.mtbench_questions),
                   "--limit", "4", "--max-new-tokens", "24", "--out", str(tmp_path / name), "--json"])
        assert rc == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["label"] == STANDIN_LABEL
        replies = json.loads((tmp_path / name / "judge-replies.json").read_text())
        assert len(replies) == 8 and all(STANDIN_LABEL in r["judge_reply"] for r in replies)
        assert json.loads((tmp_path / name / "scores.json").read_text()) == printed
    out = tmp_path / "cmp" / "table"
    rc = main(["mtbench", "compare", *(str(tmp_path / n / "scores.json") for n in runs), "--out", str(out)])
    assert rc == 0
    table = (out.with_suffix(".md")).read_text()
    assert table.strip() in capsys.readouterr().out
    assert "| base | zahlen | Δ% vs base | merge | Δ% vs base |" in table and STANDIN_LABEL in table
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_interrupted_mtbench_run_resumes_without_asking_again(world, tmp_path):
    """Answers and judge replies are kept as they arrive: a re-run asks only for what is missing."""
    from objectives.mtbench.run import run_mtbench

    cfg = MTBenchConfig(questions=str(world.mtbench_questions), limit=6)
    with pytest.raises(KeyboardInterrupt):
        run_mtbench(cfg, tmp_path / "out", model=Crashing(crash_after=8), model_id="m")
    assert not (tmp_path / "out" / "scores.json").exists()
    again = Crashing()
    scores = run_mtbench(cfg, tmp_path / "out", model=again, model_id="m")
    assert len(again.asked) == 12 - 8  # 6 questions x 2 turns, 8 answered before the kill
    fresh = run_mtbench(cfg, tmp_path / "fresh", model=Crashing(), model_id="m")
    assert scores == fresh
    assert (tmp_path / "out" / "answers.jsonl").read_text().count("\n") == 6
    other = Crashing(fingerprint="model-b")  # other weights: nothing is reused
    run_mtbench(cfg, tmp_path / "out", model=other, model_id="m")
    assert len(other.asked) == 12


def _without_template(world, tmp_path):
    """A copy of the demo base whose tokenizer has no chat template (as Mistral-7B-v0.1's has none)."""
    import shutil

    folder = tmp_path / "plain-base"
    shutil.copytree(world.base, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def test_model_without_chat_template_needs_the_setting_and_runs_with_it(world, tmp_path, capsys):
    folder = _without_template(world, tmp_path)
    args = ["mtbench", "run", "--model", str(folder), "--questions", str(world.mtbench_questions), "--limit", "2",
            "--max-new-tokens", "8"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no chat template" in err[0] and "mtbench.chat_template" in err[0]
    assert not (tmp_path / "refused" / "answers.jsonl").exists()
    assert main([*args, "--out", str(tmp_path / "chatml"), "--chat-template", "chatml", "--json"]) == 0
    answers = [json.loads(line) for line in (tmp_path / "chatml" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2
    template = tmp_path / "t.jinja"  # a Jinja file works too; a bad value is one clear error
    template.write_text("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "file"), "--chat-template", str(template)]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--chat-template", "zephyr-please"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither 'model', 'chatml'" in err[0]


def test_a_model_with_its_own_template_keeps_it(world):
    from objectives.templates import CHATML_TEMPLATE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world.base)
    own = tok.chat_template
    LocalChatModel(AutoModelForCausalLM.from_pretrained(world.base), tok, chat_template=CHATML_TEMPLATE + " ")
    assert tok.chat_template == own

"""Deterministic generator of the shipped sample: HH-format preference pairs with a known, uneven topic structure.

The texts live in tools/sample_templates.yaml (dense topics, rare topics, rejects, verbose rejects); this script only
combines them with seeded random choices. A density-weighting experiment on the result must give the rare prompts the
higher weights. Regenerate the shipped file with:

    python tools/make_sample_data.py [OUT]    # default OUT: density_grpo/data/sample_pairs.jsonl
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "sample_templates.yaml"
OUT_PATH = ROOT / "density_grpo" / "data" / "sample_pairs.jsonl"
N_PROMPTS = {"cooking": 80, "python": 76, "finance": 70}  # unique prompts per dense topic
DUP_FRACTION = 0.2  # share of prompts that get a second pair
VERBOSE_SHARE = 0.5  # share of pairs whose rejected response is replaced by a verbose one, longer than the chosen

T: dict = yaml.safe_load(TEMPLATES.read_text(encoding="utf-8"))

Turns = list[str]  # alternating Human, Assistant, Human, ... texts; the last one is the user's request


def hh(turns: Turns, response: str) -> str:
    """HH-format dialogue: "\\n\\nHuman: ...\\n\\nAssistant: ..." ending with the Assistant's `response`."""
    roles = ["Human", "Assistant"]
    text = "".join(f"\n\n{roles[i % 2]}: {t}" for i, t in enumerate(turns))
    return text + "\n\nAssistant: " + response


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def fill(template: str, subject: str) -> str:
    """A reject template with {subject} (dish, task, goal or rare topic) and {Subject} (capitalized) filled in."""
    return template.format(subject=subject, Subject=cap(subject))


# -----------------------------------------------------------------------------
# dense topics: every subject x every phrasing -> candidate (subject, turns, chosen response)


def cooking_prompts() -> list[tuple[str, Turns, str]]:
    out = []
    for d in T["dishes"]:
        n, N = d["name"], cap(d["name"])
        recipe = f"{d['how']} {d['cook']}"
        cands = [
            ([f"How do I make {n} from scratch?"], f"Here's a reliable way to do it. {recipe}"),
            ([f"Do you have a simple recipe for {n}?"], f"Sure! {recipe} {d['fix'].split('. ')[-1]}"),
            ([f"My {n} always comes out {d['fail']}. What am I doing wrong?"], d["fix"]),
            ([f"Can I make {n} without {d['swap']}? What could I use instead?"], f"Yes. {d['substitute']}"),
            ([f"What temperature and how long should I cook {n}?"], d["cook"]),
            ([f"What should I serve with {n}?"], f"{N} goes well with {d['sides']}."),
            (
                [f"Can {n} be made ahead of time and frozen?"],
                (
                    f"Yes, {n} freezes well: cool it completely, wrap it tightly and freeze for up to three months, then thaw overnight in the fridge."
                    if d["freezes"]
                    else f"I wouldn't freeze {n}; the texture suffers badly. It's best made fresh, though you can prep the ingredients a few hours ahead."
                ),
            ),
            (
                [
                    "I want to try cooking something new this weekend.",
                    "Fun! Do you have a dish in mind, or would you like suggestions?",
                    f"I was thinking {n}. How do I make it?",
                ],
                f"Great choice. {recipe}",
            ),
            (
                [
                    "Can you help me with a recipe?",
                    "Of course. What are you making?",
                    f"{N}, but last time it turned out {d['fail']}.",
                ],
                f"Let's fix that. {d['fix']}",
            ),
        ]
        for ctx in T["cooking_contexts"]:
            cands.append(([f"What's a good recipe for {n}? {ctx}"], f"Here's an easy, dependable version. {recipe}"))
        for occ in T["occasions"]:
            cands.append(
                ([f"I'm making {n} for {occ}. Any tips so it turns out great?"], f"A few tips. {d['cook']} {d['fix']}")
            )
        out += [(n, turns, chosen) for turns, chosen in cands]
    return out


def python_prompts() -> list[tuple[str, Turns, str]]:
    out = []
    for t in T["tasks"]:
        task = t["task"]
        answer = f"```{t.get('lang', 'python')}\n{t['code']}\n```\n\n{t['note']}"
        cands = [
            ([f"How do I {task} in Python?"], f"Here's the usual way:\n\n{answer}"),
            ([f"What's the most Pythonic way to {task}?"], f"The idiomatic version is short:\n\n{answer}"),
            ([f"I'm new to Python. Can you show me how to {task}?"], f"Sure! Here's a small example:\n\n{answer}"),
            ([f"I'm trying to {task} in Python but I get this error: {t['error']}. How do I fix it?"], t["fix"]),
            ([f"Write a short Python example that shows how to {task}."], answer),
            (
                [f"Is there a built-in way to {task} in Python, or do I need a library?"],
                f"You can do it like this:\n\n{answer}",
            ),
            (
                [
                    "I'm working on a Python script and I'm stuck.",
                    "Happy to help. What are you trying to do?",
                    f"I need to {task}, but I'm not sure where to start.",
                ],
                f"Here's a good starting point:\n\n{answer}",
            ),
            (
                [
                    "Can you help me debug some Python code?",
                    "Of course. What does the error message say?",
                    f"It says {t['error']} when I try to {task}.",
                ],
                t["fix"],
            ),
        ]
        for ctx in T["python_contexts"]:
            cands.append(([f"For {ctx}, I need to {task}. What's the cleanest way to do that in Python?"], answer))
        out += [(task, turns, chosen) for turns, chosen in cands]
    return out


def finance_prompts() -> list[tuple[str, Turns, str]]:
    out = []
    for g in T["goals"]:
        goal, advice = g["goal"], g["advice"]
        cands = [
            ([f"How should I {goal}?"], advice),
            ([f"Can you explain in simple terms how to {goal}?"], f"Sure. {advice}"),
            ([f"What's the first step if I want to {goal}?"], f"Here's how I'd approach it. {advice}"),
            (
                [
                    "I'm trying to get my finances in order this year.",
                    "That's a great goal. What's the main thing you want to work on?",
                    f"Mostly I need to {goal}. Where do I start?",
                ],
                advice,
            ),
        ]
        for sit in T["situations"]:
            cands.append(([f"What's the smartest way to {goal} if I {sit}?"], f"Good question. {advice}"))
            cands.append(
                (
                    [
                        "Can I ask you a money question?",
                        "Sure, go ahead.",
                        f"I {sit} and I want to {goal}. What would you recommend?",
                    ],
                    advice,
                )
            )
        for obs in T["obstacles"]:
            cands.append(([f"I want to {goal}, but {obs}. Any advice?"], f"That's a common struggle. {advice}"))
        out += [(goal, turns, chosen) for turns, chosen in cands]
    return out


DENSE = {
    "cooking": (cooking_prompts, "cooking_rejects"),
    "python": (python_prompts, "python_rejects"),
    "finance": (finance_prompts, "finance_rejects"),
}

# -----------------------------------------------------------------------------


def verbose_reject(kind: str, subject: str, min_len: int, rng: random.Random) -> str:
    """A rambling, off-topic answer built around one wrong or evasive claim, at least `min_len` characters when the
    pools allow it."""
    pool = T["verbose"][kind]
    ramble = rng.sample([fill(s, subject) for s in pool["ramble"]], len(pool["ramble"]))
    wrong = fill(rng.choice(pool["wrong"]), subject)
    opener, closer = rng.choice(T["verbose"]["openers"]), rng.choice(T["verbose"]["closers"])
    body: list[str] = []
    while ramble and len(opener) + sum(len(x) + 1 for x in body) + len(wrong) + len(closer) + 1 < min_len:
        body.append(ramble.pop())
    body.insert(rng.randint(0, len(body)), wrong)
    return opener + " ".join(body + [closer])


def with_opener(text: str, rng: random.Random) -> str:
    """Prefix a single-turn request with a casual opener ("Hey, how do I ...")."""
    opener = rng.choice(T["openers"])
    if opener.endswith(", ") and not text.startswith(("I ", "I'm")):
        text = text[0].lower() + text[1:]
    return opener + text


def dense_rows(topic: str, rng: random.Random) -> list[tuple]:
    """N_PROMPTS[topic] distinct candidates -> (topic, turns, chosen, rejected, alternative rejected, subject)."""
    make_prompts, rejects = DENSE[topic]
    out = []
    for subject, turns, chosen in rng.sample(make_prompts(), N_PROMPTS[topic]):
        turns = list(turns)
        if len(turns) == 1 and rng.random() < 0.25:
            turns[0] = with_opener(turns[0], rng)
        bad, alt = rng.sample(T[rejects], 2)
        out.append((topic, turns, chosen, fill(bad, subject), fill(alt, subject), subject))
    return out


def generate_sample_pairs(seed: int = 0) -> list[dict[str, str]]:
    """The sample pairs {chosen, rejected (full HH dialogues), topic}; shuffled, deterministic in `seed`."""
    rng = random.Random(seed)
    rows = [row for topic in DENSE for row in dense_rows(topic, rng)]
    rare = [(topic, p) for topic, prompts in T["rare"].items() for p in prompts]
    rows += [(topic, p["turns"], p["chosen"], p["rejected"], rng.choice(T["rare_rejects"]), topic) for topic, p in rare]

    # Verbose rejects draw from their own stream so the prompts, their order and the duplicates stay as they were.
    vrng = random.Random(f"verbose-rejects:{seed}")

    def reject(topic: str, subject: str, chosen: str, curt: str) -> str:
        if vrng.random() >= VERBOSE_SHARE:
            return curt
        kind = topic if topic in DENSE else "rare"
        return verbose_reject(kind, subject, int(len(chosen) * vrng.uniform(1.05, 1.6)), vrng)

    pairs = []
    for topic, turns, chosen, bad, alt, subject in rows:
        bad = reject(topic, subject, chosen, bad)
        pairs.append({"chosen": hh(turns, chosen), "rejected": hh(turns, bad), "topic": topic})
        if rng.random() < DUP_FRACTION:  # a second pair for the same prompt: reworded chosen, another rejected
            lead = rng.choice([x for x in T["leads"] if not chosen.startswith(x.split()[0].rstrip(".!"))])
            alt = reject(topic, subject, lead + chosen, alt)
            if alt == bad:  # keep the two rejects of a prompt different
                alt = reject(topic, subject, lead + chosen, alt)
            pairs.append({"chosen": hh(turns, lead + chosen), "rejected": hh(turns, alt), "topic": topic})
    rng.shuffle(pairs)  # so that max_pairs keeps a mix of topics
    n_unique = len({hh(turns, "") for _, turns, *_ in rows})
    assert n_unique == len(rows), f"duplicate prompts in the sample ({n_unique} unique of {len(rows)})"
    return pairs


def write_jsonl(pairs: list[dict[str, str]], path: Path) -> None:
    """One JSON object per line, UTF-8, atomically (a temporary sibling renamed onto `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else OUT_PATH
    pairs = generate_sample_pairs()
    write_jsonl(pairs, out)
    print(f"wrote {len(pairs)} pairs, {len({p['topic'] for p in pairs})} topics -> {out}")


if __name__ == "__main__":
    main()

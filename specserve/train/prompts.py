"""A synthetic chat prompt set: templates x topics, deterministic, split into train and held-out.

Four kinds of request (customer care, general questions, writing, code) are each a list of templates
with slots filled from topic lists. ``python -m specserve.train.prompts`` rewrites the two shipped
files in specserve/train/data/. The split is by a hash of the prompt text, so a prompt never moves
between splits when the lists grow; the held-out split also uses templates training never sees.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path

PRODUCTS = ["wireless headphones", "laptop", "coffee machine", "smartphone", "running shoes", "electric kettle",
            "office chair", "smart watch", "vacuum cleaner", "gaming console", "printer", "winter jacket",
            "air purifier", "e-reader", "blender", "bicycle", "router", "backpack", "mattress", "camera"]
ISSUES = ["arrived damaged", "stopped working after a week", "was charged twice", "never arrived",
          "is the wrong size", "makes a strange noise", "will not turn on", "is missing a part",
          "was delivered to the wrong address", "has a battery that drains quickly"]
CARE = ["My {p} {i}. What should I do?", "Hi, I ordered a {p} and it {i}. Can you help me?",
        "Write a polite reply to a customer whose {p} {i}.", "How do I return a {p} that {i}?",
        "I want a refund because my {p} {i}. What information do you need?",
        "As a support agent, explain the warranty options for a {p} that {i}.",
        "My {p} {i}. Is this covered by the warranty?", "Draft an apology email to a customer whose {p} {i}."]
CARE_HELDOUT = ["Our client says their {p} {i}. Suggest three next steps for the support team."]

SUBJECTS = ["photosynthesis", "black holes", "the French Revolution", "machine learning", "inflation",
            "the immune system", "climate change", "plate tectonics", "the Roman Empire", "quantum computing",
            "vaccines", "the stock market", "renewable energy", "the water cycle", "DNA", "volcanoes",
            "the internet", "electric cars", "sleep", "meditation", "the Moon landing", "honey bees",
            "the printing press", "blockchain", "nutrition", "earthquakes", "the Great Wall of China",
            "antibiotics", "gravity", "the Renaissance", "coffee", "jazz music", "the Olympic Games",
            "recycling", "the human brain", "rainbows", "tides", "chess", "democracy", "batteries"]
GENERAL = ["What is {s}?", "Explain {s} in simple terms.", "Give me three interesting facts about {s}.",
           "Why is {s} important?", "Explain {s} to a ten-year-old.", "What are common misconceptions about {s}?",
           "Summarize the history of {s} in a short paragraph.", "What are the pros and cons of {s}?",
           "How would you teach {s} to a beginner?", "List five questions a student might ask about {s}."]
GENERAL_HELDOUT = ["Tell me something surprising about {s}.", "How does {s} affect everyday life?"]

FORMS = ["a short poem", "a haiku", "a short story", "a product description", "a tweet", "a limerick",
         "a motivational speech", "a blog post introduction", "a news headline and lead paragraph",
         "a thank-you note", "a cover letter opening", "a dialogue between two friends"]
THEMES = ["the ocean", "a rainy day", "friendship", "starting a new job", "autumn leaves", "a lost cat",
          "space travel", "a small bakery", "learning to code", "a mountain hike", "the first day of school",
          "a city at night", "a birthday party", "an old library", "a garden in spring", "a train journey"]
WRITING = ["Write {f} about {t}.", "Please write {f} about {t}.", "Compose {f} on the theme of {t}.",
           "Can you write {f} inspired by {t}?"]
WRITING_HELDOUT = ["I need {f} about {t}, keep it cheerful."]

LANGS = ["Python", "JavaScript", "C", "Java", "Rust", "Go", "SQL", "Bash"]
TASKS = ["reverses a string", "checks whether a number is prime", "computes the factorial of n",
         "finds the largest element in a list", "counts the words in a sentence", "sorts a list of numbers",
         "removes duplicates from a list", "reads a file line by line", "computes the Fibonacci sequence",
         "checks whether a string is a palindrome", "merges two sorted lists", "converts Celsius to Fahrenheit",
         "computes the average of a list", "finds the GCD of two numbers", "counts vowels in a string",
         "implements binary search"]
CODE = ["Write a {l} function that {k}.", "Show me how to write code in {l} that {k}.",
        "Explain how to implement a program in {l} that {k}.", "Write a {l} snippet that {k}, with comments."]
CODE_HELDOUT = ["In {l}, how would I write a routine that {k}?"]
CONCEPTS = ["a closure", "recursion", "a hash table", "an API", "garbage collection", "a race condition",
            "version control", "unit testing", "a linked list", "object-oriented programming", "a REST API",
            "big-O notation", "a compiler", "an operating system", "a database index", "a regular expression"]
CONCEPT_Q = ["What is {c} in programming?", "Explain {c} with an example.", "When should I use {c}?"]


def _fill(templates: list[str], **slots: list[str]) -> list[str]:
    keys = list(slots)
    return [t.format(**dict(zip(keys, combo))) for t in templates
            for combo in itertools.product(*(slots[k] for k in keys))]


def build_prompts(seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held_out): distinct prompts; held-out = unseen templates plus ~5% of the rest."""
    train_pool = (_fill(CARE, p=PRODUCTS, i=ISSUES) + _fill(GENERAL, s=SUBJECTS)
                  + _fill(WRITING, f=FORMS, t=THEMES) + _fill(CODE, l=LANGS, k=TASKS) + _fill(CONCEPT_Q, c=CONCEPTS))
    held = (_fill(CARE_HELDOUT, p=PRODUCTS[:6], i=ISSUES[:3]) + _fill(GENERAL_HELDOUT, s=SUBJECTS[::4])
            + _fill(WRITING_HELDOUT, f=FORMS[:6], t=THEMES[:3]) + _fill(CODE_HELDOUT, l=LANGS[:4], k=TASKS[:4]))
    train = []
    for prompt in dict.fromkeys(train_pool):
        bucket = int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % 100
        (held if bucket < 5 else train).append(prompt)
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(held)
    return train, list(dict.fromkeys(held))


def write_prompt_files(out_dir: Path, seed: int = 0) -> tuple[int, int]:
    train, held = build_prompts(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, prompts in (("train", train), ("heldout", held)):
        with open(out_dir / f"prompts_{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts)
    return len(train), len(held)


if __name__ == "__main__":
    print("train %d, held-out %d" % write_prompt_files(Path(__file__).resolve().parent / "data"))

"""A synthetic chat prompt set: templates x topics, deterministic, split into train and held-out.

Four kinds of request (customer care, general questions, writing, code) are each a list of templates
with slots filled from topic lists. ``python -m specserve.train.prompts`` rewrites the shipped files in
specserve/train/data/ (train, held-out, and a second training set, ``prompts_train_extra.jsonl``). The split is by a hash of the prompt text, so a prompt never moves
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


# A second training set (session 9): new templates, some over the topics above and some over new
# topics, and kinds of request the first set lacks. None of its templates is a held-out one, and its
# prompts go to training only, so the held-out file stays as it was.
EXTRA_CARE = ["I bought a {p} last month and it {i}. What are my options?",
              "Summarize this complaint for a support ticket: my {p} {i}.",
              "What questions should a support agent ask when a {p} {i}?",
              "My {p} {i}. Write the reply a friendly support agent would send."]
EXTRA_SUBJECTS = ["the solar system", "artificial intelligence", "the Industrial Revolution", "oceans",
                  "photosynthesis in algae", "the theory of evolution", "the Cold War", "sound waves",
                  "the periodic table", "viruses", "social media", "the human heart", "glaciers",
                  "supply and demand", "ancient Egypt", "the speed of light", "cryptography", "rainforests",
                  "the Silk Road", "magnets", "memory", "solar panels", "the Amazon river", "dinosaurs",
                  "compound interest", "the microscope", "migration of birds", "weather forecasts",
                  "the Eiffel Tower", "public transport"]
EXTRA_GENERAL = ["Write a short explanation of {s} for a school newsletter.", "What do scientists still not know about {s}?",
                 "Describe {s} in five bullet points.", "What is the most important idea behind {s}?",
                 "Compare {s} with something from everyday life.", "Give a one-paragraph overview of {s}."]
EXTRA_THEMES = ["a quiet morning", "the last day of summer", "a busy kitchen", "an old photograph", "a snowstorm",
                "moving to a new city", "a street market", "a lighthouse", "a first concert", "a long flight",
                "a village festival", "a broken umbrella"]
EXTRA_WRITING = ["Write {f} that starts with a question, about {t}.", "Create {f} for children about {t}.",
                 "Write {f} about {t} in a calm tone."]
EXTRA_TASKS = ["capitalizes every word in a sentence", "finds the second largest number in a list",
               "checks whether two strings are anagrams", "computes the sum of the digits of a number",
               "flattens a nested list", "counts how often each word appears", "rotates a list by k positions",
               "converts a number to binary", "validates an email address", "finds the median of a list",
               "removes whitespace from both ends of a string", "generates a random password"]
EXTRA_CODE = ["Write a function in {l} that {k}, and explain how it works.", "Give me a {l} example that {k}.",
              "How can I write {l} code that {k}? Keep it short."]
EXTRA_CONCEPTS = CONCEPTS + ["a pointer", "a thread", "an interface", "a stack", "a queue", "caching",
                             "dependency injection", "a lambda function", "an exception", "a binary tree"]
EXTRA_CONCEPT_Q = ["Describe {c} in two sentences.", "What problem does {c} solve?", "Give a real-world analogy for {c}."]
ACTIVITIES = ["learn a new language", "start running", "save money each month", "grow tomatoes", "sleep better",
              "prepare for a job interview", "write a resume", "train a puppy", "organize a small kitchen",
              "study for an exam", "start a podcast", "learn to play guitar", "reduce screen time",
              "plan a birthday party", "cook rice", "clean a laptop keyboard", "make new friends in a new city",
              "keep houseplants alive", "learn to swim as an adult", "give a good presentation",
              "stay focused while working from home", "choose a good book", "start meditating", "bake bread",
              "paint a room", "fix a flat bicycle tire", "back up my photos", "write a thank-you letter",
              "set up a budget", "prepare for a hiking trip"]
HOWTO = ["How do I {a}?", "Give me a step-by-step plan to {a}.", "What are common mistakes when people try to {a}?",
         "I want to {a}. Where should I begin?"]
PAIRS = ["cats and dogs", "tea and coffee", "trains and planes", "books and e-books", "renting and buying a home",
         "running and swimming", "Python and JavaScript", "summer and winter", "city life and country life",
         "email and phone calls", "laptops and tablets", "solar and wind power", "paper maps and GPS",
         "working alone and working in a team", "public and private schools", "bikes and scooters",
         "cooking at home and eating out", "SQL and NoSQL databases", "novels and short stories",
         "saving and investing"]
COMPARE = ["What are the main differences between {x}?", "Compare {x} in a short table-free answer."]
DISHES = ["pancakes", "tomato soup", "fried rice", "a simple salad", "banana bread", "vegetable curry", "omelette",
          "lemonade", "pasta with garlic and oil", "guacamole", "roasted potatoes", "chocolate chip cookies",
          "a smoothie", "hummus", "grilled cheese sandwich", "lentil stew", "apple pie", "scrambled tofu",
          "chicken noodle soup", "popcorn"]
RECIPES = ["How do I make {d}?", "Give me a simple recipe for {d}.", "What ingredients do I need for {d}?"]
PLACES = ["Paris", "Tokyo", "New York", "the Swiss Alps", "Rome", "Iceland", "Barcelona", "a national park",
          "London", "the seaside", "Kyoto", "Lisbon", "a small mountain town", "Amsterdam", "Cape Town",
          "Vienna", "a desert", "Prague", "a tropical island", "Scotland"]
TRAVEL = ["Plan a three-day trip to {t}.", "What should I pack for a visit to {t}?", "What are good things to do in {t} on a budget?"]
WORK = ["ask my manager for a day off", "decline a meeting politely", "follow up after a job interview",
        "introduce myself to a new team", "ask a colleague for help", "apologize for missing a deadline",
        "request feedback on my work", "announce a project delay", "thank a client", "ask for a raise",
        "invite the team to lunch", "hand over my tasks before a holiday", "remind someone about an unpaid invoice",
        "welcome a new employee", "report a bug to a software vendor"]
EMAILS = ["Write a short email to {w}.", "Help me write a message to {w}.", "What should I say when I {w}?"]
ITEMS = [("apples", 3, 7), ("pencils", 12, 5), ("books", 8, 4), ("cookies", 24, 6), ("tickets", 15, 3),
         ("marbles", 40, 8), ("stamps", 9, 11), ("chairs", 6, 9), ("oranges", 18, 2), ("cards", 52, 4)]
MATH = ["If I have {n} boxes with {m} {x} in each, how many {x} do I have? Explain.",
        "Share {n} {x} equally among {m} friends. How many does each get, and how many are left?"]


def extra_train_prompts() -> list[str]:
    """The second training set, shuffled, without any prompt of the first set or the held-out one."""
    pool = (_fill(EXTRA_CARE, p=PRODUCTS, i=ISSUES) + _fill(EXTRA_GENERAL, s=SUBJECTS + EXTRA_SUBJECTS)
            + _fill(EXTRA_WRITING, f=FORMS, t=THEMES + EXTRA_THEMES) + _fill(EXTRA_CODE, l=LANGS, k=TASKS + EXTRA_TASKS)
            + _fill(EXTRA_CONCEPT_Q, c=EXTRA_CONCEPTS) + _fill(HOWTO, a=ACTIVITIES) + _fill(COMPARE, x=PAIRS)
            + _fill(RECIPES, d=DISHES) + _fill(TRAVEL, t=PLACES) + _fill(EMAILS, w=WORK)
            + [t.format(x=x, n=n, m=m) for t in MATH for x, n, m in ITEMS])
    train, held = build_prompts()
    seen = set(train) | set(held)
    extra = [p for p in dict.fromkeys(pool) if p not in seen]
    random.Random(1).shuffle(extra)
    return extra


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
    with open(out_dir / "prompts_train_extra.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in extra_train_prompts())
    return len(train), len(held)


if __name__ == "__main__":
    print("train %d, held-out %d" % write_prompt_files(Path(__file__).resolve().parent / "data"))

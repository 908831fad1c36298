"""Deterministic generator of the shipped sample: HH-format preference pairs with a known, uneven topic structure.

Three DENSE topics (cooking, python, finance) hold most prompts: many phrasings x subjects x details, so they are
similar to each other but never copies. Many RARE topics (beekeeping, Estonian tax law, ...) have 1-3 hand-written
prompts each, far from each other and from the dense topics. A density-weighting experiment on this data must give
the rare prompts the higher weights. Some prompts are multi-turn; some appear in two pairs (n_pairs > 1).

Regenerate the shipped file with:  python -m density_grpo.sample_data [OUT]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from density_grpo.io import atomic_path

OUT_PATH = Path(__file__).parent / "data" / "sample_pairs.jsonl"
N_PROMPTS = {"cooking": 80, "python": 76, "finance": 70}  # unique prompts per dense topic
DUP_FRACTION = 0.2  # share of prompts that get a second pair

Turns = list[str]  # alternating Human, Assistant, Human, ... texts; the last one is the user's request


def hh(turns: Turns, response: str) -> str:
    """HH-format dialogue: "\\n\\nHuman: ...\\n\\nAssistant: ..." ending with the Assistant's `response`."""
    roles = ["Human", "Assistant"]
    text = "".join(f"\n\n{roles[i % 2]}: {t}" for i, t in enumerate(turns))
    return text + "\n\nAssistant: " + response


# -----------------------------------------------------------------------------
# dense topic: cooking

DISHES = [
    dict(
        name="banana bread",
        how="Mash 3 very ripe bananas, stir in 1/3 cup melted butter, 3/4 cup sugar, an egg and a teaspoon of vanilla, then fold in 1 1/2 cups flour with a teaspoon of baking soda and a pinch of salt. Pour it into a greased loaf pan.",
        cook="Bake at 350°F (175°C) for 55 to 65 minutes, until a toothpick in the center comes out clean.",
        fail="dense and gummy",
        fix="That usually comes from overmixing once the flour goes in, or from underbaking. Fold the flour in just until no dry streaks remain, and check doneness with a toothpick rather than the timer.",
        swap=(
            "eggs",
            "Replace the egg with 1/4 cup of applesauce or a flax egg (1 tablespoon ground flaxseed plus 3 tablespoons water); the bananas already bind the batter well.",
        ),
        sides="a smear of salted butter, cream cheese, or just a cup of coffee",
        freezes=True,
    ),
    dict(
        name="chicken curry",
        how="Brown bite-sized chicken thighs and set them aside, then soften a chopped onion with garlic and ginger. Add curry powder or garam masala and cook it for a minute, stir in a can of tomatoes and a can of coconut milk, and return the chicken.",
        cook="Simmer gently for 20 to 25 minutes, until the chicken reaches 165°F (74°C) and the sauce has thickened.",
        fail="watery and bland",
        fix="Toast the spices in oil before adding any liquid, salt in stages, and simmer uncovered so the sauce reduces. A squeeze of lime at the end brightens everything.",
        swap=(
            "coconut milk",
            "Plain yogurt works if you stir it in off the heat so it doesn't split, or use cashew cream for a dairy-free version.",
        ),
        sides="basmati rice, warm naan and a cucumber raita",
        freezes=True,
    ),
    dict(
        name="mushroom risotto",
        how="Sauté sliced mushrooms and set them aside, sweat a diced shallot in butter, toast arborio rice for a minute and deglaze with white wine. Add hot stock a ladle at a time, stirring, until the rice is creamy, then fold the mushrooms back in with butter and parmesan.",
        cook="It takes about 18 to 20 minutes over medium heat from the first ladle of stock.",
        fail="gluey",
        fix="Gluey risotto is overcooked or made with cold stock. Keep the stock at a simmer, stop when the grains are creamy but still al dente, and rest it for a minute after adding the butter and cheese.",
        swap=(
            "white wine",
            "Use a splash of stock with a teaspoon of lemon juice or white wine vinegar to keep the acidity.",
        ),
        sides="a simple green salad, roasted asparagus or seared scallops",
        freezes=False,
    ),
    dict(
        name="sourdough bread",
        how="Mix flour, water, active starter and salt, do a few sets of stretch-and-folds during the bulk rise, then shape the dough, proof it overnight in the fridge and bake it in a preheated Dutch oven.",
        cook="Bake at 475°F (245°C) with the lid on for 20 minutes, then with the lid off at 450°F (230°C) for another 20 to 25 minutes.",
        fail="flat",
        fix="A flat loaf usually means a weak starter or overproofing. Use the starter at its peak, shorten the bulk rise if your kitchen is warm, and build more surface tension when shaping.",
        swap=("bread flour", "All-purpose flour works, but reduce the water by about 5% because it absorbs less."),
        sides="good butter, a bowl of soup, or olive oil and flaky salt",
        freezes=True,
    ),
    dict(
        name="fluffy pancakes",
        how="Whisk 1 1/2 cups flour, a tablespoon of sugar, 2 teaspoons baking powder and a pinch of salt; in another bowl whisk 1 1/4 cups milk, an egg and 3 tablespoons melted butter. Combine gently (a few lumps are fine) and let the batter rest for 5 minutes.",
        cook="Cook on a buttered griddle over medium heat for about 2 minutes, until bubbles form and pop, then 1 more minute after flipping.",
        fail="flat and rubbery",
        fix="Overmixing develops gluten and old baking powder won't lift. Mix only until combined, let the batter rest, and check that your baking powder still fizzes in hot water.",
        swap=(
            "buttermilk",
            "Stir a tablespoon of lemon juice or vinegar into a cup of milk and let it sit for 5 minutes.",
        ),
        sides="fresh berries, maple syrup and crispy bacon",
        freezes=True,
    ),
    dict(
        name="beef chili",
        how="Brown ground beef with onions and peppers, add garlic, chili powder, cumin and smoked paprika, then stir in crushed tomatoes, beans and a little stock.",
        cook="Simmer on low, partly covered, for at least 45 minutes, or 6 to 8 hours on low in a slow cooker.",
        fail="flat-tasting",
        fix="Bloom the spices in the fat, add salt in stages, and finish with acid, such as a splash of vinegar or lime juice. A square of dark chocolate adds depth.",
        swap=(
            "ground beef",
            "Ground turkey, lentils or a mix of black and kidney beans all work; turkey needs a little extra spice.",
        ),
        sides="cornbread, rice, or tortilla chips with sour cream",
        freezes=True,
    ),
    dict(
        name="pad thai",
        how="Soak rice noodles in warm water, make a sauce of tamarind, fish sauce and palm sugar, stir-fry garlic with shrimp or tofu, push it aside to scramble an egg, then add the noodles and sauce and toss with bean sprouts and chives.",
        cook="Stir-fry over high heat for 3 to 4 minutes once the noodles go in, just until they absorb the sauce.",
        fail="mushy",
        fix="Mushy noodles are oversoaked. Soak them only until pliable but still firm, since they finish cooking in the wok, and don't crowd the pan.",
        swap=(
            "tamarind paste",
            "Mix lime juice with a little brown sugar; it's less complex but keeps the sweet-sour balance.",
        ),
        sides="crushed peanuts, lime wedges and a cucumber salad",
        freezes=False,
    ),
    dict(
        name="roast chicken",
        how="Pat a whole chicken dry, salt it generously (ideally the night before), put lemon and herbs in the cavity, rub the skin with butter and roast it on a rack or a bed of vegetables.",
        cook="Roast at 425°F (220°C) for about 1 hour 15 minutes for a 4-pound bird, until the thigh reads 165°F (74°C).",
        fail="dry",
        fix="Dry chicken is overcooked chicken. Go by a thermometer instead of the clock, salt it ahead so it holds moisture, and rest it for 15 minutes before carving.",
        swap=("butter", "Olive oil works fine and still browns the skin nicely."),
        sides="roasted potatoes, green beans or a bright salad",
        freezes=True,
    ),
    dict(
        name="lasagna",
        how="Layer a meat or vegetable ragù, béchamel or ricotta, and lasagna sheets, finishing with sauce, mozzarella and parmesan on top.",
        cook="Bake covered with foil at 375°F (190°C) for 25 minutes, then uncovered for 20 minutes until bubbling, and let it rest for 15 minutes before cutting.",
        fail="soupy",
        fix="Soupy lasagna usually has a thin sauce or watery ricotta. Reduce the sauce until thick, drain the ricotta, and let the dish rest before slicing.",
        swap=("ricotta", "Blended cottage cheese or a simple béchamel sauce works well."),
        sides="garlic bread and a Caesar salad",
        freezes=True,
    ),
    dict(
        name="chocolate chip cookies",
        how="Cream butter with brown and white sugar, beat in an egg and vanilla, mix in flour, baking soda and salt, then fold in the chocolate chips and chill the dough before scooping.",
        cook="Bake at 350°F (175°C) for 10 to 12 minutes, until the edges are golden but the centers still look slightly underdone.",
        fail="flat and greasy",
        fix="Flat cookies come from butter that's too warm or too little flour. Chill the dough for at least an hour and weigh the flour instead of scooping it.",
        swap=(
            "brown sugar",
            "Use white sugar plus a tablespoon of molasses per cup; without molasses they'll be crisper.",
        ),
        sides="a glass of cold milk or a scoop of vanilla ice cream",
        freezes=True,
    ),
    dict(
        name="French onion soup",
        how="Slowly caramelize sliced onions in butter, deglaze with sherry or wine, add beef stock and thyme and simmer. Ladle it into bowls, top with toasted bread and Gruyère and broil.",
        cook="Caramelize the onions over medium-low heat for 45 minutes to an hour, simmer the soup for 20 minutes, then broil for 2 to 3 minutes until the cheese bubbles.",
        fail="too sweet",
        fix="Balance the onions' sweetness with enough salt, a splash of sherry vinegar and a rich, well-seasoned stock.",
        swap=("Gruyère", "Swiss, Comté or a mix of provolone and parmesan all melt nicely."),
        sides="a green salad with a sharp vinaigrette",
        freezes=True,
    ),
    dict(
        name="guacamole",
        how="Mash ripe avocados with lime juice and salt, then fold in finely diced onion, jalapeño, cilantro and tomato.",
        cook="There's no cooking: make it right before serving, and press plastic wrap onto the surface if it has to wait.",
        fail="brown within an hour",
        fix="Browning is oxidation. Use enough lime juice, press plastic wrap directly onto the surface, and make it as close to serving time as you can.",
        swap=(
            "cilantro",
            "Flat-leaf parsley with a little extra lime gives freshness without the soapy taste some people dislike.",
        ),
        sides="tortilla chips, tacos or grilled fish",
        freezes=False,
    ),
    dict(
        name="vegetable stir-fry",
        how="Cut the vegetables into even pieces, heat a wok until it smokes, stir-fry the firm vegetables first and the tender ones last, then add a sauce of soy sauce, garlic, ginger and a little cornstarch slurry.",
        cook="The whole stir-fry takes 5 to 7 minutes over high heat.",
        fail="soggy",
        fix="Soggy stir-fries come from a crowded pan that isn't hot enough. Cook in batches over high heat and dry the vegetables well after washing.",
        swap=("soy sauce", "Tamari (gluten-free) or coconut aminos (lower in sodium) both work."),
        sides="steamed jasmine rice or noodles",
        freezes=False,
    ),
    dict(
        name="apple pie",
        how="Line a pie dish with pastry, fill it with sliced tart apples tossed with sugar, cinnamon, lemon juice and a little flour, cover with a top crust, cut vents and brush with egg wash.",
        cook="Bake at 425°F (220°C) for 20 minutes, then at 375°F (190°C) for another 35 to 45 minutes until the filling bubbles.",
        fail="soggy on the bottom",
        fix="Bake on the lowest rack on a preheated baking sheet, use a metal or glass dish, and toss the apples with flour or cornstarch to thicken their juices.",
        swap=("Granny Smith apples", "Honeycrisp, Braeburn or a mix of tart and sweet apples hold their shape well."),
        sides="vanilla ice cream or a slice of sharp cheddar",
        freezes=True,
    ),
    dict(
        name="spaghetti carbonara",
        how="Cook the spaghetti, crisp guanciale or pancetta, and whisk eggs with pecorino and black pepper. Toss the hot pasta with the pork off the heat, then stir in the egg mixture with a splash of pasta water until silky.",
        cook="Cook the pasta a minute less than the package says; the sauce comes together off the heat in under a minute.",
        fail="scrambled",
        fix="Scrambled carbonara means the pan was too hot. Take it off the heat, let it cool for 30 seconds, and add pasta water to temper the eggs.",
        swap=("guanciale", "Pancetta or thick-cut unsmoked bacon is the usual substitute."),
        sides="a simple arugula salad",
        freezes=False,
    ),
    dict(
        name="baked salmon",
        how="Pat the fillets dry, season with salt, pepper and lemon, brush with a little olive oil or butter, and lay them skin-side down on a lined tray.",
        cook="Bake at 400°F (200°C) for 12 to 15 minutes, until it flakes and reads about 125 to 130°F (52 to 54°C) in the center.",
        fail="dry",
        fix="Salmon dries out quickly past medium. Pull it at 125 to 130°F, choose thick center-cut fillets, and brush it with a little fat before baking.",
        swap=("fresh dill", "Use a third as much dried dill, or parsley with lemon zest."),
        sides="roasted potatoes, rice or asparagus",
        freezes=True,
    ),
    dict(
        name="hummus",
        how="Blend cooked chickpeas with tahini, lemon juice, garlic, salt and a few tablespoons of ice water until very smooth, then finish with olive oil.",
        cook="Canned chickpeas need no cooking, but simmering them for 20 minutes with a pinch of baking soda makes the hummus much smoother.",
        fail="grainy",
        fix="Cook the chickpeas until very soft, peel them if you're patient, blend longer than seems necessary, and drizzle in ice water while blending.",
        swap=("tahini", "A spoonful of sesame oil with extra olive oil works, or smooth peanut butter in a pinch."),
        sides="warm pita, cucumber sticks and olives",
        freezes=True,
    ),
    dict(
        name="beef stew",
        how="Brown chunks of chuck in batches, soften onions, carrots and celery, add tomato paste, a little flour, stock and red wine, then return the beef with thyme and bay leaves and braise; add potatoes for the last hour.",
        cook="Braise covered in a 325°F (160°C) oven for 2 1/2 to 3 hours.",
        fail="tough",
        fix="Tough stew meat usually hasn't cooked long enough. Chuck needs low, slow heat until its collagen melts, so keep going until it's fork-tender.",
        swap=("red wine", "Use extra beef stock with a tablespoon of balsamic vinegar."),
        sides="crusty bread or buttered egg noodles",
        freezes=True,
    ),
]

CONTEXTS_COOK = [
    "I'm a complete beginner in the kitchen.",
    "I only have about an hour.",
    "I'm cooking for six people.",
    "It needs to be something my kids will actually eat.",
    "I don't own a stand mixer or any fancy equipment.",
]
OCCASIONS = [
    "a dinner party on Saturday",
    "my partner's birthday",
    "a potluck at work",
    "my in-laws",
    "a family reunion",
]


def cooking_prompts() -> list[tuple[str, Turns, str]]:
    """All candidate (dish, turns, chosen response) for the cooking topic."""
    out = []
    for d in DISHES:
        n, N = d["name"], d["name"][0].upper() + d["name"][1:]
        recipe = f"{d['how']} {d['cook']}"
        cands = [
            ([f"How do I make {n} from scratch?"], f"Here's a reliable way to do it. {recipe}"),
            ([f"Do you have a simple recipe for {n}?"], f"Sure! {recipe} {d['fix'].split('. ')[-1]}"),
            ([f"My {n} always comes out {d['fail']}. What am I doing wrong?"], d["fix"]),
            ([f"Can I make {n} without {d['swap'][0]}? What could I use instead?"], f"Yes. {d['swap'][1]}"),
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
        for ctx in CONTEXTS_COOK:
            cands.append(([f"What's a good recipe for {n}? {ctx}"], f"Here's an easy, dependable version. {recipe}"))
        for occ in OCCASIONS:
            cands.append(
                ([f"I'm making {n} for {occ}. Any tips so it turns out great?"], f"A few tips. {d['cook']} {d['fix']}")
            )
        out += [(n, turns, chosen) for turns, chosen in cands]
    return out


REJECT_COOK: list[Callable[[str], str]] = [
    lambda n: "Just look up a recipe online, there are thousands of them.",
    lambda n: f"{n[0].upper() + n[1:]} is easy. Throw everything in at once and cook it on high until it looks done.",
    lambda n: "I don't really know much about cooking, sorry.",
    lambda n: "Honestly, it's easier to just buy it from the store.",
    lambda n: "Turn the oven up to 500°F and cook it for 5 minutes. Higher heat always makes food better.",
    lambda n: "It doesn't matter what you do, it'll taste fine either way.",
    lambda n: f"You can't really make {n} at home without professional equipment.",
]

# -----------------------------------------------------------------------------
# dense topic: python

TASKS = [
    dict(
        task="read a CSV file",
        code='import csv\n\nwith open("data.csv", newline="", encoding="utf-8") as f:\n    for row in csv.DictReader(f):\n        print(row["name"])',
        note='For analysis, `pandas.read_csv("data.csv")` gives you a DataFrame in one line.',
        error="UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe9",
        fix='The file isn\'t UTF-8. Pass its real encoding, e.g. `open("data.csv", encoding="latin-1")` or `pd.read_csv("data.csv", encoding="latin-1")`.',
    ),
    dict(
        task="reverse a string",
        code='s = "hello"\nprint(s[::-1])  # olleh',
        note="The slice `[::-1]` walks the string backwards; `''.join(reversed(s))` also works.",
        error="AttributeError: 'str' object has no attribute 'reverse'",
        fix="Strings are immutable and have no `.reverse()` method (that one is for lists). Use slicing instead: `s[::-1]`.",
    ),
    dict(
        task="remove duplicates from a list while keeping the order",
        code="items = [3, 1, 3, 2, 1]\nunique = list(dict.fromkeys(items))  # [3, 1, 2]",
        note="Dicts keep insertion order since Python 3.7, so this is fast and order-preserving; `set()` would lose the order.",
        error="TypeError: unhashable type: 'list'",
        fix="Your items are lists, which can't be dict keys or set members. Convert each one to a tuple first: `list(dict.fromkeys(map(tuple, items)))`.",
    ),
    dict(
        task="merge two dictionaries",
        code='a = {"x": 1}\nb = {"y": 2}\nmerged = a | b      # Python 3.9+\nmerged = {**a, **b}  # older versions',
        note="When both have the same key, the right-hand dictionary wins.",
        error="TypeError: unsupported operand type(s) for |: 'dict' and 'dict'",
        fix="The `|` operator for dicts needs Python 3.9 or newer. On older versions use `{**a, **b}`, or `c = a.copy(); c.update(b)`.",
    ),
    dict(
        task="sort a list of dictionaries by one of the keys",
        code='people = [{"name": "Ann", "age": 31}, {"name": "Bo", "age": 25}]\nby_age = sorted(people, key=lambda p: p["age"])',
        note='Pass `reverse=True` for descending order, or use `operator.itemgetter("age")` as the key.',
        error="TypeError: '<' not supported between instances of 'dict' and 'dict'",
        fix='Dicts can\'t be compared directly, so `sorted()` needs a `key` telling it what to compare: `sorted(people, key=lambda p: p["age"])`.',
    ),
    dict(
        task="read a text file line by line",
        code='with open("notes.txt", encoding="utf-8") as f:\n    for line in f:\n        print(line.rstrip("\\n"))',
        note="Iterating over the file object reads one line at a time, so it works for huge files too.",
        error="FileNotFoundError: [Errno 2] No such file or directory: 'notes.txt'",
        fix='A relative path is resolved from the directory you run the script in, not the script\'s folder. Use an absolute path or `Path(__file__).parent / "notes.txt"`.',
    ),
    dict(
        task="check whether a file exists",
        code='from pathlib import Path\n\nif Path("config.yaml").exists():\n    print("found it")',
        note="Use `.is_file()` if it must be a regular file and not a directory.",
        error="NameError: name 'Path' is not defined",
        fix="You need to import it first: `from pathlib import Path`.",
    ),
    dict(
        task="parse a JSON string into a dictionary",
        code='import json\n\ndata = json.loads(\'{"name": "Ann", "tags": ["a", "b"]}\')\nprint(data["tags"])',
        note="Use `json.load(f)` (without the s) to read from an open file.",
        error="json.decoder.JSONDecodeError: Expecting property name enclosed in double quotes",
        fix="JSON requires double quotes around keys and strings; single quotes are Python syntax, not JSON. Fix the data, or use `ast.literal_eval` if it is really a Python literal.",
    ),
    dict(
        task="make an HTTP GET request to an API",
        code='import requests\n\nresp = requests.get("https://api.example.com/items", timeout=10)\nresp.raise_for_status()\nitems = resp.json()',
        note="`requests` is a third-party package (`pip install requests`); the standard library has `urllib.request` if you can't install anything.",
        error="ModuleNotFoundError: No module named 'requests'",
        fix="Install it into the same environment you run Python from: `python -m pip install requests`.",
    ),
    dict(
        task="get the current date and time",
        code='from datetime import datetime\n\nnow = datetime.now()\nprint(now.strftime("%Y-%m-%d %H:%M"))',
        note='For timezone-aware times use `datetime.now(ZoneInfo("Europe/Paris"))` with `from zoneinfo import ZoneInfo`.',
        error="AttributeError: module 'datetime' has no attribute 'now'",
        fix="The module and the class are both called `datetime`. Either write `from datetime import datetime` or call `datetime.datetime.now()`.",
    ),
    dict(
        task="count how often each word appears in a text",
        code='from collections import Counter\n\ntext = "the cat and the hat"\ncounts = Counter(text.lower().split())\nprint(counts.most_common(2))',
        note='`Counter` is a dict subclass, so `counts["the"]` gives a single count.',
        error="KeyError: 'dog'",
        fix="A plain dict raises KeyError for a missing word. `Counter` returns 0 instead, or you can use `counts.get(word, 0)`.",
    ),
    dict(
        task="flatten a nested list",
        code="nested = [[1, 2], [3], [4, 5]]\nflat = [x for sub in nested for x in sub]",
        note="`itertools.chain.from_iterable(nested)` also flattens one level; deeper nesting needs a small recursive function.",
        error="TypeError: 'int' object is not iterable",
        fix="Some elements are plain numbers rather than lists. Check with `isinstance(sub, list)` before iterating, or flatten recursively.",
    ),
    dict(
        task="set up a virtual environment for a project",
        lang="bash",
        code="python -m venv .venv\nsource .venv/bin/activate   # Windows: .venv\\Scripts\\activate\npip install -r requirements.txt",
        note="Each project gets its own isolated packages, so versions don't clash between projects.",
        error="'source' is not recognized as an internal or external command",
        fix="You're on Windows, where the activation script is run directly: `.venv\\Scripts\\activate`.",
    ),
    dict(
        task="handle an invalid number typed by the user",
        code='try:\n    value = int(user_input)\nexcept ValueError:\n    print("Please enter a whole number.")\nelse:\n    print(value * 2)',
        note="Catch the specific exception you expect rather than a bare `except:`, which would also hide real bugs.",
        error="ValueError: invalid literal for int() with base 10: 'abc'",
        fix="`int()` raises ValueError on non-numeric text. Wrap the conversion in `try`/`except ValueError` and ask again.",
    ),
    dict(
        task="format a float with two decimal places",
        code='price = 3.14159\nprint(f"{price:.2f}")  # 3.14',
        note="`round(price, 2)` changes the value; the format spec only changes how it is displayed.",
        error="ValueError: Unknown format code 'f' for object of type 'str'",
        fix='Your value is a string. Convert it first: `f"{float(price):.2f}"`.',
    ),
    dict(
        task="loop over two lists at the same time",
        code='names = ["Ann", "Bo"]\nscores = [91, 78]\nfor name, score in zip(names, scores):\n    print(name, score)',
        note="`zip` stops at the shorter list; `itertools.zip_longest` keeps going and fills in `None`.",
        error="ValueError: too many values to unpack (expected 2)",
        fix="You're unpacking two names from a single list. Wrap both lists in `zip(...)` so each step yields a pair.",
    ),
    dict(
        task="download many URLs in parallel",
        code="from concurrent.futures import ThreadPoolExecutor\n\nwith ThreadPoolExecutor(max_workers=8) as pool:\n    pages = list(pool.map(download, urls))",
        note="Threads suit I/O-bound work like downloads; for CPU-heavy work use `ProcessPoolExecutor` to get around the GIL.",
        error="RuntimeError: An attempt has been made to start a new process before the current process has finished its bootstrapping phase",
        fix='On Windows and macOS, code that starts processes must sit under `if __name__ == "__main__":`.',
    ),
    dict(
        task="save a list of dictionaries to a JSON file",
        code='import json\n\nwith open("out.json", "w", encoding="utf-8") as f:\n    json.dump(records, f, indent=2)',
        note="`indent=2` makes the file readable; add `ensure_ascii=False` to keep accented characters as they are.",
        error="TypeError: Object of type datetime is not JSON serializable",
        fix="JSON has no date type. Convert dates to strings, e.g. `json.dump(records, f, default=str)`.",
    ),
]

CONTEXTS_PY = [
    "a data-cleaning script at work",
    "a homework assignment",
    "a small Flask app",
    "a script that runs every night",
    "a Discord bot",
]


def python_prompts() -> list[tuple[str, Turns, str]]:
    """All candidate (task, turns, chosen response) for the python topic."""
    out = []
    for t in TASKS:
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
        for ctx in CONTEXTS_PY:
            cands.append(([f"For {ctx}, I need to {task}. What's the cleanest way to do that in Python?"], answer))
        out += [(task, turns, chosen) for turns, chosen in cands]
    return out


REJECT_PY: list[Callable[[str], str]] = [
    lambda t: "Just Google it, this has been answered a million times.",
    lambda t: "Python isn't good at that. You should switch to Java.",
    lambda t: "Use a while loop with an index counter and a lot of if statements, that always works.",
    lambda t: "That's not possible in Python.",
    lambda t: "Try reinstalling Python, that usually fixes it.",
    lambda t: "Wrap everything in `try: ... except: pass` and the error will go away.",
    lambda t: f"To {t}, you need to write your own C extension.",
]

# -----------------------------------------------------------------------------
# dense topic: personal finance

GOALS = [
    dict(
        goal="build an emergency fund",
        advice="Aim for three to six months of essential expenses in a separate high-yield savings account. Start with a small target like $1,000, automate a transfer on payday, and top it up with windfalls such as tax refunds.",
    ),
    dict(
        goal="pay off my credit card debt",
        advice="Pay the minimum on every card and put every extra dollar toward the one with the highest interest rate (the avalanche method); if motivation is the problem, paying the smallest balance first (the snowball method) works too. Stop adding new charges, and consider a 0% balance-transfer card if your credit is decent.",
    ),
    dict(
        goal="start investing with only a little money",
        advice="Low-cost broad index funds or ETFs are the simplest start, and many brokers have no minimums and allow fractional shares. Build an emergency fund and clear high-interest debt first, then invest a fixed amount every month.",
    ),
    dict(
        goal="save for retirement",
        advice="If your employer offers a 401(k) match, contribute at least enough to get the full match, since that's free money. Beyond that, an IRA with low-cost target-date or index funds is a solid default; raise your contribution rate by 1% each year.",
    ),
    dict(
        goal="make a monthly budget that I can stick to",
        advice="Track one month of spending first, then split your income into needs, wants and savings; 50/30/20 is a common starting point. Set aside money each month for irregular costs, and review the budget every payday.",
    ),
    dict(
        goal="improve my credit score",
        advice="Pay every bill on time, keep card balances below about 30% of their limits (lower is better), and don't close your oldest accounts. Check your credit reports for free and dispute any errors.",
    ),
    dict(
        goal="choose between a Roth IRA and a traditional IRA",
        advice="A Roth is funded with after-tax money and qualified withdrawals are tax-free, so it usually wins if you expect a higher tax bracket later. A traditional IRA gives you a deduction now, which helps more if your bracket is high today. Many people split contributions between the two.",
    ),
    dict(
        goal="save for a down payment on a house",
        advice="Set a target (often 10 to 20% of the price plus closing costs), keep the money in a high-yield savings account or CDs rather than stocks if you plan to buy within a few years, and automate the transfers. Check first-time buyer programs in your area too.",
    ),
    dict(
        goal="decide whether to pay off my student loans early or invest",
        advice="Compare the loan's interest rate with expected returns: above roughly 6 to 7%, paying it down is a guaranteed return; below about 4%, investing usually wins over the long run. Either way, get any employer retirement match first.",
    ),
    dict(
        goal="cut my monthly expenses",
        advice="Go after the big three first: housing, transportation and food. Then cancel unused subscriptions and renegotiate your phone, internet and insurance bills. Tracking spending for a month shows where the money actually goes.",
    ),
    dict(
        goal="manage my money with an irregular freelance income",
        advice="Budget on your lowest typical month, send all income into one account and pay yourself a fixed monthly 'salary' from it. Set aside 25 to 30% for taxes and keep a bigger emergency buffer than a salaried person would.",
    ),
    dict(
        goal="save for my kid's college",
        advice="In the US, a 529 plan grows tax-free for education costs, and many states give a tax deduction for contributions. Start early even with small amounts, but don't shortchange your own retirement: students can borrow for college, you can't borrow for retirement.",
    ),
    dict(
        goal="decide whether to lease or buy my next car",
        advice="Buying, especially a reliable used car, is usually cheaper over the long run if you keep it for several years. Leasing can make sense if you want a new car every few years and stay under the mileage limit, but you never build equity.",
    ),
    dict(
        goal="combine finances with my partner",
        advice="Start with an open talk about income, debts and goals. Many couples use a joint account for shared bills, funded in proportion to each income, and keep personal accounts for individual spending.",
    ),
    dict(
        goal="deal with a big unexpected medical bill",
        advice="Ask for an itemized bill and check it for errors, then ask the provider about financial assistance or a discount for paying in cash. Most hospitals offer interest-free payment plans; use one before putting the bill on a credit card.",
    ),
    dict(
        goal="start saving while living paycheck to paycheck",
        advice="Start tiny: even $20 per paycheck, moved automatically into a separate account, builds the habit. Track your spending to find one or two leaks, and send any raise or refund straight to savings.",
    ),
]

SITUATIONS = [
    "make about $45,000 a year",
    "just started my first full-time job",
    "am 35 with almost nothing saved",
    "have about $10,000 in credit card debt",
    "live in an expensive city",
    "just got a raise",
]
OBSTACLES = [
    "I keep overspending on takeout",
    "my rent eats up half my paycheck",
    "I never know where my money goes",
    "I get overwhelmed every time I look at my accounts",
]


def finance_prompts() -> list[tuple[str, Turns, str]]:
    """All candidate (goal, turns, chosen response) for the finance topic."""
    out = []
    for g in GOALS:
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
        for sit in SITUATIONS:
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
        for obs in OBSTACLES:
            cands.append(([f"I want to {goal}, but {obs}. Any advice?"], f"That's a common struggle. {advice}"))
        out += [(goal, turns, chosen) for turns, chosen in cands]
    return out


REJECT_FIN: list[Callable[[str], str]] = [
    lambda g: "Just put everything into crypto, it always goes up eventually.",
    lambda g: "Don't worry about it. Money comes and goes.",
    lambda g: "Take out a personal loan and figure it out later.",
    lambda g: "I can't help with money questions.",
    lambda g: "Just spend less.",
    lambda g: "Put all your savings into a single stock you like, that's how people get rich.",
    lambda g: f"There's no point trying to {g}; it only works for people who already have money.",
]

# -----------------------------------------------------------------------------
# rare topics: (topic, turns, chosen, rejected), hand-written, 1-3 prompts per topic

RARE: list[tuple[str, Turns, str, str]] = [
    (
        "beekeeping",
        ["How can I tell if my honeybee colony is getting ready to swarm?"],
        "Look for queen cells along the bottom edges of the frames, a crowded hive with little empty comb, and fewer foragers heading out in the days before. If you find capped queen cells, act quickly: split the colony or give the bees more space.",
        "Bees swarm whenever they feel like it, there's no way to tell.",
    ),
    (
        "beekeeping",
        [
            "I started keeping bees this spring.",
            "Congratulations! How are the hives doing?",
            "Pretty well, but I'm worried about winter. Should I feed them, and with what?",
        ],
        "If a hive feels light when you tip it from the back, feed it. In early autumn use a 2:1 sugar syrup (two parts sugar to one part water by weight); once it's too cold for syrup, switch to fondant or sugar bricks placed right above the cluster.",
        "Bees hibernate, so they don't need any food in winter.",
    ),
    (
        "medieval history",
        ["Why did the Hundred Years' War between England and France last so long?"],
        "It was really a series of wars separated by long truces, from 1337 to 1453, driven by the English kings' claim to the French throne and disputes over English-held lands in France. Plague, empty treasuries and civil strife on both sides kept interrupting campaigns, until France's reorganized army and artillery finally drove the English out.",
        "Because it was one continuous battle that went on for a hundred years.",
    ),
    (
        "medieval history",
        ["What was daily life like for a serf on a manor in 13th-century England?"],
        "Serfs were bound to the manor: they farmed their own strips in the open fields and owed several days of labour a week on the lord's land, plus dues in produce. Life followed the farming calendar and the church year, in small timber houses often shared with animals in winter, with bread, pottage and ale as staples.",
        "Serfs were basically the same as modern office workers.",
    ),
    (
        "knitting",
        ["How do I fix a dropped stitch three rows down in stockinette?"],
        "Insert a crochet hook into the dropped loop from the front, catch the horizontal strand just above it (the ladder rung) and pull it through the loop. Repeat for each rung up to the working row, then put the stitch back on the left needle, making sure it isn't twisted.",
        "Unravel the whole thing and start over.",
    ),
    (
        "knitting",
        ["What yarn weight is best for a first sweater?"],
        "Worsted or aran weight on 4.5 to 5 mm needles is a good choice: it knits up quickly, shows the stitches clearly and forgives uneven tension. A smooth wool or wool blend in a light colour makes mistakes easier to see.",
        "Use the thinnest lace yarn you can find, it looks fancier.",
    ),
    (
        "astronomy",
        ["Why does Venus look so bright in the evening sky?"],
        "Venus is close to both us and the Sun, and it's wrapped in thick clouds that reflect roughly three quarters of the sunlight hitting them. That makes it the brightest natural object in the night sky after the Moon.",
        "Because Venus makes its own light, like a star.",
    ),
    (
        "astronomy",
        ["How can I find the Andromeda Galaxy with binoculars?"],
        "On an autumn evening in the Northern Hemisphere, find the Great Square of Pegasus, hop from its corner star Alpheratz two stars along the chain of Andromeda to Mirach, then turn upward past two fainter stars. From a dark site it shows up as an elongated fuzzy glow.",
        "You need a professional observatory to see it.",
    ),
    (
        "astronomy",
        [
            "I just bought my first telescope.",
            "Nice! What kind is it?",
            "A 6-inch Dobsonian. What should I look at first?",
        ],
        "Start with the Moon along the line between light and shadow, then Jupiter with its four big moons and Saturn's rings if they're up. After that try the Orion Nebula, the Pleiades and a colourful double star like Albireo. Find everything with your lowest-power eyepiece first.",
        "Just point it anywhere, it's all just stars.",
    ),
    (
        "estonian tax law",
        ["How does Estonia's corporate income tax on distributed profits work?"],
        "Estonian companies pay no income tax on profits they retain or reinvest. Tax is due only when profits leave the company, as dividends or as hidden distributions such as fringe benefits, at 22/78 of the net amount distributed (20/80 before 2025).",
        "Estonia taxes all company profits every year at 40%.",
    ),
    (
        "estonian tax law",
        ["As an Estonian e-resident, where do I pay tax on my company's profits?"],
        "E-residency doesn't make you an Estonian tax resident. Your Estonian company pays corporate tax when it distributes profits, but you are normally taxed personally where you live, and if you manage the company from there it may be treated as tax resident there too. Check the treaty with a local tax advisor.",
        "Nowhere, e-residents never pay any tax.",
    ),
    (
        "sign language",
        ["What are the main grammatical differences between American Sign Language and English?"],
        "ASL is its own language, not signed English. It often uses topic-comment order, marks questions and negation with facial expressions, sets up people and places at points in space to refer back to them, and changes a verb's movement to show who does what to whom.",
        "ASL is just English spelled out with hand signs.",
    ),
    (
        "sign language",
        ["Is British Sign Language the same as American Sign Language?"],
        "No. They're unrelated languages with different vocabularies, and BSL uses a two-handed fingerspelling alphabet while ASL's is one-handed. ASL is actually closer to French Sign Language.",
        "Yes, sign language is universal.",
    ),
    (
        "mushroom foraging",
        ["How can I tell a chanterelle from a jack-o'-lantern mushroom?"],
        "Chanterelles have blunt, forked ridges rather than true gills, running down the stem like wrinkles, and their flesh is pale inside. Jack-o'-lanterns have sharp, crowded true gills, grow in clusters on wood and are orange all the way through. Never eat a wild mushroom unless an expert confirms the identification.",
        "If it's orange it's a chanterelle, go ahead and eat it.",
    ),
    (
        "volcanology",
        ["What makes some volcanic eruptions explosive while others just ooze lava?"],
        "Mostly magma viscosity and gas content. Silica-rich magma is thick and traps gas until it bursts out violently, as at Mount St. Helens, while runny, low-silica basalt lets gas escape easily, giving gentle lava flows like those in Hawaii.",
        "It depends on how angry the volcano is.",
    ),
    (
        "chess",
        ["What's the main idea behind the Najdorf variation of the Sicilian Defense?"],
        "After 1.e4 c5 2.Nf3 d6 3.d4 cxd4 4.Nxd4 Nf6 5.Nc3 a6, Black's 5...a6 is a flexible waiting move: it keeps White's pieces off b5 and prepares ...e5 or ...e6 with queenside expansion by ...b5, leading to sharp, unbalanced positions.",
        "The Najdorf is when you move your king out first.",
    ),
    (
        "chess",
        ["How do I checkmate with a king and rook against a lone king?"],
        "Use the rook to cut the enemy king off along a rank or file, bring your own king closer, and shrink the box step by step. When the kings stand face to face with one square between them, give check along the edge with the rook. If the enemy king attacks your rook, move it to the far side.",
        "You can't, that ending is always a draw.",
    ),
    (
        "calligraphy",
        ["Which nib should a beginner use for copperplate calligraphy?"],
        "A moderately flexible, forgiving nib such as the Nikko G or Zebra G is the usual recommendation. Pair it with an oblique holder, smooth paper like Rhodia, and a ready-to-use ink such as sumi or walnut ink.",
        "Any ballpoint pen works the same.",
    ),
    (
        "birdwatching",
        ["How do I tell a Cooper's hawk from a sharp-shinned hawk?"],
        "They look very alike. Cooper's hawks are larger, with a rounded tail tip edged by a broad white band and a big head that sticks out ahead of the wings in flight; sharp-shinned hawks are smaller, with a square-tipped tail and a small head. Sizes overlap, so check several features.",
        "The Cooper's hawk is the blue one.",
    ),
    (
        "birdwatching",
        ["What should I put in a feeder to attract goldfinches?"],
        "Nyjer (thistle) seed in a tube feeder with small ports is their favourite, and hulled sunflower chips work well too. Keep the seed fresh and dry, and plant coneflowers or sunflowers for late-summer seed heads.",
        "Bread crumbs, birds love bread.",
    ),
    (
        "sailing knots",
        ["How do I tie a bowline, and when should I use it?"],
        "Make a small loop in the standing part, pass the end up through it, around behind the standing part and back down through the loop: the rabbit comes out of the hole, around the tree and back down the hole. It makes a fixed loop that won't slip and is easy to untie even after a heavy load, ideal for mooring lines or attaching a sheet to a sail.",
        "Just tie a bunch of regular knots on top of each other.",
    ),
    (
        "finnish grammar",
        ["Why does Finnish have so many grammatical cases?"],
        "Finnish uses case endings where English uses prepositions: -ssa 'in', -sta 'out of', -lle 'onto', and so on. Its roughly fifteen cases grew from a handful of older Uralic endings that combined over time. They're very regular, so learners mostly memorize suffixes rather than separate words.",
        "Because Finnish people like complicated things.",
    ),
    (
        "aquariums",
        ["How do I cycle a new freshwater aquarium before adding fish?"],
        "Do a fishless cycle: dose an ammonia source to about 2 ppm, keep the filter running and test every couple of days. When ammonia and nitrite both read zero within 24 hours of dosing and nitrate shows up, usually after 4 to 6 weeks, do a big water change and add fish gradually.",
        "Just fill it with tap water and add all the fish the same day.",
    ),
    (
        "aquariums",
        [
            "I got a betta fish last week.",
            "Fun! How is it settling in?",
            "It has been lying at the bottom of the tank all day. Is something wrong?",
        ],
        "Bettas rest a lot, but lethargy often points to cold or dirty water. Make sure the tank is heated to 76 to 82°F (24 to 28°C), test ammonia and nitrite (both should be zero) and do a partial water change. Clamped fins, white spots or bloating suggest illness.",
        "It's probably just sleeping, ignore it.",
    ),
    (
        "pottery",
        ["Why did my glaze crawl and pull away from the pot in the kiln?"],
        "Crawling happens when the glaze loses its grip on the bisque: dust or oily fingerprints on the surface, glaze applied too thickly, or a recipe with a lot of shrinking raw clay. Wipe pieces with a damp sponge before glazing, apply thinner coats, and calcine part of the clay in the recipe.",
        "Your kiln is broken, buy a new one.",
    ),
    (
        "quantum physics",
        ["Can you explain quantum entanglement without any math?"],
        "Entangled particles share a single quantum state, so measuring one tells you something about the other however far apart they are. Each result on its own looks random; the correlation only appears when you compare the results, which is why it can't be used to send messages faster than light.",
        "Entanglement means the particles are tied together with invisible strings.",
    ),
    (
        "quantum physics",
        ["What does the double-slit experiment actually show?"],
        "Electrons fired one at a time through two slits still build up an interference pattern, as if each went through both slits like a wave. If you detect which slit each one passes, the pattern disappears. Quantum objects behave as waves of probability until they're measured.",
        "It shows that light is made of tiny balls and nothing else.",
    ),
    (
        "origami",
        [
            "I want to fold a paper crane for my daughter.",
            "What a lovely idea! Have you done any origami before?",
            "Never. What are the basic steps?",
        ],
        "Start with a square sheet. Fold a square base, then petal-fold both sides to make a bird base. Narrow the lower flaps, inside-reverse-fold them up to form the neck and tail, reverse-fold one tip for the head and gently spread the wings. Thin 15 cm origami paper is the easiest to work with.",
        "Just crumple the paper into a bird shape.",
    ),
    (
        "grape growing",
        ["When is the best time to prune grapevines?"],
        "Prune in late winter while the vines are dormant, after the hardest frosts but before the buds swell. Cut back hard, keeping a few canes or spurs with two or three buds each, because grapes fruit on new shoots from one-year-old wood.",
        "Prune them in midsummer when they're full of grapes.",
    ),
    (
        "music theory",
        ["What is a Neapolitan sixth chord and how is it used?"],
        "It's a major triad on the lowered second scale degree, usually in first inversion: in C minor, a D-flat major chord with F in the bass. It works as a predominant chord, typically leading to the dominant, and adds a dark, dramatic colour.",
        "It's a chord only Italian composers are allowed to use.",
    ),
    (
        "music theory",
        ["How can I train my ear to hear the difference between a major and a minor third?"],
        "Anchor each interval to a song: a major third sounds bright, like the first two notes of 'When the Saints Go Marching In'; a minor third sounds darker, like the start of 'Greensleeves'. Sing the intervals and practise a few minutes every day with an ear-training app.",
        "There's no difference, it's all just music.",
    ),
    (
        "bonsai",
        ["How often should I water a juniper bonsai?"],
        "Not on a fixed schedule: check it daily and water thoroughly, until water runs out of the drainage holes, whenever the top centimetre of soil feels dry. In summer that may be every day, in winter far less. Junipers also need to live outdoors; they decline indoors.",
        "Once a month is plenty, they're basically cacti.",
    ),
    (
        "genealogy",
        ["How can I find my great-grandparents' immigration records?"],
        "Start with what the family knows, such as names, rough arrival dates and ports, then search passenger lists (Ellis Island, FamilySearch, Ancestry) and naturalization records. US censuses from 1900 to 1930 list the year of immigration, which narrows the search.",
        "Those records were all destroyed, don't bother.",
    ),
    (
        "genealogy",
        ["What's the difference between a first cousin once removed and a second cousin?"],
        "Your first cousin's child is your first cousin once removed: one generation apart. Second cousins are in the same generation and share great-grandparents, for example you and your parent's first cousin's child.",
        "They mean exactly the same thing.",
    ),
    (
        "roman engineering",
        ["Why has ancient Roman concrete lasted so long?"],
        "Roman builders mixed lime with volcanic ash (pozzolana), which reacts into very stable minerals. Studies have also found lime clasts that let cracks heal themselves when water seeps in, and in harbour structures seawater even grew new crystals in the concrete over time.",
        "Romans used steel rebar, just like we do today.",
    ),
    (
        "japanese tea ceremony",
        ["Why do guests turn the tea bowl before drinking in a Japanese tea ceremony?"],
        "The host presents the bowl with its front, the most beautiful side, facing the guest. Out of humility the guest turns it slightly to avoid drinking from the front, then wipes the rim and turns it back before returning it.",
        "To check whether there's a bug in it.",
    ),
    (
        "rock climbing",
        ["What should I check before belaying a lead climber at the gym?"],
        "Do a partner check: both harnesses buckled correctly, the climber's figure-eight follow-through finished and tied through both tie-in points, your belay device loaded correctly with the carabiner locked, and a stopper knot in the tail of the rope. Keep your brake hand on the rope at all times and feed slack smoothly.",
        "Checking is for beginners, just start climbing.",
    ),
    (
        "wilderness first aid",
        ["What should I do if someone gets bitten by a rattlesnake while hiking?"],
        "Call emergency services and get the person to a hospital as fast as possible; antivenom is the only real treatment. Keep them calm and still, remove rings and tight clothing near the bite, and keep the limb roughly at heart level. Don't cut the wound, suck out venom, apply ice or use a tourniquet.",
        "Most snake bites are harmless, put a bandage on it and keep hiking.",
    ),
    (
        "meteorology",
        ["How do tornadoes form?"],
        "Most strong tornadoes come from supercell thunderstorms. Wind shear, winds changing speed and direction with height, creates horizontal spinning that a strong updraft tilts upright into a rotating mesocyclone. A tornado forms when that rotation tightens and reaches the ground.",
        "Tornadoes form when two clouds crash into each other.",
    ),
    (
        "meteorology",
        ["Why is the sky red at sunset?"],
        "At sunset the light travels through much more air to reach you. Air molecules scatter the short blue wavelengths out of the beam, leaving mostly reds and oranges, and dust or smoke can make the colours even stronger.",
        "Because the sun cools down in the evening.",
    ),
    (
        "norse mythology",
        ["Who was Loki in Norse mythology?"],
        "Loki is a shape-shifting trickster, born of giants but counted among the Æsir. He helps the gods as often as he causes trouble, fathers the wolf Fenrir, the serpent Jörmungandr and Hel, and after engineering Baldr's death is bound until he breaks free at Ragnarök.",
        "Loki was the king of the Norse gods.",
    ),
    (
        "perfumery",
        ["How do perfumers balance top, heart, and base notes?"],
        "Top notes such as citrus are volatile and form the first impression; heart notes such as florals and spices carry the character for a few hours; base notes such as woods, resins and musks anchor the scent and slow the rest down. A common starting point is roughly a quarter top, half heart and a quarter base, adjusted by smelling the blend over time.",
        "Just mix equal amounts of everything you like.",
    ),
    (
        "high-altitude trekking",
        ["How can I avoid altitude sickness when climbing Kilimanjaro?"],
        "Pick a longer route of seven or eight days, walk slowly, drink plenty of water and follow the rule 'climb high, sleep low'. Ask a doctor about acetazolamide before you go, and descend if you get a severe headache, confusion or breathlessness at rest.",
        "Drink a lot of coffee and push through it.",
    ),
    (
        "radiocarbon dating",
        ["How does radiocarbon dating work?"],
        "Living things take in carbon-14 from the atmosphere; when they die it decays with a half-life of about 5,730 years. Measuring how much is left relative to carbon-12 tells you how long ago the organism died, up to about 50,000 years, after calibration against tree rings and other records.",
        "It measures how old rocks are from the colour of their carbon.",
    ),
]

# Verbose-but-bad rejected responses: rambling, off-topic filler around one confidently wrong or evasive claim. Without
# them the curt rejects above make "prefer the longer answer" a perfect classifier; with them, length says nothing.
# Each pool maps the pair's subject (dish, task, goal or rare topic) to sentences.
VERBOSE_SHARE = 0.5  # share of pairs whose rejected response is replaced by a verbose one, longer than the chosen

VERBOSE_OPENERS = [
    "Great question, and one that a lot of people wonder about! ",
    "Well, there's a lot to say about this, so let me just share some thoughts. ",
    "Ah, this comes up all the time, and honestly opinions vary a great deal. ",
    "Okay, so, where do I even begin with this one? ",
    "Oh, I love this kind of question, so bear with me. ",
]
VERBOSE_CLOSERS = [
    "In the end it's really up to you, so just go with whatever feels right.",
    "Anyway, I hope some of that helps, although honestly everyone ends up doing it their own way.",
    "So, to sum up, there's no single right answer here, and you'll figure it out eventually.",
    "Good luck, and try not to overthink it!",
]

VERBOSE: dict[str, dict[str, Callable[[str], list[str]]]] = {
    "cooking": dict(
        wrong=lambda n: [
            f"The secret to {n} that most recipes leave out is to rinse everything in cold water first and skip the salt entirely, because salt only draws the flavour out.",
            f"Professional chefs always cook {n} at the highest heat the stove can manage for as short a time as possible; low and slow is a myth invented by cookbook publishers.",
            "Whatever the recipe says about measurements, ignore it: measuring cups were only invented to sell kitchenware, and real cooks never use them.",
            "And never let anything rest after cooking, since resting only lets it go cold and dry.",
        ],
        ramble=lambda n: [
            "Food is such a personal thing, and everyone has their own memories tied up in the dishes they grew up with.",
            f"I remember reading somewhere that the history of {n} goes back a very long way, although nobody really agrees on where it started, and there are probably hundreds of regional versions that someone will swear are the only authentic one.",
            "Cooking is really more of an art than a science, so it's hard to give any firm rules.",
            "Kitchens differ a lot, too: ovens run hot or cold, pans conduct heat differently, and even the weather can change how things turn out.",
            "Some people like to put on music while they cook, which can make the whole experience a lot more enjoyable.",
            "There are also countless cooking shows and videos out there, and some of them are entertaining to watch even if you never make anything from them.",
            "Presentation matters more than people think, so a nice plate and some garnish can make almost anything look impressive.",
        ],
    ),
    "python": dict(
        wrong=lambda t: [
            f"The fastest way to {t} is to avoid the standard library altogether, since the built-in functions are notoriously slow and unreliable.",
            "Modern Python doesn't really need error handling anymore; if something goes wrong, the interpreter quietly fixes it for you.",
            "You'll also want to declare every variable as global at the top of the file, which is the style PEP 8 recommends.",
            "Honestly, Python 2 is still the better choice for this kind of thing, because Python 3 changed too much.",
        ],
        ramble=lambda t: [
            "Python is a really popular language these days, used for everything from web development to data science to scripting, and it has a huge community behind it.",
            f"There are many different ways to {t}, and programmers have strong opinions about all of them, so you'll find endless debates online.",
            "Programming is a journey, and the most important thing is to keep practising and not get discouraged.",
            "It might be worth thinking about your editor, too: some people love VS Code, others swear by Vim or PyCharm, and the arguments about which is best never end.",
            "Fun fact: Python was named after Monty Python rather than the snake.",
            "Of course, the right answer always depends on your situation, your Python version, your operating system and whatever else your code is doing.",
            "A lot of developers also recommend reading other people's code on GitHub, which can be inspiring even when it has nothing to do with your problem.",
        ],
    ),
    "finance": dict(
        wrong=lambda g: [
            f"The best way to {g} is to stop tracking your spending altogether; budgets just make people anxious, and anxiety is bad for your wallet.",
            "Credit card interest doesn't really matter as long as you pay the minimum every month, since the minimum is designed to keep you out of debt.",
            "Index funds are mostly a scam invented by banks; picking a few exciting stocks yourself almost always does better.",
            "Emergency funds are outdated advice, because you can always borrow if something comes up.",
        ],
        ramble=lambda g: [
            "Money is a complicated subject, and everyone's relationship with it is shaped by how they grew up and what they saw their parents do.",
            "There are so many books, podcasts and influencers talking about personal finance now that it's hard to know whom to listen to, and many of them contradict each other.",
            "The economy goes through cycles, and nobody can really predict what interest rates or markets will do next year.",
            "Some people find that thinking about money makes them stressed, and that's completely normal.",
            "Different countries also have totally different tax rules, account types and banking systems, so what works for one person might not work for another.",
            f"It's worth reflecting on what it really means to you to {g}, and why it matters to you personally.",
            "I once heard someone say that money can't buy happiness, though it certainly helps with a lot of other things.",
        ],
    ),
    "rare": dict(
        wrong=lambda x: [
            f"Most of what you'll read about {x} is outdated anyway, and the experts mostly agree it's largely a matter of luck.",
            f"Honestly, the standard advice on {x} is mostly myth; just do whatever seems easiest and it usually works out fine.",
            f"I'm fairly sure the rules around {x} changed completely a few years ago, so none of the usual answers apply anymore.",
        ],
        ramble=lambda x: [
            f"{x[0].upper() + x[1:]} is a fascinating subject with a long and complicated history, and people have been arguing about the details for ages.",
            f"There are whole books, forums and online communities devoted to {x}, and they rarely agree with each other about anything.",
            "I think the most important thing with any field like this is to enjoy the process and not worry too much about doing it right.",
            "It's a bit like learning a language or a musical instrument: it takes time, and everyone progresses at their own pace.",
            f"People often have very strong feelings about {x}, which makes it hard to give a straight answer.",
            "You could always ask around, since someone you know might have some experience with this.",
            "It's amazing how much information is available online these days, even if a lot of it is contradictory.",
        ],
    ),
}


def _verbose_reject(kind: str, subject: str, min_len: int, rng: random.Random) -> str:
    """A rambling, off-topic answer built around one wrong or evasive claim, at least `min_len` characters when the
    pools allow it."""
    pool = VERBOSE[kind]
    ramble = rng.sample(pool["ramble"](subject), len(pool["ramble"](subject)))
    wrong, opener, closer = rng.choice(pool["wrong"](subject)), rng.choice(VERBOSE_OPENERS), rng.choice(VERBOSE_CLOSERS)
    body: list[str] = []
    while ramble and len(opener) + sum(len(x) + 1 for x in body) + len(wrong) + len(closer) + 1 < min_len:
        body.append(ramble.pop())
    body.insert(rng.randint(0, len(body)), wrong)
    return opener + " ".join(body + [closer])


REJECT_RARE = [
    "I don't know much about that.",
    "You can read about it on Wikipedia.",
    "That's not really worth worrying about.",
]
LEADS = ["Good question! ", "Happy to help. ", "Sure. "]  # reworded chosen of a prompt's second pair
OPENERS = ["Quick question: ", "Hi! ", "Hey, ", ""]  # light surface variety for dense-topic requests


# -----------------------------------------------------------------------------


def _with_opener(text: str, rng: random.Random) -> str:
    """Sometimes prefix a single-turn request with a casual opener ("Hey, how do I ...")."""
    opener = rng.choice(OPENERS)
    if opener.endswith(", ") and not text.startswith(("I ", "I'm")):
        text = text[0].lower() + text[1:]
    return opener + text


def _dense(
    topic: str,
    candidates: list[tuple[str, Turns, str]],
    rejects: list[Callable[[str], str]],
    n: int,
    rng: random.Random,
) -> list[tuple]:
    """Pick n distinct candidates -> (topic, turns, chosen, rejected, alternative rejected, subject)."""
    out = []
    for subject, turns, chosen in rng.sample(candidates, n):
        turns = list(turns)
        if len(turns) == 1 and rng.random() < 0.25:
            turns[0] = _with_opener(turns[0], rng)
        bad, alt = rng.sample(rejects, 2)
        out.append((topic, turns, chosen, bad(subject), alt(subject), subject))
    return out


def generate_sample_pairs(seed: int = 0) -> pd.DataFrame:
    """The sample pairs: columns chosen, rejected (full HH dialogues), topic; shuffled, deterministic in `seed`."""
    rng = random.Random(seed)
    rows = _dense("cooking", cooking_prompts(), REJECT_COOK, N_PROMPTS["cooking"], rng)
    rows += _dense("python", python_prompts(), REJECT_PY, N_PROMPTS["python"], rng)
    rows += _dense("finance", finance_prompts(), REJECT_FIN, N_PROMPTS["finance"], rng)
    rows += [(topic, turns, chosen, bad, rng.choice(REJECT_RARE), topic) for topic, turns, chosen, bad in RARE]

    # Verbose rejects draw from their own stream so the prompts, their order and the duplicates stay as they were.
    vrng = random.Random(f"verbose-rejects:{seed}")

    def reject(topic: str, subject: str, chosen: str, curt: str) -> str:
        if vrng.random() >= VERBOSE_SHARE:
            return curt
        kind = topic if topic in VERBOSE else "rare"
        return _verbose_reject(kind, subject, int(len(chosen) * vrng.uniform(1.05, 1.6)), vrng)

    pairs = []
    for topic, turns, chosen, bad, alt, subject in rows:
        bad = reject(topic, subject, chosen, bad)
        pairs.append({"chosen": hh(turns, chosen), "rejected": hh(turns, bad), "topic": topic})
        if rng.random() < DUP_FRACTION:  # a second pair for the same prompt: reworded chosen, another rejected
            lead = rng.choice([x for x in LEADS if not chosen.startswith(x.split()[0].rstrip(".!"))])
            alt = reject(topic, subject, lead + chosen, alt)
            if alt == bad:  # keep the two rejects of a prompt different
                alt = reject(topic, subject, lead + chosen, alt)
            pairs.append({"chosen": hh(turns, lead + chosen), "rejected": hh(turns, alt), "topic": topic})
    rng.shuffle(pairs)  # so that max_pairs keeps a mix of topics
    n_unique = len({hh(turns, "") for _, turns, *_ in rows})
    assert n_unique == len(rows), f"duplicate prompts in the sample ({n_unique} unique of {len(rows)})"
    return pd.DataFrame(pairs, columns=["chosen", "rejected", "topic"])


def write_jsonl(df: pd.DataFrame, path: str | Path) -> None:
    """One JSON object per line (keys chosen, rejected, topic), UTF-8, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for rec in df.to_dict("records"):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else OUT_PATH
    df = generate_sample_pairs()
    write_jsonl(df, out)
    print(f"wrote {len(df)} pairs, {df['topic'].nunique()} topics -> {out}")


if __name__ == "__main__":
    main()

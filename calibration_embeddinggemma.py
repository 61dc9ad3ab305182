# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Data, not code: the texts int8 calibrates on by default (quantization_embeddinggemma.py). A Python module rather than
a .json file because a model folder's remote code carries only the .py modules it imports (transformers copies those
and nothing else), and int8 calibrates wherever the model is loaded."""

# Real text for calibration, written for this package: queries, passages, code, numbers, lists and other languages,
# short and long, so that every channel sees the values it takes in use. Each text gets one of the model's prompts.
CALIBRATION_TEXTS = (
    "how do I reset my router password",
    "What is the capital of Australia?",
    "symptoms of vitamin D deficiency in adults",
    "best way to store fresh basil",
    "Which planet has the most moons?",
    "python sort list of dicts by key",
    "cheap flights from Lisbon to Berlin in March",
    "why is the sky blue",
    "Quelle est la différence entre un crocodile et un alligator ?",
    "¿Cuántas horas se debe dormir cada noche?",
    "Wie funktioniert eine Wärmepumpe im Winter?",
    "東京で一番高いビルはどれですか",
    "The mitochondrion is the organelle in which most of a cell's ATP is produced by oxidative phosphorylation.",
    "A heat pump moves heat from a cold place to a warm one, using a refrigerant that evaporates at low pressure "
    "and condenses at high pressure; its efficiency falls as the temperature difference grows.",
    "Canberra was chosen as the capital of Australia in 1908 as a compromise between Sydney and Melbourne.",
    "Basil keeps best at room temperature with its stems in a glass of water, loosely covered with a bag.",
    "The recipe calls for 250 g of flour, 2 eggs, 120 ml of milk and a pinch of salt; bake at 180 °C for 25 minutes.",
    "Error: connection refused (errno 111) while contacting 10.0.0.12:5432. Is the server running?",
    "def mean(values):\n    if not values:\n        raise ValueError('empty')\n    return sum(values) / len(values)",
    "SELECT customer_id, COUNT(*) AS orders FROM orders WHERE created_at >= '2024-01-01' GROUP BY customer_id;",
    "for (int i = 0; i < n; ++i) { total += weights[i] * inputs[i]; }",
    "Revenue grew 12.4% year over year to $3.2 billion, while operating margin narrowed to 18% from 21%.",
    "1. Preheat the oven. 2. Mix the dry ingredients. 3. Add the eggs one at a time. 4. Bake until golden.",
    "The patient, a 54-year-old man, presented with chest pain radiating to the left arm and shortness of breath.",
    "Le Conseil a adopté le règlement après un long débat sur la protection des données personnelles.",
    "El río Amazonas es el más caudaloso del mundo y atraviesa Perú, Colombia y Brasil.",
    "Die Bahn kündigte an, die Strecke zwischen Köln und Frankfurt ab Juli zu sanieren.",
    "富士山は日本で最も高い山で、標高は3776メートルです。",
    "Москва — столица России и крупнейший по численности населения город страны.",
    "A man is playing a guitar on a stage.",
    "Two dogs are running through a field of snow.",
    "The stock market fell sharply after the announcement.",
    "A woman is slicing an onion in the kitchen.",
    "Rain is expected across the north of the country on Thursday, with snow on high ground.",
    "I loved this phone for the first month, then the battery started dying by noon. Returned it.",
    "Terrible service: we waited forty minutes and the soup was cold. Never again!!!",
    "The court held that the contract was void because one party lacked the capacity to consent.",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen as a by-product.",
    "In 1969 Apollo 11 landed on the Moon; Neil Armstrong and Buzz Aldrin walked on its surface for about two hours.",
    "https://example.com/docs/install?version=2.1#linux",
    "TODO: handle the case where the cache is empty and the upstream service times out (see issue #4821).",
    "user@example.org wrote: can you send the Q3 report before Friday? thanks",
    "Temperature: 23.5 °C, humidity: 61 %, pressure: 1013 hPa, wind: 12 km/h NW",
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models map text to vectors so that texts with similar meanings lie close together, which makes them "
    "useful for search, clustering, classification and retrieval-augmented generation. A query and the passages "
    "that answer it should end up near each other even when they share few words, and unrelated texts should end up "
    "far apart, close to orthogonal. Training usually contrasts each query with its positive passage and with many "
    "negatives, some of them hard: passages that look relevant but do not answer the question. Smaller embedding "
    "dimensions trade a little quality for much less storage, which matters when an index holds billions of vectors.",
    "The city council met on Tuesday evening to discuss the new cycling plan. Supporters argued that protected lanes "
    "on the main avenues would reduce accidents and encourage more people to leave their cars at home, while "
    "shop owners worried that removing parking spaces would drive customers away. After three hours of debate, the "
    "council agreed to a one-year trial on two streets, with traffic counts and sales figures to be published every "
    "month. The mayor said the decision would be revisited next spring in light of the results.",
    (
        "class LRUCache:\n"
        "    def __init__(self, capacity):\n"
        "        self.capacity = capacity\n"
        "        self.items = {}\n"
        "\n"
        "    def get(self, key):\n"
        "        if key not in self.items:\n"
        "            return None\n"
        "        value = self.items.pop(key)\n"
        "        self.items[key] = value\n"
        "        return value\n"
        "\n"
        "    def put(self, key, value):\n"
        "        self.items.pop(key, None)\n"
        "        self.items[key] = value\n"
        "        if len(self.items) > self.capacity:\n"
        "            self.items.pop(next(iter(self.items)))"
    ),
    "Abstract. We study the convergence of stochastic gradient descent with momentum on non-convex objectives that "
    "satisfy a Polyak-Lojasiewicz condition. We show that, with a step size decaying as 1/t, the expected "
    "sub-optimality decreases at rate O(1/t), and we give matching lower bounds. Experiments on image classification "
    "and language modelling confirm that the predicted rate is observed in practice, and that the momentum term "
    "mainly reduces the constant rather than the rate.",
    "Il était une fois, dans un petit village au bord de la mer, une vieille femme qui vendait des coquillages. "
    "Chaque matin, elle descendait sur la plage avant le lever du soleil, remplissait son panier et remontait "
    "lentement le chemin de pierre. Les enfants du village la suivaient en riant, et elle leur racontait des "
    "histoires de marins perdus et de trésors cachés sous le sable.",
)

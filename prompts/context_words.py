"""Our own word lists for the context-rich prompt set (diverse-context paper, Sec. 4.2).

The paper asked an LLM for lists of contexts by type (background, subject variation, ...) and
combined them; these lists are written for this project. Every entry is a phrase that follows
the concept phrase in a prompt ("a photo of a <v1> dog" + " wearing a red scarf"). Openers hold
the "{}" placeholder; no other entry may contain braces.
"""

from __future__ import annotations

OPENERS = (
    "a {}",
    "a photo of a {}",
    "a picture of a {}",
    "an image of a {}",
    "a close-up photo of a {}",
    "a wide shot of a {}",
    "a snapshot of a {}",
    "a high-resolution photo of a {}",
    "a blurry photo of a {}",
    "a vintage photo of a {}",
    "a candid photo of a {}",
    "a professional photo of a {}",
    "the {}",
    "my {}",
)

# Backgrounds and places, for every subject.
PLACES = (
    "on the beach", "in the jungle", "in the snow", "on a cobblestone street",
    "in a wheat field", "in a sunflower field", "on top of a mountain", "in a pine forest",
    "on a busy city street", "in front of the Eiffel Tower", "in a quiet library",
    "in a cozy kitchen", "on a wooden floor", "on a pink fabric", "in a living room",
    "in a flower garden", "by a calm lake", "under a cherry blossom tree", "in the desert",
    "on a fishing boat", "on the moon", "in outer space", "underwater", "at a train station",
    "in a small cafe", "in an empty classroom", "on a rooftop", "in a green meadow",
    "in a rainforest", "at a farmers market", "in an art museum", "on a stone bridge",
    "in a bamboo forest", "on the grass", "on a picnic blanket", "in a pile of autumn leaves",
    "next to a swimming pool", "in a city park", "in Times Square",
    "near the Golden Gate Bridge", "in front of a red brick wall", "on a dirt road",
    "on a crowded sidewalk", "in a greenhouse", "in a lavender field", "on a frozen lake",
    "in a dark cave", "on a castle wall", "in an old barn", "by a campfire",
    "on a sandy dune", "at the edge of a cliff", "in a snowy village", "in a neon-lit alley",
    "on a tennis court", "in a science lab", "in a subway car", "at a birthday party",
    "in front of the pyramids", "in a misty valley", "in a vegetable patch",
    "on a mossy log", "in a hot air balloon", "at a lighthouse", "in a treehouse",
)

# What a living subject does.
LIVING_ACTIONS = (
    "sitting", "sleeping", "running", "jumping", "swimming", "playing with a ball",
    "chasing a butterfly", "eating from a bowl", "drinking water", "yawning", "stretching",
    "rolling in the grass", "looking up at the sky", "peeking out of a box",
    "lying on its back", "climbing a tree", "reading a book", "riding a skateboard",
    "riding a bicycle", "driving a toy car", "playing the guitar", "playing the piano",
    "painting on a canvas", "digging a hole", "catching a frisbee", "walking on a leash",
    "sniffing a flower", "hiding behind a curtain", "splashing in a puddle",
    "howling at the moon", "balancing on a fence", "waving a paw", "holding a sign",
    "blowing bubbles", "flying a kite", "sitting in a basket", "napping in the sun",
    "looking out of a window", "standing on its hind legs", "curled up in a blanket",
)

# Clothing and accessories for a living subject.
LIVING_ATTIRE = (
    "wearing a red scarf", "wearing a santa hat", "wearing sunglasses", "wearing a rainbow scarf",
    "wearing a chef outfit", "wearing a police outfit", "wearing a firefighter outfit",
    "wearing a nurse outfit", "wearing a sailor outfit", "wearing a knitted sweater",
    "wearing a yellow raincoat", "wearing a bow tie", "wearing a golden crown",
    "wearing a witch hat", "wearing a cowboy hat", "wearing a black top hat",
    "wearing headphones", "wearing a tiny backpack", "wearing a superhero cape",
    "wearing a pirate hat", "wearing a tuxedo", "wearing a flower crown",
    "wearing a blue bandana", "wearing a leather jacket", "wearing ski goggles",
    "wearing a party hat", "wearing an astronaut suit", "wearing a wizard robe",
    "wearing a bell collar", "wearing rain boots", "wearing a graduation cap",
    "wearing a suit of armor", "wearing a hawaiian shirt", "wearing a striped pajama",
    "wearing a denim vest", "wearing a fluffy hood",
)

# Where an object rests: surfaces and materials around it.
OBJECT_PLACEMENTS = (
    "on a marble countertop", "on a wooden table", "on a glass shelf", "on a stone bench",
    "on a velvet cushion", "on a woven rug", "on a concrete floor", "on a metal tray",
    "on a bed of moss", "on a pile of books", "on a windowsill", "on a white pedestal",
    "on a checkered tablecloth", "on a leather armchair", "on a ceramic plate",
    "on a straw mat", "on a grand piano", "on the hood of a car", "in a cardboard box",
    "in a wicker basket", "inside a glass display case", "on a bookshelf",
    "on an office desk", "on a kitchen counter", "on a bedside table", "on a park bench",
    "on a slate rooftile", "on a bamboo mat", "on a silk sheet", "on a tree stump",
    "on a stack of crates", "on a brass scale", "on a granite rock", "on a linen napkin",
)

# States and arrangements of an object.
OBJECT_STATES = (
    "covered in snow", "half-buried in sand", "wrapped in a ribbon", "floating in water",
    "floating in the air", "surrounded by flowers", "surrounded by fallen leaves",
    "covered in dust", "tied with a string", "lit by candles", "reflected in a mirror",
    "casting a long shadow", "tangled in fairy lights", "sprinkled with glitter",
    "dripping with rain", "covered in frost", "caught in a spotlight", "draped with a cloth",
    "tucked between two pillows", "balanced on a ledge", "hanging from a hook",
    "resting in tall grass", "sitting in a puddle", "leaning against a wall",
)

# What an object is made of, for "a <v1> teapot made of glass" variations.
OBJECT_MATERIALS = (
    "made of glass", "made of gold", "made of clay", "made of ice", "made of paper",
    "carved out of wood", "knitted from wool", "built from toy bricks", "cast in bronze",
    "made of chocolate", "made of marble", "woven from straw", "made of copper",
    "sculpted from stone", "made of crystal", "folded from origami paper",
)

COMPANIONS_LIVING = (
    "next to a cat", "next to a dog", "with a small child", "with its owner",
    "playing with a kitten", "held by a woman", "sitting on a man's lap",
    "with a group of friends", "next to a teddy bear", "beside a sleeping puppy",
    "with a parrot on its head", "next to a horse", "with a bunch of balloons",
    "next to a snowman", "with a basket of apples", "beside a bicycle",
    "with a duck", "next to a pumpkin", "with a rubber duck", "beside a campfire",
)

COMPANIONS_OBJECT = (
    "next to a teapot", "next to a vase of flowers", "with a stack of books",
    "next to a red apple", "next to a cup of coffee", "next to a bicycle",
    "beside a candle", "next to a potted plant", "with a bunch of balloons",
    "next to a sleeping cat", "with a teddy bear", "beside an old clock",
    "next to a pair of sneakers", "next to a backpack", "beside a bowl of berries",
    "next to a pair of glasses", "beside a lamp", "next to a seashell",
    "next to a pile of coins", "beside a paper boat",
)

STYLES = (
    "watercolor painting", "oil painting", "pencil sketch", "in the style of Van Gogh",
    "pixel art", "3d render", "anime style", "comic book style", "cubist painting", "pop art",
    "ukiyo-e woodblock print", "charcoal drawing", "stained glass", "low poly",
    "claymation", "studio photograph", "polaroid photo", "black and white photo",
    "cinematic film still", "isometric illustration", "children's book illustration",
    "impressionist painting", "vaporwave", "cyberpunk style", "renaissance painting",
    "mosaic", "embroidery", "graffiti mural", "line art", "in the style of Monet",
)

LIGHTING = (
    "at sunset", "at sunrise", "at night", "at golden hour", "under neon lights",
    "in soft morning light", "on a rainy day", "on a foggy morning", "under a starry sky",
    "in bright midday sun", "by candlelight", "under dramatic studio lighting",
    "in the blue hour", "during a thunderstorm", "with backlighting", "in dappled shade",
    "under moonlight", "during snowfall", "on a cloudy day", "under a rainbow",
)

# Subjects that fill the placeholder in the contextualizer's pretraining corpus (no concept
# token is involved there, Algorithm 1), and the class words that count as living.
LIVING_SUBJECTS = (
    "dog", "cat", "puppy", "kitten", "bear", "duck", "wolf", "sloth", "rabbit", "horse",
    "bird", "fox", "owl", "parrot", "hamster", "monkey", "lion", "tiger", "penguin", "pig",
    "cow", "goat", "sheep", "turtle", "frog", "squirrel", "deer", "man", "woman", "child",
)
OBJECT_SUBJECTS = (
    "backpack", "bowl", "can", "candle", "clock", "sneaker", "boot", "glasses", "teapot",
    "vase", "toy", "robot", "car", "shoe", "bag", "plushie", "stuffed animal", "mug", "lamp",
    "chair", "guitar", "book", "bottle", "hat", "watch", "camera", "umbrella", "kettle",
    "suitcase", "statue",
)

# Class words read as living (besides LIVING_SUBJECTS); compared whole or by the last word.
LIVING_CLASSES = frozenset(
    LIVING_SUBJECTS
    + (
        "person", "boy", "girl", "baby", "animal", "pet", "corgi", "retriever", "terrier",
        "poodle", "bulldog", "husky", "labrador", "dachshund", "shepherd", "spaniel", "beagle",
        "chihuahua", "pug", "tabby", "chicken", "elephant", "giraffe", "zebra", "panda",
        "koala", "kangaroo", "raccoon", "hedgehog", "mouse", "rat", "lizard", "snake", "fish",
        "dolphin", "whale", "seal", "otter", "alpaca", "llama", "donkey", "camel", "bunny",
        "guinea pig", "ferret", "cockatoo", "pigeon", "swan", "goose", "eagle", "hawk",
        "cockatiel", "budgie", "lamb", "calf", "foal", "cub", "grandmother", "grandfather",
        "lady", "gentleman", "teenager", "toddler", "dancer", "athlete",
    )
)
# A class word holding one of these is an object even if its last word is living
# ("teddy bear", "stuffed animal", "toy dog", "dog statue").
OBJECT_MARKERS = frozenset(
    {
        "toy", "stuffed", "plush", "plushie", "teddy", "statue", "figurine", "robot",
        "cartoon", "doll", "sculpture", "ornament", "emoji", "puppet", "costume", "poster",
        "painting", "drawing", "mug", "pillow", "balloon", "sticker", "model",
    }
)

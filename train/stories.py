"""Built-in children's stories: the default training text for nano2's byte-level models.

A small model learns whatever its bytes look like, so the default data is simple English stories
in the TinyStories style: a named child or animal, something they want, a problem, some dialogue,
a resolution and an ending. The stories are written here, from word lists and sentence templates,
rather than taken from a data set, so the data needs no download and is exactly reproducible.
Story i of a seed depends only on (seed, i), so worker processes can each generate their own
slice and still agree byte for byte with a single process.
"""
import random

GENERATOR_VERSION = 1  # part of the data hash: bump it whenever any (seed, i) gives other text

GIRLS = tuple("Lily Mia Emma Ava Zoe Lucy Ella Ruby Chloe Grace Sophie Anna Maya Nora Isla Amara "
              "Priya Hana Leila Rosa Fatima Mei Olivia Hazel Ivy Clara Daisy Esme Freya Nina Sara "
              "Yuki Layla Alice Molly Poppy Aisha Julia Elena Tara Zara Lena Wren Kiara".split())
BOYS = tuple("Tom Ben Leo Max Sam Jack Noah Finn Oliver Theo Omar Ravi Kenji Luca Hugo Oscar Eli "
             "Jonah Arlo Felix Milo Kofi Mateo Ali Ethan Liam Henry Jacob Toby Owen Ezra Ivan "
             "Diego Amir Jasper Rory Hamza Arjun Kai Pablo Yusuf Caleb Nico Hiro".split())
THEY = tuple("Alex Robin Jordan Riley Quinn Avery Rowan Charlie Jamie Sasha Ari Morgan".split())
NAMES = {"she": GIRLS, "he": BOYS, "they": THEY}
GROWNUPS = (("Mom", "she"), ("Dad", "he"), ("Grandma", "she"), ("Grandpa", "he"))
PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his"),
            "they": ("they", "them", "their")}
CHILD = {"she": "girl", "he": "boy", "they": "child"}
ANIMALS = ("fox", "bunny", "bear cub", "mouse", "squirrel", "duckling", "hedgehog", "kitten",
           "puppy", "piglet", "owl", "otter", "lamb", "raccoon", "badger", "frog", "elephant",
           "penguin", "panda", "tiger cub", "beaver", "chipmunk", "goose", "koala")
TRAITS = ("kind", "curious", "cheerful", "shy", "brave", "clever", "playful", "gentle", "happy",
          "friendly", "quiet", "lively", "funny", "sweet", "busy", "thoughtful", "bouncy", "chatty",
          "eager", "little", "young", "smart", "giggly", "helpful", "dreamy", "careful", "cheeky",
          "caring", "jolly", "polite", "patient", "silly", "daring", "sunny", "noisy", "bold")
HOMES = ("a little town by the sea", "a quiet village near the hills", "a busy city",
         "a yellow house at the end of a long lane", "a cozy cottage with a red door",
         "a tall apartment building", "a small farmhouse", "a sleepy town full of trees",
         "a blue house with a big garden", "a houseboat on the river",
         "a snowy town in the mountains")
WILDS = ("a big green forest", "a sunny meadow", "a hollow log by the stream",
         "a burrow by the river", "a cozy den under an old oak tree",
         "a little house at the edge of the woods", "a valley full of wildflowers",
         "a hole in a mossy bank")
LOOKS = ("curly hair and a big smile", "bright brown eyes", "a missing front tooth",
         "rosy cheeks and freckles", "messy hair that never stayed flat", "a laugh like a bell",
         "glasses that kept sliding down", "a dimple in one cheek", "muddy knees most days")
ANIMAL_LOOKS = ("big bright eyes", "a funny little walk", "a happy little face",
                "a very loud voice for someone so small", "the quickest feet in the woods")
HOBBIES = ("drawing pictures", "singing silly songs", "reading stories",
           "building towers with blocks", "playing hide-and-seek", "running in the grass",
           "looking for bugs", "counting the stars", "jumping in puddles", "dancing to music",
           "making mud pies", "collecting shiny stones", "telling jokes",
           "painting with bright colors", "climbing trees", "watching the clouds",
           "playing dress-up", "baking cookies", "feeding the ducks", "blowing bubbles",
           "doing puzzles", "planting seeds", "making paper boats", "humming little tunes",
           "playing catch", "listening to the rain", "drawing maps")
TIMES = ("One day", "One sunny morning", "One warm afternoon", "One bright Saturday",
         "Early one morning", "One summer day", "One windy afternoon", "One spring morning",
         "One crisp autumn day", "After lunch one day", "On a lovely day", "One cloudy afternoon",
         "One quiet Sunday")
COLORS = ("red", "blue", "yellow", "green", "purple", "orange", "pink", "white", "silver",
          "striped", "spotted", "bright red", "sky-blue", "golden", "brown", "rainbow-striped")
HAPPY = ("happy", "glad", "delighted", "joyful", "cheerful", "thrilled", "overjoyed")
SAD = ("sad", "upset", "unhappy", "gloomy", "miserable", "heartbroken")
SCARED = ("scared", "afraid", "frightened", "nervous", "worried", "jittery")
PROUD = ("proud", "very proud", "proud and happy", "as proud as could be", "ten feet tall")
SOFTLY = ("softly", "gently", "kindly", "quietly", "with a smile", "warmly")
# Toys: (noun, what you do with one, where it makes sense: 0 anywhere, 1 outside, 2 by water).
THINGS = (("ball", "bounced", 0), ("kite", "flew", 1), ("teddy bear", "hugged", 0),
          ("toy car", "raced", 0), ("toy boat", "sailed", 2), ("hat", "wore", 0),
          ("doll", "cuddled", 0), ("jump rope", "skipped with", 1), ("yo-yo", "spun", 0),
          ("drum", "banged", 0), ("scarf", "wore", 0), ("bucket", "filled", 1),
          ("wagon", "pulled", 1), ("scooter", "rode", 1), ("frisbee", "threw", 1),
          ("toy train", "pushed", 0), ("stuffed bunny", "cuddled", 0), ("balloon", "chased", 0),
          ("spinning top", "spun", 0), ("toy dinosaur", "marched", 0), ("toy plane", "zoomed", 0),
          ("robot", "wound up", 0), ("rubber duck", "squeaked", 0), ("toy truck", "drove", 0),
          ("bubble wand", "waved", 1))
# Places: (name, level as for THINGS, four hiding spots, two things to see there).
PLACES = (
    ("the park", 2,
     ("under the slide", "behind the big oak tree", "by the duck pond", "under a wooden bench"),
     ("Ducks were paddling on the pond.", "Children laughed on the swings.")),
    ("the garden", 1,
     ("under the rose bush", "behind the shed", "in the vegetable patch",
      "beside the watering can"),
     ("Bees buzzed around the flowers.", "The tomatoes were red and ripe.")),
    ("the forest", 2,
     ("under a pile of leaves", "behind a mossy log", "near the little stream",
      "beneath a tall pine tree"), ("Birds sang high in the trees.", "Sunlight dappled the path.")),
    ("the beach", 2,
     ("under a striped umbrella", "behind a big rock", "near the rock pools",
      "inside a sandy hole"), ("The waves went swish, swish.", "Seagulls called over the water.")),
    ("the farm", 1,
     ("in the hay barn", "behind the chicken coop", "next to the pig pen",
      "by the old red tractor"),
     ("The cows were chewing grass.", "A rooster crowed from the fence.")),
    ("the playground", 1,
     ("under the swings", "in the sandbox", "behind the climbing frame",
      "at the bottom of the slide"), ("The swings creaked.", "Lots of children were playing tag.")),
    ("the meadow", 1,
     ("in the tall grass", "behind a big stone", "among the daisies", "under a thorny bush"),
     ("Butterflies danced over the flowers.", "The grass was soft and warm.")),
    ("the kitchen", 0,
     ("under the table", "behind the bread box", "inside a cupboard", "next to the fruit bowl"),
     ("It smelled of fresh bread.", "A pot of soup bubbled on the stove.")),
    ("school", 0,
     ("under the desks", "in the reading corner", "behind the big bookshelf", "by the coat hooks"),
     ("The classroom was bright and busy.", "Paintings hung on every wall.")),
    ("the library", 0,
     ("between the picture books", "under a big armchair", "behind the front desk",
      "by the window seat"), ("It was quiet and full of books.", "The clock ticked.")),
    ("the living room", 0,
     ("under the sofa", "behind the curtains", "inside the toy box", "between the cushions"),
     ("A fire crackled in the fireplace.", "The cat slept on the rug.")),
    ("the river bank", 2,
     ("among the reeds", "under the wooden bridge", "behind a willow tree", "beside a fallen log"),
     ("A heron stood in the shallows.", "The water sparkled and sang.")),
)
CRITTERS = (("kitten", "puppy", "mouse"), ("squirrel", "puppy", "rabbit", "crow", "snail"),
            ("squirrel", "puppy", "duck", "frog"))  # who might sit on a lost toy, by level


def an(phrase):
    """The phrase after "a" or "an" (the word lists avoid words like "hour" and "unicorn")."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


class Person:
    """A character and the words that refer to them, which also fill templates like "{His} hat"."""

    def __init__(self, name, pronoun, kind, full=None):
        self.name, self.kind, self.full = name, kind, full or name
        self.he, self.him, self.his = PRONOUNS[pronoun]
        self.He, self.His = self.he.capitalize(), self.his.capitalize()


class Teller:
    """One story being written: its own random choices and the paragraphs so far.

    House rule, which the tests check: a narration sentence that starts with He/She/His/Her means
    the character named first in the sentence before."""

    def __init__(self, rng):
        # Only rng.random() is used: it is the one part of `random` whose output Python promises
        # to keep across versions (choice, sample and shuffle have changed before).
        self.random = rng.random
        self.paragraphs, self.sentences = [], []

    def pick(self, options):
        return options[int(self.random() * len(options))]

    def sample(self, options, k):
        """k different items of `options`, in random order."""
        rest = list(options)
        return [rest.pop(int(self.random() * len(rest))) for _ in range(k)]

    def chance(self, p):
        return self.random() < p

    def hero(self, animals=True):
        pronoun = self.pick(("she", "she", "he", "he", "they"))
        kind = self.pick(ANIMALS) if animals and self.chance(0.25) else CHILD[pronoun]
        return Person(self.pick(NAMES[pronoun]), pronoun, kind)

    def friend(self, hero):
        """Someone of the hero's own sort (child or animal) with another name."""
        pronoun = self.pick(("she", "he", "they") if self.chance(0.2) else ("she", "he"))
        name = self.pick([n for n in NAMES[pronoun] if n != hero.name])
        if hero.kind in CHILD.values():
            return Person(name, pronoun, CHILD[pronoun])
        kind = self.pick([k for k in ANIMALS if k != hero.kind])
        return Person(name, pronoun, kind, f"{name} the {kind}")

    def grownup(self):
        return Person(*self.pick(GROWNUPS), "grown-up")

    def thing(self, level):
        """(noun, play verb, color) of a toy that fits a place of the given level."""
        noun, verb, _ = self.pick([t for t in THINGS if t[2] <= level])
        return noun, verb, self.pick(COLORS)

    def ref(self, person):
        """How to start a sentence about `person` when the one before named them first."""
        return person.He if self.chance(0.6) else person.name

    def fill(self, person, template, **extra):
        """A table's template filled in for `person`; {Who} is ref(person)."""
        return template.format(Who=self.ref(person), **person.__dict__, **extra)

    def add(self, *sentences):
        self.sentences.extend(sentences)

    def either(self, *options):
        self.sentences.append(self.pick(options))

    def say(self, who, line, verb=None):
        """A line of dialogue tagged with its speaker, in one of the three usual layouts."""
        end = line[-1]
        if verb is None:
            verb = ("asked" if end == "?" else self.pick(("shouted", "cried", "said"))
                    if end == "!" else "said")
        body = line[:-1] + "," if end == "." else line
        how = " " + self.pick(SOFTLY) if end == "." and self.chance(0.2) else ""
        r = self.random()
        if r < 0.4:
            self.sentences.append(f'"{body}" {verb} {who.name}{how}.')
        elif r < 0.7:
            self.sentences.append(f'"{body}" {who.name} {verb}{how}.')
        else:
            self.sentences.append(f'{who.name} {verb}, "{line}"')

    def quote(self, line):
        """Speech right after a sentence that already says who is speaking."""
        self.sentences.append(f'"{line}"')

    def para(self):
        self.paragraphs.append(" ".join(self.sentences))
        self.sentences = []

    def text(self):
        self.para()
        return "\n\n".join(self.paragraphs)

    def intro(self, hero):
        """The opening sentences that introduce the hero."""
        who = an(f"{self.pick(TRAITS)} {hero.kind}")
        child = hero.kind in CHILD.values()
        home = self.pick(HOMES if child else WILDS)
        self.either(f"Once upon a time, there was {who} named {hero.name}.",
                    f"There once was {who} named {hero.name}.",
                    f"{hero.name} was {who} who lived in {home}.",
                    f"Once upon a time, in {home}, there lived {who} named {hero.name}.")
        if self.chance(0.3):
            self.add(f"{hero.He} had {self.pick(LOOKS if child else ANIMAL_LOOKS)}.")
        if self.chance(0.6):
            hobby = self.pick(HOBBIES)
            self.either(f"{hero.He} loved {hobby}.", f"{hero.His} favorite thing was {hobby}.",
                        f"More than anything, {hero.name} liked {hobby}.")


# The tables below fill in for the hero; {Who} starts a sentence that follows one about the hero.
# Fears: (what, how it comes up, the cry, the advice, the brave act, what it was, afterwards).
FEARS = (
    ("the dark", "One night, the hall light went out, and {name}'s room was very dark.",
     "There is a monster in the corner!", "Take your flashlight and look. I'm right here.",
     "{Who} took a deep breath and pointed {his} flashlight at the corner.",
     "The monster was only {his} fluffy robe hanging on the door!",
     "After that, the dark did not seem so scary."),
    ("big dogs", "One day, a big shaggy dog trotted up to {name} in the street.",
     "Help! It's going to bite me!", "Stand still and hold out your hand. It wants to say hello.",
     "{Who} stood very still and slowly held out {his} hand.",
     "The dog sniffed {his} fingers and wagged its tail. It only wanted a friend.",
     "From then on, {name} said hello to every dog."),
    ("thunder", "One evening, dark clouds rolled in, and a loud BOOM shook the windows.",
     "I don't like thunder!", "Thunder is just a big noise. It can't hurt you in here.",
     "{Who} sat by the window and counted slowly between each flash and each boom.",
     "The booms got softer and softer, and soon a rainbow came out over the hills.",
     "The next time it stormed, {name} counted the booms and smiled."),
    ("deep water", "One hot day at the lake, everyone jumped in to swim.", "What if I sink?",
     "I will hold your hands. Just kick your feet.",
     "{Who} stepped into the cool water and kicked {his} feet as hard as {he} could.",
     "The water held {him} up! It felt like flying.",
     "By the end of the summer, {name} could swim all on {his} own."),
    ("the tall slide", "One afternoon, the other children were zooming down the tall slide.",
     "It's too high! What if I fall?", "Hold on to the sides. I will wait at the bottom.",
     "{Who} climbed the ladder one step at a time, sat down at the top, and let go.",
     "Whoosh! Down, down, down {he} went, laughing all the way.",
     "{name} went down ten more times."),
    ("noises at night", "One night, {name} heard a scratch, scratch, scratch under {his} bed.",
     "Something is under my bed!", "Let's look together. Bring your flashlight.",
     "{Who} lay down on the floor and peeked under the bed.",
     "It was only a tiny mouse nibbling a cracker. It looked more scared than {name}!",
     "{name} named the mouse Crumb and left it a crumb of cheese every night."),
    ("bees", "One day in the garden, a fat, fuzzy bee buzzed around {name}'s head.",
     "Go away, bee!", "Stay calm and still. The bee only wants the flowers.",
     "{Who} stood as still as a statue and watched.",
     "The bee landed on a yellow flower, drank, and flew away. It did not care about {name}.",
     "After that, {name} liked to watch the bees at work."),
    ("a new school", "On the first day at {his} new school, {name} held {adult}'s hand tightly.",
     "What if nobody likes me?", "Just smile and say hello. Someone will want to be friends.",
     "{Who} walked up to a child who was building a tower and said hello.",
     "Soon the two of them were building the tallest tower in the class.",
     "Before long, {name} was running to school every morning."),
)
# Skills: (goal, three ways to fail, a tip, how it finally works).
SKILLS = (
    ("ride a bike",
     ("{Who} wobbled to the left and fell into the grass.",
      "The bike tipped over, and {he} scraped {his} knee.",
      "{Who} pedaled too slowly and tumbled off again."),
     "Look ahead, not at your feet, and keep pedaling.",
     "{Who} looked straight ahead, pedaled hard, and rode all the way to the end of the street."),
    ("fly a kite",
     ("The kite spun around and crashed into the grass.", "The kite got stuck in a prickly bush.",
      "The string tangled into a big knot."), "Run into the wind and let the string out slowly.",
     "{Who} ran into the wind, and the kite rose up, up, up into the sky."),
    ("tie {his} shoes",
     ("The laces slipped loose right away.", "{Who} made a big knot that would not come undone.",
      "The bow flopped open again."), "Make two bunny ears, cross them, and pull.",
     "{Who} made two bunny ears, crossed them, and pulled. It was a perfect bow!"),
    ("whistle",
     ("Only air came out, fffff.", "{Who} puffed {his} cheeks, but no sound came.",
      "{Who} made a funny squeak instead of a whistle."),
     "Make your lips small and round, and blow softly.",
     "{Who} made {his} lips round and blew gently. Out came a clear whistle!"),
    ("make pancakes",
     ("The first pancake stuck to the pan.", "The second pancake flipped right onto the floor.",
      "The third pancake was burnt and black."),
     "Wait for the little bubbles, then flip it quickly.",
     "{Who} waited for the bubbles and flipped. The pancake landed in the pan, round and golden."),
    ("climb the big apple tree",
     ("{Who} slipped off the very first branch.", "{Who} got halfway up, then slid back down.",
      "A branch bent, and {he} had to jump down."),
     "Hold on tight, and step on the thick branches near the trunk.",
     "{Who} stepped on the thick branches, one by one, and reached the top. What a view!"),
    ("skip with a jump rope",
     ("The rope caught on {his} feet.", "{Who} jumped too early, and the rope hit {his} ankles.",
      "{Who} got tangled up and sat down with a bump."),
     "Listen to the rope. Jump when it taps the ground.",
     "Tap, jump! Tap, jump! {name} skipped ten times."),
    ("build a tower of blocks",
     ("The tower wobbled and fell with a crash.",
      "{Who} bumped the table, and the blocks tumbled down.",
      "The tower leaned like a tree in the wind and toppled over."),
     "Put the big blocks at the bottom and the small ones on top.",
     "{Who} put the big blocks at the bottom, and the tower grew taller than the chair."),
    ("write {his} name",
     ("The letters came out wobbly and too big.", "{Who} wrote one letter backward.",
      "The pencil tip snapped."), "Go slowly, and say each letter as you write it.",
     "{Who} went slowly, letter by letter, and there was {his} name, neat and clear."),
    ("catch a ball",
     ("The ball bounced off {his} nose.", "{Who} closed {his} eyes, and the ball flew right past.",
      "The ball slipped through {his} fingers."),
     "Keep your eyes on the ball, and make your hands into a cup.",
     "{Who} watched the ball all the way and caught it with both hands!"),
)
# Rescues: (animal, where the hero was, where it was, its trouble, the rescue, its thanks).
RESCUES = (
    ("a baby bird", "in the park", "under a tall tree", "It had fallen out of its nest.",
     "{Who} scooped it up, and {adult} lifted {him} high so {he} could put it back in its nest.",
     "The mother bird flew down and sang a sweet song."),
    ("a kitten", "in the garden", "high up in a tree", "It was stuck on a thin branch, meowing.",
     "{adult} fetched a ladder, and {name} held it steady while the kitten was carried down.",
     "The kitten purred and rubbed its head against {name}'s hand."),
    ("a duckling", "in the park", "all alone by the path", "It had lost its mother.",
     "{Who} walked slowly to the pond, and the duckling waddled after {him}.",
     "Its mother was waiting by the water, and the duckling swam to her side."),
    ("a turtle", "on the beach", "in the middle of the path", "It was stuck on its back.",
     "{Who} carefully turned it over and carried it to the edge of the water.",
     "The turtle blinked slowly and swam away."),
    ("a butterfly", "in the garden", "in a spider web", "Its wings were caught in the threads.",
     "{Who} used a thin stick to pull the sticky threads away, very gently.",
     "The butterfly fluttered up and landed on {name}'s nose for a moment."),
    ("a hedgehog", "in the garden", "by the fence", "Its head was stuck in a hole in the fence.",
     "{Who} pushed the wires apart, little by little, until it could wiggle out.",
     "The hedgehog sniffed {name}'s shoe and trotted away into the bushes."),
    ("a lost puppy", "in the park", "near the gate", "It had a blue collar, but it was all alone.",
     "{Who} read the tag on the collar, and {adult} helped {him} find the right house.",
     "A boy opened the door and shouted with joy, and the puppy licked his face."),
    ("a little lamb", "on the farm", "beside the stone wall", "Its wool was caught on a bramble.",
     "{Who} untangled the wool, bit by bit, without pulling.",
     "The lamb said baa and skipped back to the flock."),
    ("a frog", "in the forest", "in an old bucket", "It could not jump high enough to get out.",
     "{Who} tipped the bucket over slowly, so the frog could hop out.",
     "The frog croaked and hopped into the stream with a splash."),
    ("a bumblebee", "in the meadow", "on the warm path", "It was too tired to fly.",
     "{Who} put a drop of sugar water next to it on a leaf.",
     "The bee drank, buzzed its wings, and flew off to the clover."),
)
# Gifts: (what to make, making it, a small mishap, how it is given).
GIFTS = (
    ("a card", "{Who} folded a big sheet of paper and drew a red heart on the front.",
     "A drop of blue paint fell on the corner, so {he} turned it into a tiny bird.",
     "{name} handed {who} the card."),
    ("a cake", "{Who} mixed flour, eggs, butter and sugar in a big bowl.",
     "The cake came out a little lopsided, so {he} covered it in pink icing and sprinkles.",
     "{name} carried the cake in very carefully."),
    ("a bunch of flowers", "{Who} picked daisies, buttercups and bluebells from the meadow.",
     "A bee was sitting on one daisy, so {he} waited politely until it flew away.",
     "{name} held out the flowers."),
    ("a painting", "{Who} painted a big yellow sun, a green hill and the whole family.",
     "The paint was still wet, so {he} blew on it until it dried.", "{name} held up the painting."),
    ("a necklace", "{Who} threaded bright beads onto a long string, red, blue, green, red.",
     "The string slipped, and beads rolled everywhere, so {he} had to start again.",
     "{name} put the necklace around {who}'s neck."),
    ("a paper crown", "{Who} cut a crown out of gold paper and glued stars all around it.",
     "One star kept falling off, so {he} used extra glue.",
     "{name} put the crown on {who}'s head."),
    ("a song", "{Who} made up a little song with a funny rhyme in every line.",
     "The last line was hard to remember, so {he} practiced it again and again.",
     "{name} sang the song from start to finish."),
)
OCCASIONS = (("It was {who}'s birthday soon.", "Happy birthday!"),
             ("{who} had been sick with a cold all week.", "I hope you feel better soon!"),
             ("{who} had been working very hard all week.", "Thank you for everything!"))
# Day trips: (place, getting there, things to do, (mishap, what happened next) pairs).
TRIPS = (
    ("the beach", "They drove to the beach with buckets, spades and a big striped blanket.",
     ("They built a huge sandcastle with towers and a moat.",
      "They splashed in the waves and hunted for shells.", "They found a crab in a rock pool."),
     (("A big wave rushed up the sand and washed the sandcastle away.",
       "Everyone laughed, and they built an even bigger one, farther from the water."),
      ("A cheeky seagull swooped down and stole {name}'s sandwich!",
       "{adult} shared a sandwich with {name}, and they giggled at the greedy bird."))),
    ("the farm", "They rode in the car past fields of corn until they reached the farm.",
     ("They fed carrots to the ponies.", "They collected warm brown eggs from the hens.",
      "They watched the piglets roll in the mud."),
     (("A hungry goat nibbled the edge of {name}'s hat.",
       "The farmer gave {name} a straw hat instead, and {he} wore it all day."),
      ("{name} slipped and landed right in a muddy puddle.",
       "Everyone laughed, and soon {name} was laughing too."))),
    ("the zoo", "They took a big red bus all the way to the zoo.",
     ("They watched the monkeys swing from rope to rope.",
      "They saw a tall giraffe eating leaves from the top of a tree.",
      "They laughed when a lion yawned a huge, sleepy yawn."),
     (("{name}'s ice cream slipped off the cone and landed with a plop.",
       "{adult} bought a new one, and this time {name} held it with both hands."),
      ("It began to rain, so everyone ran inside the reptile house.",
       "There they saw a long green snake and a tortoise as big as a table."))),
    ("the forest", "They packed a picnic and walked to the forest.",
     ("They followed a winding path between the tall trees.",
      "They found a ring of tiny brown mushrooms.", "They heard a woodpecker go tap, tap, tap."),
     (("They took a wrong turn, and the path disappeared.",
       "{adult} found the painted marks on the trees, and soon they were back on the trail."),
      ("Ants marched all over the picnic blanket!",
       "They moved to a sunny rock and finished their lunch there."))),
    ("the lake", "They drove to the lake, where the water was calm and still.",
     ("They rowed a little boat out to the middle of the lake.",
      "They skipped flat stones across the water.", "They watched a heron standing on one leg."),
     (("The wind blew {name}'s hat into the water.",
       "{adult} fished it out with an oar, dripping wet, and they all laughed."),
      ("It started to drizzle.",
       "They put on their raincoats and watched the raindrops make rings on the water."))),
    ("the fair", "They walked to the fair, where music was playing and lights were flashing.",
     ("They rode the merry-go-round.", "They ate fluffy pink cotton candy.",
      "They won a tiny toy duck at the ring toss."),
     (("{name}'s balloon slipped out of {his} hand and floated up into the sky.",
       "They watched it drift over the trees until it was a tiny dot, and {name} waved goodbye."),
      ("The big wheel stopped with them at the very top.",
       "From up there, {name} could see the whole town, and it was wonderful."))),
    ("the snowy hill", "They put on warm coats and mittens and walked to the snowy hill.",
     ("They built a snowman with a carrot nose.", "They zoomed down the hill on a sled.",
      "They made snow angels in the soft snow."),
     (("{name}'s sled tipped over, and {he} landed in a pile of snow.",
       "{Who} jumped up covered in white, looking just like a little snowman."),
      ("{name} dropped a mitten, and {his} hand got very cold.",
       "{adult} found the mitten in the snow and warmed {his} hand with a cup of cocoa."))),
)


def lost_and_found(rng):
    """A favorite toy goes missing; the hero and a helper search until it turns up."""
    t = Teller(rng)
    hero = t.hero()
    place, level, spots, sights = t.pick(PLACES)
    noun, _, color = t.thing(level)
    pal = t.friend(hero) if t.chance(0.6) else t.grownup()
    t.intro(hero)
    t.either(f"{hero.name}'s favorite toy was {an(color)} {noun}.",
             f"{hero.name} had {an(color)} {noun} and took it everywhere.",
             f"Grandpa had given {hero.name} {an(color)} {noun} for {hero.his} birthday.")
    t.para()
    t.add(f"{t.pick(TIMES)}, {hero.name} took the {noun} to {place} with {pal.full}.",
          t.pick(sights), f"They played with the {noun} and "
          + t.pick(("had lots of fun.", "laughed and laughed.", "forgot all about the time.")))
    t.para()
    t.either(f"When it was time to go home, {hero.name} looked for the {noun}. It was gone!",
             f"But when {hero.name} turned around, the {noun} was not there anymore.",
             f"After a while, {hero.name} saw that the {noun} was missing.")
    t.add(f"{t.ref(hero)} felt {t.pick(SAD)}, and {hero.his} eyes filled with tears.")
    t.say(hero, t.pick((f"Where is my {noun}?", f"I lost my {noun}!", f"My {noun} is gone!")))
    t.say(pal, t.pick(("Don't worry. We will find it together.", "Let's look. It can't be far.",
                       "Don't cry. We will search everywhere.")))
    first, second, last = t.sample(spots, 3)
    t.add(f"They looked {first}, but the {noun} was not there.")
    t.either(f"Next they searched {second}. Nothing!", f"They peeked {second}. No {noun} there!",
             f"{pal.name} checked {second}, but it was not there either.")
    t.para()
    finder, critter = t.pick((hero, pal)), t.pick(CRITTERS[level])
    t.add(f"Then {finder.name} saw something {color} {last}.")
    t.either(f"It was the {noun}!", f"It was the {noun}, and {an(critter)} was sitting on it!",
             f"{an(critter).capitalize()} had carried it there to play with.")
    t.say(hero, t.pick(("I found it!", "There it is!", f"Thank you, {pal.name}!")))
    t.add(f"{hero.name} hugged the {noun} and felt {t.pick(HAPPY)} again.")
    t.either(f"From that day on, {hero.name} kept a close eye on {hero.his} {noun}.",
             f"{hero.name} learned that it helps to have someone to look with.",
             f"On the way home, {hero.name} held the {noun} very tightly.")
    return t.text()


def quarrel(rng):
    """Two friends fight over a toy, feel bad apart, say sorry and take turns."""
    t = Teller(rng)
    hero = t.hero()
    pal = t.friend(hero)
    place, level, _, sights = t.pick(PLACES)
    noun, play, color = t.thing(level)
    owner, grabber = (hero, pal) if t.chance(0.5) else (pal, hero)
    t.intro(hero)
    t.either(f"{hero.name}'s best friend was {pal.full}.",
             f"{hero.name} and {pal.full} were best friends.")
    t.either("They did everything together.", "They played together almost every day.")
    t.para()
    t.add(f"{t.pick(TIMES)}, {owner.name} brought {an(color)} {noun} to {place}.", t.pick(sights))
    t.either(f"{grabber.name} wanted to play with it right away.",
             f"{grabber.name} thought it was the best {noun} in the whole world.")
    t.say(grabber, t.pick(("Can I have a turn?", f"Can I play with your {noun}?")))
    t.say(owner, t.pick(("No, it's mine!", "Not now. I just got it!", "Go away!")))
    t.add(f"{grabber.name} grabbed the {noun}, and {owner.name} pulled it back.",
          t.pick(("They pulled and pulled.", "They both shouted at the same time.")))
    t.either(f"The {noun} slipped out of their hands and landed with a bump.",
             f"The {noun} flew up and landed in a muddy puddle." if level else
             f"The {noun} rolled under a cupboard, where nobody could reach it.")
    t.add(f"{pal.name} walked away, and {hero.name} was left all alone.")
    t.para()
    t.add(f"{hero.name} sat down and felt {t.pick(SAD)}.",
          t.pick(("Playing alone was no fun at all.", "Everything felt quiet and wrong.")))
    if t.chance(0.5):
        t.add(f"{t.grownup().name} sat down next to {hero.name}.")
        t.quote(t.pick(("Friends are more important than toys.", "Maybe you can say sorry.",
                        "Sharing is hard, but it makes everyone happier.")))
    t.add(f"{hero.name} thought about it and went to find {pal.name}.")
    t.say(hero, f"I'm sorry, {pal.name}. " + (f"I should not have grabbed your {noun}."
                                               if grabber is hero else "I should have shared."))
    t.say(pal, t.pick(("I'm sorry too. Let's take turns.", "That's okay. Let's play together.")))
    t.para()
    t.add(f"First {owner.name} {play} the {noun}, and then {grabber.name} had a turn.",
          t.pick(("They laughed and played until it was time for dinner.",
                  "It was much more fun with two.")))
    t.either(f"{hero.name} learned that sharing makes everyone happy.",
             "From that day on, the two friends always took turns.",
             "Sharing made the game twice as much fun.")
    return t.text()


def scared_then_brave(rng):
    """The hero is afraid of something, is brave once, and finds it was not so bad."""
    t = Teller(rng)
    hero, grown = t.hero(), t.grownup()
    fear, setup, cry, advice, act, truth, after = t.pick(FEARS)
    t.intro(hero)
    t.either(f"But {hero.name} was afraid of {fear}.",
             f"There was just one problem: {hero.name} was scared of {fear}.",
             f"{hero.name} was brave about most things, but not about {fear}.")
    if t.chance(0.5):
        t.add(f"Just thinking about {fear} made {hero.his} tummy feel funny.")
    t.para()
    t.add(t.fill(hero, setup, adult=grown.name))
    t.say(hero, cry)
    t.add(f"{grown.name} " + t.pick(("knelt down beside", "put an arm around", "smiled at"))
          + f" {hero.name}.")
    t.quote(advice)
    t.add(f"{hero.name} was still {t.pick(SCARED)}, but {hero.he} wanted to be brave.")
    t.para()
    t.add(t.fill(hero, act), t.fill(hero, truth))
    t.say(hero, t.pick(("I did it! I was brave!", "That wasn't so scary after all!",
                        "I'm not scared anymore!")))
    t.say(grown, t.pick(("I am so proud of you.", "You were very brave.", "See? You did it.")))
    t.para()
    t.add(f"{hero.name} felt {t.pick(PROUD)}.", t.fill(hero, after))
    if t.chance(0.5):
        t.either(f"{hero.name} learned that being brave does not mean never being scared.",
                 "Sometimes scary things are not so scary once you look at them.")
    return t.text()


def try_and_try(rng):
    """The hero fails at something hard, gets a tip, keeps going and succeeds."""
    t = Teller(rng)
    hero = t.hero()
    coach = t.grownup() if t.chance(0.6) else t.friend(hero)
    goal, fails, tip, success = t.pick(SKILLS)
    goal = t.fill(hero, goal)
    t.intro(hero)
    t.either(f"More than anything, {hero.name} wanted to learn to {goal}.",
             f"{hero.name} wanted to {goal}, but {hero.he} did not know how yet.",
             f"All of {hero.name}'s friends could {goal}, but {hero.name} could not. Not yet.")
    t.para()
    t.add(f"{t.pick(TIMES)}, {hero.name} decided to try.", t.fill(hero, fails[0]))
    t.say(hero, t.pick(("Oh no!", "That was hard!", "Why won't it work?")))
    t.add(f"{t.ref(hero)} tried again.", t.fill(hero, fails[1]),
          f"{hero.name} felt " + t.pick(("grumpy.", "cross.", "like giving up.", "so upset.")))
    t.say(hero, t.pick(("I can't do it!", "I will never learn!", "This is too hard!")))
    t.para()
    helper = coach.name if coach.kind == "grown-up" else f"{hero.name}'s friend {coach.full}"
    t.add(f"{helper} " + t.pick(("came over to help.", "had been watching.", "sat down nearby.")))
    t.quote(t.pick(("Everyone finds it hard at first. ", "Don't give up. ", "Try this. ")) + tip)
    if t.chance(0.5):
        t.add(f"{hero.name} tried once more.", t.fill(hero, fails[2]),
              f"But this time, {hero.name} did not give up.")
    t.add(f"{hero.name} took a deep breath and tried one more time.", t.fill(hero, success))
    t.say(hero, "I did it!")
    t.say(coach, t.pick(("I knew you could do it!", "Well done!", "You kept trying, and look!")))
    t.para()
    t.add(f"{hero.name} felt {t.pick(PROUD)}.")
    t.either(f"{hero.He} learned that if you keep trying, you can do hard things.",
             "Everyone makes mistakes while they learn. The trick is to keep going.",
             f"From that day on, {hero.name} practiced every single day.")
    return t.text()


def rescue(rng):
    """The hero finds an animal in trouble and helps it."""
    t = Teller(rng)
    hero, grown = t.hero(), t.grownup()
    animal, place, where, trouble, act, thanks = t.pick(RESCUES)
    t.intro(hero)
    t.para()
    t.add(f"{t.pick(TIMES)}, {hero.name} was " + t.pick(("playing", "walking", "exploring"))
          + f" {place} with {grown.name} when {hero.he} heard a "
          + t.pick(("tiny squeak.", "soft cry.", "sad little sound.", "rustle.")),
          f"{t.ref(hero)} looked around and saw {animal} {where}.", trouble)
    t.say(hero, t.pick(("Oh no! Poor little thing!", "Don't worry, little one. I will help you.",
                        f"{grown.name}, look! It needs help!")))
    t.say(grown, t.pick(("We must be very gentle. Little animals get scared.",
                         "What do you think we should do?", "Let's help it together.")))
    t.add(f"{hero.name} " + t.pick(("thought for a moment.", "nodded.", "knew just what to do.")),
          t.fill(hero, act, adult=grown.name), t.fill(hero, thanks))
    t.para()
    t.say(grown, t.pick(("That was very kind of you.", "You were so gentle and careful.",
                         "You did a good thing today.")))
    t.add(f"{hero.name} felt warm and {t.pick(HAPPY)} inside.")
    t.either(f"Every day after that, {hero.name} looked out for animals that needed help.",
             "Helping others is one of the best feelings in the world.",
             f"{hero.name} hoped to see the {animal.split(' ', 1)[1]} again one day.")
    return t.text()


def surprise(rng):
    """The hero makes a present in secret; it is not perfect, and it is loved anyway."""
    t = Teller(rng)
    hero = t.hero()
    them = t.grownup() if t.chance(0.7) else t.friend(hero)
    gift, making, oops, give = t.pick(GIFTS)
    occasion, wish = t.pick(OCCASIONS)
    t.intro(hero)
    t.para()
    if them.kind != "grown-up":
        t.add(f"{hero.name}'s best friend was {them.full}.")
    t.add(occasion.format(who=them.name),
          f"{hero.name} had an idea: {hero.he} would make {them.name} {gift}.")
    t.say(hero, "Shh! It's a secret.", "whispered")
    t.para()
    t.add(f"{hero.name} worked on it " + t.pick(("all afternoon.", "in secret.", "for hours.")),
          t.fill(hero, making), t.fill(hero, oops), f"{hero.name} was a little worried.")
    t.say(hero, f"What if {them.name} doesn't like it?", "wondered")
    t.para()
    t.add(f"When {them.name} came into the room, {hero.name} jumped out.")
    t.say(hero, "Surprise! " + wish, "shouted")
    t.add(t.fill(hero, give, who=them.name), f"{them.name}'s eyes grew wide.")
    t.say(them, t.pick(("Did you make this all by yourself?", "Oh, how wonderful!",
                        "This is the best present I have ever had!")))
    t.add(f"{them.name} gave {hero.name} the biggest hug.")
    t.either("The best presents come from the heart.",
             f"{hero.name} felt {t.pick(HAPPY)} all the way down to {hero.his} toes.",
             f"It was not perfect, but {them.name} loved it anyway.")
    return t.text()


def day_out(rng):
    """A family trip, a small mishap, and a good day after all."""
    t = Teller(rng)
    hero, grown = t.hero(animals=False), t.grownup()
    place, travel, doings, mishaps = t.pick(TRIPS)
    mishap, fix = t.pick(mishaps)
    t.intro(hero)
    t.para()
    t.add(t.pick(("One Saturday morning", "Early one morning", "One day"))  # any season
          + f", {grown.name} had a surprise.")
    t.say(grown, f"Today we are going to {place}!")
    t.add(f"{hero.name} was so excited that {hero.he} "
          + t.pick(("jumped up and down.", "could hardly eat breakfast.", "ran to get ready.")))
    t.para()
    t.add(travel, *t.sample(doings, 2))
    t.say(hero, t.pick(("This is the best day ever!", f"I love {place}!", "Look at that!")))
    t.para()
    t.add(t.pick(("But then, uh-oh!", "Then something went wrong.", "Suddenly, oops!")),
          t.fill(hero, mishap, adult=grown.name), t.fill(hero, fix, adult=grown.name))
    t.para()
    t.add(t.pick(("When the sun began to set, they went home.", "Soon it was time to go home.",
                  "At the end of the day, they headed home.")),
          f"{hero.name} was tired but {t.pick(HAPPY)}.")
    t.either(f"That night, {hero.name} dreamed about {place}.",
             "It had been a wonderful day, mishap and all.",
             f"{hero.name} could not wait to go back to {place} again.")
    return t.text()


PLOTS = (lost_and_found, quarrel, scared_then_brave, try_and_try, rescue, surprise, day_out)


def generate_story(rng):
    """One story, its plot and every word chosen with `rng` (a random.Random)."""
    return PLOTS[int(rng.random() * len(PLOTS))](rng)


def generate_stories(seed, count, start=0):
    """Stories start .. start+count-1 of `seed`; story i depends only on (seed, i)."""
    for i in range(start, start + count):
        yield generate_story(random.Random(f"{seed}-{i}"))

"""A small, deterministic style-preference set for the CPU demo.

Chosen answers share one recognisable style: a one-sentence direct answer, two or
three "- " bullet points, then the sign-off "Hope that helps!". Rejected answers
carry the same facts in the dispreferred style: curt, or rambling without bullets
or sign-off. After a few minutes of ORPO on SmolLM2-135M-Instruct the style shift
is easy to see in chat.

    python -m mlx_orpo.demo_data     # (re)writes mlx_orpo/data/demo_prefs.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_DATA_PATH = Path(__file__).resolve().parent / "data" / "demo_prefs.jsonl"
SIGN_OFF = "Hope that helps!"

# (question or topic, direct answer, bullets, curt reply)
FACTS = [
    ("Why is the sky blue?", "The sky looks blue because air molecules scatter blue sunlight more strongly than red light.",
     ("Shorter wavelengths scatter the most.", "This effect is called Rayleigh scattering.", "At sunset, light crosses more air, so reds dominate."), "Scattering."),
    ("How many planets are in our solar system?", "There are eight planets in our solar system.",
     ("Mercury, Venus, Earth and Mars are rocky.", "Jupiter, Saturn, Uranus and Neptune are giants.", "Pluto was reclassified as a dwarf planet in 2006."), "Eight."),
    ("What is the boiling point of water?", "At sea level, pure water boils at 100 degrees Celsius, or 212 degrees Fahrenheit.",
     ("At high altitude it boils at a lower temperature.", "Lower air pressure is the reason.", "Adding salt raises it only slightly."), "100 C."),
    ("Why do we have seasons?", "We have seasons because Earth's axis is tilted, so each hemisphere gets more direct sunlight at different times of year.",
     ("The tilt is about 23.5 degrees.", "Summer comes when your hemisphere leans toward the Sun.", "Distance from the Sun is not the main cause."), "Axial tilt."),
    ("How long does sunlight take to reach Earth?", "Sunlight takes about eight minutes and twenty seconds to reach Earth.",
     ("The Sun is about 150 million kilometres away.", "Light travels about 300,000 kilometres per second.", "So you see the Sun as it was minutes ago."), "About 8 minutes."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth.",
     ("It covers about a third of the planet's surface.", "It is larger than all the land combined.", "Its deepest point is the Mariana Trench."), "The Pacific."),
    ("Why do leaves change colour in autumn?", "Leaves change colour in autumn because trees stop making green chlorophyll, revealing other pigments.",
     ("Yellows and oranges come from carotenoids.", "Reds come from anthocyanins made in autumn.", "Shorter days and cooler nights trigger the change."), "Less chlorophyll."),
    ("How many bones are in the adult human body?", "An adult human body has 206 bones.",
     ("Babies are born with around 270.", "Some bones fuse together as we grow.", "The femur, in the thigh, is the longest."), "206."),
    ("What causes the tides?", "Tides are caused mainly by the Moon's gravity pulling on Earth's oceans.",
     ("Most coasts get two high tides a day.", "The Sun's gravity plays a smaller part.", "The biggest tides come near full and new moons."), "The Moon."),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain above sea level, at about 8,849 metres.",
     ("It sits on the border of Nepal and China.", "It was first climbed in 1953.", "Mauna Kea is taller measured from its base."), "Everest."),
    ("Why do cats purr?", "Cats purr mostly when they are content, but sometimes also to soothe themselves when stressed or hurt.",
     ("The sound comes from muscles in the larynx.", "Kittens purr while nursing.", "Purring can also be a request for attention."), "They're happy."),
    ("How does a rainbow form?", "A rainbow forms when sunlight is bent, reflected and split into colours inside raindrops.",
     ("You see it with the Sun behind you.", "Each colour bends by a slightly different amount.", "Red is on the outside of the main bow."), "Light and rain."),
    ("What is the speed of sound?", "In air at room temperature, sound travels at about 343 metres per second.",
     ("It moves faster in water than in air.", "It moves even faster through steel.", "Counting seconds after lightning uses this to estimate distance."), "343 m/s."),
    ("Why is the ocean salty?", "The ocean is salty because rivers carry dissolved minerals from rocks into the sea, where they build up.",
     ("Evaporation removes water but leaves the salt.", "Sodium chloride is the most common salt.", "Seawater is about 3.5 percent salt."), "Minerals from rocks."),
    ("How many continents are there?", "By the most common count, there are seven continents.",
     ("Asia is the largest by area.", "Australia is the smallest.", "Some traditions count Europe and Asia as one."), "Seven."),
    ("What do bees make besides honey?", "Besides honey, bees make beeswax, which they use to build their honeycomb.",
     ("Worker bees make wax in glands on their abdomen.", "They also make royal jelly to feed larvae.", "They collect resin called propolis to seal gaps."), "Wax."),
    ("Why does ice float on water?", "Ice floats because it is less dense than liquid water.",
     ("Frozen water molecules form an open lattice.", "Ice is about nine percent less dense.", "Floating ice insulates lakes, helping fish survive winter."), "It's less dense."),
    ("How far away is the Moon?", "The Moon is on average about 384,000 kilometres from Earth.",
     ("The distance varies because its orbit is an ellipse.", "Light crosses it in just over a second.", "It drifts away by a few centimetres a year."), "About 384,000 km."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra.",
     ("It was purpose-built as the capital.", "It was a compromise between Sydney and Melbourne.", "Parliament House is located there."), "Canberra."),
    ("Why do we need sleep?", "We need sleep so the body and brain can rest, repair themselves and store memories.",
     ("Adults generally need seven to nine hours.", "Sleep helps the immune system work well.", "Poor sleep affects mood and concentration."), "To rest."),
]

HOWTOS = [
    ("boil an egg", "Place the egg in boiling water for about 7 minutes for a firm but creamy yolk.",
     ("Use 9 to 10 minutes for a fully hard yolk.", "Cool it in cold water right after.", "Older eggs are easier to peel."), "Put it in boiling water."),
    ("make a cup of tea", "Pour freshly boiled water over a tea bag and let it steep for three to five minutes.",
     ("Green tea prefers water just below boiling.", "Remove the bag to avoid bitterness.", "Add milk, lemon or honey to taste."), "Add hot water to a tea bag."),
    ("remember people's names", "Repeat a person's name out loud soon after you hear it, and link it to something memorable.",
     ("Use the name once in the conversation.", "Picture it written on their forehead.", "Write it down afterwards if it matters."), "Just pay attention."),
    ("keep houseplants alive", "Most houseplants thrive with bright indirect light and watering only when the top of the soil is dry.",
     ("Overwatering kills more plants than underwatering.", "Use pots with drainage holes.", "Check the plant's label for its light needs."), "Water them."),
    ("save money on groceries", "Plan your meals for the week and shop with a list so you buy only what you need.",
     ("Compare unit prices on shelf labels.", "Store brands are often cheaper.", "Avoid shopping when you are hungry."), "Buy less."),
    ("fall asleep faster", "Keep a regular bedtime and give yourself a calm, screen-free half hour before bed.",
     ("Keep the bedroom cool and dark.", "Avoid caffeine in the afternoon.", "If you can't sleep, get up briefly and relax."), "Go to bed earlier."),
    ("write a good email", "Start with a clear subject line and put your main point or request in the first sentence.",
     ("Keep paragraphs short.", "Say exactly what you need and by when.", "Reread it once before sending."), "Keep it short."),
    ("clean a cast iron pan", "Wash it with hot water and a brush, then dry it completely and rub in a little oil.",
     ("A little mild soap is fine.", "Never leave it soaking in water.", "Heat it briefly to make sure it is dry."), "Rinse and dry it."),
    ("start running", "Begin with short sessions that mix running and walking, three times a week.",
     ("Go at a pace where you can still talk.", "Increase your time gradually.", "Comfortable running shoes help prevent soreness."), "Just go run."),
    ("learn a new language", "Practise a little every day, mixing vocabulary, listening and speaking.",
     ("Use flashcards with spaced repetition for words.", "Listen to podcasts or shows in the language.", "Speak early, even if you make mistakes."), "Use an app."),
    ("cook rice on the stove", "Simmer rinsed white rice, covered, in about one and a half to two times its volume of water until absorbed.",
     ("White rice usually takes 15 to 20 minutes.", "Let it rest covered for five minutes.", "Fluff it with a fork before serving."), "Boil it in water."),
    ("focus while studying", "Study in short, focused blocks with your phone out of reach.",
     ("Try 25 minutes of work, then a 5-minute break.", "Set one clear goal per session.", "Test yourself instead of just rereading."), "Put your phone away."),
    ("reduce stress", "Regular exercise, good sleep and time with people you trust are reliable ways to reduce stress.",
     ("Slow breathing can calm you in the moment.", "Break big worries into small next steps.", "Talk to a professional if it feels overwhelming."), "Relax more."),
    ("make a budget", "List your monthly income, then assign it to bills, savings and spending until every amount has a job.",
     ("Track what you actually spend for a month.", "Cover essentials like rent first.", "Review and adjust it each month."), "Spend less than you earn."),
    ("prepare for a job interview", "Research the company and practise answering common questions out loud beforehand.",
     ("Prepare short examples of your past work.", "Have a few questions ready to ask them.", "Plan your route so you arrive early."), "Practise."),
    ("keep bananas fresh longer", "Store bananas at room temperature away from other fruit, and move them to the fridge once ripe.",
     ("The skin darkens in the fridge, but the fruit stays fine.", "Keeping them away from apples slows ripening.", "Overripe bananas are great for baking."), "Put them in the fridge."),
    ("take better photos with my phone", "Use natural light, keep the lens clean and tap the screen to focus on your subject.",
     ("Hold the phone steady with both hands.", "Turn on the grid to frame your shot.", "Move closer instead of using digital zoom."), "Just tap the button."),
    ("get rid of hiccups", "Hiccups usually stop on their own within minutes, though slow breathing or sipping cold water may help.",
     ("Try holding your breath for a few seconds.", "Eating slowly can prevent them.", "See a doctor if they last over two days."), "Wait."),
    ("make my password stronger", "Use a long passphrase of several random words that you don't use on any other site.",
     ("Length matters more than odd symbols.", "A password manager can remember them for you.", "Turn on two-factor authentication too."), "Add numbers."),
    ("descale a kettle", "Fill it with equal parts water and white vinegar, boil it, let it stand, then rinse well.",
     ("Let it stand for about an hour.", "Boil fresh water once to remove the smell.", "Citric acid or lemon juice also works."), "Use vinegar."),
]

DEFINITIONS = [
    ("photosynthesis", "Photosynthesis is the process plants use to turn sunlight, water and carbon dioxide into sugar and oxygen.",
     ("It happens mainly in the leaves.", "Chlorophyll captures the light energy.", "It produces the oxygen we breathe."), "How plants make food."),
    ("a black hole", "A black hole is a region of space where gravity is so strong that nothing, not even light, can escape.",
     ("Many form when huge stars collapse.", "Its boundary is called the event horizon.", "There is one at the centre of our galaxy."), "A collapsed star."),
    ("inflation", "Inflation is the general rise in prices over time, so the same money buys a little less.",
     ("It is usually measured as a yearly percentage.", "Many central banks aim for about two percent.", "Wages that don't keep up lose value."), "Prices going up."),
    ("an algorithm", "An algorithm is a step-by-step set of instructions for solving a problem or completing a task.",
     ("A recipe is an everyday example.", "Computers follow algorithms to process data.", "Good ones are correct and efficient."), "Instructions."),
    ("democracy", "Democracy is a system of government in which people choose their leaders and laws, usually by voting.",
     ("The word comes from Greek for 'rule by the people'.", "Most modern democracies elect representatives.", "Free elections and free speech are key parts."), "Voting."),
    ("DNA", "DNA is the molecule that carries the genetic instructions for how living things grow and function.",
     ("It is shaped like a twisted ladder, the double helix.", "Its code uses four bases: A, T, C and G.", "You inherit half from each parent."), "Genes."),
    ("a metaphor", "A metaphor is a figure of speech that describes something by saying it is something else.",
     ("'Time is a thief' is an example.", "A simile uses 'like' or 'as' instead.", "Metaphors make ideas vivid."), "A comparison."),
    ("gravity", "Gravity is the force that pulls objects with mass toward each other.",
     ("It keeps us on the ground.", "It holds the Moon in orbit around Earth.", "Einstein described it as curved spacetime."), "What makes things fall."),
    ("compound interest", "Compound interest is interest earned on both your original money and the interest it has already earned.",
     ("It makes savings grow faster over time.", "It also makes unpaid debts grow faster.", "Starting early makes a big difference."), "Interest on interest."),
    ("a vaccine", "A vaccine is a preparation that trains the immune system to recognise and fight a specific disease.",
     ("It often contains a weakened or harmless part of a germ.", "It helps the body respond faster later.", "Some vaccines need booster doses."), "A shot."),
    ("the internet", "The internet is a global network of computers that exchange data using shared rules called protocols.",
     ("The web is one service that runs on it.", "Email and video calls use it too.", "Data travels in small packets."), "Computers connected."),
    ("a noun", "A noun is a word that names a person, place, thing or idea.",
     ("'Teacher', 'Paris' and 'happiness' are nouns.", "Proper nouns start with a capital letter.", "Nouns can be subjects or objects."), "A naming word."),
    ("climate", "Climate is the typical pattern of weather in a place over many years.",
     ("Weather is what happens day to day.", "Climate is usually averaged over 30 years.", "Deserts and rainforests have very different climates."), "Long-term weather."),
    ("an ecosystem", "An ecosystem is a community of living things interacting with each other and their surroundings.",
     ("A pond or a forest can be an ecosystem.", "Energy flows from plants to animals.", "Losing one species can affect many others."), "Nature in an area."),
    ("a haiku", "A haiku is a short Japanese poem of three lines with five, seven and five syllables.",
     ("It often describes nature or a season.", "Matsuo Basho is a famous haiku poet.", "In English the syllable rule is often loose."), "A short poem."),
    ("a budget deficit", "A budget deficit happens when a government spends more money than it takes in during a year.",
     ("The gap is usually covered by borrowing.", "The opposite is a budget surplus.", "Repeated deficits add to national debt."), "Overspending."),
    ("machine learning", "Machine learning is a way of building programs that learn patterns from data instead of following only hand-written rules.",
     ("Spam filters are a common example.", "The program improves as it sees more examples.", "It is a branch of artificial intelligence."), "AI stuff."),
    ("a carbohydrate", "A carbohydrate is a nutrient made of sugars that the body uses as a main source of energy.",
     ("Bread, rice and fruit are rich in them.", "Fibre is a carbohydrate we cannot fully digest.", "Whole grains release energy more slowly."), "Carbs."),
    ("an atom", "An atom is the smallest unit of a chemical element that keeps the element's properties.",
     ("It has a nucleus of protons and neutrons.", "Electrons move around the nucleus.", "Atoms join together to form molecules."), "A tiny particle."),
    ("a volcano", "A volcano is an opening in Earth's crust where molten rock, ash and gases escape.",
     ("Molten rock underground is called magma.", "At the surface it is called lava.", "Many volcanoes lie along tectonic plate edges."), "A mountain that erupts."),
]

ADVICE = [
    ("feel nervous before presentations", "Feeling nervous is normal, and practising out loud several times is the best way to feel confident.",
     ("Rehearse in front of a friend.", "Take slow breaths before you start.", "Focus on your message, not on yourself."), "Everyone gets nervous. Just do it."),
    ("keep procrastinating on my work", "Start with a tiny, specific task you can finish in five minutes to build momentum.",
     ("Break big projects into small steps.", "Set a timer and work until it rings.", "Remove distractions before you begin."), "Just start."),
    ("have trouble making friends in a new city", "Join a regular activity you enjoy, because seeing the same people often is how friendships grow.",
     ("Try a class, club or volunteer group.", "Suggest coffee with someone you click with.", "Give it time; friendships build slowly."), "Go out more."),
    ("spend too much time on my phone", "Set clear limits, like app timers or phone-free hours, to take back control of your screen time.",
     ("Turn off non-essential notifications.", "Keep the phone out of your bedroom.", "Replace scrolling with a book or a walk."), "Delete your apps."),
    ("want to eat healthier", "Start with small swaps, like adding a vegetable to each meal and drinking water instead of soda.",
     ("Cook at home more often.", "Keep healthy snacks within reach.", "Change gradually so the habits stick."), "Eat salad."),
    ("can't decide between two job offers", "Compare both offers against what matters most to you, such as pay, growth, people and commute.",
     ("Write a simple list of pros and cons.", "Ask each employer your open questions.", "Notice which choice brings you relief."), "Take the one that pays more."),
    ("argued with a close friend", "Reach out soon, listen to their side and apologise for your part, even if you still disagree.",
     ("Talk in person or by phone, not text.", "Use 'I' statements to explain your feelings.", "Give them time if they need it."), "They'll get over it."),
    ("feel tired every afternoon", "An afternoon slump is common, and a short walk, some daylight and a balanced lunch often help.",
     ("Drink enough water during the day.", "Avoid very heavy, sugary lunches.", "Make sure you sleep enough at night."), "Drink coffee."),
    ("want to start saving money", "Set up an automatic transfer to a savings account on payday so saving happens first.",
     ("Start small; even five percent helps.", "Build an emergency fund for a few months of costs.", "Track spending to find easy cuts."), "Spend less."),
    ("struggle to wake up in the morning", "Going to bed and getting up at the same time every day makes mornings much easier.",
     ("Put your alarm across the room.", "Open the curtains for daylight right away.", "Avoid screens late at night."), "Set more alarms."),
    ("am bored with my workout routine", "Mix things up by trying a new activity or changing your routine every few weeks.",
     ("Try a dance, swimming or climbing class.", "Exercise with a friend.", "Set a fun goal, like a charity walk."), "Do something else."),
    ("have a big exam next week", "Make a short daily plan that covers each topic and leaves time for practice questions.",
     ("Practise with past papers if you can.", "Sleep well, because it helps memory.", "Review your weakest topics first."), "Study."),
    ("feel lonely working from home", "Build regular contact into your week, like video calls with colleagues or working from a cafe sometimes.",
     ("Take a daily walk outside.", "Join an online or local community.", "Plan weekend time with friends."), "Get a pet."),
    ("want to read more books", "Set a small daily goal, like ten pages, and keep a book with you for spare moments.",
     ("Read before bed instead of scrolling.", "Try audiobooks on your commute.", "It's fine to stop books you don't enjoy."), "Read more."),
    ("get headaches when using my computer", "Regular breaks and a well-placed screen often ease computer headaches, but see a doctor if they continue.",
     ("Every 20 minutes, look at something far away.", "Keep the screen about an arm's length away.", "Have your eyes tested."), "Use it less."),
    ("need to give difficult feedback to a coworker", "Be specific, kind and private, and focus on the behaviour rather than the person.",
     ("Describe what happened and its effect.", "Ask for their point of view.", "Agree on a clear next step together."), "Just tell them."),
    ("want to learn to cook", "Start with a few simple recipes you enjoy and cook them until you feel confident.",
     ("Learn basic knife skills first.", "Try pasta, omelettes and stir-fries.", "Taste as you go and adjust the seasoning."), "Watch videos."),
    ("keep forgetting things I need to do", "Write every task down in one trusted place, such as a notes app or a notebook.",
     ("Check your list each morning.", "Set reminders for anything with a deadline.", "Do two-minute tasks right away."), "Try harder to remember."),
    ("feel overwhelmed by clutter at home", "Tackle one small area at a time, like a single drawer, so progress feels manageable.",
     ("Sort items into keep, donate and bin.", "Give everything you keep a home.", "Spend ten minutes tidying each day."), "Throw stuff away."),
    ("want to be more confident at work", "Confidence grows from preparation and small wins, so prepare well and speak up once in each meeting.",
     ("Keep a list of your achievements.", "Ask for feedback regularly.", "Learn one new skill at a time."), "Fake it."),
]

QUESTION_TEMPLATES = {
    "fact": ("{}",),
    "howto": ("How do I {}?", "What's the best way to {}?", "Can you tell me how to {}?", "Any tips on how to {}?"),
    "definition": ("What is {}?", "Can you explain {} in simple terms?", "What exactly is {}?", "Explain {} to me."),
    "advice": ("I {}. What should I do?", "Any advice? I {}.", "What can I do if I {}?", "I {} and could use some advice."),
}
RAMBLE_OPENERS = (
    "Well, that's a really interesting question and honestly a lot could be said about it.",
    "Okay, so this is one of those things people ask about a lot, and it kind of depends.",
    "Hmm, let me think about this, because it's not as simple as it sounds.",
    "So, basically, the short version, if there even is one, goes something like this.",
)
RAMBLE_CLOSERS = (
    "Anyway, there's a lot more to it, but that's roughly the idea.",
    "But really, everyone has their own opinion, so it depends.",
    "Or something along those lines, more or less.",
)


def chosen_answer(answer: str, bullets: tuple[str, ...]) -> str:
    """The preferred style: direct sentence, bullets, sign-off."""
    lines = "\n".join(f"- {b}" for b in bullets)
    return f"{answer}\n\n{lines}\n\n{SIGN_OFF}"


def rambling_answer(answer: str, bullets: tuple[str, ...], k: int) -> str:
    """The same facts as one meandering paragraph: filler, no bullets, no sign-off."""
    opener = RAMBLE_OPENERS[k % len(RAMBLE_OPENERS)]
    closer = RAMBLE_CLOSERS[k % len(RAMBLE_CLOSERS)]
    return f"{opener} {answer} {bullets[0]} {closer}"


def build_pairs() -> list[dict[str, str]]:
    """All demo rows as {"prompt", "chosen", "rejected"} dicts, kinds interleaved."""
    groups = [("fact", FACTS), ("howto", HOWTOS), ("definition", DEFINITIONS), ("advice", ADVICE)]
    rows = []
    for j in range(max(len(items) for _, items in groups)):
        for kind, items in groups:
            if j >= len(items):
                continue
            topic, answer, bullets, curt = items[j]
            k = len(rows)
            templates = QUESTION_TEMPLATES[kind]
            prompt = templates[j % len(templates)].format(topic)
            shown = bullets[:2] if k % 3 == 0 else bullets  # mix of two and three bullets
            rejected = curt if (j + k) % 2 == 0 else rambling_answer(answer, bullets, k)
            rows.append({"prompt": prompt, "chosen": chosen_answer(answer, shown), "rejected": rejected})
    return rows


def write_demo_data(path: Path = DEMO_DATA_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in build_pairs())
    path.write_text(text, encoding="utf-8")
    return path


if __name__ == "__main__":
    out = write_demo_data()
    print(f"wrote {len(build_pairs())} pairs to {out}")

"""Content items: the notes users write about shops, with the noise real notes have.

One item is drawn from a ``random.Random`` seeded by (world seed, item index), so an item does not
depend on chunking or on how many items come before it. The public fields follow
:data:`cmaq.schema.CONTENT_SCHEMA`; a few private facts (which entities and topics the note used)
are kept on :class:`Item` for the query grammar and never written to the content table.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from cmaq.text import shop_core
from cmaq.world import lexicon as lx

# Half-open day range the notes' updated_at falls in: the year before the log history ends.
_SECONDS_PER_DAY = 86_400


@dataclass
class Item:
    content_id: str
    lang: str
    category: str
    shop_name: str
    district: str
    shop_info: str
    title: str
    body: str
    updated_at_s: int
    # private: what the note mentions, for the grammar
    entities: tuple[str, ...]
    mentioned_topics: tuple[str, ...]

    def public(self) -> dict:
        return {
            "content_id": self.content_id, "lang": self.lang, "category": self.category,
            "shop_name": self.shop_name, "district": self.district, "shop_info": self.shop_info,
            "title": self.title, "body": self.body,
        }


def pick(rng: random.Random, seq):
    """``rng.choice`` without its overhead (the world draws millions of these)."""
    return seq[int(rng.random() * len(seq))]


def item_seed(world_seed: int, index: int) -> int:
    return (world_seed << 40) ^ index


def content_id(index: int) -> str:
    return f"c{index:09d}"


# ----------------------------------------------------------------- English notes

_EN_TITLES = (
    "{shop}: the {ent} is worth the trip {emo}",
    "My honest review of {shop}",
    "{district} gem: {ent} at {shop}",
    "Best {cat} in {district}?",
    "{ent} at {shop} {emo}",
    "Weekend at {shop}",
    "Is {shop} overrated? My take",
    "{core}, {district}",
)

_EN_SENTENCES = (
    "Finally tried {shop} in {district}!",
    "The {ent} really stood out, and the {ent2} was good too.",
    "We came on a Friday night with friends and it was busy.",
    "Staff were friendly, though it took a while to get seated.",
    "Prices are fair for {district}, around {price} per person.",
    "Honestly the {ent} alone is worth coming back for.",
    "Not sure about the {ent2}, a bit too much for me.",
    "The place is clean and bright, great for photos.",
    "Tip: go early on weekends.",
    "My friend loved the {ent}.",
    "I would rate it {rating} out of 5.",
    "Easy to find, a short walk from the main road.",
    "Would definitely come back with family.",
    "Overall a solid {cat} spot.",
)

_EN_TOPIC_SENTENCES = (
    "They also mentioned {topic}, which was a nice touch.",
    "Ask the staff about {topic}.",
    "I asked about {topic} and they were happy to explain.",
)

# ----------------------------------------------------------------- Chinese notes


_ZH_TITLES = (
    "{shop}｜{ent}太绝了{emo}",
    "{district}宝藏{cat}",
    "打卡{shop}",
    "{shop}真实测评",
    "人均{price}吃到{ent}",
    "周末去了{shop}{emo}",
    "{shop}值不值得去？",
    "在{district}发现一家{cat}",
)

_ZH_SENTENCES = (
    "终于来了{shop}！",
    "{ent}真的很惊艳，{ent2}也不错。",
    "周五晚上和朋友一起来的，人挺多。",
    "服务员很热情，就是等位有点久。",
    "人均{price}左右，在{district}算良心了。",
    "光是{ent}就值得再来一次。",
    "{ent2}一般般，有点腻。",
    "环境干净明亮，很适合拍照。",
    "建议周末早点去。",
    "朋友特别喜欢{ent}。",
    "我给{rating}分。",
    "位置好找，离路口不远。",
    "下次还会带家人来。",
    "总体是一家不错的{cat}。",
)

_ZH_TOPIC_SENTENCES = (
    "店员还介绍了{topic}，挺贴心。",
    "可以问问店员{topic}。",
    "顺便问了{topic}，讲得很清楚。",
)

_EN_TAILS = ("!", "!!", " :)", ".", ".", ".", " lol", "...")
_ZH_TAILS = ("！", "！！", "～", "。", "。", "。", "hhh", "。。。")


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(len(word) - 1)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def _en_noise(sentence: str, rng: random.Random) -> str:
    if rng.random() < 0.12:
        words = sentence.split(" ")
        j = rng.randrange(len(words))
        words[j] = _typo(words[j], rng)
        sentence = " ".join(words)
    if rng.random() < 0.2:
        sentence = sentence.rstrip(".!") + pick(rng, _EN_TAILS)
    if rng.random() < 0.15:
        sentence += " " + pick(rng, lx.EMOJI)
    return sentence


def _zh_noise(sentence: str, rng: random.Random) -> str:
    if rng.random() < 0.2:
        sentence = sentence.rstrip("。！") + pick(rng, _ZH_TAILS)
    if rng.random() < 0.2:
        sentence += pick(rng, lx.EMOJI)
    return sentence


def _sentence_count(rng: random.Random) -> int:
    """From one line to several paragraphs: most notes are short, a few are long."""
    r = rng.random()
    if r < 0.15:
        return 1
    if r < 0.75:
        return rng.randint(2, 6)
    if r < 0.95:
        return rng.randint(7, 12)
    return rng.randint(13, 24)


def _place_zh(cat: lx.Category, rng: random.Random, data: lx.BeijingData):
    """A real Beijing place for zh food, hotel and scenic categories; an invented one otherwise."""
    if cat.key in lx.FOOD_KEYS and data.restaurants.get(cat.key):
        p = pick(rng, data.restaurants[cat.key])
        area = p.area or pick(rng, data.areas)
        ents = p.entities if len(p.entities) >= 2 else cat.zh_entities
        return p.name, area, ents, p.hours, p.price, p.rating
    area = pick(rng, data.areas)
    if cat.key == "hotel":
        name = pick(rng, data.hotels)
    elif cat.key == "scenic":
        name = pick(rng, data.sights)
    else:
        name = f"{pick(rng, lx.ZH_SHOP_FIRST)}{pick(rng, cat.zh_names)}({area}店)"
    return name, area, cat.zh_entities, "周一至周日 10:00-22:00", rng.randint(40, 400), None


def make_item(world_seed: int, index: int, zh_fraction: float, updated_base_s: int,
              rng: random.Random | None = None) -> Item:
    rng = rng or random.Random()
    rng.seed(item_seed(world_seed, index))
    lang = "zh" if rng.random() < zh_fraction else "en"
    cat = pick(rng, lx.CATEGORIES)
    if lang == "en":
        district = pick(rng, lx.EN_DISTRICTS)
        shop = f"{pick(rng, lx.EN_SHOP_FIRST)} {pick(rng, cat.en_names)}"
        if rng.random() < 0.3:
            shop += f" ({district})"
        ents = cat.en_entities
        price = f"${rng.randint(8, 60)}" if cat.kind == "food" else f"${rng.randint(30, 300)}"
        rating = round(rng.uniform(3.2, 4.9), 1)
        hours = pick(rng, ("10:00-22:00", "11:00-23:00", "07:00-19:00", "open 24 hours", "09:00-21:00"))
        titles, sentences, topic_sents, noise = _EN_TITLES, _EN_SENTENCES, _EN_TOPIC_SENTENCES, _en_noise
        sep, para = " ", "\n\n"
    else:
        shop, district, ents, hours, p, rating = _place_zh(cat, rng, lx.beijing())
        rating = rating if rating is not None else round(rng.uniform(3.5, 4.9), 1)
        price = f"{p}元" if p else "100元"
        titles, sentences, topic_sents, noise = _ZH_TITLES, _ZH_SENTENCES, _ZH_TOPIC_SENTENCES, _zh_noise
        sep, para = "", "\n\n"
    used = tuple(rng.sample(ents, k=min(3, len(ents))))
    ent, ent2 = used[0], used[1 % len(used)]
    slots = {"shop": shop, "core": shop_core(shop), "district": district, "cat": cat.word(lang), "ent": ent, "ent2": ent2,
             "price": price, "rating": rating, "emo": pick(rng, lx.EMOJI)}

    title = pick(rng, titles).format(**slots)
    n = _sentence_count(rng)
    picked = [pick(rng, sentences) for _ in range(n)]
    mentioned: list[str] = []
    if rng.random() < 0.5:  # some notes already cover a related topic; querying it adds nothing
        topic = pick(rng, cat.near(lang))
        mentioned.append(topic)
        picked.insert(rng.randrange(len(picked) + 1), pick(rng, topic_sents).replace("{topic}", topic))
    lines = [noise(s.format(**slots), rng) for s in picked]
    paragraphs, per = [], rng.randint(3, 5)
    for i in range(0, len(lines), per):
        paragraphs.append(sep.join(lines[i:i + per]))
    body = para.join(paragraphs)

    if lang == "en":
        shop_info = f"{shop} · {district} · hours {hours} · about {price} per person · rating {rating}"
    else:
        shop_info = f"{shop} · {district} · 营业时间 {hours} · 人均{price} · 评分{rating} · 推荐：{'、'.join(used)}"
    updated = updated_base_s + rng.randrange(365 * _SECONDS_PER_DAY)
    return Item(content_id(index), lang, cat.key, shop, district, shop_info, title, body, updated,
                used, tuple(mentioned))

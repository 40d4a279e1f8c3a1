"""Vocabulary of the synthetic platform: categories, entities, the related-topic graph, phrases.

Everything the note writer, the query grammar and the oracle share lives here, so the three agree
on what a dish, a related topic or a commercial term is. Chinese restaurants, their dishes and their
neighbourhoods, and the zh hotels and sights, are real Beijing data from CrossWOZ (Apache-2.0, see
NOTICE); English places are invented.

The related-topic graph has two rings per category: ``near`` topics (a reader of the note would
plausibly search them next: hotpot -> dipping sauce) and ``far`` topics (related, but a long way
from why the reader is here: hotpot -> history of Sichuan pepper farming). Both are expansion; the
oracle gives near topics good CTR and far topics poor CTR, which is one source of the trade-off.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

LANGS = ("en", "zh")


@dataclass(frozen=True)
class Category:
    key: str
    en: str                      # the category word as an English query would use it
    zh: str
    kind: str                    # "food" or "place"
    en_entities: tuple[str, ...]  # dishes, rooms, facilities: what a note talks about
    zh_entities: tuple[str, ...]
    en_near: tuple[str, ...]     # near related topics (expansion, readers click them)
    zh_near: tuple[str, ...]
    en_far: tuple[str, ...]      # far related topics (expansion, readers rarely click)
    zh_far: tuple[str, ...]
    en_names: tuple[str, ...]    # shop-name suffixes for invented English places
    zh_names: tuple[str, ...] = field(default=())  # suffixes for invented zh places (non-restaurants)

    def entities(self, lang: str) -> tuple[str, ...]:
        return self.en_entities if lang == "en" else self.zh_entities

    def near(self, lang: str) -> tuple[str, ...]:
        return self.en_near if lang == "en" else self.zh_near

    def far(self, lang: str) -> tuple[str, ...]:
        return self.en_far if lang == "en" else self.zh_far

    def word(self, lang: str) -> str:
        return self.en if lang == "en" else self.zh


def _t(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split("|") if x.strip())


CATEGORIES: tuple[Category, ...] = (
    Category(
        "hotpot", "hotpot", "火锅", "food",
        _t("beef tripe|lamb slices|shrimp paste|tofu skin|lotus root|enoki mushrooms|duck blood|fish balls"),
        _t("毛肚|羊肉卷|虾滑|腐竹|藕片|金针菇|鸭血|鱼丸|肥牛|黄喉"),
        _t("dipping sauce|spicy broth|mushroom broth|sesame sauce|hotpot etiquette|tomato broth|late night hotpot"),
        _t("蘸料|麻辣锅底|菌汤锅底|麻酱|番茄锅底|鸳鸯锅|火锅夜宵"),
        _t("sichuan pepper farming|history of chongqing|beef cattle breeds|chili cultivation|copper pot craft"),
        _t("花椒种植|重庆历史|牛的品种|辣椒种植|铜锅工艺"),
        _t("Hotpot|Hot Pot House|Spicy Pot|Broth Bar"),
    ),
    Category(
        "noodles", "noodles", "面馆", "food",
        _t("beef noodles|dan dan noodles|zhajiang noodles|wonton soup|hand pulled noodles|cold noodles|rice noodles"),
        _t("牛肉面|担担面|炸酱面|馄饨|拉面|凉面|米粉|刀削面|油泼面"),
        _t("noodle toppings|chili oil|bone broth|noodle pulling show|vegetarian noodles|breakfast noodles"),
        _t("面条浇头|辣椒油|骨汤|拉面表演|素面|早餐面"),
        _t("wheat milling|lanzhou history|silk road cuisine|flour types|noodle machine"),
        _t("小麦磨粉|兰州历史|丝绸之路美食|面粉种类|压面机"),
        _t("Noodle Bar|Noodle House|Ramen Shop|Noodle Co"),
    ),
    Category(
        "cafe", "cafe", "咖啡馆", "food",
        _t("flat white|pour over|latte|cold brew|matcha latte|croissant|espresso|cheesecake"),
        _t("拿铁|手冲|冷萃|抹茶拿铁|可颂|美式|芝士蛋糕|澳白"),
        _t("coffee beans|latte art|quiet study spot|wifi and sockets|oat milk|brunch menu|pet friendly cafe"),
        _t("咖啡豆|拉花|安静自习|插座wifi|燕麦奶|早午餐|宠物友好"),
        _t("coffee farming in yunnan|roasting machines|espresso history|barista certification|green bean import"),
        _t("云南咖啡种植|烘焙机|意式咖啡历史|咖啡师认证|生豆进口"),
        _t("Coffee|Cafe|Roasters|Espresso Bar"),
    ),
    Category(
        "bakery", "bakery", "面包店", "food",
        _t("sourdough|egg tart|baguette|cinnamon roll|milk bread|cream puff|mochi bread|apple pie"),
        _t("欧包|蛋挞|法棍|肉桂卷|吐司|泡芙|麻薯|贝果|蛋糕"),
        _t("fresh bread times|birthday cake order|gluten free bread|baking class|day old discount bread"),
        _t("出炉时间|生日蛋糕预订|无麸质面包|烘焙课|面包保存"),
        _t("wheat genetics|yeast biology|oven manufacturing|french baking history|flour mill tour"),
        _t("小麦基因|酵母生物学|烤箱制造|法式烘焙历史|面粉厂参观"),
        _t("Bakery|Bread Co|Patisserie|Oven"),
    ),
    Category(
        "bbq", "bbq", "烧烤", "food",
        _t("lamb skewers|grilled fish|pork belly|chicken wings|grilled oysters|beef ribs|grilled eggplant"),
        _t("羊肉串|烤鱼|五花肉|鸡翅|烤生蚝|牛肋条|烤茄子|烤馒头片"),
        _t("cumin spice mix|outdoor seating|craft beer pairing|charcoal grill|late night bbq"),
        _t("孜然|露天座位|精酿啤酒|炭火|烧烤夜宵"),
        _t("xinjiang travel|sheep farming|charcoal production|grill manufacturing|spice trade history"),
        _t("新疆旅游|养羊|木炭生产|烤炉制造|香料贸易史"),
        _t("BBQ|Grill|Skewer House|Smokehouse"),
    ),
    Category(
        "sushi", "sushi", "日料", "food",
        _t("salmon sashimi|tuna roll|eel rice|omakase|miso soup|tempura|uni|hand roll"),
        _t("三文鱼刺身|金枪鱼卷|鳗鱼饭|寿喜烧|味噌汤|天妇罗|海胆|手卷|寿司"),
        _t("sake pairing|omakase etiquette|fresh fish delivery days|wasabi|counter seating"),
        _t("清酒|板前礼仪|鱼货到店日|芥末|吧台座位"),
        _t("tuna fishing quotas|japanese knife forging|rice polishing|edo history|seaweed farming"),
        _t("金枪鱼捕捞|日本刀锻造|精米工艺|江户历史|海苔养殖"),
        _t("Sushi|Sushi Bar|Izakaya|Omakase"),
    ),
    Category(
        "local", "local food", "京味菜", "food",
        _t("roast duck|fried liver|soy milk|zhajiang noodles|dumplings|lamb hotpot|donkey rolls"),
        _t("烤鸭|炒肝|豆汁|炸酱面|饺子|涮羊肉|驴打滚|卤煮|爆肚|豌豆黄"),
        _t("old beijing snacks|hutong walk|tea house|breakfast spots|time honoured brands"),
        _t("老北京小吃|胡同游|茶馆|早点铺|老字号"),
        _t("qing dynasty cuisine|peking opera|imperial kitchen history|city wall history|duck farming"),
        _t("清宫菜|京剧|御膳房历史|城墙历史|养鸭"),
        _t("Kitchen|Eatery|Dining Room|Canteen"),
    ),
    Category(
        "hotel", "hotel", "酒店", "place",
        _t("sea view room|twin room|suite|breakfast buffet|rooftop pool|gym|lobby bar"),
        _t("海景房|双床房|套房|自助早餐|泳池|健身房|大堂吧|行政酒廊"),
        _t("late checkout|parking|airport shuttle|luggage storage|family room|nearby subway"),
        _t("延迟退房|停车场|接机|行李寄存|亲子房|附近地铁"),
        _t("hotel management degree|mattress brands|hospitality history|linen suppliers|loyalty point math"),
        _t("酒店管理专业|床垫品牌|酒店业历史|布草供应|积分计算"),
        _t("Hotel|Inn|Suites|Lodge"),
        _t("酒店|宾馆|民宿|公寓"),
    ),
    Category(
        "spa", "spa", "按摩", "place",
        _t("foot massage|hot stone massage|aromatherapy|facial|sauna|tui na|cupping"),
        _t("足疗|精油按摩|推拿|拔罐|面部护理|汗蒸|刮痧|采耳"),
        _t("massage for back pain|couple package|herbal foot soak|how long to massage|open late massage"),
        _t("腰背按摩|双人套餐|中药泡脚|按摩时长|夜间按摩"),
        _t("acupuncture theory|essential oil chemistry|massage school|traditional medicine history"),
        _t("针灸理论|精油化学|按摩学校|中医历史"),
        _t("Spa|Wellness|Massage Studio|Retreat"),
        _t("足疗|养生馆|按摩|SPA"),
    ),
    Category(
        "ktv", "ktv", "KTV", "place",
        _t("private room|song list|party room|fruit platter|sound system|microphones"),
        _t("包厢|点歌|派对房|果盘|音响|麦克风|欢唱"),
        _t("room size for ten|birthday party setup|new songs this month|drinks menu|all night package"),
        _t("十人包厢|生日布置|新歌榜|酒水单|通宵场"),
        _t("karaoke machine history|vocal training|music copyright|speaker engineering"),
        _t("卡拉OK历史|声乐训练|音乐版权|音箱工程"),
        _t("KTV|Karaoke|Sing House|Music Box"),
        _t("KTV|量贩KTV|欢唱|音乐会所"),
    ),
    Category(
        "kids", "kids park", "亲子乐园", "place",
        _t("trampoline|ball pit|climbing wall|sand play|mini train|bumper cars|slides"),
        _t("蹦床|海洋球|攀岩|玩沙|小火车|碰碰车|滑梯|淘气堡"),
        _t("age limits|parent ticket|nursing room|weekend crowds|birthday party package|stroller access"),
        _t("适合年龄|家长票|母婴室|周末人流|生日派对套餐|婴儿车"),
        _t("child development psychology|playground safety standards|toy manufacturing|early education theory"),
        _t("儿童心理学|游乐设施安全标准|玩具制造|早教理论"),
        _t("Kids Park|Play Center|Fun Land|Adventure Park"),
        _t("亲子乐园|儿童乐园|游乐场|淘气堡"),
    ),
    Category(
        "scenic", "scenic spot", "景点", "place",
        _t("sunset view|hiking trail|old temple|lake|garden|viewing platform|museum hall"),
        _t("日落|步道|古寺|湖边|园林|观景台|展厅|城楼"),
        _t("best time to visit|ticket booking|photo spots|how long to tour|nearby food|guided tour"),
        _t("最佳游览时间|门票预约|拍照机位|游玩时长|附近美食|讲解"),
        _t("geology of the hills|dynasty timeline|architecture styles|conservation policy|bird migration"),
        _t("山体地质|朝代年表|建筑风格|文物保护政策|候鸟迁徙"),
        _t("Park|Garden|Temple|Hill|Lake"),
    ),
    Category(
        "fitness", "gym", "健身房", "place",
        _t("yoga class|spin class|personal trainer|free weights|swimming pool|boxing|pilates"),
        _t("瑜伽课|单车课|私教|自由力量区|游泳池|拳击|普拉提|团课"),
        _t("trial class|membership price|shower rooms|class schedule|beginner program|open 24 hours"),
        _t("体验课|会员卡价格|淋浴间|课程表|新手计划|24小时"),
        _t("sports science|muscle physiology|fitness equipment design|olympic history|nutrition research"),
        _t("运动科学|肌肉生理|器械设计|奥运历史|营养学研究"),
        _t("Gym|Fitness|Studio|Athletic Club"),
        _t("健身|健身工作室|运动馆|瑜伽馆"),
    ),
)

CATEGORY_BY_KEY = {c.key: c for c in CATEGORIES}
FOOD_KEYS = tuple(c.key for c in CATEGORIES if c.kind == "food")

# First words of invented shop names (English places; zh places that are not real CrossWOZ ones).
EN_SHOP_FIRST = ("Golden", "Red Lantern", "Blue Door", "Little", "Happy", "Old Mill", "Sunny", "Corner",
                 "Lucky", "Jade", "Maple", "Silver", "Twin Pines", "Bamboo", "North Star", "Copper",
                 "Willow", "Harbor Light", "Green Leaf", "Moonrise")
ZH_SHOP_FIRST = ("老街", "小院", "悦来", "福满", "星光", "好时光", "金鼎", "万家", "知味", "乐享", "遇见", "半山")

EN_DISTRICTS = _t(
    "Riverside|Old Town|Harbor|Midtown|West End|Northgate|Lakeside|University District|Chinatown|"
    "Market Square|Eastside|Hillcrest|Station Road|Garden Quarter|Canal Street|South Bay")

# Phrases that lead a reader to information the note lacks: how to go, book or explore.
ACTION = {
    "en": _t("reservation|book a table|opening hours|how to get there|menu|wait time|phone number|"
             "booking|directions|best time to go"),
    "zh": _t("预约|订座|营业时间|怎么去|菜单|排队|电话|预订|路线|几点去"),
}
EXPLORE = {
    "en": _t("things to do near|explore|nearby spots|what else is around|weekend plan"),
    "zh": _t("附近好玩|周边攻略|探店|附近逛逛|周末去哪"),
}
COMMERCIAL = {
    "en": _t("coupon|discount|deal|promo code|voucher|percent off|cheap price|group buy|sale"),
    "zh": _t("优惠券|团购|折扣|代金券|满减|特价|优惠|秒杀|打折"),
}
GENERIC = {
    "en": _t("good food|nice place|best places|recommendation|popular spots|where to go|fun"),
    "zh": _t("好吃的|好玩的|推荐|网红店|去哪里|打卡"),
}
OFF_TOPIC = {
    "en": _t("car insurance quote|phone screen repair|stock prices today|tax filing deadline|"
             "laptop driver download|visa application form|used car loans|printer ink|mortgage rates|"
             "football transfer news"),
    "zh": _t("汽车保险|手机维修|股票行情|个税申报|驾照考试|二手房价格|打印机墨盒|房贷利率|签证办理|足球转会"),
}
# The generation prompt's own words; a query that echoes them is the model talking to itself.
INSTRUCTION_ECHO = {
    "en": _t("as a user|search query|related search|the note|one answer"),
    "zh": _t("作为用户|搜索词|相关搜索|这篇笔记|一个答案"),
}

EMOJI = ("😋", "👍", "🔥", "✨", "😍", "🌶️", "☕", "🏨", "💆", "🎤", "🎈", "🏞️", "💪", "📍", "🥢", "❤️")


@dataclass(frozen=True)
class ZhPlace:
    name: str
    area: str
    entities: tuple[str, ...]
    hours: str
    price: int | None
    rating: float | None


# Restaurants are sorted into food categories by their real names; order matters (烤鸭 is
# Beijing cuisine, not barbecue).
_ZH_CATEGORY_RULES = (
    ("local", ("烤鸭", "全聚德", "便宜坊", "卤煮", "爆肚", "炒肝", "小吃", "京味", "老北京")),
    ("hotpot", ("火锅", "涮", "锅")),
    ("bbq", ("烧烤", "烤肉", "串", "烤")),
    ("cafe", ("咖啡", "Coffee", "coffee", "COFFEE", "茶")),
    ("bakery", ("面包", "烘焙", "甜品", "蛋糕")),
    ("noodles", ("面", "粉")),
    ("sushi", ("寿司", "日本", "日料", "居酒屋", "料理")),
)


def _zh_category(name: str) -> str:
    for key, words in _ZH_CATEGORY_RULES:
        if any(w in name for w in words):
            return key
    return "local"


@dataclass(frozen=True)
class BeijingData:
    restaurants: dict[str, tuple[ZhPlace, ...]]  # food category -> real restaurants
    areas: tuple[str, ...]                          # real neighbourhoods (metro stations)
    sights: tuple[str, ...]
    hotels: tuple[str, ...]
    dishes: dict[str, tuple[str, ...]]              # food category -> real dishes seen there


@lru_cache(maxsize=1)
def beijing() -> BeijingData:
    """The real Beijing data, loaded once from the package (see scripts/extract_crosswoz.py)."""
    raw = json.loads(resources.files("cmaq").joinpath("data/crosswoz_beijing.json").read_text("utf-8"))
    areas = tuple(sorted({r["area"] for r in raw["restaurants"] if r["area"]}))
    by_cat: dict[str, list[ZhPlace]] = {k: [] for k in FOOD_KEYS}
    for r in raw["restaurants"]:
        dishes = tuple(d for d in r["dishes"] if 2 <= len(d) <= 8 and not re.search(r"[A-Za-z0-9]", d))
        by_cat[_zh_category(r["name"])].append(
            ZhPlace(r["name"], r["area"], dishes, r["hours"], r["price"], r["rating"]))
    dishes = {k: tuple(sorted({d for p in v for d in p.entities})) for k, v in by_cat.items()}
    return BeijingData(
        restaurants={k: tuple(v) for k, v in by_cat.items()},
        areas=areas,
        sights=tuple(raw["sights"]),
        hotels=tuple(raw["hotels"]),
        dishes=dishes,
    )


def districts(lang: str) -> tuple[str, ...]:
    return EN_DISTRICTS if lang == "en" else beijing().areas


def entity_lexicon(lang: str, category: str) -> tuple[str, ...]:
    """Every entity the oracle recognises for a category: hand-written plus real zh dishes."""
    cat = CATEGORY_BY_KEY[category]
    if lang == "zh" and category in FOOD_KEYS:
        return tuple(sorted(set(cat.zh_entities) | set(beijing().dishes.get(category, ()))))
    return cat.entities(lang)


@lru_cache(maxsize=None)
def shop_names(lang: str) -> tuple[str, ...]:
    """Every shop (or place) name a note of this language can carry, without branch: invented ones
    (first word x each category's suffixes) and the real Beijing restaurants, hotels and sights."""
    if lang == "en":
        names = {f"{first} {suffix}" for first in EN_SHOP_FIRST for c in CATEGORIES for suffix in c.en_names}
    else:
        data = beijing()
        names = {f"{first}{suffix}" for first in ZH_SHOP_FIRST for c in CATEGORIES for suffix in c.zh_names}
        names |= {p.name for places in data.restaurants.values() for p in places} | set(data.hotels) | set(data.sights)
    return tuple(sorted(names))


@lru_cache(maxsize=None)
def world_entities(lang: str) -> tuple[str, ...]:
    """Every entity some note of the world talks about: each category's dishes, rooms and facilities,
    the districts, and (zh) the real sights and hotels."""
    found = {e for c in CATEGORIES for e in entity_lexicon(lang, c.key)} | set(districts(lang))
    if lang == "zh":
        found |= set(beijing().sights) | set(beijing().hotels)
    return tuple(sorted(found))


@lru_cache(maxsize=1)
def vocabulary() -> tuple[frozenset[str], frozenset[str]]:
    """The world's words: (Latin-script words, CJK character bigrams) of every lexicon string. Text
    with neither is not a query anybody on the platform would type."""
    strings: list[str] = [w for c in CATEGORIES for lang in LANGS
                          for w in (c.word(lang), *entity_lexicon(lang, c.key), *c.near(lang), *c.far(lang),
                                    *(c.en_names if lang == "en" else c.zh_names))]
    for table in (ACTION, EXPLORE, COMMERCIAL, GENERIC, OFF_TOPIC):
        strings += [w for lang in LANGS for w in table[lang]]
    for lang in LANGS:
        strings += [*shop_names(lang), *world_entities(lang)]
    words, bigrams = set(), set()
    for s in strings:
        s = s.lower()
        words.update(re.findall(r"[a-z]+", s))
        for run in re.findall(r"[\u4e00-\u9fff]+", s):
            bigrams.update(run[i:i + 2] for i in range(len(run) - 1))
    return frozenset(words), frozenset(bigrams)

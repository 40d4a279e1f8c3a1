"""Derive the compact Beijing restaurant table the synthetic world ships with.

Source: CrossWOZ restaurant database (Zhu et al., TACL 2020), Apache-2.0, copied into
../shared/data/crosswoz. We keep only the fields the world uses (name, area, dishes, hours,
price, rating) plus the real nearby sights and hotels, which seed the zh scenic-spot and hotel
categories. The output is committed as cmaq/data/crosswoz_beijing.json so an installed package
does not depend on the repository layout; NOTICE carries the attribution.

    python scripts/extract_crosswoz.py ../shared/data/crosswoz/restaurant_db.json
"""
import json
import re
import sys
from pathlib import Path

# Labels CrossWOZ mixes into the dish lists; they are tags, not dishes.
NOT_DISHES = {"老字号", "当地口味", "美食林风味", "网红店", "必吃榜"}


def area_of(record: dict) -> str:
    """The neighbourhood a Beijing resident would name: the metro station, else the branch."""
    metro = re.sub(r"(地铁站)?[A-Z]?\d*口?$", "", record.get("地铁") or "").strip()
    if metro:
        return metro
    branch = re.search(r"[（(]([^（）()]+?)店?[)）]", record["名称"])
    return branch.group(1) if branch else ""


def main(src: str, dst: str = "cmaq/data/crosswoz_beijing.json") -> None:
    rows = json.loads(Path(src).read_text(encoding="utf-8"))
    restaurants, sights, hotels = [], set(), set()
    for name, rec in rows:
        restaurants.append({
            "name": name,
            "area": area_of(rec),
            "dishes": [d for d in rec["推荐菜"] if d not in NOT_DISHES],
            "hours": rec.get("营业时间") or "",
            "price": rec.get("人均消费"),
            "rating": rec.get("评分"),
        })
        sights.update(rec.get("周边景点") or [])
        hotels.update(rec.get("周边酒店") or [])
    out = {
        "source": "CrossWOZ restaurant_db.json (github.com/thu-coai/CrossWOZ, Apache-2.0), fields reduced",
        "restaurants": restaurants,
        "sights": sorted(sights),
        "hotels": sorted(hotels),
    }
    Path(dst).write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    print(f"{len(restaurants)} restaurants, {len(sights)} sights, {len(hotels)} hotels -> {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:])

from cmaq.artifacts import dir_hash
from cmaq.engines.tiny import build_tiny_model
from cmaq.prompts import GEN_INSTRUCTION, NOTE_CLOSE, NOTE_OPEN, PromptLimits, expansion_prompt, generation_prompt


def _tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


ITEM = {"content_id": "c1", "lang": "en", "title": "Jade Hotpot review", "shop_name": "Jade Hotpot",
        "shop_info": "Riverside · 10:00-22:00", "body": "Great beef tripe. " * 500}


def test_generation_prompt_keeps_title_and_shop_and_cuts_the_body(tiny_model):
    tok = _tok(tiny_model)
    prompt = generation_prompt(ITEM, tok, PromptLimits(max_prompt_tokens=300))
    assert len(tok(prompt)["input_ids"]) <= 300
    assert "Jade Hotpot review" in prompt and "Riverside · 10:00-22:00" in prompt
    assert prompt.count("Great beef tripe.") < 500
    assert prompt.index(NOTE_OPEN) < prompt.index("Great beef tripe") < prompt.index(NOTE_CLOSE)
    assert GEN_INSTRUCTION["en"] in prompt and prompt.rstrip().endswith("Search:")


def test_chinese_and_expansion_prompts(tiny_model):
    tok = _tok(tiny_model)
    zh = {**ITEM, "lang": "zh", "title": "海底捞火锅测评", "body": "毛肚很好吃。"}
    p = generation_prompt(zh, tok, PromptLimits(400))
    assert GEN_INSTRUCTION["zh"] in p and "标题: 海底捞火锅测评" in p
    e = expansion_prompt(zh, "毛肚蘸料", tok, PromptLimits(400))
    assert "搜索词: 毛肚蘸料" in e and e.rstrip().endswith("回答:")
    e_en = expansion_prompt(ITEM, "hotpot sauce", tok, PromptLimits(400))
    assert "Query: hotpot sauce" in e_en and e_en.rstrip().endswith("Answer:")


def test_tiny_model_is_cached_by_content(tiny_model):
    again = build_tiny_model()
    assert str(again) == tiny_model
    assert dir_hash(tiny_model) == dir_hash(again)

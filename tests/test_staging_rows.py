"""The generation task's transform: engine results -> staging rows (served, dropped, quarantined),
on small inline rows."""
import math

from cmaq.config import FiltersConfig
from cmaq.engines.base import Candidate, GenResult
from filters.chain import FilterChain
from jobs.generate import STAGING_SCHEMA, staging_rows

NOTE = {"lang": "en", "category": "hotpot", "shop_name": "Jade Hotpot", "district": "Riverside",
        "title": "Jade Hotpot review", "body": "Great beef tripe and a rich broth.", "shop_info": "Riverside"}
ITEMS = [{"content_id": "a", "content_hash": "ha", **NOTE},
         {"content_id": "b", "content_hash": "hb", **NOTE},
         {"content_id": "c", "content_hash": "hc", **NOTE, "category": None}]
VERSIONS = {"model_version": "m1", "adapter_version": "a1", "config_hash": "c1"}


def test_candidates_are_judged_and_unserved_items_quarantined():
    results = [GenResult("a", [Candidate('"beef tripe dipping sauce"', -1.5, 0), Candidate("www.spam.com", -2.0, 1)]),
               GenResult("b", error=("engine_error", "the batch failed")),
               GenResult("c", [])]
    out = staging_rows(ITEMS, results, FilterChain.serving(FiltersConfig()), VERSIONS, "run-7", 1234)
    assert out.schema.equals(STAGING_SCHEMA)
    rows = out.to_pylist()
    assert [(r["kind"], r["content_id"]) for r in rows] == [("pool", "a"), ("dropped", "a"), ("quarantine", "b"),
                                                             ("quarantine", "c")]
    served, dropped, failed, empty = rows
    # served: the cleaned query (wrapping quotes stripped), every filter's score
    assert served["query"] == "beef tripe dipping sauce" and served["reason"] is None and served["rank"] == 0
    assert all(served[s] is not None and not math.isnan(served[s]) for s in ("score_lexical", "score_relevance"))
    # dropped: the query as the model wrote it, the reason, and null scores where no filter looked
    assert dropped["query"] == "www.spam.com" and dropped["reason"] == "url" and dropped["logprob"] == -2.0
    assert dropped["score_lexical"] is not None and dropped["score_harm"] is None
    assert (failed["reason"], failed["detail"], failed["query"], failed["rank"]) == ("engine_error", "the batch failed",
                                                                                    None, None)
    assert empty["reason"] == "no_candidates" and empty["category"] is None
    assert {(r["run_id"], r["generated_at"], r["model_version"], r["adapter_version"], r["config_hash"])
            for r in rows} == {("run-7", 1234, "m1", "a1", "c1")}


def test_a_batch_the_engine_could_not_serve_at_all_needs_no_chain():
    results = [GenResult(it["content_id"], error=("engine_crash", "killed the worker")) for it in ITEMS]
    out = staging_rows(ITEMS, results, None, VERSIONS, "run-8", 0)
    assert out.column("kind").to_pylist() == ["quarantine"] * 3
    assert out.column("content_hash").to_pylist() == ["ha", "hb", "hc"]

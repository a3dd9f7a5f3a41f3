"""``restorelcc prune`` / ``restorelcc inspect`` on a tiny checkpoint."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from restorelcc.cli import main
from restorelcc.testing import save_checkpoint, tiny_model


def test_prune_writes_checkpoint_and_report(tiny_dir, calib_file, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        ["prune", "--model", str(tiny_dir), "--method", "sparsegpt", "--pattern", "2:4",
         "--calibration", str(calib_file), "--nsamples", "4", "--seqlen", "32", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["method"] == "sparsegpt" and report["pattern"] == "2:4"
    assert report["calibration"].pop("origin")["path"] == str(calib_file.resolve())
    assert report["calibration"] == {
        "source": str(calib_file),
        "seed": 0,
        "nsamples": 4,
        "seqlen": 32,
        "chunk_size": 8,
    }
    assert len(report["matrices"]) == 2 * 7
    assert all(m["nm"]["2:4"] for m in report["matrices"])
    assert "run_metadata" in report
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (model.model.layers[1].mlp.down_proj.weight == 0).float().mean() == 0.5
    capsys.readouterr()

    assert main(["inspect", str(out), "--json", str(tmp_path / "inspect.json")]) == 0
    printed = capsys.readouterr().out
    assert "mlp.down_proj" in printed and "True" in printed
    inspected = json.loads((tmp_path / "inspect.json").read_text())
    assert inspected["shape_mismatches"] == []
    assert all(m["nm"]["2:4"] and m["sparsity"] == 0.5 for m in inspected["matrices"])


def test_eval_records_perplexity(tiny_dir, tmp_path, capsys):
    out = tmp_path / "evaluated"
    rc = main(
        ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--eval",
         "--ppl-tokens", "300", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    ppl = json.loads((out / "prune_report.json").read_text())["evaluation"]["perplexity"]
    assert ppl["source"] == "lambada" and ppl["tokens"] == 300
    assert 1.0 < ppl["perplexity"] < float("inf")
    assert "ppl" in capsys.readouterr().out


def test_structured_checkpoint_is_smaller_and_reloads(tiny_dir, calib_file, tmp_path, capsys):
    out = tmp_path / "heads"
    rc = main(
        ["prune", "--model", str(tiny_dir), "--method", "wanda", "--pattern", "heads",
         "--sparsity", "0.3", "--head-fraction", "0.5", "--calibration", str(calib_file),
         "--nsamples", "4", "--seqlen", "32", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    dense_size = (tiny_dir / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 0.85 * dense_size
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_key_value_heads == 1 and model.config.num_attention_heads == 3
    logits = model(torch.randint(0, 259, (2, 9))).logits
    assert logits.isfinite().all()
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6->3" in printed and "removed_of_block_params" in printed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sparsity", "1.5"], "--sparsity must lie strictly between 0 and 1"),
        (["--sparsity", "nan"], "--sparsity must lie strictly between 0 and 1, got nan"),
        (
            ["--pattern", "2:4", "--sparsity", "0.7"],
            "pattern 2:4 prunes 0.5 of the weights, but --sparsity 0.7 was requested; pass "
            "--sparsity 0.5",
        ),
        (
            ["--pattern", "heads", "--head-fraction", "2"],
            "--head-fraction must lie in [0, 1), got 2.0",
        ),
        (["--head-fraction", "0.5"], "--head-fraction only applies to the 'heads' pattern"),
        (["--pattern", "3:8", "--sparsity", "0.625"], "divisible by 8"),
        (["--method", "sparsegpt", "--pattern", "heads"], "supports methods"),
        (["--calibration", "lambada"], "lambada"),
        (
            ["--method", "sparsegpt", "--pattern", "1:3", "--sparsity", "0.666667"],
            "block_size 128 must be a multiple of M=3",
        ),
    ],
)
def test_bad_input_leaves_output_untouched(tiny_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "existing"  # an earlier output, which --overwrite may replace
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "prune_report.json").write_text("{}")
    model = str(tiny_dir)
    if "3:8" in extra:  # a model whose hidden size (60) is not divisible by 8
        model = str(tmp_path / "t35")
        save_checkpoint(tiny_model("llama-3x5"), model)
    args = ["prune", "--model", model, "--method", "wanda", "--nsamples", "2", "--seqlen", "16"]
    rc = main([*args, *extra, "--out", str(out), "--overwrite"])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "prune_report.json"]
    assert (out / "keep.txt").read_text() == "mine"


def test_refuses_non_empty_output_before_loading(tmp_path, capsys):
    out = tmp_path / "full"
    out.mkdir()
    (out / "x").write_text("x")
    rc = main(["prune", "--model", str(tmp_path / "nowhere"), "--out", str(out)])
    assert rc == 2
    assert "not empty" in capsys.readouterr().err


def test_out_dot_writes_into_an_empty_current_directory(tiny_dir, tmp_path, monkeypatch, capsys):
    """--out . once failed after the work ("PosixPath('.') has an empty name")."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["prune", "--model", str(tiny_dir), "--method", "magnitude", "--out", "."]) == 0
    assert (here / "prune_report.json").is_file() and (here / "config.json").is_file()
    capsys.readouterr()
    # a folder holding the current directory: refused before the model (nowhere) loads
    argv = ["prune", "--model", "nowhere", "--method", "magnitude", "--out", "..", "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out .. holds the current directory ({here}): --overwrite would delete" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "tiny"]


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("pattern", ["unstructured", "heads"])
def test_quiet_prune_shows_no_progress_bars(
    tiny_dir, calib_file, tmp_path, capsys, method, pattern
):
    argv = ["prune", "--model", str(tiny_dir), "--method", method, "--pattern", pattern,
            "--sparsity", "0.5", "--out", str(tmp_path / "out")]  # fmt: skip
    if method == "wanda":
        argv += ["--calibration", str(calib_file), "--nsamples", "2", "--seqlen", "16"]
    assert main(argv) == 0
    assert "layer/s" in capsys.readouterr().err  # the bar over layers
    assert main([*argv, "--overwrite", "--quiet"]) == 0
    assert "layer/s" not in capsys.readouterr().err


def test_inspect_swap_previews_what_swap_attention_would_pack(tiny_dir, tmp_path, capsys):
    from restorelcc import prune_model

    pruned = tmp_path / "pruned24"
    model = tiny_model("llama-gqa")
    prune_model(model, "magnitude", 0.5, "2:4", progress=False)
    save_checkpoint(model, pruned)
    capsys.readouterr()
    report = tmp_path / "inspect.json"
    assert main(["inspect", str(pruned), "--swap", "auto", "--json", str(report)]) == 0
    assert "nothing to swap" not in capsys.readouterr().out
    groups = json.loads(report.read_text())["swap"]["groups"]
    assert [(g["layer"], g["group"], g["format"]) for g in groups] == [
        (0, "qkv", "2:4"),
        (0, "o_proj", "2:4"),
        (1, "qkv", "2:4"),
        (1, "o_proj", "2:4"),
    ]
    assert all(g["bytes_after"] < g["bytes_before"] for g in groups)
    assert main(["inspect", str(pruned), "--swap", "auto", "--mlp", "--json", str(report)]) == 0
    groups = json.loads(report.read_text())["swap"]["groups"]
    assert [g["group"] for g in groups][:4] == ["qkv", "o_proj", "gate_up", "down_proj"]
    assert {g["format"] for g in groups} == {"2:4"} and len(groups) == 8
    assert main(["inspect", str(pruned), "--mlp"]) == 2
    assert "--mlp swaps the MLP projections too: it needs --swap" in capsys.readouterr().err
    assert main(["inspect", str(tiny_dir), "--swap", "auto"]) == 0
    assert "nothing to swap: no attention projection is pruned (none has 10% zeros or more)" in (
        capsys.readouterr().out
    )


def test_inspect_swap_refuses_before_printing_anything(tiny_dir, tmp_path, capsys):
    """--swap 2:4 on unstructured weights used to print the tables, then exit 2 without
    the report: the swap is now tried first."""
    from restorelcc import prune_model

    pruned = tmp_path / "unstructured"
    model = tiny_model("llama-gqa")
    prune_model(model, "magnitude", 0.5, "unstructured", progress=False)
    save_checkpoint(model, pruned)
    capsys.readouterr()
    report = tmp_path / "inspect.json"
    assert main(["inspect", str(pruned), "--swap", "2:4", "--json", str(report)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and "does not fit the 2:4 format" in printed.err
    assert not report.exists()


@pytest.mark.parametrize("json_path", ["", "config.json"])
def test_inspect_refuses_a_report_path_that_is_empty_or_a_checkpoint_file(
    tiny_dir, json_path, capsys
):
    config = (tiny_dir / "config.json").read_text()
    given = str(tiny_dir / json_path) if json_path else ""
    assert main(["inspect", str(tiny_dir), "--json", given]) == 2
    printed = capsys.readouterr()
    expected = "is empty" if not json_path else "is a file of the checkpoint"
    assert printed.out == "" and expected in printed.err
    assert (tiny_dir / "config.json").read_text() == config


def test_a_missing_calibration_source_fails_before_the_model_loads(tmp_path, capsys):
    args = ["prune", "--model", str(tmp_path / "no-model"), "--method", "wanda"]
    assert main([*args, "--calibration", str(tmp_path / "none.txt"), "--out", str(tmp_path)]) == 2
    assert "unknown data source" in capsys.readouterr().err  # not the missing model


def test_inspect_names_a_truncated_weights_file(tiny_dir, tmp_path, capsys):
    bad = tmp_path / "truncated"
    bad.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (bad / name).write_bytes((tiny_dir / name).read_bytes())
    (bad / "model.safetensors").write_bytes((tiny_dir / "model.safetensors").read_bytes()[:5000])
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("restorelcc inspect: error: cannot read ")
    assert str(bad / "model.safetensors") in err and len(err.splitlines()) == 1


def test_inspect_refuses_a_json_directory_before_the_work(tiny_dir, tmp_path, capsys):
    folder = tmp_path / "reports"
    folder.mkdir()
    assert main(["inspect", str(tiny_dir), "--json", str(folder)]) == 2
    printed = capsys.readouterr()
    assert f"--json {folder} is a directory" in printed.err
    assert printed.out == ""  # no tables before the error
    assert list(folder.iterdir()) == []


def test_prune_refuses_an_unsupported_family_before_the_weights_load(
    tmp_path, gpt2_checkpoint, no_model_loads, capsys
):
    path = gpt2_checkpoint
    capsys.readouterr()
    rc = main(
        ["prune", "--model", str(path), "--method", "magnitude", "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    assert "model family 'gpt2' is not supported" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--calibration", "squad"],
            "--method magnitude uses no calibration data: it does not use --calibration",
        ),
        (["--nsamples", "4", "--seqlen", "32"], "does not use --nsamples, --seqlen"),
        (["--chunk-size", "2"], "does not use --chunk-size"),
        (["--seed", "3"], "does not use --seed"),
        (["--ppl-tokens", "300"], "--ppl-tokens applies only to --eval: give --eval too"),
        (
            ["--ppl-source", "t.txt", "--ppl-tokens", "30"],
            "--ppl-tokens, --ppl-source apply only to --eval: give --eval too",
        ),
    ],
)
def test_magnitude_refuses_the_options_it_would_ignore(tiny_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--out", str(out)]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_calibrated_methods_keep_their_options(tiny_dir, calib_file, tmp_path):
    argv = ["prune", "--model", str(tiny_dir), "--method", "wanda", "--calibration",
            str(calib_file), "--nsamples", "2", "--seqlen", "16", "--chunk-size", "1",
            "--seed", "1", "--quiet", "--out", str(tmp_path / "w")]  # fmt: skip
    assert main(argv) == 0


def test_eval_reads_its_perplexity_text_from_ppl_source(tiny_dir, calib_file, tmp_path):
    out = tmp_path / "evaluated"
    rc = main(
        ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--eval", "--ppl-source",
         str(calib_file), "--ppl-tokens", "100", "--quiet", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    ppl = json.loads((out / "prune_report.json").read_text())["evaluation"]["perplexity"]
    assert ppl["source"] == str(calib_file) and ppl["tokens"] == 100


def test_a_missing_ppl_source_fails_before_the_model_loads(tmp_path, capsys):
    argv = ["prune", "--model", str(tmp_path / "no-model"), "--method", "magnitude", "--eval",
            "--ppl-source", str(tmp_path / "none.txt"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    assert "unknown perplexity source" in capsys.readouterr().err  # not the missing model


@pytest.mark.parametrize("where", ["same", "parent"])
def test_an_out_that_would_delete_the_model_is_refused(tiny_dir, where, capsys):
    """--out MODEL --overwrite used to replace the model by its pruned copy; --out above it
    to delete it with the rest of that folder."""
    out = tiny_dir if where == "same" else tiny_dir.parent
    before = sorted(p.name for p in tiny_dir.iterdir())
    argv = ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--out", str(out)]
    assert main([*argv, "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    expected = "is --model" if where == "same" else "holds --model"
    assert f"--out {out} {expected} {tiny_dir}" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tiny_dir.iterdir()) == before


def test_an_out_inside_the_model_folder_is_refused(tiny_dir, capsys):
    out = tiny_dir / "pruned"
    argv = ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"restorelcc prune: error: --out {out} is inside --model {tiny_dir}: the "
        "output would be written into that input; choose an --out outside it"
    )
    assert not out.exists()


def test_a_local_folder_named_like_a_builtin_source_is_no_input(tiny_dir, tmp_path, monkeypatch):
    """--calibration mix (or --ppl-source lambada) reads the built-in source, never a local
    folder of that name: an --out of that name replaces nothing the run reads."""
    monkeypatch.chdir(tmp_path)
    for name in ("mix", "lambada"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "prune_report.json").write_text("{}")  # an earlier output
    argv = ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--quiet", "--overwrite"]
    assert main([*argv, "--out", "mix"]) == 0  # --calibration mix is the default, unused here
    assert (tmp_path / "mix" / "prune_report.json").is_file()
    eval_options = ["--eval", "--ppl-source", "lambada", "--ppl-tokens", "64"]
    assert main([*argv, *eval_options, "--out", "lambada"]) == 0
    assert (tmp_path / "lambada" / "prune_report.json").is_file()


def test_an_unwritable_out_fails_before_the_model_loads(unwritable_dir, tmp_path, capsys):
    out = unwritable_dir / "pruned"
    argv = ["prune", "--model", str(tmp_path / "no-model"), "--method", "magnitude"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"restorelcc prune: error: --out {out}: cannot write in ")


def test_the_checkpoint_is_readable_by_everyone_the_umask_allows(tiny_dir, tmp_path):
    """safetensors wrote model.safetensors 0600 (the folder 0755): other users of a shared
    checkpoint could list it but not load it."""
    previous = os.umask(0o022)
    try:
        out = tmp_path / "out"
        argv = ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--quiet"]
        assert main([*argv, "--out", str(out)]) == 0
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}


def test_a_seqlen_beyond_the_models_positions_is_refused_before_the_weights_load(
    tiny_dir, calib_file, tmp_path, monkeypatch, capsys
):
    """It had calibrated on 300-token windows of a model of 256 positions without a word."""
    import restorelcc.assets

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before --seqlen was checked")

    monkeypatch.setattr(restorelcc.assets, "load_model", no_weights)
    rc = main(
        ["prune", "--model", str(tiny_dir), "--method", "wanda", "--calibration", str(calib_file),
         "--nsamples", "2", "--seqlen", "300", "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert rc == 2
    assert "--seqlen 300: more tokens than the 256 positions" in capsys.readouterr().err


@pytest.mark.parametrize("quiet", [False, True])
def test_inspect_swap_loads_the_model_without_bars_when_quiet(tiny_dir, monkeypatch, quiet):
    """inspect --swap loads the model (transformers' loading bar) and had no --quiet."""
    from transformers.utils import logging

    import restorelcc.assets

    load_model, bars = restorelcc.assets.load_model, []

    def load(*args, **kwargs):
        bars.append(logging.is_progress_bar_enabled())
        return load_model(*args, **kwargs)

    monkeypatch.setattr(restorelcc.assets, "load_model", load)
    logging.enable_progress_bar()
    assert main(["inspect", str(tiny_dir), "--swap", "auto", *(["--quiet"] if quiet else [])]) == 0
    assert bars == [not quiet] and logging.is_progress_bar_enabled()


def test_overwrite_replaces_an_earlier_prune_out_and_nothing_else(tiny_dir, tmp_path, capsys):
    """--overwrite deletes the whole --out folder: only an earlier output of prune (one
    holding prune_report.json) is replaced; another non-empty folder is refused as is."""
    out = tmp_path / "out"
    argv = ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert main([*argv, "--sparsity", "0.6", "--overwrite"]) == 0  # an earlier output
    assert json.loads((out / "prune_report.json").read_text())["sparsity"] == 0.6
    capsys.readouterr()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    argv[argv.index("--out") + 1] = str(tmp_path / "notes")
    assert main([*argv, "--overwrite"]) == 2
    assert "holds no prune_report.json" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_tilde_paths_are_the_home_folders_for_every_check(tiny_dir, tmp_path, capsys, monkeypatch):
    """--model=~/x --out=~/x (the shell expands neither) had passed the check that --out
    is not an input, then replaced the checkpoint; --json=~/folder had been refused only
    after the work, naming a temporary file."""
    monkeypatch.setenv("HOME", str(tiny_dir.parent))
    home_model = f"~/{tiny_dir.name}"
    argv = ["prune", f"--model={home_model}", "--method", "magnitude", f"--out={home_model}",
            "--overwrite", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert f"--out {tiny_dir} is --model {tiny_dir}" in capsys.readouterr().err
    (tmp_path / "reports").mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "none", "--ppl-tokens", "50",
            "--json=~/reports", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert f"--json {tmp_path / 'reports'} is a directory" in capsys.readouterr().err

"""Options shared by the subcommands: ``--device``, ``--quiet``, the perplexity options
(their windows' checks, the warning that their text ran out), positive integers, outputs
that would replace an input, options a run would ignore, library messages rewritten to
name flags. The ``--json`` report's path and writing: ``restorelcc.commands.reports``;
``--adapter``: ``restorelcc.commands.adapter_options``; the swap's options:
``restorelcc.commands.swap_options``."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from restorelcc.commands.reports import is_report
from restorelcc.data import DEFAULT_PERPLEXITY_SOURCE
from restorelcc.errors import RestoreLCCError, warn_user
from restorelcc.eval.perplexity import DEFAULT_TOKENS, DEFAULT_WINDOW, perplexity_windows
from restorelcc.eval.scoring import model_max_length
from restorelcc.io import counted

if TYPE_CHECKING:
    import torch


def positive_int(text: str) -> int:
    """An argparse ``type`` for values that must be integers >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def auto_count(text: str) -> int | None:
    """An argparse ``type`` for ``--ppl-window``, ``--ppl-stride``: a count, or ``auto`` (None)."""
    return None if text.strip().lower() == "auto" else positive_int(text)


def limit_value(text: str) -> int | None:
    """An argparse ``type`` for ``--limit``: a positive count, or ``all``/``none`` (None:
    every item)."""
    return None if text.lower() in ("none", "all") else positive_int(text)


def remember_defaults(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Keep the defaults of the options ``names`` on the parsed namespace, for
    ``given_options``."""
    parser.set_defaults(option_defaults={name: parser.get_default(name) for name in names})


def given_options(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """Those of ``names`` (remembered by ``remember_defaults``) set to other than their
    default, as flags (``--max-steps``)."""
    return [flag(name) for name in names if getattr(args, name) != args.option_defaults[name]]


def flag(name: str) -> str:
    """The command-line flag of the argparse destination (or config field) ``name``:
    ``max_grad_norm`` -> ``--max-grad-norm``."""
    return "--" + name.replace("_", "-")


def refuse_unused(args: argparse.Namespace, names: Iterable[str], why: str, error=ValueError):
    """Raise ``error`` if any of ``names`` was given (``given_options``) where this run
    would ignore it: "``--a, --b``: ``why``"."""
    given = given_options(args, names)
    if given:
        raise error(f"{', '.join(given)}: {why}")


def check_eval_options(args: argparse.Namespace, names: Iterable[str], error=ValueError):
    """Refuse (``error``) the ``--eval``-only options ``names`` given without ``--eval``, and
    ``--ppl-window``, ``--ppl-stride`` whether ``names`` lists them or not; with ``--eval``,
    check those two as far as they can be without the model (``check_perplexity_options``)."""
    if args.eval:
        check_perplexity_options(args, error=error)
        return
    windows = [name for name in PERPLEXITY_WINDOWS if name not in names]
    given = [*given_options(args, names), *(flag(n) for n in windows if getattr(args, n, None))]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise error(f"{', '.join(given)} {verb} only to --eval: give --eval too")


# A config field that a message names as its subject, or as a value to pass.
_FIELD_ROLE = r"(?=( must| only|=| and \w+ must| \S+ was requested))"


def name_flags(message: str, fields: Iterable[str]) -> str:
    """A library check's ``message`` (naming its parameters) with each of ``fields`` as
    the flag a user typed: ``lr must be positive`` -> ``--lr must be positive``; ``pass
    sparsity=0.5`` -> ``pass --sparsity 0.5``. Only a field that the message names as its
    subject (``x must``, ``x only``, ``x and y must``, ``x V was requested``) or as a value
    to pass (``x=V``) is rewritten, not the same word elsewhere (``sparsity pattern``)."""
    for field in fields:
        message = re.sub(rf"\b{re.escape(field)}{_FIELD_ROLE}", flag(field), message)
        message = re.sub(rf"{re.escape(flag(field))}=", f"{flag(field)} ", message)
    return message


def warn_if_text_ran_out(ppl: dict, args: argparse.Namespace) -> None:
    """Warn that the perplexity ``ppl`` (``PerplexityResult.as_dict``) scored fewer tokens than
    ``--ppl-tokens`` give at its windows: ``--ppl-source`` ran out (the figure stands)."""
    from restorelcc.eval.perplexity import scored_count

    scored = ppl["tokens"]
    if scored < scored_count(args.ppl_tokens, ppl["window"], ppl["stride"]):
        those = "that one" if scored == 1 else f"those {scored}"
        warn_user(
            f"--ppl-tokens {args.ppl_tokens}: --ppl-source {args.ppl_source} ran out after "
            f"{counted(scored, 'scored token')}; the perplexity is of {those}",
        )


def data_input(source: str | None) -> str | None:
    """A data option's value as ``check_spares_inputs`` takes it: None for a built-in
    source name (``mix``, ``squad``, ``lambada``...), which the loaders read rather than
    a local folder of that name."""
    from restorelcc.data import is_builtin_source

    return None if source is None or is_builtin_source(source) else source


def check_spares_inputs(
    option: str,
    path: str | Path,
    inputs: Mapping[str, str | os.PathLike | None],
    folder: bool = False,
) -> None:
    """Refuse an output ``path`` (``option``: ``--out`` or ``--json``) whose writing would
    delete one of ``inputs`` (flag -> the path given; names that are not paths, such as
    ``smollm2-135m`` or ``lambada``, are skipped): the output is the input, or holds it
    (an ``--out`` directory is replaced whole), or is an existing file inside an input
    folder (a checkpoint's ``config.json``) other than an earlier report. An output
    ``folder`` (``--out``) is refused anywhere inside an input folder too: the input would
    hold it from then on (a checkpoint with a second model's files in a subfolder, a data
    folder whose next read takes the output's files as data)."""
    target = Path(path).expanduser().resolve()
    for name, given in inputs.items():
        if given is None or not Path(given).expanduser().exists():
            continue
        source = Path(given).expanduser().resolve()
        if target == source:
            raise ValueError(f"{option} {path} is {name} {given}: writing it would replace it")
        if target in source.parents:
            raise ValueError(
                f"{option} {path} holds {name} {given}: writing it would delete it; choose "
                f"another {option}"
            )
        if folder and source in target.parents and source.is_dir():
            raise ValueError(
                f"{option} {path} is inside {name} {given}: the output would be written into "
                f"that input; choose an {option} outside it"
            )
        if source in target.parents and target.is_file() and not is_report(target):
            raise ValueError(
                f"{option} {path} is a file of {name} {given}: writing it would replace it"
            )


def model_head_count(model: str, heads: int | float) -> int:
    """The heads that ``heads`` (a count or a fraction of all, as ``--heads`` takes it)
    stands for in ``model``, from its config alone (no weights load); ``ValueError``
    naming ``--model`` or ``--heads``."""
    from restorelcc.assets import load_config
    from restorelcc.hf.families import head_geometry
    from restorelcc.lcc.probing import head_count

    try:
        geometry = head_geometry(load_config(model))
    except RestoreLCCError as error:
        raise ValueError(f"--model {model}: {error}") from None
    try:
        return head_count(geometry, heads)
    except ValueError as error:
        raise ValueError(f"--heads {heads}: {error}") from None


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if there is one)"
    )


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


# The perplexity's window options (default None: "auto"), and their flags.
PERPLEXITY_WINDOWS = ("ppl_window", "ppl_stride")
PERPLEXITY_FLAGS = ("--ppl-window", "--ppl-stride")
PPL_WINDOW_HELP = f"tokens per window; auto: {DEFAULT_WINDOW}, or the model's length where shorter"
PPL_STRIDE_HELP = (
    "tokens from a window's start to the next's, at most the window (each scores the tokens "
    "the one before did not reach; --ppl-window's value gives disjoint windows: the paper's "
    "WikiText-2 protocol with 2048); auto: half the window"
)


def add_perplexity_arguments(
    parser: argparse.ArgumentParser, what: str = "perplexity", tokens_group=None
) -> None:
    """``--ppl-tokens`` (into ``tokens_group`` if given: a mutually exclusive group),
    ``--ppl-source``, ``--ppl-window``, ``--ppl-stride``; ``what`` starts their help."""
    (tokens_group or parser).add_argument(
        "--ppl-tokens",
        type=positive_int,
        default=DEFAULT_TOKENS,
        help=f"{what}: tokens scored (less each later window's first where windows are disjoint)",
    )
    parser.add_argument(
        "--ppl-source",
        default=DEFAULT_PERPLEXITY_SOURCE,
        help=f"{what}: its text, '{DEFAULT_PERPLEXITY_SOURCE}' (LAMBADA passages), a text "
        "file, a folder of text files, or JSON/JSONL/save_to_disk rows with a 'text' column "
        "(e.g. WikiText-2's test split)",
    )
    for option, text in zip(PERPLEXITY_FLAGS, (PPL_WINDOW_HELP, PPL_STRIDE_HELP), strict=True):
        text = f"{what}: {text} (default: auto)"
        parser.add_argument(option, type=auto_count, default=None, metavar="N", help=text)


def check_perplexity_options(
    args: argparse.Namespace, config=None, error=ValueError, tokenizer=None
):
    """The ``(window, stride)`` of ``--ppl-window``, ``--ppl-stride`` (``perplexity_windows``)
    for the model of ``config`` if given (before the weights load; with its ``tokenizer``'s
    limit too where given); ``error`` names a fault."""
    limit = None if config is None else model_max_length(config, tokenizer)
    try:
        return perplexity_windows(args.ppl_window, args.ppl_stride, limit, PERPLEXITY_FLAGS)
    except ValueError as exc:
        raise error(str(exc)) from None


def resolve_device(text: str | None, option: str = "--device ") -> torch.device:
    """The ``--device`` value as a ``torch.device``: CUDA when none is given and one is
    available, else the CPU. Raises ``ValueError`` for a malformed or unavailable device,
    naming it as ``option`` followed by the value (``"device="`` for an API argument)."""
    import torch  # here, so that parsing the command line stays fast

    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"{option}{text!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option}{text}: no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{option}{text}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    elif device.type != "cpu":
        raise ValueError(f"{option}{text}: only cpu and cuda devices are supported")
    return device

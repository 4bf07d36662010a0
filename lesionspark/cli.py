"""``lesionspark <stage>``: one subcommand per stage, all on the same configuration keys.

Every subcommand takes ``--conf FILE`` and trailing ``key.path=value`` overrides; its own flags are
shortcuts for keys (``--size 64`` is ``dataset.image_size=64``). ``spark-submit jobs/<stage>.py``
calls the same code with the same arguments.
Exit codes: ``exitcodes.table()`` (shown by ``lesionspark --help``).

Runs on the driver: parses arguments and calls one stage's library function.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .core.config import Config, ConfigError
from .store.spark import apply_umask, configure_storage
from .store.storage import StorageRefused
from .core.signals import Terminated
from .core.signals import install as install_sigterm

log = logging.getLogger("lesionspark")


def _common(p: argparse.ArgumentParser) -> None:
    from .exitcodes import text
    p.epilog, p.formatter_class = text(), argparse.RawDescriptionHelpFormatter  # every command shows the table
    p.add_argument("--conf", help="YAML configuration merged over the defaults")
    p.add_argument("--root", dest="storage.root", help="storage root URI (storage.root)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="configuration overrides")


def build_parser() -> argparse.ArgumentParser:
    from .exitcodes import text
    parser = argparse.ArgumentParser(prog="lesionspark", description=__doc__.split("\n")[0], epilog=text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="stage", required=True)
    for add in (_data_commands, _model_commands, _output_commands, _run_commands):
        add(sub)
    return parser


def _data_commands(sub) -> None:
    """synth, ingest, balance."""
    p = sub.add_parser("synth", help="generate a HAM10000-shaped dataset (genuine metadata, generated images)")
    _common(p)
    p.add_argument("--out", dest="synth.out", help="output folder (synth.out)")
    p.add_argument("--n-images", dest="synth.n_images", type=int, help="generated images (synth.n_images)")
    p.add_argument("--seed", dest="synth.seed", type=int)
    p.add_argument("--no-genuine", dest="synth.with_genuine", action="store_const", const=False,
                   help="leave out the 56 genuine JPEGs")

    p = sub.add_parser("ingest", help="HAM10000 CSV + JPEG folders (or hmnist CSV) -> Petastorm splits")
    _common(p)
    p.add_argument("--metadata", dest="ingest.metadata", help="metadata CSV URI (ingest.metadata)")
    p.add_argument("--images", dest="ingest.images", nargs="+", help="image folder URIs (ingest.images)")
    p.add_argument("--hmnist", dest="ingest.hmnist", help="hmnist_<s>_<s>_{L,RGB}.csv URI (ingest.hmnist)")
    p.add_argument("--name", dest="dataset.name", help="dataset name (dataset.name)")
    p.add_argument("--size", dest="dataset.image_size", type=int, help="image size (dataset.image_size)")

    p = sub.add_parser("balance", help="SMOTE / oversample / class weights on the training split")
    _common(p)
    p.add_argument("--name", dest="dataset.name", help="dataset name (dataset.name)")
    p.add_argument("--method", dest="balance.method", choices=["smote", "oversample", "weights", "none"])
    p.add_argument("--target", dest="balance.target", choices=["majority", "ratio", "counts"])
    p.add_argument("--ratio", dest="balance.ratio", type=float)


def _model_commands(sub) -> None:
    """train, evaluate, explain."""
    p = sub.add_parser("train", help="train a model with Horovod workers on Spark")
    _common(p)
    p.add_argument("--name", dest="dataset.name", help="dataset name (dataset.name)")
    p.add_argument("--model", dest="model.arch", choices=["cnn", "resnet50", "efficientnet"])
    p.add_argument("--balance", dest="train.balance", choices=["smote", "oversample", "weights", "none"])
    p.add_argument("--num-proc", dest="train.num_proc", type=int, help="Horovod workers (train.num_proc)")
    p.add_argument("--epochs", dest="train.epochs", type=int)
    p.add_argument("--metadata", dest="model.metadata", nargs="+", choices=["age", "sex", "localization"],
                   help="clinical inputs fused with the image (model.metadata)")
    p.add_argument("--run-id", dest="train.run_id", help="resume this run from its last checkpoint")

    p = sub.add_parser("evaluate", help="metrics, plots and a report for a model version on dataset splits")
    _common(p)
    p.add_argument("--model", dest="evaluate.model",
                   help="name[:version|latest], or the URI of a model version folder (evaluate.model)")
    p.add_argument("--name", dest="evaluate.dataset", help="dataset (evaluate.dataset; default: the model's)")
    p.add_argument("--splits", dest="evaluate.splits", nargs="+", help="splits to report (evaluate.splits)")

    p = sub.add_parser("explain", help="Grad-CAM heatmap overlays + table for a model over a split or a folder")
    _common(p)
    p.add_argument("--model", dest="explain.model",
                   help="name[:version|latest], or the URI of a model version folder (explain.model)")
    p.add_argument("--split", dest="explain.split", help="a split of the model's dataset (explain.split)")
    p.add_argument("--images", dest="explain.images", help="an image folder URI instead of a split (explain.images)")
    p.add_argument("--limit", dest="explain.limit", type=int, help="at most this many images, 0 = all (explain.limit)")


def _output_commands(sub) -> None:
    """score, compare, sql, serve."""
    p = sub.add_parser("score", help="score an image archive into tables/predictions (incremental)")
    _common(p)
    p.add_argument("--archive", dest="score.archive", help="image folder tree URI (score.archive)")
    p.add_argument("--model", dest="score.model",
                   help="name[:version|latest], or the URI of a model version folder (score.model)")
    p.add_argument("--metadata-csv", dest="archive.metadata_csv",
                   help="image_id,age,sex,localization side-car for a model with metadata inputs (archive.metadata_csv)")
    p.add_argument("--dry-run", dest="score.dry_run", action="store_const", const=True,
                   help="print what would be listed, hashed, scored and skipped; write nothing (score.dry_run)")
    p.add_argument("--wait", dest="score.lease_wait_s", type=float,
                   help="seconds to wait for another run holding the root (score.lease_wait_s)")

    p = sub.add_parser("compare", help="models side by side from the metrics table")
    _common(p)
    p.add_argument("--split", default="test", help="which split's metrics (default test)")
    p.add_argument("--name", dest="dataset_filter", help="only this dataset")

    p = sub.add_parser("sql", help="run Spark SQL over the tables under the storage root")
    _common(p)
    p.add_argument("--query", "-q", required=True, help="the SQL query")
    p.add_argument("--out", help="write the result to a .csv or Parquet path (outside the storage root) "
                                 "instead of printing it")
    p.add_argument("--allow-writes", action="store_true",
                   help="also run statements that write, change the catalog or read raw files (default: queries only)")


    p = sub.add_parser("serve", help="a read-only JDBC/ODBC endpoint (Spark's Thrift server) over the tables")
    _common(p)
    p.add_argument("--host", dest="serve.host", help="listen address (serve.host; default loopback)")
    p.add_argument("--port", dest="serve.port", type=int, help="port (serve.port)")
    p.add_argument("--allow-unauthenticated", dest="serve.allow_unauthenticated", action="store_const", const=True,
                   help="listen beyond loopback without authentication (serve.allow_unauthenticated)")


def _run_commands(sub) -> None:
    """pipeline, demo."""
    p = sub.add_parser("pipeline", help="ingest, balance, train, evaluate and score in order (pipeline.steps)")
    _common(p)
    p.add_argument("--steps", dest="pipeline.steps", nargs="+", help="a subset, in order (pipeline.steps)")

    p = sub.add_parser("demo", help="every stage on a built-in default: no cluster, no downloads")
    _common(p)
    p.add_argument("--n-images", dest="demo.n_images", type=int, help="generated images (demo.n_images)")


def load_config(args: argparse.Namespace) -> Config:
    shortcuts = {k: v for k, v in vars(args).items() if "." in k}
    return Config.load(args.conf, args.overrides).with_overrides(shortcuts)


def main(argv: list[str] | None = None) -> int:
    from .core.progress import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    install_sigterm()
    try:
        cfg = load_config(args)
        apply_umask(cfg)  # before anything is written, the lease and run rows of score included
        configure_storage(cfg)  # before the first storage call: a stage may check its inputs before Spark starts
    except (ConfigError, OSError, StorageRefused) as exc:
        print(f"lesionspark: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.stage == "sql":
            result = run_sql(cfg, args.query, args.out, args.allow_writes)
        elif args.stage == "compare":
            result = run_compare(cfg, args.split, args.dataset_filter)
        else:
            result = STAGES[args.stage](cfg)
    except (ConfigError, ValueError) as exc:
        log.error("%s failed: %s", args.stage, exc)
        return 2 if isinstance(exc, ConfigError) else 1
    except Terminated as exc:
        log.error("%s: %s (exit %d)", args.stage, exc, exc.exit_code)
        return exc.exit_code
    except Exception as exc:  # the message, not a stack trace, is what a scheduler shows
        code = getattr(exc, "exit_code", 1)
        if code == 1:
            log.exception("%s failed: %s", args.stage, exc)
        else:
            log.error("%s: %s (exit %d)", args.stage, exc, code)
        return code
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


def run_synth(cfg: Config) -> dict:
    from .imaging.synth import synth_from_config
    return synth_from_config(cfg)


def run_ingest(cfg: Config) -> dict:
    from .ingest.driver import ingest
    from .store.spark import get_spark
    manifest = ingest(get_spark(cfg), cfg)
    return {k: manifest[k] for k in ("dataset", "run_id", "image_size", "counts", "timing", "fingerprint")}


def run_balance(cfg: Config) -> dict:
    from .balance.driver import balance
    from .store.spark import get_spark
    return balance(get_spark(cfg), cfg)


def run_train(cfg: Config) -> dict:
    from .store.spark import get_spark
    from .train.driver import train
    card = train(get_spark(cfg), cfg)
    return {k: card[k] for k in ("name", "version", "architecture", "balance", "epochs_run", "workers", "metrics")}


def run_score(cfg: Config) -> dict:
    from .score.driver import score
    from .store.spark import get_spark
    return score(lambda: get_spark(cfg), cfg)


def run_evaluate(cfg: Config) -> dict:
    from .evaluate.driver import evaluate
    from .store.spark import get_spark
    return evaluate(get_spark(cfg), cfg)


def run_explain(cfg: Config) -> dict:
    from .explain.driver import explain
    from .store.spark import get_spark
    return explain(get_spark(cfg), cfg)


def _print_frame(frame) -> None:
    import pandas as pd
    with pd.option_context("display.max_columns", 30, "display.width", 200, "display.max_colwidth", 60,
                           "display.float_format", "{:.3f}".format):
        print(frame.to_string(index=False))


def run_compare(cfg: Config, split: str = "test", dataset: str | None = None) -> None:
    from .evaluate.driver import compare
    from .store.spark import get_spark
    _print_frame(compare(get_spark(cfg), cfg.get("storage.root"), split, dataset))
    return None


def run_serve(cfg: Config) -> dict:
    from .sql.serve import serve
    return serve(cfg)


def run_sql(cfg: Config, query: str, out: str | None, allow_writes: bool = False):
    from .store.spark import get_spark
    from .sql.query import run_query
    result = run_query(get_spark(cfg), cfg.get("storage.root"), query, out, bool(cfg.get("sql.metastore")),
                       allow_writes=allow_writes)
    if out:
        return result
    _print_frame(result)
    return None


def run_pipeline(cfg: Config) -> dict:
    from .pipeline import pipeline
    from .store.spark import get_spark
    return pipeline(get_spark(cfg), cfg)


def run_demo(cfg: Config) -> dict:
    from .pipeline import demo
    result = demo(cfg)
    print("\n== models compared on the test split (from the metrics table) ==")
    _print_frame(result.pop("compare"))
    for what, sql, frame in result.pop("queries"):
        print(f"\n== {what} ==\n$ lesionspark sql -q \"{sql}\"")
        _print_frame(frame)
    print("\n== reports ==")
    for name, m in result["models"].items():
        print(f"{name}: {m['report']}  (test balanced accuracy {m['test']['balanced_accuracy']:.3f}, "
              f"macro F1 {m['test']['macro_f1']:.3f})")
    result["score"] = {k: result["score"][k] for k in ("run_id", "model", "model_version", "archive", "listed",
                                                       "scored", "rejected", "skipped")}
    for m in result["models"].values():
        m["test"] = {k: m["test"][k] for k in ("n_images", "accuracy", "balanced_accuracy", "macro_f1", "malignant_auc")}
    print(f"\ndemo finished in {result['demo_seconds']:.0f}s")
    return result


STAGES = {"synth": run_synth, "ingest": run_ingest, "balance": run_balance, "train": run_train,
          "score": run_score, "evaluate": run_evaluate, "explain": run_explain, "pipeline": run_pipeline, "demo": run_demo,
          "serve": run_serve}


if __name__ == "__main__":
    sys.exit(main())

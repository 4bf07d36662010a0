"""Nothing read from a query or from the storage root runs code: the read-only SQL guard by
allow-list, ``--out`` however it is spelled, Petastorm's schema unpickler, Keras model configs by
allow-list, model cards whose names would build paths. Each test has a control showing that the
input does run code (or does harm) without the guard."""
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import pytest

from lesionspark.sql.query import SqlRefused, check_out, run_query

PLANT_SCHEMA = textwrap.dedent("""
    import sys, pickle, builtins
    import pyarrow as pa, pyarrow.parquet as pq
    folder, marker = sys.argv[1], sys.argv[2]
    class Payload:
        def __reduce__(self):
            return (builtins.exec, (f"open({marker!r}, 'w').close()",))
    table = pa.table({"image_id": ["a"], "dx": ["nv"]})
    pq.write_table(table, f"{folder}/part-00000.parquet")
    meta = table.schema.with_metadata({b"dataset-toolkit.unischema.v1": pickle.dumps(Payload()),
                                       b"dataset-toolkit.num_row_groups_per_file.v1": b'{"part-00000.parquet": 1}'})
    pq.write_metadata(meta, f"{folder}/_common_metadata")
""")
READ = "import sys\n{imp}\ntry: make_reader('file://' + sys.argv[1])\nexcept Exception as e: print(type(e).__name__, e)"


@pytest.fixture()
def planted_split(tmp_path):
    split = tmp_path / "root" / "datasets" / "ham10000" / "train"
    split.mkdir(parents=True)
    marker = tmp_path / "RAN"
    subprocess.run([sys.executable, "-c", PLANT_SCHEMA, str(split), str(marker)], check=True)
    return split, marker


def _read(split, imp):
    return subprocess.run([sys.executable, "-c", READ.format(imp=imp), str(split)], capture_output=True, text=True)


def test_a_planted_schema_pickle_runs_code_in_plain_petastorm(planted_split):
    split, marker = planted_split
    _read(split, "from petastorm import make_reader")
    assert marker.exists()  # the control: petastorm's own unpickler allows builtins.exec


def test_a_planted_schema_pickle_runs_nothing_in_a_horovod_rank(planted_split):
    """A rank imports lesionspark.train.executor, which reads through lesionspark.dataset.petastorm_reader."""
    split, marker = planted_split
    out = _read(split, "import lesionspark.train.executor\nfrom lesionspark.dataset.petastorm_reader import make_reader")
    assert "UnpicklingError" in out.stdout and "builtins.exec" in out.stdout, (out.stdout, out.stderr[-2000:])
    assert not marker.exists()


def test_the_unpickler_allows_every_global_the_project_schemas_use():
    from lesionspark.balance.executor import balanced_schema
    from lesionspark.dataset.petastorm_reader import ALLOWED_GLOBALS
    from lesionspark.dataset.schema import lesion_schema
    used = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            used.add((module, name))
            return super().find_class(module, name)

    for schema in [lesion_schema(s) for s in (28, 64, 128, 224)] + [balanced_schema(64)]:
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
            Recorder(io.BytesIO(pickle.dumps(schema, protocol=protocol))).load()
    assert used and used <= ALLOWED_GLOBALS, used - ALLOWED_GLOBALS


# --- SQL ----------------------------------------------------------------------------------------

@pytest.mark.spark
@pytest.mark.parametrize("query", [
    "SELECT TRANSFORM(a) USING 'touch /tmp/ls-transform' AS (b) FROM VALUES (1) AS t(a)",
    "SELECT reflect('java.lang.System', 'getenv', 'LESIONSPARK_PLANTED_SECRET')",
    "SELECT java_method('java.lang.Thread', 'sleep', 60000L)",
    "SELECT upper(try_reflect('java.lang.System', 'getenv', 'HOME'))",
    "WITH x AS (SELECT reflect('java.lang.System', 'getenv', 'HOME') AS v) SELECT * FROM x",
    "SELECT 1 WHERE EXISTS (SELECT java_method('java.lang.System', 'load', '/tmp/x.so'))",
    "SELECT xpath_string('<a/>', 'a')",
    "SELECT default.my_udf(1)",
    "SELECT * FROM parquet.`/etc`",
])
def test_sql_refuses_script_transforms_reflection_and_foreign_names(spark, tmp_path, query, monkeypatch):
    monkeypatch.setenv("LESIONSPARK_PLANTED_SECRET", "s3cr3t-value")
    with pytest.raises(SqlRefused) as refused:
        run_query(spark, str(tmp_path), query)
    assert "s3cr3t" not in str(refused.value)
    assert not os.path.exists("/tmp/ls-transform")


@pytest.mark.spark
def test_the_reflection_the_guard_refuses_does_reach_the_jvm_without_it(spark, tmp_path):
    """The control: Spark itself runs reflect (the JVM's environment: on a cluster, its S3 keys)."""
    rows = spark.sql("SELECT reflect('java.lang.System', 'getProperty', 'java.version') AS v").collect()
    assert rows[0]["v"]


@pytest.mark.spark
def test_sql_still_runs_what_analysts_write(spark, tmp_path):
    q = """WITH t AS (SELECT * FROM VALUES ('nv', 0.9), ('mel', 0.7), ('nv', 0.4) AS t(dx, p))
           SELECT dx, count(*) AS n, round(avg(p), 2) AS mean_p,
                  row_number() OVER (ORDER BY count(*) DESC) AS rank,
                  (SELECT max(p) FROM t) AS top,
                  transform(array(1, 2), x -> x * 2) AS doubled
           FROM t WHERE dx IN (SELECT dx FROM t WHERE p > 0.5) GROUP BY dx ORDER BY n DESC"""
    out = run_query(spark, str(tmp_path), q)
    assert out["dx"].tolist() == ["nv", "mel"] and out["n"].tolist() == [2, 1] and float(out["top"].iloc[0]) == 0.9
    assert len(run_query(spark, str(tmp_path), "SELECT * FROM range(3) CROSS JOIN explode(array(1, 2))")) == 6


def test_sql_out_is_judged_however_it_is_spelled(tmp_path, monkeypatch):
    root = tmp_path / "data" / "root"
    (root / "tables").mkdir(parents=True)
    os.symlink(root, tmp_path / "link-to-root")
    bad = [tmp_path / "data", tmp_path, f"file:{root}/tables", f"file://{root}", f"{root}/../root/tables/x",
           tmp_path / "link-to-root" / "tables", "/"]
    for out in bad:
        with pytest.raises(SqlRefused, match="storage root"):
            check_out(str(root), str(out))
    monkeypatch.chdir(tmp_path)  # '.' with the default root ./lesionspark-data
    with pytest.raises(SqlRefused, match="holds the storage root"):
        check_out("./lesionspark-data", ".")
    assert check_out(str(root), str(tmp_path / "data" / "export.csv")).endswith("export.csv")
    assert check_out("s3a://b/root", "s3a://b/exports/x").startswith("s3a://b/exports")
    with pytest.raises(SqlRefused):
        check_out("s3a://b/root", "s3a://b/exports/../root/tables")


# --- Keras model files and cards ----------------------------------------------------------------

EVIL_MODULE = textwrap.dedent("""
    import os
    open(os.environ["LESIONSPARK_MARKER"], "w").close()  # runs when Keras imports the module
    class Evil:
        @classmethod
        def from_config(cls, config):
            open(os.environ["LESIONSPARK_MARKER"], "w").close()
            raise ValueError("evil ran")
""")


def _tiny_model(path):
    import tensorflow as tf
    inputs = tf.keras.Input((4,))
    tf.keras.Model(inputs, tf.keras.layers.Dense(2)(inputs)).save(path)


def _with_class(src, dst, module, name):
    """``src`` with its model class renamed to ``module.name`` in config.json (Keras imports the
    top-level object's module; layers inside are looked up among its built-ins)."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    config = json.loads(members["config.json"])
    config.update(module=module, class_name=name, registered_name=None)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)


LOAD = textwrap.dedent("""
    import sys
    path, how = sys.argv[1], sys.argv[2]
    try:
        if how == "keras":
            import tensorflow as tf
            tf.keras.models.load_model(path, compile=False, safe_mode=True)
        else:
            from lesionspark.inference.predictor import load_model
            load_model("file://" + path)
    except Exception as e:
        print(type(e).__name__, str(e)[:300])
""")


def test_a_model_config_naming_another_module_is_refused_before_keras_reads_it(tmp_path):
    (tmp_path / "evilmod.py").write_text(EVIL_MODULE)
    _tiny_model(tmp_path / "plain.keras")
    _with_class(tmp_path / "plain.keras", tmp_path / "model.keras", "evilmod", "Evil")
    marker = tmp_path / "RAN"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "LESIONSPARK_MARKER": str(marker), "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "model.keras"), "keras"], env=env, check=True)
    assert marker.exists()  # the control: Keras 2.15 imports whatever module the config names
    marker.unlink()
    out = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "model.keras"), "ours"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ModelFileRefused") and "evilmod.Evil" in out.stdout, out.stdout
    assert not marker.exists()


def test_every_model_the_project_builds_passes_the_allow_list(tmp_path):
    from lesionspark.modeling.models import build
    from lesionspark.store.modelfile import check_file
    for arch, params, meta in [("cnn", {}, 0), ("cnn", {"batchnorm": False}, 30), ("resnet50", {}, 0),
                               ("resnet50", {"mode": "finetune"}, 12), ("efficientnet", {}, 0)]:
        path = tmp_path / f"{arch}-{meta}.keras"
        build(arch, 32, 7, params, meta).save(path)
        with open(path, "rb") as fh:
            check_file(fh)


def _registry_model(root, name="m", version="v1", card_over=None):
    from conftest import publish_untrained_model
    publish_untrained_model(root, name=name, size=16)
    card_path = root / "models" / name / version / "model_card.json"
    card = json.loads(card_path.read_text())
    card.update(card_over or {})
    card_path.write_text(json.dumps(card))


@pytest.mark.parametrize("over,message", [({"name": "../../../etc"}, "not a plain name"),
                                          ({"version": "v1/../../x"}, "not a plain name"),
                                          ({"version": "v2"}, "its folder is 'v1'")])
def test_a_card_whose_name_or_version_is_not_its_folder_is_refused(tmp_path, over, message):
    from lesionspark.store.registry import ModelError, resolve_model
    _registry_model(tmp_path, card_over=over)
    for spec in ("m:v1", "m", f"file://{tmp_path}/models/m/v1"):
        with pytest.raises(ModelError, match=message):
            resolve_model(str(tmp_path), spec)


def test_an_explicit_model_spec_must_name_plain_folders(tmp_path):
    from lesionspark.store.registry import ModelError, resolve_model
    _registry_model(tmp_path)
    assert resolve_model(str(tmp_path), "m:v1")[0]["version"] == "v1"
    for spec in ("m:../m/v1", "m:..", "m/../m:v1", "m:v1/x", "m x:v1"):
        with pytest.raises(ModelError, match="not a plain name"):
            resolve_model(str(tmp_path), spec)

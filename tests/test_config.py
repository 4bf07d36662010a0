import pytest

from lesionspark.core.config import Config, ConfigError


def test_defaults_file_and_overrides_merge(tmp_path):
    user = tmp_path / "c.yaml"
    user.write_text("dataset:\n  image_size: 64\ningest:\n  split:\n    seed: 7\n")
    cfg = Config.load(str(user), ["ingest.split.train=0.8", "ingest.images=[a, b]", "spark.conf.x=1"])
    assert cfg.get("dataset.image_size") == 64
    assert cfg.get("dataset.resize") == "squash"           # default kept beside the user's key
    assert cfg.get("ingest.split.seed") == 7 and cfg.get("ingest.split.train") == 0.8
    assert cfg.get("ingest.images") == ["a", "b"]
    assert cfg.get("spark.conf.x") == 1


def test_bad_overrides_and_missing_keys_are_clear():
    with pytest.raises(ConfigError):
        Config.load(overrides=["no-equals-sign"])
    with pytest.raises(ConfigError, match="nope"):
        Config.load().get("nope.key")
    with pytest.raises(ConfigError):
        Config.load(overrides=["dataset.name.x=1"])


def test_spark_conf_overrides_become_spark_keys():
    from lesionspark.store.spark import flatten_conf
    cfg = Config.load(overrides=["spark.conf.spark.ui.showConsoleProgress=false", "spark.conf.spark.sql.shuffle.partitions=3"])
    flat = flatten_conf(cfg.get("spark.conf"))
    assert flat["spark.ui.showConsoleProgress"] == "false"
    assert flat["spark.sql.shuffle.partitions"] == "3"
    assert flat["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert not any(k == "spark" for k in flat)


def test_every_key_the_code_reads_is_in_default_yaml():
    """No fallback in code that could contradict the defaults file: every literal key read exists."""
    import re
    from pathlib import Path
    import lesionspark
    cfg = Config.load()
    src = "\n".join(p.read_text() for p in Path(lesionspark.__file__).parent.rglob("*.py"))
    keys = set(re.findall(r"""cfg\.get\(\s*["']([a-z_][a-z0-9_.]*)["']""", src))
    assert len(keys) > 80  # (the train.* keys are read once, as a section, by train.build_spec)
    missing = []
    for key in sorted(keys):
        try:
            cfg.get(key)
        except ConfigError:
            missing.append(key)
    assert not missing, missing
    # and no fallback in code: default.yaml is the one place a default lives
    fallbacks = re.findall(r"""cfg\.get\(\s*["'][a-z_][a-z0-9_.]*["']\s*,[^)]*\)""", src)
    assert not fallbacks, fallbacks


def test_training_data_follows_balance_method_unless_set():
    from pathlib import Path
    from lesionspark.train.driver import training_data
    repo = Path(__file__).resolve().parents[1]
    for conf in ("conf/cluster.yaml", "conf/local.yaml"):
        cfg = Config.load(str(repo / conf))
        assert training_data(cfg) == cfg.get("balance.method") == "smote", conf
    assert training_data(Config.load()) == "weights"
    assert training_data(Config.load(overrides=["balance.method=smote", "train.balance=none"])) == "none"


def test_a_typo_or_a_wrong_type_is_refused_at_start_naming_the_nearest_key(tmp_path, capsys):
    from lesionspark.cli import main
    from lesionspark.core.config import Config, ConfigError
    with pytest.raises(ConfigError, match=r"unknown configuration key 'score.treads'; did you mean 'inference.threads'\?"):
        Config.load(overrides=["score.treads=4"])
    with pytest.raises(ConfigError, match="'inference.threads' must be a number, not 'four'"):
        Config.load(overrides=["inference.threads=four"])
    with pytest.raises(ConfigError, match="'score.hash_paths' must be true or false, not 'sometimes'"):
        Config.load(overrides=["score.hash_paths=sometimes"])
    assert Config.load(overrides=["score.lease_ttl_s=10.0"]).get("score.lease_ttl_s") == 10.0
    conf = tmp_path / "c.yaml"
    conf.write_text("score:\n  hash_path: true\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown configuration key 'score.hash_path'; "
                                          r"did you mean 'score.hash_paths'"):
        Config.load(str(conf))
    # free-form sections take any key: Spark's settings, an architecture's parameters
    cfg = Config.load(overrides=["spark.conf.spark.sql.adaptive.enabled=false", "model.params.filters=[8, 16]"])
    assert cfg.get("model.params.filters") == [8, 16]
    assert main(["score", "--archive", str(tmp_path), "score.treads=4"]) == 2
    assert "did you mean 'inference.threads'" in capsys.readouterr().err


def test_every_key_whose_default_is_null_has_a_declared_type():
    from lesionspark.core.config import NULLABLE, Config
    import yaml
    data = yaml.safe_load(Config.load().to_yaml())
    nulls = {f"{s}.{k}" for s, sec in data.items() if isinstance(sec, dict) for k, v in sec.items() if v is None}
    assert nulls == set(NULLABLE)


def test_a_null_default_key_refuses_the_wrong_type():
    with pytest.raises(ConfigError, match=r"'train.num_proc' must be a number or null"):
        Config.load(overrides=["train.num_proc=[1, 2]"])
    assert Config.load(overrides=["train.num_proc=3"]).get("train.num_proc") == 3


def test_an_old_key_name_is_read_with_a_warning(tmp_path, caplog):
    conf = tmp_path / "old.yaml"
    conf.write_text("score:\n  threads: 3\n  batch_size: 16\nexplain:\n  method: gradcam\n")
    with caplog.at_level("WARNING"):
        cfg = Config.load(str(conf), overrides=["ingest.max_image_pixels=1000"])
    assert (cfg.get("inference.threads"), cfg.get("inference.batch_size"), cfg.get("inference.heatmap"),
            cfg.get("limits.max_image_pixels")) == (3, 16, "gradcam", 1000)
    said = caplog.text
    assert "'score.threads' is now 'inference.threads'" in said and "'ingest.max_image_pixels' is now" in said
    assert str(conf) in said  # the file that used the old name is named
    with pytest.raises(ConfigError):
        cfg.get("score.threads")  # read only under the new name

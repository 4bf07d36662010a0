import pytest

from lesionspark.config import Config, ConfigError


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
    from lesionspark.spark import flatten_conf
    cfg = Config.load(overrides=["spark.conf.spark.ui.showConsoleProgress=false", "spark.conf.spark.sql.shuffle.partitions=3"])
    flat = flatten_conf(cfg.get("spark.conf"))
    assert flat["spark.ui.showConsoleProgress"] == "false"
    assert flat["spark.sql.shuffle.partitions"] == "3"
    assert flat["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert not any(k == "spark" for k in flat)

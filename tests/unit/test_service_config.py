"""Scorer configuration: TOML files, command-line flags, shared model loading."""

import argparse

import pytest

from tokenweight import bundled
from tokenweight.bundled import default_model
from tokenweight.service import serve_cli
from tokenweight.service.config import ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "scorers.toml"
    path.write_text(text)
    return path


def test_toml_config_with_several_scorers(tmp_path, tiny_model_dir, tiny_short_model_dir):
    (tmp_path / "models").symlink_to(tiny_model_dir.parent)
    path = write(tmp_path, f"""
default = "pair"
[server]
grpc_port = 6000
max_wait_ms = 2
[[scorers]]
name = "one"
model = "models/long"
window = 64
[[scorers]]
name = "pair"
model = "{tiny_model_dir}"
short_model = "{tiny_short_model_dir}"
window = 32
stride = 8
dtype = "float32"
device = "cpu"
max_length = 256
""")
    config = load_config(path, {"grpc_port": 7000, "http_port": None})
    assert config.default_scorer == "pair"
    assert (config.server.grpc_port, config.server.http_port, config.server.max_wait_ms) == (7000, 8000, 2)
    one, pair = config.scorers
    assert one.model == str((tmp_path / "models" / "long").resolve()) and one.short_model is None
    assert (pair.window, pair.stride, pair.max_length, pair.short_model) == (32, 8, 256, str(tiny_short_model_dir))


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[scorers]]\nname = "a"\nmodel = "m"\nwindw = 3\n', "unknown keys ['windw']"),
        ('[[scorers]]\nname = "a"\nmodel = "m"\n[[scorers]]\nname = "a"\nmodel = "n"\n', "repeated: ['a']"),
        ('default = "b"\n[[scorers]]\nname = "a"\nmodel = "m"\n', "default scorer 'b'"),
        ('[server]\nport = 1\n', "defines no [[scorers]]"),
        ('[[scorers]]\nname = "a"\nmodel = "m"\n[server]\nprot = 1\n', "[server]: unknown keys ['prot']"),
        ("[[scorers]\n", "cannot read config"),
        ('[[scorers]]\nname = "a"\nmodel = "m"\n[server]\nbatches_in_flight = 0\n',
         "batches_in_flight must be positive, got 0"),
    ],
)
def test_config_errors_say_what_is_wrong(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text))


def test_a_model_shared_by_two_scorers_loads_once(tiny_scorers):
    tiny, pair = tiny_scorers["tiny"].engine, tiny_scorers["pair"].engine
    assert tiny.long_model is pair.long_model
    assert pair.short_model is not None and pair.short_model is not pair.long_model
    assert tiny_scorers["tiny"].tokenizer is tiny_scorers["pair"].tokenizer


def parse(*argv):
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_no_model_serves_the_bundled_one_with_its_window():
    model, info = default_model()
    (scorer,) = serve_cli.build_config(parse()).scorers
    assert (scorer.model, scorer.window, scorer.stride) == (str(model), info["window"], info["stride"])
    (scorer,) = serve_cli.build_config(parse("--window", "128")).scorers
    assert (scorer.model, scorer.window, scorer.stride) == (str(model), 128, None)


def test_a_missing_bundle_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "MODEL_DIR", tmp_path / "default")
    with pytest.raises(ConfigError, match="bundled default model is missing.*pass --model PATH"):
        serve_cli.build_config(parse())


def test_command_line_config(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENWEIGHT_AUTH_TOKEN", "from-env")
    config = serve_cli.build_config(parse("--model", "/m", "--window", "64", "--grpc-port", "0", "--no-http"))
    (scorer,) = config.scorers
    assert (scorer.name, scorer.model, scorer.window, scorer.stride) == ("default", "/m", 64, None)
    assert (config.server.grpc_port, config.server.http, config.server.auth_token) == (0, False, "from-env")
    assert serve_cli.build_config(parse("--model", "/m", "--auth-token", "flag")).server.auth_token == "flag"
    with pytest.raises(ConfigError, match="--window cannot be combined with --config"):
        serve_cli.build_config(parse("--config", "x.toml", "--window", "8"))
    with pytest.raises(ConfigError, match="--allow-pickle cannot be combined with --config"):
        serve_cli.build_config(parse("--config", "x.toml", "--allow-pickle"))
    with pytest.raises(ConfigError, match="--short-model needs --model"):
        serve_cli.build_config(parse("--short-model", "/s"))
    with pytest.raises(ConfigError, match="TLS needs both"):
        serve_cli.build_config(parse("--model", "/m", "--tls-cert", "c.pem"))


"""One definition per setting: the dataclass field gives the flag, its default and help text, and the
config.json check; library messages name Python settings, which the CLI shows as flags."""

import argparse
import dataclasses
import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest

import pyrovae
from pyrovae import DataConfig, ModelConfig, TrainConfig, cli, configure
from pyrovae.cli import build_parser, commands, main
from pyrovae.cli.parser import FROM_DATA, RESUMABLE
from pyrovae.data.datasets import load_dataset
from pyrovae.inference.evaluate import EvaluateConfig
from pyrovae.runs.rundir import RunDir
from pyrovae.runs.writer import RunWriter
from pyrovae.settings import (
    SettingError,
    add_arguments,
    check_choices,
    from_args,
    in_flags,
    marked,
    setting,
    settings_from_json,
)

SETTINGS = (DataConfig, ModelConfig, TrainConfig)
COMMANDS = build_parser().commands
TRAIN_FLAGS = {action.dest: action for action in COMMANDS["train"].options if action.option_strings}
FLAGS = build_parser().flags


@pytest.mark.parametrize("cls", SETTINGS)
def test_every_setting_has_a_flag_or_comes_from_the_data(cls):
    for field in dataclasses.fields(cls):
        assert (field.name in TRAIN_FLAGS) != (field.name in FROM_DATA), field.name


def test_the_marks_on_the_fields_make_the_cli_lists():
    assert FROM_DATA == marked(ModelConfig, "from_data") and set(FROM_DATA) == {"image_shape", "num_classes", "columns",
                                                                                 "grayscale_targets"}
    assert "epochs" in RESUMABLE and "device" in RESUMABLE and "lr" not in RESUMABLE
    assert not marked(DataConfig, "resumable") and not marked(TrainConfig, "from_data")


def train_configs(*argv):
    """The model and data settings that ``pyrovae train ARGV`` trains on the digits."""
    args = build_parser().parse_args(["train", *argv])
    data = commands._data_config(args)
    return commands._model_config(args, load_dataset(data)), data


DIGITS = (1, 8, 8)


@pytest.mark.parametrize("argv,model,data", [
    ([], ModelConfig(image_shape=DIGITS), DataConfig()),
    (["--likelihood", "gaussian"], ModelConfig(likelihood="gaussian", image_shape=DIGITS), DataConfig()),
    (["--binarize", "none"], ModelConfig(image_shape=DIGITS), DataConfig(binarize="none")),
    (["--conditional", "--labeled", "100"], ModelConfig(prior="class-means", num_classes=10, image_shape=DIGITS),
     DataConfig(labeled=100)),
    (["--conditional", "--labeled", "0"], ModelConfig(prior="class-means", num_classes=10, image_shape=DIGITS),
     DataConfig(labeled=0)),
    (["--conditional", "--labeled", "0", "--class-means-init", "3", "--no-class-scales"],
     ModelConfig(prior="class-means", num_classes=10, image_shape=DIGITS, class_means_init=3, class_scales=False),
     DataConfig(labeled=0)),
], ids=["defaults", "gaussian", "grayscale", "few-labels", "clustering", "clustering-as-told"])
def test_python_settings_through_configure_are_the_flags_settings(argv, model, data):
    assert configure(model, data) == train_configs(*argv)


def test_configure_chooses_what_follows_from_other_settings():
    model, data = configure(ModelConfig(likelihood="gaussian"), DataConfig())
    assert data.binarize == "none" and not model.grayscale_targets
    model, data = configure(ModelConfig(), DataConfig(binarize="none"))
    assert model.grayscale_targets  # a Bernoulli likelihood scoring grayscale pixels
    model, _ = configure(ModelConfig(prior="class-means", num_classes=10), DataConfig(labeled=100))
    assert (model.label_guide, model.classifier_net) == ("classifier", "conv")
    model, _ = configure(ModelConfig(prior="class-means", num_classes=10, label_guide="none"), DataConfig(labeled=100))
    assert (model.label_guide, model.classifier_net) == ("none", "mlp")  # as told; no classifier to build
    model, _ = configure(ModelConfig(), DataConfig(labeled=100))  # a model that reads no labels
    assert (model.label_guide, model.class_means_init, model.class_scales) == ("none", 3.0, False)
    assert configure(*configure(ModelConfig(), DataConfig())) == configure(ModelConfig(), DataConfig())


def test_settings_left_unset_get_the_defaults_of_before_where_they_are_used():
    """Without configure, the data is binarized dynamically and the model built as for every label kept."""
    assert load_dataset(DataConfig()).config.binarize == "dynamic"
    config = pyrovae.build_vae(ModelConfig(prior="class-means", num_classes=3, image_shape=(1, 4, 4))).config
    assert (config.label_guide, config.classifier_net, config.class_means_init, config.class_scales) == (
        "none", "mlp", 3.0, False)


def test_train_without_flags_builds_the_python_defaults():
    args = build_parser().parse_args(["train"])
    assert from_args(TrainConfig, args) == TrainConfig()
    assert from_args(EvaluateConfig, build_parser().parse_args(["evaluate", "RUN"])) == EvaluateConfig()


@pytest.mark.parametrize("command", COMMANDS)
def test_help_documents_every_flag_and_each_default_once(command):
    parser = COMMANDS[command]
    for action in parser.options:
        assert action.help, f"pyrovae {command} {action.option_strings or action.dest} has no help"
    text = parser.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    for entry in re.split(r"\n(?=  -)", text):
        assert entry.count("(default") <= 1, entry
    assert not re.search(r"\b[a-z_]+=", text), "a help text speaks Python"


def test_train_help_is_grouped_by_topic():
    groups = re.findall(r"^(\w+):\n((?:  .*\n|\n(?!\w))*)", COMMANDS["train"].format_help(), re.MULTILINE)
    titles = [title for title, _ in groups]
    assert titles[titles.index("data"):] == ["data", "model", "objective", "training", "output", "examples"], titles
    flags = {title: set(re.findall(r"^  (--[\w-]+)", text, re.MULTILINE)) for title, text in groups}
    assert flags["objective"] == {"--elbo", "--particles", "--estimator", "--kl-weight", "--kl-warmup", "--kl-balance"}
    assert {"--epochs", "--lr", "--threads"} <= flags["training"] and "--elbo" not in flags["training"]
    assert {"--out", "--resume", "--no-progress", "--quiet"} <= flags["output"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_threads_and_quiet(command):
    needs_out = command in ("sample", "encode", "reconstruct", "impute")
    argv = ([command] + (["RUN"] if command != "train" else []) + (["--out", "x.npy"] if needs_out else [])
            + (["--dataset", "t.csv"] if command == "impute" else []))
    args = build_parser().parse_args([*argv, "--threads", "2", "--quiet"])
    assert args.threads == 2 and args.quiet and {"threads", "quiet"} <= args.given
    assert not build_parser().parse_args(argv).quiet


# --- the generator on a settings class of its own -----------------------------------------------------

@dataclasses.dataclass
class Toy:
    kind: Literal["a", "b"] = setting("a", "a choice")
    sizes: Sequence[int] = setting((1, 2), "some sizes", metavar="N")
    rate: float | None = setting(None, "an optional number")
    on: bool = setting(False, "a switch")

    def __post_init__(self):
        check_choices(self)
        if self.rate is not None and self.rate < 0:
            raise SettingError("rate", f"rate must not be negative, got {self.rate}")


def test_flags_follow_the_annotations_and_build_the_class():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy)
    assert from_args(Toy, parser.parse_args([])) == Toy()
    given = parser.parse_args(["--kind", "b", "--sizes", "3", "4", "--rate", "0.5", "--on"])
    assert from_args(Toy, given) == Toy("b", [3, 4], 0.5, True)
    assert from_args(Toy, given, rate=None).rate is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "c"])


@pytest.mark.parametrize("field,problem", [
    (setting(True, "on unless switched off"), "write the flag by hand"),
    (dataclasses.field(default=0), "no help text"),
])
def test_a_field_the_generator_cannot_make_a_flag_of_is_refused(field, problem):
    cls = dataclasses.make_dataclass("Bad", [("value", bool, field)])
    with pytest.raises(TypeError, match=problem):
        add_arguments(argparse.ArgumentParser(), cls)


@pytest.mark.parametrize("values,message", [
    ({"kind": "b", "sizes": [3], "rate": 1, "on": True}, None),  # an int is a float
    ({"rate": None}, None),
    ({"kind": 3}, "c.json: unknown kind 3; choose one of a, b"),
    ({"kind": "c"}, "c.json: unknown kind 'c'; choose one of a, b"),
    ({"sizes": [1, "2"]}, "c.json: sizes must be tuple of int"),
    ({"sizes": 2}, r"sizes must be tuple of int, got 2; write sizes=\(2,\)"),
    ({"rate": "0.5"}, r"rate must be float \| None"),
    ({"on": 1}, "on must be bool"),
    ({"rate": -1}, "c.json: rate must not be negative"),
    ({"size": [1]}, "unknown key.*'size'; known keys are kind, on, rate, sizes"),
    ([1], "expected an object of settings, got list"),
])
def test_json_settings_have_known_keys_and_declared_types(values, message):
    if message is None:
        assert isinstance(settings_from_json(Toy, values, "c.json"), Toy)
    else:
        with pytest.raises(ValueError, match=message):
            settings_from_json(Toy, values, "c.json")


def test_a_mistyped_choice_gets_a_guess():
    with pytest.raises(SettingError, match="unknown prior 'mixtur'; choose one of standard, class-means, mixture, "
                                           "vamp; did you mean 'mixture'"):
        ModelConfig(prior="mixtur")
    with pytest.raises(SettingError, match="choose one of pixel, decoder$"):
        ModelConfig(likelihood="gaussian", learn_scale="everything")
    assert ModelConfig(likelihood="gaussian", learn_scale=None).learn_scale is None


# --- messages: Python names in the library, flags in the CLI ------------------------------------------

PYTHON_MESSAGES = [
    (lambda tmp: TrainConfig(batch_size=0), "batch_size", "^batch_size must be positive, got 0"),
    (lambda tmp: TrainConfig(kl_balance=1e-3, kl_weight=2.0), "kl_balance",
     "^kl_balance sets the weight itself.*without kl_weight=2"),
    (lambda tmp: ModelConfig(hidden=(8, 0)), "hidden", r"^hidden must hold positive layer sizes, got \[8, 0\]"),
    (lambda tmp: DataConfig(data_dir="x"), "data_dir", "drop data_dir=DIR, or use it with dataset='mnist'"),
    (lambda tmp: RunWriter(RunDir(tmp / "file")).check(), "run_dir", "^run_dir .* is a file, not a folder"),
]


@pytest.mark.parametrize("call,name,message", PYTHON_MESSAGES, ids=[case[1] for case in PYTHON_MESSAGES])
def test_python_messages_name_the_python_argument(tmp_path, call, name, message):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SettingError, match=message) as raised:
        call(tmp_path)
    assert raised.value.setting == name and "--" not in str(raised.value)


def test_python_suggestions_are_written_as_arguments(tmp_path):
    with pytest.raises(ValueError, match="^resume=True continues a run and overwrite=True replaces it"):
        RunWriter(RunDir(tmp_path)).check(resume=True, overwrite=True)
    with pytest.raises(ValueError, match="learn_scale='pixel' needs .*; add likelihood='gaussian'"):
        ModelConfig(learn_scale="pixel")


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["--kl-balance", "1e-3", "--kl-weight", "2"], "--kl-balance sets the weight itself.*without --kl-weight 2"),
    (["--dataset", "digits", "--data-dir", "x"], "drop --data-dir DIR, or use it with --dataset mnist"),
    (["--learn-scale", "--likelihood", "bernoulli"], "--learn-scale pixel needs .*; add --likelihood gaussian"),
    (["--resume", "--overwrite", "--out", "run"], "--resume continues a run and --overwrite replaces it"),
    (["--resume"], "--resume needs --out DIR"),
])
def test_cli_messages_name_the_flags(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not re.search(r"\w_\w|\w=", err), f"Python names in a CLI message: {err}"


@pytest.mark.parametrize("text,settings,expected", [
    ("add resume=True or overwrite=True", None, "add --resume or --overwrite"),
    ("use binarize='static', data_dir=DIR or z_dim=2.", None, "use --binarize static, --data-dir DIR or --z-dim 2."),
    ("pass download=False", None, "pass --no-download"),
    ("the prior reads labels; prior='vamp' does not", None, "the prior reads labels; --prior vamp does not"),
    ("lr must be positive, got 0", "lr", "--lr must be positive, got 0"),
    ("run_dir /a/run_dir/b is a file; choose another run_dir.", "run_dir",
     "--out /a/run_dir/b is a file; choose another --out."),
    ("runs/lr=0.1 holds num_classes=3 with resume=False", None, "runs/lr=0.1 holds num_classes=3 with resume=False"),
    ("'z_dim' must be int; z_dim must be at least 1", None, "'z_dim' must be int; z_dim must be at least 1"),
    ("particles=9 is too many; lower particles or batch_size", ("particles", "batch_size"),
     "--particles 9 is too many; lower --particles or --batch-size"),
])
def test_in_flags_rewrites_python_names_and_nothing_else(text, settings, expected):
    settings = (settings,) if isinstance(settings, str) else settings or ()
    assert in_flags(text, FLAGS, settings) == expected


# --- usage errors and --version -----------------------------------------------------------------------

@pytest.mark.parametrize("argv,parts", [
    (["train", "--prior", "mixtur"], ["pyrovae train: error: ", "--prior", "'mixtur'", "standard, class-means, "
                                      "mixture, vamp", "did you mean 'mixture'?"]),
    (["trian"], ["pyrovae: error: ", "'trian'", "train, evaluate, sample, encode, reconstruct, impute, plot",
                 "did you mean 'train'?"]),
    (["plot", "RUN", "--only", "samples", "manifol"], ["pyrovae plot: error: ", "--only", "did you mean 'manifold'?"]),
    (["train", "--z-dim", "two"], ["pyrovae train: error: ", "--z-dim", "'two'"]),
    (["train", "--zdim", "3"], ["pyrovae train: error: unrecognized arguments: --zdim 3", "did you mean '--z-dim'?"]),
    (["train", "--epoch", "3"], ["pyrovae train: error: ", "--epoch 3", "did you mean '--epochs'?"]),  # no prefixes
    (["plot", "RUN", "--tsn"], ["pyrovae plot: error: ", "--tsn", "did you mean '--tsne'?"]),
    (["sample", "RUN", "--out=x.png", "--sed=3"], ["pyrovae sample: error: ", "--sed=3", "did you mean '--seed'?"]),
])
def test_a_usage_error_is_one_line_and_exit_2(capsys, argv, parts):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert all(part in err for part in parts), err


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"pyrovae {pyrovae.__version__}\n"


def test_evaluate_flags_default_to_the_python_functions_defaults():
    """evaluate's flags are EvaluateConfig's fields, whose defaults evaluation_report's arguments take."""
    defaults = {name: parameter.default
                for name, parameter in inspect.signature(pyrovae.evaluation_report).parameters.items()}
    args = build_parser().parse_args(["evaluate", "RUN"])
    assert args.num_samples == defaults["num_samples"] and args.batch_size == defaults["batch_size"]
    assert args.seed == defaults["seed"] and args.memory_budget * 2**30 == defaults["memory_budget"]


def test_the_cli_uses_argparse_through_its_public_api_only():
    sources = [*Path(cli.__file__).parent.glob("*.py"), Path(pyrovae.settings.__file__)]
    source = "".join(path.read_text() for path in sources)
    for private in ("._actions", "._subparsers", "._group_actions", "_check_value", "_ActionsContainer",
                    "_get_help_string"):
        assert private not in source, private

import pytest

from robustfeat.config import list_recipes, load_recipe, make_config, parse_assignments
from robustfeat.errors import ConfigError, UnknownNameError


def test_defaults_validate_and_layers_override_in_order():
    cfg = make_config({"epochs": 3, "lr": 0.5}, {"lr": 0.05})
    assert cfg.epochs == 3 and cfg.lr == 0.05 and cfg.method == "ce"


@pytest.mark.parametrize(
    ("layer", "needle"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": "ten"}, "must be int"),
        ({"lr": -1.0}, "lr"),
        ({"precision": "fp8"}, "fp32, bf16, amp, auto"),
        ({"label_noise": 1.5}, "label_noise"),
        ({"milestones": [0.8, 0.2]}, "milestones"),
        ({"compile": "yes"}, "must be bool"),
        ({"no_such_key": 1}, "unknown config key"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(layer, needle):
    with pytest.raises(ConfigError, match=needle):
        make_config(layer)


def test_int_accepted_for_float_but_bool_is_not_an_int():
    assert make_config({"lr": 1}).lr == 1
    with pytest.raises(ConfigError):
        make_config({"epochs": True})


def test_parse_assignments_reads_yaml_scalars():
    assert parse_assignments(["k=2", "beta=0.5", "flag=true", "xs=[1, 2]", "s=abc"], "--arg") == {
        "k": 2,
        "beta": 0.5,
        "flag": True,
        "xs": [1, 2],
        "s": "abc",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignments(["novalue"], "--arg")


def test_builtin_recipes_load_and_validate():
    assert {"cpu", "demo"} <= set(list_recipes())
    cpu = make_config(load_recipe("cpu"))
    assert (cpu.model, cpu.epochs, cpu.batch_size, cpu.lr, cpu.schedule) == (
        "resnet20",
        10,
        128,
        0.2,
        "onecycle",
    )
    assert cpu.nesterov and cpu.weight_decay == 5e-4 and cpu.warmup == 0.15
    assert (cpu.precision, cpu.channels_last, cpu.compile) == ("auto", True, True)


def test_unknown_recipe_lists_valid_ones(tmp_path):
    with pytest.raises(UnknownNameError, match="cpu"):
        load_recipe("cpuu")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(str(lst))


def test_recipe_extends_parent(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: demo\nepochs: 1\n")
    merged = load_recipe(str(child))
    assert merged["epochs"] == 1 and merged["data"] == "shapes"

"""Member specs: fall-backs, errors before any work, the step chain, the summary."""

import json
import re
from dataclasses import asdict

import pytest
import yaml
from conftest import REPO

from noisytail.config import ConfigError
from noisytail.config.members import member_plan
from noisytail.config.params import check_params
from noisytail.members import members_summary
from noisytail.training.step_gate import balance_start

ROUNDS = [
    {"round": 1, "input": "data/prepared", "output": "data/clean/round_1"},
    {"round": 2, "input": "data/clean/round_1", "output": "data/clean/round_2"},
]
PARAMS = {
    "seed": 11,
    "model": {"backbone": "test_resnet", "in_chans": 1},
    "train": {"epochs": 15, "base_lr": 0.1, "weight_decay": 5e-4, "image_size": 32},
    "hires": {"epochs": 2, "image_size": 48, "base_lr": 0.01},
    "crt": {"epochs": 3, "warmup_epochs": 0},
    "balanced_subset": {"per_class": 30},
    "cleaning": {"rounds": ROUNDS},
}


def with_members(**members):
    return {**PARAMS, "members": members}


def test_keys_not_given_fall_back_to_train_hires_and_crt():
    params = with_members(
        plain={"round": 2},
        own={"round": 1, "seed": 3, "model": {"backbone": "test_vit", "patch_size": 8},
             "train": {"epochs": 10, "label_smoothing": 0.1, "optimizer": "adamw"},
             "hires": {"base_lr": 0.001},
             "balance": {"method": "balanced_subset", "per_class": 5, "epochs": 7}},
    )  # fmt: skip
    check_params(params)
    plain = member_plan(params, "plain")
    assert plain.seed == 11 and plain.model.backbone == "test_resnet" and plain.balance == "crt"
    assert (plain.steps["full"].epochs, plain.steps["full"].image_size) == (15, 32)
    hires = plain.steps["hires"]
    assert (hires.epochs, hires.image_size, hires.base_lr) == (2, 48, 0.01)
    assert hires.weight_decay == 5e-4  # train's, under hires
    balance = plain.steps["balance"]
    assert (balance.epochs, balance.image_size, balance.warmup_epochs) == (3, 48, 0)
    assert str(plain.manifest_path) == "data/clean/round_2/manifest.parquet"

    own = member_plan(params, "own")
    assert own.seed == 3 and own.model.backbone == "test_vit" and own.model.patch_size == 8
    assert own.model.in_chans == 1  # the rest of `model:` still applies
    full = own.steps["full"]
    assert (full.epochs, full.label_smoothing, full.optimizer) == (10, 0.1, "adamw")
    # hires: hires' epochs and size over the member's train, the member's own lr over hires'
    assert (own.steps["hires"].epochs, own.steps["hires"].base_lr) == (2, 0.001)
    assert own.steps["hires"].optimizer == "adamw" and own.steps["hires"].label_smoothing == 0.1
    assert own.steps["balance"].epochs == 7 and own.per_class == 5
    assert own.balance == "balanced_subset"


def test_each_step_starts_from_the_previous_steps_model():
    plan = member_plan(with_members(m={"round": 1}), "m")
    assert plan.recipe("full").name == "full" and not plan.recipe("full").init_from
    assert plan.recipe("hires").init_from == "models/members/m/full/model.safetensors"
    balance = plan.recipe("balance")
    assert balance.name == "crt"
    assert balance.init_from == "models/members/m/hires/model.safetensors"
    subset = member_plan(with_members(m={"round": 1, "balance": {"method": "balanced_subset"}}),
                         "m").recipe("balance")  # fmt: skip
    assert subset.name == "balanced_subset" and subset.subset_per_class == 30
    assert subset.confidences == "data/predictions/round_1/train.parquet"


@pytest.mark.parametrize(
    ("member", "named"),
    [
        ({"round": 1, "epochs": 3}, "members.m: unknown key(s) ['epochs']"),
        ({"round": 1, "train": {"epoch": 3}}, "members.m.train: unknown parameter(s) ['epoch']"),
        ({"round": 3}, "members.m.round: 3 is not a cleaning round"),
        ({"seed": 1}, "members.m.round: missing"),
        ({"round": "2"}, "members.m.round: expected an integer"),
        ({"round": 1, "balance": {"method": "lws"}}, "members.m.balance.method must be one of"),
        ({"round": 1, "model": {"backbone": "nope"}}, "members.m.model.backbone: 'nope'"),
        ({"round": 1, "hires": {"image_size": 0}}, "train.image_size must be at least 1"),
    ],
)
def test_a_bad_member_fails_before_any_work_naming_the_key(member, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        check_params(with_members(m=member))


def test_a_round_written_elsewhere_than_dvc_yaml_reads_is_an_error():
    rounds = [{**ROUNDS[0], "output": "data/elsewhere"}]
    params = {**with_members(m={"round": 1}), "cleaning": {"rounds": rounds}}
    with pytest.raises(ConfigError, match="dvc.yaml reads data/clean/round_1"):
        check_params(params)


def test_members_must_be_a_mapping_keyed_by_name():
    with pytest.raises(ConfigError, match="members: expected a mapping of name -> spec"):
        check_params({**PARAMS, "members": [{"round": 1}]})


def test_the_default_and_the_aliproducts_profiles_are_valid_with_eight_members():
    for path in (REPO / "params.yaml", REPO / "profiles" / "aliproducts.yaml"):
        params = yaml.safe_load(path.read_text())
        check_params(params)
        assert len(params["members"]) == 8
    quick = yaml.safe_load((REPO / "profiles" / "quick.yaml").read_text())
    check_params({**quick, "data": {**quick["data"], "path": "list.csv"}})


def test_summary_picks_the_best_member_on_val_and_the_smallest_few_gain():
    def row(member, step, val, test, few):
        return {"member": member, "step": step, "val_mean_class_error": val,
                "test_mean_class_error": test, "test_few_accuracy": few}  # fmt: skip

    rows = [row("a", "full", 30, 31, 40), row("a", "hires", 28, 29, 42),
            row("a", "balance", 25, 27, 50), row("b", "full", 29, 30, 40),
            row("b", "hires", 27, 28, 45), row("b", "balance", 26, 24, 44)]  # fmt: skip
    summary = members_summary(rows)
    assert summary["members"] == 2
    assert summary["best_member"] == "a"  # lower val error, though b is better on test
    assert summary["best_member_test_mean_class_error"] == 27
    assert summary["few_accuracy_gain"] == {"a": 8, "b": -1}
    assert summary["few_accuracy_gain_min"] == -1
    rows[-1]["start"] = "full"  # b's balance started from its full model: the gain is over it
    assert members_summary(rows)["few_accuracy_gain"]["b"] == 4


@pytest.mark.parametrize(("full", "hires", "start"), [(30, 28, "hires"), (30, 30, "hires"),
                                                      (30, 31.5, "full")])  # fmt: skip
def test_balance_starts_from_hires_unless_it_made_val_worse(tmp_path, full, hires, start):
    plan = member_plan(with_members(m={"round": 1}), "m")
    for step, error in (("full", full), ("hires", hires)):
        path = plan.metrics_path(step, tmp_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"val": {"mean_class_error": error},
                                    "test": {"mean_class_error": 0.0}}))  # fmt: skip
    chosen, errors = balance_start(plan, tmp_path)
    assert chosen == start and errors == {"full": full, "hires": hires}
    recipe = plan.recipe("balance", start=chosen)
    assert recipe.init_from == f"models/members/m/{start}/model.safetensors"
    # balance trains at its start's size (full 32, hires 48) unless a size is given for it
    assert plan.step_config("balance", chosen).image_size == {"full": 32, "hires": 48}[start]
    sized = member_plan(with_members(m={"round": 1, "balance": {"image_size": 40}}), "m")
    assert sized.step_config("balance", chosen).image_size == 40


def test_the_registered_digest_tells_the_balance_start_and_size_apart():
    plan = member_plan(with_members(m={"round": 1}), "m")
    digests = {plan.digest(start=s, config=asdict(plan.step_config("balance", s)))
               for s in ("full", "hires")}  # fmt: skip
    assert len(digests | {plan.digest()}) == 3
    assert plan.digest(start=None) == plan.digest()  # no start resolved: the plan's own
    config = asdict(plan.step_config("balance", "full"))
    assert plan.digest(start="full", config=config) != plan.digest(
        start="full", config={**config, "image_size": 40})  # fmt: skip


def test_balance_start_needs_both_steps_metrics(tmp_path):
    plan = member_plan(with_members(m={"round": 1}), "m")
    with pytest.raises(FileNotFoundError, match="m/full.json is missing"):
        balance_start(plan, tmp_path)
    with pytest.raises(ConfigError, match="cannot start from balance"):
        plan.recipe("hires", start="balance")

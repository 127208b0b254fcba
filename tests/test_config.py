from harness.config import config_hash, effective_fraction


def test_full_is_one_trial_whatever_fraction_a_sweep_gives_it(compose_cfg):
    a, b = compose_cfg("strategy=full"), compose_cfg("strategy=full", "strategy.fraction=0.3")
    assert effective_fraction(b) == 1.0
    assert config_hash(a) == config_hash(b)


def test_identity_ignores_where_results_go_but_not_what_is_trained(compose_cfg):
    base = config_hash(compose_cfg("strategy=random"))
    assert config_hash(compose_cfg("strategy=random", "tracking.experiment=other", "cache_dir=/tmp/x")) == base
    assert config_hash(compose_cfg("strategy=random", "strategy.fraction=0.3")) != base
    assert config_hash(compose_cfg("strategy=random", "seed=1")) != base


def test_curriculum_runs_are_named_by_ordering_and_pacing(compose_cfg):
    assert compose_cfg("strategy=curriculum").strategy.name == "curriculum-linear"
    anti = compose_cfg("strategy=curriculum", "strategy.ordering=anti", "strategy.pacing=step")
    assert anti.strategy.name == "anti-step"
    assert compose_cfg("strategy=curriculum", "strategy.ordering=standard").strategy.name == "standard"


def test_a_sweep_of_orderings_by_pacings_runs_standard_once(compose_cfg):
    def h(*o: str) -> str:
        return config_hash(compose_cfg("strategy=curriculum", *o))

    # standard training ignores order and pacing; a random curriculum ignores the difficulty signal
    assert h("strategy.ordering=standard") == h("strategy.ordering=standard", "strategy.pacing=step", "strategy.a=0.5")
    assert h("strategy.ordering=random") == h("strategy.ordering=random", "strategy.signal=forgetting")
    assert h("strategy.ordering=random") != h("strategy.ordering=random", "strategy.pacing=step")
    assert h() != h("strategy.pacing=step")
    assert h() != h("strategy.signal=forgetting")


def test_probe_settings_are_part_of_a_trials_identity_only_when_its_strategy_uses_a_probe(compose_cfg):
    from harness.config import config_hash

    for strategy in ("full", "random", "rs2", "knn_dedup"):  # no probe signal: a probe setting changes nothing
        assert config_hash(compose_cfg(f"strategy={strategy}")) == config_hash(
            compose_cfg(f"strategy={strategy}", "probe.runs=3", "probe.score_at=0.5")), strategy
    for strategy in ("el2n", "forgetting", "kcenter"):
        assert config_hash(compose_cfg(f"strategy={strategy}")) != config_hash(
            compose_cfg(f"strategy={strategy}", "probe.runs=3")), strategy

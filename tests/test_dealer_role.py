"""The dealer as a party role (``parties.dealer``): which runs have one, its rank and name."""

from __future__ import annotations

import dataclasses

import pytest

from launch.config import default_party_specs, load_config
from parties.dealer import DEALER_NAME, has_dealer, is_dealer, process_names, world_size
from protocols.registry import part_class, part_names


def _config(*overrides: str):
    config = load_config(list(overrides))
    return dataclasses.replace(config, parties=default_party_specs(config.num_parties))


@pytest.mark.parametrize("suite, dealer", [("dealer", True), ("malicious", True), ("tfp", False)])
def test_a_dealer_is_the_process_after_the_parties(suite, dealer):
    config = _config(f"protocol={suite}")
    parties = ("bank0", "bank1", "bank2")
    assert has_dealer(config) is dealer
    assert process_names(config) == parties + ((DEALER_NAME,) if dealer else ())
    assert world_size(config) == len(process_names(config))
    assert [is_dealer(config, rank) for rank in range(4)] == [False, False, False, dealer]


def test_every_triple_source_that_needs_a_dealer_says_what_it_runs():
    needing = [name for name in part_names("triple_source") if part_class("triple_source", name).needs_dealer]
    assert {"dealer", "authenticated_dealer"} <= set(needing)
    assert all(callable(getattr(part_class("triple_source", name), "make_dealer", None)) for name in needing)


def test_a_source_that_needs_a_dealer_but_gives_none_to_run_is_refused():
    from launch.config import ConfigError
    from protocols import TripleSource, register_part

    @register_part("triple_source", "dealer_without_a_server")
    class DealerWithoutAServer(TripleSource):
        needs_dealer = True

        def install(self, crypten):
            pass

    with pytest.raises(ConfigError, match="dealer_without_a_server needs a dealer process but gives no make_dealer"):
        load_config(["protocol.triple_source=dealer_without_a_server"])


def test_an_answer_made_ahead_goes_only_to_the_items_it_was_made_for():
    """A guess that does not come true is dropped (the semi-honest maker's left to finish
    unseen, not waited for): the answers handed out are for the items asked, each once,
    and they expand to tuples that open right."""
    import torch

    from parties.dealer import AnswerAhead
    from protocols.dealer import SemiHonestMaker, answer_elements, answer_parts, expand
    from protocols.tuples import check_key

    maker = SemiHonestMaker(2)
    ahead = AnswerAhead(maker)
    big = [check_key(["triple", "matmul", [256, 256], [256, 256], []])]
    small = [check_key(["triple", "mul", [5], [5], []])]
    ahead.start(big)
    assert ahead.take(small) is None and ahead.items is None  # not the guess: nothing, at once
    ahead.start(small)
    assert ahead.take(big) is None
    for needed in (True, False):
        ahead.start(small)
        answers, late_part = ahead.take(small, needed=needed)
        assert late_part() is None  # an elementwise product has no late part
        assert [a.numel() for a in answers] == [answer_elements(small, p, 2) for p in range(2)]
        a, b, c = (sum(expand(small, maker.seeds[p], answers[p], p, 2)[0][i] for p in range(2)) for i in range(3))
        assert torch.equal(c, a * b)
        assert ahead.take(small) is None  # each answer once
    ahead.start(big)  # made ahead, the late part is made too (waited for apart), and opens right
    answers, late_part = ahead.take(big)
    late = late_part()
    assert [(a.numel(), b.numel()) for a, b in zip(answers, late)] == [answer_parts(big, p, 2) for p in range(2)]
    a, b, c = (sum(expand(big, maker.seeds[p], answers[p], p, 2, late[p])[0][i] for p in range(2)) for i in range(3))
    assert torch.equal(c, a @ b)
    ahead.start(big)
    ahead.close()  # the guess still being made, and the one dropped, finish unused
    assert ahead.answer is None and ahead.dropped == [] and ahead.take(big) is None

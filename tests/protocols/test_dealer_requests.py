"""How many dealer requests a repeated step costs: the prefetcher's batches, counted."""

from __future__ import annotations

import pytest
import torch

from protocols import ProtocolConfig
from protocols.comparison import comparison_tuples, relu_tuples
from protocols.dealer import SemiHonestMaker, expand
from protocols.tuples import Prefetcher
from protocol_sessions import party_values, run_parties

MUL = ("triple", "mul", (2, 8), (2, 8), ())
WRAP = ("wrapbit", (2, 8))


def _party_zero_of_a_real_dealer(batches: list[list[tuple]]):
    """``produce`` for a Prefetcher: party 0's shares from the semi-honest dealer's own
    answers (no wire), recording each batch asked for."""
    maker = SemiHonestMaker(2)

    def produce(keys: list[tuple]) -> list[list[torch.Tensor]]:
        batches.append(list(keys))
        return expand(keys, maker.seeds[0], maker.deal(keys)[0], 0, 2)

    return produce


def _step(prefetcher: Prefetcher, announce: bool) -> list[list[torch.Tensor]]:
    """The tuples of a step shaped like a training step: a product and its truncation, a
    packed comparison (announced or not), another product and truncation."""
    comparison = comparison_tuples((2, 8))
    if announce:
        prefetcher.expect(comparison)
    return [prefetcher.fetch(key) for key in (MUL, WRAP, *comparison, MUL, WRAP)]


@pytest.mark.parametrize("announce, first_steps", [(False, [11, 8]), (True, [5, 4])])
def test_a_repeated_step_costs_one_request_once_its_keys_are_known(announce, first_steps):
    batches: list[list[tuple]] = []
    prefetcher = Prefetcher(_party_zero_of_a_real_dealer(batches))
    per_step = []
    for _ in range(5):
        before = len(batches)
        step = _step(prefetcher, announce)
        per_step.append(len(batches) - before)
        assert [len(shares) for shares in step] == [3, 2, 3, 3, 3, 3, 3, 3, 2, 3, 2]
    # the first step is traced key by key (an announced comparison in one request); the
    # second, until a context of 8 keys recurs, then asks for a whole period; from the
    # third on every step is one request
    assert per_step == first_steps + [1, 1, 1]
    assert prefetcher.batches == len(batches) and sum(per_step) == len(batches)
    assert len(batches[-1]) == 11  # one whole step's tuples
    if announce:
        assert batches[0] == list(comparison_tuples((2, 8)))


def test_a_learnt_step_is_asked_for_one_step_ahead_and_collected_at_the_next_miss():
    maker, events = SemiHonestMaker(2), []

    def ask(keys):
        events.append(("ask", len(keys)))

    def collect(keys):
        events.append(("collect", len(keys)))
        return expand(keys, maker.seeds[0], maker.deal(keys)[0], 0, 2)

    def produce(keys):
        events.append(("produce", len(keys)))
        return expand(keys, maker.seeds[0], maker.deal(keys)[0], 0, 2)

    prefetcher = Prefetcher(produce, ask=ask, collect=collect)
    steps = [_step(prefetcher, announce=True) for _ in range(5)]
    step = len(steps[0])
    # steps 1 and 2 are traced (nothing asked ahead until a period is known); the period
    # produced in step 2 is asked for again at once, and from then on every step's tuples
    # are the answer collected at its first miss, the next one asked for right after
    assert events[-8:] == [("produce", step), ("ask", step)] + [("collect", step), ("ask", step)] * 3
    prefetcher.take_asked()
    assert prefetcher.asked is None and events[-1] == ("collect", step)
    # every tuple is fresh: no two steps got the same shares
    firsts = {tuple(shares[0].reshape(-1).tolist()) for one in steps for shares in one[:1]}
    assert len(firsts) == len(steps)


def test_announced_keys_already_buffered_or_predicted_are_not_asked_for_again():
    batches: list[list[tuple]] = []
    prefetcher = Prefetcher(_party_zero_of_a_real_dealer(batches))
    comparison = comparison_tuples((2, 8))
    prefetcher.expect(comparison + comparison[:1])  # a key twice: two of it
    assert batches == [list(comparison[:1]) * 2 + list(comparison[1:])]
    prefetcher.expect(comparison)  # the first is buffered: nothing to ask for
    assert len(batches) == 1
    for key in comparison + comparison[:1]:
        prefetcher.fetch(key)
    assert len(batches) == 1


def _relu_and_square_steps(crypten, rank):
    plain = torch.linspace(-3, 3, 16).reshape(2, 8)
    x = crypten.cryptensor(plain)
    errors = []
    for _ in range(4):
        relu, product = x.relu(), x * x
        errors.append([(relu.get_plain_text() - plain.clamp(min=0)).abs().max().item(),
                       (product.get_plain_text() - plain * plain).abs().max().item()])
    return errors


def _counting_dealer(transport, parties):
    """The real dealer's serving loop; its maker records how many tuples each request asks for."""
    from parties.dealer import serve_tuples

    sizes: list[int] = []

    class RecordingMaker(SemiHonestMaker):
        def validate(self, items):
            keys = super().validate(items)
            sizes.append(len(keys))
            return keys

    served = serve_tuples(transport, parties, RecordingMaker(parties))
    return {**served, "sizes": sizes}


@pytest.mark.slow
@pytest.mark.parametrize("truncation", ["topbits", "pairs"])
def test_a_repeated_step_asks_the_real_dealer_once(truncation):
    protocol = ProtocolConfig(name="dealer", triple_source="dealer", comparison="packed", truncation=truncation)
    collected = run_parties(_relu_and_square_steps, protocol, parties=2, dealer_fn=_counting_dealer, timeout_s=300)
    for errors in party_values(collected, 2):
        for relu, product in errors:
            assert relu <= 2 ** -16  # x times the exact sign bit: x's encoding (truncated), within 1 ulp
            # x x: the encoding's ulp times 2|x| <= 6 (and its square), and the truncation's 1 ulp
            assert product <= 6 * 2 ** -16 + 2 ** -32 + 2 ** -16
    status, served = collected[2]
    assert status == "ok"
    relu = len(relu_tuples((2, 8), True))  # the dealer deals carry4 tuples: the tree joins four groups a round
    # relu is one packed ReLU (its mask makes the product with the bit local), then x x, a
    # product truncated: a step of 6 keys. Step 1 asks for the announced ReLU at once, then x
    # x's triple with its truncation's tuple; step 2 for both again (their contexts are new:
    # the step before them now ends in x x); step 3 for the ReLU once more (its context, the 7
    # keys before it, reaches back two steps, so it is new until then), then for the learnt
    # period, the whole step, and at once for the next one (asked one step ahead); step 4
    # collects that and asks for the next, which is collected before the stop
    step = relu + 2
    assert served["sizes"] == [relu, 2, relu, 2, relu, step, step, step]
    assert served["requests"] == 8

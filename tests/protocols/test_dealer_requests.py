"""How many dealer requests a repeated step costs: the prefetcher's batches, counted."""

from __future__ import annotations

import collections

import pytest
import torch

from protocols import ProtocolConfig
from protocols.comparison import comparison_tuples, relu_tuples
from protocols.dealer import SemiHonestMaker, expand
from protocols.tuples import Prefetcher, tuple_layout
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


def _asking_prefetcher(events: list[tuple[str, int]]) -> Prefetcher:
    """A Prefetcher over party 0's answers from the semi-honest dealer, asked ahead
    (``ask``/``collect``), recording each request, collection and batch made at a miss."""
    maker, asked = SemiHonestMaker(2), []

    def ask(keys, again):
        events.append(("ask twice" if again else "ask", len(keys)))
        for _ in range(1 + again):  # the answers, collected in order
            asked.append(expand(keys, maker.seeds[0], maker.deal(keys)[0], 0, 2))

    def collect(keys):
        events.append(("collect", len(keys)))
        return asked.pop(0)

    def produce(keys):
        events.append(("produce", len(keys)))
        return expand(keys, maker.seeds[0], maker.deal(keys)[0], 0, 2)

    return Prefetcher(produce, ask=ask, collect=collect)


def test_a_learnt_step_is_asked_for_one_step_ahead_and_collected_at_the_next_miss():
    events = []
    prefetcher = _asking_prefetcher(events)
    steps = [_step(prefetcher, announce=True) for _ in range(5)]
    step = len(steps[0])
    # step 1 is traced, every batch it makes asked for twice in one request (the second answer
    # collected at the next miss, before that miss's own request); step 2 learns the period
    # and asks for the whole step, and from then on every step's tuples are the answer
    # collected at its first miss, the next one asked for right after
    comparison = len(comparison_tuples((2, 8)))
    assert events[:4] == [("ask twice", comparison), ("collect", comparison), ("collect", comparison), ("ask twice", 1)]
    assert ("produce", 1) not in events  # no batch is asked for on its own and then again
    assert events[-7:] == [("ask", step)] + [("collect", step), ("ask", step)] * 3
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


class _TwoPartyDealer:
    """The semi-honest dealer's answers to two prefetchers that ask in the same order: party
    0's request deals the batch, party 1's takes its half of the same answer."""

    def __init__(self) -> None:
        self.maker = SemiHonestMaker(2)
        self.answers: tuple[list, list] = ([], [])
        self.events: list[tuple[str, int]] = []
        self.dealt: collections.Counter = collections.Counter()  # key -> tuples dealt for it

    def prefetcher(self, rank: int, lookahead: int = 4096) -> Prefetcher:
        def ask(keys, again):
            if rank == 0:
                self.events.append(("ask twice" if again else "ask", len(keys)))
                self.dealt.update(keys * (1 + again))
                for _ in range(1 + again):
                    for party, answer in enumerate(self.maker.deal(keys)):
                        self.answers[party].append(answer)

        def collect(keys):
            if rank == 0:
                self.events.append(("collect", len(keys)))
            return expand(keys, self.maker.seeds[rank], self.answers[rank].pop(0), rank, 2)

        def produce(keys):
            ask(keys, False)
            return collect(keys)

        return Prefetcher(produce, lookahead=lookahead, ask=ask, collect=collect)


def _fetch_both(prefetchers: list[Prefetcher], key: tuple) -> list[list[torch.Tensor]]:
    return [prefetcher.fetch(key) for prefetcher in prefetchers]


def _check_product(shares: list[list[torch.Tensor]]) -> None:
    """The two parties' shares of a triple open to a, b and a b over the ring."""
    a, b, c = (shares[0][i] + shares[1][i] for i in range(3))
    assert torch.equal(c, a * b)


def _check_wrap_bit(shares: list[list[torch.Tensor]]) -> None:
    """Each party's word, and shares of the AND of the two words' top bits."""
    (word0, and0), (word1, and1) = shares
    assert torch.equal(and0 + and1, ((word0 < 0) & (word1 < 0)).long())


def test_a_repeated_product_finds_its_tuples_asked_ahead_at_its_first_use():
    """W1's shape: one announced product and its truncation, repeated. Only the first use
    waits for a batch it asked for; each later use takes the one asked ahead at the use before,
    and the tuples are correct and fresh (no two uses share one)."""
    dealer = _TwoPartyDealer()
    parties = [dealer.prefetcher(0), dealer.prefetcher(1)]
    seen = set()
    for use in range(6):
        before = len(dealer.events)
        for prefetcher in parties:
            prefetcher.expect([MUL, WRAP])
        triple, wrap = _fetch_both(parties, MUL), _fetch_both(parties, WRAP)
        _check_product(triple)
        _check_wrap_bit(wrap)
        seen.add(tuple(triple[0][0].reshape(-1).tolist()))
        expected = [("ask twice", 2), ("collect", 2)] if use == 0 else [("collect", 2), ("ask", 2)]
        assert dealer.events[before:] == expected
    assert len(seen) == 6
    for prefetcher in parties:
        prefetcher.take_asked()
    assert dealer.answers == ([], [])


def _training_step(rows: int) -> list[tuple]:
    """A step's keys shaped like a small MLP's: a product, its truncation, a packed comparison,
    a matrix product and its truncation."""
    return [("triple", "mul", (rows, 8), (rows, 8), ()), ("wrapbit", (rows, 8)), *comparison_tuples((rows, 8)),
            ("triple", "matmul", (rows, 8), (8, 1), ()), ("wrapbit", (rows, 1))]


def _check(key: tuple, shares: list[list[torch.Tensor]]) -> None:
    """A triple's or a wrap-bit tuple's two parties' shares open correctly (others: two parties' of each component)."""
    if key[0] == "triple":
        a, b, c = (shares[0][i] + shares[1][i] for i in range(3))
        assert torch.equal(c, getattr(torch, key[1])(a, b))
    elif key[0] == "wrapbit":
        _check_wrap_bit(shares)
    else:
        assert [len(party) for party in shares] == [len(tuple_layout(key))] * 2


def test_the_evaluation_is_dealt_once_per_epoch():
    """Epochs of six steps, a short last step and a held-out evaluation: from epoch 2 on, the
    first step's miss predicts the span since the last full step (the short step, the
    evaluation, this step so far). That span is no period that repeats at once, so it is
    dealt once and not asked for again ahead, where a second copy waited an epoch for its
    use (and the last one was never used). Every tuple still opens correctly at both parties."""
    dealer = _TwoPartyDealer()
    parties = [dealer.prefetcher(0), dealer.prefetcher(1)]
    evaluation = [("triple", "matmul", (6, 8), (8, 1), ()), ("wrapbit", (6, 1))]
    for epoch in range(1, 5):
        for keys in [_training_step(2)] * 6 + [_training_step(1)]:
            for key in keys:
                _check(key, _fetch_both(parties, key))
        for prefetcher in parties:
            prefetcher.expect(evaluation)
        for key in evaluation:
            _check(key, _fetch_both(parties, key))
        assert dealer.dealt[evaluation[0]] == dealer.dealt[evaluation[1]] == epoch
    for prefetcher in parties:
        prefetcher.take_asked()
    assert dealer.answers == ([], [])


def test_a_matrix_product_is_not_asked_ahead_before_it_repeats():
    """Dealing a matmul triple multiplies matrices: it is asked ahead only once its step is
    known to repeat, not on a guess after its first use; an elementwise one is."""
    dealer = _TwoPartyDealer()
    parties = [dealer.prefetcher(0), dealer.prefetcher(1)]
    matmul = ("triple", "matmul", (4, 3), (3, 5), ())
    for prefetcher in parties:
        prefetcher.expect([matmul, WRAP])
    triple = _fetch_both(parties, matmul)
    a, b, c = (triple[0][i] + triple[1][i] for i in range(3))
    assert torch.equal(c, a @ b)
    _check_wrap_bit(_fetch_both(parties, WRAP))
    assert dealer.events == [("ask", 2), ("collect", 2)]
    assert all(prefetcher.asked is None for prefetcher in parties)


def test_tuples_asked_ahead_for_a_product_that_does_not_come_again_are_dropped():
    """A one-off product's tuples asked ahead do not stay buffered for ever: once ``lookahead``
    fetches have passed since they came, they are dropped, at both parties alike, and the
    parties' tuples still match."""
    dealer = _TwoPartyDealer()
    parties = [dealer.prefetcher(rank, lookahead=4) for rank in range(2)]
    one_off = ("triple", "mul", (3,), (3,), ())
    _check_product(_fetch_both(parties, one_off))  # asks for it again ahead
    for _ in range(6):
        _check_product(_fetch_both(parties, MUL))  # collects the one-off's spare, then MUL's
    for prefetcher in parties:
        assert not prefetcher.buffer.get(one_off)
        prefetcher.take_asked()
    assert dealer.answers == ([], [])


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
    # product truncated: a step of 6 keys. Step 1 asks for the announced ReLU at once and for
    # it again ahead (one request, two answers), then (collecting that) for x x's triple with
    # its truncation's tuple, twice too; step 2 finds the ReLU's waiting and collects x x's,
    # asking for it ahead again; step 3 finds x x's waiting but asks for the ReLU (its
    # context, the 7 keys before it, reaches back two steps, so it is new until then), twice;
    # step 4 collects that and asks for the learnt period, the whole step, ahead, and again
    # once it comes; the last is collected before the stop. Three requests waited for (4, 2,
    # 4), not six, and none of them is sent a second time to ask for its batch ahead
    step = relu + 2
    assert served["sizes"] == [relu, 2, 2, relu, step, step]
    assert served["requests"] == 6 and served["answers"] == 9
    # a second copy is made only where asked for: a request's items are guessed to come
    # again only once two requests in a row asked for them (x x's, after which the ReLU came:
    # the one guess dropped), not after every request asked for twice (three dropped before)
    assert served["dropped_ahead"] == 1


def _residual_twice(crypten, rank):
    """The loss gradient's residual on raw shares, twice, opened, with every tuple key the
    party fetched (recorded around the real prefetcher)."""
    from mpc.training import weighted_sigmoid_residual
    from protocols.tuples import Prefetcher

    x = crypten.cryptensor(torch.linspace(-9, 9, 24).reshape(12, 2), src=0)
    weights = crypten.cryptensor(torch.full((12, 2), 3.0), src=0)
    labels = crypten.cryptensor((torch.arange(24) % 2).float().reshape(12, 2), src=0)
    fetched, fetch = [], Prefetcher.fetch

    def recorded(self, key):
        fetched.append(key)
        return fetch(self, key)

    Prefetcher.fetch = recorded
    try:
        residuals = [weighted_sigmoid_residual(x, weights, labels).get_plain_text() for _ in range(2)]
    finally:
        Prefetcher.fetch = fetch
    return residuals, fetched


def _recording_dealer(transport, parties):
    """The real dealer's serving loop; its maker records each request's keys."""
    from parties.dealer import serve_tuples

    requests: list[list[tuple]] = []

    class RecordingMaker(SemiHonestMaker):
        def validate(self, items):
            keys = super().validate(items)
            requests.append(keys)
            return keys

    return {**serve_tuples(transport, parties, RecordingMaker(parties)), "keys": requests}


@pytest.mark.slow
@pytest.mark.parametrize("truncation", ["topbits", "pairs"])
def test_the_loss_gradient_announces_its_tuples_in_one_request(truncation):
    """The residual (ReLU, products, divisions by 2^21, 2^36 and the scale) says what it will
    do before it starts, so its first run asks the dealer once, for exactly the tuples it
    then fetches (and for them again ahead: the second run finds them waiting and asks
    ahead for a third, without waiting), not once per operation; and both runs are within
    the residual's bound of plaintext."""
    from mpc.tolerance import ULP
    from mpc.training import SIGMOID_FACTOR_BOUND, SIGMOID_MAX_ERROR

    protocol = ProtocolConfig(name="dealer", triple_source="dealer", comparison="packed", truncation=truncation)
    collected = run_parties(_residual_twice, protocol, parties=2, dealer_fn=_recording_dealer, timeout_s=300)
    plain = torch.linspace(-9, 9, 24).reshape(12, 2).double()
    exact = 3 * (torch.sigmoid(plain) - (torch.arange(24) % 2).double().reshape(12, 2))
    bound = 3 * SIGMOID_MAX_ERROR + (SIGMOID_FACTOR_BOUND + 2) * ULP
    for residuals, fetched in party_values(collected, 2):
        for residual in residuals:
            assert (residual.double() - exact).abs().max() <= bound
        one_run = fetched[: len(fetched) // 2]
        assert fetched == one_run * 2
    status, served = collected[2]
    assert status == "ok"
    first, ahead = served["keys"]
    assert collections.Counter(first) == collections.Counter(one_run) and ahead == first
    assert served["answers"] == 3


def test_the_step_after_an_epochs_first_is_a_period_again():
    """W5's epoch: a per-epoch tuple (the rows' scales), steps, then the held-out evaluation.
    In epoch 2 a step's span runs over the epoch's end (unlike the span before it), so its
    batch is made at a miss but not asked ahead; the span after it is like the one before
    last, a period again: it is asked for twice at once, and epoch 2 waits for one step's
    batch, not two (before, it was made and waited for again before being asked ahead)."""
    events = []
    prefetcher = _asking_prefetcher(events)
    evaluation = [("triple", "matmul", (6, 8), (8, 1), ()), ("wrapbit", (6, 1))]
    scale, step = ("wrapbit", (16, 1)), _training_step(2)
    waited = []
    for _ in range(2):
        start = len(events)
        for key in [scale] + step * 8:
            assert len(prefetcher.fetch(key)) == len(tuple_layout(key))
        # a step's batch waited for: made at a miss, or asked for twice (its first answer waited)
        waited.append([kind for kind, size in events[start:] if kind in ("produce", "ask twice") and size == len(step)])
        prefetcher.expect(evaluation)
        for key in evaluation:
            prefetcher.fetch(key)
    assert waited[1] == ["ask twice"]

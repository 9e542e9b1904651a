"""Each crypten 0.4.1 fix in protocols/crypten_hooks.py, pinned with the inputs that fail without it."""

from __future__ import annotations

import io
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from protocols.crypten_hooks import decode_fixed_point, load_crypten

SCALE = 2**16


def crypten_original_decode(tensor: torch.Tensor, scale: int) -> torch.Tensor:
    """crypten 0.4.1's decode, reproduced to show the failure the fix removes."""
    correction = (tensor < 0).long()
    dividend = tensor.div(scale - correction, rounding_mode="floor")
    remainder = tensor % scale
    remainder += (remainder == 0).long() * scale * correction
    return dividend.float() + remainder.float() / scale


def test_import_works_on_current_torch():
    crypten = load_crypten()
    assert crypten.__version__ == "0.4.1"


def test_pinned_negative_value_decodes_exactly():
    value = torch.tensor([-1703930])
    assert crypten_original_decode(value, SCALE).item() == pytest.approx(-26.99997, abs=1e-4)
    assert decode_fixed_point(value, SCALE).item() == pytest.approx(-1703930 / 65536, abs=1e-6)


def test_the_encoder_uses_the_fixed_decode():
    crypten = load_crypten()
    encoder = crypten.encoder.FixedPointEncoder(precision_bits=16)
    assert encoder.decode(torch.tensor([-1703930])).item() == pytest.approx(-25.99997, abs=1e-4)


def test_about_one_in_1300_negatives_failed_before_and_none_now():
    values = torch.arange(-100 * SCALE, 0, dtype=torch.long)
    exact = values.double() / SCALE
    before = (crypten_original_decode(values, SCALE).double() - exact).abs() > 0.5
    after = (decode_fixed_point(values, SCALE).double() - exact).abs()
    assert 1 / 1500 < before.double().mean().item() < 1 / 1100
    # float32 rounding of values below 100 in magnitude is at most 2^-18 (half an ulp at 64..128)
    assert after.max().item() <= 2**-18


def test_property_random_64_bit_values_match_exact_rational_division():
    rng = random.Random(1234)
    samples = [rng.randrange(-(2**63), 2**63) for _ in range(20_000)]
    samples += [-(2**63), 2**63 - 1, -1, 0, 1, -SCALE, SCALE - 1]
    decoded = decode_fixed_point(torch.tensor(samples, dtype=torch.long), SCALE)
    for value, result in zip(samples, decoded.tolist()):
        exact = Fraction(value, SCALE)
        # one float64 rounding then one float32 rounding: within half a float32 ulp plus a
        # float64 ulp of the exact quotient
        magnitude = abs(float(exact)) or 2.0**-126
        ulp32 = 2.0 ** (np.floor(np.log2(magnitude)) - 23)
        assert abs(Fraction(result) - exact) <= Fraction(ulp32) * Fraction(1, 2) * (1 + Fraction(1, 2**28)), value


def test_from_pytorch_uses_the_torchscript_exporter():
    crypten = load_crypten()
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    converted = crypten.nn.from_pytorch(model, torch.zeros(1, 4))
    shapes = sorted(tuple(p.shape) for p in converted.parameters())
    assert shapes == sorted(tuple(p.shape) for p in model.parameters())


def test_crypten_load_keeps_torch_restricted_loader():
    crypten = load_crypten()
    buffer = io.BytesIO()
    torch.save({"weights": torch.arange(4), "size": torch.Size([2, 2])}, buffer)
    buffer.seek(0)
    loaded = crypten.load(buffer)
    assert loaded["size"] == torch.Size([2, 2])
    assert torch.equal(loaded["weights"], torch.arange(4))


def _save_and_load_shared(crypten, rank):
    shared = crypten.cryptensor(torch.tensor([1.5, -2.25]), src=0)
    buffer = io.BytesIO()
    torch.save(shared, buffer)
    buffer.seek(0)
    restored = crypten.load(buffer)  # torch's restricted loader with crypten's classes allowed
    return restored.get_plain_text().tolist()


def test_shared_tensors_round_trip_through_crypten_load():
    from sessions import run_parties

    for values in run_parties(_save_and_load_shared, world=2):
        assert values == [1.5, -2.25]


def _tuple_cache_round_trip(crypten, rank):
    import tempfile

    provider = crypten.mpc.get_default_provider()
    x = crypten.cryptensor(torch.tensor([1.5, -2.0]), src=0)
    provider.trace()
    (x * x).get_plain_text()
    provider.trace(False)
    provider.fill_cache()
    with tempfile.TemporaryDirectory() as directory:
        provider.save_cache(f"{directory}/")
        provider.load_cache(f"{directory}/")  # torch.load under weights_only
    return (x * x).get_plain_text().tolist()  # served from the reloaded cache


def test_tuple_cache_round_trips_through_torch_load():
    from sessions import run_parties

    for values in run_parties(_tuple_cache_round_trip, world=2):
        assert values == pytest.approx([2.25, 4.0], abs=2**-14)


def test_onnx_identity_converts_to_a_pass_through():
    from onnx import TensorProto, helper

    crypten = load_crypten()
    nodes = [helper.make_node("Identity", ["input"], ["kept"]), helper.make_node("Relu", ["kept"], ["output"])]
    graph = helper.make_graph(nodes, "identity", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 3])])
    converted = crypten.nn.from_onnx(io.BytesIO(helper.make_model(graph).SerializeToString()))
    values = torch.tensor([[-1.0, 2.0, 3.5], [4.0, -5.0, 0.0]])
    assert torch.equal(converted(values), torch.relu(values))


def _module_state_dict_round_trip(crypten, rank):
    torch.manual_seed(3)  # the same plaintext weights at every party
    module = crypten.nn.Linear(4, 2).encrypt()
    buffer = io.BytesIO()
    crypten.save(module.state_dict(), buffer)
    buffer.seek(0)
    restored = crypten.nn.Linear(4, 2).encrypt()
    restored.load_state_dict(crypten.load(buffer))  # torch's restricted loader, no full unpickler
    return [(name, param.get_plain_text().tolist()) for name, param in restored.named_parameters()] == \
        [(name, param.get_plain_text().tolist()) for name, param in module.named_parameters()]


def test_encrypted_module_state_dict_round_trips_through_crypten_load():
    from sessions import run_parties

    assert run_parties(_module_state_dict_round_trip, world=2) == [True, True]



def test_the_session_makes_placeholder_mpc_tensors_without_a_sharing():
    """crypten's ``MPCTensor([])`` (behind shallow_copy, clone and from_shares) means to skip
    the sharing but tests ``tensor is []``; under a session it is skipped: no communicator
    is asked (none exists here) and the shares put in afterwards are kept."""
    from protocols.crypten_hooks import install_session, uninstall_session

    crypten = load_crypten()
    from crypten.mpc import MPCTensor
    from crypten.mpc.ptype import ptype

    original = MPCTensor.__init__
    install_session(crypten, lambda: None)
    try:
        placeholder = MPCTensor([])
        assert placeholder.ptype == ptype.arithmetic and placeholder._tensor.numel() == 0
        shares = torch.tensor([5, -7, 1 << 40])
        x = MPCTensor.from_shares(shares, precision=0)
        assert torch.equal(x.shallow_copy().share, shares) and torch.equal(x.clone().share, shares)
        assert x.clone().share is not x.share and x.shallow_copy()._tensor is x._tensor
    finally:
        uninstall_session(crypten)
    assert MPCTensor.__init__ is original
    with pytest.raises(RuntimeError, match="not initialized"):  # crypten's own: a sharing
        MPCTensor([])


def test_the_sessions_shallow_copy_makes_what_cryptens_makes():
    """Under a session, MPCTensor.shallow_copy sets its attributes directly; the copy has
    crypten's attributes and values (the same share tensor and ptype, a fresh gradient-free
    node), of a tensor with and without gradients."""
    from protocols.crypten_hooks import install_session, uninstall_session

    crypten = load_crypten()
    from crypten.mpc import MPCTensor
    from crypten.mpc.ptype import ptype

    original = MPCTensor.shallow_copy
    install_session(crypten, lambda: None)
    try:
        for requires_grad in (False, True):
            x = MPCTensor.from_shares(torch.tensor([5, -7, 1 << 40]), precision=0)
            x.ptype, x.requires_grad = ptype.binary, requires_grad
            ours, cryptens = vars(x.shallow_copy()), vars(original(x))
            assert ours.keys() == cryptens.keys()
            assert ours["_tensor"] is cryptens["_tensor"] is x._tensor and ours["ptype"] is ptype.binary
            assert type(ours["ctx"]) is type(cryptens["ctx"]) and ours["ctx"] is not x.ctx
            assert ours["children"] == [] and ours["children"] is not cryptens["children"]
            assert {k: v for k, v in ours.items() if k not in ("_tensor", "ctx", "children")} == \
                {k: v for k, v in cryptens.items() if k not in ("_tensor", "ctx", "children")}
    finally:
        uninstall_session(crypten)
    assert MPCTensor.shallow_copy is original


def _products(crypten, rank, path):
    """Private products (elementwise, matmul, a product of a product) through the session's
    clone-free path or crypten's own; their shares, whether x's share was left alone, and the
    plaintexts."""
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    session_path = ArithmeticSharedTensor._arithmetic_function
    assert session_path.__wrapped__ is not session_path  # the session's path is installed
    if path == "crypten":
        ArithmeticSharedTensor._arithmetic_function = session_path.__wrapped__
    try:
        generator = torch.Generator().manual_seed(3)
        x = crypten.cryptensor(torch.randn(4, 3, generator=generator), src=0)
        y = crypten.cryptensor(torch.randn(4, 3, generator=generator), src=1)
        w = crypten.cryptensor(torch.randn(3, 2, generator=generator), src=1)
        before = x.share.clone()
        products = [x * y, x.matmul(w), (x * y) * y, x.mul(x)]
        return ([p.share.clone() for p in products], torch.equal(x.share, before),
                [p.get_plain_text() for p in products])
    finally:
        ArithmeticSharedTensor._arithmetic_function = session_path


def test_private_products_without_the_clone_give_cryptens_shares(monkeypatch):
    """The session's product of two sharings (no copy of x) gives the bit-identical shares of
    crypten's own path, from the same seeds; x is left as it was; the plaintexts are the
    products to the fixed-point rounding: each factor encoded within half a unit of 2^-16 and
    each truncation within one, so a few units, scaled by the products' magnitude."""
    import functools

    from sessions import run_parties

    monkeypatch.setenv("COTRAIN_INSECURE_TEST_SEED", "13")
    runs = {path: run_parties(functools.partial(_products, path=path), world=2) for path in ("session", "crypten")}
    generator = torch.Generator().manual_seed(3)
    x, y, w = (torch.randn(shape, generator=generator) for shape in ((4, 3), (4, 3), (3, 2)))
    expected = [x * y, x @ w, x * y * y, x * x]
    for rank in range(2):
        (ours, untouched, plain), (cryptens, _, _) = runs["session"][rank], runs["crypten"][rank]
        assert untouched and all(torch.equal(a, b) for a, b in zip(ours, cryptens))
        for got, want in zip(plain, expected):
            assert torch.allclose(got, want, rtol=0, atol=8 / SCALE * (1 + want.abs().max()))


def _passthroughs(crypten, rank, path):
    """crypten's passthrough operations (a shallow copy whose share tensor is the share
    tensor's operation: sums, differences, products with public and private values, matmul,
    neg, square) through the session's lean methods or crypten's own: the shares, encoders'
    scales and ptypes, and the plaintexts."""
    from crypten.mpc import MPCTensor, mpc

    names = [*mpc.UNARY_FUNCTIONS, *mpc.BINARY_FUNCTIONS]
    lean = {name: vars(MPCTensor)[name] for name in names}
    assert all(method.__wrapped__ is not method for method in lean.values())  # the session's are installed
    if path == "crypten":
        for name in names:
            setattr(MPCTensor, name, lean[name].__wrapped__)
    try:
        generator = torch.Generator().manual_seed(5)
        x = crypten.cryptensor(torch.randn(4, 3, generator=generator), src=0)
        y = crypten.cryptensor(torch.randn(4, 3, generator=generator), src=1)
        w = crypten.cryptensor(torch.randn(3, 2, generator=generator), src=1)
        public = torch.randn(4, 3, generator=generator)
        results = [x + y, x - y, x + public, x - 2.5, x * 3, x * public, x * y, x.matmul(w),
                   x.matmul(public.t()), -x, x.square(), (x + y).mul(y), x.add(y).sub(public)]
        return ([(r.share.clone(), r.encoder.scale, r.ptype) for r in results],
                [r.get_plain_text() for r in results])
    finally:
        for name in names:
            setattr(MPCTensor, name, lean[name])


def test_the_sessions_passthrough_operations_give_cryptens_shares(monkeypatch):
    """The session's passthrough methods (attributes read from the tensors' dicts) give the
    bit-identical shares, encoders and ptypes of crypten's own from the same seeds; the
    plaintexts are the operations' to the fixed-point rounding (a few units of 2^-16, scaled
    by the values' magnitude, as for the products above)."""
    import functools

    from sessions import run_parties

    monkeypatch.setenv("COTRAIN_INSECURE_TEST_SEED", "17")
    runs = {path: run_parties(functools.partial(_passthroughs, path=path), world=2) for path in ("session", "crypten")}
    generator = torch.Generator().manual_seed(5)
    x, y, w, public = (torch.randn(shape, generator=generator) for shape in ((4, 3), (4, 3), (3, 2), (4, 3)))
    expected = [x + y, x - y, x + public, x - 2.5, x * 3, x * public, x * y, x @ w, x @ public.t(), -x,
                x * x, (x + y) * y, x + y - public]
    for rank in range(2):
        (ours, plain), (cryptens, _) = runs["session"][rank], runs["crypten"][rank]
        assert len(ours) == len(cryptens) == len(expected)
        for (share, scale, ptype), (their_share, their_scale, their_ptype) in zip(ours, cryptens):
            assert torch.equal(share, their_share) and scale == their_scale and ptype == their_ptype
        for got, want in zip(plain, expected):
            assert torch.allclose(got, want, rtol=0, atol=8 / SCALE * (1 + want.abs().max()))


# names whose lookup takes each path of crypten's CrypTensor.__getattribute__: protected, plain
# (no autograd function), a property, built-in operators, in-place, autograd functions, and
# autograd functions the tensor has no method for (without autograd: a forward without context)
_LOOKED_UP = ("requires_grad", "backward", "copy_", "_tensor", "share", "encoder", "size", "shallow_copy",
              "__add__", "__rsub__", "__matmul__", "add", "add_", "neg_", "relu", "matmul", "sum", "div",
              "relu6", "binary_cross_entropy", "__rtruediv__")


def _looked_up(lookup, x: object, name: str) -> object:
    """What identifies ``lookup(x, name)``: a bound method by its function and object, a
    closure crypten makes per lookup by its code, an error by its type, anything else by itself."""
    try:
        value = lookup(x, name)
    except (AttributeError, RuntimeError) as error:  # in place with autograd: crypten refuses
        return ("raises", type(error))
    return _lookup_signature(value)


def _lookup_signature(value: object) -> object:
    if hasattr(value, "__self__") and hasattr(value, "__func__"):
        return ("method", value.__func__, id(value.__self__))
    if callable(value) and hasattr(value, "__code__"):
        return ("function", value.__code__)
    return ("value", value)


def test_the_sessions_attribute_lookup_resolves_every_name_as_cryptens():
    """The session's CrypTensor.__getattribute__ (plain names read directly) gives what crypten's
    gives for every kind of name, with autograd on and off, twice (the second read takes the
    remembered path); a name given an autograd function later is dispatched again; the
    validation mode still wraps lookups; uninstalling restores crypten's own."""
    from protocols.crypten_hooks import install_session, uninstall_session

    crypten = load_crypten()
    from crypten.mpc import MPCTensor

    original = crypten.CrypTensor.__getattribute__
    install_session(crypten, lambda: None)
    try:
        x = MPCTensor.from_shares(torch.tensor([3, -4]), precision=0)
        for requires_grad in (False, True):
            x.requires_grad = requires_grad
            for _ in range(2):
                for name in _LOOKED_UP:
                    assert _looked_up(getattr, x, name) == _looked_up(original, x, name), name
                    with crypten.no_grad():
                        assert _looked_up(getattr, x, name) == _looked_up(original, x, name), name
        x.requires_grad = False
        MPCTensor.cotrain_late_op = lambda self: "plain"
        try:
            plain = _looked_up(getattr, x, "cotrain_late_op")  # remembered as a plain name
            assert plain[0] == "method" and x.cotrain_late_op() == "plain"

            class LateOp(crypten.gradients.AutogradFunction):
                @staticmethod
                def forward(ctx, input):
                    return "autograd"

            crypten.gradients.register_function("cotrain_late_op")(LateOp)
            try:  # crypten's autograd dispatch now, as crypten's own lookup gives
                assert _looked_up(getattr, x, "cotrain_late_op")[0] == "function"
                assert _looked_up(getattr, x, "cotrain_late_op") == _looked_up(original, x, "cotrain_late_op")
            finally:
                del crypten.gradients.FUNCTION_REGISTRY["cotrain_late_op"]
            assert _looked_up(getattr, x, "cotrain_late_op") == plain
        finally:
            del MPCTensor.cotrain_late_op
        crypten.cfg.debug.validation_mode = True
        try:
            # crypten's validation wrapper, on both paths: a looked-up function and a plain one
            assert x.add.__qualname__.endswith("validation_function")
            assert x.size.__qualname__.endswith("validation_function")
        finally:
            crypten.cfg.debug.validation_mode = False
        assert _lookup_signature(x.add) == _lookup_signature(original(x, "add"))
    finally:
        uninstall_session(crypten)
    assert crypten.CrypTensor.__getattribute__ is original


def test_the_sessions_config_reads_follow_every_change():
    """Under a session, crypten.cfg keeps what it read, and drops it whenever the tree or a value
    changes: a write through a group, temp_override, set_config, a new key; uninstalling leaves
    nothing kept behind."""
    import copy

    from protocols.crypten_hooks import install_session, uninstall_session

    crypten = load_crypten()
    cfg = crypten.cfg
    before = copy.deepcopy(cfg.config)
    install_session(crypten, lambda: None)
    try:
        provider = cfg.mpc.provider
        assert cfg.mpc.provider == provider and cfg["mpc.provider"] == provider
        cfg.mpc.provider = "TTP"
        assert cfg.mpc.provider == "TTP" and cfg.config.mpc.provider == "TTP"
        with cfg.temp_override({"mpc.provider": "HE", "debug.validation_mode": True}):
            assert cfg.mpc.provider == "HE" and cfg.debug.validation_mode
        assert cfg.mpc.provider == "TTP" and not cfg.debug.validation_mode
        saved = copy.deepcopy(cfg.config)
        saved.mpc.provider = "SAVED"
        cfg.set_config(saved)
        assert cfg.mpc.provider == "SAVED"
        cfg.cotrain_extra_group = 5  # a new key: merged into a new tree
        assert cfg.cotrain_extra_group == 5 and cfg.mpc.provider == "SAVED"
    finally:
        cfg.set_config(before)
        uninstall_session(crypten)
    assert set(vars(cfg)) == {"config"}
    assert cfg.mpc.provider == before.mpc.provider

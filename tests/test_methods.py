"""Translation methods (geotranslate.methods) and their losses, on tiny networks (CPU)."""

from __future__ import annotations

import copy
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from builders import known_mapping, smooth_field

from geotranslate.errors import GeotranslateError
from geotranslate.methods import METHODS, build_method
from geotranslate.models import (
    MultiScaleDiscriminator,
    PatchNCELoss,
    PatchSampleMLP,
    VGGLoss,
    feature_matching_loss,
    load_vgg19_features,
)
from geotranslate.models.nce import mask_at
from geotranslate.train import TrainConfig, distributed
from geotranslate.train.setup import training_method

TINY = {"ngf": 8, "ndf": 8, "n_layers_d": 2, "n_blocks": 1, "progress": False}


def config(dataset_type: str, **settings) -> TrainConfig:
    """A TrainConfig; settings it has no field for yet (num_d, lambda_nce...) are attributes."""
    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(dataset_type, **{k: v for k, v in {**TINY, **settings}.items()
                                       if k in fields})
    for key, value in settings.items():
        if key not in fields:
            setattr(cfg, key, value)
    return cfg


def make_batch(bands_a: int, bands_b: int, n: int = 2, size: int = 32, paired: bool = True,
               seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    a = np.stack([smooth_field(rng, bands_a, size) for _ in range(n)]) / 3
    if paired:
        b = np.stack([known_mapping(x) for x in a])[:, :bands_b] / 3
    else:
        b = np.stack([smooth_field(rng, bands_b, size) for _ in range(n)]) / 3
    ones = torch.ones(n, 1, size, size)
    return {"a": torch.from_numpy(a).float().clamp(-1, 1),
            "b": torch.from_numpy(b).float().clamp(-1, 1),
            "valid_a": ones.clone(), "valid_b": ones.clone()}


def weights(nets: dict) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, net in nets.items()
            for k, v in net.state_dict().items()}


def assert_same(x: dict, y: dict) -> None:
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), k


# -- the method a run trains is build_method's, bit for bit ------------------------------------

@pytest.mark.parametrize(("dataset_type", "bands", "settings"), [
    ("Pix2Pix", (2, 3), {"lambda_tv": 0.1}),  # unet with dropout: the RNG streams line up too
    ("CycleGAN", (3, 3), {"pool_size": 2}),  # identity losses, pools that fill and swap
    ("CycleGAN", (2, 3), {"generator": "unet"}),  # identity off
])
def test_the_runs_method_steps_as_build_methods(dataset_type, bands, settings):
    cfg = config(dataset_type, **settings)
    meta = SimpleNamespace(domains={d: SimpleNamespace(band_count=n)  # what the Trainer reads
                                    for d, n in zip("ab", bands, strict=True)})
    batches = [make_batch(*bands, seed=s) for s in range(4)]
    run_method = training_method(cfg, meta, 32, torch.device("cpu"), "fp32",
                                 distributed.DistContext(), log=lambda m: None)
    expected = [run_method.step(b) for b in batches[:3]]
    checkpoint = copy.deepcopy(run_method.state_dict())
    torch.manual_seed(123)
    expected_next = run_method.step(batches[3])

    method = build_method(dataset_type, cfg, dict(zip("ab", bands, strict=True)), 32,
                          log=lambda m: None)
    assert list(method.nets) == list(run_method.nets)
    assert method.loss_names() == run_method.loss_names()
    for batch, losses in zip(batches[:3], expected, strict=True):
        got = method.step(batch)
        assert list(got) == list(losses)
        assert_same(got, losses)
    assert_same(weights(method.nets), {f"{n}.{k}": v for n, state in checkpoint["nets"].items()
                                       for k, v in state.items()})
    assert method.generator_specs == run_method.generator_specs
    assert method.discriminator_specs == run_method.discriminator_specs

    # the state a run checkpoints continues in a method built apart exactly
    fresh = build_method(dataset_type, cfg, dict(zip("ab", bands, strict=True)), 32,
                         log=lambda m: None)
    fresh.load_state_dict(checkpoint)
    torch.manual_seed(123)
    assert_same(fresh.step(batches[3]), expected_next)
    assert_same(weights(fresh.nets), weights({n: run_method.nets[n] for n in fresh.nets}))


# -- the losses on constructed examples ---------------------------------------------------------

@torch.no_grad()
def test_patchnce_positives_are_the_same_spatial_locations():
    torch.manual_seed(0)
    key = torch.nn.functional.normalize(torch.randn(2, 64, 16), dim=-1)
    loss = PatchNCELoss(0.07)
    logits = loss.logits(key, key)
    assert torch.equal(logits.argmax(-1), torch.arange(64).expand(2, 64))  # the diagonal
    same = float(loss(key, key))
    shuffled = float(loss(key[:, torch.randperm(64)], key))
    assert same < 0.5 < 3.0 < shuffled, (same, shuffled)

    # through the sampler and heads: the same feature maps give the same patches and vectors
    heads = PatchSampleMLP([5], units=16)
    feature = torch.randn(2, 5, 8, 8)
    keys, ids = heads([feature], 24)
    queries, _ = heads([feature.clone()], 24, patch_ids=ids)
    assert ids[0].shape == (2, 24) and len(set(ids[0][0].tolist())) == 24
    assert torch.allclose(queries[0], keys[0])
    assert torch.equal(loss.logits(queries[0], keys[0]).argmax(-1),
                       torch.arange(24).expand(2, 24))
    # a map shifted by one row: every query's best key is elsewhere, and the loss is higher
    moved, _ = heads([feature.roll(1, dims=2)], 24, patch_ids=ids)
    assert float(loss(moved[0], keys[0])) > float(loss(queries[0], keys[0])) + 1


def test_patch_sampling_leaves_nodata_out():
    valid = torch.ones(2, 1, 32, 32)
    valid[0, :, :16] = 0  # top half of the first image is nodata
    valid[1, :, :, 24:] = 0
    for size in (38, 16, 8):  # the padded input, and two downsampled maps
        feature = torch.randn(2, 4, size, size)
        mask = mask_at(valid, size, size)
        ids = PatchSampleMLP.sample_ids(feature, 256, valid)
        assert ids.shape[1] == min(256, int(mask.reshape(2, -1).sum(1).min()))
        for image in range(2):
            assert mask[image].reshape(-1)[ids[image]].all()
    # a downsampled location is valid only where all the pixels it covers are
    assert mask_at(valid, 8, 8)[0, :4].any().item() is False
    assert mask_at(valid, 8, 8)[0, 4:].all().item() is True
    assert mask_at(valid, 8, 8)[1, :, 6:].any().item() is False


@torch.no_grad()
def test_feature_matching_is_zero_when_fake_equals_real():
    torch.manual_seed(0)
    d = MultiScaleDiscriminator(5, ndf=8, n_layers=2, num_d=2)
    x = torch.randn(2, 5, 32, 32)
    real = d(x)
    assert len(real) == 2 and len(real[0]) == 2 + 2  # n_layers + 2 stages per scale
    assert real[0][-1].shape[-1] == 6 and real[1][-1].shape[-1] == 2  # 32 px and 16 px
    assert torch.equal(real[0][-1], d.scales[0](x))  # the last stage is the PatchGAN's logits
    assert float(feature_matching_loss(d(x), real, 2)) == 0.0
    assert float(feature_matching_loss(d(x + 0.1 * torch.randn_like(x)), real, 2)) > 1e-4


# -- each new method trains -------------------------------------------------------------------

def run_steps(method, batch, steps):
    history = [method.step(batch) for _ in range(steps)]
    return {k: [float(h[k]) for h in history] for k in history[0]}


def test_pix2pixhd_feature_matching_and_l1_fall_on_a_fixed_batch():
    batch = make_batch(2, 3, n=2)
    cfg = config("Pix2PixHD", lr=1e-3, lambda_l1=10.0)
    method = build_method("Pix2PixHD", cfg, {"a": 2, "b": 3}, 32)
    assert method.num_d == 2 and len(method.nets["d_b"].scales) == 2  # 32 px, n_layers_d 2
    assert method.discriminator_specs["d_b"]["num_d"] == 2
    untrained = float((method.translate("a2b", batch["a"]) - batch["b"]).abs().mean())
    history = run_steps(method, batch, 30)
    assert set(history) == {"d_b", "g_ab_gan", "g_ab_feat", "g_ab_l1"}
    assert np.mean(history["g_ab_l1"][-5:]) < 0.6 * np.mean(history["g_ab_l1"][:5])
    assert np.mean(history["g_ab_feat"][-5:]) < np.mean(history["g_ab_feat"][:5])
    trained = float((method.translate("a2b", batch["a"]) - batch["b"]).abs().mean())
    assert trained < 0.6 * untrained


def test_pix2pixhd_scales_fit_the_chips_or_fail_clearly():
    bands = {"a": 2, "b": 3}
    assert build_method("Pix2PixHD", config("Pix2PixHD", n_layers_d=3), bands, 32).num_d == 1
    assert build_method("Pix2PixHD", config("Pix2PixHD", n_layers_d=2), bands, 64).num_d == 3
    # an L1 weight left as None means each method's own default: 0 here, 100 for Pix2Pix
    assert build_method("Pix2PixHD", config("Pix2PixHD", lambda_l1=None), bands, 32).lambda_l1 \
        == 0.0
    pix2pix = build_method("Pix2Pix", config("Pix2Pix", lambda_l1=None), bands, 32)
    assert pix2pix.option("lambda_l1") == 100.0 and "g_ab_l1" in pix2pix.step(make_batch(2, 3))
    with pytest.raises(GeotranslateError, match="--num-d 3: 32 px chips leave room for at most 2"):
        build_method("Pix2PixHD", config("Pix2PixHD", num_d=3), bands, 32)


@pytest.mark.parametrize(("name", "bands"), [("CUT", (3, 3)), ("FastCUT", (2, 4))])
def test_cut_nce_falls_and_band_counts_may_differ(name, bands):
    batch = make_batch(*bands, n=2, paired=False)
    batch["valid_a"][0, :, :8] = 0  # nodata in A: left out of the patch sampling
    logged: list[str] = []
    method = build_method(name, config(name, lr=1e-3), dict(zip("ab", bands, strict=True)), 32,
                          log=logged.append)
    assert method.nce_layers == (0, 4, 8)  # the paper's layers this 1-block generator has
    if bands[0] == bands[1]:
        assert method.nce_idt and "e_b" not in method.nets and not logged
        assert method.lambda_nce == 1.0
    else:
        assert not method.nce_idt and "e_b" in method.nets and method.lambda_nce == 10.0
        assert logged == []  # FastCUT has no identity NCE to switch off
    history = run_steps(method, batch, 20)
    assert set(history) == set(method.loss_names())
    assert np.mean(history["nce"][-5:]) < 0.8 * np.mean(history["nce"][:5])
    if "nce_idt" in history:
        assert np.mean(history["nce_idt"][-5:]) < 0.8 * np.mean(history["nce_idt"][:5])
    assert all(np.isfinite(v).all() for v in history.values())
    fake = method.translate("a2b", batch["a"])
    assert fake.shape == (2, bands[1], 32, 32)


def test_cut_with_different_bands_logs_that_identity_nce_is_off():
    logged: list[str] = []
    method = build_method("CUT", config("CUT"), {"a": 2, "b": 4}, 32, log=logged.append)
    assert not method.nce_idt and method.loss_names() == ["d_b", "g_ab_gan", "nce"]
    assert logged == ["identity NCE off: domain A has 2 bands and domain B 4 (g_ab can "
                      "translate a B image only with equal band counts)"]
    with pytest.raises(GeotranslateError, match="needs --generator resnet"):
        build_method("CUT", config("CUT", generator="unet"), {"a": 2, "b": 4}, 32)
    with pytest.raises(GeotranslateError, match="NCE layers 0,12: .* from 0 to 10"):
        build_method("CUT", config("CUT", nce_layers="0,12"), {"a": 2, "b": 4}, 32)


@pytest.mark.parametrize(("name", "bands", "settings"), [
    ("Pix2PixHD", (2, 3), {"lambda_l1": 1.0}),
    ("CUT", (3, 3), {}),
    ("FastCUT", (2, 4), {}),
    ("CycleGAN", (3, 3), {"pool_size": 2}),
])
def test_state_dict_round_trip_gives_identical_next_steps(name, bands, settings):
    batch = make_batch(*bands, paired=name.startswith("Pix"))
    band_counts = dict(zip("ab", bands, strict=True))
    first = build_method(name, config(name, **settings), band_counts, 32, log=lambda m: None)
    for _ in range(2):
        first.step(batch)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # what a checkpoint holds, read back weights-only
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    second = build_method(name, config(name, **settings, seed=7), band_counts, 32,
                          log=lambda m: None)
    second.load_state_dict(state)
    assert_same(weights(second.nets), weights(first.nets))
    rng = torch.get_rng_state()
    expected = [first.step(batch) for _ in range(2)]
    torch.set_rng_state(rng)
    got = [second.step(batch) for _ in range(2)]
    for e, g in zip(expected, got, strict=True):
        assert_same(e, g)
    assert_same(weights(second.nets), weights(first.nets))
    with pytest.raises(GeotranslateError, match="run.pt: checkpoint does not fit this run"):
        second.load_state_dict({**state, "nets": {}}, "run.pt")


@pytest.mark.parametrize("name", list(METHODS))
def test_translate_runs_in_eval_and_leaves_training_mode(name):
    bands = {"a": 3, "b": 3}
    method = build_method(name, config(name, generator="unet") if name == "Pix2Pix"
                          else config(name), bands, 32, log=lambda m: None)
    x = make_batch(3, 3)["a"]
    out = method.translate("a2b", x)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 32, 32)
    assert torch.equal(out, method.translate("a2b", x))  # eval: no dropout, no batch statistics
    assert all(net.training for net in method.nets.values())
    assert method.directions == (("a2b", "b2a") if name == "CycleGAN" else ("a2b",))
    if name != "CycleGAN":
        with pytest.raises(ValueError, match="not 'b2a'"):
            method.translate("b2a", x)
    assert set(method.generators()) == set(method.directions)


def test_bf16_steps_on_cpu():
    for name in ("Pix2PixHD", "CUT", "FastCUT"):
        method = build_method(name, config(name, ngf=4), {"a": 2, "b": 3}, 16, precision="bf16",
                              log=lambda m: None)
        losses = method.step(make_batch(2, 3, n=1, size=16))
        assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", ["CycleGAN", "Pix2Pix"])
def test_bf16_training_on_cpu_follows_fp32_losses(name):
    """The default bf16 path (channels_last, layout-keeping norms and paddings) gives the
    fp32 losses within bf16's precision over a few steps, from the same initial weights."""
    batch = make_batch(3, 3, n=1, size=32, paired=name == "Pix2Pix")
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = config(name, ngf=8, unet_depth=3, pool_size=0, seed=1)
        method = build_method(name, cfg, {"a": 3, "b": 3}, 32, precision=precision,
                              log=lambda m: None)
        assert method.channels_last == (precision == "bf16")
        if precision == "bf16":  # no layer left that drops channels_last
            kinds = {type(m).__name__ for net in method.nets.values() for m in net.modules()}
            assert "InstanceNorm2d" not in kinds and "ReflectionPad2d" not in kinds
        runs[precision] = [method.step(batch) for _ in range(3)]
    for fp32, bf16 in zip(runs["fp32"], runs["bf16"], strict=True):
        for key, value in fp32.items():
            assert float(bf16[key]) == pytest.approx(float(value), rel=0.05, abs=0.02), key


# -- the perceptual loss needs a weights file -----------------------------------------------

def test_vgg_loss_loads_user_weights_and_fails_clearly_without(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)  # random weights in the layout of torchvision's vgg19 (.features)
    plain = make_layers(cfgs["E"]).state_dict()
    full = {f"features.{k}": v for k, v in plain.items()}  # keys of a whole vgg19
    save_file(full, tmp_path / "vgg19.safetensors")
    torch.save(plain, tmp_path / "vgg19.pth")
    loaded = load_vgg19_features(tmp_path / "vgg19.safetensors")
    assert torch.equal(loaded[0].weight, full["features.0.weight"])
    assert torch.equal(load_vgg19_features(tmp_path / "vgg19.pth")[28].bias,
                       full["features.28.bias"])
    vgg = VGGLoss(loaded)
    x = make_batch(2, 3)["b"]
    assert float(vgg(x, x)) == 0.0 and float(vgg(x, -x)) > 0
    assert float(VGGLoss(loaded)(x[:, :2], -x[:, :2])) > 0  # two bands: their mean, three times

    method = build_method("Pix2PixHD", config("Pix2PixHD", lambda_vgg=10.0,
                                              vgg_weights=str(tmp_path / "vgg19.safetensors")),
                          {"a": 2, "b": 3}, 32)
    assert "g_ab_vgg" in method.loss_names() and "vgg" not in "".join(method.nets)
    assert float(method.step(make_batch(2, 3))["g_ab_vgg"]) > 0
    assert not any(p.requires_grad for p in method.vgg_loss.parameters())

    with pytest.raises(GeotranslateError) as missing:
        build_method("Pix2PixHD", config("Pix2PixHD", lambda_vgg=10.0), {"a": 2, "b": 3}, 32)
    assert "--vgg-weights PATH" in str(missing.value) and "\n" not in str(missing.value)
    with pytest.raises(GeotranslateError, match="nowhere.pth: VGG weights file not found"):
        load_vgg19_features(tmp_path / "nowhere.pth")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(GeotranslateError, match="other.pth: does not hold VGG19 weights"):
        load_vgg19_features(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(GeotranslateError, match="junk.pth: not a readable VGG19 weights file"):
        load_vgg19_features(tmp_path / "junk.pth")


# -- the loop ---------------------------------------------------------------------------------

class ListRun:
    """The smallest run the loop accepts: batches from a list, records what it is told."""

    def __init__(self, batches, total_epochs, max_steps=None):
        self.data, self.total_epochs, self.max_steps = batches, total_epochs, max_steps
        self.batches_per_epoch = len(batches)
        self.epoch = self.epoch_batch = self.iteration = 0
        self.logged, self.epochs_ended, self.finished = [], [], False

    def batches(self, epoch, start_batch):
        return iter(self.data[start_batch:])

    def log_step(self, losses):
        self.logged.append((self.epoch, self.iteration, losses))

    def step_done(self):
        pass

    def should_stop(self):
        return self.max_steps is not None and self.iteration >= self.max_steps

    def end_epoch(self):
        self.epochs_ended.append(self.epoch)

    def finish(self):
        self.finished = True


def test_loop_steps_epochs_and_stops_mid_epoch():
    from geotranslate.train.loop import train_loop

    batches = [make_batch(2, 3, n=1, seed=s) for s in range(3)]
    method = build_method("Pix2PixHD", config("Pix2PixHD"), {"a": 2, "b": 3}, 32)
    run = ListRun(batches, total_epochs=2, max_steps=4)
    train_loop(method, run)
    assert (run.epoch, run.epoch_batch, run.iteration) == (1, 1, 4) and run.finished
    assert run.epochs_ended == [1]  # the first epoch ended; the second was stopped at batch 1
    assert [it for _, it, _ in run.logged] == [1, 2, 3, 4]
    assert set(run.logged[0][2]) == set(method.loss_names())
    run = ListRun(batches, total_epochs=2, max_steps=3)  # a stop at an epoch's end ends it
    train_loop(method, run)
    assert (run.epoch, run.epoch_batch, run.epochs_ended) == (1, 0, [1])


@pytest.mark.parametrize(("name", "bands"), [("FastCUT", (2, 4)), ("Pix2PixHD", (2, 3))])
def test_model_file_holds_the_new_methods_generator(name, bands, tmp_path):
    from geotranslate.modelfile import DomainSpec, TranslationModel, load_model, save_model
    from geotranslate.stats import Normalizer

    method = build_method(name, config(name), dict(zip("ab", bands, strict=True)), 32)
    batch = make_batch(*bands, paired=False)
    method.step(batch)
    domains = {d: DomainSpec(n, "float32", [None] * n, None,
                             Normalizer("minmax", (0.0,) * n, (1.0,) * n))
               for d, n in zip("ab", bands, strict=True)}
    save_model(TranslationModel(name, method.generators(), method.generator_specs, domains, 32),
               tmp_path)
    model = load_model(tmp_path)
    assert model.dataset_type == name and set(model.generators) == {"a2b"}
    with torch.no_grad():
        out = model.generator("a2b").eval()(batch["a"])
    assert torch.equal(out, method.translate("a2b", batch["a"]))  # no e_b, f_ab, d_b needed

"""The CIFAR-10 recipe (+experiment=cifar10_fast): its network, on-device crop/flip augmentation, label smoothing and
triangular schedule, on a few synthetic CIFAR-shaped samples on the CPU."""

import itertools
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from harness.augment import CropFlip, crop_flip, crop_flip_params
from harness.build import build_model, build_optimizer, build_scheduler
from harness.config import config_hash, validate
from harness.data.base import make_dataset
from harness.errors import UserError
from harness.parallel import shard
from harness.seeding import torch_generator
from harness.train import train
from strategies import Selection

RECIPE = "+experiment=cifar10_fast"


def reference_crop_flip(img: np.ndarray, top: int, left: int, flip: bool, pad: int) -> np.ndarray:
    """One (C, H, W) image: numpy's reflect padding, a slice, a reversed slice."""
    _, h, w = img.shape
    out = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")[:, top:top + h, left:left + w]
    return out[:, :, ::-1] if flip else out


def synthetic_cifar(n_train: int = 16, n_test: int = 8, seed: int = 0):
    gen = np.random.default_rng(seed)
    return make_dataset("synthetic", gen.normal(size=(n_train, 3, 32, 32)), gen.integers(0, 10, n_train),
                        gen.normal(size=(n_test, 3, 32, 32)), gen.integers(0, 10, n_test), num_classes=10)


@pytest.fixture(scope="module")
def recipe():
    """The recipe's composed config (composed once: Hydra's composition is the slow part of these tests)."""
    from harness.preflight import compose_config

    return compose_config([RECIPE])


def recipe_trainer(recipe, **overrides):
    """The recipe's trainer at a CPU test's size: batch 8, 2 steps."""
    return OmegaConf.merge(recipe.trainer, {"batch_size": 8, "epochs": None, "steps": 2, "device": "cpu", **overrides})


def captured_inputs(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every training input the model is given from now on."""
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()) if m.training else None)
    return seen


def test_crop_flip_equals_numpy_pad_slice_and_reverse():
    pad = 2
    images = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    for (top, left, flip) in itertools.product(range(2 * pad + 1), range(2 * pad + 1), (False, True)):
        corners = torch.tensor([[top, left], [2 * pad - top, left]])
        flips = torch.tensor([flip, not flip])
        out = crop_flip(images, corners, flips, pad).numpy()
        for i in range(2):
            expected = reference_crop_flip(images[i].numpy(), *corners[i].tolist(), bool(flips[i]), pad)
            np.testing.assert_array_equal(out[i], expected)


def test_shards_of_an_augmented_global_batch_equal_one_process_augmenting_it():
    images = torch.randn(7, 3, 8, 8)
    whole = CropFlip(4, torch_generator(0, "data_order"))(images, 7, torch.arange(7))
    for world in (2, 3):
        gens = [torch_generator(0, "data_order") for _ in range(world)]  # every rank's copy of the stream
        parts = [CropFlip(4, g)(images[shard(torch.arange(7), r, world)], 7, shard(torch.arange(7), r, world))
                 for r, g in enumerate(gens)]
        torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
        assert all(torch.equal(g.get_state(), gens[0].get_state()) for g in gens)  # ranks stay in step


def test_recipe_trains_two_steps_on_cifar_shaped_samples(recipe):
    data = synthetic_cifar()
    model = build_model(recipe.model, data.input_shape, data.num_classes)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == 1_972_816
    out = train(model, data, Selection(np.arange(16)), recipe_trainer(recipe), 0, torch.device("cpu"))
    assert out.steps == 2 and out.samples_seen == 16 and np.isfinite(out.train_loss[0][1])
    assert 0 <= out.final_test_accuracy <= 1


def test_augmentation_moves_pixels_with_their_own_image_reproducibly_for_a_seed(recipe):
    data = synthetic_cifar()

    def first_batch(seed: int, **overrides) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model(recipe.model, data.input_shape, data.num_classes)
        seen = captured_inputs(model)
        train(model, data, Selection(np.arange(16)), recipe_trainer(recipe, steps=1, **overrides), seed,
              torch.device("cpu"))
        return seen[0]

    plain = first_batch(0, augment=None)
    augmented = first_batch(0)
    torch.testing.assert_close(first_batch(0), augmented, rtol=0, atol=0)  # same seed, same pixels
    assert not torch.equal(first_batch(1), augmented)
    assert not torch.equal(augmented, plain)
    # the epoch's order is drawn before any augmentation: image i of both batches is the same sample, and the
    # augmented one is one of that sample's own crops (so it keeps its label)
    pad = 2
    for aug, img in zip(augmented.numpy(), plain.numpy()):
        candidates = [reference_crop_flip(img, t, le, f, pad) for t, le, f in
                      itertools.product(range(2 * pad + 1), range(2 * pad + 1), (False, True))]
        assert any(np.array_equal(aug, c) for c in candidates)
    corners, flips = crop_flip_params(10_000, pad, torch_generator(0, "x"), torch.device("cpu"))
    assert corners.min() == 0 and corners.max() == 2 * pad and 0.45 < flips.float().mean() < 0.55


def test_label_smoothing_is_the_training_loss(recipe):
    data = synthetic_cifar()
    trainer_cfg = recipe_trainer(recipe, steps=1, augment=None)
    torch.manual_seed(0)
    model = build_model(recipe.model, data.input_shape, data.num_classes)
    reference = build_model(recipe.model, data.input_shape, data.num_classes)
    reference.load_state_dict(model.state_dict())
    out = train(model, data, Selection(np.arange(16)), trainer_cfg, 0, torch.device("cpu"))
    batch = torch.randperm(16, generator=torch_generator(0, "data_order"))[:8]
    logits = reference.train()(torch.from_numpy(data.x_train[batch.numpy()]))
    expected = F.cross_entropy(logits, torch.from_numpy(data.y_train[batch.numpy()]), label_smoothing=0.2)
    assert out.train_loss[0][1] == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() != pytest.approx(F.cross_entropy(logits, torch.from_numpy(
        data.y_train[batch.numpy()])).item(), rel=1e-3)


def test_triangle_schedule_is_airbenchs_interpolation(recipe):
    cfg = recipe.trainer
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    sched = build_scheduler(cfg, opt, total_steps=50)
    lrs = []
    for _ in range(51):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = np.interp(np.arange(51), [0, 10, 50], [0.2, 1, 0]) * cfg.optimizer.lr
    np.testing.assert_allclose(lrs, expected, rtol=1e-9, atol=1e-12)
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.85


def test_new_keys_unset_leave_existing_trial_identities_as_they_were(compose_cfg):
    cfg = compose_cfg("strategy=random")
    trainer = OmegaConf.to_container(cfg.trainer)
    for key in ("augment", "crop_padding", "label_smoothing"):
        trainer.pop(key)
    before = OmegaConf.merge(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "trainer"]), {"trainer": trainer})
    assert config_hash(cfg) == config_hash(before)
    assert config_hash(compose_cfg("strategy=random", "trainer.label_smoothing=0.1")) != config_hash(cfg)
    assert config_hash(compose_cfg("strategy=random", "trainer.crop_padding=2")) == config_hash(cfg)  # no augment
    assert config_hash(compose_cfg(RECIPE)) != config_hash(compose_cfg(RECIPE, "trainer.crop_padding=4"))


@pytest.mark.parametrize("overrides, message", [
    (("trainer.augment=crop_flip",), "trainer.augment=crop_flip: expected image samples (channels, height, width); "
                                     "dataset=mnist1d has samples of shape (40,)"),
    ((RECIPE, "trainer.augment=cutout"), "trainer.augment=cutout: expected null or one of: crop_flip"),
    ((RECIPE, "trainer.crop_padding=32"), "trainer.crop_padding=32: expected fewer pixels than the images' height"),
    ((RECIPE, "trainer.label_smoothing=1"), "trainer.label_smoothing=1.0: expected a number in [0, 1)"),
])
def test_bad_recipe_values_stop_with_one_line_naming_the_key(compose_cfg, overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        validate(compose_cfg(*overrides), check_files=False)

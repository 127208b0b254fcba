import numpy as np
import torch
from omegaconf import OmegaConf

from harness.config import TrainerConfig
from harness.data.sources import Digits
from harness.models import MLP
from harness.train import _batches, train
from strategies import Selection


def trainer_cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"epochs": 10, "batch_size": 64, **kw})


def fit(sel, seed=0, **kw):
    data = Digits().load("unused")
    torch.manual_seed(seed)
    model = MLP(data.input_shape, 10)
    out = train(model, data, sel, trainer_cfg(**kw), seed, torch.device("cpu"))
    return data, model, out


def test_weights_are_honoured_a_zero_weight_class_is_never_learned():
    data = Digits().load("unused")
    idx = np.arange(len(data.y_train))
    w = (data.y_train != 3).astype(np.float32)
    _, model, out = fit(Selection(idx, weights=w))
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x_test)).argmax(1).numpy()
    acc_3 = (pred[data.y_test == 3] == 3).mean()
    acc_rest = (pred[data.y_test != 3] == data.y_test[data.y_test != 3]).mean()
    assert acc_rest > 0.85 and acc_3 < 0.2


def test_uniform_weights_equal_unweighted_training():
    data = Digits().load("unused")
    idx = np.arange(len(data.y_train))
    _, _, a = fit(Selection(idx))
    _, _, b = fit(Selection(idx, weights=np.full(len(idx), 2.5)))
    assert a.final_test_accuracy == b.final_test_accuracy


def test_budget_in_steps_and_in_epochs():
    data = Digits().load("unused")
    idx = np.arange(500)
    _, _, out = fit(Selection(idx), steps=17, epochs=None)
    assert out.steps == 17 and out.epochs == 3  # 8 steps per epoch of 500 at batch 64
    _, _, out = fit(Selection(idx), epochs=2)
    assert out.steps == 16 and len(out.test_accuracy) == 2 and len(data.y_test) > 0


def test_curriculum_batches_come_from_the_paced_prefix_of_the_order():
    n, bs, total = 1000, 10, 100
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    pacing = lambda t: 0.05 + 0.5 * t  # noqa: E731
    gen = torch.Generator().manual_seed(1)
    for step0 in (0, 50, 99):
        for k, batch in enumerate(_batches(n, bs, order, pacing, step0, total, gen, torch.device("cpu"))):
            step = step0 + k
            available = min(n, max(bs, int(np.ceil(pacing(step / total) * n))))
            allowed = set(order[:available].tolist())
            assert set(batch.tolist()) <= allowed and len(batch) == bs


def test_standard_order_visits_every_sample_once_per_epoch():
    gen = torch.Generator().manual_seed(0)
    batches = list(_batches(103, 10, None, None, 0, 11, gen, torch.device("cpu")))
    assert sorted(torch.cat(batches).tolist()) == list(range(103))

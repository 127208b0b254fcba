"""Every bad input a one-line error: wrong overrides and malformed files through the real entry point
(`python -m harness.run`), each answered with exit code 2 and one line naming the key or file, never a traceback.

Most are stopped by the preflight, before anything is recorded; a file malformed in a way only reading it shows
stops inside the run, which then ends FAILED with the error as its tag. No test here times anything (CI machines
differ 5x; scripts/bench_preflight.py measures how fast bad input stops).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli, runs_of


@dataclass(frozen=True)
class Bad:
    args: tuple[str, ...]  # `{path}` stands for the malformed file's path, `{tmp}` for the test's folder
    message: str  # a fragment of the one line on stderr
    # arrays replacing make_npz's good ones, raw bytes, or a writer `(tmp folder) -> path the line must name`
    file: dict[str, np.ndarray] | bytes | Callable[[Path], str] | None = None
    in_run: bool = False  # only reading the file shows it: the run started, and must end FAILED
    drop: tuple[str, ...] = ()  # arrays left out of the file


def npz(*args: str) -> tuple[str, ...]:
    return ("dataset=npz", "dataset.path={path}", *args)


def images(*args: str) -> tuple[str, ...]:
    """The image folder `image_folder_and` writes, 6 training images of 4x4, and a model that takes them."""
    return ("dataset=image_folder", "dataset.train_dir={tmp}/img", "dataset.test_fraction=0.25",
            "dataset.image_size=[4,4]", "model=mlp", *args)


def image_folder_and(embeddings: np.ndarray | None = None, classes: tuple[str, ...] = ("a", "b"),
                     corrupt: bool = False) -> Callable[[Path], str]:
    """A writer of `{tmp}/img` (4 PNGs per class, a corrupt one in the last class) and `{tmp}/emb.npy`; it returns
    the embeddings file's path, or the folder's without embeddings."""
    def write(tmp_path: Path) -> str:
        from PIL import Image

        for c in classes:
            (tmp_path / "img" / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((5, 5, 3), 40 * i, np.uint8)).save(tmp_path / "img" / c / f"{i}.png")
        if corrupt:
            (tmp_path / "img" / classes[-1] / "broken.png").write_bytes(b"not a png")
        if embeddings is None:
            return str(tmp_path / "img")
        np.save(tmp_path / "emb.npy", embeddings)
        return str(tmp_path / "emb.npy")

    return write


_rng = np.random.default_rng(0)
_emb_nan = _rng.normal(size=(6, 3))
_emb_nan[4, 1] = np.nan
_x_test_nan = _rng.normal(size=(20, 8))
_x_test_nan[3, 2] = np.nan

CASES = {
    # the four of the issue: each was a traceback 12-16 s in
    "resnet18-on-mnist1d": Bad(("model=resnet18",), "model=resnet18 does not fit dataset=mnist1d: the model expects "
                               "another input than samples of shape (40,)"),
    "cnn1d-on-images": Bad(npz("model=cnn1d"), "the model expects another input than samples of shape (3, 8, 8) "
                           "(mat1 and mat2 shapes cannot be multiplied",
                           {"X_train": _rng.normal(size=(50, 3, 8, 8)), "X_test": _rng.normal(size=(20, 3, 8, 8))}),
    "negative-lr": Bad(("trainer.optimizer.lr=-1",),
                       "trainer.optimizer.lr=-1: expected a number >= 0 (torch: Invalid learning rate: -1)"),
    "negative-seed": Bad(("seed=-5",), "seed=-5: expected an integer >= 0"),
    # groups and values
    "no-such-strategy": Bad(("strategy=nosuch",), "strategy=nosuch: no such strategy"),
    "no-such-model": Bad(("model=nosuch",), "model=nosuch: no such model"),
    "no-such-dataset": Bad(("dataset=nosuch",), "dataset=nosuch: no such dataset"),
    "fraction-0": Bad(("strategy=random", "strategy.fraction=0"), "strategy.fraction=0: expected a number in (0, 1]"),
    "fraction-1.5": Bad(("strategy=random", "strategy.fraction=1.5"),
                        "strategy.fraction=1.5: expected a number in (0, 1]"),
    "negative-epochs": Bad(("trainer.epochs=-1",), "trainer.epochs=-1: expected a positive integer"),
    "batch-size-0": Bad(("trainer.batch_size=0",), "trainer.batch_size=0: expected a positive integer"),
    "epochs-and-steps": Bad(("trainer.steps=100",),
                            "trainer.epochs=150, trainer.steps=100: the budget is given 2 ways"),
    "string-for-int": Bad(("trainer.epochs=abc",), "Value 'abc' of type 'str' could not be converted to Integer"),
    "typo-key": Bad(("trainer.epoch=3",), "Could not override 'trainer.epoch'"),
    "label-noise-1.5": Bad(("corruption.label_noise=1.5",), "corruption.label_noise=1.5: expected a number in [0, 1)"),
    # corruptions with ground truth (harness/data/corrupt.py)
    "label-noise-kind": Bad(("corruption.label_noise_kind=asymmetric",),
                            "corruption.label_noise_kind=asymmetric: expected one of symmetric, pair"),
    "exact-duplicates-1.5": Bad(("corruption.exact_duplicates=1.5",),
                                "corruption.exact_duplicates=1.5: expected a fraction of the training rows in [0, 1]"),
    "near-duplicate-cosine-1": Bad(("corruption.near_duplicates=0.1", "corruption.near_duplicate_cosine=1"),
                                   "corruption.near_duplicate_cosine=1.0: expected a cosine similarity in (0, 1)"),
    "outlier-kind": Bad(("corruption.outliers=0.1", "corruption.outlier_kind=uniform"),
                        "corruption.outlier_kind=uniform: expected one of noise, shuffled"),
    "imbalance-rho-0.5": Bad(("corruption.imbalance_rho=0.5",),
                             "corruption.imbalance_rho=0.5: expected a ratio of largest to smallest class >= 1"),
    "near-duplicates-rows-in-file": Bad(("dataset=npy", "dataset.x_train=/data/x.npy", "dataset.y_train=/data/y.npy",
                                         "dataset.x_test=/data/xt.npy", "dataset.y_test=/data/yt.npy",
                                         "corruption.near_duplicates=0.1"),
                                        "corruption.near_duplicates=0.1: computes new feature rows, but "
                                        "dataset.in_memory=false keeps the features in their file"),
    "lr-not-a-number": Bad(("trainer.optimizer.lr=abc",), "trainer.optimizer.lr=abc: expected a number"),
    "betas-out-of-range": Bad(("+trainer.optimizer.betas=[0.9,1.5]",),
                              "trainer.optimizer.betas=[0.9, 1.5]: expected two numbers in [0, 1)"),
    "unknown-optimizer-arg": Bad(("+trainer.optimizer.lrr=0.1",),
                                 "trainer.optimizer: cannot build torch.optim.Adam (Adam.__init__() got an unexpected "
                                 "keyword argument 'lrr')"),
    "unknown-scheduler-arg": Bad(("+trainer.scheduler={_target_:harness.schedules.cosine,_partial_:true,warmup:0.1}",),
                                 "trainer.scheduler: cannot build harness.schedules.cosine"),
    "bad-device-name": Bad(("trainer.device=gpu",), "trainer.device=gpu: expected auto, cpu, cuda or cuda:N"),
    # no machine here has 100 GPUs: "no CUDA device" on a CPU machine, "this machine has N" on a GPU one
    "absent-device": Bad(("trainer.device=cuda:99",), "trainer.device=cuda:99: "),
    "too-few-classes-out": Bad(("model=mlp", "+model.num_classes=5"),
                               "model=mlp outputs 5 values per sample; dataset=mnist1d has 10 classes"),
    "negative-model-width": Bad(("model=resnet18", "dataset=digits", "model.width=-1"),
                                "model: cannot build harness.models.ResNet18 for samples of shape (64,)"),
    "probe-model-misfit": Bad(("strategy=el2n", "+probe.model={_target_:harness.models.ResNet18}"),
                              "probe.model=harness.models.ResNet18 does not fit dataset=mnist1d"),
    "cifar-not-there": Bad(("dataset=cifar10", "dataset.root=/nonexistent/cifar"),
                           "dataset.root=/nonexistent/cifar: CIFAR-10 not found"),
    "two-modes": Bad(("-m", "seed=0,1", "--cfg", "job"), "-m and --cfg: expected only one of"),
    # strategies
    "semdedup-eps": Bad(("strategy=semdedup", "strategy.eps=1.5"), "strategy.eps=1.5: expected a number in (0, 1)"),
    "pipeline-unknown-stage": Bad(("strategy=pipeline", "strategy.pipeline=[exact_dedup,nosuch]"),
                                  "strategy.pipeline[1]=nosuch: no such strategy"),
    "unknown-signal": Bad(("strategy=el2n", "strategy.signal=aum"),
                          "strategy=el2n needs signal aum, which no probe provides"),
    "dedup-cannot-cut": Bad(("strategy=exact_dedup", "strategy.fraction=0.5"),
                            "strategy.fraction=0.5: no stage of exact_dedup"),
    "pipeline-cannot-cut": Bad(("strategy=pipeline", "strategy.pipeline=[exact_dedup,{name:semdedup,eps:0.1}]"),
                               "strategy.fraction=0.5: no stage of pipeline"),
    "curriculum-pacing": Bad(("strategy=curriculum", "strategy.pacing=cubic"),
                             "strategy.pacing=cubic: expected one of linear"),
    "score-at-past-probe": Bad(("strategy=el2n", "probe.score_at=1.5"),
                               "probe.score_at=1.5: expected a fraction of the probe's training in [0, 1]"),
    "audit-threshold": Bad(("audit.contamination=true", "audit.threshold=1.5"),
                           "audit.threshold=1.5: expected a cosine in (0, 1]"),
    "probe-subset-0": Bad(("strategy=el2n", "probe.subset=0"),
                          "probe.subset=0.0: expected a fraction of the training set in (0, 1]"),
    # dynamic stages (strategies/dynamic.py) and budgets in samples
    "infobatch-prune-ratio-1.5": Bad(("strategy=infobatch", "strategy.prune_ratio=1.5"),
                                     "strategy.prune_ratio=1.5: expected a number in (0, 0.9]"),
    "infobatch-prune-ratio-0": Bad(("strategy=infobatch", "strategy.prune_ratio=0"),
                                   "strategy.prune_ratio=0: expected a number in (0, 0.9]"),
    "rs2-select-every-0": Bad(("strategy=rs2", "strategy.select_every=0"),
                              "strategy.select_every=0: expected an integer >= 1"),
    "pipeline-dynamic-first": Bad(("strategy=pipeline", "strategy.pipeline=[infobatch,el2n]"),
                                  "strategy.pipeline[0]=infobatch: a dynamic stage selects during training and must "
                                  "come last"),
    # gradient-matching stages (strategies/adaptive.py) and the validation split they select against
    "craig-select-every-0": Bad(("strategy=craig", "strategy.select_every=0"),
                                "strategy.select_every=0: expected an integer >= 1"),
    "gradmatch-lam-negative": Bad(("strategy=gradmatch", "strategy.lam=-0.5"),
                                  "strategy.lam=-0.5: expected a number >= 0"),
    "gradmatch-kappa-1": Bad(("strategy=gradmatch_pb", "strategy.kappa=1"),
                             "strategy.kappa=1: expected a number in [0, 1)"),
    "val-fraction-0.7": Bad(("dataset.val_fraction=0.7",),
                            "dataset.val_fraction=0.7: expected a number in (0, 0.5] or null"),
    "glister-without-validation": Bad(("strategy=glister",),
                                      "strategy=glister selects against a validation split; expected "
                                      "dataset.val_fraction in (0, 0.5]"),
    "samples-and-epochs": Bad(("trainer.samples=1000",),
                              "trainer.epochs=150, trainer.samples=1000: the budget is given 2 ways"),
    # sweeps: every job is checked before the first trains
    "sweep-bad-value": Bad(("-m", "strategy=random,nosuch"), "strategy=nosuch: no such strategy"),
    "sweep-model-misfit": Bad(("-m", "model=cnn1d,resnet18"), "model=resnet18 does not fit dataset=mnist1d"),
    "ray-launcher-value": Bad(("-m", "hydra/launcher=ray", "hydra.launcher.num_cpus=-1", "seed=0,1"),
                              "hydra.launcher.num_cpus=-1.0: expected a number >= 0"),
    "launcher-key-without-ray": Bad(("hydra.launcher.num_cpus=2",), "Could not override 'hydra.launcher.num_cpus'"),
    # files the preflight checks
    "npz-path-missing": Bad(("dataset=npz",), "dataset.path: required value missing"),
    "npz-file-not-found": Bad(("dataset=npz", "dataset.path=/nonexistent/data.npz"),
                              "dataset.path=/nonexistent/data.npz: file not found"),
    # files only reading them shows to be malformed: the run has started, and ends FAILED
    "npz-rows-differ": Bad(npz(), "X_train has 50 rows but y_train has 49", {"y_train": np.zeros(49, int)},
                           in_run=True),
    "npz-nan": Bad(npz(), "X_test has NaN", {"X_test": _x_test_nan}, in_run=True),
    "npz-missing-array": Bad(npz(), "missing arrays y_test", {}, in_run=True, drop=("y_test",)),
    "npz-not-a-zip": Bad(npz(), "not a readable .npz file", b"X_train,y_train\n1,2\n", in_run=True),
    "npz-negative-labels": Bad(npz(), "y_train must hold non-negative integer class labels",
                               {"y_train": np.full(50, -1)}, in_run=True),
    "npz-float-labels": Bad(npz(), "y_test must hold non-negative integer class labels",
                            {"y_test": _rng.normal(size=20)}, in_run=True),
    "npz-empty": Bad(npz(), "X_train is empty", {"X_train": np.zeros((0, 8)), "y_train": np.zeros(0, int)},
                     in_run=True),
    "npz-feature-shapes-differ": Bad(npz(), "X_train and X_test have different feature shapes",
                                     {"X_test": _rng.normal(size=(20, 5))}, in_run=True),
    # image folders (harness/data/images.py)
    "image-folder-not-found": Bad(("dataset=image_folder", "dataset.train_dir=/nonexistent/img",
                                   "dataset.test_fraction=0.2"),
                                  "dataset.train_dir=/nonexistent/img: folder not found"),
    "image-folder-one-class": Bad(images(), "1 class folder (a); expected at least 2",
                                  image_folder_and(classes=("a",))),
    "image-folder-no-test-set": Bad(("dataset=image_folder", "dataset.train_dir=/data/img"),
                                    "dataset.test_dir, dataset.test_fraction: neither set; expected exactly one"),
    "image-folder-unreadable": Bad(images(), "1 unreadable image: b/broken.png", image_folder_and(corrupt=True),
                                   in_run=True),
    # embeddings files for selection (harness/signals/embeddings_file.py)
    "embeddings-wrong-rows": Bad(images("strategy=kcenter", "strategy.embedding=file", "embeddings.path={path}"),
                                 "5 rows, but the training set has 6", image_folder_and(_rng.normal(size=(5, 3)))),
    "embeddings-path-null": Bad(("strategy=semdedup", "strategy.embedding=file"),
                                "embeddings.path is null: strategy=semdedup reads embedding=file"),
    "embeddings-not-found": Bad(("strategy=kcenter", "strategy.embedding=file", "embeddings.path=/nonexistent/e.npy"),
                                "embeddings.path=/nonexistent/e.npy: file not found"),
    "embeddings-not-2d": Bad(images("strategy=herding", "strategy.embedding=file", "embeddings.path={path}"),
                             "expected a 2-D float array", image_folder_and(np.zeros(6, np.float32))),
    "embeddings-nan": Bad(images("strategy=kcenter", "strategy.embedding=file", "embeddings.path={path}"),
                          "1 row with NaN or infinite values (first: row 4)", image_folder_and(_emb_nan), in_run=True),
}

# A subprocess costs 0.3-9 s here (2 cores): 0.3 s when the error comes before torch is imported, 2-6 s when the
# preflight imports torch or runs the model's forward, 7-9 s when the run starts (MLflow) before the file fails.
# The whole table takes about 250 s; the quick loop (`-m "not slow"`) keeps the four and at least one case
# of each kind (a model misfit, a probe setting, a dynamic stage, a validation split, a sweep, a file read in the run,
# an embeddings file), about 80 s, and CI runs all of them.
SLOW = {"audit-threshold", "probe-subset-0", "fraction-0", "betas-out-of-range", "unknown-optimizer-arg",
        "unknown-scheduler-arg", "too-few-classes-out",
        "negative-model-width", "probe-model-misfit", "cifar-not-there", "semdedup-eps", "pipeline-unknown-stage",
        "dedup-cannot-cut", "pipeline-cannot-cut", "curriculum-pacing", "sweep-bad-value", "npz-missing-array",
        "npz-not-a-zip", "npz-negative-labels", "npz-float-labels", "npz-empty", "npz-feature-shapes-differ",
        "infobatch-prune-ratio-0", "rs2-select-every-0", "pipeline-dynamic-first", "npz-rows-differ",
        "samples-and-epochs", "craig-select-every-0", "gradmatch-kappa-1", "image-folder-not-found",
        "image-folder-one-class", "image-folder-no-test-set", "image-folder-unreadable", "embeddings-path-null",
        "embeddings-not-found", "embeddings-not-2d", "embeddings-nan", "gradmatch-lam-negative",
        "glister-without-validation", "sweep-model-misfit", "cnn1d-on-images", "unknown-signal",
        "exact-duplicates-1.5", "near-duplicate-cosine-1", "outlier-kind", "imbalance-rho-0.5",
        "near-duplicates-rows-in-file"}
PARAMS = [pytest.param(case, id=name, marks=[pytest.mark.slow] if name in SLOW else []) for name, case in CASES.items()]


def test_the_table_is_at_least_20_cases_and_20_quick_ones():
    assert not SLOW - set(CASES)
    assert len(CASES) >= 20 and len(set(CASES) - SLOW) >= 20


def write_file(case: Bad, tmp_path: Path, write_npz) -> str:
    if callable(case.file):
        return case.file(tmp_path)
    if isinstance(case.file, bytes):
        path = tmp_path / "bad.npz"
        path.write_bytes(case.file)
        return str(path)
    path = write_npz("bad.npz", **(case.file or {}))
    if case.drop:  # rewrite without the dropped arrays
        with np.load(path) as z:
            kept = {k: z[k] for k in z.files if k not in case.drop}
        np.savez(path, **kept)
    return path


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input_is_one_line_and_exit_code_2(case, store, tmp_path, write_npz):
    path = write_file(case, tmp_path, write_npz) if case.file is not None else None
    args = [a.replace("{path}", path or "").replace("{tmp}", str(tmp_path)) for a in case.args]
    res = run_cli(*args, f"tracking.uri={store}", f"cache_dir={tmp_path / 'cache'}",
                  f"hydra.run.dir={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'multirun'}")
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("winnow: error: ") and case.message in lines[0], lines[0]
    if path is not None:
        assert path in lines[0]  # the line names the file
    if case.in_run:
        run = runs_of(store).iloc[0]
        assert run["status"] == "FAILED" and case.message in run["tags.error"]
    else:  # stopped before anything ran: no MLflow store was even opened
        assert not (tmp_path / "mlflow.db").exists()

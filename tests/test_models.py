import torch

from harness.models import CNN1D, MLP, Logistic, ResNet18


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_cnn1d_matches_the_papers_5210_parameters():
    assert n_params(CNN1D((40,), 10)) == 5210


def test_reference_model_sizes_and_outputs():
    x = torch.randn(3, 40)
    assert n_params(Logistic((40,), 10)) == 410
    assert n_params(MLP((40,), 10)) == 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
    for m in (Logistic((40,), 10), MLP((40,), 10), CNN1D((40,), 10)):
        assert m(x).shape == (3, 10)


def test_resnet18_cifar_variant_shape():
    m = ResNet18((3, 32, 32), 100, width=8)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)

"grad_cam against pytorch-grad-cam's GradCAM on a torchvision ResNet (optional: pip install grad-cam)."
import numpy as np
import pytest
import torch
import torchvision

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam is not installed (pip install grad-cam)")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget   # noqa: E402

from ignore_attn.analysis import grad_cam   # noqa: E402


def test_same_maps_as_pytorch_grad_cam():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 64, 64)
    classes = [1, 4, 7]
    ours = grad_cam(model, x, model.layer4, class_idx=torch.tensor(classes)).numpy()
    with pytorch_grad_cam.GradCAM(model=model, target_layers=[model.layer4]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    # both rectify the class-weighted activations; they scale min..max to 0..1, we 0..max: compare min-max scaled maps
    scale = lambda m: (m - m.min()) / max(m.max() - m.min(), 1e-12)
    for a, b in zip(ours, theirs):
        assert np.corrcoef(scale(a).ravel(), b.ravel())[0, 1] > 0.98
        assert np.abs(scale(a) - b).mean() < 0.05

"""The refined-CAM training term (Fujimori et al., ``Profile.refined_loss``): hand cases and one
training step through the package's loop."""
import pytest
import torch
import torch.nn.functional as F

from transcam_nb.config import get_profile
from transcam_nb.models import ConformerOutput
from transcam_nb.train import refined_cam_loss

torch.set_num_threads(1)


def _out(cam, attn_sum):
    B, C = cam.shape[:2]
    z = torch.zeros(B, C)
    return ConformerOutput(conv_logits=z, trans_logits=z, cam=cam, attn_sum=attn_sum)


def test_self_attention_gives_the_cam_loss():
    # every token attends to itself only, in each of 3 blocks: A* = I, the refined CAM is the CAM
    g = torch.Generator().manual_seed(0)
    cam = torch.randn(2, 4, 3, 3, generator=g)
    N = 1 + 9
    attn = 3 * torch.eye(N).expand(2, N, N)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    want = F.multilabel_soft_margin_loss(cam.mean(dim=(2, 3))[:, 1:], labels)
    assert torch.allclose(refined_cam_loss(_out(cam, attn), labels, 3), want, atol=1e-6)


def test_attention_spreads_the_cam_and_gets_a_gradient():
    g = torch.Generator().manual_seed(1)
    cam = torch.randn(1, 3, 2, 2, generator=g)
    logits = torch.randn(1, 5, 5, generator=g, requires_grad=True)
    attn = torch.softmax(logits, -1) * 2  # two blocks summed
    labels = torch.tensor([[1.0, 0.0]])
    a = attn[:, 1:, 1:] / 2  # A*: the mean over blocks, class token dropped
    refined = (cam.flatten(2) @ a.mT).reshape(cam.shape)
    want = F.multilabel_soft_margin_loss(refined.mean(dim=(2, 3))[:, 1:], labels)
    got = refined_cam_loss(_out(cam, attn), labels, 2)
    assert torch.allclose(got, want, atol=1e-6)
    got.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_noise_is_relative_and_seeded():
    cam = torch.randn(2, 3, 4, 4)
    attn = torch.softmax(torch.randn(2, 17, 17), -1)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    clean = refined_cam_loss(_out(cam, attn), labels, 1)
    torch.manual_seed(0)
    a = refined_cam_loss(_out(cam, attn), labels, 1, noise=1.0)
    torch.manual_seed(0)
    b = refined_cam_loss(_out(cam, attn), labels, 1, noise=1.0)
    assert a == b and a != clean
    # scaling the CAM scales the noise with it: the refined logits keep their signal-to-noise ratio
    torch.manual_seed(0)
    c = refined_cam_loss(_out(1e-3 * cam, attn), labels, 1, noise=1.0)
    assert abs(c.item() - refined_cam_loss(_out(1e-3 * cam, attn), labels, 1).item()) < 1e-3


def test_needs_cam_and_attention():
    out = ConformerOutput(conv_logits=torch.zeros(1, 3), trans_logits=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="attn_blocks"):
        refined_cam_loss(out, torch.ones(1, 2), 12)


def test_off_keeps_the_profile_fingerprint():
    p = get_profile("tiny")
    assert "refined_loss" not in p.fingerprint_dict()
    on = p.replace(refined_loss=1.0, refined_noise=0.5)
    assert on.fingerprint_dict()["refined_loss"] == 1.0 and on.fingerprint() != p.fingerprint()

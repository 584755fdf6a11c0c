"""The Conformer / TransCAM network: layout, equivalence with the authors' code, attention paths,
checkpoint loading and its errors."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import REPO, golden_path, shared_path
from transcam_nb.models import CheckpointError, create_model, count_parameters, list_models, load_checkpoint

GOLDEN_CFG = dict(num_classes=21, embed_dim=64, num_heads=4, channel_ratio=1, drop_path_rate=0.0)

MANIFEST_NAMES = {
    "conformer_tiny_patch16": ("Conformer_tiny_patch16",),
    "conformer_small_patch16": ("Conformer_small_patch16",),
    "conformer_small_patch32": ("Conformer_small_patch32",),
    "conformer_base_patch16": ("Conformer_base_patch16",),
    "transcam_tiny": ("transcam_conformer_CAM_num_classes_21", "Net_ti"),
    "transcam_small": ("transcam_conformer_CAM_num_classes_21", "Net_sm"),
    "transcam_base": ("transcam_conformer_CAM_num_classes_21", "Net_bs"),
}


def tiny(**kw):
    cfg = dict(num_classes=5, embed_dim=32, num_heads=2, channel_ratio=0.25, drop_path_rate=0.0)
    cfg.update(kw)
    return create_model("transcam_tiny", **cfg).eval()


# --------------------------------------------------------------------------- layout
@pytest.mark.parametrize("name", sorted(MANIFEST_NAMES))
def test_state_dict_matches_official_manifest(name):
    manifest = json.loads(shared_path("reference", "conformer_state_dict.json").read_text())
    ref = manifest
    for part in MANIFEST_NAMES[name]:
        ref = ref[part]
    with torch.device("meta"):
        model = create_model(name)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(ref["state_dict"]), "same keys in the same order"
    bad = {k: (ours[k], ref["state_dict"][k]) for k in ours if ours[k] != ref["state_dict"][k]}
    assert not bad
    assert count_parameters(model) == ref["num_params"]


def test_parameter_counts_table7():
    # the paper's Table 7 / official README: 23.5M / 37.7M / 83.3M at 1000 classes
    expected = {"conformer_tiny_patch16": 23_524_704, "conformer_small_patch16": 37_673_424,
                "conformer_base_patch16": 83_289_136}
    for name, n in expected.items():
        with torch.device("meta"):
            assert count_parameters(create_model(name)) == n


def test_timm_registry():
    import timm

    import transcam_nb  # noqa: F401

    for name in list_models():
        assert name in timm.list_models(name)
    m = timm.create_model("transcam_tiny", num_classes=7, embed_dim=32, num_heads=2, channel_ratio=0.25)
    assert m.trans_cls_head.out_features == 7
    with pytest.raises(ValueError, match="no weights can be downloaded"):
        timm.create_model("transcam_small", pretrained=True)


def test_unknown_names_and_overrides():
    with pytest.raises(ValueError, match="unknown model"):
        create_model("transcam_huge")
    with pytest.raises(TypeError, match="embed_dims"):
        create_model("transcam_tiny", embed_dims=3)
    with pytest.raises(ValueError, match="patch_size"):
        create_model("transcam_tiny", patch_size=8)


# --------------------------------------------------------------------------- golden equality
def _golden_model(weights):
    sd = torch.load(golden_path("weights.pt"), weights_only=True)
    if weights == "cond":
        sd.update(torch.load(golden_path("weights_cond_overrides.pt"), weights_only=True))
    model = create_model("transcam_tiny", **GOLDEN_CFG).eval()
    load_checkpoint(model, sd)
    return model


def _rel(ours, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(ours.detach().double().numpy() - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("weights", ["spec", "cond"])
@pytest.mark.parametrize("which", ["random128", "photo128", "photo192"])
def test_golden_forward_equals_authors_code(weights, which):
    data = np.load(golden_path(f"golden_cond_{which}.npz" if weights == "cond" else f"golden_{which}.npz"))
    model = _golden_model(weights)
    x = torch.from_numpy(data["input"])
    with torch.no_grad():
        out = model(x, return_attn="attn_headmean" in data.files)
    tol = 1e-4  # golden README: max|ours-ref| <= 1e-4 * max|ref|
    assert _rel(out.conv_logits, data["conv_logits"]) <= tol
    assert _rel(out.trans_logits, data["trans_logits"]) <= tol
    assert _rel(out.cam, data["convcam"]) <= tol
    if "attn_headmean" in data.files:
        assert out.attn.shape == data["attn_headmean"].shape
        assert _rel(out.attn, data["attn_headmean"]) <= tol
    # the authors' 'transcam' output is A_pp @ CAM with A_pp = sum over blocks [1:, 1:]
    with torch.no_grad():
        s = model(x, attn_blocks=range(12)).attn_sum
    a = s[:, 1:, 1:]
    cam = out.cam.flatten(2)
    transcam = torch.einsum("bij,bcj->bci", a, cam).reshape(out.cam.shape)
    assert _rel(transcam, data["transcam"]) <= tol


# --------------------------------------------------------------------------- shapes & paths
@pytest.mark.parametrize("hw", [(64, 64), (48, 80), (96, 32)])
def test_non_square_inputs(hw):
    model = tiny()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        out = model(x, return_attn=True)
    h, w = hw[0] // 16, hw[1] // 16
    n = 1 + h * w
    assert out.conv_logits.shape == (2, 5) and out.trans_logits.shape == (2, 5)
    assert out.cam.shape == (2, 5, h, w)
    assert out.attn.shape == (12, 2, n, n)
    torch.testing.assert_close(out.attn.sum(-1), torch.ones(12, 2, n))
    # conv logits are the global average of the class map (CAM before GAP)
    torch.testing.assert_close(out.conv_logits, out.cam.mean(dim=(2, 3)))


def test_official_layout_shapes_and_classic_cam():
    model = create_model("conformer_tiny_patch16", num_classes=4, embed_dim=32, num_heads=2,
                         channel_ratio=0.25).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
    assert out.cam.shape == (1, 4, 2, 3)  # 1/32 in the official layout
    torch.testing.assert_close(out.conv_logits, out.cam.mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", [(50, 64), (64, 65), (7, 7)])
def test_bad_input_sizes_name_the_constraint(hw):
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        tiny()(torch.randn(1, 3, *hw))


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny()(torch.randn(3, 64, 64))


def test_sdpa_path_equals_explicit_path():
    torch.manual_seed(0)
    model = tiny()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        fast = model(x)
        slow = model(x, return_attn=True)
    assert fast.attn is None and fast.attn_sum is None
    # random-init eval BN lets activations grow large: compare relative to each output's scale
    for a, b in [(fast.conv_logits, slow.conv_logits), (fast.trans_logits, slow.trans_logits), (fast.cam, slow.cam)]:
        assert _rel(a, b.numpy()) < 1e-5


@pytest.mark.parametrize("blocks", [range(12), range(6), range(6, 12), [0, 11]])
def test_streaming_sum_equals_keep_all(blocks):
    model = tiny()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        keep = model(x, return_attn=True).attn
        stream = model(x, attn_blocks=blocks)
    assert stream.attn is None
    torch.testing.assert_close(stream.attn_sum, keep[list(blocks)].sum(0), atol=1e-6, rtol=1e-5)


def test_attn_blocks_out_of_range():
    with pytest.raises(ValueError, match="block indices in 0..11"):
        tiny()(torch.randn(1, 3, 32, 32), attn_blocks=[12])


def test_training_mode_backward_and_drop_path():
    model = create_model("transcam_tiny", num_classes=3, embed_dim=32, num_heads=2, channel_ratio=0.25,
                         drop_path_rate=0.1).train()
    out = model(torch.randn(2, 3, 32, 32))
    out.logits.sum().backward()
    assert model.cls_token.grad is not None and torch.isfinite(model.cls_token.grad).all()


def test_no_cuda_hardcoded():
    pkg = REPO / "transcam_nb"
    for p in pkg.rglob("*.py"):
        text = p.read_text()
        assert ".cuda()" not in text, p
        assert "../shared" not in text, p


# --------------------------------------------------------------------------- checkpoints
def test_official_imagenet_checkpoint_loads_into_transcam(tmp_path):
    """An ImageNet file (dict with 'model', 1000-class Linear heads) initialises the TransCAM
    network: every backbone tensor is taken, the heads are re-initialised."""
    kw = dict(embed_dim=32, num_heads=2, channel_ratio=0.25)
    official = create_model("conformer_tiny_patch16", **kw)
    path = tmp_path / "Conformer_tiny.pth"
    torch.save({"model": official.state_dict(), "epoch": 299}, path)
    model = create_model("transcam_tiny", num_classes=21, checkpoint=path, **kw)
    for k, v in official.state_dict().items():
        if "cls_head" not in k:
            torch.testing.assert_close(model.state_dict()[k], v)
    assert model.conv_cls_head.weight.shape == (21, 64, 3, 3)


def test_transcam_checkpoint_roundtrip_with_module_prefix(tmp_path):
    model = tiny()
    path = tmp_path / "transcam.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    other = tiny()
    report = load_checkpoint(other, path)
    assert report["dropped_heads"] == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).cam, other(x).cam)


def test_wrong_architecture_lists_keys(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(create_model("transcam_tiny", num_classes=5, embed_dim=64, num_heads=2, channel_ratio=0.25)
               .state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tiny(), path)
    msg = str(e.value)
    assert "wide.pth" in msg and "mis-shaped" in msg and "cls_token" in msg


def test_missing_and_unexpected_keys(tmp_path):
    sd = tiny().state_dict()
    sd.pop("trans_1.attn.qkv.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "x.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"(?s)missing key.*trans_1\.attn\.qkv\.weight.*unexpected key.*extra"):
        load_checkpoint(tiny(), path)


def test_truncated_and_garbage_files(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save(tiny().state_dict(), path)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(path.read_bytes()[: os.path.getsize(path) // 3])
    with pytest.raises(CheckpointError, match="trunc.pth.*truncated, corrupt or not a PyTorch"):
        load_checkpoint(tiny(), trunc)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint(tiny(), junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tiny(), tmp_path / "nope.pth")
    lst = tmp_path / "list.pth"
    torch.save([1, 2, 3], lst)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tiny(), lst)


def test_backbone_only_file_keeps_the_model_heads(tmp_path):
    """A file without any classifier head (e.g. heads deleted by hand) loads; heads keep their init."""
    model = tiny()
    sd = {k: v for k, v in model.state_dict().items() if "cls_head" not in k}
    other = tiny()
    head_before = other.conv_cls_head.weight.clone()
    report = load_checkpoint(other, sd)
    assert report["dropped_heads"] == []
    torch.testing.assert_close(other.conv_cls_head.weight, head_before)
    torch.testing.assert_close(other.cls_token, model.cls_token)

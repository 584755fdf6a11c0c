"""The paper smoke test: every chapter executes on the paper profile.

The book and nbval run the chapters on the tiny profile only, so the paper profile's code paths
(Conformer-S, VOC lists and labels, AffinityNet on ResNet-50, DeepLab on ResNet-101 with frozen
BatchNorm, the paper's CRF and test-time flip) would otherwise first run on a GPU user's machine.
Here every notebook runs with ``TRANSCAM_PROFILE=paper`` and ``TRANSCAM_SMOKE=1``
(:data:`transcam_nb.smoke.SMOKE_OVERRIDES`: 64 px crops, a few steps, random weights through
``from_scratch``) on a 4-image VOC devkit made from the shipped VOC sample, shrunk to 128 px so
that the CPU finishes in minutes. The numbers it produces mean nothing; the test asserts that
each chapter runs to the end and that the smoke run went through the paper profile.
"""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "voc2012_sample" / "VOCdevkit" / "VOC2012"
CHAPTERS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SIDE = 128  # the devkit's images: long side in pixels
TRAIN = ["2007_001763", "2011_000003", "2011_000025", "2011_003066"]  # all four: chapters show four
VAL = ["2011_000025", "2011_003066"]


def make_devkit(dest: Path, side: int = SIDE) -> Path:
    """A 4-image VOC 2012 devkit from the shipped sample, shrunk to ``side`` px (long side):
    JPEGImages, SegmentationClass, SegmentationClassAug (so ``train_aug`` is built from it, as
    from SBD's converted masks) and the train / val lists. Returns the ``VOC2012`` folder."""
    root = dest / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for iid in TRAIN:
        with Image.open(SAMPLE / "JPEGImages" / f"{iid}.jpg") as im:
            w, h = im.size
            size = (side, round(side * h / w)) if w >= h else (round(side * w / h), side)
            im.convert("RGB").resize(size, Image.BICUBIC).save(root / "JPEGImages" / f"{iid}.jpg", quality=90)
        with Image.open(SAMPLE / "SegmentationClass" / f"{iid}.png") as m:
            small = m.resize(size, Image.NEAREST)  # a palette image stays one: class indices kept
            small.save(root / "SegmentationClass" / f"{iid}.png")
            small.save(root / "SegmentationClassAug" / f"{iid}.png")
    lists = root / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (lists / "val.txt").write_text("\n".join(VAL) + "\n")
    return root


def test_devkit_is_a_voc_devkit(tmp_path):
    """The devkit reads as VOC: 20 classes, labels from the masks, train_aug from SegmentationClassAug."""
    from transcam_nb.data.voc import VOCDataset

    root = make_devkit(tmp_path)
    train = VOCDataset(root, "train", mode="infer")
    assert len(train) == 4 and train.num_classes == 20
    s = train[0]
    assert max(s.image.shape[:2]) == SIDE and s.mask.shape == s.image.shape[:2]
    assert s.label.sum() >= 1 and set(np.unique(s.mask)) <= set(range(21)) | {255}
    aug = VOCDataset(root, "train_aug", mode="cls")
    assert sorted(aug.ids) == sorted(set(TRAIN) - set(VAL))  # train_aug = train minus val


def test_glue_check_can_fail():
    """glue_problems finds a quoted key nobody glued and a number format given text."""
    md = nbformat.v4.new_markdown_cell("{glue:text}`a:.1f` and {glue:text}`b` and {glue:}`c`")
    code = nbformat.v4.new_code_cell("")
    prefix = "application/papermill.record/"
    code.outputs = [nbformat.v4.new_output("display_data", data={prefix + "text/plain": "'n/a'"},
                                           metadata={"scrapbook": {"name": "a", "mime_prefix": prefix}}),
                    nbformat.v4.new_output("display_data", data={prefix + "text/plain": "3.5"},
                                           metadata={"scrapbook": {"name": "b", "mime_prefix": prefix}})]
    nb = nbformat.v4.new_notebook(cells=[code, md])
    assert glue_problems(nb) == ["a: formatted as '.1f' but glued as 'n/a'", "c: quoted but not glued"]
    code.outputs[0]["data"][prefix + "text/plain"] = "nan"
    md.source = md.source.replace(" and {glue:}`c`", "")
    assert glue_problems(nb) == []


def test_smoke_is_paper_only(monkeypatch):
    """TRANSCAM_SMOKE changes the paper profile and never the tiny one (the book's numbers)."""
    from transcam_nb import workflow
    from transcam_nb.config import get_profile
    from transcam_nb.smoke import smoke_overrides
    from transcam_nb.pipeline import pipeline_config

    monkeypatch.setenv("TRANSCAM_SMOKE", "1")
    assert smoke_overrides("tiny", "classifier") == {} and smoke_overrides("tiny", "pipeline") == {}
    assert workflow.setup("tiny", verbose=False) == get_profile("tiny")
    paper = workflow.setup("paper", verbose=False)
    assert paper.crop_size == 64 and paper.model == "transcam_small" and workflow.FROM_SCRATCH["default"]
    assert pipeline_config("paper").from_scratch and pipeline_config("paper").seg_overrides["iters"] == 2
    monkeypatch.setenv("TRANSCAM_SMOKE", "0")
    assert workflow.setup("paper", verbose=False) == get_profile("paper") and not workflow.FROM_SCRATCH["default"]
    assert not pipeline_config("paper").from_scratch


@pytest.mark.parametrize("from_scratch", [True, False])
def test_pipeline_from_scratch_reaches_the_book_classifier(from_scratch, monkeypatch, tmp_path):
    """`pipeline --from-scratch` (PipelineConfig.from_scratch) with the default classifier="workflow"
    lets the classifier cache train the paper profile from random weights (it was dropped there)."""
    import transcam_nb.train as train
    from transcam_nb.config import get_profile
    from transcam_nb.pipeline import PipelineContext, pipeline_config
    from transcam_nb.pipeline import classifier as stage

    class Stop(Exception):
        pass

    seen = {}

    def fake_train(prof, run_dir, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(train, "train_classifier", fake_train)
    monkeypatch.setenv("TRANSCAM_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.delenv("TRANSCAM_SMOKE", raising=False)
    monkeypatch.delenv("TRANSCAM_CLASSIFIER", raising=False)
    prof = get_profile("paper", data_root=str(tmp_path))
    ctx = PipelineContext(prof, pipeline_config(prof, from_scratch=from_scratch), tmp_path / "run", progress=False)
    with pytest.raises(Stop):
        stage.run(ctx)
    assert seen["from_scratch"] is from_scratch


def test_tiny_pipeline_config_ignores_smoke(monkeypatch):
    from transcam_nb.pipeline import pipeline_config

    monkeypatch.delenv("TRANSCAM_SMOKE", raising=False)
    before = pipeline_config("tiny")
    monkeypatch.setenv("TRANSCAM_SMOKE", "1")
    assert pipeline_config("tiny") == before


@pytest.fixture(scope="module")
def smoke_kernel(tmp_path_factory):
    """One kernel for all the chapters, with the environment of a paper smoke run: the paper
    profile, TRANSCAM_SMOKE=1, the devkit, a fresh artifacts folder (the chapters share it, so
    the classifier is trained once). Each chapter starts with ``%reset -f`` (a chapter that
    forgot a name fails), but the package is imported once, not seven times: on a loaded 2-core
    machine a kernel start and ``import transcam_nb`` cost 15-25 s each."""
    from jupyter_client import KernelManager

    base = tmp_path_factory.mktemp("paper_smoke")
    root = make_devkit(base / "voc")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRANSCAM_CLASSIFIER", "TRANSCAM_INIT", "TRANSCAM_SBD_ROOT", "TRANSCAM_COCO_SAMPLE")}
    env.update(TRANSCAM_PROFILE="paper", TRANSCAM_SMOKE="1", TRANSCAM_VOC_ROOT=str(root),
               TRANSCAM_VOC_SAMPLE=str(root), TRANSCAM_ARTIFACTS=str(base / "artifacts"),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(REPO / "notebooks"))
    try:
        yield km, env, base
    finally:
        km.shutdown_kernel(now=True)


GLUE_REF = re.compile(r"\{glue(?::\w*)?\}`([^`]+)`|```\{glue(?::\w*)?\}\s+(\S+)")


def glue_problems(nb) -> list[str]:
    """What a book build of this executed chapter would stop on (warnings are errors): a key its
    text quotes that its code did not glue, or a number format (``key:.1f``) given a non-number."""
    glued = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            book = out.get("metadata", {}).get("scrapbook", {})
            if book.get("name"):  # myst_nb's glue: data under "<mime_prefix>text/plain"
                data = out.get("data", {})
                glued[book["name"]] = str(data.get(book.get("mime_prefix", "") + "text/plain", ""))
    out = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for m in GLUE_REF.finditer(cell.source):
            key, _, spec = (m.group(1) or m.group(2)).partition(":")
            if key not in glued:
                out.append(f"{key}: quoted but not glued")
            elif spec and spec[-1] in "fged%":
                try:
                    float(glued[key])
                except ValueError:
                    out.append(f"{key}: formatted as {spec!r} but glued as {glued[key]}")
    return out


def _outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out.get("text", ""))
            elif "data" in out:
                text.append(str(out["data"].get("text/plain", "")))
    return "\n".join(text)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs_on_the_paper_profile(chapter, smoke_kernel):
    km, env, base = smoke_kernel
    if chapter.stem.startswith("06"):  # the pipeline's CRF stage, as test_pipeline
        pytest.importorskip("pydensecrf.densecrf", reason="the pipeline's CRF needs pydensecrf2 (pip install .[crf])")
    nb = nbformat.read(chapter, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f\nimport matplotlib.pyplot\nmatplotlib.pyplot.close('all')"))
    client = nbclient.NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(chapter.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    text = _outputs(nb)
    assert "profile : name='paper', model='transcam_small'" in text
    assert "smoke run" in text
    assert glue_problems(nb) == []
    if chapter.stem.startswith("03"):  # the classifier was trained: on the paper profile, from scratch
        run = next((base / "artifacts").glob("classifier-paper-scratch-*"))
        spec = json.loads((run / "spec.json").read_text())
        assert spec["profile"]["model"] == "transcam_small" and spec["profile"]["crop_size"] == 64
        assert spec["data"]["data_root"] == env["TRANSCAM_VOC_ROOT"] and spec["init"] is None

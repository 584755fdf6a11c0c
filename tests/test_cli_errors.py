"""Bad input on the command line: every stage answers with one line naming the problem and exit
status 2 (no traceback); a run that fails while checking its inputs leaves no state behind;
`cams --on-error`; every flag a message names exists; the paper profile's path variables."""
import ast
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from transcam_nb import cli

REPO = Path(__file__).resolve().parents[1]
VOC_SAMPLE = REPO / "tests" / "data" / "voc2012_sample" / "VOCdevkit" / "VOC2012"
TINY = ["--model", "transcam_tiny", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2",
        "--model-arg", "channel_ratio=0.25"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A copy of the VOC sample (4 photographs, split "sample"), a tiny random checkpoint that
    fits it, one that is not a checkpoint, and one of another network."""
    from transcam_nb.models import create_model

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("cli_errors")
    root = d / "VOC2012"
    shutil.copytree(VOC_SAMPLE, root)
    torch.manual_seed(0)
    good = create_model("transcam_tiny", num_classes=21, embed_dim=32, num_heads=2, channel_ratio=0.25,
                        drop_path_rate=0.0)
    torch.save(good.state_dict(), d / "good.pt")
    (d / "corrupt.pt").write_bytes(b"this is not a checkpoint")
    other = create_model("transcam_tiny", num_classes=21, embed_dim=64, num_heads=2, channel_ratio=0.25)
    torch.save(other.state_dict(), d / "other.pt")
    return {"dir": d, "root": root, "good": d / "good.pt", "corrupt": d / "corrupt.pt", "other": d / "other.pt",
            **_bad_evaluate_inputs(d, root)}


def _bad_evaluate_inputs(d: Path, root: Path) -> dict:
    """Prediction folders and VOC roots that `evaluate` (and `cams`) must refuse in one line."""
    import numpy as np
    from PIL import Image

    ids = (root / "ImageSets" / "Segmentation" / "sample.txt").read_text().split()
    sizes = {}
    for i in ids:
        with Image.open(root / "JPEGImages" / f"{i}.jpg") as im:
            sizes[i] = im.size[::-1]
    out = {}

    def folder(name, write):
        p = d / name
        p.mkdir()
        for i in ids:
            write(p, i)
        out[name] = p

    folder("npz_corrupt", lambda p, i: (p / f"{i}.npz").write_bytes(b"not an archive"))
    folder("npz_other", lambda p, i: np.savez(p / f"{i}.npz", foo=np.zeros(3)))
    folder("npy_authors", lambda p, i: np.save(p / f"{i}.npy", {0: np.zeros(sizes[i])}, allow_pickle=True))
    folder("png_corrupt", lambda p, i: (p / f"{i}.png").write_bytes(b"not a PNG"))
    folder("png_small", lambda p, i: Image.fromarray(np.zeros((5, 5), np.uint8)).save(p / f"{i}.png"))
    folder("png_good", lambda p, i: Image.fromarray(np.zeros(sizes[i], np.uint8)).save(p / f"{i}.png"))
    for name, change in [
        ("root_mask_corrupt", lambda r: (r / "SegmentationClass" / f"{ids[0]}.png").write_bytes(b"not a PNG")),
        ("root_mask_values", lambda r: Image.fromarray(np.full(sizes[ids[0]], 40, np.uint8)).save(
            r / "SegmentationClass" / f"{ids[0]}.png")),
        ("root_no_classes", lambda r: (r / "classes.txt").write_text("# no names\n")),
    ]:
        r = d / name
        shutil.copytree(root, r)
        change(r)
        out[name] = r
    return out


def _cams(f, out, ckpt, *extra):
    return ["cams", "--checkpoint", str(ckpt), *TINY, "--data-root", str(f["root"]), "--split", "sample",
            "--out", str(out), "--scales", "32", "--no-flip", "--threads", "1", "--no-progress", *extra]


def _fails_with_one_line(argv, capsys, *words, only=True):
    """Run ``main(argv)``: exit status 2, one error line naming ``words``, no traceback; with
    ``only``, nothing else on stderr (the error was found before any work started)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if not only:
        lines = [line for line in lines if ": error: " in line]
    assert e.value.code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"python -m transcam_nb {argv[0]}: error: "), lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _ev(pred: str, root: str = "root") -> str:
    """An `evaluate` case line: predictions in files[pred], the VOC root files[root]."""
    return f"evaluate --pred-dir {{{pred}}} --data-root {{{root}}} --split sample --no-progress"


# one typical bad input per stage: (argv with {placeholders}, words the line must hold)
BAD_INPUT = [
    ("cams-missing-checkpoint", "cams --checkpoint {dir}/nope.pt", ["--checkpoint", "nope.pt", "does not exist"]),
    ("cams-corrupt-checkpoint", "cams --checkpoint {corrupt}", ["--checkpoint", "corrupt.pt", "could not read"]),
    ("cams-other-network", "cams --checkpoint {other}", ["--checkpoint", "other.pt", "does not fit"]),
    ("cams-bad-split", "cams --checkpoint {good} --split nosuch", ["nosuch.txt", "does not exist"]),
    ("cams-bad-shard", "cams --checkpoint {good} --shard 4/4", ["--shard"]),
    ("cams-bad-blocks", "cams --checkpoint {good} --blocks zz", ["--blocks"]),
    ("cams-bad-set", "cams --checkpoint {good} --set bg_threshold=high", ["--set bg_threshold", "expected float"]),
    ("evaluate-bad-root", "evaluate --pred-dir {dir} --data-root {dir}/noroot --split val", ["noroot"]),
    ("train-missing-init", "train --out {out} --init {dir}/nope.pth", ["nope.pth", "--init"]),
    ("train-paper-without-init", "train --out {out} --profile paper --data-root {root}", ["--init", "--from-scratch"]),
    ("pretrain-bad-set", "pretrain --out {out} --set nope=1", ["--set nope", "not a pretrain config field"]),
    ("pipeline-missing-checkpoint", "pipeline --out {out} --checkpoint {dir}/nope.pt", ["nope.pt", "--checkpoint"]),
    ("pipeline-corrupt-checkpoint", "pipeline --out {out} --checkpoint {corrupt}", ["corrupt.pt", "could not read"]),
    ("pipeline-paper-without-init", "pipeline --out {out} --profile paper --data-root {root}", ["--init"]),
    ("pipeline-bad-stage", "pipeline --out {out} --stages cams,nope", ["nope"]),
    ("crf-before-cams", "crf --out {out}", ["'cams' is not complete"]),
    ("affinity-before-crf", "affinity --out {out}", ["'crf' is not complete"]),
    ("randomwalk-before-affinity", "randomwalk --out {out}", ["'affinity' is not complete"]),
    ("segment-before-randomwalk", "segment --out {out}", ["'randomwalk' is not complete"]),
    ("diagnostics-missing-checkpoint", "diagnostics --checkpoint {dir}/nope.pt --data-root {root}",
     ["--checkpoint", "nope.pt"]),
    # evaluate: the files it reads (predictions, masks, class names) are data; each bad one is named
    ("evaluate-corrupt-npz", _ev("npz_corrupt"), ["npz_corrupt", ".npz", "cannot read CAM file"]),
    ("evaluate-npz-not-cams", _ev("npz_other"), ["npz_other", "not a transcam_nb CAM file"]),
    ("evaluate-npy-without-allow-pickle", _ev("npy_authors"), ["npy_authors", "--allow-pickle"]),
    ("evaluate-corrupt-png", _ev("png_corrupt"), ["png_corrupt", "cannot decode label PNG"]),
    ("evaluate-png-wrong-size", _ev("png_small"), ["png_small", "(5, 5) but the mask is"]),
    ("evaluate-corrupt-mask", _ev("png_good", "root_mask_corrupt"), ["root_mask_corrupt", "cannot decode mask"]),
    ("evaluate-mask-values", _ev("png_good", "root_mask_values"), ["root_mask_values", "values [40]"]),
    ("evaluate-no-class-names", _ev("png_good", "root_no_classes"), ["classes.txt", "lists no class names"]),
    ("cams-no-class-names", "cams --checkpoint {good} --data-root {root_no_classes}", ["classes.txt"]),
]


@pytest.mark.parametrize("name, line, words", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_every_stage_answers_bad_input_with_one_line(name, line, words, files, tmp_path, capsys, monkeypatch):
    for var in ("TRANSCAM_VOC_ROOT", "TRANSCAM_SBD_ROOT", "TRANSCAM_INIT", "TRANSCAM_PROFILE", "TRANSCAM_CLASSIFIER"):
        monkeypatch.delenv(var, raising=False)
    subst = {k: str(v) for k, v in files.items()} | {"out": str(tmp_path / "out")}
    argv = [a.format(**subst) for a in line.split()]
    if argv[0] == "cams":  # the case's options come last: they win over the defaults
        argv = _cams(files, tmp_path / "out", files["good"]) + argv[1:]
    _fails_with_one_line(argv, capsys, *words)
    # nothing is left behind that a corrected run would trip over
    out = tmp_path / "out"
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []
    assert not [p for p in left if p.endswith("config.json")], left


def test_a_failed_check_leaves_no_state_behind(files, tmp_path, capsys):
    """A wrong checkpoint, then the right one into the same folder: the second run is not refused."""
    out = tmp_path / "cams_out"
    _fails_with_one_line(_cams(files, out, files["corrupt"], "--limit", "1"), capsys, "corrupt.pt")
    assert not (out / "cams" / "config.json").exists()
    _fails_with_one_line(_cams(files, out, files["other"], "--limit", "1"), capsys, "other.pt")
    assert not (out / "cams" / "config.json").exists()
    assert cli.main(_cams(files, out, files["good"], "--limit", "1")) == 0
    assert json.loads((out / "cams" / "config.json").read_text())["spec"]["checkpoint"] == str(files["good"].resolve())
    assert len(list((out / "cams" / "transcam").glob("*.npz"))) == 1


def test_a_failed_pipeline_stage_leaves_no_config(tmp_path, monkeypatch):
    """The pipeline's stages: one that fails before writing anything removes its config.json."""
    from transcam_nb.config import get_profile
    from transcam_nb.pipeline import PipelineContext, pipeline_config, run_stage
    from transcam_nb.pipeline import runner

    prof = get_profile("tiny")
    ctx = PipelineContext(prof, pipeline_config(prof), tmp_path)

    def failing(c):
        c.begin("crf", {"x": 1})
        raise FileNotFoundError("an input is missing")

    def writing(c):
        c.begin("crf", {"x": 1})
        (c.stage_dir("crf") / "la").mkdir()
        (c.stage_dir("crf") / "la" / "a.png").write_bytes(b"x")
        raise FileNotFoundError("failed after writing")

    monkeypatch.setitem(runner.STAGE_FUNCTIONS, "crf", failing)
    with pytest.raises(FileNotFoundError):
        run_stage(ctx, "crf")
    assert not (tmp_path / "crf").exists()
    monkeypatch.setitem(runner.STAGE_FUNCTIONS, "crf", writing)
    with pytest.raises(FileNotFoundError):
        run_stage(ctx, "crf")
    assert (tmp_path / "crf" / "config.json").is_file()  # work was done: kept, so a rerun resumes it


def _corrupt_one(files, tmp_path):
    root = tmp_path / "VOC2012"
    shutil.copytree(files["root"], root)
    ids = (root / "ImageSets" / "Segmentation" / "sample.txt").read_text().split()
    bad = root / "JPEGImages" / f"{ids[1]}.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated: PIL cannot decode it
    return root, ids, bad


def test_cams_aborts_on_a_corrupt_image_naming_it(files, tmp_path, capsys):
    root, ids, bad = _corrupt_one(files, tmp_path)
    argv = _cams(files | {"root": root}, tmp_path / "out", files["good"], "--limit", "2")
    _fails_with_one_line(argv, capsys, bad.name, "--on-error skip", only=False)
    assert not (tmp_path / "out" / "cams" / "transcam" / f"{ids[1]}.npz").exists()


def test_cams_skips_a_corrupt_image_and_reports_it(files, tmp_path):
    root, ids, bad = _corrupt_one(files, tmp_path)
    out = tmp_path / "out"
    assert cli.main(_cams(files | {"root": root}, out, files["good"], "--limit", "3", "--on-error", "skip")) == 0
    report = json.loads((out / "cams" / "report.json").read_text())
    assert [s["id"] for s in report["skipped"]] == [ids[1]]
    assert report["skipped"][0]["file"].endswith(bad.name)
    assert report["computed"] == 2 and report["images"] == 3
    done = sorted(p.stem for p in (out / "cams" / "transcam").glob("*.npz"))
    assert done == sorted([ids[0], ids[2]])


# ------------------------------------------------------------------------ users' own folders (data.folder)
BAD_LABEL_FILES = [  # (name, content, words): each must be an InputError naming the file, on one line
    ("labels.json", "{", ["is not valid JSON"]),
    ("labels.json", "[1, 2]", ["must hold a JSON object"]),
    ("labels.json", '{"a.jpg": 3}', ["labels of 'a.jpg'", "list of class names"]),
    ("labels.json", '{"a.jpg": [0, 1]}', ["uses class indices", "class_names="]),
    ("labels.json", '{"a.jpg": []}', ["names no classes"]),
    ("labels.xml", "<x/>", ["must be .csv or .json"]),
    ("labels.csv", "", ["is empty"]),
    ("labels.csv", "image\na.jpg\n", ["no 'labels' column"]),
    ("labels.csv", "image,cat,dog\na.jpg,1,maybe\n", ["line 2", "'dog'", "expected 0 or 1"]),
    ("labels.csv", "image,labels\na.jpg,cat unicorn\n", ["unknown class name 'unicorn'"]),
]


@pytest.mark.parametrize("name, content, words", BAD_LABEL_FILES, ids=[f"{c[0]}:{c[1][:12]}" for c in BAD_LABEL_FILES])
def test_a_bad_label_file_is_one_input_error_naming_it(name, content, words, tmp_path):
    from transcam_nb.data.folder import read_label_file
    from transcam_nb.errors import InputError

    path = tmp_path / name
    path.write_text(content)
    names = ("cat", "dog") if "unicorn" in content else None
    with pytest.raises(InputError) as e:
        read_label_file(path, names)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_folder_dataset_arguments_are_input_errors(tmp_path):
    """Bad arguments and folder contents of FolderDataset: InputError naming the argument or file."""
    import numpy as np
    from PIL import Image

    from transcam_nb.data.folder import FolderDataset
    from transcam_nb.errors import InputError

    img = tmp_path / "images"
    (img / "sub").mkdir(parents=True)
    for rel in ("a.jpg", "sub/a.png"):  # two files with the same stem
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img / rel)
    labels = tmp_path / "labels.json"
    labels.write_text('{"a.jpg": ["cat"], "sub/a.png": ["cat"]}')
    cases = [
        (dict(mode="nope"), "mode must be one of"),
        (dict(label_source="xml"), "label_source must be"),
        (dict(mode="seg"), "mask_dir="),
        (dict(), "share the id 'a'"),
    ]
    for kw, words in cases:
        with pytest.raises(InputError, match=re.escape(words)):
            FolderDataset(img, labels_file=labels, **kw)
    with pytest.raises(InputError, match="labels_file is required"):
        FolderDataset(img)


# ------------------------------------------------------------------------ flags named in messages
def _strings(path: Path):
    """Every string constant of a module: messages, help texts, docstrings."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")
#: other programs' flags the texts mention (torchrun, pip, ruff)
NOT_OURS = {"--nproc_per_node", "--no-deps", "--no-build-isolation", "--fix"}
USER_DOCS = ("README.md", "book/how_to_run.md")


def _defined_flags() -> set:
    """The flags of every command, and of the repository's scripts (``scripts/*.py``, e.g. the
    regenerate command of a shipped classifier that the package names in its messages)."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "stage").choices
    flags = {o for p in sub.values() for a in p._actions for o in a.option_strings}
    for script in (REPO / "scripts").glob("*.py"):
        flags |= set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", script.read_text()))
    return flags


def _unknown_flags(texts, defined) -> dict:
    named: dict = {}
    for where, text in texts:
        for flag in FLAG.findall(text):
            named.setdefault(flag, set()).add(where)
    return {f: sorted(w) for f, w in named.items() if f not in defined and f not in NOT_OURS}, named


def test_every_flag_the_package_and_its_docs_name_exists():
    """Error messages, help texts and the user docs name only flags that some command defines."""
    texts = [(p.relative_to(REPO).as_posix(), t) for p in (REPO / "transcam_nb").rglob("*.py") for t in _strings(p)]
    texts += [(d, (REPO / d).read_text()) for d in USER_DOCS]
    unknown, named = _unknown_flags(texts, _defined_flags())
    assert {"--from-scratch", "--init", "--data-root", "--on-error"} <= set(named)  # the collector finds them
    assert not unknown, f"these name flags no command defines: {unknown}"


def test_the_flag_check_can_fail(tmp_path):
    p = tmp_path / "m.py"
    p.write_text('def f():\n    raise ValueError("give the folder (--voc-dir X), see --data-root")\n')
    unknown, _ = _unknown_flags([("m.py", t) for t in _strings(p)], _defined_flags())
    assert unknown == {"--voc-dir": ["m.py"]}


# ------------------------------------------------------------------------ environment variables
def test_paper_path_variables_reach_the_commands(monkeypatch, tmp_path):
    from transcam_nb.cli.common import profile_from_args

    monkeypatch.setenv("TRANSCAM_VOC_ROOT", "/data/voc")
    monkeypatch.setenv("TRANSCAM_SBD_ROOT", "/data/sbd")
    monkeypatch.setenv("TRANSCAM_INIT", "/w/conformer.pth")
    parser = cli.build_parser()
    args = parser.parse_args(["pipeline", "--out", str(tmp_path), "--profile", "paper"])
    prof = profile_from_args(args, init_checkpoint=args.init, sbd_root=args.sbd_root)
    assert (prof.data_root, prof.sbd_root, prof.init_checkpoint) == ("/data/voc", "/data/sbd", "/w/conformer.pth")
    args = parser.parse_args(["pipeline", "--out", str(tmp_path), "--profile", "paper", "--init", "/x.pth",
                              "--sbd-root", "/s", "--data-root", "/v"])
    prof = profile_from_args(args, init_checkpoint=args.init, sbd_root=args.sbd_root)
    assert (prof.data_root, prof.sbd_root, prof.init_checkpoint) == ("/v", "/s", "/x.pth")  # flags win
    tiny = profile_from_args(parser.parse_args(["pipeline", "--out", str(tmp_path), "--profile", "tiny"]))
    assert tiny.sbd_root is None and tiny.data_root is None  # the tiny profile ignores them

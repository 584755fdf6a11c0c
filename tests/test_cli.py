"""The command line as a whole: every command listed, one flag vocabulary, bad input = one line + exit 2."""
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from transcam_nb import cli

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("cams", "evaluate", "train", "pretrain", "pipeline", "crf", "affinity", "randomwalk", "segment",
            "diagnostics", "seeds", "variant-seeds")


def _options(name):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "stage").choices[name]
    return {o: a for a in sub._actions for o in a.option_strings}


def test_every_command_is_listed():
    assert set(COMMANDS) <= set(cli.STAGES)
    helptext = cli.build_parser().format_help()
    for name in COMMANDS:
        assert name in helptext


@pytest.mark.parametrize("name", COMMANDS)
def test_one_vocabulary_of_flags(name):
    opts = _options(name)
    assert "--profile" in opts
    if "--data-root" in opts:  # one spelling, one destination, the old one kept as an alias
        assert opts["--data-root"] is opts["--voc-root"] and opts["--data-root"].dest == "data_root"
    for flag, dest in (("--checkpoint", "checkpoint"), ("--init", "init"), ("--out", "out"), ("--set", "set"),
                       ("--shard", "shard"), ("--device", "device"), ("--threads", "threads")):
        if flag in opts:
            assert opts[flag].dest == dest, (name, flag)
    if name != "evaluate":  # evaluate reads files only
        assert "--device" in opts and "--threads" in opts and "--no-progress" in opts


def test_voc_root_is_a_deprecated_alias(caplog):
    args = cli.build_parser().parse_args(["train", "--out", "x", "--voc-root", "/data/voc"])
    assert args.data_root == "/data/voc"
    with caplog.at_level(logging.WARNING, logger="transcam_nb"):
        cli.build_parser().parse_args(["train", "--out", "x", "--voc-root", "/data/voc"])
    assert any("--voc-root is deprecated" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("argv, words", [
    (["pipeline", "--out", "OUT", "--set", "nope=1"], "not a profile field"),
    (["pipeline", "--out", "OUT", "--set", "batch_size=big"], "expected int"),
    (["pipeline", "--out", "OUT", "--config", "no_such=1"], "not a pipeline setting field"),
    (["pipeline", "--out", "OUT", "--profile", "huge"], "unknown profile"),
    (["evaluate", "--pred-dir", "MISSING"], "is not a folder"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, tmp_path, capsys):
    argv = [str(tmp_path / a) if a in ("OUT", "MISSING") else a for a in argv]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and words in str(e.value)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"python -m transcam_nb {argv[0]}: error:") and words in err[0]


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "transcam_nb", "train", "--out", str(tmp_path), "--set", "lr=fast"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("python -m transcam_nb train: error: --set lr=")

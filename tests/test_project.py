"""Project hygiene: one list of requirements, README commands that exist, clean notebooks."""
import json
import re
import tomllib

from conftest import REPO


def _req_names(lines):
    names = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"([A-Za-z0-9_.\-]+)\s*(==|>=|<=|<|>|~=)?\s*([^;\s]*)", line)
        names[m.group(1).lower().replace("_", "-")] = (m.group(2), m.group(3))
    return names


def test_environment_yml_uses_requirements_txt():
    text = (REPO / "environment.yml").read_text()
    assert "-r requirements.txt" in text
    # no package pinned in environment.yml's pip section beside the requirements file
    pip_section = text.split("- pip:")[1]
    entries = [l.strip()[2:] for l in pip_section.splitlines() if l.strip().startswith("- ")]
    assert set(entries) <= {"-r requirements.txt", "-e ."}, entries


def test_requirements_pin_everything_pyproject_needs():
    reqs = _req_names((REPO / "requirements.txt").read_text().splitlines())
    assert all(op == "==" for op, _ in reqs.values()), "requirements.txt pins exact versions"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        deps += extra
    for name, (op, ver) in _req_names(deps).items():
        assert name in reqs, f"{name} is a dependency in pyproject.toml but not pinned in requirements.txt"
    assert reqs["torch"][1] == "2.14.1" and reqs["torchvision"][1] == "0.29.1"
    assert reqs["jupyter-book"][1].startswith("1."), "jupyter-book must stay < 2"


def test_readme_commands_exist():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    assert blocks, "README has a shell block"
    first = [l for l in blocks[0].splitlines() if l.strip() and not l.startswith("#")]
    assert len(first) >= 2
    for line in first[:2]:
        script = line.split()[1] if line.startswith("bash ") else None
        assert script and (REPO / script).is_file(), line
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci and "scripts/test.sh" in first[1]


def test_notebooks_are_committed_without_outputs():
    for nb_path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{nb_path.name} has outputs: strip them"
                assert cell.get("execution_count") is None, f"{nb_path.name} has execution counts"


def _setup_cells():
    import importlib.util

    spec = importlib.util.spec_from_file_location("setup_cells", REPO / "scripts" / "setup_cells.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CHAPTERS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_repository_url_in_one_place_and_colab_buttons_on():
    cfg = (REPO / "_config.yml").read_text()
    url = _setup_cells().repository_url()
    assert url.startswith("https://github.com/"), url
    assert re.search(r"^launch_buttons:\s*\n(?:[ \t]+.*\n)*?[ \t]+colab_url:\s*\S*colab\.research\.google\.com", cfg, re.M)
    # nowhere else: the chapters get it from scripts/setup_cells.py, which reads _config.yml
    for p in [REPO / "README.md", *(REPO / "book").glob("*.md"), *(REPO / "transcam_nb").rglob("*.py")]:
        assert url not in p.read_text(), f"{p.relative_to(REPO)} repeats the repository URL"


def test_every_chapter_opens_with_the_standard_parameters_and_setup_cells():
    sc = _setup_cells()
    bad = {p.name: sc.problems(json.loads(p.read_text())) for p in CHAPTERS}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{bad}; fix with: python scripts/setup_cells.py --fix notebooks/*.ipynb"


def test_setup_cell_check_can_fail():
    sc = _setup_cells()
    params, setup = sc.expected_cells("https://github.com/x/y")
    good = {"cells": [sc._code_cell(params, tags=["parameters"]), sc._code_cell(setup)]}
    assert sc.problems(good, "https://github.com/x/y") == []
    untagged = {"cells": [sc._code_cell(params), sc._code_cell(setup)]}
    assert any("tagged" in p for p in sc.problems(untagged, "https://github.com/x/y"))
    other_url = sc.problems(good, "https://github.com/x/z")
    assert any("Setup" in p for p in other_url)
    # --fix turns an old-style chapter into the standard form and keeps its own imports
    old = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Title"]},
                     sc._code_cell("PROFILE = None", tags=["parameters"]),
                     sc._code_cell("# Setup. pip install it\nimport numpy as np\nfrom transcam_nb import workflow, viz\n"
                                   "\nprofile = workflow.setup(PROFILE)\nx = 1")]}
    fixed = sc.fix(old, "https://github.com/x/y")
    assert sc.problems(fixed, "https://github.com/x/y") == []
    own = "".join(fixed["cells"][3]["source"])
    assert "import numpy as np" in own and "x = 1" in own and "workflow.setup" not in own


def test_chapters_have_no_import_one_liners_and_end_with_summary_and_exercises():
    for p in CHAPTERS:
        nb = json.loads(p.read_text())
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "__import__(" not in code, f"{p.name}: an __import__(...) one-liner"
        heads = {ln.strip() for c in nb["cells"] if c["cell_type"] == "markdown" for ln in c["source"]}
        assert "## Summary" in heads, f"{p.name} has no '## Summary' section"
        assert "## Exercises" in heads, f"{p.name} has no '## Exercises' section"


def test_chapter_code_fits_80_columns():
    """What a code cell shows at 1280 px; ruff's E501 skips IPython magics, this does not."""
    wide = {}
    for p in CHAPTERS:
        nb = json.loads(p.read_text())
        lines = [ln for c in nb["cells"] if c["cell_type"] == "code" for ln in "".join(c["source"]).splitlines()]
        n = sum(len(ln.rstrip()) > 80 for ln in lines)
        if n:
            wide[p.name] = n
    assert not wide, f"code lines over 80 characters: {wide} (ruff format notebooks/, then shorten the rest)"
